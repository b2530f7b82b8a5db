"""Fault injection into checkpoint saves and ``maskctrl collect``: no partial file is ever read as valid.

Each writer runs in a forked child that is SIGKILLed at an injection point (half of a file written,
between two renames, ...; see ``reliability_faults``). Afterwards loading must give the previous good
state, the new one, or a clear error, and every leftover file must either load completely and
consistently or be refused.

``tests/test_checkpoint.py`` already kills a process looping over ``save_checkpoint`` at a random moment;
here the kills are aimed at each phase of a save. ``test_faults_pretrain.py`` kills ``maskctrl pretrain``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from reliability_assets import tiny_model
from reliability_faults import FAULT, half_then_die, kill_self, run_killed
from reliability_table import RecordProperty, run_cli, snapshot

from maskctrl.data import episodes as episodes_module
from maskctrl.data.episodes import DatasetError, load_episodes
from maskctrl.models import atomic
from maskctrl.models import checkpoint as ckpt
from maskctrl.models.checkpoint import CheckpointError, load_checkpoint, load_trainer_state, save_checkpoint
from maskctrl.models.transformer import MaskedControlTransformer

# --- checkpoint saves -----------------------------------------------------------------------------


def _constant_model(value: float) -> MaskedControlTransformer:
    model = tiny_model()
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(value)
    return model


def _save(path: Path, step: int) -> None:
    save_checkpoint(path, _constant_model(step), step=step, trainer_state={"step": step, "seed": 0})


def _weights_half_written() -> None:
    real = ckpt.save_model

    def save_model(model: torch.nn.Module, filename: str) -> None:
        full = Path(filename + ".full")
        real(model, str(full))
        data = full.read_bytes()
        full.unlink()
        with open(filename, "wb") as handle:
            half_then_die(data, handle)

    ckpt.save_model = save_model


def _state_half_written() -> None:
    real = torch.save

    def save(obj: object, file: Any, *args: Any, **kwargs: Any) -> None:
        buffer = io.BytesIO()
        real(obj, buffer, *args, **kwargs)
        with open(file, "wb") as handle:
            half_then_die(buffer.getvalue(), handle)

    ckpt.torch.save = save


def _rename_call_kills(n: int) -> None:
    real, calls = os.rename, [0]

    def rename(src: Any, dst: Any) -> None:
        calls[0] += 1
        if calls[0] == n:
            kill_self()
        real(src, dst)

    atomic.os.rename = rename


def _cleanup_kills() -> None:
    atomic.shutil.rmtree = lambda *args, **kwargs: kill_self()


CHECKPOINT_PHASES: dict[str, tuple[Callable[[], None], int]] = {
    "weights-half-written": (_weights_half_written, 1),
    "trainer-state-half-written": (_state_half_written, 1),
    "before-the-swap": (lambda: _rename_call_kills(1), 1),
    "between-the-renames": (lambda: _rename_call_kills(2), 1),
    "before-removing-the-old": (_cleanup_kills, 2),
}
"""Where the save of step 2 over step 1 is killed, and the step a load must then find."""


def _check_consistent_or_refused(directory: Path) -> int | None:
    """Load ``directory`` as a checkpoint: its step if it is complete and consistent, None if refused."""
    try:
        loaded = load_checkpoint(directory)
    except CheckpointError:
        return None
    for name, value in loaded.model.state_dict().items():
        assert torch.all(value == loaded.step), (
            f"{directory}: {name} is not from the save of step {loaded.step}"
        )
    if (directory / ckpt.TRAINER_STATE).exists():
        try:
            assert load_trainer_state(directory)["step"] == loaded.step
        except CheckpointError:
            return None
    return loaded.step


@pytest.mark.parametrize("phase", list(CHECKPOINT_PHASES))
def test_killed_checkpoint_save(phase: str, tmp_path: Path, record_property: RecordProperty) -> None:
    record_property("reliability", FAULT)
    inject, expected_step = CHECKPOINT_PHASES[phase]
    path = tmp_path / "ck"
    _save(path, 1)

    def save_step_2() -> None:
        inject()
        _save(path, 2)

    run_killed(save_step_2)
    assert _check_consistent_or_refused(path) == expected_step  # the previous save, or the finished one
    for leftover in tmp_path.iterdir():  # .ck.tmp / .ck.old: complete and consistent, or refused
        assert _check_consistent_or_refused(leftover) in (None, 1, 2)
    _save(path, 3)  # what the crash left behind does not block the next save
    assert _check_consistent_or_refused(path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


# --- maskctrl collect -----------------------------------------------------------------------------


def _collect_argv(out: Path, seed: int, *extra: str) -> list[str]:
    return ["collect", "--env", "pointmass", "--episodes", "3", "--max-steps", "10", "--noise", "0.1",
            "--seed", str(seed), "--out", str(out), "--no-progress", *extra]  # fmt: skip


def _npz_half_written() -> None:
    real = np.savez

    def savez(file: Any, **arrays: Any) -> None:
        buffer = io.BytesIO()
        real(buffer, **arrays)
        half_then_die(buffer.getvalue(), file)

    episodes_module.np.savez = savez


def _metadata_half_written() -> None:
    real = Path.write_text

    def write_text(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        if self.name != episodes_module.METADATA_FILE:
            return real(self, data, *args, **kwargs)
        with self.open("wb") as handle:
            half_then_die(data.encode(), handle)
        return 0

    Path.write_text = write_text


def _replace_then_die() -> None:
    """Die right after the first rename of the save (:mod:`maskctrl.models.atomic`, shared with checkpoints)."""
    real, calls = os.rename, [0]

    def rename(src: Any, dst: Any) -> None:
        calls[0] += 1
        real(src, dst)
        if calls[0] == 1:  # the old dataset is moved aside, the new one is not in place yet
            kill_self()

    atomic.os.rename = rename


def _check_datasets_refused_or_complete(parent: Path, valid: dict[str, dict[str, np.ndarray]]) -> None:
    """Every directory under ``parent`` loads as one of the ``valid`` datasets' arrays, or is refused."""
    for directory in parent.iterdir():
        try:
            data = load_episodes(directory)
        except (DatasetError, FileNotFoundError):
            continue
        arrays = data.arrays()
        assert any(all(np.array_equal(arrays[key], good[key]) for key in good) for good in valid.values()), (
            f"{directory} loads, but holds neither dataset: a partial file read as valid"
        )


