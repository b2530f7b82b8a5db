"""The PETS-style ensemble baseline: fitting, member diversity, NLL, elites, rollouts, save/load."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from maskctrl.models.ensemble import (
    EnsembleConfig,
    EnsembleMLP,
    EnsembleMLPDynamics,
    load_ensemble,
    save_ensemble,
)
from maskctrl.models.ensemble_training import holdout_mse, train_ensemble, transitions
from maskctrl.models.normalizer import Normalizer

OBS, ACT = 3, 2
SMALL = EnsembleConfig(members=3, hidden=64, layers=2, epochs=40, batch_size=128, lr=3e-3, patience=None)


def linear_system(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((OBS, OBS)))
    return 0.9 * q, rng.standard_normal((OBS, ACT)) / np.sqrt(ACT)


def linear_data(n: int, seed: int, noise: float = 0.0) -> dict[str, np.ndarray]:
    """Transitions ``x' = A x + B u`` (+ noise) with reward ``-|x|^2 - 0.1 |u|^2``."""
    a, b = linear_system()
    rng = np.random.default_rng(seed + 1)
    obs = rng.standard_normal((n, OBS))
    act = rng.uniform(-1.0, 1.0, (n, ACT))
    next_obs = obs @ a.T + act @ b.T + noise * rng.standard_normal((n, OBS))
    rew = -(obs**2).sum(1) - 0.1 * (act**2).sum(1)
    return {"obs": obs, "act": act, "rew": rew, "next_obs": next_obs}


def normalizer_for(data: dict[str, np.ndarray]) -> Normalizer:
    return Normalizer.from_data(
        data["obs"], data["next_obs"], rewards=data["rew"], act_low=-np.ones(ACT), act_high=np.ones(ACT)
    )


@pytest.fixture(scope="module")
def trained() -> tuple[EnsembleMLP, Normalizer, object]:
    data = linear_data(2000, seed=0, noise=0.01)
    norm = normalizer_for(data)
    model, history = train_ensemble(data, SMALL, norm, seed=0)
    return model, norm, history


def test_fits_a_linear_system_one_step(trained: tuple[EnsembleMLP, Normalizer, object]) -> None:
    model, norm, _ = trained
    test = linear_data(500, seed=7)
    dyn = EnsembleMLPDynamics(model, norm)
    next_obs, reward = dyn.predict(torch.as_tensor(test["obs"]), torch.as_tensor(test["act"]))
    true_delta = test["next_obs"] - test["obs"]
    err = ((next_obs.numpy() - test["next_obs"]) ** 2).mean() / true_delta.var()
    assert err < 1e-3, f"relative one-step error {err:.2e}"  # measured 6e-5
    rel_rew = ((reward.numpy() - test["rew"]) ** 2).mean() / test["rew"].var()
    assert rel_rew < 0.01, f"relative reward error {rel_rew:.2e}"  # measured 1e-3


def test_nll_training_is_finite_and_falls(trained: tuple[EnsembleMLP, Normalizer, object]) -> None:
    model, _, history = trained
    losses = history.train_loss  # type: ignore[attr-defined]
    assert len(losses) == SMALL.epochs and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 5.0  # NLL falls well below its start as log-variances shrink
    x = torch.randn(64, OBS + ACT)
    mean, logvar = model(x)
    assert mean.shape == logvar.shape == (3, 64, OBS + 1)
    assert bool((logvar <= model.max_logvar).all() and (logvar >= model.min_logvar).all())


