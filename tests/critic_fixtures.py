"""A small unfitted safety critic shared by the critic tests."""

from __future__ import annotations

import torch

from maskctrl.planner.critic import CriticConfig, SafetyCritic


def tiny_critic(obs_dim: int = 3, members: int = 3, seed: int = 0) -> SafetyCritic:
    """An unfitted critic with non-trivial standardization (its members disagree: random weights)."""
    gen = torch.Generator().manual_seed(seed)
    config = CriticConfig(members=members, hidden=16, layers=2, steps=1)
    mean = torch.linspace(-1.0, 1.0, obs_dim)
    std = torch.linspace(0.5, 2.0, obs_dim)
    return SafetyCritic(obs_dim, config, mean=mean, std=std, generator=gen)