@pytest.mark.parametrize("inject", [_npz_half_written, _metadata_half_written], ids=["npz", "metadata"])
def test_killed_first_collect_leaves_no_dataset(
    inject: Callable[[], None], tmp_path: Path, record_property: RecordProperty
) -> None:
    record_property("reliability", FAULT)
    out = tmp_path / "data"

    def collect() -> None:
        inject()
        run_cli(_collect_argv(out, seed=0))

    run_killed(collect)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_episodes(out)
    _check_datasets_refused_or_complete(tmp_path, {})
    run_cli(_collect_argv(out, seed=0))  # the leftovers do not block a new run
    assert load_episodes(out).n_episodes == 3


def test_killed_overwrite_keeps_the_previous_dataset(tmp_path: Path, record_property: RecordProperty) -> None:
    record_property("reliability", FAULT)
    out = tmp_path / "data"
    run_cli(_collect_argv(out, seed=0))
    before = snapshot([out])

    def overwrite() -> None:
        _npz_half_written()
        run_cli(_collect_argv(out, 1, "--overwrite"))

    run_killed(overwrite)
    assert snapshot([out]) == before, "the dataset changed although its replacement never finished"
    _check_datasets_refused_or_complete(tmp_path, {"previous": load_episodes(out).arrays()})


def test_killed_overwrite_between_renames_recovers_the_previous_dataset(
    tmp_path: Path, record_property: RecordProperty
) -> None:
    record_property("reliability", FAULT)
    out = tmp_path / "runs" / "data"
    run_cli(_collect_argv(out, seed=0))
    previous = load_episodes(out).arrays()
    run_cli(_collect_argv(tmp_path / "new", seed=1))

    def overwrite() -> None:
        _replace_then_die()
        run_cli(_collect_argv(out, 1, "--overwrite"))

    run_killed(overwrite)
    valid = {"previous": previous, "new": load_episodes(tmp_path / "new").arrays()}
    _check_datasets_refused_or_complete(out.parent, valid)
    try:
        arrays = load_episodes(out).arrays()
    except FileNotFoundError as err:
        hidden = [p.name for p in out.parent.iterdir() if p.name.startswith(".data.old")]
        assert hidden and hidden[0] in str(err), f"the error does not say where the dataset went: {err}"
    else:
        assert all(np.array_equal(arrays[key], previous[key]) for key in previous)


def test_run_killed_fails_when_the_child_survives() -> None:
    """The harness itself: a child that finishes instead of dying is a failure, not a pass."""
    with pytest.raises(AssertionError, match="was not killed"):
        run_killed(lambda: None)