def test_members_differ_and_see_their_own_batches(trained: tuple[EnsembleMLP, Normalizer, object]) -> None:
    model, _, _ = trained
    mean, _ = model(torch.randn(32, OBS + ACT))
    for i in range(3):
        for j in range(i + 1, 3):
            assert (mean[i] - mean[j]).abs().max() > 1e-4
    # From identical members, only each member's own batches can make them differ after training.
    data = linear_data(256, seed=3)
    x = torch.randn(8, OBS + ACT)
    for bootstrap in (True, False):
        cfg = EnsembleConfig(
            members=2, hidden=16, layers=1, epochs=1, batch_size=32, holdout_fraction=0.0, bootstrap=bootstrap
        )
        twins = EnsembleMLP(OBS, ACT, cfg, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            for p in twins.parameters():
                p.copy_(p[:1].expand_as(p))
        before, _ = twins(x)
        assert torch.equal(before[0], before[1])
        model_b, _ = train_ensemble(data, cfg, normalizer_for(data), seed=0, model=twins)
        after, _ = model_b(x)
        assert (after[0] - after[1]).abs().max() > 1e-5
    with pytest.raises(ValueError, match=r"differs from config in \['members'\]"):
        train_ensemble(
            data, EnsembleConfig(members=3, hidden=16, layers=1), normalizer_for(data), model=twins
        )


def test_mse_variant_has_no_logvar() -> None:
    data = linear_data(300, seed=1)
    cfg = EnsembleConfig(members=2, hidden=16, layers=1, epochs=2, learn_logvar=False, predict_reward=False)
    model, history = train_ensemble(data, cfg, normalizer_for(data), seed=0)
    mean, logvar = model(torch.zeros(4, OBS + ACT))
    assert logvar is None and mean.shape == (2, 4, OBS)
    assert all(math.isfinite(v) for v in history.train_loss)
    with pytest.raises(ValueError, match="predicts no reward"):
        EnsembleMLPDynamics(model, normalizer_for(data))
    dyn = EnsembleMLPDynamics(model, normalizer_for(data), reward_fn=lambda o, a, n: -n.square().sum(-1))
    next_obs, reward = dyn.predict(torch.zeros(5, OBS), torch.zeros(5, ACT))
    assert torch.allclose(reward, -next_obs.square().sum(-1))


def test_early_stopping_and_elites() -> None:
    data = linear_data(400, seed=2)
    norm = normalizer_for(data)
    # A learning rate this small never improves the holdout by 1%: stop after 1 + patience epochs.
    frozen = EnsembleConfig(members=4, hidden=16, layers=1, epochs=50, lr=1e-12, patience=2, elites=2)
    model, history = train_ensemble(data, frozen, norm, seed=0)
    assert history.stopped_early and len(history.train_loss) == 3
    best = torch.tensor(history.best_holdout_mse)
    assert sorted(history.elites) == sorted(torch.argsort(best)[:2].tolist())
    assert model.elites.tolist() == sorted(history.elites)
    _, hist = train_ensemble(data, EnsembleConfig(hidden=16, layers=1, max_steps=5), norm, seed=0)
    assert hist.steps == 5 and len(hist.train_loss) == 3  # 360 training rows: 2 batches of 256 per epoch


def test_each_member_keeps_its_best_epoch() -> None:
    data = linear_data(150, seed=4, noise=1.0)  # few noisy rows: members overfit at different epochs
    norm = normalizer_for(data)
    cfg = EnsembleConfig(
        members=3, hidden=64, layers=2, epochs=60, lr=1e-2, patience=None, holdout_fraction=0.2
    )
    model, history = train_ensemble(data, cfg, norm, seed=0)
    per_epoch = torch.tensor(history.holdout_mse)  # [epochs, E]
    assert (per_epoch.argmin(0) < len(per_epoch) - 1).all(), "every member should peak before the end"
    assert torch.allclose(torch.tensor(history.best_holdout_mse), per_epoch.min(0).values)
    # The holdout rows: the first 20% of the seed's permutation (as train_ensemble draws them).
    hold = torch.randperm(150, generator=torch.Generator().manual_seed(0))[:30]
    obs, act, rew, next_obs = transitions(data)
    x = torch.cat([norm.normalize_obs(obs), norm.normalize_action(act)], 1)[hold]
    y = torch.cat([norm.normalize_delta(next_obs - obs), norm.normalize_reward(rew)[:, None]], 1)[hold]
    assert torch.allclose(holdout_mse(model, x, y), per_epoch.min(0).values, rtol=1e-5)


def test_rollout_shapes_and_consistency(trained: tuple[EnsembleMLP, Normalizer, object]) -> None:
    model, norm, _ = trained
    gen = torch.Generator().manual_seed(0)
    actions = torch.rand(6, 4, ACT, generator=gen) * 2 - 1  # [N,H,A]
    obs0 = torch.randn(OBS, generator=gen)
    dyn = EnsembleMLPDynamics(model, norm)
    next_obs, reward = dyn.rollout(obs0, actions)
    assert next_obs.shape == (6, 4, OBS) and reward.shape == (6, 4)
    same, _ = dyn.rollout(obs0.expand(6, OBS), actions)
    assert torch.equal(same, next_obs)
    obs = obs0.expand(6, OBS)
    for h in range(4):  # the rollout is the one-step prediction composed with itself
        obs, rew = dyn.predict(obs, actions[:, h])
        assert torch.allclose(obs, next_obs[:, h], atol=1e-5) and torch.allclose(rew, reward[:, h], atol=1e-5)
    ts1 = EnsembleMLPDynamics(model, norm, propagation="ts1", seed=1).rollout(obs0, actions)[0]
    tsinf = EnsembleMLPDynamics(model, norm, propagation="tsinf", seed=1).rollout(obs0, actions)[0]
    assert not torch.allclose(ts1, next_obs) and not torch.allclose(tsinf, next_obs)
    # TS-inf: each candidate follows one member all along, so it equals that member's own rollout.
    own = []
    for e in range(3):
        model.elite_mask.copy_(torch.arange(3) == e)
        own.append(EnsembleMLPDynamics(model, norm).rollout(obs0, actions)[0])  # [N,H,O]
    model.elite_mask.fill_(True)
    follows = torch.stack([(tsinf == o).flatten(1).all(1) for o in own])  # [E,N]
    assert bool(follows.any(0).all())
    ts1_follows = torch.stack([(ts1 == o).flatten(1).all(1) for o in own])
    assert not bool(ts1_follows.any(0).all()), "TS-1 redraws members every step"
    again = EnsembleMLPDynamics(model, norm, propagation="ts1", seed=1).rollout(obs0, actions)[0]
    assert torch.equal(again, ts1)  # seeded


def test_bad_inputs_have_clear_errors(trained: tuple[EnsembleMLP, Normalizer, object]) -> None:
    model, norm, _ = trained
    dyn = EnsembleMLPDynamics(model, norm)
    with pytest.raises(ValueError, match=r"expected obs \[N,3\] and act \[N,2\]"):
        dyn.predict(torch.zeros(4, 5), torch.zeros(4, ACT))
    with pytest.raises(ValueError, match=r"expected actions \[N,H,2\]"):
        dyn.rollout(torch.zeros(OBS), torch.zeros(4, 3, 7))
    with pytest.raises(TypeError, match=r"observation tensor \[O\] or \[N,O\], got list"):
        dyn.rollout([0.0, 0.0, 0.0], torch.zeros(4, 3, ACT))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="normalizer has obs dim 5"):
        EnsembleMLPDynamics(model, Normalizer.identity(5))
    with pytest.raises(ValueError, match="transition arrays lack next_obs"):
        transitions({"obs": np.zeros((2, 3)), "act": np.zeros((2, 1)), "rew": np.zeros(2)})
    with pytest.raises(ValueError, match="data has obs dim 3, the normalizer 4"):
        train_ensemble(linear_data(10, 0), SMALL, Normalizer.identity(4))
    with pytest.raises(ValueError, match="elites must be in"):
        EnsembleConfig(members=3, elites=4)


