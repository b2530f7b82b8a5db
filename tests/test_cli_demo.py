"""``maskctrl demo`` end to end at a tiny size: table, JSON, plots, video (or a note why not), errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from maskctrl.cli import main
from maskctrl.envs.registry import get_spec
from maskctrl.models.checkpoint import EnvInfo, save_checkpoint
from maskctrl.models.normalizer import Normalizer
from maskctrl.models.transformer import MaskedControlTransformer, TransformerConfig
from maskctrl.planner.presets import POLICY_PRIOR


def _tiny_reacher_checkpoint(path: Path, metadata: dict[str, Any] | None = None) -> Path:
    env = get_spec("Reacher").make()
    torch.manual_seed(0)
    obs_dim = env.observation_space.shape[0]
    config = TransformerConfig(obs_dim=obs_dim, act_dim=2, context_len=40, n_layer=1, n_head=2, d_model=16)
    normalizer = Normalizer.identity(obs_dim, env.action_space.low, env.action_space.high)
    save_checkpoint(
        path,
        MaskedControlTransformer(config),
        normalizer=normalizer,
        env=EnvInfo.from_env(env, "Reacher"),
        metadata=metadata,
    )
    env.close()
    return path


def test_demo_compares_methods_and_writes_its_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _tiny_reacher_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "demo"
    argv = ["demo", "--checkpoint", str(ckpt), "--episodes", "1", "--max-steps", "4"]
    code = main([*argv, "--no-progress", "--out-dir", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    for label in ("random policy", "MPC, pretrained transformer", "MPC, true simulator"):
        assert f"| {label} |" in printed
    record = json.loads((out / "demo.json").read_text())
    rows = {r["method"]: r for r in record["rows"]}
    assert set(rows) == {"random", "transformer", "oracle"}
    assert rows["random"]["score"] == pytest.approx(0.0) and rows["oracle"]["score"] == pytest.approx(1.0)
    assert all(len(r["returns"]) == 1 for r in rows.values())
    assert record["planner"]["horizon"] == 25  # Reacher's preset budget
    assert rows["random"]["policy_prior"] is None
    assert rows["oracle"]["policy_prior"] == 0.0 and rows["transformer"]["policy_prior"] == 0.0
    assert (out / "returns.png").stat().st_size > 1000
    assert (out / "imagined_vs_real.png").stat().st_size > 1000
    if (out / "demo.gif").exists():  # MuJoCo rendered offscreen
        assert record["video"].startswith("video of one learned-model MPC episode (5 frames)")
    else:
        assert "cannot render offscreen" in record["video"]


def test_demo_records_the_policy_prior_its_transformer_row_planned_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shared budget (``planner``) has no prior; a backbone pretrained with the policy loss plans with
    the env's default share, and its row says so."""
    monkeypatch.setitem(POLICY_PRIOR, "Reacher", 0.25)
    ckpt = _tiny_reacher_checkpoint(tmp_path / "ckpt", metadata={"objective_weights": {"policy": 0.5}})
    out = tmp_path / "demo"
    argv = ["demo", "--checkpoint", str(ckpt), "--episodes", "1", "--max-steps", "2", "--no-video"]
    assert main([*argv, "--no-progress", "--out-dir", str(out)]) == 0
    record = json.loads((out / "demo.json").read_text())
    rows = {r["method"]: r for r in record["rows"]}
    assert rows["transformer"]["policy_prior"] == 0.25 and rows["oracle"]["policy_prior"] == 0.0
    assert record["planner"]["policy_prior_fraction"] == 0.0


def test_demo_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--env", "Reachr", "--out-dir", str(tmp_path)]) == 2
    assert "did you mean 'Reacher'" in capsys.readouterr().err
    assert main(["demo", "--checkpoint", str(tmp_path / "missing"), "--out-dir", str(tmp_path)]) == 2
    assert "missing" in capsys.readouterr().err
    wrong = _tiny_reacher_checkpoint(tmp_path / "ckpt")
    code = main(["demo", "--env", "pointmass", "--checkpoint", str(wrong), "--out-dir", str(tmp_path / "o")])
    assert code == 2
    assert "Reacher" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_headless_machines_render_with_egl_unless_told_otherwise() -> None:
    from maskctrl.commands.demo import headless_gl_default

    no_display: dict[str, str] = {}
    assert headless_gl_default(no_display, "linux") == "egl"
    assert no_display == {"MUJOCO_GL": "egl"}
    chosen = {"MUJOCO_GL": "osmesa"}  # the user's choice wins
    assert headless_gl_default(chosen, "linux") == "osmesa"
    for display in ({"DISPLAY": ":0"}, {"WAYLAND_DISPLAY": "wayland-0"}):
        environ = dict(display)
        assert headless_gl_default(environ, "linux") is None
        assert "MUJOCO_GL" not in environ  # a desktop keeps gymnasium's own choice
    elsewhere: dict[str, str] = {}
    assert headless_gl_default(elsewhere, "darwin") is None
