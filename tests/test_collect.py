"""Episode collection over vector envs, the save/load round trip, overwrite protection and the CLI."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from maskctrl.commands.collect import main as collect_main
from maskctrl.data.collect import RandomPolicy, collect_episodes
from maskctrl.data.episodes import EpisodeData, load_episodes, save_episodes
from maskctrl.envs.registry import get_spec


class LinearPolicy:
    """``a = clip(-K obs)``: a deterministic function of the observation only (no RNG, no state)."""

    def __init__(self, gain: np.ndarray) -> None:
        self.gain = gain  # [A,O]
        self.calls = 0

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        self.calls += 1
        return -np.asarray(observation) @ self.gain.T, state


def _replay(data: EpisodeData, index: int, *, from_seed: bool) -> None:
    """Step a fresh env through episode ``index``'s actions and compare every observation and reward."""
    ep = data.episode(index)
    env = get_spec(data.metadata["env_name"]).make(max_episode_steps=data.metadata["max_episode_steps"])
    obs, _ = env.reset(seed=ep.reset_seed if from_seed else 0)
    if from_seed:
        np.testing.assert_array_equal(obs, ep.observations[0])
    else:  # InvertedPendulum's observation is its whole state (qpos, qvel)
        env.unwrapped.set_state(ep.observations[0, :2], ep.observations[0, 2:])
    for t, act in enumerate(ep.actions):
        obs, reward, terminated, truncated, _ = env.step(act)
        np.testing.assert_array_equal(obs, ep.observations[t + 1], err_msg=f"episode {index} step {t}")
        assert reward == ep.rewards[t]
        last = t == ep.length - 1
        assert terminated == (ep.terminated and last)
        assert truncated == (ep.truncated and last)
    env.close()


@pytest.mark.parametrize("mode", ["disabled", "same_step"])
def test_round_trip_with_terminations(tmp_path: Path, mode: str) -> None:
    data = collect_episodes(
        "InvertedPendulum", "random", n_episodes=6, n_envs=2, seed=3, progress=False, autoreset_mode=mode
    )
    assert data.n_episodes == 6 and len(set(data.lengths.tolist())) > 1  # different lengths
    assert data.terminated.all() and not data.truncated.any()  # random actions drop the pole quickly
    spec = get_spec("InvertedPendulum")
    for j in range(6):
        ep = data.episode(j)
        # Reset observations are within 0.01 of upright; the final one must be the fallen state, and
        # no earlier observation terminates.
        assert np.abs(ep.observations[0]).max() <= 0.01
        term = spec.termination_fn(__import__("torch").as_tensor(ep.observations[1:])).numpy()
        assert term[-1] and not term[:-1].any()
        _replay(data, j, from_seed=False)
        if ep.reset_seed is not None:
            _replay(data, j, from_seed=True)
    if mode == "disabled":
        assert data.reset_seeds.tolist() == [3, 4, 5, 6, 7, 8]
    else:
        assert data.reset_seeds.tolist() == [3, 4, -1, -1, -1, -1]

    save_episodes(data, tmp_path / "ip")
    loaded = load_episodes(tmp_path / "ip")
    for key, value in data.arrays().items():
        np.testing.assert_array_equal(getattr(loaded, key), value)
        assert getattr(loaded, key).dtype == value.dtype
    meta = json.loads((tmp_path / "ip" / "metadata.json").read_text())
    returns = np.array(
        [data.rewards[s:e].sum() for s, e in zip(data.step_offsets[:-1], data.step_offsets[1:], strict=True)]
    )
    assert meta["n_episodes"] == 6 and meta["n_steps"] == int(data.lengths.sum())
    assert meta["return_mean"] == pytest.approx(returns.mean())
    assert meta["return_std"] == pytest.approx(returns.std())
    assert meta["return_min"] == returns.min() and meta["return_max"] == returns.max()
    assert meta["env_name"] == "InvertedPendulum" and meta["gym_id"] == spec.gym_id
    assert meta["obs_dim"] == 4 and meta["act_dim"] == 1
    assert meta["action_space"]["low"] == [-3.0] and meta["observation_space"]["low"] == ["-inf"] * 4
    assert meta["policy"] == "random" and meta["seed"] == 3 and meta["n_envs"] == 2
    assert meta["autoreset_mode"] == mode
    assert set(meta["versions"]) >= {"maskctrl", "gymnasium", "mujoco", "numpy"}
    assert loaded.metadata["env_name"] == "InvertedPendulum"


