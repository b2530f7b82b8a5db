"""MPCController: reaches the pointmass goal, fits SB3, keeps bounds and histories, rejects bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

import maskctrl.envs  # noqa: F401  (registers pointmass)
from maskctrl.envs.registry import EnvSpec, get_spec
from maskctrl.planner.dynamics import History, Rollout
from maskctrl.planner.mpc import MPCConfig, MPCController, planning_return
from maskctrl.planner.oracle import OracleDynamics

SMALL = MPCConfig(optimizer="icem", horizon=10, samples=64, iterations=3, seed=0)


class RecordingDynamics:
    """A fake model: reward = first action's x component, NaN where ``nan_if`` says so; logs histories."""

    def __init__(self, spec: EnvSpec, nan_if: str = "never") -> None:
        self.spec = spec
        self.nan_if = nan_if
        self.histories: list[History] = []

    def rollout(self, history: History, actions: torch.Tensor) -> Rollout:
        self.histories.append(history)
        n, h, _ = actions.shape
        reward = actions[:, :, 0].clone()  # [N,H]: pushing x up is best ...
        if self.nan_if == "x_positive":
            reward[actions[:, 0, 0] > 0] = torch.nan  # ... unless that is where the model breaks
        elif self.nan_if == "always":
            reward[:] = torch.nan
        next_obs = torch.zeros(n, h, self.spec.obs_dim)
        if self.nan_if == "always":
            next_obs[:] = torch.nan
        return Rollout(next_obs=next_obs, reward=reward, terminated=torch.zeros(n, h, dtype=torch.bool))


def test_mpc_drives_pointmass_to_the_goal() -> None:
    spec = get_spec("pointmass")
    env = spec.make()
    obs, _ = env.reset(seed=0)
    start = np.linalg.norm(obs[:2])
    controller = MPCController(OracleDynamics([env], spec), spec, env.action_space, SMALL)
    for _ in range(spec.max_episode_steps):
        action, _ = controller.predict(obs)
        assert action.shape == (2,) and action.dtype == env.action_space.dtype
        obs, _, _, _, _ = env.step(action)
    assert start > 0.5
    assert np.linalg.norm(obs[:2]) < 0.02 and np.linalg.norm(obs[2:]) < 0.1


@pytest.mark.parametrize("optimizer", ["cem", "icem", "mppi"])
def test_evaluate_policy_on_two_env_dummy_vec_env(optimizer: str) -> None:
    spec = get_spec("pointmass")
    vec_env = DummyVecEnv([lambda: Monitor(spec.make()), lambda: Monitor(spec.make())])
    vec_env.seed(0)
    controller = MPCController(
        OracleDynamics(vec_env.envs, spec),
        spec,
        vec_env.action_space,
        MPCConfig(optimizer=optimizer, horizon=10, samples=64, iterations=3),
    )
    returns, lengths = evaluate_policy(controller, vec_env, n_eval_episodes=4, return_episode_rewards=True)
    assert lengths == [50, 50, 50, 50]
    # Doing nothing from the same starts scores about -40; a wrong env_index or stale history would too.
    assert max(returns) > -12, returns


def test_actions_respect_asymmetric_bounds() -> None:
    spec = get_spec("pointmass")
    env = spec.make()
    obs, _ = env.reset(seed=1, options={"state": np.array([3.0, -3.0, 0.0, 0.0])})
    box = spaces.Box(
        low=np.array([-0.2, -1.0], dtype=np.float32), high=np.array([0.5, 0.3], dtype=np.float32)
    )
    controller = MPCController(OracleDynamics([env], spec), spec, box, SMALL)
    actions = []
    for _ in range(10):
        action, _ = controller.predict(obs)
        actions.append(action)
        obs, _, _, _, _ = env.step(action)
    acts = np.stack(actions)
    assert (acts >= box.low).all() and (acts <= box.high).all()
    # Far from the goal at (+3, -3) the plan pushes towards it at full force: the asymmetric limits bind.
    np.testing.assert_allclose(acts[:, 0].mean(), -0.2, atol=0.05)
    np.testing.assert_allclose(acts[:, 1].mean(), 0.3, atol=0.05)


def test_non_finite_model_outputs_never_win_and_never_leak() -> None:
    spec = get_spec("pointmass")
    box = spaces.Box(
        low=np.array([-0.5, -1.0], dtype=np.float32), high=np.array([2.0, 1.0], dtype=np.float32)
    )
    obs = np.zeros(4)
    partly_broken = MPCController(RecordingDynamics(spec, nan_if="x_positive"), spec, box, SMALL)
    for _ in range(3):
        action, _ = partly_broken.predict(obs)
        assert np.isfinite(action).all() and -0.5 <= action[0] <= 0.0, action
    broken = MPCController(RecordingDynamics(spec, nan_if="always"), spec, box, SMALL)
    for _ in range(3):
        action, _ = broken.predict(obs)
        assert np.isfinite(action).all() and (action >= box.low).all() and (action <= box.high).all()


