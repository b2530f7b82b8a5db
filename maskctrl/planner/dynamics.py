"""The dynamics-model interface the MPC planner rolls out.

A :class:`DynamicsModel` predicts, for N candidate action sequences of length H, what happens to ONE
environment from its real past (a :class:`History`). Learned models read only the history; the oracle
(:class:`maskctrl.planner.oracle.OracleDynamics`) uses ``history.env_index`` to read that env's true
simulator state instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True, kw_only=True)
class History:
    """The real past of one environment, oldest first, ending at the current observation.

    Alignment (the token order of the backbone: ``o_0, a_0, o_1, a_1, ...``): ``obs[k]`` is the observation
    at step ``t-K+1+k`` (so ``obs[K-1]`` is the current one, ``o_t``) and ``act[k]`` is the action taken
    after observing ``obs[k]``. The action at the current step is what the planner is choosing, so
    ``act[K-1]`` is always zero. Rows before the episode started are padding: ``valid`` is False there and
    their values are zero.
    """

    obs: torch.Tensor
    """Observations [K,O], oldest first; ``obs[-1]`` is the current observation."""
    act: torch.Tensor
    """Actions [K,A]; ``act[k]`` was taken at ``obs[k]``; ``act[-1]`` is zero (not taken yet)."""
    valid: torch.Tensor
    """Bool [K]: True where the row holds a real step of the current episode (always True at -1)."""
    env_index: int
    """Which of the controlled environments this history belongs to (the oracle reads its state)."""

    def __post_init__(self) -> None:
        k = self.obs.shape[0]
        if self.obs.ndim != 2 or self.act.ndim != 2 or self.act.shape[0] != k or self.valid.shape != (k,):
            raise ValueError(
                "expected History obs [K,O], act [K,A], valid [K] with one K, got "
                f"obs {tuple(self.obs.shape)}, act {tuple(self.act.shape)}, valid {tuple(self.valid.shape)}"
            )

    @property
    def current_obs(self) -> torch.Tensor:
        """The observation the plan starts from [O]."""
        return self.obs[-1]


@dataclass(frozen=True)
class Rollout:
    """What a dynamics model predicts for N candidate action sequences of length H."""

    next_obs: torch.Tensor
    """Observation after each action [N,H,O]."""
    reward: torch.Tensor
    """Reward of each step [N,H] (float)."""
    terminated: torch.Tensor
    """Bool [N,H]: whether the env would terminate at that step (later steps are meaningless)."""


def previous_observations(start: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """The observation before each imagined step ``[N,H,O]``: ``start`` (any shape of O entries) first,
    then ``next_obs [N,H,O]`` shifted by one step; what a ``reward_fn(obs, act, next_obs)`` reads as obs."""
    first = start.to(next_obs).reshape(1, 1, -1).expand(next_obs.shape[0], 1, -1)  # [N,1,O]
    return torch.cat([first, next_obs[:, :-1]], dim=1)


@runtime_checkable
class DynamicsModel(Protocol):
    """Anything that can roll candidate action sequences out from one environment's history."""

    def rollout(self, history: History, actions: torch.Tensor) -> Rollout:
        """Predict the consequences of ``actions`` [N,H,A] taken from the end of ``history``.

        :param history: the real past of the env, ending at the observation to plan from.
        :param actions: candidate action sequences [N,H,A]; ``actions[:, 0]`` is taken at
            ``history.current_obs``.
        :return: next observations [N,H,O], rewards [N,H] and terminations [N,H], on ``actions.device``.
        """
        ...
