"""Our episodes as imitation trajectories, and the error when the extra is missing."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from maskctrl.data.episodes import EpisodeData
from maskctrl.envs.registry import EnvSpec
from maskctrl.envs.wrappers import HistoryWrapper
from maskctrl.policies.imitation import history_observations, require_imitation


def test_history_observations_equal_what_history_wrapper_shows(pointmass: EnvSpec) -> None:
    k = 3
    env = HistoryWrapper(pointmass.make(), history_len=k)
    rng = np.random.default_rng(0)
    wrapped, _ = env.reset(seed=5)
    shown = [wrapped]
    raw_obs = [wrapped["obs"][-1].astype(np.float64)]
    actions = []
    for _ in range(6):
        action = rng.uniform(-1.5, 1.5, size=2)  # beyond the [-1, 1] box: the wrapper clips what it records
        wrapped, *_ = env.step(action)
        shown.append(wrapped)
        raw_obs.append(wrapped["obs"][-1].astype(np.float64))
        actions.append(action)
    box = env.env.action_space
    built = history_observations(np.stack(raw_obs), np.stack(actions), k, act_low=box.low, act_high=box.high)
    for key in ("obs", "act", "valid"):
        expected = np.stack([step[key] for step in shown])  # [T+1,K,...]
        assert built[key].shape == expected.shape
        np.testing.assert_array_equal(built[key], expected, err_msg=key)
    assert built["valid"][0].tolist() == [0.0, 0.0, 1.0]  # the reset step: two padding slots
    assert np.abs(built["act"]).max() <= 1.0


def test_history_observations_reject_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="expected T\\+1 observations for T actions, got 4 and 4"):
        history_observations(np.zeros((4, 2)), np.zeros((4, 1)), 2)


def test_episodes_become_trajectories_plain_and_with_history(pointmass_random_data: EpisodeData) -> None:
    pytest.importorskip("imitation.data.types")
    from imitation.data.types import DictObs, TrajectoryWithRew

    from maskctrl.policies.imitation import episodes_to_trajectories

    data = pointmass_random_data
    plain = episodes_to_trajectories(data)
    history = episodes_to_trajectories(data, history_len=4)
    assert len(plain) == len(history) == data.n_episodes
    for index, (flat, hist) in enumerate(zip(plain, history, strict=True)):
        episode = data.episode(index)
        assert isinstance(flat, TrajectoryWithRew) and flat.terminal
        np.testing.assert_array_equal(flat.obs, episode.observations)
        np.testing.assert_array_equal(flat.acts, episode.actions)
        np.testing.assert_allclose(flat.rews, episode.rewards, rtol=1e-6)
        assert isinstance(hist.obs, DictObs)
        expected = history_observations(episode.observations, episode.actions, 4)
        for key, value in expected.items():
            np.testing.assert_array_equal(hist.obs.get(key), value)
        np.testing.assert_array_equal(hist.acts, flat.acts)


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "imitation.data.types", None)  # importing it now raises ImportError
    with pytest.raises(ImportError, match=r"make_bc_trainer needs .*pip install maskctrl\[imitation\]"):
        require_imitation("make_bc_trainer")