def test_data_depends_on_seed_not_on_sub_env_count() -> None:
    gain = np.array([[0.5, 3.0, 0.2, 0.5]])
    runs = [
        collect_episodes(
            "InvertedPendulum", LinearPolicy(gain), n_episodes=4, n_envs=n, seed=7, progress=False
        )
        for n in (1, 3)
    ]
    for key, value in runs[0].arrays().items():
        np.testing.assert_array_equal(getattr(runs[1], key), value, err_msg=key)
    again = collect_episodes("InvertedPendulum", "random", n_episodes=3, n_envs=2, seed=7, progress=False)
    other = collect_episodes("InvertedPendulum", "random", n_episodes=3, n_envs=2, seed=7, progress=False)
    np.testing.assert_array_equal(again.actions, other.actions)
    np.testing.assert_array_equal(again.observations, other.observations)


def test_max_steps_truncates_and_policy_sees_episode_starts() -> None:
    starts: list[np.ndarray] = []

    class Recorder(LinearPolicy):
        def predict(
            self,
            observation: np.ndarray,
            state: Any = None,
            episode_start: Any = None,
            deterministic: bool = False,
        ) -> tuple[np.ndarray, Any]:
            starts.append(np.array(episode_start))
            return super().predict(observation, state, episode_start, deterministic)

    data = collect_episodes(
        "pointmass", Recorder(np.zeros((2, 4))), n_episodes=4, n_envs=2, seed=0, max_steps=5, progress=False
    )
    assert data.lengths.tolist() == [5, 5, 5, 5] and data.truncated.all() and not data.terminated.any()
    assert data.metadata["max_episode_steps"] == 5
    # Both sub-envs start an episode at calls 0 and 5; never in between.
    assert [int(s.sum()) for s in starts] == [2, 0, 0, 0, 0, 2, 0, 0, 0, 0]


def test_action_noise_is_scaled_and_clipped() -> None:
    zero = LinearPolicy(np.zeros((2, 4)))
    small = collect_episodes(
        "pointmass", zero, n_episodes=4, n_envs=2, seed=1, action_noise=0.1, progress=False
    )
    assert small.actions.std() == pytest.approx(0.1, rel=0.1)  # half range of [-1, 1] is 1
    assert small.metadata["action_noise"] == 0.1
    big = collect_episodes("pointmass", zero, n_episodes=2, seed=1, action_noise=3.0, progress=False)
    assert big.actions.min() == -1.0 and big.actions.max() == 1.0  # clipped to the bounds
    assert (np.abs(big.actions) == 1.0).mean() > 0.5
    none = collect_episodes("pointmass", zero, n_episodes=1, seed=1, progress=False)
    assert not none.actions.any()


def test_random_policy_is_seeded_and_bounded() -> None:
    space = get_spec("InvertedPendulum").make().action_space
    a, _ = RandomPolicy(space, 5).predict(np.zeros((7, 4)))
    b, _ = RandomPolicy(space, 5).predict(np.zeros((7, 4)))
    c, _ = RandomPolicy(space, 6).predict(np.zeros((7, 4)))
    single, _ = RandomPolicy(space, 5).predict(np.zeros(4))
    assert a.shape == (7, 1) and single.shape == (1,) and a.dtype == space.dtype
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= -3.0 and a.max() <= 3.0
    with pytest.raises(ValueError, match="finite action bounds"):
        import gymnasium

        RandomPolicy(gymnasium.spaces.Box(-np.inf, np.inf, shape=(2,)), 0)


def test_random_policy_acts_on_dict_observations_as_sb3_passes_them() -> None:
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import DummyVecEnv

    from maskctrl.envs.wrappers import HistoryWrapper

    spec = get_spec("pointmass")
    vec = DummyVecEnv([lambda: HistoryWrapper(spec.make(max_episode_steps=5), 3) for _ in range(2)])
    policy = RandomPolicy(vec.action_space, 0)  # type: ignore[arg-type]
    batch = vec.reset()
    assert isinstance(batch, dict) and batch["obs"].shape == (2, 3, 4)  # K = 3 history, 2 sub-envs
    actions, _ = policy.predict(batch)
    assert actions.shape == (2, 2) and np.all(np.abs(actions) <= 1.0)
    mean, _ = evaluate_policy(policy, vec, n_eval_episodes=4, warn=False)  # SB3's own loop, dict obs
    assert np.isfinite(mean)
    with pytest.raises(ValueError, match=r"leading dims are \{'obs': \(2,\), 'valid': \(3,\)\}"):
        policy.predict({"obs": np.zeros((2, 3, 4)), "valid": np.zeros((3,))})

    # A single (unbatched) dict observation has leading dim K in every entry: only the space tells.
    single = {key: value[0] for key, value in batch.items()}
    exact = RandomPolicy(vec.action_space, 0, observation_space=vec.observation_space)  # type: ignore[arg-type]
    assert exact.predict(single)[0].shape == (2,)
    assert exact.predict(batch)[0].shape == (2, 2)
    env = spec.make()
    boxed = RandomPolicy(env.action_space, 0, observation_space=env.observation_space)  # type: ignore[arg-type]
    assert boxed.predict(np.zeros((7, 4)))[0].shape == (7, 2) and boxed.predict(np.zeros(4))[0].shape == (2,)
    with pytest.raises(ValueError, match="mix of vectorized and non-vectorized"):
        exact.predict({"obs": batch["obs"], "act": single["act"], "valid": single["valid"]})


