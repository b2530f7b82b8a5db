"""The shaped Hopper planning reward: equals the env's terms at a nominal posture, charges drift."""

from __future__ import annotations

import torch

from maskctrl.envs import rewards
from maskctrl.envs.registry import get_spec
from maskctrl.planner.presets import preset_config


def _standing(speed: float = 0.5) -> torch.Tensor:
    obs = torch.zeros(11)
    obs[0] = 1.25  # torso height when standing
    obs[rewards.HOPPER_VEL_INDEX] = speed
    return obs


def test_nominal_posture_pays_exactly_the_env_terms_below_the_speed_cap() -> None:
    obs, nxt, act = _standing(0.4), _standing(0.6), torch.tensor([0.1, -0.2, 0.3])
    planned = rewards.hopper_planning_reward(obs, act, nxt)
    expected = rewards.hopper_reward(obs, act, nxt)  # healthy + mean speed - ctrl
    torch.testing.assert_close(planned, expected)


def test_posture_drift_and_excess_speed_cost_more() -> None:
    obs, act = _standing(), torch.zeros(3)
    base = rewards.hopper_planning_reward(obs, act, _standing())
    for index, value in [(0, 1.0), (1, 0.1), (2, -0.5), (4, -0.7), (7, 2.0)]:  # low, tilt, hip, foot, spin
        drifted = _standing()
        drifted[index] = value
        assert rewards.hopper_planning_reward(obs, act, drifted) < base - 0.05, index
    cap = rewards.HOPPER_PLAN_SPEED_CAP
    at_cap = rewards.hopper_planning_reward(_standing(cap), act, _standing(cap))
    beyond = rewards.hopper_planning_reward(_standing(cap + 1.0), act, _standing(cap + 1.0))
    assert beyond < at_cap  # faster than the cap is charged, not paid
    fallen = _standing()
    fallen[1] = 0.25  # past the 0.2 rad tilt: no healthy bonus either
    assert rewards.hopper_planning_reward(obs, act, fallen) < base - 1.0


def test_hopper_spec_and_preset_use_the_shaped_reward_and_held_actions() -> None:
    spec = get_spec("Hopper")
    assert spec.planning_reward_fn is rewards.hopper_planning_reward
    cfg = preset_config("Hopper")
    assert cfg.action_repeat == 4 and cfg.horizon == 10
    batch = torch.zeros(5, 7, 11)
    assert spec.planning_objective(batch, torch.zeros(5, 7, 3), batch).shape == (5, 7)
