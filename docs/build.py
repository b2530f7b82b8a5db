"""Render maskctrl's API reference from its docstrings with pdoc: ``make docs`` runs this.

    python docs/build.py                  # every module into docs/api/ (git-ignored); open index.html
    python docs/build.py --out /tmp/api

Every module is passed to pdoc explicitly: a package that defines ``__all__`` (``maskctrl.planner``,
``maskctrl.envs``) would otherwise show only the names it re-exports and hide modules such as
``maskctrl.planner.presets``. Docstrings are reST (``:param x:``), which pdoc renders as such.
"""

from __future__ import annotations

import argparse
import pkgutil
import warnings
from pathlib import Path

import pdoc
import pdoc.render

import maskctrl

OUT = Path(__file__).resolve().parent / "api"


def modules() -> list[str]:
    """``maskctrl`` and all its submodules, in import-name order."""
    return ["maskctrl", *sorted(m.name for m in pkgutil.walk_packages(maskctrl.__path__, "maskctrl."))]


def main(argv: list[str] | None = None) -> int:
    """Write the HTML into ``--out``; returns the exit code."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default: docs/api)")
    args = parser.parse_args(argv)
    pdoc.render.configure(docformat="restructuredtext", footer_text=f"maskctrl {maskctrl.__version__}")
    with warnings.catch_warnings():
        # Annotations naming optional packages (imitation's BC, ...) cannot be resolved where they are
        # not installed; pdoc then prints them as written, which is what a reader needs.
        warnings.filterwarnings("ignore", category=UserWarning, module="pdoc.doc_types")
        # pdoc also walks the packages without __all__ itself; the explicit list repeats those modules.
        warnings.filterwarnings("ignore", message=".*has already been added", category=UserWarning)
        pdoc.pdoc(*modules(), output_directory=args.out)
    print(f"API docs: {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
