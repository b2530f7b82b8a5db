"""Batched torch reward, termination and planning functions, one set per environment.

Every function works on any leading batch shape (``obs [...,O]``, ``act [...,A]``) and on any device,
using only elementwise torch ops (no ``.item()``, no host syncs), so a planner can score ``[N,H]``
imagined steps in one call. Formulas follow the gymnasium source (``gymnasium/envs/mujoco/*_v5.py``,
and ``*_v4.py`` where gymnasium 0.29 only has v4); the constants are the envs' default weights, so a
spec whose ``make_kwargs`` change a reward weight needs its own function.

Observation layouts (default ``exclude_current_positions_from_observation=True``):

- InvertedPendulum ``[4]``: cart x, pole angle, cart velocity, pole angular velocity.
- Reacher ``[10]`` (v5) / ``[11]`` (v4): cos q, sin q, target xy, joint velocities, fingertip − target
  (xy in v5, xyz in v4).
- HalfCheetah ``[17]``: qpos[1:] (8 entries), qvel (9): x-velocity is index 8.
- Hopper ``[11]``: qpos[1:] (z, angle, 3 joints), qvel clipped to [−10, 10] (6): x-velocity is index 5.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# ---------------------------------------------------------------- pointmass


POINTMASS_CTRL_COST = 0.01
"""Weight of ``||a||^2`` in the pointmass reward (mirrors :mod:`maskctrl.envs.pointmass`)."""


def pointmass_reward(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """Exact pointmass reward: ``-||next_pos|| - 0.01 ||a||^2`` (next_obs ``[...,4]`` = pos, vel)."""
    return -torch.linalg.vector_norm(next_obs[..., :2], dim=-1) - POINTMASS_CTRL_COST * act.square().sum(-1)


def never_terminates(next_obs: torch.Tensor) -> torch.Tensor:
    """Termination of envs that only truncate (pointmass, Reacher, HalfCheetah): all False ``[...]``."""
    return torch.zeros(next_obs.shape[:-1], dtype=torch.bool, device=next_obs.device)


# ---------------------------------------------------------------- InvertedPendulum

INVERTED_PENDULUM_MAX_ANGLE = 0.2
"""Pole angle (rad) beyond which the episode terminates."""


def inverted_pendulum_healthy(next_obs: torch.Tensor) -> torch.Tensor:
    """``[...]`` bool: all entries finite and ``|pole angle| <= 0.2`` (the env's condition)."""
    finite = torch.isfinite(next_obs).all(dim=-1)
    return finite & (next_obs[..., 1].abs() <= INVERTED_PENDULUM_MAX_ANGLE)


def inverted_pendulum_termination(next_obs: torch.Tensor) -> torch.Tensor:
    """Exact InvertedPendulum (v4 and v5) termination: not healthy."""
    return ~inverted_pendulum_healthy(next_obs)


def inverted_pendulum_reward(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """Exact InvertedPendulum-v5 reward: 1 while healthy, 0 at the terminating step."""
    return inverted_pendulum_healthy(next_obs).to(next_obs.dtype)


def inverted_pendulum_reward_v4(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """Exact InvertedPendulum-v4 reward: 1 on every step, including the terminating one."""
    return torch.ones(next_obs.shape[:-1], dtype=next_obs.dtype, device=next_obs.device)


def inverted_pendulum_planning_reward(
    obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor
) -> torch.Tensor:
    """Shaped InvertedPendulum objective: upright, centred and still beats merely "not fallen yet".

    The env reward is 1 for every surviving candidate, so a planner cannot tell a plan that keeps the
    pole upright from one that drifts to the rail (|x| = 1) and falls just past the horizon. Quadratic
    costs on the normalized angle, cart position and both velocities break that tie; 0 once unhealthy.
    """
    x, angle, x_vel, angle_vel = next_obs.unbind(-1)
    cost = (
        (angle / INVERTED_PENDULUM_MAX_ANGLE).square()
        + x.square()
        + 0.1 * x_vel.square()
        + 0.01 * angle_vel.square()
    )
    healthy = inverted_pendulum_healthy(next_obs)
    return torch.where(healthy, 1.0 - cost, torch.zeros_like(cost))


# ---------------------------------------------------------------- Reacher

REACHER_DIST_WEIGHT = 1.0
"""Weight of the fingertip-target distance (v5 ``reward_dist_weight`` default; v4 hard-codes 1)."""
REACHER_CTRL_WEIGHT = 1.0
"""Weight of ``||a||^2`` (v5 ``reward_control_weight`` default; v4 hard-codes 1)."""


def reacher_reward(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """Exact Reacher-v5 reward: ``-||next_obs[8:10]|| - ||a||^2``.

    v5 measures the distance after the step; the z offset of fingertip and target is 0, so the xy
    entries the observation keeps carry the whole distance.
    """
    dist = torch.linalg.vector_norm(next_obs[..., 8:10], dim=-1)
    return -REACHER_DIST_WEIGHT * dist - REACHER_CTRL_WEIGHT * act.square().sum(-1)


def reacher_reward_v4(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """Exact Reacher-v4 reward: ``-||obs[8:11]|| - ||a||^2`` (v4 measures the distance *before* the step)."""
    dist = torch.linalg.vector_norm(obs[..., 8:11], dim=-1)
    return -REACHER_DIST_WEIGHT * dist - REACHER_CTRL_WEIGHT * act.square().sum(-1)


# ---------------------------------------------------------------- forward-velocity helpers


def _displacement_velocity(v_before: torch.Tensor, v_after: torch.Tensor, w_after: float) -> torch.Tensor:
    """Mean velocity over one control step, from its end-point velocities.

    The env rewards ``(x' - x) / dt``, the mean of the velocity over the step's physics substeps. With
    semi-implicit Euler and n substeps of constant acceleration that mean is exactly
    ``v0 + (n+1)/(2n) (v_n - v0)``; for RK4 (continuous velocity) the trapezoid ``(v0 + v_n)/2`` fits.
    """
    return (1.0 - w_after) * v_before + w_after * v_after


# ---------------------------------------------------------------- HalfCheetah

HALF_CHEETAH_DT = 0.05
"""Control step: timestep 0.01 × frame_skip 5."""
HALF_CHEETAH_CTRL_COST = 0.1
"""``ctrl_cost_weight`` default."""
HALF_CHEETAH_VEL_INDEX = 8
"""qvel[0] (root x-velocity) in the default 17-dim observation."""
HALF_CHEETAH_W_AFTER = 0.6
"""(n+1)/(2n) for Euler with n = 5 substeps (see :func:`_displacement_velocity`)."""


def half_cheetah_reward(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """Approximate HalfCheetah (v4/v5) reward from the default observation, which excludes x.

    ``0.4 v_x + 0.6 v_x' - 0.1 ||a||^2``; see the spec's ``notes`` for the measured correlation.
    """
    i = HALF_CHEETAH_VEL_INDEX
    forward = _displacement_velocity(obs[..., i], next_obs[..., i], HALF_CHEETAH_W_AFTER)
    return forward - HALF_CHEETAH_CTRL_COST * act.square().sum(-1)


HALF_CHEETAH_PLAN_PITCH_LIMIT = 1.0
"""Torso pitch (rad, ``obs[1]``) beyond which the HalfCheetah planning reward charges a flip."""
HALF_CHEETAH_PLAN_PITCH_WEIGHT = 10.0
"""Charge per squared radian of pitch beyond :data:`HALF_CHEETAH_PLAN_PITCH_LIMIT`."""


def half_cheetah_planning_reward(
    obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor
) -> torch.Tensor:
    """HalfCheetah objective for planning: the env reward, minus a charge for pitching towards a flip.

    The env never terminates, and a cheetah that flips onto its back still runs, slower: oracle iCEM
    (preset budget, reset seeds 0-19) flipped in 9 of 20 episodes, each time in its first 25 steps
    (returns 2100-4900; the 11 upright ones 7570-7990, with pitch at most 0.7-1.23 rad). A short horizon
    sees the speed a flip gains but not the slow episode after it, so the planning reward charges
    ``HALF_CHEETAH_PLAN_PITCH_WEIGHT * (|pitch| - HALF_CHEETAH_PLAN_PITCH_LIMIT)^2`` beyond the limit and
    equals :func:`half_cheetah_reward` everywhere else (pitch wrapped to [-pi, pi): a cheetah that rolled
    all the way over is upright again).
    """
    pitch = torch.remainder(next_obs[..., 1] + math.pi, 2 * math.pi) - math.pi  # the hinge angle is unwrapped
    excess = (pitch.abs() - HALF_CHEETAH_PLAN_PITCH_LIMIT).clamp(min=0.0)
    return half_cheetah_reward(obs, act, next_obs) - HALF_CHEETAH_PLAN_PITCH_WEIGHT * excess.square()


def half_cheetah_reward_with_x(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """Exact HalfCheetah reward for ``exclude_current_positions_from_observation=False`` (obs ``[...,18]``).

    ``(x' - x) / 0.05 - 0.1 ||a||^2`` with x = obs[0]. Not the registered default: a model would then
    see the unbounded absolute x.
    """
    forward = (next_obs[..., 0] - obs[..., 0]) / HALF_CHEETAH_DT
    return forward - HALF_CHEETAH_CTRL_COST * act.square().sum(-1)


# ---------------------------------------------------------------- Hopper

HOPPER_CTRL_COST = 1e-3
"""``ctrl_cost_weight`` default."""
HOPPER_HEALTHY_REWARD = 1.0
"""``healthy_reward`` default."""
HOPPER_VEL_INDEX = 5
"""qvel[0] (root x-velocity, clipped to ±10) in the default 11-dim observation."""
HOPPER_W_AFTER = 0.5
"""Trapezoid weight: hopper.xml integrates with RK4 (see :func:`_displacement_velocity`)."""


def hopper_healthy(next_obs: torch.Tensor) -> torch.Tensor:
    """``[...]`` bool: z > 0.7, |angle| < 0.2 and every entry of ``next_obs[1:]`` inside (−100, 100).

    The env checks ``concat(qpos[2:], qvel)``; ``next_obs[1:]`` holds qpos[2:] exactly but qvel clipped to
    ±10, so this equals the env's flag unless some |qvel| ≥ 100, which the observation cannot show.
    NaN entries compare False, hence unhealthy, as in the env.
    """
    z, angle = next_obs[..., 0], next_obs[..., 1]
    in_range = (next_obs[..., 1:].abs() < 100.0).all(dim=-1)
    return (z > 0.7) & (z < torch.inf) & (angle.abs() < 0.2) & in_range


def hopper_termination(next_obs: torch.Tensor) -> torch.Tensor:
    """Hopper (v4/v5) termination: not healthy (exact up to the |qvel| ≥ 100 caveat above)."""
    return ~hopper_healthy(next_obs)


def _hopper_forward_minus_ctrl(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    i = HOPPER_VEL_INDEX
    forward = _displacement_velocity(obs[..., i], next_obs[..., i], HOPPER_W_AFTER)
    return forward - HOPPER_CTRL_COST * act.square().sum(-1)


def hopper_reward(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """Approximate Hopper-v5 reward: ``healthy(next_obs) + (v_x + v_x')/2 - 0.001 ||a||^2``.

    The healthy bonus is exact; only the forward term approximates ``(x' - x) / dt``.
    """
    healthy = hopper_healthy(next_obs).to(next_obs.dtype)
    return HOPPER_HEALTHY_REWARD * healthy + _hopper_forward_minus_ctrl(obs, act, next_obs)


def hopper_reward_v4(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """Approximate Hopper-v4 reward: v4 pays the healthy bonus on every step, the terminating one too."""
    return HOPPER_HEALTHY_REWARD + _hopper_forward_minus_ctrl(obs, act, next_obs)


HOPPER_PLAN_SPEED_CAP = 0.8
"""Forward speed (m/s) beyond which the Hopper planning reward stops paying and starts charging."""
HOPPER_PLAN_WEIGHTS = {"height": 5.0, "angle": 5.0, "joints": 2.0, "angular_velocity": 0.3}
"""Weights of the Hopper planning reward's posture costs (see :func:`hopper_planning_reward`)."""


def hopper_planning_reward(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """Shaped Hopper objective: stay healthy and upright, move forward at a capped speed.

    The env pays speed and a healthy bonus, and an episode ends when the torso tilts past 0.2 rad or
    drops below 0.7 m. Planning the env reward over a horizon of a fraction of a second lets the
    posture drift (the hip swings forward, the foot reaches its joint limit) until a fall is certain:
    oracle MPC fell after 110-230 steps at every budget tried. This reward charges that drift while it
    is still cheap to correct: torso below its standing height (1.25 m), torso tilt, joint angles away
    from straight, torso angular velocity, and speed beyond :data:`HOPPER_PLAN_SPEED_CAP` (charged
    twice what it would have paid).
    """
    return _hopper_capped_reward(_hopper_speed(obs, next_obs), act, next_obs) - hopper_posture_cost(next_obs)


def hopper_posture_cost(next_obs: torch.Tensor) -> torch.Tensor:
    """The posture costs of :func:`hopper_planning_reward` (weights :data:`HOPPER_PLAN_WEIGHTS`)."""
    w = HOPPER_PLAN_WEIGHTS
    z, angle = next_obs[..., 0], next_obs[..., 1]
    return (
        w["height"] * ((z - 1.25).clamp(max=0.0) / 0.55).square()
        + w["angle"] * (angle / 0.2).square()
        + w["joints"] * next_obs[..., 2:5].square().sum(-1)
        + w["angular_velocity"] * next_obs[..., 7].square()
    )


def _hopper_speed(obs: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """Forward speed over a transition: the mean of the x velocities before and after."""
    return 0.5 * (obs[..., HOPPER_VEL_INDEX] + next_obs[..., HOPPER_VEL_INDEX])


def _hopper_capped_reward(speed: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """Healthy bonus, forward ``speed`` paid up to :data:`HOPPER_PLAN_SPEED_CAP` and charged twice beyond,
    control cost."""
    cap = HOPPER_PLAN_SPEED_CAP
    forward = speed.clamp(max=cap) - 2.0 * (speed - cap).clamp(min=0.0)
    healthy = hopper_healthy(next_obs).to(next_obs.dtype)
    return HOPPER_HEALTHY_REWARD * healthy + forward - HOPPER_CTRL_COST * act.square().sum(-1)


HOPPER_CRITIC_SPEED_CAP = 1.2
"""Speed (m/s) up to which :func:`hopper_critic_planning_reward` pays its extra forward bonus."""


def make_hopper_critic_planning_reward(
    speed_cap: float = HOPPER_CRITIC_SPEED_CAP, bonus: float = 2.0, posture: float = 0.0
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Hopper objective for planning with a safety critic: the capped reward of
    :func:`hopper_planning_reward`, ``posture`` times its posture costs, plus ``bonus * min(speed, speed_cap)``.

    Alone, the posture costs and the 0.8 m/s cap of :func:`hopper_planning_reward` keep the hopper slow
    (oracle iCEM: 1132 over seeds 0-2) and faster objectives fell. A learned fall probability at the
    horizon's end (:class:`~maskctrl.planner.critic.FallPenalty`) is what makes more speed safe: with it,
    forward pay is tripled up to 0.8 m/s and flat (2.4 per step) up to ``speed_cap``, beyond which the base
    reward's overspeed charge takes it down again. With the critic the posture costs only slow the hopper
    down (``posture=1``: x 2.9-4.3 m in 1000 steps; ``posture=0``: 6.0-6.7 m, no fall), so the default
    drops them; ``posture=1`` is :func:`hopper_planning_reward` plus the bonus.
    """

    def hopper_critic_planning_reward(
        obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor
    ) -> torch.Tensor:
        speed = _hopper_speed(obs, next_obs)
        value = _hopper_capped_reward(speed, act, next_obs) + bonus * speed.clamp(max=speed_cap)
        return value - posture * hopper_posture_cost(next_obs) if posture else value

    return hopper_critic_planning_reward


hopper_critic_planning_reward = make_hopper_critic_planning_reward()
"""The Hopper planning objective the shipped safety critic is used with (speed cap 1.2 m/s, no posture costs)."""
