"""OracleDynamics reproduces env.step; History validates its shapes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import maskctrl.envs  # noqa: F401  (registers pointmass)
from maskctrl.envs.registry import get_spec
from maskctrl.planner.dynamics import DynamicsModel, History
from maskctrl.planner.oracle import OracleDynamics

MUJOCO_ENVS = ["InvertedPendulum", "Reacher", "HalfCheetah", "Hopper"]


def _env_at_mid_episode(name: str, seed: int, steps: int) -> Any:
    """An unwrapped env after ``steps`` seeded small random actions (identical for equal arguments)."""
    env = get_spec(name).make().unwrapped
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        # Small actions keep InvertedPendulum and Hopper from falling before the comparison starts.
        env.step(0.3 * rng.uniform(-1.0, 1.0, size=env.action_space.shape))
    return env


def _history(obs: np.ndarray, act_dim: int, env_index: int = 0) -> History:
    o = torch.as_tensor(obs, dtype=torch.float64)[None]
    return History(
        obs=o,
        act=torch.zeros(1, act_dim, dtype=torch.float64),
        valid=torch.ones(1, dtype=torch.bool),
        env_index=env_index,
    )


@pytest.mark.parametrize("name", MUJOCO_ENVS)
def test_oracle_reproduces_env_step_exactly(name: str) -> None:
    spec = get_spec(name)
    n, h = 3, 12
    oracle_env = _env_at_mid_episode(name, seed=3, steps=15)
    oracle = OracleDynamics([oracle_env], spec, nthread=2)
    assert isinstance(oracle, DynamicsModel)
    gen = torch.Generator().manual_seed(0)
    actions = torch.rand(n, h, spec.act_dim, generator=gen, dtype=torch.float64) * 2 - 1  # [N,H,A]
    actions[0] = actions[0].sign()  # bang-bang: where Reacher's RK4-stage positions differ most
    current = oracle_env._get_obs()
    out = oracle.rollout(_history(current, spec.act_dim), actions)
    assert out.next_obs.shape == (n, h, spec.obs_dim) and out.reward.shape == (n, h)
    assert out.terminated.shape == (n, h) and out.terminated.dtype == torch.bool
    # The oracle must only read the env, never step it.
    np.testing.assert_array_equal(oracle_env._get_obs(), current)
    for i in range(n):
        env = _env_at_mid_episode(name, seed=3, steps=15)  # an identical twin, stepped for real
        for t in range(h):
            obs, reward, terminated, _, _ = env.step(actions[i, t].numpy())
            np.testing.assert_array_equal(
                out.next_obs[i, t].numpy(), obs, err_msg=f"{name} cand {i} step {t}"
            )
            if spec.reward_exact:
                assert out.reward[i, t].item() == pytest.approx(reward, abs=1e-9)
            if spec.termination_exact:
                assert bool(out.terminated[i, t]) == terminated
    oracle.close()


def test_oracle_follows_the_env_it_is_given() -> None:
    spec = get_spec("HalfCheetah")
    envs = [_env_at_mid_episode("HalfCheetah", seed=s, steps=5) for s in (0, 1)]
    oracle = OracleDynamics(envs, spec, nthread=0)
    actions = torch.zeros(1, 2, spec.act_dim, dtype=torch.float64)
    outs = [
        oracle.rollout(_history(env._get_obs(), spec.act_dim, env_index=i), actions)
        for i, env in enumerate(envs)
    ]
    assert not torch.equal(outs[0].next_obs, outs[1].next_obs)
    twin = _env_at_mid_episode("HalfCheetah", seed=1, steps=5)
    np.testing.assert_array_equal(outs[1].next_obs[0, 0].numpy(), twin.step(np.zeros(spec.act_dim))[0])


def test_reacher_final_state_kinematics_is_close_but_not_exact() -> None:
    spec = get_spec("Reacher")
    env = _env_at_mid_episode("Reacher", seed=4, steps=10)
    actions = torch.ones(1, 10, 2, dtype=torch.float64)
    history = _history(env._get_obs(), 2)
    exact = OracleDynamics([env], spec, exact_observations=True).rollout(history, actions)
    approx = OracleDynamics([env], spec, exact_observations=False).rollout(history, actions)
    diff = (exact.next_obs - approx.next_obs).abs()
    torch.testing.assert_close(exact.next_obs[..., :8], approx.next_obs[..., :8], rtol=0, atol=0)
    assert 0 < diff.max().item() < 2e-2
    # Right after a reset the env's positions come from mj_forward of the true state, which the
    # vectorized kinematics must reproduce.
    oracle = OracleDynamics([env], spec, exact_observations=False)
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        assert oracle._kinematics is not None
        np.testing.assert_allclose(
            oracle._kinematics(env.data.qpos[None])[0, :2], obs[8:10], rtol=0, atol=1e-12
        )


def test_pointmass_oracle_matches_env_step() -> None:
    spec = get_spec("pointmass")
    env = spec.make()
    obs, _ = env.reset(seed=0)
    oracle = OracleDynamics([env], spec)
    gen = torch.Generator().manual_seed(1)
    actions = torch.rand(4, 6, 2, generator=gen, dtype=torch.float64) * 3 - 1.5  # also out of bounds
    out = oracle.rollout(_history(obs, 2), actions)
    for i in range(4):
        twin = spec.make()
        twin.reset(seed=0)
        for t in range(6):
            next_obs, reward, terminated, _, _ = twin.step(actions[i, t].numpy())
            np.testing.assert_allclose(out.next_obs[i, t].numpy(), next_obs, rtol=0, atol=1e-12)
            # The env clips the action; the spec's reward sees the raw one (a planner's candidates are
            # already within bounds), so compare rewards only where the action was in bounds.
            if actions[i, t].abs().max() <= 1:
                assert out.reward[i, t].item() == pytest.approx(reward, abs=1e-12)
            assert not out.terminated[i, t] and not terminated


def test_outputs_follow_actions_dtype() -> None:
    spec = get_spec("pointmass")
    env = spec.make()
    obs, _ = env.reset(seed=0)
    out = OracleDynamics([env], spec).rollout(_history(obs, 2), torch.zeros(2, 3, 2))
    assert out.next_obs.dtype == torch.float32 and out.reward.dtype == torch.float32


def test_bad_inputs_raise_clear_errors() -> None:
    spec = get_spec("pointmass")
    env = spec.make()
    obs, _ = env.reset(seed=0)
    oracle = OracleDynamics([env], spec)
    with pytest.raises(ValueError, match=r"expected actions \[N,H,2\], got \(3, 2\)"):
        oracle.rollout(_history(obs, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="env_index 1 is not in"):
        oracle.rollout(_history(obs, 2, env_index=1), torch.zeros(1, 3, 2))
    with pytest.raises(ValueError, match="one K"):
        History(
            obs=torch.zeros(3, 4), act=torch.zeros(2, 2), valid=torch.ones(3, dtype=torch.bool), env_index=0
        )
    with pytest.raises(ValueError, match="at least one env"):
        OracleDynamics([], spec)
    cheetah = get_spec("HalfCheetah")
    with pytest.raises(ValueError, match=r"observes shape \(18,\), spec 'HalfCheetah' expects \(17,\)"):
        OracleDynamics([cheetah.make(exclude_current_positions_from_observation=False)], cheetah)
