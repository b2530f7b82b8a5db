"""Windows of T steps over collected episodes, as a torch ``Dataset`` for pretraining.

Every step of every episode is the last step of exactly one window, so one pass over the dataset sees
each transition once as the newest step of its window. Windows that would start before the episode are
padded on the left with zeros and ``valid`` False; the models key-mask those positions.

Several dataset directories can be mixed (e.g. random and expert data for the same env); they must
agree on the env, its dims and the action bounds. The train/validation split is by episode, drawn
separately in each source so that each contributes its share to both splits, and depends only on
``seed``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from maskctrl.data.episodes import Episode, EpisodeData, load_episodes
from maskctrl.envs.spaces import describe_space, space_bounds
from maskctrl.models.normalizer import Normalizer

Source = str | os.PathLike[str] | EpisodeData
"""A dataset directory, or episodes already in memory."""
Split = Literal["train", "val", "all"]
"""Which episodes a :class:`TrajectoryDataset` serves."""

_MUST_AGREE = ("env_name", "gym_id", "obs_dim", "act_dim")


class TrajectoryDataset(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Windows of ``window`` steps ending at every step of the selected episodes.

    ``dataset[i]`` is a dict of tensors (default ``collate`` stacks them into a batch ``[B,T,...]``;
    :meth:`get_batch` gathers a whole batch at once):

    - ``obs`` [T,O] float32: the observation at each step;
    - ``act`` [T,A] float32: the action taken there;
    - ``rew`` [T] float32: its reward;
    - ``next_obs`` [T,O] float32: the observation after the step (the forward-dynamics target);
    - ``valid`` [T] bool: False on the left padding of windows that start before the episode;
    - ``terminated`` [T] bool: True only at the final step of an episode that terminated.

    :param sources: one or several dataset directories (or :class:`EpisodeData`).
    :param window: steps per window T.
    :param split: ``"train"``, ``"val"`` or ``"all"`` episodes.
    :param val_fraction: share of each source's episodes held out for validation (at least one episode
        when the fraction is positive and the source has two or more, never all of them).
    :param seed: seed of the split.
    """

    def __init__(
        self,
        sources: Source | Sequence[Source],
        *,
        window: int,
        split: Split = "train",
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        if not 0.0 <= val_fraction <= 1.0:
            raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
        items = [sources] if isinstance(sources, str | os.PathLike | EpisodeData) else list(sources)
        if not items:
            raise ValueError("TrajectoryDataset needs at least one source")
        self.sources = [_load(item, k) for k, item in enumerate(items)]
        self.names = [_name(item, k) for k, item in enumerate(items)]
        _check_agree(self.sources, self.names)
        self.window, self.split, self.val_fraction, self.seed = window, split, val_fraction, seed
        self._val = [
            _val_episodes(data.n_episodes, val_fraction, seed, k) for k, data in enumerate(self.sources)
        ]
        self.episodes = self._select(split)
        """``(source index, episode index)`` of every episode served, in serving order."""
        if not self.episodes:
            sizes = ", ".join(str(data.n_episodes) for data in self.sources)
            raise ValueError(
                f"the {split!r} split is empty ({sizes} episode(s), val_fraction={val_fraction}); "
                "collect more episodes or change val_fraction"
            )
        self._build()

    @property
    def metadata(self) -> dict[str, Any]:
        """Metadata of the first source (env name, gym id, spaces, …)."""
        return self.sources[0].metadata

    @property
    def obs_dim(self) -> int:
        """Observation size O."""
        return self.sources[0].obs_dim

    @property
    def act_dim(self) -> int:
        """Action size A."""
        return self.sources[0].act_dim

    @property
    def n_episodes(self) -> int:
        """Episodes in this split."""
        return len(self.episodes)

    def __len__(self) -> int:
        """Number of windows: one per step of the selected episodes."""
        return int(self._step_off[-1])

    def __getitem__(self, index: int | Sequence[int] | np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """The window whose last step is the ``index``-th step of the split (in episode order).

        A sequence of indices returns :meth:`get_batch` of them.
        """
        if isinstance(index, int | np.integer) or (isinstance(index, torch.Tensor) and index.dim() == 0):
            return {key: value[0] for key, value in self.get_batch([int(index)]).items()}
        return self.get_batch(index)

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """What ``DataLoader`` (torch >= 2.0) fetches a batch through: one vectorized gather, split into items."""
        batch = self.get_batch(indices)
        columns = {key: value.unbind(0) for key, value in batch.items()}
        return [{key: column[i] for key, column in columns.items()} for i in range(len(indices))]

    def get_batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """Windows ``indices`` [B] gathered at once: the items of :meth:`__getitem__` stacked to ``[B,T,...]``.

        Far faster than B single items. A ``DataLoader`` uses it when the sampler yields whole batches:
        ``DataLoader(dataset, batch_size=None, sampler=BatchSampler(RandomSampler(dataset), B, False))``.
        """
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)  # [B]
        n = len(self)
        if idx.numel() and not bool(((idx >= -n) & (idx < n)).all()):
            raise IndexError(f"window indices must be in [-{n}, {n}), got {idx.tolist()[:8]}")
        idx = idx % n
        ep = torch.searchsorted(self._step_off, idx, right=True) - 1  # [B] episode of each window
        last = idx - self._step_off[ep]  # [B] the window's last step, within its episode
        t = last.unsqueeze(1) + torch.arange(1 - self.window, 1)  # [B,T] steps within the episode
        valid = t >= 0  # [B,T]
        t = t.clamp(min=0)
        steps = self._step_off[ep].unsqueeze(1) + t  # [B,T] rows of act/rew
        obs_rows = self._obs_off[ep].unsqueeze(1) + t  # [B,T] rows of obs
        mask = valid.unsqueeze(-1)  # [B,T,1]
        final = (t == self._lengths[ep].unsqueeze(1) - 1) & self._terminated[ep].unsqueeze(1)  # [B,T]
        return {
            "obs": self._obs[obs_rows] * mask,
            "act": self._act[steps] * mask,
            "rew": self._rew[steps] * valid,
            "next_obs": self._obs[obs_rows + 1] * mask,
            "valid": valid,
            "terminated": valid & final,
        }

    def normalizer(self) -> Normalizer:
        """Statistics of the training split's transitions, actions scaled from the action space's box.

        Unbounded action dims (any infinite bound) leave actions unscaled.
        """
        obs, next_obs, rew = [], [], []
        for k, i in self._select("train"):
            ep = self.sources[k].episode(i)
            obs.append(ep.observations[:-1])
            next_obs.append(ep.observations[1:])
            rew.append(ep.rewards)
        low, high = space_bounds(self.metadata["action_space"])
        bounded = bool(np.isfinite(low).all() and np.isfinite(high).all())
        return Normalizer.from_data(
            np.concatenate(obs),
            np.concatenate(next_obs),
            rewards=np.concatenate(rew),
            act_low=low if bounded else None,
            act_high=high if bounded else None,
        )

    def _select(self, split: Split) -> list[tuple[int, int]]:
        selected = []
        for k, data in enumerate(self.sources):
            val = self._val[k]
            for i in range(data.n_episodes):
                if split == "all" or (i in val) == (split == "val"):
                    selected.append((k, i))
        return selected

    def _build(self) -> None:
        """Concatenate the selected episodes into float32 tensors with offsets."""
        eps = [self.sources[k].episode(i) for k, i in self.episodes]
        self._lengths = torch.tensor([ep.length for ep in eps], dtype=torch.long)  # [E]
        self._step_off = torch.cat([torch.zeros(1, dtype=torch.long), self._lengths.cumsum(0)])  # [E+1]
        self._obs_off = self._step_off[:-1] + torch.arange(len(eps))  # [E]
        self._terminated = torch.tensor([ep.terminated for ep in eps], dtype=torch.bool)  # [E]
        self._obs = torch.from_numpy(np.concatenate([ep.observations for ep in eps]).astype(np.float32))
        self._act = torch.from_numpy(np.concatenate([ep.actions for ep in eps]).astype(np.float32))
        self._rew = torch.from_numpy(np.concatenate([ep.rewards for ep in eps]).astype(np.float32))


def _val_episodes(n_episodes: int, val_fraction: float, seed: int, source: int) -> set[int]:
    """Episode indices of source ``source`` held out for validation (deterministic in ``seed``)."""
    low = 1 if val_fraction > 0 and n_episodes >= 2 else 0
    high = n_episodes - 1 if val_fraction < 1 else n_episodes
    n_val = min(max(round(val_fraction * n_episodes), low), high)
    perm = np.random.default_rng([seed, source]).permutation(n_episodes)
    return {int(i) for i in perm[:n_val]}


def _load(source: Source, index: int) -> EpisodeData:
    if isinstance(source, EpisodeData):
        source.validate(_name(source, index))  # load_episodes validates what it reads; this was not read
        return source
    return load_episodes(source)


def _name(source: Source, index: int) -> str:
    return f"episode data #{index}" if isinstance(source, EpisodeData) else str(source)


def _check_agree(sources: list[EpisodeData], names: list[str]) -> None:
    first, name0 = sources[0].metadata, names[0]
    for data, name in zip(sources[1:], names[1:], strict=True):
        for key in (*_MUST_AGREE, "action_space"):
            a, b = first.get(key), data.metadata.get(key)
            if key == "action_space" and a is not None and b is not None:
                a, b = [x.tolist() for x in space_bounds(a)], [x.tolist() for x in space_bounds(b)]
            if a != b:
                raise ValueError(f"datasets disagree on {key}: {name0} has {a!r}, {name} has {b!r}")


def episodes_from_minari(dataset: Any, *, env_name: str | None = None) -> EpisodeData:
    """Convert a loaded Minari dataset (flat ``Box`` spaces) into :class:`EpisodeData`.

    :param dataset: a ``minari.MinariDataset`` (or anything with its ``iterate_episodes()``,
        ``observation_space``, ``action_space`` and ``spec.env_spec``).
    :param env_name: the maskctrl registry name to record (default: the gymnasium id).
    """
    env_spec = getattr(getattr(dataset, "spec", None), "env_spec", None)
    gym_id = None if env_spec is None else str(env_spec.id)
    obs_desc, act_desc = describe_space(dataset.observation_space), describe_space(dataset.action_space)
    episodes = []
    for ep in dataset.iterate_episodes():
        terminations, truncations = np.asarray(ep.terminations), np.asarray(ep.truncations)
        seed = getattr(ep, "seed", None)
        episodes.append(
            Episode(
                observations=np.asarray(ep.observations, dtype=np.float64),
                actions=np.asarray(ep.actions, dtype=np.float32),
                rewards=np.asarray(ep.rewards, dtype=np.float64),
                terminated=bool(terminations[-1]),
                truncated=bool(truncations[-1]),
                reset_seed=None if seed is None else int(seed),
            )
        )
    metadata = {
        "env_name": env_name or gym_id or "unknown",
        "gym_id": gym_id,
        "obs_dim": obs_desc["shape"][0],
        "act_dim": act_desc["shape"][0],
        "observation_space": obs_desc,
        "action_space": act_desc,
        "policy": f"minari:{getattr(getattr(dataset, 'spec', None), 'dataset_id', 'unknown')}",
    }
    data = EpisodeData.from_episodes(episodes, metadata)
    data.validate(f"minari dataset {metadata['policy'][7:]}")
    return data


def load_minari(dataset_id: str, *, env_name: str | None = None, download: bool = False) -> EpisodeData:
    """Load Minari dataset ``dataset_id`` (needs the optional ``minari`` package) as :class:`EpisodeData`."""
    try:
        import minari
    except ImportError as exc:
        raise ImportError(
            "importing Minari datasets needs the optional dependency 'minari': pip install 'maskctrl[minari]' "
            "(or pip install minari)"
        ) from exc
    return episodes_from_minari(minari.load_dataset(dataset_id, download=download), env_name=env_name)
