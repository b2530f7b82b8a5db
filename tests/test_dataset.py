"""TrajectoryDataset windows and splits, and the validation of corrupt dataset directories."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import gymnasium
import numpy as np
import pytest
import torch

from maskctrl.data.collect import collect_episodes
from maskctrl.data.dataset import TrajectoryDataset, episodes_from_minari, load_minari
from maskctrl.data.episodes import (
    DatasetError,
    Episode,
    EpisodeData,
    load_episodes,
    save_episodes,
)
from maskctrl.envs.spaces import describe_space
from maskctrl.models.normalizer import Normalizer


def make_data(
    lengths: list[int],
    terminated: list[bool],
    *,
    marker: float = 0.0,
    env_name: str = "toy",
    obs_dim: int = 3,
    act_high: float = 2.0,
) -> EpisodeData:
    """Episodes whose values name themselves: obs[t] = (marker + 100 e + t, t, e), act[t] = (100 e + t + 0.5, -t)."""
    episodes = []
    for e, (length, term) in enumerate(zip(lengths, terminated, strict=True)):
        t = np.arange(length + 1, dtype=np.float64)
        obs = np.stack([marker + 100 * e + t, t, np.full_like(t, e)], axis=1)[:, :obs_dim]
        obs = np.pad(obs, ((0, 0), (0, max(0, obs_dim - 3))))
        act = np.stack([100 * e + t[:-1] + 0.5, -t[:-1]], axis=1).astype(np.float32)
        rew = 100 * e + t[:-1] + 0.25
        episodes.append(
            Episode(
                observations=obs, actions=act, rewards=rew, terminated=term, truncated=not term, reset_seed=e
            )
        )
    obs_space = gymnasium.spaces.Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float64)
    act_space = gymnasium.spaces.Box(-act_high, act_high, shape=(2,), dtype=np.float32)
    metadata = {
        "env_name": env_name,
        "gym_id": f"{env_name}-v0",
        "obs_dim": obs_dim,
        "act_dim": 2,
        "observation_space": describe_space(obs_space),
        "action_space": describe_space(act_space),
    }
    return EpisodeData.from_episodes(episodes, metadata)


def window_ends(ds: TrajectoryDataset) -> list[tuple[float, int, int]]:
    """(marker + 100 e, e, t) of the last step of every window, read from the data itself."""
    ends = []
    for i in range(len(ds)):
        obs = ds[i]["obs"][-1]
        ends.append((float(obs[0] - obs[1]), int(obs[2]), int(obs[1])))
    return ends


def test_windows_pad_on_the_left_and_carry_next_obs() -> None:
    lengths, terminated = [3, 5, 1, 4], [True, False, True, False]
    data = make_data(lengths, terminated)
    ds = TrajectoryDataset(data, window=4, split="all")
    assert len(ds) == sum(lengths) and ds.n_episodes == 4
    index = 0
    for e, length in enumerate(lengths):
        for last in range(length):
            item = ds[index]
            index += 1
            for k in range(4):
                t = last - 3 + k
                valid = t >= 0
                assert bool(item["valid"][k]) == valid
                if not valid:
                    for key in ("obs", "act", "rew", "next_obs"):
                        assert not item[key][k].any()
                    assert not item["terminated"][k]
                    continue
                assert item["obs"][k].tolist() == [100 * e + t, t, e]
                assert item["next_obs"][k].tolist() == [100 * e + t + 1, t + 1, e]
                assert item["act"][k].tolist() == [100 * e + t + 0.5, -t]
                assert item["rew"][k] == pytest.approx(100 * e + t + 0.25)
                assert bool(item["terminated"][k]) == (terminated[e] and t == length - 1)
    assert ds[-1]["obs"][-1].tolist() == ds[len(ds) - 1]["obs"][-1].tolist()
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_every_step_ends_exactly_one_window_and_split_is_by_episode() -> None:
    lengths = [3, 7, 1, 4, 6, 2, 5, 5, 1, 8, 3, 4]
    data = make_data(lengths, [i % 3 == 0 for i in range(12)])
    train = TrajectoryDataset(data, window=3, split="train", val_fraction=0.25, seed=1)
    val = TrajectoryDataset(data, window=3, split="val", val_fraction=0.25, seed=1)
    assert val.n_episodes == 3 and train.n_episodes == 9
    train_eps, val_eps = {e for _, e in train.episodes}, {e for _, e in val.episodes}
    assert not train_eps & val_eps and train_eps | val_eps == set(range(12))
    ends = window_ends(train) + window_ends(val)
    assert sorted(ends) == sorted((100.0 * e, e, t) for e in range(12) for t in range(lengths[e]))
    assert {e for _, e, _ in window_ends(val)} == val_eps  # windows come from their split only
    again = TrajectoryDataset(data, window=3, split="val", val_fraction=0.25, seed=1)
    assert again.episodes == val.episodes
    others = [
        TrajectoryDataset(data, window=3, split="val", val_fraction=0.25, seed=s).episodes
        for s in range(2, 6)
    ]
    assert any(o != val.episodes for o in others)


def test_mixing_sources(tmp_path: Path) -> None:
    save_episodes(make_data([4, 2, 3], [True, False, False]), tmp_path / "random")
    save_episodes(make_data([5, 6], [False, False], marker=1000.0), tmp_path / "expert")
    ds = TrajectoryDataset([tmp_path / "random", str(tmp_path / "expert")], window=6, split="all")
    assert len(ds) == 20 and ds.n_episodes == 5
    assert ds.episodes == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    for i in range(len(ds)):
        item = ds[i]
        markers = (item["obs"][:, 0] - item["obs"][:, 1])[item["valid"]]
        assert len(set(markers.tolist())) == 1  # a window never spans two episodes or sources
    assert sorted(m for m, _, _ in window_ends(ds)) == sorted(
        [0.0] * 4 + [100.0] * 2 + [200.0] * 3 + [1000.0] * 5 + [1100.0] * 6
    )
    train = TrajectoryDataset([tmp_path / "random", tmp_path / "expert"], window=2, val_fraction=0.5, seed=0)
    assert {k for k, _ in train.episodes} == {0, 1}  # both sources contribute to training


def test_mismatched_sources_are_rejected(tmp_path: Path) -> None:
    save_episodes(make_data([3], [True]), tmp_path / "a")
    save_episodes(make_data([3], [True], obs_dim=4), tmp_path / "b")
    save_episodes(make_data([3], [True], env_name="other"), tmp_path / "c")
    save_episodes(make_data([3], [True], act_high=1.0), tmp_path / "d")
    for name, key in (("b", "obs_dim"), ("c", "env_name"), ("d", "action_space")):
        message = f"datasets disagree on {key}: {tmp_path / 'a'} has .*, {tmp_path / name} has"
        with pytest.raises(ValueError, match=message):
            TrajectoryDataset([tmp_path / "a", tmp_path / name], window=2, split="all")


def test_normalizer_uses_the_training_split_and_action_bounds() -> None:
    data = make_data([3, 5, 2, 4, 6], [False] * 5)
    train = TrajectoryDataset(data, window=2, val_fraction=0.4, seed=3)
    val = TrajectoryDataset(data, window=2, split="val", val_fraction=0.4, seed=3)
    eps = [data.episode(e) for _, e in train.episodes]
    expected = Normalizer.from_data(
        np.concatenate([ep.observations[:-1] for ep in eps]),
        np.concatenate([ep.observations[1:] for ep in eps]),
        rewards=np.concatenate([ep.rewards for ep in eps]),
    )
    for norm in (train.normalizer(), val.normalizer()):
        assert torch.equal(norm.obs_mean, expected.obs_mean) and torch.equal(
            norm.delta_std, expected.delta_std
        )
        assert norm.reward_mean == pytest.approx(expected.reward_mean)
        assert norm.act_low is not None and norm.act_low.tolist() == [-2.0, -2.0]
        assert norm.act_high is not None and norm.act_high.tolist() == [2.0, 2.0]
    everything = TrajectoryDataset(data, window=2, split="all").normalizer()
    assert not torch.equal(everything.obs_mean, expected.obs_mean)


def test_default_collate_and_collected_data() -> None:
    data = collect_episodes("InvertedPendulum", "random", n_episodes=5, n_envs=2, seed=0, progress=False)
    ds = TrajectoryDataset(data, window=8, split="all")
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5, shuffle=False)))
    assert batch["obs"].shape == (5, 8, 4) and batch["obs"].dtype == torch.float32
    assert batch["act"].shape == (5, 8, 1) and batch["rew"].shape == (5, 8)
    assert batch["valid"].dtype == torch.bool and batch["terminated"].dtype == torch.bool
    # A terminated episode's final step is the last step of exactly one window and no other window's.
    assert sum(int(ds[i]["terminated"].sum()) for i in range(len(ds))) == int(data.terminated.sum()) == 5
    fast = torch.utils.data.DataLoader(
        ds, batch_size=None, sampler=torch.utils.data.BatchSampler(range(len(ds)), 5, drop_last=False)
    )
    first = next(iter(fast))
    for key in batch:
        assert torch.equal(first[key], batch[key]), key  # get_batch == stacking single items
    everything = ds.get_batch(torch.arange(-len(ds), 0))
    for i in range(len(ds)):
        item = ds[i]
        assert all(torch.equal(everything[key][i], item[key]) for key in item)
        both = item["valid"][1:] & item["valid"][:-1]
        assert torch.equal(item["next_obs"][:-1][both], item["obs"][1:][both])
        # InvertedPendulum-v5 pays 1 per surviving step and 0 on the step that drops the pole.
        assert torch.equal(item["rew"][item["valid"]], (~item["terminated"][item["valid"]]).float())


def test_empty_split_and_bad_arguments() -> None:
    data = make_data([4], [True])
    with pytest.raises(ValueError, match="'val' split is empty"):
        TrajectoryDataset(data, window=2, split="val", val_fraction=0.5)
    assert TrajectoryDataset(data, window=2, split="train", val_fraction=0.5).n_episodes == 1
    with pytest.raises(ValueError, match="window must be >= 1"):
        TrajectoryDataset(data, window=0)


# ---------------------------------------------------------------- corrupt dataset directories


def _rewrite(directory: Path, **changes: np.ndarray | None) -> None:
    with np.load(directory / "episodes.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    np.savez(directory / "episodes.npz", **arrays)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, EpisodeData]:
    data = make_data([3, 5, 4, 2], [True, False, False, True])
    return save_episodes(data, tmp_path / "data"), data


def _fails(directory: Path, message: str, error: type[Exception] = DatasetError) -> None:
    with pytest.raises(error, match=re.escape(message)):
        load_episodes(directory)


def test_nan_and_inf_are_located(saved: tuple[Path, EpisodeData]) -> None:
    path, data = saved
    rewards = data.rewards.copy()
    rewards[3 + 5 + 1] = np.nan  # episode 2, step 1
    _rewrite(path, rewards=rewards)
    _fails(path, f"episodes.npz in {path}: episode 2 has NaN rewards at step 1")
    rewards = data.rewards.copy()
    rewards[3 + 5] = -np.inf  # the first step of episode 2
    _rewrite(path, rewards=rewards)
    _fails(path, f"episodes.npz in {path}: episode 2 has infinite rewards at step 0")
    obs = data.observations.copy()
    obs[4 + 2, 1] = np.inf  # episode 1 has rows 4..9: its observation 2
    _rewrite(path, rewards=data.rewards, observations=obs)
    _fails(path, f"episodes.npz in {path}: episode 1 has infinite observations at step 2")


def test_inconsistent_lengths_and_dims(saved: tuple[Path, EpisodeData]) -> None:
    path, data = saved
    _rewrite(path, lengths=np.array([3, 5, 4, 3]))
    _fails(
        path,
        f"episodes.npz in {path}: episode 3 (length from 'lengths') ends at row 15 of actions, which has only 14 rows",
    )
    _rewrite(path, lengths=data.lengths, rewards=data.rewards[:-1])
    _fails(path, "episode 3 (length from 'lengths') ends at row 14 of rewards, which has only 13 rows")
    _rewrite(path, rewards=data.rewards, terminated=data.terminated[:3])
    _fails(path, "terminated has shape (3,), expected (4,) (one per episode)")
    _rewrite(path, terminated=data.terminated.astype(np.int64))
    _fails(path, "terminated must be bool, got dtype int64")
    _rewrite(path, terminated=data.terminated, actions=None)
    _fails(path, "missing array(s) actions")
    _rewrite(path, actions=data.actions)
    assert load_episodes(path).n_steps == 14  # restored: loads again
    meta = json.loads((path / "metadata.json").read_text())
    meta["obs_dim"], meta["observation_space"]["shape"] = 5, [5]
    meta["observation_space"]["low"], meta["observation_space"]["high"] = ["-inf"] * 5, ["inf"] * 5
    (path / "metadata.json").write_text(json.dumps(meta))
    _fails(path, f"episodes.npz in {path}: observations have dim 3 but metadata.json says obs_dim 5")
    meta["obs_dim"] = 3
    (path / "metadata.json").write_text(json.dumps(meta))
    _fails(path, f"metadata.json in {path}: metadata observation_space has shape [5], expected [3] (obs_dim)")
    (path / "metadata.json").write_text("{not json")
    _fails(path, f"metadata.json in {path}: cannot be parsed as JSON")


def test_metadata_counts_must_match(saved: tuple[Path, EpisodeData]) -> None:
    path, _ = saved
    meta = json.loads((path / "metadata.json").read_text())
    meta["n_episodes"] = 5
    (path / "metadata.json").write_text(json.dumps(meta))
    _fails(path, "holds 4 episodes but metadata.json says 5")
    meta["n_episodes"], meta["format_version"] = 4, 2
    (path / "metadata.json").write_text(json.dumps(meta))
    _fails(path, "format 2 is newer than this maskctrl reads")


def test_missing_truncated_garbage_and_pickled_files(saved: tuple[Path, EpisodeData], tmp_path: Path) -> None:
    path, data = saved
    raw = (path / "episodes.npz").read_bytes()
    (path / "episodes.npz").write_bytes(raw[: len(raw) // 2])
    _fails(path, f"episodes.npz in {path}: cannot be read")
    (path / "episodes.npz").write_bytes(b"garbage, not an archive\n" * 40)
    _fails(
        path, f"episodes.npz in {path}: cannot be read: {path / 'episodes.npz'} is not an npz (zip) archive"
    )
    (path / "episodes.npz").write_bytes(raw)
    objects = np.empty(data.rewards.shape, dtype=object)
    objects[:] = list(data.rewards)
    _rewrite(path, rewards=objects)
    _fails(path, f"episodes.npz in {path}: holds an object array (pickled data)")
    (path / "episodes.npz").unlink()
    _fails(path, f"{path} has no episodes.npz", FileNotFoundError)
    (path / "metadata.json").unlink()
    _fails(path, f"{path} has no metadata.json", FileNotFoundError)
    _fails(tmp_path / "nowhere", "does not exist", FileNotFoundError)


def test_invalid_data_is_never_written(tmp_path: Path) -> None:
    data = make_data([2, 2], [True, True])
    data.rewards[3] = np.nan
    with pytest.raises(DatasetError, match="episode 1 has NaN rewards at step 1"):
        save_episodes(data, tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and list(tmp_path.iterdir()) == []


def test_minari_conversion_and_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "minari", None)  # makes `import minari` raise ImportError
    with pytest.raises(ImportError, match=r"optional dependency 'minari': pip install 'maskctrl\[minari\]'"):
        load_minari("mujoco/pusher/expert-v0")
    source = make_data([3, 2], [True, False])
    fake_episodes = [
        SimpleNamespace(
            observations=ep.observations,
            actions=ep.actions,
            rewards=ep.rewards,
            terminations=np.arange(ep.length) == ep.length - 1
            if ep.terminated
            else np.zeros(ep.length, bool),
            truncations=np.arange(ep.length) == ep.length - 1 if ep.truncated else np.zeros(ep.length, bool),
        )
        for ep in (source.episode(0), source.episode(1))
    ]
    fake = SimpleNamespace(
        iterate_episodes=lambda: iter(fake_episodes),
        observation_space=gymnasium.spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float64),
        action_space=gymnasium.spaces.Box(-2.0, 2.0, shape=(2,), dtype=np.float32),
        spec=SimpleNamespace(env_spec=SimpleNamespace(id="Toy-v0"), dataset_id="toy/expert-v0"),
    )
    data = episodes_from_minari(fake, env_name="toy")
    np.testing.assert_array_equal(data.observations, source.observations)
    np.testing.assert_array_equal(data.rewards, source.rewards)
    assert data.terminated.tolist() == [True, False] and data.truncated.tolist() == [False, True]
    assert data.metadata["gym_id"] == "Toy-v0" and data.metadata["policy"] == "minari:toy/expert-v0"


def test_in_memory_sources_are_validated() -> None:
    data = make_data([2, 3], [True, False])
    data.observations[4, 0] = np.nan  # episode 1 (rows 3..6), its observation 1
    with pytest.raises(DatasetError, match=r"episode data #0: episode 1 has NaN observations at step 1"):
        TrajectoryDataset(data, window=2, split="all")
