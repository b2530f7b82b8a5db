"""Normalization statistics that travel with a model.

The transformer sees observations standardized per dimension, predicts standardized observation deltas,
and works with actions scaled from the action space's box to ``[-1, 1]``. A :class:`Normalizer` holds
those statistics, converts both ways on any device, and serializes to plain JSON for ``config.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

_MIN_STD = 1e-6


@dataclass(frozen=True, kw_only=True)
class Normalizer:
    """Per-dimension statistics; every tensor is float32 on the same device.

    A dimension whose spread is below 1e-6 (a constant) gets a standard deviation of 1, so it passes
    through centred but unscaled instead of exploding. Construction refuses non-finite means and
    standard deviations that are not finite and positive (corrupt statistics would turn every
    normalized value into inf or NaN).
    """

    obs_mean: torch.Tensor
    """Mean observation ``[O]``."""
    obs_std: torch.Tensor
    """Observation standard deviation ``[O]``."""
    delta_mean: torch.Tensor
    """Mean one-step observation change ``o_{t+1} - o_t``, ``[O]``."""
    delta_std: torch.Tensor
    """Standard deviation of the one-step observation change ``[O]``."""
    act_low: torch.Tensor | None = None
    """Lower action bound ``[A]`` (None: actions are discrete or used as they are)."""
    act_high: torch.Tensor | None = None
    """Upper action bound ``[A]``."""
    reward_mean: float = 0.0
    """Mean reward per step."""
    reward_std: float = 1.0
    """Standard deviation of the reward per step."""

    def __post_init__(self) -> None:
        dim = self.obs_mean.shape
        for name in ("obs_std", "delta_mean", "delta_std"):
            if getattr(self, name).shape != dim:
                raise ValueError(
                    f"normalizer {name} has shape {tuple(getattr(self, name).shape)}, expected {tuple(dim)}"
                )
        for name in ("obs_mean", "delta_mean", "obs_std", "delta_std"):
            value = getattr(self, name)
            bad = ~torch.isfinite(value) if name.endswith("mean") else ~(torch.isfinite(value) & (value > 0))
            if bool(bad.any()):
                kind = "finite" if name.endswith("mean") else "finite and > 0"
                where = torch.nonzero(bad).flatten().tolist()
                raise ValueError(f"normalizer {name} must be {kind}; it is not at dims {where[:8]}")
        if not (math.isfinite(self.reward_mean) and math.isfinite(self.reward_std) and self.reward_std > 0):
            raise ValueError(
                f"normalizer needs a finite reward_mean and a finite reward_std > 0, got "
                f"{self.reward_mean} and {self.reward_std}"
            )
        if (self.act_low is None) != (self.act_high is None):
            raise ValueError("normalizer needs both act_low and act_high, or neither")
        if self.act_low is not None and self.act_high is not None:
            if self.act_low.shape != self.act_high.shape:
                raise ValueError("normalizer act_low and act_high differ in shape")
            if not bool(torch.isfinite(self.act_low).all() and torch.isfinite(self.act_high).all()):
                raise ValueError("action bounds must be finite to scale actions to [-1, 1]")
            if not bool((self.act_high > self.act_low).all()):
                raise ValueError("every action upper bound must exceed its lower bound")

    @property
    def obs_dim(self) -> int:
        """Observation size O."""
        return int(self.obs_mean.shape[0])

    @classmethod
    def identity(cls, obs_dim: int, act_low: Any = None, act_high: Any = None) -> Normalizer:
        """Statistics that leave observations unchanged (still scaling actions if bounds are given)."""
        zeros, ones = torch.zeros(obs_dim), torch.ones(obs_dim)
        return cls(
            obs_mean=zeros,
            obs_std=ones,
            delta_mean=zeros.clone(),
            delta_std=ones.clone(),
            act_low=None if act_low is None else _as_tensor(act_low),
            act_high=None if act_high is None else _as_tensor(act_high),
        )

    @classmethod
    def from_data(
        cls,
        obs: Any,
        next_obs: Any,
        *,
        rewards: Any = None,
        act_low: Any = None,
        act_high: Any = None,
    ) -> Normalizer:
        """Fit statistics to transitions ``obs [...,O]`` -> ``next_obs [...,O]`` (and ``rewards [...]``)."""
        obs_t, next_t = _as_tensor(obs), _as_tensor(next_obs)
        if obs_t.shape != next_t.shape or obs_t.dim() < 1:
            raise ValueError(
                f"obs {tuple(obs_t.shape)} and next_obs {tuple(next_t.shape)} must share a shape [...,O]"
            )
        flat = obs_t.reshape(-1, obs_t.shape[-1])  # [M,O]
        delta = (next_t - obs_t).reshape(-1, obs_t.shape[-1])  # [M,O]
        if flat.shape[0] == 0:
            raise ValueError("cannot fit a normalizer to zero transitions")
        if not bool(torch.isfinite(flat).all() and torch.isfinite(delta).all()):
            raise ValueError("cannot fit a normalizer to data containing NaN or inf")
        reward_mean, reward_std = 0.0, 1.0
        if rewards is not None:
            rew = _as_tensor(rewards).reshape(-1)
            reward_mean = float(rew.mean())
            reward_std = max(float(rew.std(unbiased=False)), _MIN_STD) if rew.numel() > 1 else 1.0
        return cls(
            obs_mean=flat.mean(0),
            obs_std=_safe_std(flat),
            delta_mean=delta.mean(0),
            delta_std=_safe_std(delta),
            act_low=None if act_low is None else _as_tensor(act_low),
            act_high=None if act_high is None else _as_tensor(act_high),
            reward_mean=reward_mean,
            reward_std=reward_std,
        )

    def to(self, device: torch.device | str) -> Normalizer:
        """The same statistics on ``device``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device)
        return Normalizer(**moved)

    def normalize_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """Standardize observations ``[...,O]``."""
        return (obs - self.obs_mean) / self.obs_std

    def denormalize_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """Invert :meth:`normalize_obs`."""
        return obs * self.obs_std + self.obs_mean

    def normalize_delta(self, delta: torch.Tensor) -> torch.Tensor:
        """Standardize observation changes ``[...,O]``."""
        return (delta - self.delta_mean) / self.delta_std

    def denormalize_delta(self, delta: torch.Tensor) -> torch.Tensor:
        """Invert :meth:`normalize_delta`."""
        return delta * self.delta_std + self.delta_mean

    def normalize_action(self, act: torch.Tensor) -> torch.Tensor:
        """Scale actions ``[...,A]`` from the action box to ``[-1, 1]`` (identity without bounds)."""
        if self.act_low is None or self.act_high is None:
            return act
        return 2.0 * (act - self.act_low) / (self.act_high - self.act_low) - 1.0

    def denormalize_action(self, act: torch.Tensor) -> torch.Tensor:
        """Invert :meth:`normalize_action`."""
        if self.act_low is None or self.act_high is None:
            return act
        return (act + 1.0) * 0.5 * (self.act_high - self.act_low) + self.act_low

    def normalize_reward(self, reward: torch.Tensor) -> torch.Tensor:
        """Standardize rewards."""
        return (reward - self.reward_mean) / self.reward_std

    def denormalize_reward(self, reward: torch.Tensor) -> torch.Tensor:
        """Invert :meth:`normalize_reward`."""
        return reward * self.reward_std + self.reward_mean

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable form (float lists), inverse of :meth:`from_dict`."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.detach().cpu().tolist() if isinstance(value, torch.Tensor) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalizer:
        """Rebuild from :meth:`to_dict` output; a missing or malformed entry raises ``ValueError``."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                if f.name in {"act_low", "act_high", "reward_mean", "reward_std"}:
                    continue
                raise ValueError(f"normalizer statistics lack {f.name!r}")
            value = data[f.name]
            if f.name.startswith("reward"):
                kwargs[f.name] = float(value)
            elif value is not None:
                tensor = _as_tensor(value)
                if tensor.dim() != 1:
                    raise ValueError(f"normalizer {f.name!r} must be a flat list of numbers")
                kwargs[f.name] = tensor
        return cls(**kwargs)


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float32)
    return torch.as_tensor(np.asarray(value, dtype=np.float32))


def _safe_std(x: torch.Tensor) -> torch.Tensor:
    std = x.std(0, unbiased=False)
    return torch.where(std < _MIN_STD, torch.ones_like(std), std)
