"""Registry of environments maskctrl knows how to plan in.

An :class:`EnvSpec` names a gymnasium environment and carries what a planner needs beyond it: the
observation/action dims, batched torch reward and termination functions (and whether each is exact),
and how the planning objective should treat termination.

INTERFACE (skeleton written before the implementation; field names are relied on elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

RewardFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``reward_fn(obs [...,O], act [...,A], next_obs [...,O]) -> reward [...]`` (float)."""

TerminationFn = Callable[[torch.Tensor], torch.Tensor]
"""``termination_fn(next_obs [...,O]) -> terminated [...]`` (bool)."""


@dataclass(frozen=True, kw_only=True)
class EnvSpec:
    """How maskctrl makes, scores and plans in one environment."""

    name: str
    """Short registry name, e.g. ``"HalfCheetah"``."""
    gym_id: str
    """Gymnasium id to make (v5, or v4 where only gymnasium 0.29 is installed)."""
    obs_dim: int
    """Observation size O."""
    act_dim: int
    """Action size A."""
    reward_fn: RewardFn
    """Batched reward, see :data:`RewardFn`."""
    termination_fn: TerminationFn
    """Batched termination, see :data:`TerminationFn`."""
    reward_exact: bool
    """Whether ``reward_fn`` equals the env's reward (to 1e-5) rather than approximating it."""
    termination_exact: bool
    """Whether ``termination_fn`` equals the env's ``terminated`` flag."""
    make_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments for ``gymnasium.make``."""
    max_episode_steps: int = 1000
    """Episode length limit (truncation)."""
    planning_reward_fn: RewardFn | None = None
    """Shaped reward the planner maximizes instead of ``reward_fn`` (None: use ``reward_fn``)."""
    termination_penalty: float = 0.0
    """Planning cost of a terminating candidate, added once at the step it terminates."""
    notes: str = ""
    """How the functions were validated (e.g. the measured correlation of an approximation)."""

    def make(self, **overrides: Any) -> Any:
        """Create the gymnasium env (``make_kwargs`` updated by ``overrides``)."""
        raise NotImplementedError


def get_spec(name: str) -> EnvSpec:
    """Return the registered spec called ``name``; unknown names list the known ones."""
    raise NotImplementedError


def register_spec(spec: EnvSpec, *, overwrite: bool = False) -> None:
    """Add ``spec`` to the registry."""
    raise NotImplementedError


def list_specs() -> list[str]:
    """Names of all registered specs, sorted."""
    raise NotImplementedError
