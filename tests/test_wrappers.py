"""HistoryWrapper: Dict history observations for SB3, imitation and vector envs."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import DummyVecEnv

from maskctrl.envs import POINTMASS_ID, HistoryWrapper, PointMassEnv, get_spec


def test_check_env_passes_for_pointmass_and_a_mujoco_env() -> None:
    check_env(HistoryWrapper(PointMassEnv(), history_len=4))
    check_env(
        HistoryWrapper(get_spec("InvertedPendulum").make().unwrapped, history_len=3), skip_render_check=True
    )
    sb3_check_env(HistoryWrapper(PointMassEnv(), history_len=4), warn=False)


def test_spaces_shapes_and_dtypes() -> None:
    env = HistoryWrapper(get_spec("Hopper").make(), history_len=5)
    space = env.observation_space
    assert isinstance(space, gymnasium.spaces.Dict)
    assert space["obs"].shape == (5, 11) and space["act"].shape == (5, 3) and space["valid"].shape == (5,)
    assert all(space[k].dtype == np.float32 for k in ("obs", "act", "valid"))
    obs, _ = env.reset(seed=0)
    assert {k: v.shape for k, v in obs.items()} == {"obs": (5, 11), "act": (5, 3), "valid": (5,)}
    assert all(v.dtype == np.float32 for v in obs.values())
    assert obs in space


def test_history_holds_last_k_steps_newest_last() -> None:
    k = 3
    env = HistoryWrapper(PointMassEnv(), history_len=k)
    raw = PointMassEnv()
    hist, _ = env.reset(seed=1)
    first, _ = raw.reset(seed=1)
    np.testing.assert_array_equal(hist["valid"], [0, 0, 1])
    np.testing.assert_array_equal(hist["obs"][:2], 0.0)
    np.testing.assert_allclose(hist["obs"][2], first, rtol=1e-6)
    np.testing.assert_array_equal(hist["act"], 0.0)  # no action precedes the reset observation

    raws, acts = [first], []
    for t in range(4):
        act = np.array([0.1 * (t + 1), -0.2 * (t + 1)], dtype=np.float32)
        hist, *_ = env.step(act)
        raws.append(raw.step(act)[0])
        acts.append(act)
        n_real = min(t + 2, k)
        np.testing.assert_array_equal(hist["valid"], [0] * (k - n_real) + [1] * n_real)
        np.testing.assert_allclose(hist["obs"][-n_real:], np.stack(raws[-n_real:]), rtol=1e-6)
        # act[i] is the action that led to obs[i]; the oldest slot may be the reset (action 0)
        expected_acts = [np.zeros(2, np.float32), *acts][-n_real:]
        np.testing.assert_array_equal(hist["act"][-n_real:], np.stack(expected_acts))

    hist, _ = env.reset(seed=2)
    np.testing.assert_array_equal(hist["valid"], [0, 0, 1])
    np.testing.assert_array_equal(hist["obs"][:2], 0.0)
    np.testing.assert_array_equal(hist["act"], 0.0)


def test_returned_arrays_are_not_overwritten_by_later_steps() -> None:
    env = HistoryWrapper(PointMassEnv(), history_len=2)
    first, _ = env.reset(seed=0)
    kept = {k: v.copy() for k, v in first.items()}
    env.step(np.ones(2, dtype=np.float32))
    for key in kept:
        np.testing.assert_array_equal(first[key], kept[key])


def test_recorded_actions_are_clipped_to_the_action_space() -> None:
    env = HistoryWrapper(PointMassEnv(), history_len=2)
    env.reset(seed=0)
    hist, *_ = env.step(np.array([3.0, -0.5], dtype=np.float32))
    np.testing.assert_array_equal(hist["act"][-1], [1.0, -0.5])
    assert hist in env.observation_space


def test_clear_errors() -> None:
    with pytest.raises(TypeError, match="needs a Box action space, got Discrete"):
        HistoryWrapper(gymnasium.make("CartPole-v1"), history_len=2)
    with pytest.raises(TypeError, match="needs a Box observation space, got Discrete"):
        HistoryWrapper(gymnasium.make("FrozenLake-v1"), history_len=2)
    with pytest.raises(ValueError, match="history_len must be >= 1, got 0"):
        HistoryWrapper(PointMassEnv(), history_len=0)
    env = HistoryWrapper(PointMassEnv(), history_len=2)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"expected action of shape \(2,\), got \(3,\)"):
        env.step(np.zeros(3, dtype=np.float32))


def test_works_in_gymnasium_sync_vector_env() -> None:
    def make() -> gymnasium.Env[dict[str, Any], np.ndarray]:
        return HistoryWrapper(gymnasium.make(POINTMASS_ID, max_episode_steps=3), history_len=5)

    venv = gymnasium.vector.SyncVectorEnv([make, make])
    obs, _ = venv.reset(seed=0)
    assert obs["obs"].shape == (2, 5, 4) and obs["act"].shape == (2, 5, 2)
    np.testing.assert_array_equal(obs["valid"], [[0, 0, 0, 0, 1]] * 2)
    actions = np.full((2, 2), 0.5, dtype=np.float32)
    for _ in range(3):
        obs, _, _, truncated, _ = venv.step(actions)
    assert truncated.all()
    np.testing.assert_array_equal(obs["valid"], [[0, 1, 1, 1, 1]] * 2)
    np.testing.assert_array_equal(obs["act"][:, 2:], 0.5)  # slot 1 is the reset obs: no action
    np.testing.assert_array_equal(obs["act"][:, :2], 0.0)
    obs, *_ = venv.step(actions)  # next-step autoreset: this step resets the sub-envs
    np.testing.assert_array_equal(obs["valid"], [[0, 0, 0, 0, 1]] * 2)
    np.testing.assert_array_equal(obs["act"], 0.0)
    venv.close()


def test_works_in_sb3_dummy_vec_env() -> None:
    def make() -> gymnasium.Env[dict[str, Any], np.ndarray]:
        return HistoryWrapper(get_spec("InvertedPendulum").make(), history_len=3)

    venv = DummyVecEnv([make, make])
    venv.seed(0)
    obs = venv.reset()
    assert isinstance(obs, dict)
    assert obs["obs"].shape == (2, 3, 4) and obs["act"].shape == (2, 3, 1)
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(200):  # random actions topple the pendulum within a few dozen steps
        obs, _, dones, infos = venv.step(rng.uniform(-3, 3, size=(2, 1)).astype(np.float32))
        assert isinstance(obs, dict)
        for i in np.flatnonzero(dones):
            ended += 1
            # SB3 resets at once: the returned obs starts a fresh history, the last one is in info
            np.testing.assert_array_equal(obs["valid"][i], [0, 0, 1])
            assert infos[i]["terminal_observation"]["valid"][-1] == 1.0
    assert ended >= 2
