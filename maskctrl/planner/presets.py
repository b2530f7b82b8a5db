"""Tuned planning budgets per environment, shared by ``maskctrl mpc``, ``maskctrl collect`` and benchmarks.

Each built-in MuJoCo env has a :class:`Budget` (candidates, horizon, iterations) chosen so that oracle MPC
plans at >= 5 control steps/s on 2 CPU cores, and per-optimizer overrides found on single-env runs
(``benchmarks/mpc_oracle.py`` records what they score). :func:`preset_config` turns them into an
:class:`~maskctrl.planner.mpc.MPCConfig`; envs without a preset get the :class:`MPCConfig` defaults.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from maskctrl.envs import rewards
from maskctrl.envs.registry import RewardFn
from maskctrl.planner.mpc import MPCConfig

OptimizerName = Literal["cem", "icem", "mppi"]


@dataclass(frozen=True, kw_only=True)
class Budget:
    """Planning budget of one env, shared by its optimizers."""

    samples: int
    """Candidates N per iteration (iCEM's first iteration; it decays afterwards)."""
    horizon: int
    """Planning horizon H."""
    iterations: int
    """Optimizer iterations per control step."""
    action_repeat: int = 1
    """Env steps each planned action is held for (the plan covers ``horizon * action_repeat`` steps)."""


BUDGETS: dict[str, Budget] = {
    "pointmass": Budget(samples=64, horizon=10, iterations=3),
    "InvertedPendulum": Budget(samples=64, horizon=50, iterations=3),
    "Reacher": Budget(samples=64, horizon=25, iterations=3),
    "HalfCheetah": Budget(samples=128, horizon=15, iterations=3),
    "Hopper": Budget(samples=64, horizon=10, iterations=3, action_repeat=4),
}
"""Tuned on single-env oracle runs. InvertedPendulum (dt 0.04 s): at H=30 (1.2 s ahead) the cart
oscillates with growing amplitude or runs away to the rail under the spec's planning reward and every
optimizer drops the pole within 100-900 steps on some seed; at H=50 it holds (with the overrides below).
Reacher's return improves up to H=25 (0.5 s). Hopper's control step is 8 ms: it plans 10 blocks of 4
held actions (0.32 s ahead) and replans every 4 steps; planning every step with H=15..60 fell after
110-230 steps."""

OPTIMIZER_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    # Balancing needs small corrections: broad samples (std = half the force range) topple the pole.
    "InvertedPendulum": {"icem": {"init_std": 0.2}, "mppi": {"noise_std": 0.05}},
    # White-noise CEM pays Reacher's ||a||^2 on every noisy action: return the smoothed mean instead.
    "Reacher": {
        "cem": {"num_elites": 10, "return_mode": "mean", "init_std": 0.25},
        "mppi": {"temperature": 1.0, "noise_std": 0.2},
    },
    # A running cheetah alternates its legs faster than beta = 2 noise (iCEM's default) varies.
    "HalfCheetah": {"icem": {"noise_beta": 0.0}, "mppi": {"temperature": 0.5, "noise_std": 0.5}},
    "Hopper": {"icem": {"noise_beta": 1.0}, "mppi": {"temperature": 0.5}},
}
"""Per-optimizer settings (MPPI's temperature is in units of return, so it is per env)."""


POLICY_PRIOR: dict[str, float] = {"HalfCheetah": 0.25}
"""Default share of the candidates that a transformer world model's policy head proposes (TD-MPC2 style,
:attr:`~maskctrl.planner.mpc.MPCConfig.policy_prior_fraction`) in ``maskctrl mpc --dynamics transformer``
and the benchmarks, for backbones pretrained with the policy loss; 0 (off) for other envs, for the oracle
and for the MLP ensemble. Chosen on HalfCheetah with the shipped backbone and the preset iCEM, 2 episodes
of 200 steps on reset seeds 100-101 (apart from the benchmarks' seeds 0-2), mean return: prior 0 → 378,
0.25 → 681, 0.5 → 552. Not measured elsewhere, so off: the InvertedPendulum and Reacher backbones already
plan about as well as the oracle without it."""


def policy_loss_weight(metadata: Mapping[str, Any]) -> float | None:
    """The policy-loss weight a checkpoint was pretrained with, read from its metadata: a recipe's
    ``objective_weights`` or a ``maskctrl pretrain`` run's ``config.weights``; None when neither says."""
    config = metadata.get("config")
    candidates = (
        metadata.get("objective_weights"),
        config.get("weights") if isinstance(config, Mapping) else None,
    )
    for weights in candidates:
        if isinstance(weights, Mapping) and isinstance(weights.get("policy"), int | float):
            return float(weights["policy"])
    return None


def default_policy_prior(env_name: str, metadata: Mapping[str, Any]) -> float:
    """:data:`POLICY_PRIOR` of ``env_name`` for a transformer checkpoint with this ``metadata``: 0 unless
    the metadata says the backbone learned a policy (policy-loss weight > 0); an untrained policy head
    would only waste candidates."""
    weight = policy_loss_weight(metadata)
    return POLICY_PRIOR.get(env_name, 0.0) if weight is not None and weight > 0 else 0.0


