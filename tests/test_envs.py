"""The env registry and the pointmass env."""

from __future__ import annotations

import dataclasses

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from maskctrl.envs import (
    POINTMASS_ID,
    EnvSpec,
    PointMassEnv,
    builtin_specs,
    get_spec,
    list_specs,
    register_spec,
    resolve_id,
)
from maskctrl.envs import registry as registry_module
from maskctrl.envs.rewards import never_terminates, pointmass_reward

BUILTIN = ["HalfCheetah", "Hopper", "InvertedPendulum", "Reacher", "pointmass"]


def test_builtin_specs_are_registered() -> None:
    assert set(BUILTIN) <= set(list_specs())
    assert list_specs() == sorted(list_specs())


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(KeyError, match=r"unknown env 'Walker'.*HalfCheetah, Hopper, InvertedPendulum"):
        get_spec("Walker")
    with pytest.raises(KeyError, match="did you mean 'Hopper'"):
        get_spec("Hoper")


def test_mujoco_ids_resolve_to_v5_on_gymnasium_1() -> None:
    assert int(gymnasium.__version__.split(".")[0]) >= 1
    for name in ("InvertedPendulum", "Reacher", "HalfCheetah", "Hopper"):
        assert get_spec(name).gym_id == f"{name}-v5"
    assert resolve_id("Hopper") == "Hopper-v5"
    assert resolve_id("Hopper", versions=("v4",)) == "Hopper-v4"
    with pytest.raises(KeyError, match="none of NoSuchEnv-v5, NoSuchEnv-v4 is registered"):
        resolve_id("NoSuchEnv")


def test_falls_back_to_v4_where_v5_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    # gymnasium 0.29 (pinned by imitation) registers only the v4 MuJoCo envs
    only_v4 = {k: v for k, v in gymnasium.envs.registry.items() if not k.endswith("-v5")}
    monkeypatch.setattr(gymnasium.envs, "registry", only_v4)
    specs = {s.name: s for s in builtin_specs()}
    assert specs["Hopper"].gym_id == "Hopper-v4"
    assert specs["Reacher"].obs_dim == 11  # v4 keeps the z entry of fingertip - target
    assert specs["pointmass"].gym_id == POINTMASS_ID


@pytest.mark.parametrize("spec", [*builtin_specs(("v5",)), *builtin_specs(("v4",))], ids=lambda s: s.gym_id)
def test_dims_match_the_made_env(spec: EnvSpec) -> None:
    env = spec.make()
    assert env.observation_space.shape == (spec.obs_dim,)
    assert env.action_space.shape == (spec.act_dim,)
    assert env.spec is not None and env.spec.max_episode_steps == spec.max_episode_steps
    env.close()


def test_make_applies_overrides() -> None:
    env = get_spec("pointmass").make(max_episode_steps=3, dt=0.5)
    env.reset(seed=0)
    assert env.unwrapped.dt == 0.5
    truncated = [env.step(np.zeros(2, dtype=np.float32))[3] for _ in range(3)]
    assert truncated == [False, False, True]


def test_register_spec_rejects_duplicates_unless_overwrite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))
    spec = EnvSpec(
        name="my-pointmass",
        gym_id=POINTMASS_ID,
        obs_dim=4,
        act_dim=2,
        reward_fn=pointmass_reward,
        termination_fn=never_terminates,
        reward_exact=True,
        termination_exact=True,
        max_episode_steps=7,
    )
    register_spec(spec)
    assert get_spec("my-pointmass") is spec
    assert "my-pointmass" in list_specs()
    with pytest.raises(ValueError, match="already registered"):
        register_spec(spec)
    register_spec(spec, overwrite=True)
    assert get_spec("my-pointmass").make().spec.max_episode_steps == 7


def test_envspec_validates_fields() -> None:
    base = get_spec("pointmass")
    with pytest.raises(ValueError, match="expected positive obs_dim and act_dim, got 0, 2"):
        dataclasses.replace(base, obs_dim=0)
    with pytest.raises(ValueError, match="termination_penalty is a cost"):
        dataclasses.replace(base, termination_penalty=-1.0)


def test_planning_objective_defaults_to_reward_fn() -> None:
    assert get_spec("Reacher").planning_objective is get_spec("Reacher").reward_fn
    ip = get_spec("InvertedPendulum")
    assert ip.planning_reward_fn is not None and ip.planning_objective is ip.planning_reward_fn


def test_approximations_record_their_correlation() -> None:
    for name in ("HalfCheetah", "Hopper"):
        assert not get_spec(name).reward_exact
        assert "correlation" in get_spec(name).notes.lower()


# ---------------------------------------------------------------- pointmass


def test_pointmass_is_registered_and_passes_check_env() -> None:
    env = gymnasium.make(POINTMASS_ID)
    assert isinstance(env.unwrapped, PointMassEnv)
    check_env(env.unwrapped)
    check_env(PointMassEnv())


