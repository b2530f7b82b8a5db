"""Safety critic: fall labels, fit, risk, FallPenalty, save/load (its use in planning:
test_critic_planning.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from critic_fixtures import tiny_critic

import maskctrl.envs  # noqa: F401  (registers the built-in specs)
from maskctrl.data.episodes import Episode, EpisodeData
from maskctrl.planner.critic import (
    CriticConfig,
    FallPenalty,
    SafetyCritic,
    fall_labels,
    fit_safety_critic,
    load_critic,
    save_critic,
)

TINY = CriticConfig(members=3, hidden=16, layers=2, steps=100, batch_size=64)


def episode(obs: np.ndarray, *, terminated: bool) -> Episode:
    """An episode with observations ``obs [T+1,O]`` and zero actions/rewards."""
    t = len(obs) - 1
    return Episode(
        observations=np.asarray(obs, dtype=np.float64),
        actions=np.zeros((t, 2), np.float32),
        rewards=np.zeros(t),
        terminated=terminated,
        truncated=not terminated,
        reset_seed=None,
    )


def dataset(episodes: list[Episode]) -> EpisodeData:
    return EpisodeData.from_episodes(
        episodes, {"env_name": "toy", "obs_dim": episodes[0].observations.shape[1]}
    )


def numbered(t: int, obs_dim: int = 2, start: float = 0.0) -> np.ndarray:
    """``[T+1,O]`` observations whose first entry is ``start + step``."""
    obs = np.zeros((t + 1, obs_dim))
    obs[:, 0] = start + np.arange(t + 1)
    return obs


def drift_data(seed: int, n_falls: int = 6, n_safe: int = 6) -> EpisodeData:
    """Falls are determined by obs[0]: it drifts up from ~0 and the episode terminates once it passes 1;
    safe episodes keep obs[0] near -1 and are truncated. obs[1:] is noise."""
    rng = np.random.default_rng(seed)
    episodes = []
    for _ in range(n_falls):
        x = [rng.uniform(-0.1, 0.1)]
        while x[-1] <= 1.0:
            x.append(x[-1] + rng.uniform(0.04, 0.08))
        obs = np.column_stack([x, rng.normal(size=(len(x), 2))])
        episodes.append(episode(obs, terminated=True))
    for _ in range(n_safe):
        t = 40
        obs = np.column_stack([-1.0 + 0.05 * rng.normal(size=t + 1), rng.normal(size=(t + 1, 2))])
        episodes.append(episode(obs, terminated=False))
    return dataset(episodes)


FIT = CriticConfig(
    members=3, hidden=32, layers=2, steps=300, batch_size=128, lr=3e-3, drop_tail=10, fall_discount=0.95
)


@pytest.fixture(scope="module")
def fitted() -> tuple[SafetyCritic, dict]:
    return fit_safety_critic(drift_data(0), FIT, seed=3, progress=False)


# ---------------------------------------------------------------- fall_labels


def test_fall_labels_of_terminated_and_truncated_episodes() -> None:
    config = CriticConfig(fall_discount=0.8, drop_tail=3)
    fell = numbered(4, start=0.0)  # T=4: 5 states, labelled 0.8**4 ... 0.8**0
    long_safe = numbered(9, start=100.0)  # T=9 > drop_tail: first 10 - 3 = 7 states, labelled 0
    short_safe = numbered(2, start=200.0)  # 3 observations <= drop_tail: nothing
    edge_safe = numbered(3, start=300.0)  # T == drop_tail: its first observation only
    data = dataset(
        [
            episode(fell, terminated=True),
            episode(short_safe, terminated=False),
            episode(long_safe, terminated=False),
            episode(edge_safe, terminated=False),
        ]
    )
    states, labels = fall_labels(data, config)
    assert states.dtype == np.float32 and labels.dtype == np.float32
    np.testing.assert_array_equal(
        states, np.concatenate([fell, long_safe[:7], edge_safe[:1]]).astype(np.float32)
    )
    expected = np.concatenate([0.8 ** np.arange(4, -1, -1), np.zeros(7), np.zeros(1)])
    np.testing.assert_allclose(labels, expected, rtol=1e-6)
    assert labels[4] == 1.0  # the fallen state itself


def test_fall_labels_of_a_short_terminated_episode_keep_every_state() -> None:
    # drop_tail applies to truncated episodes only.
    states, labels = fall_labels(
        dataset([episode(numbered(1), terminated=True)]), CriticConfig(drop_tail=100)
    )
    assert states.shape == (2, 2)
    np.testing.assert_allclose(labels, [0.95, 1.0], rtol=1e-6)


def test_fall_labels_empty_when_no_episode_qualifies() -> None:
    data = dataset(
        [episode(numbered(2, obs_dim=5), terminated=False), episode(numbered(4, obs_dim=5), terminated=False)]
    )
    states, labels = fall_labels(data, CriticConfig(drop_tail=10))
    assert states.shape == (0, 5) and labels.shape == (0,)


# ---------------------------------------------------------------- fit_safety_critic


def test_fit_separates_dangerous_from_safe_states(fitted: tuple[SafetyCritic, dict]) -> None:
    critic, _ = fitted
    rng = np.random.default_rng(1)
    dangerous = np.column_stack([rng.uniform(0.9, 1.05, 50), rng.normal(size=(50, 2))])
    far = np.column_stack([rng.uniform(0.0, 0.2, 50), rng.normal(size=(50, 2))])  # ~15 steps before a fall
    safe = np.column_stack([-1.0 + 0.05 * rng.normal(size=50), rng.normal(size=(50, 2))])
    with torch.no_grad():
        r_danger, r_far, r_safe = (
            critic.risk(torch.as_tensor(x, dtype=torch.float32), kappa=0.0) for x in (dangerous, far, safe)
        )
    assert r_danger.shape == (50,) and r_safe.shape == (50,)
    assert r_danger.min() > 0.5, r_danger.min()  # labels 0.95**k, k <= ~3 (seeds 0-2: min >= 0.77)
    assert r_safe.max() < 0.2, r_safe.max()  # label 0 (seeds 0-2: max <= 0.01)
    assert 0.2 < r_far.mean() < 0.65 and r_far.mean() < r_danger.mean(), r_far.mean()  # 0.95**15 = 0.46
    assert not critic.training


def test_fit_summary_counts(fitted: tuple[SafetyCritic, dict]) -> None:
    _, summary = fitted
    data = drift_data(0)
    n_states = int((data.lengths[data.terminated] + 1).sum()) + 6 * (41 - FIT.drop_tail)
    assert summary["episodes"] == 12
    assert summary["terminated_episodes"] == 6
    assert summary["states"] == n_states
    assert summary["seed"] == 3
    assert np.isfinite(summary["final_loss"]) and summary["final_loss"] > 0


def test_fit_accepts_several_datasets() -> None:
    config = CriticConfig(members=2, hidden=8, steps=5, batch_size=16, drop_tail=10)
    a, b = drift_data(0, n_falls=2, n_safe=1), drift_data(1, n_falls=1, n_safe=3)
    _, summary = fit_safety_critic([a, b], config, progress=False)
    assert summary["episodes"] == 7 and summary["terminated_episodes"] == 3
    expected = sum(len(fall_labels(d, config)[1]) for d in (a, b))
    assert summary["states"] == expected


def test_fit_is_reproducible() -> None:
    data = drift_data(2, n_falls=2, n_safe=2)
    config = CriticConfig(members=2, hidden=16, steps=30, batch_size=32, drop_tail=10)
    first, _ = fit_safety_critic(data, config, seed=7, progress=False)
    again, _ = fit_safety_critic(data, config, seed=7, progress=False)
    other, _ = fit_safety_critic(data, config, seed=8, progress=False)
    s1, s2, s3 = first.state_dict(), again.state_dict(), other.state_dict()
    assert s1.keys() == s2.keys()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)


def test_fit_rejects_data_without_a_fall() -> None:
    safe = dataset([episode(numbered(150), terminated=False)])
    with pytest.raises(ValueError, match="none of the episodes terminated"):
        fit_safety_critic(safe, TINY, progress=False)
    # Too short to keep any state: still a clear message.
    with pytest.raises(ValueError, match="no episode terminated"):
        fit_safety_critic(dataset([episode(numbered(3), terminated=False)]), TINY, progress=False)


def test_fit_rejects_mismatched_obs_dims() -> None:
    a = dataset([episode(numbered(5, obs_dim=2), terminated=True)])
    b = dataset([episode(numbered(5, obs_dim=3), terminated=True)])
    with pytest.raises(ValueError, match=r"disagree on the observation size: \[2, 3\]"):
        fit_safety_critic([a, b], TINY, progress=False)


def test_fit_rejects_non_finite_observations() -> None:
    obs = numbered(5)
    obs[2, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite observations"):
        fit_safety_critic(dataset([episode(obs, terminated=True)]), TINY, progress=False)
    obs[2, 1] = np.inf
    with pytest.raises(ValueError, match="non-finite observations"):
        fit_safety_critic(dataset([episode(obs, terminated=True)]), TINY, progress=False)


def test_fit_rejects_an_empty_list() -> None:
    with pytest.raises(ValueError, match="at least one dataset"):
        fit_safety_critic([], TINY, progress=False)


@pytest.mark.parametrize(
    "kwargs",
    [{"members": 0}, {"fall_discount": 1.0}, {"fall_discount": 0.0}, {"drop_tail": -1}, {"lr": 0.0}],
)
def test_critic_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        CriticConfig(**kwargs)


# ---------------------------------------------------------------- SafetyCritic.risk


def test_risk_kappa_zero_is_the_member_mean_and_kappa_adds_the_spread() -> None:
    critic = tiny_critic()
    obs = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        p = critic.fall_probability(obs)
        assert p.shape == (3, 20)
        assert (p.std(0) > 0).all()  # random members disagree
        torch.testing.assert_close(critic.risk(obs, kappa=0.0), p.mean(0))
        torch.testing.assert_close(critic.risk(obs, kappa=0.5), (p.mean(0) + 0.5 * p.std(0)).clamp(max=1.0))


def test_risk_is_clamped_to_one() -> None:
    critic = tiny_critic()
    obs = torch.randn(20, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        p = critic.fall_probability(obs)
        assert ((p.mean(0) + 1e4 * p.std(0)) > 1).all()
        risk = critic.risk(obs, kappa=1e4)
    assert (risk == 1.0).all()


@pytest.mark.parametrize("shape", [(5, 4), (3,), (2, 5, 3)])
def test_risk_rejects_wrong_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"expected observations \[N, 3\]"):
        tiny_critic().risk(torch.zeros(shape))


def test_single_member_critic_has_zero_spread() -> None:
    critic = tiny_critic(members=1)
    obs = torch.randn(10, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        p = critic.fall_probability(obs)
        assert p.shape == (1, 10)
        torch.testing.assert_close(critic.risk(obs, kappa=100.0), p[0])


def test_risk_standardizes_with_the_stored_statistics() -> None:
    critic = tiny_critic()
    plain = SafetyCritic(3, critic.config)
    plain.load_state_dict(critic.state_dict() | {"obs_mean": torch.zeros(3), "obs_std": torch.ones(3)})
    obs = torch.randn(4, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(critic.risk(obs), plain.risk(critic.standardize(obs)))
        torch.testing.assert_close(critic.standardize(obs), (obs - critic.obs_mean) / critic.obs_std)


# ---------------------------------------------------------------- FallPenalty


def test_fall_penalty_is_minus_penalty_times_risk() -> None:
    critic = tiny_critic()
    obs = torch.randn(16, 3, generator=torch.Generator().manual_seed(4))
    value = FallPenalty(critic, penalty=250.0, kappa=0.5)(obs)
    with torch.no_grad():
        expected = -250.0 * critic.risk(obs, kappa=0.5)
    torch.testing.assert_close(value, expected)
    assert value.shape == (16,) and (value <= 0).all() and (value < 0).any()
    assert not value.requires_grad


@pytest.mark.parametrize("kwargs", [{"penalty": -1.0}, {"kappa": -0.1}])
def test_fall_penalty_rejects_negative_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="need penalty >= 0 and kappa >= 0"):
        FallPenalty(tiny_critic(), **kwargs)


# ---------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path: Path) -> None:
    critic = tiny_critic(obs_dim=4)
    target = save_critic(tmp_path / "critic", critic, metadata={"env": "toy", "episodes": [1, 2]})
    assert target == tmp_path / "critic"
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    loaded, metadata = load_critic(target, obs_dim=4)
    assert metadata == {"env": "toy", "episodes": [1, 2]}
    assert loaded.config == critic.config and loaded.obs_dim == 4 and not loaded.training
    obs = torch.randn(8, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(loaded.fall_probability(obs), critic.fall_probability(obs))
    assert torch.equal(loaded.obs_mean, critic.obs_mean) and torch.equal(loaded.obs_std, critic.obs_std)
    # Saving again over a critic directory replaces it.
    other = tiny_critic(obs_dim=4, seed=1)
    save_critic(target, other)
    reloaded, metadata = load_critic(str(target))
    assert metadata == {}
    with torch.no_grad():
        assert torch.equal(reloaded.fall_probability(obs), other.fall_probability(obs))


def test_load_rejects_an_obs_dim_mismatch(tmp_path: Path) -> None:
    save_critic(tmp_path / "c", tiny_critic(obs_dim=3))
    with pytest.raises(ValueError, match=r"size 3, expected 5"):
        load_critic(tmp_path / "c", obs_dim=5)


def test_load_of_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_critic(tmp_path / "nowhere")
    save_critic(tmp_path / "c", tiny_critic())
    (tmp_path / "c" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        load_critic(tmp_path / "c")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_load_rejects_corrupt_weights(tmp_path: Path, damage: str) -> None:
    save_critic(tmp_path / "c", tiny_critic())
    weights = tmp_path / "c" / "model.safetensors"
    good = weights.read_bytes()
    bad = {"garbage": b"\x00garbage, not safetensors" * 10, "truncated": good[: len(good) // 2], "empty": b""}
    weights.write_bytes(bad[damage])
    with pytest.raises(ValueError, match="cannot read weights"):
        load_critic(tmp_path / "c")


def test_load_rejects_weights_of_another_architecture(tmp_path: Path) -> None:
    save_critic(tmp_path / "c", tiny_critic())
    config_path = tmp_path / "c" / "config.json"
    config = json.loads(config_path.read_text())
    config["critic"]["hidden"] = 8
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="cannot read weights"):
        load_critic(tmp_path / "c")


def _edit_config(path: Path, **changes: object) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_load_rejects_bad_configs(tmp_path: Path) -> None:
    target = tmp_path / "c"
    save_critic(target, tiny_critic())
    original = (target / "config.json").read_text()
    assert json.loads(original)["format"] == "maskctrl-safety-critic"

    _edit_config(target, format="maskctrl-ensemble")
    with pytest.raises(ValueError, match="not a maskctrl safety critic"):
        load_critic(target)

    (target / "config.json").write_text(original)
    _edit_config(target, format_version=99)
    with pytest.raises(ValueError, match="newer than this maskctrl reads"):
        load_critic(target)

    (target / "config.json").write_text(original)
    _edit_config(target, critic={"members": 3, "nonsense": 1})
    with pytest.raises(ValueError, match="invalid or foreign configuration"):
        load_critic(target)

    (target / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_critic(target)

    (target / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a maskctrl safety critic"):
        load_critic(target)

    (target / "config.json").write_text(original)
    load_critic(target)  # the restored config loads again


def test_save_refuses_a_foreign_directory(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    (target / "model.safetensors").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match=r"config\.json"):
        save_critic(target, tiny_critic())
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors", "notes.txt"]
    assert (target / "notes.txt").read_text() == "keep me"
    assert (target / "model.safetensors").read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary left behind
