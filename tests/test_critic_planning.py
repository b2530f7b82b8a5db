"""The safety critic in planning: MPCController's terminal value and planning reward hooks, the Hopper
critic objective and preset_objective."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from critic_fixtures import tiny_critic
from gymnasium import spaces

import maskctrl.envs  # noqa: F401  (registers the built-in specs)
from maskctrl.envs import rewards
from maskctrl.envs.registry import EnvSpec, get_spec
from maskctrl.planner import presets
from maskctrl.planner.critic import FallPenalty, save_critic
from maskctrl.planner.dynamics import History, Rollout
from maskctrl.planner.mpc import MPCConfig, MPCController, TerminalValue, planning_return

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


def objective_parts(terminate_at: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The objective with ``toy_value``, the plain planning return and the value of the last states."""
    model = ScriptedDynamics(terminate_at=terminate_at)  # even candidates terminate at that step
    got = controller(model, terminal_value=toy_value)._objective(toy_history(), candidates())
    out = model.last
    assert out is not None
    base = planning_return(out.reward, out.terminated, discount=0.9, termination_penalty=5.0)
    return got, base, toy_value(out.next_obs[:, -1])


def test_terminal_value_is_added_to_candidates_alive_at_the_end() -> None:
    got, base, value = objective_parts(terminate_at=1)
    assert (value.abs() > 1e-3).all()
    alive = torch.tensor([False, True] * 3)
    torch.testing.assert_close(got[alive], base[alive] + 0.9**4 * value[alive])
    torch.testing.assert_close(got[~alive], base[~alive])
    # Without a terminal value the objective is the plain planning return.
    plain = controller(ScriptedDynamics(terminate_at=1))._objective(toy_history(), candidates())
    torch.testing.assert_close(plain, base)


def test_termination_at_the_last_step_gets_no_terminal_value() -> None:
    got, base, value = objective_parts(terminate_at=3)
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
