"""Per-env rolling histories of what a controller observed and emitted, for vector envs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from maskctrl.planner.dynamics import History


def check_observations(observation: Any, obs_dim: int, *, owner: str) -> tuple[np.ndarray, bool]:
    """Validate a flat observation batch for a policy that keeps its own history.

    :param observation: ``[n_envs, O]`` or ``[O]`` (a single env).
    :param owner: who keeps the history, for the error about dict (``HistoryWrapper``) observations.
    :return: ``(obs [n_envs, O], single)`` where ``single`` says a ``[O]`` observation was given.
    :raises ValueError: a dict, a wrong shape, a non-numeric or complex dtype, or NaN/inf (env index named).
    """
    o = obs_dim
    if isinstance(observation, dict):
        raise ValueError(
            f"expected observation of shape (n_envs, {o}) or ({o},), got a dict with keys "
            f"{sorted(observation)}; {owner} keeps its own history, so give it the unwrapped env's observations"
        )
    obs = np.asarray(observation)
    if obs.ndim == 1 and obs.shape == (o,):
        obs, single = obs[None], True
    elif obs.ndim == 2 and obs.shape[1] == o and obs.shape[0] >= 1:
        single = False
    else:
        raise ValueError(f"expected observation of shape (n_envs, {o}) or ({o},), got {obs.shape}")
    if not np.issubdtype(obs.dtype, np.number):
        raise ValueError(f"expected a numeric observation, got dtype {obs.dtype}")
    if np.issubdtype(obs.dtype, np.complexfloating):
        raise ValueError(
            f"expected a real observation, got dtype {obs.dtype} (would drop the imaginary part)"
        )
    bad = ~np.isfinite(obs).all(axis=1)
    if bad.any():
        raise ValueError(f"observation contains NaN or inf (env index {np.flatnonzero(bad).tolist()})")
    return obs, single


def starting_envs(episode_start: Any, n_envs: int) -> list[int]:
    """Indices of the envs whose episode starts now, from SB3's ``episode_start`` (bool ``[n_envs]``).

    :raises ValueError: ``episode_start`` does not hold one flag per env.
    """
    starts = np.asarray(episode_start, dtype=bool).reshape(-1)
    if starts.shape != (n_envs,):
        raise ValueError(f"expected episode_start of shape ({n_envs},), got {np.shape(episode_start)}")
    return [int(i) for i in np.flatnonzero(starts)]


class EnvHistories:
    """The last K observations of each of E envs and the actions emitted at them, newest last.

    The layout of :class:`maskctrl.planner.dynamics.History`, batched over envs: ``obs[e, -1]`` is env
    ``e``'s current observation, ``act[e, k]`` the action emitted at ``obs[e, k]`` (zero in the current
    slot until :meth:`record`), ``valid[e, k]`` False on padding. Shared by
    :class:`~maskctrl.planner.mpc.MPCController` and :class:`~maskctrl.policies.transformer_policy.TransformerPolicy`.

    :param history_len: K.
    :param obs_dim: O.
    :param act_shape: shape of one action, ``(A,)`` or ``()`` for a discrete index.
    :param act_dtype: ``torch.float32``, or ``torch.long`` for discrete actions.
    :param device: where the buffers live.
    """

    def __init__(
        self,
        history_len: int,
        obs_dim: int,
        act_shape: tuple[int, ...],
        *,
        act_dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if history_len < 1:
            raise ValueError(f"history_len must be >= 1, got {history_len}")
        self.history_len, self.obs_dim, self.act_shape = history_len, obs_dim, act_shape
        self.act_dtype, self.device = act_dtype, torch.device(device)
        self.reset(0)

    @property
    def n_envs(self) -> int:
        """Number of envs E."""
        return int(self.obs.shape[0])

    def reset(self, n_envs: int) -> None:
        """Forget everything and hold ``n_envs`` empty histories."""
        k, dev = self.history_len, self.device
        self.obs = torch.zeros(n_envs, k, self.obs_dim, device=dev)  # [E, K, O]
        self.act = torch.zeros(n_envs, k, *self.act_shape, dtype=self.act_dtype, device=dev)  # [E, K(, A)]
        self.valid = torch.zeros(n_envs, k, dtype=torch.bool, device=dev)  # [E, K]
        self.last_act = torch.zeros(n_envs, *self.act_shape, dtype=self.act_dtype, device=dev)  # [E(, A)]

    def forget(self, index: int) -> None:
        """Empty env ``index``'s history (a new episode starts there)."""
        self.obs[index] = 0.0
        self.act[index] = 0
        self.valid[index] = False
        self.last_act[index] = 0

    def push(self, obs: torch.Tensor) -> None:
        """Shift every history one step left and append ``obs [E, O]`` with an empty action slot."""
        self.obs = torch.roll(self.obs, -1, dims=1)
        self.act = torch.roll(self.act, -1, dims=1)
        self.valid = torch.roll(self.valid, -1, dims=1)
        if self.history_len > 1:
            # The action emitted at the previous observation (zero for an env that was just reset).
            self.act[:, -2] = self.last_act
        self.obs[:, -1] = obs
        self.act[:, -1] = 0
        self.valid[:, -1] = True

    def record(self, actions: torch.Tensor) -> None:
        """Remember ``actions [E(, A)]`` as emitted at the current observations (written on the next push)."""
        self.last_act = actions.to(device=self.device, dtype=self.act_dtype)

    def history(self, index: int) -> History:
        """Env ``index``'s history as a dynamics model sees it (see :class:`History`)."""
        return History(obs=self.obs[index], act=self.act[index], valid=self.valid[index], env_index=index)
