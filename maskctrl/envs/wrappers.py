"""Observation wrappers that expose recent history to history-based policies.

:class:`HistoryWrapper` lets the masked control transformer, which reads the last K (obs, action)
pairs, sit behind interfaces that only pass the current observation (SB3 policies, ``imitation``,
gymnasium vector envs): the history *is* the observation.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium
import numpy as np
from gymnasium import spaces


def _widened_box(box: spaces.Box, k: int) -> spaces.Box:
    """``[K, *shape]`` float32 box with ``box``'s bounds, widened to contain the zero padding."""
    low = np.minimum(box.low, 0.0).astype(np.float32)
    high = np.maximum(box.high, 0.0).astype(np.float32)
    return spaces.Box(
        low=np.broadcast_to(low, (k, *box.shape)).copy(),
        high=np.broadcast_to(high, (k, *box.shape)).copy(),
        dtype=np.float32,
    )


class HistoryWrapper(
    gymnasium.Wrapper[dict[str, Any], np.ndarray, np.ndarray, np.ndarray],
    gymnasium.utils.RecordConstructorArgs,
):
    """Turn a Box-obs, Box-action env into a ``Dict`` observation of its last K steps, newest last.

    The observation holds ``"obs"`` ``[K,O]`` float32, ``"act"`` ``[K,A]`` float32 — the action taken
    *before* each of those observations (zero for the reset observation, whose slot has no action) —
    and ``"valid"`` ``[K]`` float32, 1 where the slot holds real data and 0 for the left padding that
    fills the history after a reset (padding is all zeros). Recorded actions are clipped to the action
    space, as MuJoCo clips controls, so the observation stays inside its space.

    :param env: an env with ``Box`` observation and action spaces of any shape (flattened to O, A).
    :param history_len: K, the number of steps kept (>= 1).
    """

    def __init__(self, env: gymnasium.Env[Any, Any], history_len: int) -> None:
        if not isinstance(env.observation_space, spaces.Box):
            raise TypeError(
                f"HistoryWrapper needs a Box observation space, got {type(env.observation_space).__name__}"
            )
        if not isinstance(env.action_space, spaces.Box):
            raise TypeError(f"HistoryWrapper needs a Box action space, got {type(env.action_space).__name__}")
        if history_len < 1:
            raise ValueError(f"history_len must be >= 1, got {history_len}")
        # recorded so that env.spec can re-make the wrapped env (check_env does)
        gymnasium.utils.RecordConstructorArgs.__init__(self, history_len=history_len)
        gymnasium.Wrapper.__init__(self, env)
        self.history_len = history_len
        obs_box = spaces.Box(
            env.observation_space.low.reshape(-1), env.observation_space.high.reshape(-1), dtype=np.float64
        )
        act_box = spaces.Box(env.action_space.low.reshape(-1), env.action_space.high.reshape(-1))
        self._act_low = act_box.low.astype(np.float64)
        self._act_high = act_box.high.astype(np.float64)
        self.observation_space = spaces.Dict(
            {
                "obs": _widened_box(obs_box, history_len),
                "act": _widened_box(act_box, history_len),
                "valid": spaces.Box(0.0, 1.0, shape=(history_len,), dtype=np.float32),
            }
        )
        o_dim, a_dim = obs_box.shape[0], act_box.shape[0]
        self._obs = np.zeros((history_len, o_dim), dtype=np.float32)  # [K,O]
        self._act = np.zeros((history_len, a_dim), dtype=np.float32)  # [K,A]
        self._valid = np.zeros(history_len, dtype=np.float32)  # [K]

    def _observation(self) -> dict[str, Any]:
        # copies: callers (vector envs, replay buffers) keep these arrays, and reset() refills ours in place
        return {"obs": self._obs.copy(), "act": self._act.copy(), "valid": self._valid.copy()}

    def _push(self, obs: Any, act: np.ndarray | None) -> None:
        self._obs = np.roll(self._obs, -1, axis=0)
        self._act = np.roll(self._act, -1, axis=0)
        self._valid = np.roll(self._valid, -1)
        self._obs[-1] = np.asarray(obs, dtype=np.float32).reshape(-1)
        self._act[-1] = 0.0 if act is None else act
        self._valid[-1] = 1.0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Reset the env; the history becomes K-1 zero padding slots and the reset observation."""
        obs, info = self.env.reset(seed=seed, options=options)
        self._obs.fill(0.0)
        self._act.fill(0.0)
        self._valid.fill(0.0)
        self._push(obs, None)
        return self._observation(), info

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the env with ``action`` and append (next obs, clipped ``action``) to the history.

        :raises ValueError: ``action`` does not have the action space's size, or is not finite (checked
            before the env steps).
        """
        flat = np.asarray(action, dtype=np.float64).reshape(-1)
        if flat.shape != self._act_low.shape:
            raise ValueError(
                f"expected action of shape {self.env.action_space.shape}, got {np.shape(action)}"
            )
        if not np.isfinite(flat).all():  # the env would step with it and the history would record it
            raise ValueError(f"expected a finite action, got {flat.tolist()}")
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._push(obs, np.clip(flat, self._act_low, self._act_high).astype(np.float32))
        return self._observation(), reward, terminated, truncated, info
