"""The ``maskctrl`` command line: one subcommand per job, each defined in ``maskctrl.commands``.

Each subcommand module exposes ``main(argv: list[str]) -> int`` and builds its options from a frozen
config dataclass with tyro, so every default has one source of truth. Modules are imported lazily so
that ``maskctrl --help`` does not pay for torch and MuJoCo.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, str] = {
    "demo": "MPC with the shipped pretrained backbone vs oracle MPC vs random: table, plots, video.",
    "demo-pretrain": "Pretrain a tiny backbone on synthetic trajectories and show its losses falling.",
    "mpc": "Run model predictive control in an environment and report returns.",
    "collect": "Record episodes of a policy into a dataset directory.",
    "pretrain": "Pretrain the masked control transformer on collected episodes (torchrun for DDP).",
    "bc": "Behaviour cloning: fine-tune the policy head on expert episodes (pretrained or scratch).",
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: maskctrl <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "Run 'maskctrl <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a subcommand and return its exit code."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"maskctrl: unknown command {name!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"maskctrl.commands.{name.replace('-', '_')}")
    return int(module.main(rest))


if __name__ == "__main__":
    raise SystemExit(main())
