"""`maskctrl pretrain --model ensemble`: collect -> train -> load round trip, held-out error, guarded out dirs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from maskctrl.commands import collect, pretrain
from maskctrl.data.dataset import TrajectoryDataset
from maskctrl.models.ensemble import EnsembleMLPDynamics, load_ensemble
from maskctrl.models.evaluation import episode_list
from maskctrl.pretrain import EnsemblePretrainConfig, PretrainConfig

TINY = ["--members", "3", "--hidden", "32", "--layers", "2", "--batch-size", "32", "--lr", "3e-3"]
QUIET = ["--no-progress", "--no-tensorboard", "--num-threads", "1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six random pointmass episodes (300 steps), recorded through the `maskctrl collect` CLI."""
    out = tmp_path_factory.mktemp("data") / "pointmass"
    args = ["--env", "pointmass", "--episodes", "6", "--seed", "3", "--out", str(out), "--no-progress"]
    assert collect.main(args) == 0
    return out


def run(data: Path, out: Path, *extra: str) -> int:
    return pretrain.main(
        ["--model", "ensemble", "--data", str(data), "--out", str(out), *TINY, *QUIET, *extra]
    )


def test_collect_pretrain_ensemble_load_round_trip(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert run(data_dir, out, "--epochs", "30", "--eval-horizon", "1") == 0
    printed = capsys.readouterr().out
    assert "held-out open-loop MSE" in printed and f"checkpoint: {out / 'checkpoint'}" in printed

    loaded = load_ensemble(out / "checkpoint")
    model, meta = loaded.model, loaded.metadata
    assert (model.obs_dim, model.act_dim) == (4, 2)
    assert (model.config.members, model.config.hidden, model.config.layers) == (3, 32, 2)
    # The transformer's split and normalizer for the same seed and val fraction (its window is irrelevant).
    train_set = TrajectoryDataset(data_dir, window=8, split="train", val_fraction=0.1, seed=0)
    val_set = TrajectoryDataset(data_dir, window=8, split="val", val_fraction=0.1, seed=0)
    expected = train_set.normalizer()
    torch.testing.assert_close(loaded.normalizer.obs_std, expected.obs_std)
    torch.testing.assert_close(loaded.normalizer.delta_mean, expected.delta_mean)
    assert loaded.normalizer.act_low is not None and loaded.normalizer.reward_std == expected.reward_std

    assert meta["made_by"] == "maskctrl pretrain --model ensemble" and meta["data_dirs"] == [str(data_dir)]
    assert meta["env_name"] == "pointmass"  # top level, where MLPDynamics.from_checkpoint checks it
    assert meta["dataset"]["env_name"] == "pointmass" and meta["dataset"]["action_space"]["type"] == "Box"
    assert (meta["dataset"]["train_episodes"], meta["dataset"]["val_episodes"]) == (5, 1)
    assert meta["dataset"]["train_transitions"] == 250
    assert meta["config"]["ensemble"]["epochs"] == 30 and meta["config"]["seed"] == 0
    training = meta["training"]
    epochs = len(training["train_loss"])
    assert 1 <= epochs <= 30 and training["steps"] == epochs * 8  # ceil(225 / 32) steps per epoch
    assert sorted(training["elites"]) == [0, 1, 2] and len(training["best_holdout_mse"]) == 3

    # The loaded ensemble reproduces the recorded held-out error, and it beats predicting no change.
    eps = episode_list(val_set)
    obs = torch.as_tensor(np.concatenate([ep.observations[:-1] for ep in eps]), dtype=torch.float32)
    act = torch.as_tensor(np.concatenate([ep.actions for ep in eps]), dtype=torch.float32)
    nxt = torch.as_tensor(np.concatenate([ep.observations[1:] for ep in eps]), dtype=torch.float32)
    pred, _ = EnsembleMLPDynamics(model, loaded.normalizer).predict(obs, act)
    std = loaded.normalizer.obs_std
    mse = float(((pred - nxt) / std).square().mean())
    zero_change = float(((obs - nxt) / std).square().mean())
    assert meta["validation"]["mse"][0] == pytest.approx(mse, rel=1e-4)
    assert meta["validation"]["zero_change_mse"][0] == pytest.approx(zero_change, rel=1e-4)
    assert mse < 0.5 * zero_change, (mse, zero_change)

    with (out / "log.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
    assert [int(r["step"]) for r in rows] == [8 * e for e in range(1, epochs + 1)]
    assert [float(r["loss"]) for r in rows] == pytest.approx(training["train_loss"])
    assert all(r["val/mse"] and r["holdout/mse"] for r in rows)
    assert float(rows[-1]["train/mse"]) < 0.5 * float(rows[0]["train/mse"])  # it learns
    png = (out / "losses.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_an_existing_run_dir_is_not_overwritten(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert run(data_dir, out, "--epochs", "2") == 0
    files = ("checkpoint/config.json", "checkpoint/model.safetensors", "log.csv", "losses.png")
    before = {name: (out / name).read_bytes() for name in files}
    capsys.readouterr()
    assert run(data_dir, out, "--epochs", "3") == 2
    err = capsys.readouterr().err
    assert f"--out {out} is not empty" in err and "pass --overwrite" in err
    assert "--resume" not in err  # the ensemble run cannot be resumed, so it is not offered
    assert {name: (out / name).read_bytes() for name in files} == before

    (out / "notes.txt").write_text("mine")
    assert run(data_dir, out, "--epochs", "3", "--overwrite") == 0
    config = json.loads((out / "checkpoint" / "config.json").read_text())
    assert config["metadata"]["config"]["ensemble"]["epochs"] == 3
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite replaces only a run's own outputs


def test_model_flag_picks_the_config_and_bad_uses_are_refused(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["--data", str(data_dir), "--out", str(tmp_path / "run")]
    assert isinstance(pretrain.parse_args(base), PretrainConfig)  # the default is unchanged
    assert isinstance(pretrain.parse_args(["--model=transformer", *base]), PretrainConfig)
    cfg = pretrain.parse_args([*base, "--model", "ensemble", "--members", "7", "--epochs", "4"])
    assert isinstance(cfg, EnsemblePretrainConfig)
    assert (cfg.ensemble.members, cfg.ensemble.epochs, cfg.ensemble.hidden) == (7, 4, 200)
    with pytest.raises(SystemExit):  # a transformer-only option
        pretrain.parse_args(["--model", "ensemble", *base, "--steps", "10"])
    capsys.readouterr()

    assert pretrain.main(["--model", "mlp", *base]) == 2
    assert "--model must be one of transformer, ensemble; got 'mlp'" in capsys.readouterr().err
    assert pretrain.main([*base, "--model"]) == 2
    assert "got ''" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run(data_dir, tmp_path / "ddp", "--epochs", "1") == 2
    assert "run it without torchrun" in capsys.readouterr().err
    assert not (tmp_path / "ddp").exists()
