"""Fixtures of the ``imitation`` plugin tests.

These tests run in the environment that has the ``imitation`` extra (``make imitation`` builds
``.venv-imitation``: gymnasium 0.29, stable-baselines3 2.2); each module that needs the package skips
itself elsewhere. Expert demonstrations are costly (oracle MPC plans at tens of steps per second), so the
Reacher ones are collected once per session with a small planning budget.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from maskctrl.data.collect import collect_episodes
from maskctrl.data.episodes import EpisodeData
from maskctrl.envs.registry import EnvSpec, get_spec
from maskctrl.models.checkpoint import EnvInfo, save_checkpoint
from maskctrl.models.normalizer import Normalizer
from maskctrl.models.transformer import MaskedControlTransformer
from maskctrl.planner.mpc import MPCConfig
from maskctrl.planner.presets import preset_config
from maskctrl.policies.imitation import oracle_controller, scratch_backbone

REACHER_EXPERT_EPISODES = 4
"""Expert episodes of 50 steps each."""


def save_backbone_checkpoint(path: Path, spec: EnvSpec, data: EpisodeData, *, seed: int = 0) -> Path:
    """A checkpoint of a freshly initialized backbone whose normalizer is fitted to ``data``."""
    torch.manual_seed(seed)
    model = MaskedControlTransformer(scratch_backbone(spec))
    episodes = [data.episode(i).observations for i in range(data.n_episodes)]
    obs = np.concatenate([o[:-1] for o in episodes])  # [M,O]
    next_obs = np.concatenate([o[1:] for o in episodes])  # [M,O]
    env = spec.make()
    normalizer = Normalizer.from_data(
        obs, next_obs, act_low=env.action_space.low, act_high=env.action_space.high
    )
    saved = save_checkpoint(path, model, normalizer=normalizer, env=EnvInfo.from_env(env, spec.name))
    env.close()
    return saved


CheckpointFactory = Callable[[Path, EnvSpec, EpisodeData], Path]


# A conftest cannot be imported by name from the test modules, so its helpers reach them as fixtures.


@pytest.fixture(scope="session")
def make_checkpoint() -> CheckpointFactory:
    """:func:`save_backbone_checkpoint`."""
    return save_backbone_checkpoint


@pytest.fixture(scope="session")
def reacher_expert_config() -> MPCConfig:
    """Oracle iCEM on Reacher at a quarter of the preset's cost; it scores about -5 (random: -42)."""
    return preset_config("Reacher", samples=32, horizon=20, iterations=2)


@pytest.fixture(scope="session")
def reacher() -> EnvSpec:
    """Reacher (v4 under gymnasium 0.29, v5 under 1.x)."""
    return get_spec("Reacher")


@pytest.fixture(scope="session")
def pointmass() -> EnvSpec:
    """The pure-Python point mass (50-step episodes)."""
    return get_spec("pointmass")


@pytest.fixture(scope="session")
def reacher_expert_data(reacher: EnvSpec, reacher_expert_config: MPCConfig) -> EpisodeData:
    """Oracle-MPC demonstrations on Reacher, reset seeds 100, 101, ..."""
    expert = partial(oracle_controller, spec=reacher, config=reacher_expert_config)
    return collect_episodes(reacher, expert, n_episodes=REACHER_EXPERT_EPISODES, seed=100, progress=False)


@pytest.fixture(scope="session")
def pointmass_random_data(pointmass: EnvSpec) -> EpisodeData:
    """Two random-policy episodes on the point mass (fast stand-in data for plumbing tests)."""
    return collect_episodes(pointmass, "random", n_episodes=2, seed=0, progress=False)