def test_policy_factory_and_bad_policies() -> None:
    seen: list[int] = []

    def factory(envs: Sequence[Any]) -> LinearPolicy:
        seen.append(len(envs))
        return LinearPolicy(np.zeros((2, 4)))

    data = collect_episodes("pointmass", factory, n_episodes=3, n_envs=2, seed=0, max_steps=3, progress=False)
    assert seen == [2] and data.metadata["policy"] == "LinearPolicy"
    with pytest.raises(ValueError, match=r"policy returned actions of shape \(2, 3\), expected \(2, 2\)"):
        collect_episodes(
            "pointmass", LinearPolicy(np.zeros((3, 4))), n_episodes=2, n_envs=2, seed=0, progress=False
        )
    with pytest.raises(ValueError, match="unknown policy 'expert'"):
        collect_episodes("pointmass", "expert", n_episodes=1, seed=0, progress=False)
    with pytest.raises(KeyError, match="unknown env 'pointmas'"):
        collect_episodes("pointmas", "random", n_episodes=1, seed=0, progress=False)


def test_plain_gymnasium_id() -> None:
    data = collect_episodes(
        "Pendulum-v1", "random", n_episodes=2, n_envs=2, seed=0, max_steps=10, progress=False
    )
    assert data.metadata["env_name"] == "Pendulum-v1" and data.obs_dim == 3 and data.n_steps == 20


