"""Open-loop prediction error: oracle ~0, constant models exact, transformer and ensemble on one path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskctrl.data.episodes import Episode
from maskctrl.models.ensemble import EnsembleConfig, EnsembleMLPDynamics
from maskctrl.models.ensemble_training import train_ensemble
from maskctrl.models.evaluation import (
    OpenLoopModel,
    TransformerPredictor,
    compare_open_loop,
    evaluate_open_loop,
    sample_starts,
)
from maskctrl.models.normalizer import Normalizer
from maskctrl.models.transformer import MaskedControlTransformer, TransformerConfig

OBS, ACT = 3, 2
RNG = np.random.default_rng(0)
A_MAT = 0.9 * np.linalg.qr(RNG.standard_normal((OBS, OBS)))[0]
B_MAT = RNG.standard_normal((OBS, ACT)) / np.sqrt(ACT)


def linear_episodes(lengths: list[int], seed: int) -> list[Episode]:
    """Noise-free ``x' = A x + B u`` with uniform actions in [-1, 1]."""
    rng = np.random.default_rng(seed)
    episodes = []
    for length in lengths:
        x = np.empty((length + 1, OBS))
        x[0] = rng.standard_normal(OBS)
        u = rng.uniform(-1.0, 1.0, (length, ACT))
        for t in range(length):
            x[t + 1] = A_MAT @ x[t] + B_MAT @ u[t]
        episodes.append(
            Episode(
                observations=x,
                actions=u.astype(np.float32),
                rewards=-(x[:-1] ** 2).sum(1),
                terminated=False,
                truncated=True,
                reset_seed=None,
            )
        )
    return episodes


def normalizer_for(episodes: list[Episode]) -> Normalizer:
    obs = np.concatenate([ep.observations[:-1] for ep in episodes])
    nxt = np.concatenate([ep.observations[1:] for ep in episodes])
    rew = np.concatenate([ep.rewards for ep in episodes])
    return Normalizer.from_data(obs, nxt, rewards=rew, act_low=-np.ones(ACT), act_high=np.ones(ACT))


