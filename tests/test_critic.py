"""Safety critic (labels, fit, risk, FallPenalty, save/load), MPCController's terminal value and planning
reward hooks, the Hopper critic objective and preset_objective."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

import maskctrl.envs  # noqa: F401  (registers the built-in specs)
from maskctrl.data.episodes import Episode, EpisodeData
from maskctrl.envs import rewards
from maskctrl.envs.registry import EnvSpec, get_spec
from maskctrl.planner import presets
from maskctrl.planner.critic import (
    CriticConfig,
    FallPenalty,
    SafetyCritic,
    fall_labels,
    fit_safety_critic,
    load_critic,
    save_critic,
)
from maskctrl.planner.dynamics import History, Rollout
from maskctrl.planner.mpc import MPCConfig, MPCController, TerminalValue, planning_return

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


def tiny_critic(obs_dim: int = 3, members: int = 3, seed: int = 0) -> SafetyCritic:
    """An unfitted critic with non-trivial standardization (its members disagree: random weights)."""
    gen = torch.Generator().manual_seed(seed)
    config = CriticConfig(members=members, hidden=16, layers=2, steps=1)
    mean = torch.linspace(-1.0, 1.0, obs_dim)
    std = torch.linspace(0.5, 2.0, obs_dim)
    return SafetyCritic(obs_dim, config, mean=mean, std=std, generator=gen)


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


# ---------------------------------------------------------------- MPCController hooks


def _model_reward(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    return act[..., 0]


def _spec_planning_reward(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    return -next_obs[..., 0].square()


def _other_planning_reward(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    return 3.0 * obs[..., 1] + next_obs[..., 2] - act[..., 1]


def toy_spec(planning_reward_fn: object = None) -> EnvSpec:
    return EnvSpec(
        name="toy-critic",
        gym_id="ToyCritic-v0",
        obs_dim=3,
        act_dim=2,
        reward_fn=_model_reward,
        termination_fn=lambda next_obs: torch.zeros(next_obs.shape[:-1], dtype=torch.bool),
        reward_exact=True,
        termination_exact=True,
        planning_reward_fn=planning_reward_fn,  # type: ignore[arg-type]
        termination_penalty=5.0,
    )


class ScriptedDynamics:
    """next_obs[:, t] = (cumsum of a0, cumsum of a1, t + 1); reward = a0 + 0.1 t; even candidates terminate
    at step ``terminate_at`` (None: never). Keeps its last rollout."""

    def __init__(self, terminate_at: int | None = None) -> None:
        self.terminate_at = terminate_at
        self.last: Rollout | None = None
        self.actions: torch.Tensor | None = None

    def rollout(self, history: History, actions: torch.Tensor) -> Rollout:
        n, h, _ = actions.shape
        steps = torch.arange(h, dtype=actions.dtype)
        cum = actions.cumsum(dim=1)
        next_obs = torch.cat([cum, (steps + 1).expand(n, h).unsqueeze(-1)], dim=-1)
        reward = actions[:, :, 0] + 0.1 * steps
        terminated = torch.zeros(n, h, dtype=torch.bool)
        if self.terminate_at is not None:
            terminated[::2, self.terminate_at] = True
        self.last = Rollout(next_obs=next_obs, reward=reward, terminated=terminated)
        self.actions = actions
        return self.last


def toy_history() -> History:
    obs = torch.tensor([[0.0, 0.0, 0.0], [0.5, -0.25, 2.0]])
    return History(obs=obs, act=torch.zeros(2, 2), valid=torch.tensor([False, True]), env_index=0)


def toy_value(obs: torch.Tensor) -> torch.Tensor:
    return 2.0 * obs[:, 0] + obs[:, 1] - 0.5


BOX = spaces.Box(-1.0, 1.0, (2,), np.float32)


def controller(
    model: ScriptedDynamics,
    *,
    horizon: int = 4,
    repeat: int = 1,
    terminal_value: TerminalValue | None = None,
    spec: EnvSpec | None = None,
    **kwargs: object,
) -> MPCController:
    config = MPCConfig(horizon=horizon, samples=16, iterations=2, discount=0.9, action_repeat=repeat)
    return MPCController(
        model,
        spec or toy_spec(),
        BOX,
        config,
        terminal_value=terminal_value,
        **kwargs,  # type: ignore[arg-type]
    )


def candidates(n: int = 6, horizon: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, horizon, 2, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_terminal_value_is_added_to_candidates_alive_at_the_end() -> None:
    model = ScriptedDynamics(terminate_at=1)  # even candidates terminate at step 1
    actions = candidates()
    got = controller(model, terminal_value=toy_value)._objective(toy_history(), actions)
    out = model.last
    assert out is not None
    base = planning_return(out.reward, out.terminated, discount=0.9, termination_penalty=5.0)
    value = toy_value(out.next_obs[:, -1])
    assert (value.abs() > 1e-3).all()
    alive = torch.tensor([False, True] * 3)
    torch.testing.assert_close(got[alive], base[alive] + 0.9**4 * value[alive])
    torch.testing.assert_close(got[~alive], base[~alive])
    # Without a terminal value the objective is the plain planning return.
    plain = controller(ScriptedDynamics(terminate_at=1))._objective(toy_history(), actions)
    torch.testing.assert_close(plain, base)


def test_termination_at_the_last_step_gets_no_terminal_value() -> None:
    model = ScriptedDynamics(terminate_at=3)
    actions = candidates()
    got = controller(model, terminal_value=toy_value)._objective(toy_history(), actions)
    out = model.last
    assert out is not None
    base = planning_return(out.reward, out.terminated, discount=0.9, termination_penalty=5.0)
    value = toy_value(out.next_obs[:, -1])
    torch.testing.assert_close(got[0::2], base[0::2])
    torch.testing.assert_close(got[1::2], base[1::2] + 0.9**4 * value[1::2])


def test_terminal_value_discount_covers_the_repeated_steps() -> None:
    model = ScriptedDynamics()
    actions = candidates(horizon=3, seed=1)
    got = controller(model, horizon=3, repeat=2, terminal_value=toy_value)._objective(toy_history(), actions)
    assert model.actions is not None and model.actions.shape == (6, 6, 2)
    torch.testing.assert_close(model.actions[:, ::2], actions)
    torch.testing.assert_close(model.actions[:, 1::2], actions)
    plain = controller(ScriptedDynamics(), horizon=3, repeat=2)._objective(toy_history(), actions)
    assert model.last is not None
    value = toy_value(model.last.next_obs[:, -1])  # the 6th env step's observation
    assert (value.abs() > 1e-3).all()
    torch.testing.assert_close(got - plain, 0.9**6 * value)
    assert not torch.allclose(got - plain, 0.9**3 * value)


def test_non_finite_terminal_value_only_spoils_alive_candidates() -> None:
    def nan_where_positive(obs: torch.Tensor) -> torch.Tensor:
        v = toy_value(obs)
        return torch.where(obs[:, 0] > 0, torch.full_like(v, torch.nan), v)

    model = ScriptedDynamics(terminate_at=2)
    actions = candidates(n=40, seed=2)
    got = controller(model, terminal_value=nan_where_positive)._objective(toy_history(), actions)
    assert model.last is not None
    nan_value = model.last.next_obs[:, -1, 0] > 0
    alive = torch.arange(40) % 2 == 1
    assert (alive & nan_value).any() and (~alive & nan_value).any() and (alive & ~nan_value).any()
    assert not torch.isfinite(got[alive & nan_value]).any()
    assert torch.isfinite(got[~(alive & nan_value)]).all()


@pytest.mark.parametrize(
    "bad_value",
    [lambda obs: obs[:, :1], lambda obs: obs[:, 0].sum(), lambda obs: obs[:-1, 0]],
)
def test_terminal_value_of_the_wrong_shape_raises(bad_value: TerminalValue) -> None:
    with pytest.raises(ValueError, match=r"terminal_value returned shape .*expected \(6,\)"):
        controller(ScriptedDynamics(), terminal_value=bad_value)._objective(toy_history(), candidates())


def test_planning_reward_fn_overrides_the_specs() -> None:
    spec = toy_spec(planning_reward_fn=_spec_planning_reward)
    actions = candidates(seed=3)
    history = toy_history()

    def expected(reward_fn: object, model: ScriptedDynamics) -> torch.Tensor:
        out = model.last
        assert out is not None
        prev = torch.cat([history.current_obs.expand(6, 1, 3), out.next_obs[:, :-1]], dim=1)
        reward = reward_fn(prev, actions, out.next_obs)  # type: ignore[operator]
        return planning_return(reward, out.terminated, discount=0.9, termination_penalty=5.0)

    model = ScriptedDynamics(terminate_at=2)
    with_spec = controller(model, spec=spec)._objective(history, actions)
    torch.testing.assert_close(with_spec, expected(_spec_planning_reward, model))

    model = ScriptedDynamics(terminate_at=2)
    overridden = controller(model, spec=spec, planning_reward_fn=_other_planning_reward)
    assert overridden.planning_reward_fn is _other_planning_reward
    got = overridden._objective(history, actions)
    torch.testing.assert_close(got, expected(_other_planning_reward, model))
    assert not torch.allclose(got, with_spec)

    # use_planning_reward=False plans with the model's reward, override or not.
    model = ScriptedDynamics(terminate_at=2)
    config = MPCConfig(horizon=4, samples=16, iterations=2, discount=0.9, use_planning_reward=False)
    raw = MPCController(model, spec, BOX, config, planning_reward_fn=_other_planning_reward)
    got = raw._objective(history, actions)
    assert model.last is not None
    torch.testing.assert_close(
        got, planning_return(model.last.reward, model.last.terminated, discount=0.9, termination_penalty=5.0)
    )


def test_planning_reward_fn_replaces_the_model_reward_on_pointmass() -> None:
    spec = get_spec("pointmass")
    assert spec.planning_reward_fn is None  # plans with the model's reward unless told otherwise

    class Drift:
        """next_obs = (cumsum of the actions, 0, 0); the model's own reward is 0."""

        def rollout(self, history: History, actions: torch.Tensor) -> Rollout:
            n, h, _ = actions.shape
            next_obs = torch.cat([actions.cumsum(1), torch.zeros(n, h, 2)], dim=-1)
            return Rollout(next_obs, torch.zeros(n, h), torch.zeros(n, h, dtype=torch.bool))

    obs = torch.tensor([[0.3, -0.2, 0.1, 0.0]])
    history = History(obs=obs, act=torch.zeros(1, 2), valid=torch.ones(1, dtype=torch.bool), env_index=0)
    actions = candidates(seed=4)
    config = MPCConfig(horizon=4, samples=8)
    plain = MPCController(Drift(), spec, BOX, config)._objective(history, actions)
    assert (plain == 0).all()
    shaped = MPCController(Drift(), spec, BOX, config, planning_reward_fn=_other_planning_reward)
    next_obs = Drift().rollout(history, actions).next_obs
    prev = torch.cat([obs.expand(6, 1, 4), next_obs[:, :-1]], dim=1)
    expected = _other_planning_reward(prev, actions, next_obs).sum(1)
    assert not torch.allclose(expected, torch.zeros(6))
    torch.testing.assert_close(shaped._objective(history, actions), expected)