def test_existing_output_is_never_overwritten(tmp_path: Path) -> None:
    first = collect_episodes("pointmass", "random", n_episodes=2, seed=0, max_steps=4, progress=False)
    second = collect_episodes("pointmass", "random", n_episodes=3, seed=1, max_steps=4, progress=False)
    out = save_episodes(first, tmp_path / "d")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="not empty"):
        save_episodes(second, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    save_episodes(second, out, overwrite=True)
    assert load_episodes(out).n_episodes == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary directories left behind
    # A directory holding anything else is not a dataset to replace, even with overwrite=True.
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not part of a dataset"):
        save_episodes(first, other, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_episodes(save_episodes(first, empty)).n_episodes == 2  # an empty directory is fine


def test_an_interrupted_save_is_recovered_not_replaced(tmp_path: Path) -> None:
    first = collect_episodes("pointmass", "random", n_episodes=2, seed=0, max_steps=4, progress=False)
    second = collect_episodes("pointmass", "random", n_episodes=3, seed=1, max_steps=4, progress=False)
    out = save_episodes(first, tmp_path / "d")
    # A save killed between its two renames: the dataset moved aside, the new one half written.
    out.rename(tmp_path / ".d.old")
    (tmp_path / ".d.tmp").mkdir()
    (tmp_path / ".d.tmp" / "episodes.npz").write_bytes(b"PK\x03\x04 half")
    with pytest.raises(FileExistsError, match="not empty"):  # the recovered dataset is not overwritten
        save_episodes(second, out)
    np.testing.assert_array_equal(load_episodes(out).observations, first.observations)
    out.rename(tmp_path / ".d.old")
    np.testing.assert_array_equal(load_episodes(out).observations, first.observations)  # load recovers too
    assert load_episodes(save_episodes(second, out, overwrite=True)).n_episodes == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # the stale .d.tmp is gone


def test_cli_reports_unknown_envs_but_not_other_key_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--episodes", "1", "--out", str(tmp_path / "x"), "--no-progress"]
    assert collect_main(["--env", "Pointmas", *argv]) == 2
    assert "maskctrl collect: unknown env 'Pointmas'; known envs:" in capsys.readouterr().err

    def broken(*args: Any, **kwargs: Any) -> None:
        raise KeyError("shape")  # a bug, not a user's typo: it must surface, not read as an unknown env

    monkeypatch.setattr("maskctrl.data.collect.collect_episodes", broken)
    with pytest.raises(KeyError, match="shape"):
        collect_main(["--env", "pointmass", *argv])


def test_cli_writes_a_loadable_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tmp"
    assert collect_main(["--env", "pointmass", "--episodes", "3", "--out", str(out), "--no-progress"]) == 0
    data = load_episodes(out)
    assert data.n_episodes == 3 and data.n_steps == 150 and data.metadata["env_name"] == "pointmass"
    printed = capsys.readouterr().out
    rets = data.returns()
    assert re.search(r"^episodes\s+3 ", printed, re.M) and re.search(r"^steps\s+150$", printed, re.M)
    assert f"{rets.mean():.2f} ± {rets.std():.2f}" in printed
    before = (out / "episodes.npz").read_bytes()
    assert collect_main(["--env", "pointmass", "--episodes", "2", "--out", str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "episodes.npz").read_bytes() == before
    assert (
        collect_main(
            ["--env", "pointmass", "--episodes", "2", "--out", str(out), "--overwrite", "--no-progress"]
        )
        == 0
    )
    assert load_episodes(out).n_episodes == 2
    assert (
        collect_main(["--env", "nowhere", "--episodes", "2", "--out", str(tmp_path / "x"), "--no-progress"])
        == 2
    )
    assert "unknown env 'nowhere'" in capsys.readouterr().err


def test_cli_oracle_mpc_beats_random(tmp_path: Path) -> None:
    common = ["--env", "pointmass", "--episodes", "2", "--n-envs", "2", "--max-steps", "20", "--no-progress"]
    mpc = [
        "--policy",
        "oracle-mpc",
        "--optimizer",
        "cem",
        "--samples",
        "32",
        "--horizon",
        "8",
        "--iterations",
        "2",
    ]
    assert collect_main([*common, *mpc, "--out", str(tmp_path / "mpc")]) == 0
    assert collect_main([*common, "--out", str(tmp_path / "random")]) == 0
    expert, random = load_episodes(tmp_path / "mpc"), load_episodes(tmp_path / "random")
    assert expert.metadata["policy"].startswith("oracle-mpc")
    # Same reset seeds, so the same start states: planning toward the origin must pay off.
    np.testing.assert_array_equal(expert.episode(0).observations[0], random.episode(0).observations[0])
    assert expert.returns().mean() > random.returns().mean() + 2.0


@pytest.mark.slow
def test_oracle_mpc_keeps_the_pendulum_up_over_sub_envs(tmp_path: Path) -> None:
    """The oracle reads each sub-env's state after the collector's own resets (two sub-envs, 3 episodes)."""
    args = ["--env", "InvertedPendulum", "--episodes", "3", "--n-envs", "2", "--max-steps", "30"]
    mpc = [
        "--policy",
        "oracle-mpc",
        "--samples",
        "32",
        "--horizon",
        "8",
        "--iterations",
        "2",
        "--no-progress",
    ]
    assert collect_main([*args, *mpc, "--out", str(tmp_path / "ip")]) == 0
    data = load_episodes(tmp_path / "ip")
    assert data.lengths.tolist() == [30, 30, 30] and data.truncated.all() and not data.terminated.any()
    for j in range(3):
        _replay(data, j, from_seed=True)


@pytest.mark.parametrize("optimizer", ["icem", "mppi"])
def test_cli_oracle_mpc_return_mode_reaches_the_optimizer(tmp_path: Path, optimizer: str) -> None:
    """--return-mode mean: the expert emits the optimizer's final mean (recorded in the metadata)."""
    from maskctrl.commands.collect import CollectConfig, oracle_mpc_factory
    from maskctrl.envs.registry import get_spec

    cfg = CollectConfig(env="pointmass", policy="oracle-mpc", optimizer=optimizer, out=tmp_path, samples=16)
    env = get_spec("pointmass").make()
    for mode in (None, "best", "mean"):
        controller = oracle_mpc_factory(replace(cfg, return_mode=mode))([env])
        default = "mean" if optimizer == "mppi" else "best"
        assert controller.optimizer.config.return_mode == (mode or default)
    args = ["--env", "pointmass", "--episodes", "1", "--max-steps", "5", "--no-progress"]
    mpc = ["--policy", "oracle-mpc", "--optimizer", optimizer, "--samples", "16", "--horizon", "4"]
    assert collect_main([*args, *mpc, "--return-mode", "mean", "--out", str(tmp_path / "mean")]) == 0
    assert "return_mode=mean" in load_episodes(tmp_path / "mean").metadata["policy"]
