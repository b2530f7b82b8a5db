"""MPCController with ``action_repeat``: plans over held blocks, replans once per block, resets cleanly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import maskctrl.envs  # noqa: F401  (registers pointmass)
from maskctrl.envs.registry import EnvSpec, get_spec
from maskctrl.planner.dynamics import History, Rollout
from maskctrl.planner.mpc import MPCConfig, MPCController
from maskctrl.planner.oracle import OracleDynamics


class ShapeRecorder:
    """A fake model that records the candidate shapes it is asked to roll out; reward favours x > 0."""

    def __init__(self, spec: EnvSpec) -> None:
        self.spec = spec
        self.calls: list[torch.Tensor] = []

    def rollout(self, history: History, actions: torch.Tensor) -> Rollout:
        self.calls.append(actions.clone())
        n, h, _ = actions.shape
        return Rollout(
            next_obs=torch.zeros(n, h, self.spec.obs_dim),
            reward=actions[:, :, 0].clone(),
            terminated=torch.zeros(n, h, dtype=torch.bool),
        )


def test_candidates_are_held_blocks_and_the_controller_replans_once_per_block() -> None:
    spec = get_spec("pointmass")
    env = spec.make()
    model = ShapeRecorder(spec)
    cfg = MPCConfig(optimizer="cem", horizon=4, samples=16, iterations=2, action_repeat=3, seed=0)
    controller = MPCController(model, spec, env.action_space, cfg)
    obs, _ = env.reset(seed=0)
    emitted = []
    for t in range(7):
        action, _ = controller.predict(obs, episode_start=np.array([t == 0]))
        emitted.append(action)
        obs, *_ = env.step(action)
    # Replans at steps 0, 3 and 6: two optimizer iterations each, every candidate 4 blocks of 3 steps.
    assert len(model.calls) == 3 * 2
    for actions in model.calls:
        assert actions.shape == (16, 12, 2)
        blocks = actions.reshape(16, 4, 3, 2)
        torch.testing.assert_close(blocks, blocks[:, :, :1].expand_as(blocks))
    np.testing.assert_array_equal(emitted[0], emitted[1])
    np.testing.assert_array_equal(emitted[1], emitted[2])
    np.testing.assert_array_equal(emitted[3], emitted[5])
    assert not np.array_equal(emitted[2], emitted[3])  # a new plan (the warm start moved on)
    # The history still records every env step and the action really taken at it.
    history = controller.history(0)
    torch.testing.assert_close(history.act[-2], torch.as_tensor(emitted[5]))
    assert history.valid.tolist() == [False] + [True] * 7  # 7 real steps in a history of 8


def test_episode_start_cuts_the_held_block() -> None:
    spec = get_spec("pointmass")
    env = spec.make()
    model = ShapeRecorder(spec)
    cfg = MPCConfig(optimizer="cem", horizon=2, samples=8, iterations=1, action_repeat=4, seed=0)
    controller = MPCController(model, spec, env.action_space, cfg)
    obs, _ = env.reset(seed=0)
    controller.predict(obs, episode_start=np.array([True]))
    controller.predict(obs, episode_start=np.array([False]))
    assert len(model.calls) == 1
    controller.predict(obs, episode_start=np.array([True]))  # new episode: plan at once
    assert len(model.calls) == 2


def test_pointmass_still_reaches_the_goal_with_held_actions() -> None:
    spec = get_spec("pointmass")
    env = spec.make()
    obs, _ = env.reset(seed=0)
    cfg = MPCConfig(optimizer="icem", horizon=5, samples=64, iterations=3, action_repeat=2, seed=0)
    controller = MPCController(OracleDynamics([env], spec), spec, env.action_space, cfg)
    for _ in range(spec.max_episode_steps):
        action, _ = controller.predict(obs)
        assert env.action_space.contains(action)
        obs, *_ = env.step(action)
    assert np.linalg.norm(obs[:2]) < 0.05


def test_action_repeat_must_be_positive() -> None:
    with pytest.raises(ValueError, match="action_repeat >= 1"):
        dataclasses.replace(MPCConfig(), action_repeat=0)