def test_predict_with_a_fall_penalty_stays_finite_and_in_bounds() -> None:
    box = spaces.Box(np.array([-0.3, -1.0], np.float32), np.array([0.7, 0.2], np.float32))
    penalty = FallPenalty(tiny_critic(), penalty=10.0)
    config = MPCConfig(horizon=4, samples=16, iterations=2, discount=0.9, action_repeat=2)
    ctl = MPCController(ScriptedDynamics(terminate_at=3), toy_spec(), box, config, terminal_value=penalty)
    obs = np.zeros((2, 3))
    for _ in range(4):
        action, _ = ctl.predict(obs)
        assert action.shape == (2, 2) and np.isfinite(action).all()
        assert (action >= box.low).all() and (action <= box.high).all()
        obs = obs + 0.1


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_terminal_value_steers_predict(sign: float) -> None:
    """With no reward at all, a value of +-(final x) pushes the first action to the matching bound."""

    class NoReward(ScriptedDynamics):
        def rollout(self, history: History, actions: torch.Tensor) -> Rollout:
            out = super().rollout(history, actions)
            return Rollout(out.next_obs, torch.zeros_like(out.reward), out.terminated)

    config = MPCConfig(optimizer="cem", horizon=4, samples=64, iterations=6, seed=0)
    ctl = MPCController(NoReward(), toy_spec(), BOX, config, terminal_value=lambda obs: sign * obs[:, 0])
    action, _ = ctl.predict(np.zeros(3))
    assert sign * action[0] > 0.5, action


