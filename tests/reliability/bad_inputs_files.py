"""Bad inputs to the file-facing Python API: checkpoints, episode files, the dataset, collection.

Each call gets ``(a, t)``: the assets directory (``reliability_assets``) and an empty directory.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from bad_inputs_api import box, make_env
from reliability_assets import tiny_model
from reliability_table import BadInput

from maskctrl.data.collect import RandomPolicy, collect_episodes
from maskctrl.data.dataset import TrajectoryDataset
from maskctrl.data.episodes import DatasetError, EpisodeData, load_episodes, save_episodes
from maskctrl.models.checkpoint import CheckpointError, load_checkpoint, load_trainer_state, save_checkpoint


def _episodes(a: Path, **changes: np.ndarray) -> EpisodeData:
    """The good pointmass episodes with some arrays replaced (not validated: that is the caller's job)."""
    return dataclasses.replace(load_episodes(a / "data-pointmass"), **changes)


def _nan_obs(a: Path) -> np.ndarray:
    data = load_episodes(a / "data-pointmass")
    obs = data.observations.copy()
    obs[int(data.obs_offsets[1]) + 3, 1] = np.nan
    return obs


class _WrongShapePolicy:
    def predict(self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False) -> tuple[np.ndarray, Any]:  # fmt: skip
        return np.zeros((len(observation), 3)), state


def _load(a: Path, name: str, **kwargs: Any) -> Any:
    return load_checkpoint(a / name, **kwargs)


CHECKPOINT = [
    BadInput(id="checkpoint/missing", call=lambda a, t: _load(a, "nowhere"), error=CheckpointError,
             match=r"no checkpoint at .*nowhere \(expected a directory with model.safetensors and config.json\)"),
    BadInput(id="checkpoint/file-not-directory", call=lambda a, t: _load(a, "model.pt"), error=CheckpointError,
             match=r"model.pt is a file; a checkpoint is a directory with model.safetensors and config.json"),
    BadInput(id="checkpoint/truncated-weights", call=lambda a, t: _load(a, "ckpt-truncated-weights"), error=CheckpointError,
             match=r"model.safetensors does not match the checksum in config.json \(corrupt or replaced\)"),
    BadInput(id="checkpoint/truncated-config", call=lambda a, t: _load(a, "ckpt-bad-json"), error=CheckpointError,
             match=r"config.json is not valid JSON \(truncated or foreign file\?\)"),
    BadInput(id="checkpoint/foreign", call=lambda a, t: _load(a, "ckpt-foreign"), error=CheckpointError,
             match=r"ckpt-foreign is not a maskctrl checkpoint \(config.json lacks format 'maskctrl-checkpoint'\)"),
    BadInput(id="checkpoint/missing-weights", call=lambda a, t: _load(a, "ckpt-missing-weights"), error=CheckpointError,
             match=r"checkpoint .*ckpt-missing-weights has no model.safetensors"),
    BadInput(id="checkpoint/pickled-weights", call=lambda a, t: _load(a, "ckpt-pickled-weights"), error=CheckpointError,
             match=r"cannot read weights from .*ckpt-pickled-weights/model.safetensors"),
    BadInput(id="checkpoint/pickled-trainer-state", call=lambda a, t: load_trainer_state(a / "ckpt-pickled-state"),
             error=CheckpointError, match=r"trainer_state.pt holds objects other than tensors and plain containers; refusing to unpickle it"),
    BadInput(id="checkpoint/truncated-trainer-state", call=lambda a, t: load_trainer_state(a / "ckpt-truncated-state"),
             error=CheckpointError, match=r"cannot read trainer state .*trainer_state.pt \(truncated or foreign file\?\)"),
    BadInput(id="checkpoint/no-trainer-state", call=lambda a, t: load_trainer_state(a / "ckpt-no-state"), error=CheckpointError,
             match=r"checkpoint .*ckpt-no-state has no trainer state \(trainer_state.pt\); it cannot be resumed"),
    BadInput(id="checkpoint/newer-format", call=lambda a, t: _load(a, "ckpt-future"), error=CheckpointError,
             match=r"has checkpoint format 2; this maskctrl reads up to 1"),
    BadInput(id="checkpoint/missing-keys", call=lambda a, t: _load(a, "ckpt-missing-keys"), error=CheckpointError,
             match=r"config.json lacks step, weights_sha256"),
    BadInput(id="checkpoint/unknown-model-field", call=lambda a, t: _load(a, "ckpt-unknown-model-field"),
             error=CheckpointError, match=r"has a model config this maskctrl does not understand: .*n_experts"),
    BadInput(id="checkpoint/invalid-model-value", call=lambda a, t: _load(a, "ckpt-bad-model-value"),
             error=CheckpointError, match=r"config.json.*d_model \(15\) must be divisible by n_head \(2\)"),
    BadInput(id="checkpoint/malformed-env-entry", call=lambda a, t: _load(a, "ckpt-bad-env-entry"),
             error=CheckpointError, match=r"config.json has a malformed env entry \(.*missing 2 required keyword-only arguments"),
    BadInput(id="checkpoint/env-entry-not-object", call=lambda a, t: _load(a, "ckpt-env-entry-not-object"),
             error=CheckpointError, match=r"config.json has a malformed env entry \(.*must be a mapping"),
    BadInput(id="checkpoint/fractional-step", call=lambda a, t: _load(a, "ckpt-fractional-step"), error=CheckpointError,
             match=r"config.json has step 2.5; expected an integer >= 0"),
    BadInput(id="checkpoint/unreadable-normalizer", call=lambda a, t: _load(a, "ckpt-bad-normalizer"),
             error=CheckpointError, match=r"config.json has invalid normalizer statistics: could not convert string to float: 'a'"),
    BadInput(id="checkpoint/zero-std-normalizer", call=lambda a, t: _load(a, "ckpt-zero-std"), error=CheckpointError,
             match=r"invalid normalizer statistics.*obs_std"),
    BadInput(id="checkpoint/weights-do-not-fit-config", call=lambda a, t: _load(a, "ckpt-wrong-dims"),
             error=CheckpointError, match=r"cannot read weights from .*size mismatch for obs_embed.weight"),
    BadInput(id="checkpoint/env-mismatch", call=lambda a, t: _load(a, "ckpt-good", env=make_env("Reacher-v5"), env_name="Reacher"),
             error=CheckpointError,
             match=r"checkpoint was trained on 'pointmass', not 'Reacher'; checkpoint expects obs dim 4, env 'Reacher' has 10"),
    BadInput(id="checkpoint/env-action-dim", call=lambda a, t: _load(a, "ckpt-good", env=make_env("InvertedPendulum-v5")),
             error=CheckpointError, match=r"checkpoint expects action dim 2, the env has 1"),
    BadInput(id="checkpoint/env-action-bounds", error=CheckpointError,
             call=lambda a, t: _load(a, "ckpt-good", env=SimpleNamespace(observation_space=box(-np.inf, np.inf, 4), action_space=box(-2, 2, 2))),
             match=r"checkpoint action bounds \[\[-1.0, -1.0\], \[1.0, 1.0\]\] differ from the env's \[\[-2.0, -2.0\], \[2.0, 2.0\]\]"),
    BadInput(id="checkpoint/env-discrete-actions", call=lambda a, t: _load(a, "ckpt-good", env=make_env("CartPole-v1")),
             error=CheckpointError, match=r"checkpoint expects continuous \(Box\) actions, the env has Discrete\(2\)"),
    BadInput(id="checkpoint/save-over-foreign-directory", call=lambda a, t: save_checkpoint(a / "notes", tiny_model()),
             error=CheckpointError, match=r"notes exists and is not a maskctrl checkpoint; refusing to replace it"),
]  # fmt: skip

EPISODES = [
    BadInput(id="episodes/missing-directory", call=lambda a, t: load_episodes(a / "nowhere"), error=FileNotFoundError,
             match=r"dataset directory .*nowhere does not exist"),
    BadInput(id="episodes/missing-npz", call=lambda a, t: load_episodes(a / "data-missing-npz"), error=FileNotFoundError,
             match=r"data-missing-npz has no episodes.npz; expected a dataset written by save_episodes"),
    BadInput(id="episodes/truncated-npz", call=lambda a, t: load_episodes(a / "data-truncated-npz"), error=DatasetError,
             match=r"episodes.npz in .*data-truncated-npz: cannot be read"),
    BadInput(id="episodes/truncated-metadata", call=lambda a, t: load_episodes(a / "data-bad-json"), error=DatasetError,
             match=r"metadata.json in .*data-bad-json: cannot be parsed as JSON"),
    BadInput(id="episodes/nan-observation", call=lambda a, t: load_episodes(a / "data-nan-obs"), error=DatasetError,
             match=r"episodes.npz in .*data-nan-obs: episode 1 has NaN observations at step 3"),
    BadInput(id="episodes/inf-reward", call=lambda a, t: load_episodes(a / "data-inf-reward"), error=DatasetError,
             match=r"episode 2 has infinite rewards at step 5"),
    BadInput(id="episodes/pickled-array", call=lambda a, t: load_episodes(a / "data-pickled"), error=DatasetError,
             match=r"holds an object array \(pickled data\), which is never loaded"),
    BadInput(id="episodes/integer-actions", call=lambda a, t: load_episodes(a / "data-int-actions"), error=DatasetError,
             match=r"actions must be floating, got dtype int64"),
    BadInput(id="episodes/obs-dim", call=lambda a, t: load_episodes(a / "data-obs-dim"), error=DatasetError,
             match=r"observations have dim 3 but metadata.json says obs_dim 4"),
    BadInput(id="episodes/inconsistent-lengths", call=lambda a, t: load_episodes(a / "data-bad-lengths"), error=DatasetError,
             match=r"episode 3 \(length from 'lengths'\) ends at row 53 of actions, which has only 48 rows"),
    BadInput(id="episodes/empty", call=lambda a, t: load_episodes(a / "data-empty"), error=DatasetError,
             match=r"episodes.npz in .*data-empty: holds no episodes"),
    BadInput(id="episodes/newer-format", call=lambda a, t: load_episodes(a / "data-future"), error=DatasetError,
             match=r"format 99 is newer than this maskctrl reads"),
    BadInput(id="episodes/metadata-missing-key", call=lambda a, t: load_episodes(a / "data-no-act-dim"), error=DatasetError,
             match=r"metadata lacks act_dim"),
    BadInput(id="episodes/save-nan", call=lambda a, t: save_episodes(_episodes(a, observations=_nan_obs(a)), t / "out"),
             error=DatasetError, match=r"episode data for .*out: episode 1 has NaN observations at step 3"),
    BadInput(id="episodes/save-over-foreign-directory", error=FileExistsError,
             call=lambda a, t: save_episodes(_episodes(a), a / "notes", overwrite=True),
             match=r"holds files that are not part of a dataset \(notes.txt\); refusing to replace it"),
    BadInput(id="episodes/save-over-existing", call=lambda a, t: save_episodes(_episodes(a), a / "data-reacher"),
             error=FileExistsError, match=r"is not empty \(episodes.npz, metadata.json\); pass overwrite=True to replace it"),
    BadInput(id="episodes/save-to-file", call=lambda a, t: save_episodes(_episodes(a), a / "a-file"),
             error=FileExistsError, match=r"a-file exists and is not a directory"),
    BadInput(id="episodes/zero-episodes", call=lambda a, t: EpisodeData.from_episodes([], {}), error=ValueError,
             match=r"cannot build EpisodeData from zero episodes"),
    BadInput(id="episodes/episode-index", call=lambda a, t: load_episodes(a / "data-pointmass").episode(4),
             error=IndexError, match=r"episode 4 out of range for 4 episodes"),
]  # fmt: skip

DATASET = [
    BadInput(id="dataset/zero-window", call=lambda a, t: TrajectoryDataset(a / "data-pointmass", window=0),
             error=ValueError, match=r"window must be >= 1, got 0"),
    BadInput(id="dataset/unknown-split", call=lambda a, t: TrajectoryDataset(a / "data-pointmass", window=4, split="test"),
             error=ValueError, match=r"split must be 'train', 'val' or 'all', got 'test'"),
    BadInput(id="dataset/val-fraction", call=lambda a, t: TrajectoryDataset(a / "data-pointmass", window=4, val_fraction=1.5),
             error=ValueError, match=r"val_fraction must be in \[0, 1\], got 1.5"),
    BadInput(id="dataset/no-sources", call=lambda a, t: TrajectoryDataset([], window=4), error=ValueError,
             match=r"TrajectoryDataset needs at least one source"),
    BadInput(id="dataset/mixed-envs", call=lambda a, t: TrajectoryDataset([a / "data-pointmass", a / "data-reacher"], window=4),
             error=ValueError, match=r"datasets disagree on env_name: .*data-pointmass has 'pointmass', .*data-reacher has 'Reacher'"),
    BadInput(id="dataset/empty-split", error=ValueError,
             call=lambda a, t: TrajectoryDataset(a / "data-pointmass", window=4, split="val", val_fraction=0.0),
             match=r"the 'val' split is empty \(4 episode\(s\), val_fraction=0.0\)"),
    BadInput(id="dataset/index-out-of-range", error=IndexError,
             call=lambda a, t: TrajectoryDataset(a / "data-pointmass", window=4, split="all").get_batch([48]),
             match=r"window indices must be in \[-48, 48\), got \[48\]"),
    BadInput(id="dataset/nan-source", call=lambda a, t: TrajectoryDataset(a / "data-nan-obs", window=4),
             error=DatasetError, match=r"episode 1 has NaN observations at step 3"),
    BadInput(id="dataset/invalid-in-memory-source", error=DatasetError,
             call=lambda a, t: TrajectoryDataset(_episodes(a, observations=_nan_obs(a)), window=4),
             match=r"episode data #0: episode 1 has NaN observations at step 3"),
]  # fmt: skip

COLLECT = [
    BadInput(id="collect/zero-episodes", call=lambda a, t: collect_episodes("pointmass", "random", n_episodes=0, seed=0),
             error=ValueError, match=r"expected n_episodes >= 1 and n_envs >= 1, got 0 and 1"),
    BadInput(id="collect/negative-seed", call=lambda a, t: collect_episodes("pointmass", "random", n_episodes=1, seed=-1),
             error=ValueError, match=r"expected seed >= 0, action_noise >= 0, max_steps >= 1; got -1, 0.0, None"),
    BadInput(id="collect/unknown-policy", call=lambda a, t: collect_episodes("pointmass", "expert", n_episodes=1, seed=0),
             error=ValueError, match=r"unknown policy 'expert'; pass 'random' or an object with predict\(\)"),
    BadInput(id="collect/unknown-env", call=lambda a, t: collect_episodes("Pointmass", "random", n_episodes=1, seed=0),
             error=KeyError, match=r"unknown env 'Pointmass'; known envs: .*; did you mean 'pointmass'\?"),
    BadInput(id="collect/policy-action-shape", error=ValueError,
             call=lambda a, t: collect_episodes("pointmass", _WrongShapePolicy(), n_episodes=1, seed=0, progress=False),
             match=r"policy returned actions of shape \(1, 3\), expected \(1, 2\)"),
    BadInput(id="collect/policy-without-predict", call=lambda a, t: collect_episodes("pointmass", 42, n_episodes=1, seed=0),
             error=TypeError, match=r"policy must have predict\(\), be 'random' or a factory; got int"),
    BadInput(id="collect/factory-result", error=TypeError,
             call=lambda a, t: collect_episodes("pointmass", lambda envs: object(), n_episodes=1, seed=0, progress=False),
             match=r"policy factory returned object, which has no predict\(\)"),
    BadInput(id="collect/unbounded-random-policy", call=lambda a, t: RandomPolicy(box(-np.inf, np.inf, 2), 0),
             error=ValueError, match=r"RandomPolicy needs finite action bounds"),
    BadInput(id="collect/discrete-actions", error=ValueError, match=r"Box.*Discrete|Discrete.*Box",
             call=lambda a, t: collect_episodes("CartPole-v1", "random", n_episodes=1, seed=0, progress=False)),
]  # fmt: skip

FILE_TABLES: dict[str, list[BadInput]] = {
    "checkpoint": CHECKPOINT,
    "episodes": EPISODES,
    "dataset": DATASET,
    "collect": COLLECT,
}
"""Every row on checkpoints, episode files, the dataset and collection, by component."""