def test_episode_start_resets_history_and_history_alignment() -> None:
    spec = get_spec("pointmass")
    model = RecordingDynamics(spec)
    controller = MPCController(
        model,
        spec,
        spaces.Box(-1.0, 1.0, (2,), np.float32),
        MPCConfig(horizon=4, samples=8, iterations=1, history_len=5),
    )
    rng = np.random.default_rng(0)
    observations = [rng.normal(size=(2, 4)) for _ in range(4)]
    emitted = []
    for t, obs in enumerate(observations):
        actions, _ = controller.predict(obs, episode_start=np.array([t == 0, t == 0]))
        emitted.append(actions)
    env1 = controller.history(1)
    assert env1.valid.tolist() == [False, True, True, True, True]
    np.testing.assert_allclose(env1.obs[1:].numpy(), np.stack([o[1] for o in observations]), rtol=1e-6)
    np.testing.assert_allclose(env1.act[1:-1].numpy(), np.stack([a[1] for a in emitted[:-1]]), rtol=1e-6)
    assert env1.act[-1].abs().sum() == 0  # the current step's action is the one being planned
    assert model.histories[-1].env_index == 1 and model.histories[-2].env_index == 0
    controller.predict(rng.normal(size=(2, 4)), episode_start=np.array([True, False]))
    assert controller.history(0).valid.tolist() == [False] * 4 + [True]
    assert controller.history(0).act.abs().sum() == 0
    assert controller.history(1).valid.tolist() == [True] * 5


def test_bad_observations_raise_clear_errors() -> None:
    spec = get_spec("pointmass")
    controller = MPCController(RecordingDynamics(spec), spec, spaces.Box(-1.0, 1.0, (2,), np.float32), SMALL)
    with pytest.raises(
        ValueError, match=r"expected observation of shape \(n_envs, 4\) or \(4,\), got \(3, 17\)"
    ):
        controller.predict(np.zeros((3, 17)))
    with pytest.raises(ValueError, match=r"got \(5,\)"):
        controller.predict(np.zeros(5))
    with pytest.raises(ValueError, match=r"NaN or inf \(env index \[1\]\)"):
        controller.predict(np.array([[0.0, 0, 0, 0], [0, np.nan, 0, 0]]))
    with pytest.raises(ValueError, match="got a dict with keys"):
        controller.predict({"obs": np.zeros((2, 4))})
    with pytest.raises(ValueError, match=r"expected episode_start of shape \(2,\)"):
        controller.predict(np.zeros((2, 4)), episode_start=np.array([True]))
    with pytest.raises(ValueError, match="expects actions"):
        MPCController(RecordingDynamics(spec), spec, spaces.Box(-1.0, 1.0, (3,), np.float32), SMALL)


def test_planning_return_stops_at_termination_and_pays_the_penalty_once() -> None:
    reward = torch.tensor([[1.0, 2.0, 4.0, 8.0], [1.0, 2.0, float("nan"), 8.0], [1.0, 1.0, 1.0, 1.0]])
    terminated = torch.tensor([[False, False, False, False], [False, True, True, False], [False] * 4])
    out = planning_return(reward, terminated, discount=0.5, termination_penalty=10.0)
    torch.testing.assert_close(
        out, torch.tensor([1 + 1 + 1 + 1.0, 1 + 0.5 * (2 - 10), 1 + 0.5 + 0.25 + 0.125])
    )
    nan_first = planning_return(
        torch.tensor([[float("nan"), 1.0]]),
        torch.zeros(1, 2, dtype=torch.bool),
        discount=1.0,
        termination_penalty=0.0,
    )
    assert torch.isnan(nan_first).all()


def test_oracle_mpc_balances_inverted_pendulum() -> None:
    spec = get_spec("InvertedPendulum")
    env = spec.make()
    obs, _ = env.reset(seed=0)
    controller = MPCController(
        OracleDynamics([env], spec),
        spec,
        env.action_space,
        MPCConfig(optimizer="cem", horizon=10, samples=32, iterations=2),
    )
    total = 0.0
    for _ in range(60):  # random actions drop the pole after ~6 steps
        action, _ = controller.predict(obs)
        obs, reward, terminated, _, _ = env.step(action)
        total += float(reward)
        assert not terminated
    assert total == 60.0 and abs(obs[1]) < 0.1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_controller_plans_on_cuda() -> None:
    spec = get_spec("pointmass")
    env = spec.make()
    obs, _ = env.reset(seed=0)
    controller = MPCController(
        OracleDynamics([env], spec),
        spec,
        env.action_space,
        MPCConfig(horizon=5, samples=16, iterations=2, device="cuda"),
    )
    action, _ = controller.predict(obs)
    assert action.shape == (2,) and np.isfinite(action).all()
