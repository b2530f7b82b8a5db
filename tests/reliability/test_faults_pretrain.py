"""Fault injection into ``maskctrl pretrain``: killed while checkpointing or resuming, it resumes exactly.

The child runs the real command (see ``reliability_faults``); after a kill the run's checkpoint must load
with a trainer state of the same step, and ``--resume`` must finish the run with every log row once and
the weights of a run that was never interrupted.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from reliability_faults import FAULT, half_then_die, kill_self, run_killed
from reliability_table import RecordProperty, run_cli
from safetensors.torch import load_file

from maskctrl.models import checkpoint as ckpt
from maskctrl.models.checkpoint import load_checkpoint, load_trainer_state
from maskctrl.training import logs

PRETRAIN_STEPS = 24


def _pretrain_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--data", str(data), "--out", str(out), "--steps", str(PRETRAIN_STEPS), "--window", "8",
            "--n-layer", "1", "--n-head", "2", "--d-model", "16", "--batch-size", "8", "--lr", "3e-3",
            "--warmup-steps", "2", "--val-every", "0", "--log-every", "1", "--num-threads", "1",
            "--no-progress", "--no-tensorboard", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of the same pretraining, never interrupted."""
    out = tmp_path_factory.mktemp("pretrain") / "whole"
    run_cli(_pretrain_argv(assets / "data-pointmass", out, "--checkpoint-every", "0"))
    return out


def _assert_finished_like(out: Path, reference: Path) -> None:
    """``out`` holds the complete run: every log row once and in order, and the reference's weights."""
    columns = logs.read_log(reference / logs.LOG_FILE)[0].keys()
    rows = logs.read_log(out / logs.LOG_FILE)
    assert [int(row["step"]) for row in rows] == list(range(1, PRETRAIN_STEPS + 1))
    assert all(row.keys() == columns and row["train/total"] for row in rows), "a log row is incomplete"
    got = load_file(out / "checkpoint" / ckpt.WEIGHTS)
    want = load_file(reference / "checkpoint" / ckpt.WEIGHTS)
    assert all(torch.equal(got[key], want[key]) for key in want), "the resumed run diverged"


def test_pretrain_killed_while_checkpointing_resumes_exactly(
    assets: Path, uninterrupted: Path, tmp_path: Path, record_property: RecordProperty
) -> None:
    record_property("reliability", FAULT)
    out = tmp_path / "run"
    argv = _pretrain_argv(assets / "data-pointmass", out, "--checkpoint-every", "5")
    real, calls = torch.save, [0]

    def pretrain() -> None:
        def save(obj: object, file: Any, *args: Any, **kwargs: Any) -> None:
            calls[0] += 1
            if calls[0] == 2:  # the trainer state of the second periodic checkpoint (step 10)
                buffer = io.BytesIO()
                real(obj, buffer, *args, **kwargs)
                with open(file, "wb") as handle:
                    half_then_die(buffer.getvalue(), handle)
            real(obj, file, *args, **kwargs)

        ckpt.torch.save = save
        run_cli(argv)

    run_killed(pretrain)
    assert _check_pretrain_checkpoint(out) == 5
    run_cli([*argv, "--resume"])
    _assert_finished_like(out, uninterrupted)


def _check_pretrain_checkpoint(out: Path) -> int:
    """The run's checkpoint loads, its weights match their checksum and its trainer state its step."""
    loaded = load_checkpoint(out / "checkpoint")
    assert load_trainer_state(out / "checkpoint")["step"] == loaded.step == loaded.metadata["steps"]
    return loaded.step


def _logged_steps(out: Path) -> int:
    """Rows in the run's log.csv so far (a partly written last row counts)."""
    try:
        return max(0, (out / logs.LOG_FILE).read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def test_pretrain_killed_at_arbitrary_moments_resumes_exactly(
    assets: Path, uninterrupted: Path, tmp_path: Path, record_property: RecordProperty
) -> None:
    """Checkpointing every step, most of a step's time is spent saving: most kills land inside a save."""
    record_property("reliability", FAULT)
    out = tmp_path / "run"
    argv = _pretrain_argv(assets / "data-pointmass", out, "--checkpoint-every", "1")
    rng = np.random.default_rng(0)
    kills = []
    for target, resume in ((4, []), (9, ["--resume"]), (14, ["--resume"])):
        # Past the target row, wait a random fraction of a step's time: a kill at no particular point.
        wait = float(rng.uniform(0.0, 0.03))
        seen: list[float] = []

        def reached(target: int = target, wait: float = wait, seen: list[float] = seen) -> bool:
            if not seen and _logged_steps(out) >= target:
                seen.append(time.monotonic())
            return bool(seen) and time.monotonic() - seen[0] >= wait

        run_killed(lambda resume=resume: run_cli([*argv, *resume]), kill_when=reached)
        kills.append((target, _check_pretrain_checkpoint(out)))
    steps = [step for _, step in kills]
    assert steps == sorted(steps) and all(step >= target - 1 for target, step in kills), f"kills: {kills}"
    run_cli([*argv, "--resume"])
    _assert_finished_like(out, uninterrupted)


def test_pretrain_killed_while_resuming_keeps_its_log(
    assets: Path, uninterrupted: Path, tmp_path: Path, record_property: RecordProperty
) -> None:
    record_property("reliability", FAULT)
    out = tmp_path / "run"
    argv = _pretrain_argv(assets / "data-pointmass", out, "--checkpoint-every", "5")
    run_cli([*argv, "--stop-after", "12"])

    def resume() -> None:
        def writerows(self: csv.DictWriter[str], rows: Any) -> None:
            kill_self()  # the header is written, the kept rows are not

        csv.DictWriter.writerows = writerows
        run_cli([*argv, "--resume"])

    run_killed(resume)
    run_cli([*argv, "--resume"])
    _assert_finished_like(out, uninterrupted)