# ---------------------------------------------------------------- Hopper critic objective


def _hopper_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    obs = 0.1 * torch.randn(5, 7, 11, generator=gen)
    next_obs = 0.1 * torch.randn(5, 7, 11, generator=gen)
    obs[..., 0] += 1.25
    next_obs[..., 0] += 1.25
    obs[..., 5] = 3.0 * torch.rand(5, 7, generator=gen) - 0.5  # speeds on both sides of the caps
    next_obs[..., 5] = 3.0 * torch.rand(5, 7, generator=gen) - 0.5
    act = torch.randn(5, 7, 3, generator=gen)
    return obs, act, next_obs


def test_make_hopper_critic_planning_reward() -> None:
    obs, act, next_obs = _hopper_batch(0)
    speed = 0.5 * (obs[..., 5] + next_obs[..., 5])
    assert (speed > 1.2).any() and (speed < 0.9).any()
    base = rewards.hopper_planning_reward(obs, act, next_obs)
    posture = rewards.hopper_posture_cost(next_obs)
    assert (posture > 0).all()
    got = rewards.make_hopper_critic_planning_reward(speed_cap=0.9, bonus=1.5, posture=1.0)(
        obs, act, next_obs
    )
    torch.testing.assert_close(got, base + 1.5 * torch.minimum(speed, torch.tensor(0.9)))
    half = rewards.make_hopper_critic_planning_reward(posture=0.5)(obs, act, next_obs)
    torch.testing.assert_close(half, base + 0.5 * posture + 2.0 * torch.minimum(speed, torch.tensor(1.2)))
    shipped = rewards.hopper_critic_planning_reward(obs, act, next_obs)  # no posture costs
    torch.testing.assert_close(shipped, base + posture + 2.0 * torch.minimum(speed, torch.tensor(1.2)))
    assert rewards.HOPPER_CRITIC_SPEED_CAP == 1.2
    torch.testing.assert_close(shipped, rewards.make_hopper_critic_planning_reward()(obs, act, next_obs))
    assert not torch.allclose(shipped, base + posture + 2.0 * torch.minimum(speed, torch.tensor(0.9)))


