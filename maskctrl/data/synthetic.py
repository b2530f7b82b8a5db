"""A small synthetic linear system for tests and the demo: ``x_{t+1} = A x_t + B u_t + noise``.

Everything about it is known (stable ``A``, full-rank ``B``, a quadratic reward), so each pretraining
objective has a learnable answer: forward dynamics is linear, inverse dynamics is
``u_t = B^+ (x_{t+1} - A x_t)``, and the reward is ``-|x_t|^2 - c |u_t|^2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from maskctrl.models.objectives import WindowBatch


@dataclass(frozen=True, kw_only=True)
class LinearSystem:
    """A discrete-time linear system with a quadratic reward."""

    a: np.ndarray
    """State matrix ``[O, O]`` with spectral radius < 1."""
    b: np.ndarray
    """Input matrix ``[O, A]``."""
    noise_std: float = 0.01
    """Standard deviation of the Gaussian process noise added to each next state."""
    action_cost: float = 0.1
    """The reward's weight ``c`` on ``|u|^2``."""

    @classmethod
    def random(
        cls,
        obs_dim: int,
        act_dim: int,
        rng: np.random.Generator,
        *,
        spectral_radius: float = 0.9,
        noise_std: float = 0.01,
        action_cost: float = 0.1,
    ) -> LinearSystem:
        """A random stable system: ``A`` is a scaled random orthogonal matrix, ``B`` a Gaussian matrix.

        :param spectral_radius: magnitude of every eigenvalue of ``A`` (must be < 1 for stability).
        """
        if obs_dim < 1 or act_dim < 1:
            raise ValueError(f"need obs_dim >= 1 and act_dim >= 1, got {obs_dim} and {act_dim}")
        if not 0.0 < spectral_radius < 1.0:
            raise ValueError(f"spectral_radius must lie in (0, 1) for a stable system, got {spectral_radius}")
        q, r = np.linalg.qr(rng.standard_normal((obs_dim, obs_dim)))
        orthogonal = q * np.sign(np.diag(r))  # sign fix: uniformly distributed orthogonal matrix
        b = rng.standard_normal((obs_dim, act_dim)) / np.sqrt(act_dim)
        return cls(a=spectral_radius * orthogonal, b=b, noise_std=noise_std, action_cost=action_cost)

    @property
    def obs_dim(self) -> int:
        """State size O."""
        return int(self.a.shape[0])

    @property
    def act_dim(self) -> int:
        """Input size A."""
        return int(self.b.shape[1])

    def reward(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """``-|x|^2 - c |u|^2`` for states ``[..., O]`` and inputs ``[..., A]`` -> ``[...]``."""
        return -(x**2).sum(-1) - self.action_cost * (u**2).sum(-1)

    def windows(
        self,
        n: int,
        steps: int,
        rng: np.random.Generator,
        *,
        smoothness: float = 0.8,
        pad_fraction: float = 0.0,
    ) -> WindowBatch:
        """``n`` independent windows of ``steps`` steps from standard-normal initial states.

        Inputs are a stationary AR(1) process with unit variance (``smoothness`` is its coefficient), so
        neighbouring actions are correlated as in a smooth exploration policy. A share ``pad_fraction``
        of the windows starts before its episode: 1 to ``steps - 1`` left steps are padding (zeros,
        ``valid`` False).

        :return: float32 tensors ``obs [n, T, O]``, ``act [n, T, A]``, ``rew [n, T]``, ``next_obs
            [n, T, O]`` and bool ``valid [n, T]``.
        """
        if n < 1 or steps < 1:
            raise ValueError(f"need n >= 1 windows of steps >= 1, got n={n}, steps={steps}")
        if not 0.0 <= smoothness < 1.0 or not 0.0 <= pad_fraction <= 1.0:
            raise ValueError(
                f"need smoothness in [0, 1) and pad_fraction in [0, 1], got {smoothness}, {pad_fraction}"
            )
        obs_dim, act_dim = self.obs_dim, self.act_dim
        x = np.empty((n, steps + 1, obs_dim))  # [n, T+1, O]
        u = np.empty((n, steps, act_dim))  # [n, T, A]
        x[:, 0] = rng.standard_normal((n, obs_dim))
        u[:, 0] = rng.standard_normal((n, act_dim))
        innovation = np.sqrt(1.0 - smoothness**2)
        for t in range(steps):
            if t > 0:
                u[:, t] = smoothness * u[:, t - 1] + innovation * rng.standard_normal((n, act_dim))
            noise = self.noise_std * rng.standard_normal((n, obs_dim))
            x[:, t + 1] = x[:, t] @ self.a.T + u[:, t] @ self.b.T + noise
        rew = self.reward(x[:, :-1], u)  # [n, T]

        valid = np.ones((n, steps), dtype=bool)
        if steps > 1 and pad_fraction > 0:
            padded = rng.random(n) < pad_fraction
            pads = np.where(padded, rng.integers(1, steps, size=n), 0)  # [n] padding steps per window
            valid = np.arange(steps)[None, :] >= pads[:, None]
        obs, next_obs = x[:, :-1], x[:, 1:]
        tensors = [np.where(valid[..., None], v, 0.0) for v in (obs, u, next_obs)]
        tensors.append(np.where(valid, rew, 0.0))
        obs_t, act_t, next_t, rew_t = (torch.as_tensor(v, dtype=torch.float32) for v in tensors)
        return WindowBatch(obs=obs_t, act=act_t, rew=rew_t, next_obs=next_t, valid=torch.as_tensor(valid))