class Oracle:
    """The true linear system, rolled open loop from the current observation."""

    history = 1

    def predict_open_loop(self, obs: torch.Tensor, act: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = obs[:, -1].double()
        out = []
        for h in range(actions.shape[1]):
            x = x @ torch.as_tensor(A_MAT).T + actions[:, h].double() @ torch.as_tensor(B_MAT).T
            out.append(x)
        return torch.stack(out, 1).float()


class Constant:
    """Predicts the same vector at every step; reads ``history`` steps (to test the K check)."""

    def __init__(self, value: np.ndarray, history: int = 1) -> None:
        self.value, self.history = torch.as_tensor(value, dtype=torch.float32), history

    def predict_open_loop(self, obs: torch.Tensor, act: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        assert obs.shape[1] >= self.history and act.shape[1] == obs.shape[1] - 1
        return self.value.expand(obs.shape[0], actions.shape[1], len(self.value))


EPISODES = linear_episodes([40, 25, 12, 60], seed=1)
NORM = normalizer_for(EPISODES)


def test_oracle_has_zero_error_and_protocol_fits() -> None:
    oracle = Oracle()
    assert isinstance(oracle, OpenLoopModel)
    result = evaluate_open_loop(oracle, EPISODES, NORM, horizon=10, n_starts=50, seed=0)
    assert result.horizon == 10 and result.n_starts == 50  # of 31 + 16 + 3 + 51 possible
    assert max(result.mse) < 1e-9
    assert len(result.mse_per_dim) == 10 and len(result.mse_per_dim[0]) == OBS


def test_constant_model_gets_the_expected_error() -> None:
    c = np.array([0.5, -1.0, 2.0])
    k, horizon = 3, 4
    result = evaluate_open_loop(Constant(c, history=k), EPISODES, NORM, horizon=horizon, n_starts=10_000)
    std = NORM.obs_std.double().numpy()
    per_step = np.zeros(horizon)
    count = 0
    for ep in EPISODES:  # every start with K real history steps and H future steps
        for t in range(k - 1, ep.length - horizon + 1):
            count += 1
            for h in range(horizon):
                per_step[h] += (((ep.observations[t + 1 + h] - c) / std) ** 2).mean()
    assert result.n_starts == count == sum(ep.length - (k - 1) - horizon + 1 for ep in EPISODES)
    np.testing.assert_allclose(result.mse, per_step / count, rtol=1e-5)
    assert result.step1 == result.mse[0] and result.final == result.mse[-1]


def test_starts_respect_history_and_horizon() -> None:
    starts = sample_starts(EPISODES, history=5, horizon=10, n_starts=30, seed=3)
    assert len(starts) == 30 and len({tuple(s) for s in starts}) == 30
    for e, t in starts:
        assert t >= 4 and t + 10 <= EPISODES[e].length
    assert np.array_equal(starts, sample_starts(EPISODES, history=5, horizon=10, n_starts=30, seed=3))
    assert 2 not in set(starts[:, 0].tolist())  # the 12-step episode cannot hold K=5 plus H=10


def test_compare_uses_the_same_starts_for_every_model() -> None:
    zero, oracle = Constant(np.zeros(OBS)), Oracle()
    both = compare_open_loop({"zero": zero, "oracle": oracle}, EPISODES, NORM, horizon=6, n_starts=50, seed=4)
    alone = evaluate_open_loop(zero, EPISODES, NORM, horizon=6, n_starts=50, seed=4)
    assert both["zero"].mse == alone.mse and max(both["oracle"].mse) < 1e-9
    other_seed = evaluate_open_loop(zero, EPISODES, NORM, horizon=6, n_starts=50, seed=5)
    assert other_seed.mse != alone.mse


def test_bad_inputs_give_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"history K=2 is shorter than the models need: \{'deep': 4\}"):
        compare_open_loop({"deep": Constant(np.zeros(OBS), history=4)}, EPISODES, NORM, history=2)
    with pytest.raises(
        ValueError, match=r"no episode is long enough .* \(needs 69 steps, the longest has 60\)"
    ):
        evaluate_open_loop(Oracle(), EPISODES, NORM, horizon=60, history=10)
    with pytest.raises(
        ValueError, match=r"episode 0 has observations of shape \(41, 3\), expected \[T\+1, 5\]"
    ):
        evaluate_open_loop(Oracle(), EPISODES, Normalizer.identity(5))
    with pytest.raises(ValueError, match="predicted shape"):
        evaluate_open_loop(Constant(np.zeros(2)), EPISODES, NORM, horizon=3)
    with pytest.raises(ValueError, match="got no episodes"):
        evaluate_open_loop(Oracle(), [], NORM)


def tiny_transformer(seed: int) -> MaskedControlTransformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(obs_dim=OBS, act_dim=ACT, context_len=16, n_layer=1, n_head=2, d_model=16)
    return MaskedControlTransformer(cfg)


def test_transformer_path_converts_normalized_deltas() -> None:
    model = tiny_transformer(0)
    with torch.no_grad():  # a non-trivial delta head, so that a wrong conversion shows
        model.heads.delta_obs[-1].weight.normal_(0.0, 1.0)
    pred = TransformerPredictor(model, NORM, history=4)
    result = evaluate_open_loop(pred, EPISODES, NORM, horizon=10, n_starts=64)
    assert result.n_starts == 64 and all(np.isfinite(result.mse)) and model.training  # mode restored
    # Two steps by hand: causal forwards over the normalized history, then with the prediction appended.
    ep = EPISODES[0]
    obs = torch.as_tensor(ep.observations[6:10], dtype=torch.float32)[None]  # [1,K,O]
    act = torch.as_tensor(ep.actions[6:11], dtype=torch.float32)[None]  # [1,K+1,A]: K-1 past, 2 planned
    out = pred.predict_open_loop(obs, act[:, :3], act[:, 3:])  # [1,2,O]
    model.eval()
    expected = obs
    for h in range(2):
        window = NORM.normalize_obs(expected), NORM.normalize_action(act[:, : 4 + h])
        delta = model(*window).delta_obs[:, -1]
        expected = torch.cat([expected, expected[:, -1:] + NORM.denormalize_delta(delta)[:, None]], 1)
    torch.testing.assert_close(out, expected[:, 4:], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="reads a history of K=4 steps"):
        pred.predict_open_loop(obs[:, :2], act[:, :1], act[:, -1:])
    with pytest.raises(ValueError, match=r"history must be in \[1, 15\]"):
        TransformerPredictor(model, NORM, history=16)
    with pytest.raises(ValueError, match="context_len is 16"):
        evaluate_open_loop(pred, EPISODES, NORM, horizon=14, history=4)


def test_ensemble_on_the_same_path_beats_a_constant() -> None:
    train = linear_episodes([100] * 20, seed=2)
    norm = normalizer_for(train)
    cfg = EnsembleConfig(members=2, hidden=64, layers=2, epochs=30, lr=3e-3, patience=None)
    model, _ = train_ensemble(train, cfg, norm, seed=0)
    held_out = linear_episodes([50] * 4, seed=3)
    results = compare_open_loop(
        {"ensemble": EnsembleMLPDynamics(model, norm), "persist": Constant(np.zeros(OBS))},
        held_out,
        norm,
        horizon=10,
        n_starts=100,
    )
    ens = results["ensemble"]
    assert ens.step1 < 0.01 and ens.final < results["persist"].final / 10
    assert ens.mse[0] <= ens.mse[-1]  # open-loop errors compound