def preset_config(
    env_name: str, optimizer: OptimizerName = "icem", *, seed: int = 0, device: str = "cpu", **changes: Any
) -> MPCConfig:
    """The tuned :class:`MPCConfig` of ``env_name`` for ``optimizer``, with ``changes`` applied on top.

    :param env_name: registry name; an env without a preset gets the :class:`MPCConfig` defaults.
    :param changes: any other :class:`MPCConfig` field (e.g. ``samples=256``); ``optimizer_overrides``
        given here are merged over the preset's.
    """
    fields: dict[str, Any] = {"optimizer": optimizer, "seed": seed, "device": device}
    budget = BUDGETS.get(env_name)
    if budget is not None:
        fields.update(
            samples=budget.samples,
            horizon=budget.horizon,
            iterations=budget.iterations,
            action_repeat=budget.action_repeat,
        )
    overrides = dict(OPTIMIZER_OVERRIDES.get(env_name, {}).get(optimizer, {}))
    overrides.update(changes.pop("optimizer_overrides", {}) or {})
    fields["optimizer_overrides"] = overrides
    fields.update(changes)
    return MPCConfig(**fields)


def objective_tag(env_name: str) -> str:
    """The name of the objective ``env_name``'s planner maximizes (its spec's ``planning_objective``).

    Part of the cache keys (directory names) of recorded expert data, so that demonstrations planned
    under an earlier objective are not reused after it changed. Characters other than letters, digits,
    ``_``, ``.`` and ``-`` are dropped (a lambda gives ``lambda``).
    """
    from maskctrl.envs.registry import get_spec

    name = getattr(get_spec(env_name).planning_objective, "__name__", "")
    return re.sub(r"[^A-Za-z0-9_.-]", "", name) or "objective"


CRITIC_ROOT = Path(__file__).resolve().parent.parent / "critics"
"""Where the shipped safety critics live: ``CRITIC_ROOT / <Env>`` (built by :mod:`maskctrl.critic_recipe`)."""


@dataclass(frozen=True, kw_only=True)
class CriticPreset:
    """How an env's oracle planner uses its shipped safety critic (:mod:`maskctrl.planner.critic`)."""

    planning_reward_fn: RewardFn
    """The per-step objective planned with alongside the critic (replaces the spec's)."""
    penalty: float = 1000.0
    """Planning cost of a certain fall at the horizon's end."""
    kappa: float = 1.0
    """Pessimism: member standard deviations added to the mean fall probability."""
    optimizers: tuple[str, ...] = ("icem", "mppi")
    """The optimizers it was tuned and measured with: the default for these, not for others (plain CEM
    fell on Hopper with the critic's objective)."""


CRITICS: dict[str, CriticPreset] = {
    "Hopper": CriticPreset(
        planning_reward_fn=rewards.hopper_critic_planning_reward, penalty=1000.0, kappa=0.5
    ),
}
"""Envs whose oracle planner uses a safety critic by default. Hopper: dropping the posture costs and
tripling the forward pay (up to 0.8 m/s) is safe only with the critic (seeds 100-102: 1751-1832, no
fall); see the Hopper spec's notes and ``benchmarks/results/mpc_oracle.md``."""


def critic_by_default(env_name: str, optimizer: str) -> bool:
    """Whether the oracle planner of ``env_name`` with ``optimizer`` uses the env's shipped safety critic
    unless told otherwise: the env is in :data:`CRITICS` and the critic was tuned with that optimizer."""
    preset = CRITICS.get(env_name)
    return preset is not None and optimizer in preset.optimizers


def preset_objective(
    env_name: str, *, critic: bool | str | Path = True, device: str = "cpu"
) -> dict[str, Any]:
    """Extra :class:`~maskctrl.planner.mpc.MPCController` keyword arguments of ``env_name``'s objective.

    For an env in :data:`CRITICS` (with ``critic`` not False): ``terminal_value`` (a
    :class:`~maskctrl.planner.critic.FallPenalty` over the shipped critic, or the one saved at ``critic``
    when it is a path) and ``planning_reward_fn``. Otherwise ``{}`` (the spec's planning objective).
    Tuned and measured with the oracle dynamics only.
    """
    preset = CRITICS.get(env_name)
    if critic is False or preset is None:
        if preset is None and not isinstance(critic, bool):
            raise ValueError(f"env {env_name!r} has no safety-critic preset; known: {', '.join(CRITICS)}")
        return {}
    from maskctrl.envs.registry import get_spec
    from maskctrl.planner.critic import FallPenalty, load_critic

    path = CRITIC_ROOT / env_name if critic is True else Path(critic)
    if critic is True and not path.exists():
        raise FileNotFoundError(
            f"the shipped {env_name} safety critic is missing at {path}; rebuild it with `make critics` "
            "or plan without it"
        )
    net, _ = load_critic(path, obs_dim=get_spec(env_name).obs_dim, device=device)
    return {
        "terminal_value": FallPenalty(net, penalty=preset.penalty, kappa=preset.kappa, device=device),
        "planning_reward_fn": preset.planning_reward_fn,
    }
