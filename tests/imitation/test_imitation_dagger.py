"""imitation's DAgger with oracle MPC (MPCController over OracleDynamics) as the expert."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv

from maskctrl.data.collect import RandomPolicy
from maskctrl.envs.registry import EnvSpec
from maskctrl.planner.mpc import MPCConfig
from maskctrl.planner.presets import preset_config
from maskctrl.policies.imitation import (
    BCTrainerConfig,
    MPCExpert,
    make_bc_trainer,
    make_dagger_trainer,
    make_policy,
    make_venv,
    oracle_controller,
    oracle_expert,
    scratch_backbone,
)

pytest.importorskip("imitation.algorithms.dagger")

from imitation.data import rollout  # after the skip: only the imitation extra has it


def mean_return(policy: Any, venv: DummyVecEnv, episodes: int, seed: int) -> float:
    """Mean undiscounted return of ``policy`` over ``episodes`` episodes from reset seed ``seed``."""
    venv.seed(seed)
    returns, _ = evaluate_policy(policy, venv, n_eval_episodes=episodes, return_episode_rewards=True)
    return float(np.mean(returns))


def test_mpc_expert_acts_deterministically_in_imitation_rollouts(pointmass: EnvSpec) -> None:
    """DAgger rolls its expert out with deterministic_policy=True, which imitation allows SB3 policies only."""
    venv = make_venv(pointmass, n_envs=2, seed=0)
    expert = oracle_expert(venv, pointmass, preset_config("pointmass"))
    trajectories = rollout.generate_trajectories(
        expert,
        venv,
        rollout.make_sample_until(min_episodes=2),
        rng=np.random.default_rng(0),
        deterministic_policy=True,
    )
    venv.seed(0)
    random_policy = RandomPolicy(venv.action_space, 0)
    random = rollout.generate_trajectories(
        random_policy.predict, venv, rollout.make_sample_until(min_episodes=2), rng=np.random.default_rng(0)
    )
    expert_return = np.mean([traj.rews.sum() for traj in trajectories])
    random_return = np.mean([traj.rews.sum() for traj in random])
    print(f"pointmass returns: expert {expert_return:.2f}, random {random_return:.2f}")
    assert expert_return > random_return + 10.0
    assert all(np.abs(traj.acts).max() <= 1.0 for traj in trajectories)


def test_dagger_with_oracle_mpc_expert_beats_random_on_reacher(
    tmp_path: Path,
    reacher: EnvSpec,
    reacher_expert_config: MPCConfig,
) -> None:
    rounds, steps = 3, 50  # one 50-step episode per round (the BC batch is no larger)
    venv = make_venv(reacher, seed=0)
    expert = oracle_expert(venv, reacher, reacher_expert_config)
    torch.manual_seed(0)
    policy = make_policy(venv, config=scratch_backbone(reacher), freeze=False)
    bc = make_bc_trainer(policy, None, rng=np.random.default_rng(0), config=BCTrainerConfig(batch_size=steps))
    dagger = make_dagger_trainer(
        venv, bc, expert, scratch_dir=tmp_path / "dagger", rng=np.random.default_rng(1)
    )
    dagger.train(
        rounds * steps,
        rollout_round_min_episodes=1,
        rollout_round_min_timesteps=steps,
        bc_train_kwargs={"n_batches": 100, "log_rollouts_venv": None, "progress_bar": False},
    )
    assert dagger.round_num == rounds
    assert sum(len(traj) for traj in dagger._all_demos) == rounds * steps  # every visited state, labelled

    eval_venv = make_venv(reacher, seed=0)
    learned = mean_return(policy, eval_venv, 5, seed=1000)
    random = mean_return(RandomPolicy(eval_venv.action_space, 0), eval_venv, 5, seed=1000)
    print(f"Reacher returns: DAgger {learned:.2f}, random {random:.2f}")
    assert learned > random + 20.0


def test_dagger_needs_array_observations(tmp_path: Path, pointmass: EnvSpec) -> None:
    history = make_venv(pointmass, seed=0, history_len=3)
    plain = make_venv(pointmass, seed=0)
    policy = make_policy(history, config=scratch_backbone(pointmass))
    bc = make_bc_trainer(policy, None, rng=np.random.default_rng(0))
    expert = oracle_expert(plain, pointmass)
    with pytest.raises(ValueError, match="DAgger supports only array observations, got Dict"):
        make_dagger_trainer(history, bc, expert, scratch_dir=tmp_path, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="the BC policy observes Dict"):
        make_dagger_trainer(plain, bc, expert, scratch_dir=tmp_path, rng=np.random.default_rng(0))
    controller = oracle_controller(plain.envs, pointmass)
    with pytest.raises(ValueError, match="MPCExpert plans from plain Box observations; got Dict"):
        MPCExpert(controller, history.observation_space, plain.action_space)
