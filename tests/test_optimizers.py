"""CEM, iCEM and MPPI: optima inside and on the bounds, NaN/inf robustness, warm start, priors, noise."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import pytest
import torch
from torch import Tensor

from maskctrl.planner.noise import coloured_noise
from maskctrl.planner.optimizers import (
    CEM,
    ICEM,
    MPPI,
    CEMConfig,
    ICEMConfig,
    MPPIConfig,
    Objective,
    PlanState,
    TrajectoryOptimizer,
    make_optimizer,
)
from maskctrl.planner.plan import ReturnMode

H, A = 5, 2
LOW = torch.tensor([-1.0, -0.5])
HIGH = torch.tensor([2.0, 0.5])
MID = (LOW + HIGH) / 2
HALF = (HIGH - LOW) / 2
# Different at every step and strictly inside the asymmetric box.
TARGET_IN = torch.stack([0.7 + torch.linspace(-0.3, 0.3, H), -0.1 + torch.linspace(-0.2, 0.2, H)], dim=1)
# Outside the box: the constrained optimum is the corner (2.0, -0.5) at every step.
TARGET_OUT = torch.tensor([3.0, -0.8]).expand(H, A)
CORNER = torch.tensor([2.0, -0.5]).expand(H, A)

# Budgets measured to reach the optimum to 1e-2 over 10 seeds (worst errors 0.0003-0.0062).
PRECISE: dict[str, CEMConfig | MPPIConfig] = {
    "cem": CEMConfig(num_samples=200, num_iterations=30, num_elites=20, init_std=1.0),
    "cem-mean": CEMConfig(
        num_samples=200, num_iterations=30, num_elites=20, init_std=1.0, return_mode="mean"
    ),
    "icem": ICEMConfig(num_samples=1000, num_iterations=30, num_elites=50, init_std=1.0),
    "mppi": MPPIConfig(num_samples=1000, num_iterations=100, temperature=0.01, noise_std=0.1, momentum=0.8),
}
# Small budgets for the behavioural tests that do not need precision.
SMALL: dict[str, CEMConfig | MPPIConfig] = {
    "cem": CEMConfig(num_samples=64, num_iterations=3, num_elites=8),
    "icem": ICEMConfig(num_samples=64, num_iterations=3, num_elites=8),
    "mppi": MPPIConfig(num_samples=64, num_iterations=3, temperature=0.1),
}


def build(config: CEMConfig | MPPIConfig, **kwargs: object) -> TrajectoryOptimizer:
    cls = {CEMConfig: CEM, ICEMConfig: ICEM, MPPIConfig: MPPI}[type(config)]
    bounds = {"horizon": H, "action_low": LOW, "action_high": HIGH, **kwargs}
    return cls(config, **bounds)


def quadratic(target: Tensor) -> Objective:
    return lambda actions: -(actions - target).square().sum(dim=(1, 2))  # [N,H,A] -> [N]


def recording(objective: Objective, seen: list[Tensor]) -> Objective:
    def wrapped(actions: Tensor) -> Tensor:
        seen.append(actions.clone())
        return objective(actions)

    return wrapped


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_in_bounds(actions: Tensor) -> None:
    assert bool(torch.isfinite(actions).all())
    assert bool((actions >= LOW).all() and (actions <= HIGH).all())


@pytest.mark.parametrize("name", list(PRECISE))
@pytest.mark.parametrize("seed", [0, 1])
def test_finds_interior_optimum(name: str, seed: int) -> None:
    result = build(PRECISE[name]).optimize(quadratic(TARGET_IN), generator=seeded(seed))
    assert result.actions.shape == (H, A)
    assert (result.actions - TARGET_IN).abs().max() < 1e-2
    assert result.best_return.shape == () and -1e-2 < float(result.best_return) <= 0.0


@pytest.mark.parametrize("name", list(PRECISE))
@pytest.mark.parametrize("seed", [0, 1])
def test_finds_optimum_on_bound(name: str, seed: int) -> None:
    result = build(PRECISE[name]).optimize(quadratic(TARGET_OUT), generator=seeded(seed))
    assert_in_bounds(result.actions)
    assert (result.actions - CORNER).abs().max() < 1e-2


@pytest.mark.parametrize("name", list(PRECISE))
def test_non_finite_returns_rank_worst(name: str) -> None:
    base = quadratic(TARGET_IN)

    def objective(actions: Tensor) -> Tensor:
        returns = base(actions)
        # +inf far from the optimum would attract an optimizer that trusted it; NaN and -inf must too lose.
        returns = torch.where(actions[:, 0, 0] < 0.0, torch.inf, returns)
        returns = torch.where(actions[:, 2, 1] > 0.2, torch.nan, returns)
        return torch.where(actions[:, 4, 0] > 1.5, -torch.inf, returns)

    result = build(PRECISE[name]).optimize(objective, generator=seeded(0))
    assert_in_bounds(result.actions)
    assert (result.actions - TARGET_IN).abs().max() < 1e-2
    assert bool(torch.isfinite(result.best_return))


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("mode", ["best", "mean"])
def test_all_nan_falls_back_to_the_mean(name: str, mode: ReturnMode) -> None:
    optimizer = build(dataclasses.replace(SMALL[name], return_mode=mode))
    nan = lambda actions: torch.full((actions.shape[0],), torch.nan)  # noqa: E731
    cold = optimizer.optimize(nan, generator=seeded(0))
    assert torch.equal(cold.actions, MID.expand(H, A))
    assert cold.best_return == -torch.inf
    warm = optimizer.optimize(nan, PlanState(mean=TARGET_IN, std=0.3 * HALF.expand(H, A), elites=None))
    assert torch.equal(warm.actions, TARGET_IN)
    # Nothing was learnt, so the distribution must not have drifted either.
    assert torch.equal(cold.next_state.mean[:-1], MID.expand(H - 1, A))
    assert torch.equal(warm.next_state.mean[:-1], TARGET_IN[1:])
    for state in (cold.next_state, warm.next_state):
        assert bool(torch.isfinite(state.mean).all() and torch.isfinite(state.std).all())


@pytest.mark.parametrize("name", list(SMALL))
def test_only_finite_candidates_shape_the_distribution(name: str) -> None:
    """Fewer finite candidates than elites: the refit must ignore the non-finite rest."""
    config = dataclasses.replace(SMALL[name], num_iterations=1, momentum=0.0, return_mode="mean")
    base = quadratic(TARGET_IN)

    def objective(actions: Tensor) -> Tensor:
        exact = (actions == TARGET_IN).flatten(1).all(dim=1)
        return torch.where(exact, base(actions), torch.nan)

    prior = TARGET_IN.expand(2, H, A)  # the only finite candidates
    result = build(config).optimize(objective, prior_samples=prior, generator=seeded(0))
    assert torch.allclose(result.actions, TARGET_IN, atol=1e-6)
    assert torch.allclose(result.next_state.mean[:-1], TARGET_IN[1:], atol=1e-6)


@pytest.mark.parametrize("name", list(SMALL))
def test_every_evaluated_sample_and_result_stays_in_bounds(name: str) -> None:
    seen: list[Tensor] = []
    far = torch.tensor([100.0, -100.0]).expand(H, A)
    prior = torch.stack([far, -far, torch.full((H, A), torch.nan)])  # [3,H,A], out of bounds and NaN
    result = build(SMALL[name]).optimize(
        recording(quadratic(far), seen), prior_samples=prior, generator=seeded(0)
    )
    for samples in seen:
        assert_in_bounds(samples)
    assert_in_bounds(result.actions)
    assert_in_bounds(result.next_state.mean)


@pytest.mark.parametrize("name", list(SMALL))
def test_same_seed_same_result(name: str) -> None:
    optimizer = build(SMALL[name])
    first = optimizer.optimize(quadratic(TARGET_IN), generator=seeded(7))
    optimizer.optimize(quadratic(TARGET_OUT), generator=seeded(8))  # no state may leak between calls
    again = optimizer.optimize(quadratic(TARGET_IN), generator=seeded(7))
    other = optimizer.optimize(quadratic(TARGET_IN), generator=seeded(9))
    assert torch.equal(first.actions, again.actions) and torch.equal(first.best_return, again.best_return)
    assert torch.equal(first.next_state.mean, again.next_state.mean)
    assert not torch.equal(first.actions, other.actions)


@pytest.mark.parametrize("name", list(SMALL))
def test_best_return_is_the_return_of_the_best_plan(name: str) -> None:
    config = dataclasses.replace(SMALL[name], return_mode="best")
    objective = quadratic(TARGET_IN)
    result = build(config).optimize(objective, generator=seeded(0))
    assert torch.equal(result.best_return, objective(result.actions[None])[0])


def test_initial_state_is_midpoint_with_relative_std() -> None:
    state = build(CEMConfig(init_std=0.4)).initial_state()
    assert torch.equal(state.mean, MID.expand(H, A)) and state.elites is None
    assert torch.allclose(state.std, 0.4 * HALF.expand(H, A))
    assert torch.allclose(build(MPPIConfig(noise_std=0.2)).initial_state().std, 0.2 * HALF.expand(H, A))


@pytest.mark.parametrize("name", ["cem-mean", "mppi"])
def test_next_state_is_the_final_mean_shifted(name: str) -> None:
    optimizer = build(dataclasses.replace(PRECISE[name], num_iterations=5))
    result = optimizer.optimize(quadratic(TARGET_IN), generator=seeded(0))
    init_std = optimizer.initial_state().std[0]
    # In "mean" mode the plan is the final mean, so the warm start must be that plan one step on.
    assert torch.equal(result.next_state.mean[:-1], result.actions[1:])
    assert torch.equal(result.next_state.mean[-1], MID)
    assert torch.equal(result.next_state.std[-1], init_std)
    assert result.next_state.elites is None


def test_icem_next_state_elites_are_the_last_iterations_best_shifted() -> None:
    config = ICEMConfig(num_samples=64, num_iterations=3, num_elites=8)
    seen: list[Tensor] = []
    objective = quadratic(TARGET_IN)
    result = build(config).optimize(recording(objective, seen), generator=seeded(0))
    last = seen[-1]  # [N',H,A]
    expected = last[objective(last).topk(8).indices]  # [K,H,A], best first
    elites = result.next_state.elites
    assert elites is not None and elites.shape == (8, H, A)
    assert torch.equal(elites[:, :-1], expected[:, 1:])
    assert torch.equal(elites[:, -1], MID.expand(8, A))


def test_population_decay_kept_elites_and_mean_candidates() -> None:
    config = ICEMConfig(num_samples=100, num_iterations=4, num_elites=10, keep_elite_fraction=0.3)
    seen: list[Tensor] = []
    build(config).optimize(recording(quadratic(TARGET_IN), seen), generator=seeded(0))
    decayed = [max(int(100 * 1.25**-i), 20) for i in range(4)]  # 100, 80, 64, 51
    # iteration 0: samples + the mean; then + 3 kept elites; the last adds the refined mean again.
    assert [s.shape[0] for s in seen] == [decayed[0] + 1, decayed[1] + 3, decayed[2] + 3, decayed[3] + 3 + 1]
    seen_cem: list[Tensor] = []
    build(CEMConfig(num_samples=100, num_iterations=4)).optimize(recording(quadratic(TARGET_IN), seen_cem))
    assert [s.shape[0] for s in seen_cem] == [100] * 4


@pytest.mark.parametrize("name", list(SMALL))
def test_warm_start_at_the_optimum_beats_a_cold_start(name: str) -> None:
    target = torch.stack([1.7 + torch.linspace(-0.1, 0.1, H), -0.35 + torch.linspace(-0.1, 0.1, H)], dim=1)
    optimizer = build(dataclasses.replace(SMALL[name], num_iterations=1))
    cold = optimizer.optimize(quadratic(target), generator=seeded(0))
    state = PlanState(mean=target, std=optimizer.initial_state().std, elites=None)
    warm = optimizer.optimize(quadratic(target), state, generator=seeded(0))
    cold_err, warm_err = (cold.actions - target).norm(), (warm.actions - target).norm()
    assert warm_err < 0.5 * cold_err
    if name == "icem":  # the warm-start mean is itself a candidate, so "best" mode returns it exactly
        assert torch.equal(warm.actions, target)


def test_warm_start_std_is_used_only_when_asked() -> None:
    state = PlanState(mean=TARGET_IN, std=torch.full((H, A), 1e-3), elites=None)
    spread = {}
    for warm_std in (True, False):
        seen: list[Tensor] = []
        config = CEMConfig(num_samples=64, num_iterations=1, num_elites=8, warm_start_std=warm_std)
        build(config).optimize(recording(quadratic(TARGET_IN), seen), state, generator=seeded(0))
        spread[warm_std] = float((seen[0] - TARGET_IN).abs().max())
    assert spread[True] < 0.01 and spread[False] > 0.2


def test_icem_uses_warm_start_elites() -> None:
    config = ICEMConfig(num_samples=32, num_iterations=1, num_elites=4, keep_elite_fraction=0.5)
    elites = torch.stack([TARGET_IN, MID.expand(H, A), LOW.expand(H, A), HIGH.expand(H, A)])
    state = PlanState(mean=MID.expand(H, A), std=HALF.expand(H, A), elites=elites)
    result = build(config).optimize(quadratic(TARGET_IN), state, generator=seeded(0))
    assert torch.equal(result.actions, TARGET_IN)


@pytest.mark.parametrize("name", list(SMALL))
def test_prior_sample_at_the_optimum_wins_in_one_iteration(name: str) -> None:
    config = dataclasses.replace(SMALL[name], num_iterations=1)
    if isinstance(config, MPPIConfig):
        config = dataclasses.replace(config, temperature=1e-3)
    prior = torch.stack([TARGET_IN, LOW.expand(H, A)])  # [M,H,A]
    result = build(config).optimize(quadratic(TARGET_IN), prior_samples=prior, generator=seeded(0))
    if isinstance(config, MPPIConfig):  # the weighted mean puts ~all weight on the prior sample
        assert (result.actions - TARGET_IN).abs().max() < 1e-4
    else:
        assert torch.equal(result.actions, TARGET_IN)
    assert result.best_return == 0.0


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0])
def test_coloured_noise_spectrum_slope_and_unit_variance(beta: float) -> None:
    noise = coloured_noise(4000, 64, 2, beta=beta, generator=seeded(0))  # [N,H,A]
    assert noise.shape == (4000, 64, 2)
    assert abs(float(noise.std()) - 1.0) < 0.02 and abs(float(noise.mean())) < 0.02
    power = torch.fft.rfft(noise, dim=1).abs().square().mean(dim=(0, 2))[1:]  # [F-1], DC left out
    log_f, log_p = torch.fft.rfftfreq(64)[1:].log(), power.log()
    slope = ((log_f - log_f.mean()) * (log_p - log_p.mean())).sum() / (log_f - log_f.mean()).square().sum()
    assert abs(float(slope) + beta) < 0.1


def lag1_autocorrelation(x: Tensor) -> float:
    x = x - x.mean(dim=1, keepdim=True)
    return float((x[:, 1:] * x[:, :-1]).mean() / x.square().mean())


def test_coloured_noise_beta2_is_low_frequency() -> None:
    white = coloured_noise(2000, 32, 1, beta=0.0, generator=seeded(0))
    red = coloured_noise(2000, 32, 1, beta=2.0, generator=seeded(0))
    assert abs(lag1_autocorrelation(white)) < 0.05
    assert lag1_autocorrelation(red) > 0.7
    assert torch.equal(red, coloured_noise(2000, 32, 1, beta=2.0, generator=seeded(0)))
    assert coloured_noise(3, 1, 2, beta=2.0).shape == (3, 1, 2)


def test_icem_samples_with_coloured_noise() -> None:
    wide = {"action_low": torch.full((A,), -1e3), "action_high": torch.full((A,), 1e3), "horizon": 32}
    correlation = {}
    for beta in (0.0, 2.0):
        seen: list[Tensor] = []
        config = ICEMConfig(num_samples=500, num_iterations=1, noise_beta=beta)
        build(config, **wide).optimize(
            recording(lambda a: -a.square().sum(dim=(1, 2)), seen), generator=seeded(0)
        )
        correlation[beta] = lag1_autocorrelation(seen[0][:500])
    assert abs(correlation[0.0]) < 0.05 and correlation[2.0] > 0.7


@pytest.mark.parametrize(
    ("low", "high", "message"),
    [
        ([0.0, 1.0], [1.0, 1.0], r"strictly below action_high; violated at indices \[1\]"),
        ([0.0, 2.0], [1.0, 1.0], r"violated at indices \[1\]: low=\[2.0\], high=\[1.0\]"),
        ([0.0, -float("inf")], [1.0, 1.0], "action_low must be finite"),
        ([0.0, 0.0], [1.0, float("nan")], "action_high must be finite"),
        ([0.0, 0.0], [1.0, 1.0, 1.0], r"same shape \(A,\), got \(2,\) and \(3,\)"),
        ([[0.0, 0.0]], [[1.0, 1.0]], r"action_low must have shape \(A,\), got \(1, 2\)"),
        ([], [], r"must have shape \(A,\), got \(0,\)"),
    ],
)
def test_bad_bounds_raise_clear_errors(low: list[float], high: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CEM(horizon=H, action_low=low, action_high=high)


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="horizon must be a positive int, got 0"):
        MPPI(horizon=0, action_low=LOW, action_high=HIGH)
    with pytest.raises(ValueError, match=r"num_elites must be in \[1, num_samples=10\], got 11"):
        CEMConfig(num_samples=10, num_elites=11)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got 1.0"):
        MPPIConfig(momentum=1.0)
    with pytest.raises(TypeError, match="CEM takes a CEMConfig, got ICEMConfig"):
        CEM(ICEMConfig(), horizon=H, action_low=LOW, action_high=HIGH)
    optimizer = build(SMALL["cem"])
    bad_state = PlanState(mean=torch.zeros(H - 1, A), std=torch.ones(H - 1, A), elites=None)
    with pytest.raises(ValueError, match=r"state.mean must have shape \(5, 2\) = \(horizon, action_dim\)"):
        optimizer.optimize(quadratic(TARGET_IN), bad_state)
    with pytest.raises(ValueError, match=r"prior_samples must have shape \(M, 5, 2\).*got \(5, 2\)"):
        optimizer.optimize(quadratic(TARGET_IN), prior_samples=TARGET_IN)
    with pytest.raises(ValueError, match=r"objective must return a tensor of shape \(64,\)"):
        optimizer.optimize(lambda actions: actions.sum(dim=2))


def test_make_optimizer_applies_overrides_and_checks_names() -> None:
    bounds: dict[str, Any] = {"horizon": H, "action_low": LOW.tolist(), "action_high": HIGH.tolist()}
    names: list[tuple[Literal["cem", "icem", "mppi"], type]] = [("cem", CEM), ("icem", ICEM), ("mppi", MPPI)]
    for name, cls in names:
        optimizer = make_optimizer(name, num_samples=33, **bounds)
        assert type(optimizer) is cls and isinstance(optimizer, TrajectoryOptimizer)
        assert optimizer.horizon == H and optimizer.action_dim == A
        assert isinstance(optimizer, CEM | MPPI) and optimizer.config.num_samples == 33
    icem = make_optimizer("icem", config=ICEMConfig(noise_beta=1.5), num_elites=7, **bounds)
    assert isinstance(icem, ICEM) and icem.config == ICEMConfig(noise_beta=1.5, num_elites=7)
    with pytest.raises(ValueError, match="unknown optimizer 'pso'"):
        make_optimizer("pso", **bounds)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"unknown MPPIConfig fields \['num_elites'\]"):
        make_optimizer("mppi", num_elites=3, **bounds)
    with pytest.raises(TypeError, match="optimizer 'cem' takes a CEMConfig, got MPPIConfig"):
        make_optimizer("cem", config=MPPIConfig(), **bounds)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(SMALL))
def test_runs_on_cuda_with_a_cuda_generator(name: str) -> None:
    optimizer = build(SMALL[name], device="cuda")
    target = TARGET_IN.cuda()
    prior = target[None]
    result = optimizer.optimize(
        quadratic(target), prior_samples=prior, generator=torch.Generator(device="cuda").manual_seed(0)
    )
    assert result.actions.is_cuda and result.best_return.is_cuda and result.next_state.mean.is_cuda
    with pytest.raises(ValueError, match="generator lives on cpu"):
        optimizer.optimize(quadratic(target), generator=seeded(0))
