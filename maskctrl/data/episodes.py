"""On-disk format of collected episodes: a directory holding ``episodes.npz`` and ``metadata.json``.

``episodes.npz`` stores every episode concatenated, in episode order (E episodes, T_i steps each):

===================  ================  =========  ==================================================
array                shape             dtype      meaning
===================  ================  =========  ==================================================
``observations``     [Σ(T_i+1), O]     float      each episode's observations, its final one included
``actions``          [Σ T_i, A]        float      the action taken at each step (as sent to the env)
``rewards``          [Σ T_i]           float      the reward of each step
``terminated``       [E]               bool       the episode ended in a terminal state
``truncated``        [E]               bool       the episode was cut off (time limit)
``lengths``          [E]               int        T_i ≥ 1
``reset_seeds``      [E]               int        the seed its ``env.reset`` got (-1: not known)
===================  ================  =========  ==================================================

``metadata.json`` describes where the data came from (env name and gymnasium id, observation and
action spaces, policy, seeds, action noise, package versions) and summarizes it (episode and step
counts, return mean/std/min/max); loading checks the arrays against it.

One concatenated file rather than one file per episode: a dataset of 10k short episodes stays one
file (one read, one atomic rename, no directory of thousands of inodes), validation runs vectorized
over all steps and only then locates the offending episode, and the window index of
:class:`~maskctrl.data.dataset.TrajectoryDataset` is plain offsets into the arrays. The cost, rewriting
the file to append episodes, does not matter for data that is collected once.

Loading never unpickles (``allow_pickle=False``); writing goes to a temporary directory that is then
renamed into place as checkpoints are (:mod:`maskctrl.models.atomic`), and never replaces a non-empty
directory unless asked to.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maskctrl.models.atomic import recover_directory, write_directory_atomically

FORMAT_VERSION = 1
"""Version of the on-disk format, stored in ``metadata.json``."""
EPISODES_FILE = "episodes.npz"
"""Name of the array file inside a dataset directory."""
METADATA_FILE = "metadata.json"
"""Name of the metadata file inside a dataset directory."""

_REQUIRED_METADATA = ("env_name", "gym_id", "obs_dim", "act_dim", "observation_space", "action_space")
_ARRAY_KINDS: dict[str, tuple[type[np.generic], int]] = {
    "observations": (np.floating, 2),
    "actions": (np.floating, 2),
    "rewards": (np.floating, 1),
    "terminated": (np.bool_, 1),
    "truncated": (np.bool_, 1),
    "lengths": (np.integer, 1),
    "reset_seeds": (np.integer, 1),
}


class DatasetError(ValueError):
    """A dataset directory, its arrays or its metadata are malformed; the message says where and how."""


@dataclass(frozen=True, kw_only=True, eq=False)
class Episode:
    """One episode, as views into an :class:`EpisodeData`."""

    observations: np.ndarray
    """Observations [T+1,O]; ``observations[t+1]`` follows ``actions[t]``, the last one is the final obs."""
    actions: np.ndarray
    """Actions [T,A]."""
    rewards: np.ndarray
    """Rewards [T]."""
    terminated: bool
    """Whether the episode ended in a terminal state."""
    truncated: bool
    """Whether the episode was cut off (time limit)."""
    reset_seed: int | None
    """Seed passed to ``env.reset`` at its start (None: not known)."""

    @property
    def length(self) -> int:
        """Number of steps T."""
        return int(self.actions.shape[0])

    @property
    def ret(self) -> float:
        """Undiscounted return, the sum of rewards."""
        return float(self.rewards.sum())


@dataclass(frozen=True, kw_only=True, eq=False)
class EpisodeData:
    """E episodes concatenated (see the module docstring for the arrays) plus their provenance.

    ``metadata`` holds at least ``env_name``, ``gym_id``, ``obs_dim``, ``act_dim``, ``observation_space``
    and ``action_space`` (see :func:`maskctrl.envs.spaces.describe_space`); the counts and return statistics are derived from
    the arrays by :meth:`summary` and added when saving.
    """

    observations: np.ndarray
    """Observations [Σ(T_i+1), O]."""
    actions: np.ndarray
    """Actions [Σ T_i, A]."""
    rewards: np.ndarray
    """Rewards [Σ T_i]."""
    terminated: np.ndarray
    """Bool [E]."""
    truncated: np.ndarray
    """Bool [E]."""
    lengths: np.ndarray
    """Int [E], each ≥ 1."""
    reset_seeds: np.ndarray
    """Int [E]; -1 where the reset seed is not known."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Provenance: env, spaces, policy, seeds, noise, versions (JSON-serializable)."""

    @classmethod
    def from_episodes(cls, episodes: Sequence[Episode], metadata: dict[str, Any]) -> EpisodeData:
        """Concatenate ``episodes`` (at least one) into one :class:`EpisodeData`."""
        if not episodes:
            raise ValueError("cannot build EpisodeData from zero episodes")
        return cls(
            observations=np.concatenate([ep.observations for ep in episodes]),
            actions=np.concatenate([ep.actions for ep in episodes]),
            rewards=np.concatenate([ep.rewards for ep in episodes]),
            terminated=np.array([ep.terminated for ep in episodes], dtype=bool),
            truncated=np.array([ep.truncated for ep in episodes], dtype=bool),
            lengths=np.array([ep.length for ep in episodes], dtype=np.int64),
            reset_seeds=np.array([-1 if ep.reset_seed is None else ep.reset_seed for ep in episodes]),
            metadata=dict(metadata),
        )

    @property
    def n_episodes(self) -> int:
        """Number of episodes E."""
        return int(self.lengths.shape[0])

    @property
    def n_steps(self) -> int:
        """Number of steps Σ T_i."""
        return int(self.lengths.sum())

    @property
    def obs_dim(self) -> int:
        """Observation size O."""
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        """Action size A."""
        return int(self.actions.shape[1])

    @property
    def step_offsets(self) -> np.ndarray:
        """[E+1]: episode ``i``'s steps are rows ``step_offsets[i]:step_offsets[i+1]`` of actions/rewards."""
        return np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    @property
    def obs_offsets(self) -> np.ndarray:
        """[E+1]: episode ``i``'s observations are rows ``obs_offsets[i]:obs_offsets[i+1]``."""
        return self.step_offsets + np.arange(self.n_episodes + 1)

    def episode(self, index: int) -> Episode:
        """Episode ``index`` (negative indices count from the end)."""
        if not -self.n_episodes <= index < self.n_episodes:
            raise IndexError(f"episode {index} out of range for {self.n_episodes} episodes")
        i = index % self.n_episodes
        s0, s1 = self.step_offsets[i : i + 2]
        o0, o1 = self.obs_offsets[i : i + 2]
        seed = int(self.reset_seeds[i])
        return Episode(
            observations=self.observations[o0:o1],
            actions=self.actions[s0:s1],
            rewards=self.rewards[s0:s1],
            terminated=bool(self.terminated[i]),
            truncated=bool(self.truncated[i]),
            reset_seed=None if seed < 0 else seed,
        )

    def returns(self) -> np.ndarray:
        """Undiscounted return of each episode [E] (float64)."""
        return np.add.reduceat(self.rewards.astype(np.float64), self.step_offsets[:-1])

    def summary(self) -> dict[str, Any]:
        """Counts and return statistics (population std), as stored in ``metadata.json``."""
        rets = self.returns()
        return {
            "n_episodes": self.n_episodes,
            "n_steps": self.n_steps,
            "n_terminated": int(self.terminated.sum()),
            "n_truncated": int(self.truncated.sum()),
            "return_mean": float(rets.mean()),
            "return_std": float(rets.std()),
            "return_min": float(rets.min()),
            "return_max": float(rets.max()),
        }

    def validate(self, where: str = "episode data") -> None:
        """Check shapes, dtypes, finiteness and agreement with ``metadata``; raise :class:`DatasetError`.

        :param where: how messages name the data, e.g. ``"episodes.npz in data/x"``.
        """
        validate_metadata(self.metadata, where)
        validate_arrays(self.arrays(), self.metadata, where)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays by their ``episodes.npz`` names."""
        return {
            "observations": self.observations,
            "actions": self.actions,
            "rewards": self.rewards,
            "terminated": self.terminated,
            "truncated": self.truncated,
            "lengths": self.lengths,
            "reset_seeds": self.reset_seeds,
        }


def validate_metadata(metadata: Any, where: str) -> None:
    """Check that ``metadata`` names the env and gives consistent dims and spaces."""
    if not isinstance(metadata, dict):
        raise DatasetError(f"{where}: metadata must be a JSON object, got {type(metadata).__name__}")
    missing = [key for key in _REQUIRED_METADATA if key not in metadata]
    if missing:
        raise DatasetError(f"{where}: metadata lacks {', '.join(missing)}")
    for key, space_key in (("obs_dim", "observation_space"), ("act_dim", "action_space")):
        dim, space = metadata[key], metadata[space_key]
        if not isinstance(dim, int) or dim < 1:
            raise DatasetError(f"{where}: metadata {key} must be a positive integer, got {dim!r}")
        if not isinstance(space, dict) or space.get("shape") != [dim]:
            shape = space.get("shape") if isinstance(space, dict) else space
            raise DatasetError(f"{where}: metadata {space_key} has shape {shape}, expected [{dim}] ({key})")
        if len(space.get("low", [])) != dim or len(space.get("high", [])) != dim:
            raise DatasetError(f"{where}: metadata {space_key} needs {dim} low and high bounds")


def validate_arrays(arrays: dict[str, np.ndarray], metadata: dict[str, Any], where: str) -> None:
    """Check the ``episodes.npz`` arrays against each other and against ``metadata``."""
    missing = [key for key in _ARRAY_KINDS if key not in arrays]
    if missing:
        raise DatasetError(f"{where}: missing array(s) {', '.join(missing)}")
    for key, (kind, ndim) in _ARRAY_KINDS.items():
        if not np.issubdtype(arrays[key].dtype, kind):
            raise DatasetError(f"{where}: {key} must be {kind.__name__}, got dtype {arrays[key].dtype}")
        if arrays[key].ndim != ndim:
            raise DatasetError(f"{where}: {key} must have {ndim} dimension(s), got shape {arrays[key].shape}")
    obs, act, rew, lengths = arrays["observations"], arrays["actions"], arrays["rewards"], arrays["lengths"]
    n_ep = lengths.shape[0]
    if n_ep == 0:
        raise DatasetError(f"{where}: holds no episodes")
    for key in ("terminated", "truncated", "reset_seeds"):
        if arrays[key].shape != (n_ep,):
            raise DatasetError(
                f"{where}: {key} has shape {arrays[key].shape}, expected ({n_ep},) (one per episode)"
            )
    short = np.flatnonzero(lengths < 1)
    if short.size:
        raise DatasetError(
            f"{where}: episode {short[0]} has length {lengths[short[0]]}; every episode needs a step"
        )
    step_ends = np.cumsum(lengths)
    _check_rows(where, "actions", act.shape[0], step_ends)
    _check_rows(where, "rewards", rew.shape[0], step_ends)
    _check_rows(where, "observations", obs.shape[0], step_ends + np.arange(1, n_ep + 1))
    for key, dim_key in (("observations", "obs_dim"), ("actions", "act_dim")):
        if arrays[key].shape[1] != metadata[dim_key]:
            raise DatasetError(
                f"{where}: {key} have dim {arrays[key].shape[1]} but {METADATA_FILE} says {dim_key} "
                f"{metadata[dim_key]}"
            )
    _check_finite(where, "observations", obs, step_ends + np.arange(1, n_ep + 1))
    _check_finite(where, "actions", act, step_ends)
    _check_finite(where, "rewards", rew, step_ends)
    for key, value in (("n_episodes", n_ep), ("n_steps", int(step_ends[-1]))):
        if key in metadata and metadata[key] != value:
            raise DatasetError(f"{where}: holds {value} {key[2:]} but {METADATA_FILE} says {metadata[key]}")


def save_episodes(data: EpisodeData, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Validate ``data`` and write it to ``directory`` atomically; return the directory's path.

    The files are written to a temporary sibling directory that then takes the place of ``directory``
    (:func:`~maskctrl.models.atomic.write_directory_atomically`, as checkpoints are saved), so a crash
    leaves the previous dataset or the new one: one killed between moving the previous dataset aside and
    moving the new one in is undone by the next :func:`load_episodes` or save. An existing non-empty
    ``directory`` raises ``FileExistsError`` unless ``overwrite``; even then only a previous dataset
    (nothing but ``episodes.npz`` and ``metadata.json``) is replaced, never a directory holding other files.
    """
    out = Path(directory)
    data.validate(f"episode data for {out}")
    recover_directory(out)  # a dataset moved aside by an interrupted save is still the previous one
    existing = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if existing and not overwrite:
        raise FileExistsError(
            f"{out} is not empty ({', '.join(existing[:5])}); pass overwrite=True to replace it"
        )
    foreign = [name for name in existing if name not in {EPISODES_FILE, METADATA_FILE}]
    if foreign:
        raise FileExistsError(
            f"{out} holds files that are not part of a dataset ({', '.join(foreign[:5])}); refusing to replace "
            "it, choose another directory"
        )

    def write(tmp: Path) -> None:
        with open(tmp / EPISODES_FILE, "wb") as f:
            np.savez(f, **data.arrays())  # type: ignore[arg-type]
        metadata = {"format_version": FORMAT_VERSION, **data.metadata, **data.summary()}
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, allow_nan=False) + "\n")

    # The checks above decide what may be replaced (an empty directory or a previous dataset).
    return write_directory_atomically(out, write, marker=None)


