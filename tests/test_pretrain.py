"""`maskctrl pretrain` end to end at tiny sizes, exact resumption, guarded out dirs, and the sharded loss."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from safetensors.torch import load_file

from maskctrl.commands import collect, pretrain
from maskctrl.data.dataset import TrajectoryDataset
from maskctrl.envs.pointmass import POINTMASS_ID
from maskctrl.models.checkpoint import load_checkpoint
from maskctrl.models.objectives import (
    GROUPS,
    LossOutput,
    MaskDraw,
    ObjectiveWeights,
    WindowBatch,
    draw_masks,
    pretraining_loss,
)
from maskctrl.models.transformer import MaskedControlTransformer, TransformerConfig
from maskctrl.planner.presets import policy_loss_weight
from maskctrl.training import sampling
from maskctrl.training.objective import PretrainingObjective
from maskctrl.training.trainer import normalized_batch

TINY = ["--window", "8", "--n-layer", "1", "--n-head", "2", "--d-model", "32", "--batch-size", "16"]
QUIET = ["--no-progress", "--no-tensorboard", "--num-threads", "1"]
LOSS_COLUMNS = ("lr", "train/", "val/")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six random pointmass episodes (300 steps), recorded through the `maskctrl collect` CLI."""
    out = tmp_path_factory.mktemp("data") / "pointmass"
    args = ["--env", "pointmass", "--episodes", "6", "--seed", "3", "--out", str(out), "--no-progress"]
    assert collect.main(args) == 0
    return out


def run(data: Path, out: Path, *extra: str) -> int:
    return pretrain.main(["--data", str(data), "--out", str(out), *TINY, *QUIET, *extra])


