"""Normalizer: statistics, inverses, and JSON round trip."""

from __future__ import annotations

import json

import pytest
import torch

from maskctrl.models.normalizer import Normalizer


def test_statistics_and_inverses() -> None:
    gen = torch.Generator().manual_seed(0)
    obs = 3.0 + 2.0 * torch.randn(500, 4, generator=gen)
    obs[:, 2] = 5.0  # a constant dimension keeps std 1 instead of dividing by zero
    norm = Normalizer.from_data(
        obs, obs + 0.5, rewards=torch.arange(10.0), act_low=[-2.0, 0.0], act_high=[2.0, 1.0]
    )
    z = norm.normalize_obs(obs)
    assert torch.allclose(z[:, [0, 1, 3]].mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z[:, [0, 1, 3]].std(0, unbiased=False), torch.ones(3), atol=1e-4)
    assert norm.obs_std[2] == 1.0
    assert torch.allclose(norm.denormalize_obs(z), obs, atol=1e-5)
    assert torch.allclose(norm.delta_mean, torch.full((4,), 0.5), atol=1e-5)
    act = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, 0.5]])
    assert torch.allclose(norm.normalize_action(act), torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]))
    assert torch.allclose(norm.denormalize_action(norm.normalize_action(act)), act)
    assert norm.denormalize_reward(norm.normalize_reward(torch.tensor(3.0))).item() == pytest.approx(3.0)


def test_json_round_trip() -> None:
    norm = Normalizer.from_data(torch.randn(50, 3), torch.randn(50, 3), act_low=[-1.0], act_high=[1.0])
    back = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    for name in ("obs_mean", "obs_std", "delta_mean", "delta_std", "act_low", "act_high"):
        assert torch.equal(getattr(back, name), getattr(norm, name))


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="NaN"):
        Normalizer.from_data(torch.tensor([[float("nan")]]), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="share a shape"):
        Normalizer.from_data(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="upper bound"):
        Normalizer.identity(2, act_low=[0.0, 1.0], act_high=[1.0, 1.0])
    with pytest.raises(ValueError, match="lack 'obs_std'"):
        Normalizer.from_dict({"obs_mean": [0.0]})
