"""Registry of environments maskctrl knows how to plan in.

An :class:`EnvSpec` names a gymnasium environment and carries what a planner needs beyond it: the
observation/action dims, batched torch reward and termination functions (and whether each is exact),
and how the planning objective treats termination. Built in: ``pointmass``, ``InvertedPendulum``,
``Reacher``, ``HalfCheetah``, ``Hopper`` (MuJoCo ids resolve to v5, or v4 under gymnasium 0.29).

Adding your own environment: register a spec whose functions are batched over any leading shape::

    import torch
    from maskctrl.envs import EnvSpec, get_spec, register_spec

    def reward_fn(obs, act, next_obs):  # [...,O], [...,A], [...,O] -> [...]
        return -next_obs[..., 0].abs() - 0.1 * act.square().sum(-1)

    def termination_fn(next_obs):  # [...,O] -> [...] bool
        return next_obs[..., 1].abs() > 1.0

    register_spec(
        EnvSpec(
            name="MyEnv",
            gym_id="MyPackage/MyEnv-v0",  # registered with gymnasium.register beforehand
            obs_dim=3,
            act_dim=1,
            reward_fn=reward_fn,
            termination_fn=termination_fn,
            reward_exact=True,
            termination_exact=True,
            max_episode_steps=200,
        )
    )
    env = get_spec("MyEnv").make()

Validate the functions against the real env on random transitions before trusting a planner with
them (``tests/test_rewards.py`` shows how).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium
import torch

from maskctrl.envs import rewards
from maskctrl.envs.pointmass import POINTMASS_ID, POINTMASS_MAX_EPISODE_STEPS, register_pointmass

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
    """Planning cost of a terminating candidate, subtracted once at the step it terminates."""
    notes: str = ""
    """How the functions were validated (e.g. the measured correlation of an approximation)."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("EnvSpec.name must be a non-empty string")
        if self.obs_dim < 1 or self.act_dim < 1:
            raise ValueError(
                f"EnvSpec {self.name!r}: expected positive obs_dim and act_dim, got {self.obs_dim}, {self.act_dim}"
            )
        if self.termination_penalty < 0:
            raise ValueError(
                f"EnvSpec {self.name!r}: termination_penalty is a cost (>= 0), got {self.termination_penalty}"
            )

    @property
    def planning_objective(self) -> RewardFn:
        """The per-step reward a planner should maximize: ``planning_reward_fn`` or else ``reward_fn``."""
        return self.planning_reward_fn if self.planning_reward_fn is not None else self.reward_fn

    def episode_limit(self, cap: int | None = None) -> int:
        """Episode length under an optional ``cap``: ``min(cap, max_episode_steps)`` (a cap never extends)."""
        return self.max_episode_steps if cap is None else min(cap, self.max_episode_steps)

    def make(self, **overrides: Any) -> Any:
        """Create the gymnasium env with ``make_kwargs`` updated by ``overrides``.

        ``max_episode_steps`` defaults to the spec's. Overriding a reward weight of the env makes
        ``reward_fn`` wrong; register a spec with matching functions instead.
        """
        kwargs: dict[str, Any] = {"max_episode_steps": self.max_episode_steps, **self.make_kwargs}
        kwargs.update(overrides)
        return gymnasium.make(self.gym_id, **kwargs)


_REGISTRY: dict[str, EnvSpec] = {}


class UnknownEnvError(KeyError):
    """An env name that neither the registry nor gymnasium knows; the message lists the known ones.

    A ``KeyError`` (what a registry lookup raises) of its own type, so that callers can report an unknown
    env without taking every other ``KeyError`` for one.
    """


