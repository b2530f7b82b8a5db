"""Model predictive control behind Stable-Baselines3's ``predict`` contract.

:class:`MPCController` plans, at every call and for every env of a vector env, a length-H action sequence
by optimizing (CEM / iCEM / MPPI, :mod:`maskctrl.planner.optimizers`) the discounted planning return of
candidates rolled out by a :class:`~maskctrl.planner.dynamics.DynamicsModel`, then emits the first action.
It keeps each env's recent history (what it observed and what it emitted) and warm-starts each env from its
shifted previous plan. With ``policy_prior_fraction > 0`` a share of each iteration's candidates comes from
the dynamics model's policy (:class:`PolicyPrior`, TD-MPC2 style). ``evaluate_policy``, ``imitation``
rollouts and DAgger accept it as a policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from gymnasium import spaces

from maskctrl.devices import resolve_device
from maskctrl.envs.registry import EnvSpec, RewardFn
from maskctrl.planner.dynamics import DynamicsModel, History, previous_observations
from maskctrl.planner.history import EnvHistories, check_observations, starting_envs
from maskctrl.planner.optimizers import CEMConfig, ICEMConfig, PlanState, TrajectoryOptimizer, make_optimizer


@dataclass(frozen=True, kw_only=True)
class MPCConfig:
    """How the controller plans; one instance per experiment."""

    optimizer: Literal["cem", "icem", "mppi"] = "icem"
    """Trajectory optimizer."""
    horizon: int = 15
    """Planning horizon H (control steps)."""
    samples: int = 128
    """Candidate sequences N per optimizer iteration."""
    iterations: int = 3
    """Optimizer iterations per control step."""
    elites: int | None = None
    """Elites K refitted to (CEM / iCEM); None: the optimizer's default, capped at ``samples // 2``."""
    discount: float = 1.0
    """Per-step discount of the planning return."""
    history_len: int = 8
    """Real steps K of each env's history handed to the dynamics model."""
    action_repeat: int = 1
    """Control steps each planned action is held for: the plan has ``horizon`` decision steps covering
    ``horizon * action_repeat`` env steps, and the controller replans every ``action_repeat`` steps
    (holding the planned action in between). Suits envs with a short control step (Hopper: 8 ms)."""
    use_planning_reward: bool = True
    """Score with the spec's shaped ``planning_reward_fn`` when it has one (else the model's reward)."""
    optimizer_overrides: Mapping[str, Any] = field(default_factory=dict)
    """Extra optimizer config fields (e.g. ``{"noise_beta": 1.0}`` for iCEM), passed to ``make_optimizer``."""
    device: str = "cpu"
    """Where candidates are sampled and scored (``"cuda"`` works when the model lives there)."""
    seed: int = 0
    """Seed of the controller's torch generator (its only source of randomness)."""
    policy_prior_fraction: float = 0.0
    """Share of the ``samples`` candidates drawn from the dynamics model's policy (TD-MPC2 style), in
    [0, 1); the dynamics model must then offer ``policy_samples`` (see :class:`PolicyPrior`)."""

    def __post_init__(self) -> None:
        if min(self.horizon, self.samples, self.iterations, self.history_len, self.action_repeat) < 1:
            raise ValueError(
                "expected horizon, samples, iterations, history_len and action_repeat >= 1, got "
                f"{self.horizon}, {self.samples}, {self.iterations}, {self.history_len}, {self.action_repeat}"
            )
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"expected discount in (0, 1], got {self.discount}")
        if not 0.0 <= self.policy_prior_fraction < 1.0:
            raise ValueError(f"expected policy_prior_fraction in [0, 1), got {self.policy_prior_fraction}")

    @property
    def policy_prior_samples(self) -> int:
        """Candidates M of each iteration taken from the policy (0 when the prior is off)."""
        if self.policy_prior_fraction == 0.0:
            return 0
        return min(max(1, round(self.policy_prior_fraction * self.samples)), self.samples - 1)


TerminalValue = Callable[[torch.Tensor], torch.Tensor]
"""``value(obs [N,O]) -> [N]``: the worth of ending a plan in ``obs`` (e.g.
:class:`~maskctrl.planner.critic.FallPenalty`), added to the planning return of candidates that did not
terminate inside the horizon."""


