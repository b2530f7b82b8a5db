"""Sampling-based trajectory optimizers: CEM, iCEM and MPPI behind one model-agnostic interface.

An optimizer only sees ``objective(actions [N,H,A]) -> returns [N]`` (higher is better) and the action
box; it knows nothing about models or environments (mbrl-lib / TD-MPC2 style). Optimizer objects are
stateless across calls: the warm start lives in a :class:`PlanState` that the caller (the MPC controller,
one per env) passes back in. Non-finite returns count as the worst score, never as a good one. All
tensors stay on ``device`` and all randomness comes from the optional ``torch.Generator``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Generic, Literal, TypeVar

import numpy as np
import torch
from torch import Tensor

from maskctrl.planner.noise import coloured_noise
from maskctrl.planner.plan import (
    CEMConfig,
    ICEMConfig,
    MPPIConfig,
    Objective,
    PlanResult,
    PlanState,
    TrajectoryOptimizer,
    check,
)

__all__ = [
    "CEM",
    "ICEM",
    "MPPI",
    "CEMConfig",
    "ICEMConfig",
    "MPPIConfig",
    "Objective",
    "PlanResult",
    "PlanState",
    "TrajectoryOptimizer",
    "make_optimizer",
]

BoundsLike = Tensor | np.ndarray | Sequence[float]


def _as_bound(value: BoundsLike, name: str) -> Tensor:
    array = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
    check(array.ndim == 1 and array.size >= 1, f"{name} must have shape (A,), got {array.shape}")
    check(
        np.isrealobj(array) and array.dtype != bool, f"{name} must be real numbers, got dtype {array.dtype}"
    )
    bound = torch.as_tensor(array.astype(np.float64))
    check(
        bool(torch.isfinite(bound).all()),
        f"{name} must be finite, got {bound.tolist()} (clip an unbounded Box to a finite range first)",
    )
    return bound


ConfigT = TypeVar("ConfigT", CEMConfig, MPPIConfig)


class _SamplingOptimizer(Generic[ConfigT]):
    """Bounds, warm-start bookkeeping and score sanitizing shared by every optimizer below.

    :param config: hyper-parameters (None: the optimizer's defaults).
    :param horizon: planning horizon H.
    :param action_low: lower action bounds, shape ``[A]``, finite.
    :param action_high: upper action bounds, shape ``[A]``, finite and strictly above ``action_low``.
    :param device: where every tensor lives.
    """

    def __init__(
        self,
        config: ConfigT | None = None,
        *,
        horizon: int,
        action_low: BoundsLike,
        action_high: BoundsLike,
        device: torch.device | str = "cpu",
    ) -> None:
        default = self._default_config()
        self.config: ConfigT = default if config is None else config
        if type(self.config) is not type(default):
            raise TypeError(
                f"{type(self).__name__} takes a {type(default).__name__}, got {type(self.config).__name__}"
            )
        check(
            isinstance(horizon, int) and not isinstance(horizon, bool) and horizon >= 1,
            f"horizon must be a positive int, got {horizon!r}",
        )
        low, high = _as_bound(action_low, "action_low"), _as_bound(action_high, "action_high")
        check(
            low.shape == high.shape,
            f"action_low and action_high must have the same shape (A,), "
            f"got {tuple(low.shape)} and {tuple(high.shape)}",
        )
        bad = (low >= high).nonzero().flatten().tolist()
        check(
            not bad,
            f"action_low must be strictly below action_high; violated at indices {bad}: "
            f"low={low[bad].tolist()}, high={high[bad].tolist()}",
        )
        self.horizon = horizon
        self.action_dim = int(low.shape[0])
        self.device = torch.device(device)
        self.action_low = low.to(self.device, torch.float32)  # [A]
        self.action_high = high.to(self.device, torch.float32)  # [A]
        self.midpoint = (self.action_low + self.action_high) / 2  # [A]
        half_range = (self.action_high - self.action_low) / 2  # [A]
        cfg = self.config
        std, min_std = (cfg.noise_std, 0.0) if isinstance(cfg, MPPIConfig) else (cfg.init_std, cfg.min_std)
        self.init_std = std * half_range  # [A]
        self.min_std = min_std * half_range  # [A]

    def _default_config(self) -> ConfigT:
        raise NotImplementedError

    def initial_state(self) -> PlanState:
        """Cold-start distribution: the box midpoint with the configured initial std, no elites."""
        shape = (self.horizon, self.action_dim)
        return PlanState(
            mean=self.midpoint.expand(shape).clone(), std=self.init_std.expand(shape).clone(), elites=None
        )

    def _clip(self, actions: Tensor) -> Tensor:
        return torch.clamp(actions, min=self.action_low, max=self.action_high)

    def _sequences(self, value: Tensor, name: str) -> Tensor:
        """Check a ``[M,H,A]`` batch from outside; non-finite entries become the midpoint, then clip."""
        check(
            value.ndim == 3 and tuple(value.shape[1:]) == (self.horizon, self.action_dim),
            f"{name} must have shape (M, {self.horizon}, {self.action_dim}) = (M, horizon, action_dim), "
            f"got {tuple(value.shape)}",
        )
        value = value.to(self.device, torch.float32)
        return self._clip(torch.where(torch.isfinite(value), value, self.midpoint))

    def _start(self, state: PlanState | None, warm_start_std: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """Unpack (and check) a warm start into ``mean [H,A]``, ``std [H,A]``, ``elites [E,H,A] | None``."""
        cold = self.initial_state()
        if state is None:
            return cold.mean, cold.std, None
        for name, value in (("state.mean", state.mean), ("state.std", state.std)):
            check(
                tuple(value.shape) == (self.horizon, self.action_dim),
                f"{name} must have shape ({self.horizon}, {self.action_dim}) = (horizon, action_dim), "
                f"got {tuple(value.shape)}",
            )
        mean = self._sequences(state.mean[None], "state.mean")[0]
        std = cold.std
        if warm_start_std:
            std = state.std.to(self.device, torch.float32)
            std = torch.where(torch.isfinite(std), std, self.init_std).clamp(min=self.min_std)
        elites = None if state.elites is None else self._sequences(state.elites, "state.elites")
        return mean, std, elites

    def _shift(self, mean: Tensor, std: Tensor, elites: Tensor | None) -> PlanState:
        """Advance a plan one control step: drop step 0, append the midpoint / initial std."""
        mid = self.midpoint[None]  # [1,A]
        shifted = None
        if elites is not None:
            shifted = torch.cat([elites[:, 1:], mid.expand(elites.shape[0], 1, -1)], dim=1)  # [E,H,A]
        return PlanState(
            mean=torch.cat([mean[1:], mid]), std=torch.cat([std[1:], self.init_std[None]]), elites=shifted
        )

    def _evaluate(self, objective: Objective, samples: Tensor) -> Tensor:
        """Score ``samples [N,H,A]``; non-finite returns become ``-inf`` so they can never win."""
        returns = objective(samples)
        check(
            isinstance(returns, Tensor) and tuple(returns.shape) == (samples.shape[0],),
            f"objective must return a tensor of shape ({samples.shape[0]},) for actions of shape "
            f"{tuple(samples.shape)}, got {getattr(returns, 'shape', type(returns).__name__)}",
        )
        returns = returns.to(self.device, torch.float32)
        return torch.where(torch.isfinite(returns), returns, torch.full_like(returns, -torch.inf))

    def _check_generator(self, generator: torch.Generator | None) -> None:
        if generator is not None:
            check(
                generator.device.type == self.device.type,
                f"generator lives on {generator.device}, optimizer on {self.device}; create it with "
                f"torch.Generator(device={str(self.device)!r})",
            )

    @staticmethod
    def _keep_best(best: tuple[Tensor, Tensor], samples: Tensor, returns: Tensor) -> tuple[Tensor, Tensor]:
        """Update the best-so-far ``(actions [H,A], return [])`` without a host sync."""
        top = returns.argmax()
        better = returns[top] > best[1]  # -inf never beats the initial -inf, so all-NaN keeps the mean
        return torch.where(better, samples[top], best[0]), torch.maximum(returns[top], best[1])


class CEM(_SamplingOptimizer[CEMConfig]):
    """Cross-entropy method with momentum, a std floor and optional prior candidates, see :class:`CEMConfig`.

    iCEM reuses the same loop (:class:`ICEM`); plain CEM is iCEM with white noise, no population decay,
    no kept elites and no mean candidate.
    """

    def _default_config(self) -> CEMConfig:
        return CEMConfig()

    def optimize(
        self,
        objective: Objective,
        state: PlanState | None = None,
        *,
        prior_samples: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PlanResult:
        """Maximize ``objective`` starting from ``state``.

        :param objective: ``actions [N,H,A] -> returns [N]``; NaN/inf returns rank below every finite one.
        :param state: warm start (None: :meth:`initial_state`).
        :param prior_samples: extra candidates ``[M,H,A]`` (e.g. from a policy) added to every iteration;
            they are clipped to the bounds and non-finite entries replaced by the midpoint.
        :param generator: source of all randomness; must live on the optimizer's device.
        :return: the plan, its best return and the shifted warm start.
        """
        cfg = self.config
        icem = cfg if isinstance(cfg, ICEMConfig) else None
        self._check_generator(generator)
        mean, std, elites = self._start(state, cfg.warm_start_std)
        prior = None if prior_samples is None else self._sequences(prior_samples, "prior_samples")
        num_keep = 0 if icem is None else round(icem.keep_elite_fraction * cfg.num_elites)
        best = (self._clip(mean), torch.tensor(-torch.inf, device=self.device))
        for i in range(cfg.num_iterations):
            num = cfg.num_samples
            if icem is not None:
                num = max(int(cfg.num_samples * icem.population_decay**-i), 2 * cfg.num_elites)
            beta = 0.0 if icem is None else icem.noise_beta
            noise = coloured_noise(
                num, self.horizon, self.action_dim, beta=beta, generator=generator, device=self.device
            )
            candidates = [self._clip(mean + std * noise)]  # [N_i,H,A]
            if elites is not None and num_keep > 0:
                candidates.append(elites[:num_keep])
            if icem is not None and i in (0, cfg.num_iterations - 1):
                # The first iteration's mean is last step's shifted plan; the last one's is the refined plan.
                candidates.append(self._clip(mean)[None])
            if prior is not None:
                candidates.append(prior)
            samples = torch.cat(candidates)  # [N',H,A]
            returns = self._evaluate(objective, samples)  # [N']
            best = self._keep_best(best, samples, returns)
            top_returns, top = returns.topk(cfg.num_elites)
            elites = samples[top]  # [K,H,A], best first
            mean, std = self._refit(mean, std, elites, torch.isfinite(top_returns))
        actions = best[0] if cfg.return_mode == "best" else self._clip(mean)
        kept = elites if icem is not None else None
        return PlanResult(actions=actions, best_return=best[1], next_state=self._shift(mean, std, kept))

    def _refit(self, mean: Tensor, std: Tensor, elites: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """Moment-match the finite-scored elites with momentum; keep the old fit if none is finite."""
        weight = valid.to(elites.dtype)[:, None, None]  # [K,1,1]
        count = weight.sum().clamp(min=1.0)
        elite_mean = (weight * elites).sum(0) / count  # [H,A]
        elite_std = ((weight * (elites - elite_mean).square()).sum(0) / count).sqrt()  # [H,A]
        m = self.config.momentum
        new_mean = m * mean + (1 - m) * elite_mean
        new_std = (m * std + (1 - m) * elite_std).clamp(min=self.min_std)
        any_valid = valid.any()
        return torch.where(any_valid, new_mean, mean), torch.where(any_valid, new_std, std)


class ICEM(CEM):
    """Improved CEM (Pinneri et al., 2020, "Sample-efficient Cross-Entropy Method for Real-time Planning").

    Coloured noise along time, a decaying population, a fraction of elites kept between iterations and
    (shifted, via ``next_state.elites``) between control steps, and the mean as an extra candidate.
    """

    def _default_config(self) -> ICEMConfig:
        return ICEMConfig()


class MPPI(_SamplingOptimizer[MPPIConfig]):
    """Model predictive path integral control (Williams et al., 2017), iterated, see :class:`MPPIConfig`.

    The sampling std stays at ``noise_std``; a warm start contributes its mean only.
    """

    def _default_config(self) -> MPPIConfig:
        return MPPIConfig()

    def optimize(
        self,
        objective: Objective,
        state: PlanState | None = None,
        *,
        prior_samples: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PlanResult:
        """Maximize ``objective`` starting from ``state``; arguments as in :meth:`CEM.optimize`.

        Samples with non-finite returns get zero weight; if no sample is finite the mean is left unchanged.
        """
        cfg = self.config
        self._check_generator(generator)
        mean, std, _ = self._start(state, warm_start_std=False)
        prior = None if prior_samples is None else self._sequences(prior_samples, "prior_samples")
        best = (self._clip(mean), torch.tensor(-torch.inf, device=self.device))
        for _ in range(cfg.num_iterations):
            noise = torch.randn(
                cfg.num_samples, self.horizon, self.action_dim, generator=generator, device=self.device
            )
            samples = self._clip(mean + std * noise)  # [N,H,A]
            if prior is not None:
                samples = torch.cat([samples, prior])  # [N+M,H,A]
            returns = self._evaluate(objective, samples)  # [N']
            best = self._keep_best(best, samples, returns)
            # Shift by the best finite return so exp() cannot overflow; -inf scores get weight exactly 0.
            shift = returns.max()
            shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
            weights = torch.exp((returns - shift) / cfg.temperature)[:, None, None]  # [N',1,1]
            total = weights.sum()
            weights = weights / total.clamp(min=torch.finfo(weights.dtype).tiny)
            any_valid = total > 0
            new_mean = (weights * samples).sum(0)  # [H,A]
            m = cfg.momentum
            mean = torch.where(any_valid, m * mean + (1 - m) * new_mean, mean)
        actions = best[0] if cfg.return_mode == "best" else self._clip(mean)
        return PlanResult(actions=actions, best_return=best[1], next_state=self._shift(mean, std, None))


OptimizerConfig = CEMConfig | ICEMConfig | MPPIConfig
_OPTIMIZERS: dict[str, tuple[type[CEM] | type[MPPI], type[OptimizerConfig]]] = {
    "cem": (CEM, CEMConfig),
    "icem": (ICEM, ICEMConfig),
    "mppi": (MPPI, MPPIConfig),
}


def make_optimizer(
    name: Literal["cem", "icem", "mppi"],
    *,
    horizon: int,
    action_low: BoundsLike,
    action_high: BoundsLike,
    device: torch.device | str = "cpu",
    config: OptimizerConfig | None = None,
    **config_overrides: object,
) -> TrajectoryOptimizer:
    """Build an optimizer by name, e.g. ``make_optimizer("icem", horizon=15, ..., num_samples=500)``.

    :param name: ``"cem"``, ``"icem"`` or ``"mppi"``.
    :param config: base config of the matching type (None: its defaults); ``config_overrides`` replace fields.
    """
    if name not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(_OPTIMIZERS)}")
    cls, config_cls = _OPTIMIZERS[name]
    base = config_cls() if config is None else config
    if type(base) is not config_cls:
        raise TypeError(f"optimizer {name!r} takes a {config_cls.__name__}, got {type(base).__name__}")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(config_overrides) - fields)
    if unknown:
        raise TypeError(f"unknown {config_cls.__name__} fields {unknown}; valid fields: {sorted(fields)}")
    return cls(
        dataclasses.replace(base, **config_overrides),  # type: ignore[arg-type]
        horizon=horizon,
        action_low=action_low,
        action_high=action_high,
        device=device,
    )