def get_spec(name: str) -> EnvSpec:
    """Return the registered spec called ``name``; an unknown name raises :class:`UnknownEnvError`."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        known = ", ".join(list_specs())
        raise UnknownEnvError(f"unknown env {name!r}; known envs: {known}{hint}") from None


def register_spec(spec: EnvSpec, *, overwrite: bool = False) -> None:
    """Add ``spec`` under ``spec.name``; an existing name raises ``ValueError`` unless ``overwrite``."""
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"env {spec.name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[spec.name] = spec


def list_specs() -> list[str]:
    """Names of all registered specs, sorted."""
    return sorted(_REGISTRY)


def resolve_id(base: str, versions: Sequence[str] = ("v5", "v4")) -> str:
    """Return ``f"{base}-{v}"`` for the first version ``v`` registered in gymnasium.

    gymnasium >= 1.0 has the v5 MuJoCo envs; 0.29 (which ``imitation`` pins) only v4. None of them
    registered raises :class:`UnknownEnvError`.
    """
    for version in versions:
        gym_id = f"{base}-{version}"
        if gym_id in gymnasium.envs.registry:
            return gym_id
    tried = ", ".join(f"{base}-{v}" for v in versions)
    raise UnknownEnvError(f"none of {tried} is registered in gymnasium {gymnasium.__version__}")


def _version(gym_id: str) -> str:
    return gym_id.rsplit("-", 1)[1]


def pointmass_spec() -> EnvSpec:
    """Spec of :mod:`maskctrl.envs.pointmass` (exact reward, never terminates)."""
    return EnvSpec(
        name="pointmass",
        gym_id=POINTMASS_ID,
        obs_dim=4,
        act_dim=2,
        reward_fn=rewards.pointmass_reward,
        termination_fn=rewards.never_terminates,
        reward_exact=True,
        termination_exact=True,
        max_episode_steps=POINTMASS_MAX_EPISODE_STEPS,
        notes="Exact by construction; the optimum is reaching the origin and staying there.",
    )


def inverted_pendulum_spec(gym_id: str) -> EnvSpec:
    """InvertedPendulum spec for ``InvertedPendulum-v5`` or ``-v4``."""
    v4 = _version(gym_id) == "v4"
    return EnvSpec(
        name="InvertedPendulum",
        gym_id=gym_id,
        obs_dim=4,
        act_dim=1,
        reward_fn=rewards.inverted_pendulum_reward_v4 if v4 else rewards.inverted_pendulum_reward,
        termination_fn=rewards.inverted_pendulum_termination,
        reward_exact=True,
        termination_exact=True,
        max_episode_steps=1000,
        planning_reward_fn=rewards.inverted_pendulum_planning_reward,
        termination_penalty=1000.0,
        notes=(
            "Reward and termination exact (|angle| <= 0.2 and finite). Planning: the env reward is flat "
            "(1 for every surviving candidate), so a planner cannot prefer a centred, upright plan over one "
            "drifting to the rail (|x| = 1), where the pole falls. The planning reward penalizes angle, cart "
            "offset and velocities; a fall costs 1000 (the most an episode pays). Oracle CEM check (N=64, "
            "H=20, 3 iters, warm start, one seed, 500 steps): plain reward touched the rail (x=0.99, "
            "angle -0.155 at step 100), shaped stayed within |x| < 0.43; with noisy CEM (init std >= 0.3 of "
            "the range) both fell (plain 345/555, shaped 280/289 steps): optimizer noise, not the objective, "
            "limits those."
        ),
    )


def reacher_spec(gym_id: str) -> EnvSpec:
    """Reacher spec for ``Reacher-v5`` (obs 10) or ``-v4`` (obs 11, distance measured before the step)."""
    v4 = _version(gym_id) == "v4"
    return EnvSpec(
        name="Reacher",
        gym_id=gym_id,
        obs_dim=11 if v4 else 10,
        act_dim=2,
        reward_fn=rewards.reacher_reward_v4 if v4 else rewards.reacher_reward,
        termination_fn=rewards.never_terminates,
        reward_exact=True,
        termination_exact=True,
        max_episode_steps=50,
        notes="Exact: -||fingertip - target|| - ||a||^2 (weights 1, 1) read from the observation.",
    )


def half_cheetah_spec(gym_id: str) -> EnvSpec:
    """HalfCheetah spec (v5 and v4 share obs and reward) with the default observation (x excluded)."""
    return EnvSpec(
        name="HalfCheetah",
        gym_id=gym_id,
        obs_dim=17,
        act_dim=6,
        reward_fn=rewards.half_cheetah_reward,
        termination_fn=rewards.never_terminates,
        reward_exact=False,
        termination_exact=True,
        max_episode_steps=1000,
        planning_reward_fn=rewards.half_cheetah_planning_reward,
        notes=(
            "Reward approximate: (x'-x)/dt ~ 0.4*obs[8] + 0.6*next_obs[8] (mean substep velocity under "
            "Euler, 5 substeps). Correlation with the env reward on random-action transitions "
            "(gymnasium 1.4, v5 and v4): 0.988 (2000, seed 0; 0.987-0.988 on other seeds); next_obs[8] "
            "alone: 0.92-0.93, below the 0.95 bar. Exact alternative: "
            "rewards.half_cheetah_reward_with_x with exclude_current_positions_from_observation=False. "
            "Planning: rewards.half_cheetah_planning_reward also charges torso pitch beyond 1 rad, "
            "so that the planner does not flip the cheetah onto its back (see its docstring)."
        ),
    )


def hopper_spec(gym_id: str) -> EnvSpec:
    """Hopper spec for ``Hopper-v5`` or ``-v4`` (v4 pays the healthy bonus on the terminating step too)."""
    v4 = _version(gym_id) == "v4"
    return EnvSpec(
        name="Hopper",
        gym_id=gym_id,
        obs_dim=11,
        act_dim=3,
        reward_fn=rewards.hopper_reward_v4 if v4 else rewards.hopper_reward,
        termination_fn=rewards.hopper_termination,
        reward_exact=False,
        termination_exact=True,
        max_episode_steps=1000,
        planning_reward_fn=rewards.hopper_planning_reward,
        termination_penalty=1000.0,
        notes=(
            "Termination exact from next_obs (z > 0.7, |angle| < 0.2, |obs[1:]| < 100) except when some "
            "|qvel| >= 100, which the observation (qvel clipped to 10) cannot show (max |qvel| on 4000 random "
            "transitions: 7.1). Reward: exact healthy bonus + trapezoid x-velocity (RK4) - 0.001||a||^2; "
            "correlation with the env reward on 2000 random-action transitions (gymnasium 1.4, seed 0): "
            "0.99997 (v5), 0.99996 (v4). "
            "Planning: a fall costs 1000 (the healthy reward of a whole episode), so no speed gain inside a "
            "horizon pays for falling. Not enough on its own: oracle iCEM fell after 110-230 steps with the "
            "env reward, healthy-only reward, capped speed, and torso height/angle shaping, at H=15-60 "
            "(planning every step) — the joints drift to their limits (hip forward, foot at -0.78) until a "
            "fall is certain. rewards.hopper_planning_reward also charges joint angles and torso angular "
            "velocity and caps the paid speed at 0.8 m/s; with 10 blocks of 4 held actions (presets) oracle "
            "iCEM returned 1132 +- 100 over seeds 0-2 (950 +- 70 steps; benchmarks/results/mpc_oracle.md), CEM "
            "1026 (all 1000 steps); higher speed caps fell again. Later single-episode runs (seed 0, iCEM "
            "and CEM): "
            "15-20 blocks with init_std 0.25-0.3 held all 1000 steps but stood nearly still (return "
            "1000-1030; 20 blocks at init_std 0.5 fell at step 105); every variant that moved on (joint "
            "weight 0.5-1, speed tracking at 0.6-0.8 m/s, a planning termination at |angle| > 0.15 or "
            "z < 0.8, a tipping cost at the horizon's end, 8-step blocks) fell after 127-715 steps. In the "
            "run traced, the hopper slid forward faster than it could brake inside the horizon and the best "
            "plan's score sank for ~40 steps before the fall. A learned value of the horizon's last state "
            "(an MLP fitted to the discounted planning return, a fall costing 1000, of 12 cheaper oracle "
            "episodes that all fell; discount 0.98 or 0.9, added with weight 0.1-1) stopped the falls: "
            "all 9 runs on seeds 0-2 held 1000 steps, but the hopper stood nearly still (x -0.95 to 0.61 m, "
            "return 880-1075), as every moving state in its data led to a fall. With the forward pay "
            "tripled up to 1.2 m/s it moved: seed 1 returned 1601 (1000 steps), but seeds 0 and 2 fell "
            "(1234, 868), and one refit of the value on 4 of its own episodes (all fell) fell sooner "
            "(481, 785 on seeds 0-1). A pessimistic safety critic did not fix it either: 5 MLPs fitted "
            "(BCE) to 0.95^(steps until the fall) on 16-19 oracle episodes (the 12 above and 4-7 value- or "
            "critic-guided ones on reset seeds 100-302), mean + std of their fall probability at the "
            "horizon's last state charged 1000, forward pay tripled. Seeds 0-2 returned 1642/378/675 (cap "
            "1.2 m/s), then after a refit 1293/199/1442 (cap 0.9) and 661/1384/326 (cap 1.2): a fall in 6 "
            "of 9 runs. On the refitted critic's 4 falls its fall probability rose only ~10 steps before "
            "the fall (<= 0.2 at 20-40 steps before), later than the 40-step horizon itself sees a fall: "
            "it did not generalize to the new states. With 20 blocks (0.64 s) and 3x forward pay up to "
            "1.0 m/s, no critic: all 3 seeds fell (929, 663, 163); with the critic: stood still (seed 0: "
            "1028). Replanning every 2 steps (20 blocks of 2, the same 0.32 s), no critic: seed 0 fell at "
            "step 403 (543), and with forward x3 all 3 seeds fell within 203 steps. More data did help: "
            "the same critic fitted on 211 episodes (192 more, from a cheaper planner, N=32 and 2 "
            "iterations, forward x3 up to 1.0 m/s, 92 of them guided by the 19-episode critic; 205 "
            "fell) read 0.08-0.51 on the earlier falls 40 steps ahead and, with the preset planner, "
            "forward x3 up to 1.0 m/s, held all 1000 steps on seeds 0-2: 1474, 1465, 1460 (x 3.7-3.8 "
            "m); up to 1.2 m/s also without a fall: 1569, 1679, 1551 (mean 1600; 5.9-6.1 steps/s with "
            "three runs sharing the 2 cores). Shipped as maskctrl/critics/Hopper (make critics: 200 cheap-planner "
            "episodes, reset seeds 1000-1099 plain and 2000-2099 guided by a first critic, 164 falls, 57,570 "
            "states) and used by default with the oracle (presets.CRITICS). With the old objective (posture costs, "
            "kappa 1) oracle iCEM returned 1399.8 +- 22.2 on seeds 0-2 and held all 15 tuning runs on seeds 100-102 "
            "but at 1361-1539 (x 2.9-4.3 m). The posture costs were what kept it slow: on seeds 100-102, all 1000 "
            "steps, kappa 0.5, posture x0.5 -> 1600/1524/1622, x0.5 with bonus 4 -> 1787/1741/1779, x1 with bonus "
            "4 -> 1772/1625/1622, none -> 1751/1832/1797 (x 6.0-6.7 m; shipped: "
            "rewards.hopper_critic_planning_reward, kappa 0.5). benchmarks/mpc_oracle.py, seeds 0-2: iCEM "
            "1785.0 +- 21.5 (7.7 steps/s), MPPI 1787.0 +- 18.8, every episode 1000 steps; plain CEM fell with "
            "it (474.6 +- 59.4, 232-317 steps), so it plans without it by default (presets.CriticPreset.optimizers): "
            "1026.1 +- 14.1, no fall."
        ),
    )


def builtin_specs(versions: Sequence[str] = ("v5", "v4")) -> list[EnvSpec]:
    """The built-in specs, MuJoCo ids resolved with :func:`resolve_id` over ``versions``."""
    return [
        pointmass_spec(),
        inverted_pendulum_spec(resolve_id("InvertedPendulum", versions)),
        reacher_spec(resolve_id("Reacher", versions)),
        half_cheetah_spec(resolve_id("HalfCheetah", versions)),
        hopper_spec(resolve_id("Hopper", versions)),
    ]


def _register_builtins() -> None:
    register_pointmass()
    for spec in builtin_specs():
        register_spec(spec, overwrite=True)


_register_builtins()