def test_save_load_round_trip_is_exact(
    trained: tuple[EnsembleMLP, Normalizer, object], tmp_path: Path
) -> None:
    model, norm, _ = trained
    model.elite_mask.copy_(torch.tensor([True, False, True]))
    try:
        path = save_ensemble(tmp_path / "ens", model, norm, metadata={"env": "linear"})
        loaded = load_ensemble(path)
        assert loaded.metadata == {"env": "linear"} and loaded.model.config == model.config
        assert loaded.model.elites.tolist() == [0, 2]
        x = torch.randn(16, OBS + ACT)
        for a, b in zip(model(x), loaded.model(x), strict=True):
            assert a is not None and b is not None and torch.equal(a, b)
        assert torch.equal(loaded.normalizer.delta_std, norm.delta_std)
        save_ensemble(path, model, norm)  # replacing an earlier ensemble is allowed
        assert load_ensemble(path).metadata == {}
        assert not (tmp_path / ".ens.old").exists() and not (tmp_path / ".ens.tmp").exists()
    finally:
        model.elite_mask.fill_(True)
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="refusing to replace"):
        save_ensemble(foreign, model, norm)
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        load_ensemble(tmp_path / "missing")


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (lambda c: "{not json", "not valid JSON"),
        (lambda c: json.dumps({**c, "format": "other"}), "not a maskctrl ensemble"),
        (lambda c: json.dumps({**c, "format_version": "two"}), "invalid format_version"),
        (lambda c: json.dumps({**c, "format_version": 99}), "ensemble format 99, newer"),
        (lambda c: json.dumps({**c, "ensemble": {"members": "three"}}), "invalid or foreign configuration"),
    ],
)
def test_load_refuses_a_corrupt_config(
    trained: tuple[EnsembleMLP, Normalizer, object], tmp_path: Path, edit: Any, error: str
) -> None:
    model, norm, _ = trained
    path = save_ensemble(tmp_path / "ens", model, norm)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(edit(config))
    with pytest.raises(ValueError, match=error):
        load_ensemble(path)


def test_load_refuses_truncated_weights(
    trained: tuple[EnsembleMLP, Normalizer, object], tmp_path: Path
) -> None:
    model, norm, _ = trained
    path = save_ensemble(tmp_path / "ens", model, norm)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot read weights"):
        load_ensemble(path)


def test_interrupted_save_is_recovered(
    trained: tuple[EnsembleMLP, Normalizer, object], tmp_path: Path
) -> None:
    model, norm, _ = trained
    path = save_ensemble(tmp_path / "ens", model, norm, metadata={"v": 1})
    (tmp_path / "ens").rename(tmp_path / ".ens.old")  # crash between the two renames of a later save
    assert load_ensemble(path).metadata == {"v": 1}
