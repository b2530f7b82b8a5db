"""Behaviour cloning: the loss falls, freezing holds, the policy keeps per-env histories and fits SB3,
the CLI round-trips, BC on a pointmass expert beats random, and bad input gets a clear error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from maskctrl.cli import main as cli_main
from maskctrl.data.collect import RandomPolicy, collect_episodes
from maskctrl.data.dataset import TrajectoryDataset
from maskctrl.data.episodes import save_episodes
from maskctrl.envs.pointmass import POINTMASS_ID
from maskctrl.models.checkpoint import CheckpointError, EnvInfo, load_checkpoint, save_checkpoint
from maskctrl.models.objectives import WindowBatch
from maskctrl.models.transformer import MaskedControlTransformer, TransformerConfig
from maskctrl.policies.bc import BCConfig, train_bc
from maskctrl.policies.transformer_policy import TransformerPolicy, bc_loss

TINY_MODEL = {"n_layer": 2, "n_head": 2, "d_model": 32}
TINY_CLI = ["--n-layer", "2", "--n-head", "2", "--d-model", "32", "--window", "4", "--batch-size", "32"]
QUIET: dict[str, Any] = {"progress": False, "device": "cpu"}


class PointMassExpert:
    """A PD controller that drives the point mass to the origin (return about -10 from the usual starts)."""

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        obs = np.asarray(observation)
        return np.clip(-2.0 * obs[..., :2] - 2.5 * obs[..., 2:], -1.0, 1.0).astype(np.float32), state


def tiny_model(seed: int = 0, discrete: bool = False) -> MaskedControlTransformer:
    torch.manual_seed(seed)
    config = TransformerConfig(obs_dim=4, act_dim=2, discrete_actions=discrete, context_len=4, **TINY_MODEL)
    return MaskedControlTransformer(config)


def returns(policy: Any, episodes: int = 4, seed: int = 500) -> float:
    data = collect_episodes(
        "pointmass", policy, n_episodes=episodes, n_envs=episodes, seed=seed, progress=False
    )
    return float(data.returns().mean())


@pytest.fixture(scope="module")
def expert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten PD-expert pointmass episodes (500 steps)."""
    out = tmp_path_factory.mktemp("data") / "pointmass-expert"
    save_episodes(
        collect_episodes("pointmass", PointMassExpert(), n_episodes=10, seed=0, progress=False), out
    )
    return out


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory: pytest.TempPathFactory, expert_dir: Path) -> Path:
    """A tiny 'pretrained' pointmass checkpoint (untrained weights, the data's normalizer)."""
    env = gym.make(POINTMASS_ID)
    normalizer = TrajectoryDataset(expert_dir, window=4).normalizer()
    path = tmp_path_factory.mktemp("ckpt") / "base"
    info = EnvInfo.from_env(env, name="pointmass")
    return save_checkpoint(path, tiny_model(), normalizer=normalizer, env=info, metadata={"made_by": "test"})


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory: pytest.TempPathFactory, expert_dir: Path) -> Path:
    """BC from scratch on the expert data: 200 steps, validated every 100."""
    out = tmp_path_factory.mktemp("runs") / "scratch"
    cfg = BCConfig(
        data=(expert_dir,), out=out, steps=200, batch_size=64, lr=3e-3, warmup_steps=10, window=4,
        dropout=0.0, val_every=100, val_episodes=3, log_every=25, **TINY_MODEL, **QUIET,
    )  # fmt: skip
    result = train_bc(cfg)
    assert result.checkpoint == out / "checkpoint" and result.saved_step in (100, 200)
    return out