@runtime_checkable
class PolicyPrior(Protocol):
    """A dynamics model that can also propose action sequences (e.g. from a policy head)."""

    def policy_samples(
        self, history: History, n: int, horizon: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` action sequences ``[n,H,A]`` from the end of ``history`` (any device; clipped later)."""
        ...


def planning_return(
    reward: torch.Tensor, terminated: torch.Tensor, *, discount: float, termination_penalty: float
) -> torch.Tensor:
    """Discounted return [N] of rewards [N,H] that stops after a candidate's first termination.

    The terminating step's reward still counts (as in the env); ``termination_penalty`` is subtracted
    once, discounted like that step's reward. Rewards after termination are ignored even if non-finite;
    a non-finite reward before it makes the return non-finite (the optimizers rank that as worst).
    """
    h = reward.shape[1]
    term = terminated.to(reward.dtype)
    # alive[n, t]: no termination strictly before step t.
    alive = torch.cumprod(torch.cat([torch.ones_like(term[:, :1]), 1.0 - term[:, :-1]], dim=1), dim=1) > 0
    weight = discount ** torch.arange(h, device=reward.device, dtype=reward.dtype)  # [H]
    gained = torch.where(alive, reward, torch.zeros_like(reward)) * weight
    penalty = termination_penalty * (alive & terminated).to(reward.dtype) * weight
    return (gained - penalty).sum(dim=1)


class MPCController:
    """Batched MPC with SB3's ``predict(observation, state, episode_start, deterministic)`` contract.

    :param dynamics: the model that rolls candidates out (e.g.
        :class:`~maskctrl.planner.oracle.OracleDynamics`
        over the very envs being controlled, env ``i`` of the observation batch being its env ``i``).
    :param spec: the env's spec: observation/action dims, planning reward, termination penalty.
    :param action_space: the env's ``Box`` action space; plans and emitted actions stay inside it.
    :param config: planning settings.
    :param optimizer: a ready optimizer, which then decides samples, iterations and horizon (default:
        ``make_optimizer(config.optimizer, ...)`` from the config).
    :param terminal_value: scores the last imagined observation of every candidate alive there; added,
        discounted by ``discount ** (horizon * action_repeat)``, to its planning return (a non-finite
        value makes that candidate the worst). None: no terminal value.
    :param planning_reward_fn: the per-step objective to plan with instead of the spec's
        ``planning_reward_fn`` (with ``use_planning_reward``); e.g. the reward a terminal value was
        tuned with (:func:`maskctrl.planner.presets.preset_objective`).
    """

    def __init__(
        self,
        dynamics: DynamicsModel,
        spec: EnvSpec,
        action_space: spaces.Box,
        config: MPCConfig | None = None,
        *,
        optimizer: TrajectoryOptimizer | None = None,
        terminal_value: TerminalValue | None = None,
        planning_reward_fn: RewardFn | None = None,
    ) -> None:
        self.config = config if config is not None else MPCConfig()
        self.terminal_value = terminal_value
        self.planning_reward_fn = (
            planning_reward_fn if planning_reward_fn is not None else spec.planning_reward_fn
        )
        if action_space.shape != (spec.act_dim,):
            raise ValueError(
                f"spec {spec.name!r} expects actions ({spec.act_dim},), action_space is {action_space.shape}"
            )
        if not (np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()):
            raise ValueError("MPCController needs a bounded action space (finite low and high)")
        self.num_prior = self.config.policy_prior_samples
        if self.num_prior > 0 and not isinstance(dynamics, PolicyPrior):
            raise ValueError(
                f"policy_prior_fraction={self.config.policy_prior_fraction} needs a dynamics model with "
                f"policy_samples(history, n, horizon, generator); {type(dynamics).__name__} has none"
            )
        if self.config.policy_prior_fraction > 0 and self.num_prior == 0:
            raise ValueError(f"policy_prior_fraction > 0 needs samples >= 2, got {self.config.samples}")
        self.dynamics = dynamics
        self.spec = spec
        self.action_space = action_space
        self.device = resolve_device(self.config.device)
        self.low = torch.as_tensor(action_space.low, dtype=torch.float32, device=self.device)  # [A]
        self.high = torch.as_tensor(action_space.high, dtype=torch.float32, device=self.device)  # [A]
        self.optimizer = optimizer if optimizer is not None else self._make_optimizer()
        self.generator = torch.Generator(device=self.device).manual_seed(self.config.seed)
        self.n_envs = 0
        self.histories = EnvHistories(
            self.config.history_len, spec.obs_dim, (spec.act_dim,), device=self.device
        )
        self._plans: list[PlanState | None] = []
        self._hold: list[int] = []  # per env: steps the last planned action is still held for

    def _make_optimizer(self) -> TrajectoryOptimizer:
        cfg = self.config
        sampled = cfg.samples - self.num_prior  # the policy proposes the rest of the candidates
        overrides: dict[str, Any] = {"num_samples": sampled, "num_iterations": cfg.iterations}
        if cfg.optimizer in ("cem", "icem"):
            default = (ICEMConfig if cfg.optimizer == "icem" else CEMConfig)().num_elites
            overrides["num_elites"] = (
                cfg.elites if cfg.elites is not None else max(1, min(default, sampled // 2))
            )
        overrides.update(cfg.optimizer_overrides)
        return make_optimizer(
            cfg.optimizer,
            horizon=cfg.horizon,
            action_low=self.low,
            action_high=self.high,
            device=self.device,
            **overrides,
        )

    # ------------------------------------------------------------------ state

    def reset(self, n_envs: int | None = None) -> None:
        """Forget every env's history and plan (and resize to ``n_envs`` envs when given)."""
        n = self.n_envs if n_envs is None else n_envs
        self.n_envs = n
        self.histories.reset(n)
        self._plans = [None] * n
        self._hold = [0] * n

    def history(self, env_index: int) -> History:
        """The history of env ``env_index`` as the dynamics model sees it (see :class:`History`)."""
        return self.histories.history(env_index)

    # ------------------------------------------------------------------ SB3 contract

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Plan and return the next action of every env.

        :param observation: ``[n_envs, O]``, or ``[O]`` for a single env (then the action is ``[A]``).
        :param state: unused (the controller keeps each env's history itself); returned as given.
        :param episode_start: bool ``[n_envs]``; True forgets that env's history and plan first. A change
            in the number of envs resets every env.
        :param deterministic: unused; the planned first action is always returned.
        :return: ``(actions [n_envs, A] or [A], state)``, actions within the action space.
        """
        obs, single = self._check_observation(observation)
        n = obs.shape[0]
        if n != self.n_envs:
            self.reset(n)
        if episode_start is not None:
            for i in starting_envs(episode_start, n):
                self._forget(i)
        self.histories.push(torch.as_tensor(obs, dtype=torch.float32, device=self.device))
        actions = torch.stack([self._act_or_plan(i) for i in range(n)])  # [E,A]
        self.histories.record(actions)
        out = actions.cpu().numpy().astype(self.action_space.dtype)
        return (out[0] if single else out), state

    def __call__(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """``imitation``'s policy-callable form of :meth:`predict`."""
        return self.predict(observation, state, episode_start)

    def _check_observation(self, observation: Any) -> tuple[np.ndarray, bool]:
        return check_observations(observation, self.spec.obs_dim, owner="the controller")

    def _forget(self, i: int) -> None:
        self.histories.forget(i)
        self._plans[i] = None
        self._hold[i] = 0

    # ------------------------------------------------------------------ planning

    def _act_or_plan(self, i: int) -> torch.Tensor:
        """Env ``i``'s next action: the held one while ``action_repeat`` lasts, else a freshly planned one."""
        if self._hold[i] > 0:
            self._hold[i] -= 1
            return self.histories.last_act[i]
        self._hold[i] = self.config.action_repeat - 1
        return self._plan(i)

    def _plan(self, i: int) -> torch.Tensor:
        """Optimize env ``i``'s plan; return its first action [A], finite and within bounds."""
        history = self.history(i)
        warm = self._plans[i]
        prior = None
        if self.num_prior > 0:
            assert isinstance(self.dynamics, PolicyPrior)
            r = self.config.action_repeat
            prior = self.dynamics.policy_samples(
                history, self.num_prior, self.optimizer.horizon * r, generator=self.generator
            )[:, ::r]  # the policy's action at the start of each held block: [M,H,A]
        result = self.optimizer.optimize(
            lambda actions: self._objective(history, actions),
            warm,
            prior_samples=prior,
            generator=self.generator,
        )
        fallback = (warm if warm is not None else self.optimizer.initial_state()).mean[0].to(self.low)
        action = result.actions[0].to(self.low)
        if not torch.isfinite(action).all():
            action = fallback
        if not torch.isfinite(action).all():
            action = (self.low + self.high) / 2
        nxt = result.next_state
        finite_plan = torch.isfinite(nxt.mean).all() and torch.isfinite(nxt.std).all()
        self._plans[i] = nxt if bool(finite_plan) else None
        return torch.minimum(torch.maximum(action, self.low), self.high)

    def _objective(self, history: History, actions: torch.Tensor) -> torch.Tensor:
        """Planning return [N] of candidate sequences ``actions`` [N,H,A] from ``history``.

        With ``action_repeat`` r > 1 each decision step is held for r env steps: the model rolls out
        ``[N,H*r,A]`` and the return sums over all of those steps.
        """
        if self.config.action_repeat > 1:
            actions = actions.repeat_interleave(self.config.action_repeat, dim=1)  # [N,H*r,A]
        out = self.dynamics.rollout(history, actions)
        reward = out.reward
        planning_fn = self.planning_reward_fn
        if self.config.use_planning_reward and planning_fn is not None:
            prev_obs = previous_observations(history.current_obs, out.next_obs)  # [N,H,O]
            reward = planning_fn(prev_obs, actions.to(out.next_obs), out.next_obs)
        returns = planning_return(
            reward,
            out.terminated,
            discount=self.config.discount,
            termination_penalty=self.spec.termination_penalty,
        )
        if self.terminal_value is not None:
            value = self.terminal_value(out.next_obs[:, -1]).to(returns)  # [N]
            if value.shape != returns.shape:
                raise ValueError(
                    f"terminal_value returned shape {tuple(value.shape)}, expected {tuple(returns.shape)}"
                )
            alive = ~out.terminated.any(dim=1)
            discounted = self.config.discount ** actions.shape[1] * value
            returns = returns + torch.where(alive, discounted, torch.zeros_like(discounted))
        return returns.to(device=actions.device)
