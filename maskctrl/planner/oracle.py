"""The true simulator as a :class:`~maskctrl.planner.dynamics.DynamicsModel`: the planner's upper bound.

:class:`OracleDynamics` reads the current state of the controlled env (``history.env_index``) and rolls
the N candidates out with ``mujoco.rollout`` on a persistent thread pool, reproducing ``env.step``
exactly: the full physics state (time, qpos, qvel, act, ...) plus the solver's warm start, each action
repeated ``frame_skip`` times. Observations are mapped from the output states in one batched numpy pass
per env type; rewards and terminations come from the spec's functions, as a learned model's would.

``pointmass`` is pure Python and its observation is its whole state, so its oracle is a batched torch
copy of its dynamics, started from the history's current observation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import mujoco
import mujoco.rollout
import numpy as np
import torch

from maskctrl.envs.registry import EnvSpec
from maskctrl.planner.dynamics import History, Rollout, previous_observations

_FULLPHYSICS = mujoco.mjtState.mjSTATE_FULLPHYSICS
ObsFn = Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]
"""``obs_fn(qpos [M,nq], qvel [M,nv], tip_minus_target [M,3] or None) -> obs [M,O]``."""


def _qpos_qvel_obs(exclude_x: bool, vel_clip: float | None) -> ObsFn:
    """HalfCheetah / Hopper / InvertedPendulum: ``qpos`` (minus x when excluded) then ``qvel``."""

    def obs_fn(qpos: np.ndarray, qvel: np.ndarray, tip: np.ndarray | None) -> np.ndarray:
        pos = qpos[:, 1:] if exclude_x else qpos
        vel = np.clip(qvel, -vel_clip, vel_clip) if vel_clip is not None else qvel
        return np.concatenate([pos, vel], axis=1)

    return obs_fn


def _reacher_obs(tip_dims: int) -> ObsFn:
    """Reacher: cos/sin of the arm joints, target xy, arm velocities, fingertip − target (xy or xyz)."""

    def obs_fn(qpos: np.ndarray, qvel: np.ndarray, tip: np.ndarray | None) -> np.ndarray:
        assert tip is not None
        theta = qpos[:, :2]
        return np.concatenate([np.cos(theta), np.sin(theta), qpos[:, 2:], qvel[:, :2], tip[:, :tip_dims]], 1)

    return obs_fn


class _ReacherKinematics:
    """Vectorized ``fingertip - target`` [M,3] from Reacher's qpos [M,4]: two z-hinges and an xy slider.

    The constants come from the model; the constructor checks the formula against ``mj_kinematics``.
    """

    def __init__(self, model: mujoco.MjModel) -> None:
        pos = {name: np.array(model.body(name).pos) for name in ("body0", "body1", "fingertip", "target")}
        self.base, self.link1, self.link2, self.target = (
            pos["body0"],
            pos["body1"],
            pos["fingertip"],
            pos["target"],
        )
        self.target_ref = np.array(model.qpos0[2:4])
        data = mujoco.MjData(model)
        qpos = np.random.default_rng(0).uniform(-3.0, 3.0, size=(4, model.nq)) * np.array(
            [1.0, 1.0, 0.05, 0.05]
        )
        for q in qpos:
            data.qpos[:] = q
            mujoco.mj_kinematics(model, data)
            expected = data.body("fingertip").xpos - data.body("target").xpos
            if np.abs(self(q[None])[0] - expected).max() > 1e-9:
                raise ValueError("Reacher model differs from the two-link arm OracleDynamics assumes")

    def __call__(self, qpos: np.ndarray) -> np.ndarray:
        def rotate(v: np.ndarray, angle: np.ndarray) -> np.ndarray:  # [3] by [M] about z -> [M,2]
            c, s = np.cos(angle), np.sin(angle)
            return np.stack([c * v[0] - s * v[1], s * v[0] + c * v[1]], axis=1)

        tip_xy = self.base[:2] + rotate(self.link1, qpos[:, 0]) + rotate(self.link2, qpos[:, 0] + qpos[:, 1])
        target_xy = self.target[:2] + qpos[:, 2:4] - self.target_ref
        dz = np.full((qpos.shape[0], 1), self.base[2] + self.link1[2] + self.link2[2] - self.target[2])
        return np.concatenate([tip_xy - target_xy, dz], axis=1)


def _mujoco_obs_fn(env: Any, obs_dim: int) -> ObsFn:
    """The observation function of a supported gymnasium MuJoCo env (v4 or v5), by its class."""
    kind = type(env).__name__
    exclude_x = bool(getattr(env, "_exclude_current_positions_from_observation", True))
    if kind == "InvertedPendulumEnv":
        return _qpos_qvel_obs(exclude_x=False, vel_clip=None)
    if kind == "HalfCheetahEnv":
        return _qpos_qvel_obs(exclude_x=exclude_x, vel_clip=None)
    if kind == "HopperEnv":
        return _qpos_qvel_obs(exclude_x=exclude_x, vel_clip=10.0)
    if kind == "ReacherEnv":
        return _reacher_obs(tip_dims=obs_dim - 8)
    raise ValueError(
        f"OracleDynamics has no observation function for {kind}; supported: InvertedPendulumEnv, "
        "ReacherEnv, HalfCheetahEnv, HopperEnv (and the pure-Python pointmass)"
    )


class OracleDynamics:
    """Roll candidates out in the true simulator of each controlled env (see the module docstring).

    :param envs: the envs being controlled, index ``i`` matching ``History.env_index`` (wrapped or not;
        ``.unwrapped`` is used). The oracle reads their current state at every :meth:`rollout`, so they
        must be the very objects that are being stepped (e.g. ``vec_env.envs`` of a ``DummyVecEnv``).
    :param spec: the env's spec; its ``reward_fn`` and ``termination_fn`` score the rollouts.
    :param nthread: threads of the persistent ``mujoco.rollout`` pool (0: the calling thread).
    :param exact_observations: Reacher only. Its observation reads body positions left over from the
        last RK4 stage of the last physics substep, not from the final state (they differ by up to
        ~8e-3 under bang-bang actions). True replays that substep for every imagined step (bit-exact,
        one extra ``mj_step`` per imagined step in Python, ~12 µs, which about doubles the cost of a
        Reacher rollout); False uses vectorized forward kinematics of the final state (approximate).
    """

    def __init__(
        self, envs: Sequence[Any], spec: EnvSpec, *, nthread: int = 2, exact_observations: bool = True
    ) -> None:
        if len(envs) == 0:
            raise ValueError("OracleDynamics needs at least one env to read states from")
        self.envs = [env.unwrapped for env in envs]
        self.spec = spec
        self.exact_observations = exact_observations
        first = self.envs[0]
        shape = tuple(getattr(first.observation_space, "shape", ()) or ())
        if shape != (spec.obs_dim,):
            raise ValueError(
                f"env {type(first).__name__} observes shape {shape}, "
                f"spec {spec.name!r} expects ({spec.obs_dim},)"
            )
        self.is_mujoco = isinstance(getattr(first, "model", None), mujoco.MjModel)
        if not self.is_mujoco:
            if type(first).__name__ != "PointMassEnv":
                raise ValueError(
                    f"OracleDynamics supports gymnasium MuJoCo envs and pointmass, got {type(first).__name__}"
                )
            return
        self.frame_skip = int(first.frame_skip)
        self.obs_fn = _mujoco_obs_fn(first, spec.obs_dim)
        self.needs_tip = type(first).__name__ == "ReacherEnv"
        self._kinematics = _ReacherKinematics(first.model) if self.needs_tip else None
        self.nthread = nthread
        self._pool = mujoco.rollout.Rollout(nthread=nthread)
        # One MjData per pool thread, per distinct model (the envs' models are usually equal copies).
        self._thread_data: dict[int, list[mujoco.MjData]] = {}
        self._scratch: dict[int, mujoco.MjData] = {}

    def close(self) -> None:
        """Shut the rollout thread pool down (also done when the object is garbage collected)."""
        pool = getattr(self, "_pool", None)
        if pool is not None and pool.rollout_ is not None:
            pool.close()

    def __del__(self) -> None:
        self.close()

    def rollout(self, history: History, actions: torch.Tensor) -> Rollout:
        """Simulate ``actions`` [N,H,A] from the current state of env ``history.env_index``.

        Outputs are in ``actions.dtype`` on ``actions.device``; pass float64 actions for bit-exact
        observations. Actions must be floating point (integer ones would truncate the outputs).
        """
        if actions.ndim != 3 or actions.shape[-1] != self.spec.act_dim:
            raise ValueError(f"expected actions [N,H,{self.spec.act_dim}], got {tuple(actions.shape)}")
        if not actions.is_floating_point():
            raise ValueError(f"expected floating-point actions (float32 or float64), got {actions.dtype}")
        if not 0 <= history.env_index < len(self.envs):
            raise ValueError(f"history.env_index {history.env_index} is not in [0, {len(self.envs)})")
        if self.is_mujoco:
            next_obs, obs0 = self._mujoco_rollout(self.envs[history.env_index], actions)
        else:
            next_obs, obs0 = self._pointmass_rollout(self.envs[history.env_index], history, actions)
        act64 = actions.detach().to("cpu", torch.float64)  # the simulator's outputs are on the CPU
        prev_obs = previous_observations(obs0, next_obs)  # [N,H,O]
        reward = self.spec.reward_fn(prev_obs, act64, next_obs)
        terminated = self.spec.termination_fn(next_obs)
        dtype, device = actions.dtype, actions.device
        return Rollout(
            next_obs=next_obs.to(device=device, dtype=dtype),
            reward=reward.to(device=device, dtype=dtype),
            terminated=terminated.to(device=device),
        )

    # ------------------------------------------------------------------ MuJoCo

    def _mujoco_rollout(self, env: Any, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Next observations [N,H,O] and the current observation [1,1,O], float64 on the CPU."""
        model, data = env.model, env.data
        n, h, _ = actions.shape
        fs = self.frame_skip
        state0 = np.empty(mujoco.mj_stateSize(model, _FULLPHYSICS))
        mujoco.mj_getState(model, data, state0, _FULLPHYSICS)
        act = actions.detach().to("cpu", torch.float64).numpy()  # [N,H,A]
        control = np.repeat(act, fs, axis=1)  # [N,H*fs,A]: each action held for frame_skip substeps
        states, _ = self._pool.rollout(
            model,
            self._datas(model),
            state0[None],
            control,
            initial_warmstart=data.qacc_warmstart[None],
        )  # [N,H*fs,S]
        nq, nv = model.nq, model.nv
        final = states[:, fs - 1 :: fs].reshape(n * h, -1)  # [N*H,S] state after each control step
        qpos, qvel = final[:, 1 : 1 + nq], final[:, 1 + nq : 1 + nq + nv]
        tip = self._tip_minus_target(model, states, state0, act, qpos) if self.needs_tip else None
        next_obs = self.obs_fn(qpos, qvel, tip).reshape(n, h, -1)  # [N,H,O]
        tip0 = self._body_tip(model, data)[None] if self.needs_tip else None
        obs0 = self.obs_fn(data.qpos[None], data.qvel[None], tip0).reshape(1, 1, -1)
        return torch.from_numpy(next_obs), torch.from_numpy(obs0)

    def _datas(self, model: mujoco.MjModel) -> list[mujoco.MjData]:
        key = id(model)
        if key not in self._thread_data:
            self._thread_data[key] = [mujoco.MjData(model) for _ in range(max(self.nthread, 1))]
        return self._thread_data[key]

    @staticmethod
    def _body_tip(model: mujoco.MjModel, data: mujoco.MjData) -> np.ndarray:
        """``fingertip - target`` body positions [3] as ``data`` holds them."""
        return np.asarray(data.body("fingertip").xpos - data.body("target").xpos)

    def _tip_minus_target(
        self, model: mujoco.MjModel, states: np.ndarray, state0: np.ndarray, act: np.ndarray, qpos: np.ndarray
    ) -> np.ndarray:
        """Reacher's ``fingertip - target`` [N*H,3] after each control step (``qpos`` [N*H,nq] final)."""
        n, h, _ = act.shape
        fs = self.frame_skip
        if not self.exact_observations:
            assert self._kinematics is not None
            return self._kinematics(qpos)
        scratch = self._scratch.setdefault(id(model), mujoco.MjData(model))
        tip_id, target_id = model.body("fingertip").id, model.body("target").id
        xpos, ctrl = scratch.xpos, scratch.ctrl  # views that stay valid; the loop below is the hot path
        tip = np.empty((n * h, 3))
        # The state before the last substep of control step j is output j*fs + fs - 2 (the initial
        # state when that is -1); stepping it once leaves the RK4 stage positions the env reads.
        before = np.concatenate([np.broadcast_to(state0, (n, 1, state0.size)), states], axis=1)
        before = before[:, fs - 1 :: fs].reshape(n * h, -1)  # [N*H,S]
        flat_act = act.reshape(n * h, -1)
        for m in range(n * h):
            mujoco.mj_setState(model, scratch, before[m], _FULLPHYSICS)
            ctrl[:] = flat_act[m]
            mujoco.mj_step(model, scratch)
            tip[m] = xpos[tip_id] - xpos[target_id]
        return tip

    # ------------------------------------------------------------------ pointmass

    @staticmethod
    def _pointmass_rollout(
        env: Any, history: History, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Semi-implicit Euler exactly as ``PointMassEnv.step``, batched: [N,H,4] and [1,1,4]."""
        dt = float(env.dt)
        state = history.current_obs.detach().to("cpu", torch.float64)  # [4] = pos, vel
        pos = state[:2].expand(actions.shape[0], 2)
        vel = state[2:].expand(actions.shape[0], 2)
        act = actions.detach().to("cpu", torch.float64).clamp(-1.0, 1.0)
        out = []
        for t in range(actions.shape[1]):
            vel = vel + dt * act[:, t]
            pos = pos + dt * vel
            out.append(torch.cat([pos, vel], dim=-1))
        return torch.stack(out, dim=1), state.reshape(1, 1, 4)
