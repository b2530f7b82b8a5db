"""A 2-D point mass that should reach the origin: a tiny pure-numpy env for fast tests.

State and observation ``[4]`` = position (x, y), velocity (vx, vy). Action ``[2]`` = force in [-1, 1]^2
on a unit mass, integrated with semi-implicit Euler (``v += dt a``; ``p += dt v``, dt = 0.1). Reward
``-||p'|| - 0.01 ||a||^2`` after the step; never terminates; 50 steps per episode (gymnasium's
``TimeLimit``). The optimum is known: drive to the origin and stay there (reward → 0).
With ``render_mode="rgb_array"`` (what Stable-Baselines3's ``make_vec_env`` asks for by default),
:meth:`PointMassEnv.render` draws the point and the origin into a small image.

Registered as gymnasium id ``maskctrl/PointMass-v0`` when :mod:`maskctrl.envs` is imported.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

POINTMASS_ID = "maskctrl/PointMass-v0"
"""Gymnasium id of :class:`PointMassEnv`."""
POINTMASS_MAX_EPISODE_STEPS = 50
"""Episode length (truncation)."""
RENDER_SIZE = 64
"""Side of a rendered frame in pixels."""
RENDER_EXTENT = 2.0
"""A frame shows positions in ``[-extent, extent]^2``; a point outside is drawn at the border."""


class PointMassEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """Point mass on a plane; see the module docstring for dynamics and reward.

    :param dt: integration step (s).
    :param ctrl_cost: weight of ``||a||^2`` in the reward (the registry's reward fn assumes 0.01).
    :param init_pos_range: reset draws each position coordinate uniformly from ``[-r, r]``.
    :param init_vel_range: reset draws each velocity coordinate uniformly from ``[-r, r]``.
    :param render_mode: ``None`` or ``"rgb_array"`` (:meth:`render` returns a frame).
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 10}  # noqa: RUF012 (gymnasium's)

    def __init__(
        self,
        *,
        dt: float = 0.1,
        ctrl_cost: float = 0.01,
        init_pos_range: float = 1.0,
        init_vel_range: float = 0.1,
        render_mode: str | None = None,
    ) -> None:
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(
                f"PointMassEnv renders only 'rgb_array'; expected render_mode=None or 'rgb_array', "
                f"got {render_mode!r}"
            )
        self.dt = dt
        self.ctrl_cost = ctrl_cost
        self.init_pos_range = init_pos_range
        self.init_vel_range = init_vel_range
        self.render_mode = render_mode
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float64)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._state = np.zeros(4, dtype=np.float64)  # [4] = pos (2), vel (2)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start from a random state in the reset box, or from ``options["state"]`` (shape ``(4,)``)."""
        super().reset(seed=seed)
        if options is not None and "state" in options:
            state = np.asarray(options["state"], dtype=np.float64)
            if state.shape != (4,):
                raise ValueError(f"expected options['state'] of shape (4,), got {state.shape}")
            self._state = state.copy()
        else:
            pos = self.np_random.uniform(-self.init_pos_range, self.init_pos_range, size=2)
            vel = self.np_random.uniform(-self.init_vel_range, self.init_vel_range, size=2)
            self._state = np.concatenate([pos, vel])
        return self._state.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply ``action`` (clipped to [-1, 1]) for one step; returns the gymnasium 5-tuple."""
        act = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        if act.shape != (2,):
            raise ValueError(f"expected action of shape (2,), got {act.shape}")
        vel = self._state[2:] + self.dt * act
        pos = self._state[:2] + self.dt * vel
        self._state = np.concatenate([pos, vel])
        dist = float(np.linalg.norm(pos))
        reward = -dist - self.ctrl_cost * float(np.square(act).sum())
        return self._state.copy(), reward, False, False, {"distance": dist}

    def render(self) -> np.ndarray | None:
        """A ``[64, 64, 3]`` uint8 frame (``rgb_array`` mode; None without a render mode).

        White background, grey cross-hairs through the origin (the goal), the point as a red square;
        up is +y.
        """
        if self.render_mode is None:
            return None
        frame = np.full((RENDER_SIZE, RENDER_SIZE, 3), 255, dtype=np.uint8)
        centre = RENDER_SIZE // 2
        frame[centre, :] = frame[:, centre] = 160
        col, row = self._pixel(self._state[0]), RENDER_SIZE - 1 - self._pixel(self._state[1])
        frame[max(row - 2, 0) : row + 3, max(col - 2, 0) : col + 3] = (220, 30, 30)
        return frame

    @staticmethod
    def _pixel(coordinate: float) -> int:
        """Pixel index of a position coordinate, clipped to the frame."""
        scaled = (coordinate + RENDER_EXTENT) / (2 * RENDER_EXTENT) * (RENDER_SIZE - 1)
        return int(np.clip(round(scaled), 0, RENDER_SIZE - 1))


def register_pointmass() -> None:
    """Register :data:`POINTMASS_ID` with gymnasium (idempotent)."""
    if POINTMASS_ID not in gymnasium.envs.registry:
        gymnasium.register(
            id=POINTMASS_ID,
            entry_point="maskctrl.envs.pointmass:PointMassEnv",
            max_episode_steps=POINTMASS_MAX_EPISODE_STEPS,
        )