def load_episodes(directory: str | os.PathLike[str]) -> EpisodeData:
    """Read and validate a dataset directory; never unpickles.

    :raises FileNotFoundError: the directory or one of its two files is missing.
    :raises DatasetError: a file is unreadable or the data is inconsistent (the message names the file
        and, where it applies, the episode and step).
    """
    path = Path(directory)
    recover_directory(path)
    if not path.is_dir():
        raise FileNotFoundError(f"dataset directory {path} does not exist")
    for name in (METADATA_FILE, EPISODES_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} has no {name}; expected a dataset written by save_episodes")
    meta_where = f"{METADATA_FILE} in {path}"
    try:
        metadata = json.loads((path / METADATA_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{meta_where}: cannot be parsed as JSON ({exc})") from exc
    validate_metadata(metadata, meta_where)
    if metadata.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise DatasetError(
            f"{meta_where}: format {metadata['format_version']} is newer than this maskctrl reads"
        )
    where = f"{EPISODES_FILE} in {path}"
    arrays = _read_npz(path / EPISODES_FILE, where)
    arrays.setdefault("reset_seeds", np.full(arrays.get("lengths", np.zeros(0)).shape, -1, dtype=np.int64))
    validate_arrays(arrays, metadata, where)
    summary_keys = {"format_version", "n_episodes", "n_steps", "n_terminated", "n_truncated"}
    provenance = {k: v for k, v in metadata.items() if k not in summary_keys and not k.startswith("return_")}
    return EpisodeData(
        observations=arrays["observations"],
        actions=arrays["actions"],
        rewards=arrays["rewards"],
        terminated=arrays["terminated"],
        truncated=arrays["truncated"],
        lengths=arrays["lengths"],
        reset_seeds=arrays["reset_seeds"],
        metadata=provenance,
    )


def _read_npz(file: Path, where: str) -> dict[str, np.ndarray]:
    # np.load takes any file that is neither a zip nor an .npy for a pickle, so garbage would be
    # reported as pickled data: tell the two apart first.
    if not zipfile.is_zipfile(file):
        raise DatasetError(
            f"{where}: cannot be read: {file} is not an npz (zip) archive; the file is corrupt or "
            "truncated (rewrite it with save_episodes or collect the data again)"
        )
    try:
        with np.load(file, allow_pickle=False) as npz:
            return {name: np.asarray(npz[name]) for name in _ARRAY_KINDS if name in npz.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise DatasetError(
                f"{where}: holds an object array (pickled data), which is never loaded"
            ) from exc
        raise DatasetError(f"{where}: cannot be read ({exc}); is it truncated?") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{where}: cannot be read ({exc}); is it truncated?") from exc


def _check_rows(where: str, key: str, n_rows: int, ends: np.ndarray) -> None:
    """``ends[i]`` is the row just past episode i in array ``key``; the last must equal ``n_rows``."""
    if ends[-1] == n_rows:
        return
    if ends[-1] > n_rows:
        i = int(np.flatnonzero(ends > n_rows)[0])
        raise DatasetError(
            f"{where}: episode {i} (length from 'lengths') ends at row {ends[i]} of {key}, which has only "
            f"{n_rows} rows"
        )
    raise DatasetError(
        f"{where}: {key} has {n_rows} rows but the {len(ends)} episodes' lengths account for {ends[-1]}; "
        f"rows after episode {len(ends) - 1} belong to no episode"
    )


def _check_finite(where: str, key: str, values: np.ndarray, ends: np.ndarray) -> None:
    bad = ~np.isfinite(values)
    if bad.ndim > 1:
        bad = bad.any(axis=tuple(range(1, bad.ndim)))
    if not bad.any():
        return
    row = int(np.flatnonzero(bad)[0])
    episode = int(np.searchsorted(ends, row, side="right"))
    start = int(ends[episode - 1]) if episode > 0 else 0
    kind = "NaN" if np.isnan(values[row]).any() else "infinite"
    raise DatasetError(f"{where}: episode {episode} has {kind} {key} at step {row - start}")
