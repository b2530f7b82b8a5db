"""`maskctrl demo-pretrain` end to end at a tiny size: losses recorded, plot written, checkpoint loadable."""

from __future__ import annotations

from pathlib import Path

import pytest

from maskctrl.cli import main
from maskctrl.models.checkpoint import load_checkpoint


def test_demo_trains_reports_and_saves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "demo-pretrain",
            "--steps",
            "40",
            "--report-every",
            "20",
            "--n-windows",
            "256",
            "--no-progress",
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| step | forward | reward | inverse | hindsight |" in out
    assert "| 40 |" in out and "Loss drop" in out
    assert (tmp_path / "losses.png").stat().st_size > 1000
    ckpt = load_checkpoint(tmp_path / "checkpoint")
    assert ckpt.step == 40 and ckpt.env is not None and ckpt.env.name == "synthetic-linear"
    assert set(ckpt.metadata["final_losses"]) == {"forward", "reward", "inverse", "hindsight"}


def test_unknown_command_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out