def read_rows(out: Path) -> list[dict[str, str]]:
    with (out / "log.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_collect_pretrain_load_round_trip(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    extra = ["--steps", "40", "--lr", "3e-3", "--warmup-steps", "5", "--val-every", "20", "--log-every", "1"]
    assert run(data_dir, out, *extra) == 0

    env = gym.make(POINTMASS_ID)
    ckpt = load_checkpoint(out / "checkpoint", env=env, env_name="pointmass")
    assert (ckpt.model.config.obs_dim, ckpt.model.config.act_dim, ckpt.model.config.context_len) == (4, 2, 8)
    assert ckpt.step == 40 and ckpt.env is not None and ckpt.env.name == "pointmass"
    assert ckpt.normalizer is not None and ckpt.normalizer.act_low is not None
    meta = ckpt.metadata
    assert meta["targets"] == {
        "obs": "normalized",
        "delta": "normalized_delta",
        "reward": "normalized",
        "actions": "scaled_-1_1",
    }
    assert meta["data_dirs"] == [str(data_dir)] and meta["finished"] is True and meta["steps"] == 40
    assert meta["config"]["d_model"] == 32 and meta["config"]["weights"]["forward"] == 1.0
    assert policy_loss_weight(meta) == 0.0  # `maskctrl pretrain` trains no policy by default: no MPC prior
    assert set(meta["val_losses"]) == {"forward", "reward", "inverse", "hindsight", "total"}
    assert meta["wall_time_s"] > 0 and meta["dataset"]["val_episodes"] == 1

    rows = read_rows(out)
    assert [int(r["step"]) for r in rows] == list(range(1, 41))
    assert [int(r["step"]) for r in rows if r["val/total"]] == [20, 40]
    assert all(float(r["tokens_per_s"]) > 0 for r in rows)
    first, last = (sum(float(r["train/total"]) for r in part) / 10 for part in (rows[:10], rows[-10:]))
    assert last < 0.8 * first, (first, last)  # it learns
    png = (out / "losses.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_resume_repeats_the_uninterrupted_run_exactly(data_dir: Path, tmp_path: Path) -> None:
    common = ["--steps", "30", "--checkpoint-every", "10", "--val-every", "10", "--log-every", "1"]
    common += ["--lr", "3e-3", "--warmup-steps", "5", "--dropout", "0.1"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert run(data_dir, whole, *common) == 0
    # Interrupted after step 25: the last checkpoint is step 20, the log already holds steps 21..25.
    assert run(data_dir, broken, *common, "--stop-after", "25") == 0
    assert len(read_rows(broken)) == 25 and load_checkpoint(broken / "checkpoint").step == 20
    assert not (broken / "losses.png").exists()
    assert run(data_dir, broken, *common, "--resume") == 0

    rows_whole, rows_broken = read_rows(whole), read_rows(broken)
    assert [int(r["step"]) for r in rows_broken] == list(range(1, 31))
    for a, b in zip(rows_whole, rows_broken, strict=True):
        losses = {k: v for k, v in a.items() if k.startswith(LOSS_COLUMNS)}
        assert losses == {k: b[k] for k in losses}  # exact float text: bitwise equal
    weights_whole = load_file(whole / "checkpoint" / "model.safetensors")
    weights_broken = load_file(broken / "checkpoint" / "model.safetensors")
    assert all(torch.equal(weights_whole[k], weights_broken[k]) for k in weights_whole)
    assert load_checkpoint(broken / "checkpoint").metadata["finished"] is True


def test_resume_refuses_changed_settings_and_finished_runs_are_left_alone(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert run(data_dir, out, "--steps", "4", "--val-every", "0") == 0
    assert run(data_dir, out, "--steps", "4", "--val-every", "0", "--resume", "--lr", "0.1") == 2
    assert "lr: 0.0003 -> 0.1" in capsys.readouterr().err
    before = (out / "log.csv").read_text()
    assert run(data_dir, out, "--steps", "4", "--val-every", "0", "--resume") == 0
    assert "already at step 4" in capsys.readouterr().out
    assert (out / "log.csv").read_text() == before


def test_out_dir_is_never_overwritten_without_permission(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert run(data_dir, out, "--steps", "2", "--val-every", "0") == 2
    err = capsys.readouterr().err
    assert "is not empty (holds notes.txt)" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]

    assert run(data_dir, out, "--steps", "2", "--val-every", "0", "--overwrite") == 0
    first = load_file(out / "checkpoint" / "model.safetensors")
    assert run(data_dir, out, "--steps", "2", "--val-every", "0") == 2  # a finished run is guarded too
    assert run(data_dir, out, "--steps", "2", "--val-every", "0", "--seed", "1", "--overwrite") == 0
    second = load_file(out / "checkpoint" / "model.safetensors")
    assert not torch.equal(first["obs_embed.weight"], second["obs_embed.weight"])
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite replaces only a run's own outputs
    capsys.readouterr()

    assert run(data_dir, tmp_path / "fresh", "--steps", "2", "--resume") == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert run(data_dir, out, "--steps", "2", "--resume", "--overwrite") == 2
    assert "exclude each other" in capsys.readouterr().err


def test_missing_or_corrupt_data_gives_clear_errors(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    assert run(missing, tmp_path / "a", "--steps", "2") == 2
    assert f"dataset directory {missing} does not exist" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt"
    shutil.copytree(data_dir, corrupt)
    npz = corrupt / "episodes.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])  # truncated, as by a full disk
    assert run(corrupt, tmp_path / "b", "--steps", "2") == 2
    err = capsys.readouterr().err
    assert "episodes.npz" in err and "cannot be read" in err
    (corrupt / "metadata.json").write_text("{ truncated")
    assert run(corrupt, tmp_path / "c", "--steps", "2") == 2
    assert "metadata.json" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abc")  # nothing written for bad data
    with pytest.raises(SystemExit) as exit_info:  # tyro reports the config's own checks and exits
        pretrain.main(["--data", str(data_dir), "--out", str(tmp_path / "d"), "--steps", "0"])
    assert exit_info.value.code == 2
    assert "--steps must be >= 1" in capsys.readouterr().err


# --- batches, masks and the sharded loss ----------------------------------------------------------


def test_epoch_sampler_sees_every_window_once_per_epoch() -> None:
    sampler = sampling.EpochSampler(10, 4, seed=0)
    seen = torch.cat([sampler.indices(step) for step in range(5)])  # 20 positions = 2 epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(sampling.EpochSampler(10, 4, seed=0).indices(3), sampler.indices(3))  # stateless
    assert not torch.equal(sampling.EpochSampler(10, 4, seed=1).indices(0), sampler.indices(0))
    parts = [sampling.shard(7, rank, 3) for rank in range(3)]
    assert [(p.start, p.stop) for p in parts] == [(0, 3), (3, 5), (5, 7)]
    with pytest.raises(ValueError, match="smaller than the number of processes"):
        sampling.shard(1, 0, 2)


def _setup(data_dir: Path, batch: int = 12) -> tuple[PretrainingObjective, WindowBatch, MaskDraw]:
    data = TrajectoryDataset(data_dir, window=6, split="all")
    # Windows near episode starts, so that padding falls unevenly between shares.
    raw = data.get_batch(torch.tensor([0, 1, 2, 60, 51, 3, 120, 7, 150, 201, 252, 4][:batch]))
    windows = normalized_batch(raw, data.normalizer(), torch.device("cpu"))
    torch.manual_seed(0)
    model = MaskedControlTransformer(
        TransformerConfig(obs_dim=4, act_dim=2, context_len=6, n_layer=1, d_model=32)
    )
    weights = ObjectiveWeights(obs_mask_ratio=0.3, policy=0.5)
    draw = draw_masks(batch, 6, weights, torch.Generator().manual_seed(5))
    return PretrainingObjective(model, weights), windows, draw


def _rows(batch: WindowBatch, part: slice) -> WindowBatch:
    fields = ("obs", "act", "rew", "next_obs", "valid", "delta")
    return WindowBatch(**{name: getattr(batch, name)[part] for name in fields})


def test_sharded_loss_equals_pretraining_loss_with_the_same_masks(data_dir: Path) -> None:
    objective, batch, draw = _setup(data_dir)
    sums, counts = objective(batch, draw)
    mine = dict(zip(objective.weights.terms, (sums / counts).tolist(), strict=True))

    # pretraining_loss draws its masks from the same generator stream as the global draw
    same_draw = torch.Generator().manual_seed(5)
    reference = pretraining_loss(objective.model, batch, weights=objective.weights, generator=same_draw)
    assert (
        set(reference.terms)
        == set(mine)
        == {"forward", "inverse", "hindsight", "hindsight_obs", "reward", "policy"}
    )
    for name, value in reference.terms.items():
        assert mine[name] == pytest.approx(float(value.detach()), rel=1e-6), name
    hidden = draw.hidden(batch.valid, objective.weights)
    assert hidden.any() and not hidden[draw.group != GROUPS.index("hindsight")].any()


def test_two_shards_give_the_single_batch_gradient(data_dir: Path) -> None:
    """What DDP computes (each share scaled by the world size, gradients averaged) is the global mean."""
    objective, batch, draw = _setup(data_dir)
    params = [p for p in objective.parameters() if p.requires_grad]

    def grads(parts: list[slice]) -> list[torch.Tensor]:
        shares = [objective(_rows(batch, part), draw.rows(part)) for part in parts]
        counts = sum(share_counts for _, share_counts in shares)  # what the all-reduce gives every process
        total = [torch.zeros_like(p) for p in params]
        for sums, _ in shares:
            loss = len(parts) * LossOutput.from_sums(sums, counts, objective.weights).total
            for acc, grad in zip(total, torch.autograd.grad(loss, params), strict=True):
                acc += grad / len(parts)
        return total

    single = grads([slice(0, 12)])
    split = grads([sampling.shard(12, rank, 2) for rank in range(2)])
    assert max(float((a - b).abs().max()) for a, b in zip(single, split, strict=True)) < 1e-6
    assert max(float(g.abs().max()) for g in single) > 1e-3


def test_frozen_heads_and_grads_on_every_trainable_parameter(data_dir: Path) -> None:
    """DDP without find_unused_parameters needs a gradient for every trainable parameter on every
    process, even for a share holding no sample of some group."""
    objective, batch, draw = _setup(data_dir)
    draw = MaskDraw(torch.zeros_like(draw.group), draw.act_scores, draw.obs_scores)  # all forward
    sums, counts = objective(batch, draw)
    LossOutput.from_sums(sums, counts, objective.weights).total.backward()
    missing = [n for n, p in objective.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    default = PretrainingObjective(
        MaskedControlTransformer(
            TransformerConfig(obs_dim=4, act_dim=2, context_len=6, n_layer=1, d_model=32)
        ),
        ObjectiveWeights(),
    )
    frozen = sorted({n.split(".")[2] for n, p in default.named_parameters() if not p.requires_grad})
    assert frozen == ["policy", "recon_obs"]


def test_several_data_dirs_are_recorded(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--data", str(data_dir), str(data_dir), "--out", str(out), "--steps", "3", *TINY, *QUIET]
    assert pretrain.main(args) == 0
    config = json.loads((out / "checkpoint" / "config.json").read_text())
    assert config["metadata"]["config"]["data"] == [str(data_dir)] * 2


def test_compile_flag_compiles_the_model_in_place(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--compile`` wiring with compilation itself skipped (the slow test below compiles for real):
    the transformer is compiled once, in place, and a run may be resumed with the flag changed."""
    compiled: list[torch.nn.Module] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **_: compiled.append(self))
    common = ["--steps", "6", "--checkpoint-every", "3", "--val-every", "0"]
    assert run(data_dir, tmp_path / "run", *common, "--stop-after", "4") == 0
    assert compiled == []
    assert run(data_dir, tmp_path / "run", *common, "--resume", "--compile") == 0
    assert len(compiled) == 1 and isinstance(compiled[0], MaskedControlTransformer)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert ckpt.step == 6 and ckpt.metadata["config"]["compile"] is True


@pytest.mark.slow
def test_compiled_training_matches_eager(data_dir: Path, tmp_path: Path) -> None:
    """``--compile`` trains the same model: the same losses (train and validation) and weights, to
    float32 rounding of the fused kernels."""
    common = ["--steps", "12", "--val-every", "6", "--log-every", "1", "--lr", "3e-3", "--warmup-steps", "3"]
    assert run(data_dir, tmp_path / "eager", *common) == 0
    assert run(data_dir, tmp_path / "compiled", *common, "--compile") == 0
    eager, compiled = read_rows(tmp_path / "eager"), read_rows(tmp_path / "compiled")
    for a, b in zip(eager, compiled, strict=True):
        for key in a:
            if key.startswith(("train/", "val/")) and a[key]:
                assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4, abs=1e-6), (a["step"], key)
    weights = [
        load_file(tmp_path / name / "checkpoint" / "model.safetensors") for name in ("eager", "compiled")
    ]
    assert weights[0].keys() == weights[1].keys()
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, rtol=1e-4, atol=1e-5)