def test_pointmass_renders_rgb_array_and_works_with_sb3_make_vec_env() -> None:
    from stable_baselines3.common.env_util import make_vec_env

    # make_vec_env asks for render_mode="rgb_array" unless told otherwise (SB3 2.x).
    vec = make_vec_env(POINTMASS_ID, n_envs=2, seed=0)
    assert vec.reset().shape == (2, 4)
    frames = vec.get_images()
    assert len(frames) == 2 and all(f.shape == (64, 64, 3) and f.dtype == np.uint8 for f in frames)
    vec.close()

    check_env(gymnasium.make(POINTMASS_ID, render_mode="rgb_array").unwrapped)  # checks render too
    env = PointMassEnv(render_mode="rgb_array")
    env.reset(options={"state": [1.0, 1.0, 0.0, 0.0]})
    top_right = env.render()
    env.reset(options={"state": [-1.0, -1.0, 0.0, 0.0]})
    bottom_left = env.render()
    assert top_right is not None and bottom_left is not None

    def red(frame: np.ndarray) -> tuple[float, float]:
        rows, cols = np.nonzero((frame[..., 0] > 200) & (frame[..., 1] < 100))
        return float(rows.mean()), float(cols.mean())

    (row_tr, col_tr), (row_bl, col_bl) = red(top_right), red(bottom_left)
    assert row_tr < 32 < row_bl and col_bl < 32 < col_tr  # +y is up, +x is right
    assert PointMassEnv().render() is None
    with pytest.raises(ValueError, match="expected render_mode=None or 'rgb_array', got 'human'"):
        PointMassEnv(render_mode="human")


def test_pointmass_seeded_reset_and_dynamics() -> None:
    env = PointMassEnv()
    first, _ = env.reset(seed=3)
    again, _ = env.reset(seed=3)
    np.testing.assert_array_equal(first, again)
    assert np.all(np.abs(first[:2]) <= 1.0) and np.all(np.abs(first[2:]) <= 0.1)
    env.reset(options={"state": [0.5, -0.5, 0.0, 1.0]})
    next_obs, reward, terminated, truncated, _ = env.step(np.array([1.0, 5.0], dtype=np.float32))
    # the action is clipped to [-1, 1]: v' = v + 0.1 a, p' = p + 0.1 v'
    np.testing.assert_allclose(next_obs, [0.5 + 0.01, -0.5 + 0.11, 0.1, 1.1])
    assert reward == pytest.approx(-np.linalg.norm(next_obs[:2]) - 0.01 * 2.0)
    assert not terminated and not truncated
    with pytest.raises(ValueError, match=r"expected options\['state'\] of shape \(4,\), got \(3,\)"):
        env.reset(options={"state": [0.0, 0.0, 0.0]})


def test_pointmass_reward_fn_matches_in_bounds_steps() -> None:
    env = PointMassEnv()
    obs, _ = env.reset(seed=0)
    act = np.array([0.3, -0.7], dtype=np.float32)
    next_obs, reward, *_ = env.step(act)
    predicted = pointmass_reward(torch.from_numpy(obs), torch.from_numpy(act), torch.from_numpy(next_obs))
    assert float(predicted) == pytest.approx(reward, abs=1e-6)


def test_pointmass_optimum_is_reaching_the_origin() -> None:
    env = gymnasium.make(POINTMASS_ID)
    rng = np.random.default_rng(0)
    returns: dict[str, float] = {"pd": 0.0, "zero": 0.0, "random": 0.0}
    final_dist = 0.0
    for policy in returns:
        obs, _ = env.reset(seed=5)
        done = False
        while not done:
            if policy == "pd":
                act = np.clip(-2.0 * obs[:2] - 2.5 * obs[2:], -1, 1)
            elif policy == "zero":
                act = np.zeros(2)
            else:
                act = rng.uniform(-1, 1, size=2)
            obs, reward, terminated, truncated, _ = env.step(act.astype(np.float32))
            returns[policy] += float(reward)
            done = terminated or truncated
        if policy == "pd":
            final_dist = float(np.linalg.norm(obs[:2]))
    assert final_dist < 0.05
    assert returns["pd"] > returns["zero"] and returns["pd"] > returns["random"]


def test_episode_limit_caps_but_never_extends() -> None:
    spec = get_spec("Reacher")
    assert spec.episode_limit() == 50
    assert spec.episode_limit(10) == 10
    assert spec.episode_limit(200) == 50  # a cap above the env's own limit keeps the env's limit


def test_objective_tag_names_the_planning_objective_safely_for_a_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from maskctrl.planner.presets import objective_tag

    assert objective_tag("HalfCheetah") == "half_cheetah_planning_reward"
    assert objective_tag("Reacher") == get_spec("Reacher").planning_objective.__name__
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))
    spec = dataclasses.replace(
        get_spec("pointmass"), name="tagged-lambda", planning_reward_fn=lambda o, a, n: o[..., 0]
    )
    register_spec(spec)
    assert objective_tag("tagged-lambda") == "lambda"