def test_hopper_planning_reward_is_capped_forward_pay_minus_posture() -> None:
    obs, act, next_obs = _hopper_batch(1)
    speed = 0.5 * (obs[..., 5] + next_obs[..., 5])
    forward = torch.where(speed < 0.8, speed, 0.8 - 2.0 * (speed - 0.8))
    healthy = rewards.hopper_healthy(next_obs).to(obs.dtype)
    want = healthy + forward - 1e-3 * act.square().sum(-1) - rewards.hopper_posture_cost(next_obs)
    torch.testing.assert_close(rewards.hopper_planning_reward(obs, act, next_obs), want)


# ---------------------------------------------------------------- preset_objective


def test_preset_objective_without_a_critic_preset(tmp_path: Path) -> None:
    assert "Reacher" not in presets.CRITICS
    assert presets.preset_objective("Reacher") == {}
    assert presets.preset_objective("Reacher", critic=True) == {}
    assert presets.preset_objective("Reacher", critic=False) == {}
    with pytest.raises(ValueError, match="no safety-critic preset"):
        presets.preset_objective("Reacher", critic=tmp_path / "c")
    with pytest.raises(ValueError, match="no safety-critic preset"):
        presets.preset_objective("Reacher", critic=str(tmp_path / "c"))
    assert presets.preset_objective("Hopper", critic=False) == {}


def test_preset_objective_loads_a_hopper_critic(tmp_path: Path) -> None:
    critic = tiny_critic(obs_dim=11)
    save_critic(tmp_path / "c", critic)
    for path in (tmp_path / "c", str(tmp_path / "c")):
        kwargs = presets.preset_objective("Hopper", critic=path)
        assert set(kwargs) == {"terminal_value", "planning_reward_fn"}
        assert kwargs["planning_reward_fn"] is rewards.hopper_critic_planning_reward
        value = kwargs["terminal_value"]
        assert isinstance(value, FallPenalty)
        assert value.penalty == presets.CRITICS["Hopper"].penalty == 1000.0
        assert value.kappa == presets.CRITICS["Hopper"].kappa
        obs = torch.randn(9, 11, generator=torch.Generator().manual_seed(6))
        with torch.no_grad():
            torch.testing.assert_close(value(obs), -1000.0 * critic.risk(obs, value.kappa))


def test_preset_objective_rejects_a_critic_of_the_wrong_size(tmp_path: Path) -> None:
    save_critic(tmp_path / "c", tiny_critic(obs_dim=5))
    with pytest.raises(ValueError, match=r"size 5, expected 11"):
        presets.preset_objective("Hopper", critic=tmp_path / "c")


def test_preset_objective_without_the_shipped_critic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(presets, "CRITIC_ROOT", tmp_path)
    with pytest.raises(FileNotFoundError, match="make critics"):
        presets.preset_objective("Hopper")
