"""What every trajectory optimizer shares: the objective it maximizes, its warm start and its result.

An optimizer only sees ``objective(actions [N,H,A]) -> returns [N]`` (higher is better) and the action
box. Optimizer objects are stateless across calls: the warm start lives in a :class:`PlanState` that the
caller (the MPC controller, one per env) passes back in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

Objective = Callable[[Tensor], Tensor]
"""``objective(actions [N,H,A]) -> returns [N]``; higher is better, NaN/inf count as the worst."""

ReturnMode = Literal["best", "mean"]


@dataclass(frozen=True)
class PlanState:
    """Warm start carried between control steps, one per env."""

    mean: Tensor
    """Sampling mean ``[H,A]``."""
    std: Tensor
    """Sampling std ``[H,A]`` (read back only by CEM/iCEM with ``warm_start_std``; MPPI's is fixed)."""
    elites: Tensor | None
    """Elites kept from the previous step ``[E,H,A]``, best first (iCEM), else None."""


@dataclass(frozen=True)
class PlanResult:
    """What one call to ``optimize`` found."""

    actions: Tensor
    """Plan ``[H,A]`` within the bounds; execute ``actions[0]``."""
    best_return: Tensor
    """Scalar: highest finite return among evaluated candidates (``-inf`` if none was finite)."""
    next_state: PlanState
    """Warm start already shifted one step forward, ready for the next control step."""


@runtime_checkable
class TrajectoryOptimizer(Protocol):
    """Maximizes an :data:`Objective` over action sequences ``[H,A]`` within a box."""

    horizon: int
    action_dim: int

    def optimize(
        self,
        objective: Objective,
        state: PlanState | None = None,
        *,
        prior_samples: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PlanResult:
        """Plan from ``state`` (None: cold start), with optional extra candidates ``[M,H,A]``."""
        ...

    def initial_state(self) -> PlanState:
        """Cold-start distribution: the box midpoint with the configured initial std."""
        ...


def check(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition`` holds (config and bounds validation)."""
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True, kw_only=True)
class CEMConfig:
    """Cross-entropy method: refit a diagonal Gaussian to the best samples, iteration after iteration."""

    num_samples: int = 256
    """Candidates sampled per iteration (N)."""
    num_iterations: int = 5
    """Refits per control step."""
    num_elites: int = 25
    """Best candidates the Gaussian is refitted to (K)."""
    momentum: float = 0.1
    """Fraction of the previous mean/std kept at each refit (0: jump to the elites' statistics)."""
    init_std: float = 0.5
    """Initial std as a fraction of the half action range."""
    min_std: float = 1e-3
    """Floor on the std as a fraction of the half action range."""
    return_mode: ReturnMode = "best"
    """Return the best candidate evaluated ("best") or the final mean ("mean")."""
    warm_start_std: bool = False
    """Start from the warm start's std (True) or reset it to ``init_std`` each call (False)."""

    def __post_init__(self) -> None:
        check(self.num_samples >= 1, f"num_samples must be >= 1, got {self.num_samples}")
        check(self.num_iterations >= 1, f"num_iterations must be >= 1, got {self.num_iterations}")
        check(
            1 <= self.num_elites <= self.num_samples,
            f"num_elites must be in [1, num_samples={self.num_samples}], got {self.num_elites}",
        )
        check(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}")
        check(self.init_std > 0.0, f"init_std must be > 0, got {self.init_std}")
        check(self.min_std >= 0.0, f"min_std must be >= 0, got {self.min_std}")
        check(
            self.return_mode in ("best", "mean"),
            f"return_mode must be 'best' or 'mean', got {self.return_mode!r}",
        )


@dataclass(frozen=True, kw_only=True)
class ICEMConfig(CEMConfig):
    """Improved CEM (Pinneri et al., 2020): coloured noise, kept elites, population decay, mean candidate."""

    num_samples: int = 300
    """Candidates sampled in the first iteration (N); later iterations sample fewer."""
    num_iterations: int = 3
    """Refits per control step."""
    num_elites: int = 10
    """Best candidates the Gaussian is refitted to (K)."""
    noise_beta: float = 2.0
    """Exponent of the noise's 1/f**beta power spectrum along time (0: white, 2: smooth)."""
    population_decay: float = 1.25
    """Iteration i samples max(N * decay**-i, 2K) candidates (1: no decay)."""
    keep_elite_fraction: float = 0.3
    """Fraction of elites carried into the next iteration and, shifted, into the next control step."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(np.isfinite(self.noise_beta), f"noise_beta must be finite, got {self.noise_beta}")
        check(self.population_decay >= 1.0, f"population_decay must be >= 1, got {self.population_decay}")
        check(
            0.0 <= self.keep_elite_fraction <= 1.0,
            f"keep_elite_fraction must be in [0, 1], got {self.keep_elite_fraction}",
        )


@dataclass(frozen=True, kw_only=True)
class MPPIConfig:
    """Model predictive path integral control: a return-weighted (softmax) average of noisy samples."""

    num_samples: int = 256
    """Candidates sampled per iteration (N)."""
    num_iterations: int = 3
    """Weighted updates of the mean per control step."""
    temperature: float = 1.0
    """Softmax temperature in units of return: weights ∝ exp(return / temperature)."""
    noise_std: float = 0.5
    """Sampling std as a fraction of the half action range."""
    momentum: float = 0.0
    """Fraction of the previous mean kept at each update (averages out sampling noise over iterations)."""
    return_mode: ReturnMode = "mean"
    """Return the final weighted mean ("mean") or the best candidate evaluated ("best")."""

    def __post_init__(self) -> None:
        check(self.num_samples >= 1, f"num_samples must be >= 1, got {self.num_samples}")
        check(self.num_iterations >= 1, f"num_iterations must be >= 1, got {self.num_iterations}")
        check(self.temperature > 0.0, f"temperature must be > 0, got {self.temperature}")
        check(self.noise_std > 0.0, f"noise_std must be > 0, got {self.noise_std}")
        check(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}")
        check(
            self.return_mode in ("best", "mean"),
            f"return_mode must be 'best' or 'mean', got {self.return_mode!r}",
        )
