"""The structure of the bad-input table: one :class:`BadInput` per row, and what runs the rows.

A row names a call, the exception it must raise, and a regex its message must match (what was expected
and what was got). Every row runs against the shared assets directory (good and broken datasets and
checkpoints, see ``reliability_assets``) and its own empty ``tmp`` directory; the runner hashes both
before and after, so a failing call that changes, adds or removes a file fails its row.

Adding rows: append ``BadInput(...)`` to a list in ``bad_inputs_api.py`` / ``bad_inputs_cli.py``, or
write a new ``bad_inputs_<component>.py`` and add its list to ``TABLES`` in ``test_bad_inputs.py``. A
row that exposes a defect keeps its real expectation and names the defect in ``defect``: it runs as a
strict xfail until the defect is fixed, and then must be un-marked.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

Call = Callable[[Path, Path], object]
"""``call(assets, tmp)``: the bad call, given the assets directory and a fresh empty directory."""
RecordProperty = Callable[[str, object], None]
"""The type of pytest's ``record_property`` fixture (which pytest does not export)."""


@dataclass(frozen=True, kw_only=True)
class BadInput:
    """One bad input and the clear error it must produce."""

    id: str
    """``component/what``, e.g. ``"checkpoint/truncated-weights"`` (the pytest id)."""
    call: Call
    """Makes the bad call (see :data:`Call`)."""
    error: type[BaseException]
    """Exception type the call must raise (:class:`CommandFailed` for a CLI exiting with code 2)."""
    match: str
    """Regex searched in the message (whitespace-normalized); says what was expected and what was got."""
    defect: str | None = None
    """A known defect this row exposes: the row is a strict xfail with this reason until it is fixed."""
    skip: str | None = None
    """Why the row cannot run here (e.g. it needs a machine without CUDA); None runs it."""

    @property
    def component(self) -> str:
        """The part of maskctrl the row exercises (the id's first segment)."""
        return self.id.split("/", 1)[0]


class CommandFailed(Exception):
    """A ``maskctrl`` command exited with a non-zero code; the message is ``exit CODE: STDERR``."""

    def __init__(self, code: int, stderr: str) -> None:
        super().__init__(f"exit {code}: {stderr}")
        self.code = code


_BOX = re.compile(r"[\s│╭╮╰╯─┃━]+")


def normalize(text: str) -> str:
    """Collapse whitespace and the box characters of tyro's error panels, which wrap at 80 columns."""
    return _BOX.sub(" ", text).strip()


def message(err: BaseException) -> str:
    """The text a user reads: ``KeyError``'s message without the quotes ``str()`` adds, normalized."""
    if isinstance(err, KeyError) and err.args and isinstance(err.args[0], str):
        return normalize(err.args[0])
    return normalize(str(err))


def run_cli(argv: Sequence[str]) -> str:
    """Run ``maskctrl ARGV`` in this process; return stdout, or raise :class:`CommandFailed`.

    tyro reports its own parse and config errors by ``SystemExit``; that counts as an exit code too.
    Anything else (a traceback) propagates as it would reach a user.
    """
    from maskctrl.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_info:
            code = exit_info.code if isinstance(exit_info.code, int) else 1
    if code != 0:
        raise CommandFailed(code, normalize(err.getvalue()))
    return out.getvalue()


def cli(*argv: str) -> Call:
    """A row's call running ``maskctrl ARGV``; ``{assets}`` and ``{tmp}`` in arguments are substituted."""

    def call(assets: Path, tmp: Path) -> str:
        return run_cli([arg.format(assets=assets, tmp=tmp) for arg in argv])

    return call


def snapshot(roots: Iterable[Path]) -> dict[str, str]:
    """``path -> sha256`` of every file (``"dir"`` for every directory) under ``roots``."""
    state: dict[str, str] = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            state[str(path)] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def describe_changes(before: dict[str, str], after: dict[str, str]) -> str:
    """Which paths a call added, removed or changed (for the assertion message)."""
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    return f"added {added}, removed {removed}, changed {changed}"


def check_bad_input(case: BadInput, assets: Path, tmp: Path) -> None:
    """Run one row: it must raise ``case.error`` with a matching message and leave every file as it was.

    :raises AssertionError: saying which of the three the call got wrong (a wrong exception type
        propagates as it is).
    """
    roots = [assets, tmp]
    before = snapshot(roots)
    with pytest.raises(case.error) as info:
        case.call(assets, tmp)
    text = message(info.value)
    assert re.search(case.match, text), f"message {text!r} does not match {case.match!r}"
    if isinstance(info.value, CommandFailed):
        assert info.value.code == 2, f"a bad command line must exit with 2, got {info.value.code}"
    after = snapshot(roots)
    assert after == before, f"the failing call touched files: {describe_changes(before, after)}"


def as_params(rows: Sequence[BadInput]) -> list[object]:
    """``pytest.param`` per row, with its id and, for known defects, a strict xfail."""
    params: list[object] = []
    for row in rows:
        marks: list[pytest.MarkDecorator] = []
        if row.defect is not None:
            marks.append(pytest.mark.xfail(strict=True, reason=row.defect))
        if row.skip is not None:
            marks.append(pytest.mark.skip(reason=row.skip))
        params.append(pytest.param(row, id=row.id, marks=marks))
    return params