def log_rows(out: Path) -> list[dict[str, str]]:
    import csv

    with (out / "log.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_loss_falls_and_run_is_recorded(scratch_run: Path) -> None:
    rows = log_rows(scratch_run)
    assert [int(r["step"]) for r in rows] == list(range(25, 201, 25))
    losses = [float(r["train/loss"]) for r in rows]
    assert losses[-1] < 0.1 * losses[0]
    val = [r for r in rows if r["val/return"]]
    assert [int(r["step"]) for r in val] == [100, 200] and all(r["val/loss"] for r in val)
    assert (scratch_run / "bc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((scratch_run / "checkpoint" / "config.json").read_text())["metadata"]
    assert meta["made_by"] == "maskctrl bc" and meta["base"] == {"init": "scratch"}
    assert meta["dataset"]["env_name"] == "pointmass" and meta["dataset"]["train_episodes"] == 9
    assert meta["policy"] == {"history_len": 4} and meta["config"]["steps"] == 200
    best = max(val, key=lambda r: float(r["val/return"]))  # keep_best saved the best validation return
    assert meta["saved_step"] == int(best["step"]) and meta["val_return"] == pytest.approx(
        float(best["val/return"])
    )


def test_bc_on_expert_beats_random(scratch_run: Path) -> None:
    policy = TransformerPolicy.load(
        scratch_run / "checkpoint", env=gym.make(POINTMASS_ID), env_name="pointmass"
    )
    bc, expert = returns(policy), returns(PointMassExpert())
    random = returns(RandomPolicy(gym.make(POINTMASS_ID).action_space, seed=0))
    assert bc > random + 0.7 * (expert - random), (bc, expert, random)


def test_evaluate_policy_on_two_env_dummy_vec_env(scratch_run: Path) -> None:
    policy = TransformerPolicy.load(scratch_run / "checkpoint")
    venv = DummyVecEnv([lambda: Monitor(gym.make(POINTMASS_ID))] * 2)
    venv.seed(7)
    rewards, lengths = evaluate_policy(policy, venv, n_eval_episodes=4, return_episode_rewards=True)
    assert lengths == [50] * 4 and policy.n_envs == 2
    assert np.mean(rewards) > -25  # random actions score about -45 from these starts


@pytest.mark.parametrize("mode", ["freeze_trunk", "freeze_blocks", "full"])
def test_freezing(mode: str, expert_dir: Path, base_checkpoint: Path, tmp_path: Path) -> None:
    options = {"freeze_trunk": {"freeze_trunk": True}, "freeze_blocks": {"freeze_blocks": 1}, "full": {}}[
        mode
    ]
    cfg = BCConfig(
        data=(expert_dir,), out=tmp_path, checkpoint=base_checkpoint, steps=5, lr=1e-2, warmup_steps=0,
        val_every=0, **options, **QUIET,
    )  # fmt: skip
    train_bc(cfg)
    before, after = (
        load_file(base_checkpoint / "model.safetensors"),
        load_file(tmp_path / "checkpoint" / "model.safetensors"),
    )
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    embeddings = {
        n for n in before if n.startswith(("obs_embed", "act_embed", "modality", "timestep", "mask_token"))
    }
    block0 = {n for n in before if n.startswith("blocks.0.")}
    policy_head = {n for n in before if n.startswith("heads.policy.")}
    other_heads = {n for n in before if n.startswith("heads.")} - policy_head
    trainable = {
        "freeze_trunk": policy_head,
        "freeze_blocks": set(before) - embeddings - block0 - other_heads,
        "full": set(before) - other_heads,
    }[mode]
    assert changed == trainable - {"mask_token"}  # nothing is hidden in BC: [MASK] gets no gradient
    meta = load_checkpoint(tmp_path / "checkpoint").metadata
    assert meta["base"]["init"] == "pretrained" and meta["base"]["checkpoint"] == str(base_checkpoint)
    assert set(meta["trainable"]) == trainable


def test_fine_tuning_keeps_the_checkpoint_normalizer(
    expert_dir: Path, base_checkpoint: Path, tmp_path: Path
) -> None:
    more = tmp_path / "more"
    save_episodes(collect_episodes("pointmass", "random", n_episodes=3, seed=50, progress=False), more)
    cfg = BCConfig(
        data=(expert_dir, more),
        out=tmp_path / "run",
        checkpoint=base_checkpoint,
        steps=2,
        val_every=0,
        **QUIET,
    )
    train_bc(cfg)
    base, tuned = load_checkpoint(base_checkpoint), load_checkpoint(tmp_path / "run" / "checkpoint")
    assert base.normalizer is not None and tuned.normalizer is not None
    assert torch.equal(base.normalizer.obs_std, tuned.normalizer.obs_std)


def test_predict_keeps_per_env_history_and_resets_on_episode_start() -> None:
    space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    model = tiny_model(seed=3)
    batched, alone = (TransformerPolicy(model, None, space) for _ in range(2))
    others = TransformerPolicy(model, None, space)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(5, 2, 4))  # [steps, envs, O]
    starts = np.array([[True, True], [False, False], [False, False], [True, False], [False, False]])
    for t in range(5):
        both, _ = batched.predict(obs[t], episode_start=starts[t])
        single, _ = alone.predict(obs[t, 0], episode_start=starts[t, :1])
        other, _ = others.predict(obs[t, 1:], episode_start=starts[t, 1:])
        assert both.shape == (2, 2) and single.shape == (2,)
        np.testing.assert_allclose(both[0], single, atol=1e-6)
        np.testing.assert_allclose(both[1], other[0], atol=1e-6)
        if t == 3:  # env 0 was reset: one real step; env 1 keeps all four
            h = batched.histories
            assert h.valid.tolist() == [[False, False, False, True], [True, True, True, True]]
            np.testing.assert_allclose(h.obs[1].numpy(), obs[:4, 1], atol=1e-6)
            assert torch.equal(h.act[0], torch.zeros(4, 2)) and not torch.equal(
                h.act[1, :3], torch.zeros(3, 2)
            )
    # The history matters: the same current observation after another past gives another action.
    fresh = TransformerPolicy(model, None, space)
    after_nothing, _ = fresh.predict(obs[4], episode_start=np.array([True, True]))
    assert not np.allclose(after_nothing[1], both[1], atol=1e-4)


def test_actions_stay_within_bounds() -> None:
    low, high = np.array([-0.5, -2.0], np.float32), np.array([1.0, 0.25], np.float32)
    space = gym.spaces.Box(low, high, dtype=np.float32)
    model = tiny_model()
    policy = TransformerPolicy(model, None, space)
    for bias in (50.0, -50.0):
        with torch.no_grad():
            model.heads.policy[-1].bias.fill_(bias)
        action, _ = policy.predict(np.full((3, 4), 1e3), episode_start=np.ones(3, dtype=bool))
        assert action.dtype == np.float32
        np.testing.assert_array_equal(action, np.broadcast_to(space.high if bias > 0 else space.low, (3, 2)))


def test_discrete_actions_train_and_act() -> None:
    model = tiny_model(discrete=True)
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(32, 4, 4, generator=gen)
    act = (obs[..., 0] + obs[..., 1] > 0).long()  # [B, T]: a function of o_t
    batch = WindowBatch(
        obs=obs, act=act, rew=torch.zeros(32, 4), next_obs=obs, valid=torch.ones(32, 4, dtype=torch.bool)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = float(bc_loss(model, batch).detach())
    for _ in range(60):
        optimizer.zero_grad()
        bc_loss(model, batch).backward()
        optimizer.step()
    assert float(bc_loss(model, batch).detach()) < 0.5 * first
    policy = TransformerPolicy(model, None, gym.spaces.Discrete(2))
    action, _ = policy.predict(obs[:3, -1].numpy(), episode_start=np.ones(3, dtype=bool))
    assert action.dtype == np.int64 and action.shape == (3,) and set(action.tolist()) <= {0, 1}


def test_cli_collect_bc_load_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, out = tmp_path / "data", tmp_path / "run"
    assert (
        cli_main(["collect", "--env", "pointmass", "--episodes", "3", "--out", str(data), "--no-progress"])
        == 0
    )
    args = ["bc", "--data", str(data), "--out", str(out), *TINY_CLI, "--steps", "20", "--val-every", "10"]
    assert cli_main([*args, "--val-episodes", "2", "--device", "cpu", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "20 steps" in printed and f"checkpoint: {out / 'checkpoint'}" in printed
    policy = TransformerPolicy.load(out / "checkpoint", env=gym.make(POINTMASS_ID), env_name="pointmass")
    assert policy.history_len == 4 and policy.model.config.d_model == 32
    action, _ = policy.predict(np.zeros(4))
    assert action.shape == (2,) and np.all(np.abs(action) <= 1.0)
    assert cli_main([*args, "--no-progress"]) == 2  # --out is taken
    err = capsys.readouterr().err
    assert "not empty" in err and "--resume" not in err  # bc has no --resume to offer


def test_checkpoint_for_another_env_is_refused(base_checkpoint: Path, tmp_path: Path) -> None:
    reacher = tmp_path / "reacher"
    save_episodes(
        collect_episodes("Reacher", "random", n_episodes=2, seed=0, max_steps=5, progress=False), reacher
    )
    cfg = BCConfig(data=(reacher,), out=tmp_path / "run", checkpoint=base_checkpoint, steps=1, **QUIET)
    with pytest.raises(
        CheckpointError, match=r"checkpoint expects obs dim 4, env 'Reacher' has 1[01]"
    ) as err:
        train_bc(cfg)
    assert "trained on 'pointmass', not 'Reacher'" in str(err.value)
    assert not (tmp_path / "run").exists()
    env = gym.make("Reacher-v5")
    with pytest.raises(CheckpointError, match="checkpoint expects obs dim 4"):
        TransformerPolicy.load(base_checkpoint, env=env)
    policy = TransformerPolicy.load(base_checkpoint)
    with pytest.raises(
        ValueError, match=r"expected observation of shape \(n_envs, 4\) or \(4,\), got \(10,\)"
    ):
        policy.predict(env.reset(seed=0)[0])
    with pytest.raises(ValueError, match="keeps its own history"):
        policy.predict({"obs": np.zeros((4, 4)), "act": np.zeros((4, 2)), "valid": np.ones(4)})
    with pytest.raises(CheckpointError, match="expects continuous"):
        TransformerPolicy(tiny_model(), None, gym.spaces.Discrete(2))


def test_missing_dataset_and_checkpoint(
    expert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"dataset directory {missing} does not exist"):
        train_bc(BCConfig(data=(missing,), out=tmp_path / "a", **QUIET))
    assert cli_main(["bc", "--data", str(missing), "--out", str(tmp_path / "b"), "--no-progress"]) == 2
    assert f"maskctrl bc: dataset directory {missing} does not exist" in capsys.readouterr().err
    cfg = BCConfig(data=(expert_dir,), out=tmp_path / "c", checkpoint=tmp_path / "no-ckpt", **QUIET)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        train_bc(cfg)


def test_window_longer_than_the_checkpoint_context_is_refused(
    expert_dir: Path, base_checkpoint: Path, tmp_path: Path
) -> None:
    cfg = BCConfig(data=(expert_dir,), out=tmp_path, checkpoint=base_checkpoint, window=8, **QUIET)
    with pytest.raises(ValueError, match="--window 8 exceeds the checkpoint's context_len 4"):
        train_bc(cfg)
