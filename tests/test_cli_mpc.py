"""``maskctrl mpc`` end to end on pointmass with tiny sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maskctrl.cli import main as cli_main
from maskctrl.commands.mpc import main

TINY = ["--env", "pointmass", "--horizon", "8", "--samples", "32", "--iterations", "2", "--no-progress"]


def test_mpc_command_runs_prints_and_saves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(
        ["mpc", *TINY, "--episodes", "2", "--optimizer", "cem", "--seed", "3", "--out-dir", str(tmp_path)]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "episode" in out and "steps/s" in out and "mean" in out and "±" in out
    record = json.loads((tmp_path / "pointmass_oracle_cem_seed3.json").read_text())
    episodes = record["episodes"]
    assert [e["seed"] for e in episodes] == [3, 4] and [e["length"] for e in episodes] == [50, 50]
    mean = sum(e["episode_return"] for e in episodes) / 2
    assert record["summary"]["return_mean"] == pytest.approx(mean)
    assert mean > -15  # doing nothing scores about -40 from these starts
    assert record["config"]["optimizer"] == "cem" and record["config"]["samples"] == 32
    assert f"{episodes[0]['episode_return']:.2f}" in out
    png = (tmp_path / "pointmass_oracle_cem_seed3.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_max_steps_caps_episodes(tmp_path: Path) -> None:
    assert main([*TINY, "--episodes", "1", "--max-steps", "7", "--out-dir", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "pointmass_oracle_icem_seed0.json").read_text())
    assert record["episodes"][0]["length"] == 7


@pytest.mark.parametrize("dynamics", ["transformer", "mlp"])
def test_learned_dynamics_are_not_available_yet(
    dynamics: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*TINY, "--dynamics", dynamics, "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--dynamics {dynamics}" in err and "not available yet" in err and "--dynamics oracle" in err
    assert not any(tmp_path.iterdir())


def test_unknown_env_lists_known_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--env", "Cheetah", "--out-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown env 'Cheetah'" in err and "HalfCheetah" in err
