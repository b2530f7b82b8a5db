"""The bad-input table: every row must raise its error with a specific message and change no file.

The rows live in ``bad_inputs_*.py`` (format: ``reliability_table.BadInput``); add a component's rows
there or in a new module listed in ``TABLES`` below.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_inputs_api import API_TABLES
from bad_inputs_cli import CLI_TABLES
from bad_inputs_files import FILE_TABLES
from reliability_table import BadInput, Call, CommandFailed, RecordProperty, as_params, check_bad_input

TABLES: dict[str, list[BadInput]] = {**API_TABLES, **FILE_TABLES, **CLI_TABLES}
"""Every table by component; the BC, SB3, imitation and TransformerDynamics rows go here too."""
BAD_INPUTS = [row for rows in TABLES.values() for row in rows]
REQUIRED_COMPONENTS = {
    "envs", "history-wrapper", "optimizer", "mpc", "oracle", "normalizer", "transformer", "kv-cache",
    "checkpoint", "episodes", "dataset", "collect", "collect-cli", "pretrain-cli", "mpc-cli",
}  # fmt: skip
"""Components the suite must keep covering."""


@pytest.mark.parametrize("case", as_params(BAD_INPUTS))
def test_bad_input(case: BadInput, assets: Path, tmp_path: Path, record_property: RecordProperty) -> None:
    record_property("reliability", "bad input")
    check_bad_input(case, assets, tmp_path)


def _raise(err: BaseException, touch: Path | None = None) -> Call:
    def call(assets: Path, tmp: Path) -> None:
        if touch is not None:
            touch.write_bytes(b"half a file")
        raise err

    return call


def test_the_runner_fails_rows_that_touch_files_say_too_little_or_exit_wrongly(
    assets: Path, tmp_path: Path
) -> None:
    specific = "expected obs of shape \\(4,\\), got \\(3,\\)"
    good = ValueError("expected obs of shape (4,), got (3,)")
    check_bad_input(
        BadInput(id="self/good", call=_raise(good), error=ValueError, match=specific), assets, tmp_path
    )
    touched = BadInput(
        id="self/touch", call=_raise(good, tmp_path / "partial.npz"), error=ValueError, match=specific
    )
    with pytest.raises(AssertionError, match=r"touched files: added \[.*partial.npz"):
        check_bad_input(touched, assets, tmp_path)
    vague = BadInput(id="self/vague", call=_raise(ValueError("bad obs")), error=ValueError, match=specific)
    with pytest.raises(AssertionError, match="does not match"):
        check_bad_input(vague, assets, tmp_path)
    crash = BadInput(
        id="self/crash", call=_raise(CommandFailed(1, "Traceback")), error=CommandFailed, match="Trace"
    )
    with pytest.raises(AssertionError, match="must exit with 2, got 1"):
        check_bad_input(crash, assets, tmp_path)
    with pytest.raises(TypeError):  # another exception type is not swallowed
        check_bad_input(
            BadInput(id="self/type", call=_raise(TypeError("x")), error=ValueError, match="x"),
            assets,
            tmp_path,
        )


def test_table_is_large_specific_and_complete() -> None:
    ids = [row.id for row in BAD_INPUTS]
    assert len(ids) == len(set(ids)), "row ids must be unique"
    assert all(row.component in TABLES and row in TABLES[row.component] for row in BAD_INPUTS)
    assert set(TABLES) >= REQUIRED_COMPONENTS, f"missing components {REQUIRED_COMPONENTS - set(TABLES)}"
    assert all(TABLES[name] for name in REQUIRED_COMPONENTS)
    assert len(BAD_INPUTS) >= 40
    vague = [row.id for row in BAD_INPUTS if len(row.match) < 12 and row.defect is None]
    assert not vague, f"rows whose regex says too little: {vague}"
    defects = [row.id for row in BAD_INPUTS if row.defect]
    print(f"\n{len(BAD_INPUTS)} bad inputs over {len(TABLES)} components; {len(defects)} known defects")
