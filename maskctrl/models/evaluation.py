"""Held-out open-loop prediction error of dynamics models, one code path for every model.

From random start points of held-out episodes, each with at least K real history steps, a model is
rolled out open loop for H steps on the TRUE actions of the episode; its predicted observations are
compared with the true ones. The error is the mean squared error in standardized observation units
(each dimension divided by the normalizer's observation std), per step ``k = 1..H``.

Any model with :class:`OpenLoopModel`'s ``predict_open_loop`` fits:
:class:`TransformerPredictor` wraps the masked control transformer (a shared-prefix KV-cached rollout
from the history), :class:`maskctrl.models.ensemble.EnsembleMLPDynamics` implements it itself.
:func:`compare_open_loop` scores several models on the same start points, so the numbers are paired.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from maskctrl.data.dataset import TrajectoryDataset
from maskctrl.data.episodes import Episode, EpisodeData
from maskctrl.models.kv_cache import imagine
from maskctrl.models.normalizer import Normalizer
from maskctrl.models.transformer import MaskedControlTransformer

Episodes = EpisodeData | TrajectoryDataset | Sequence[Episode]
"""Episodes to evaluate on: all of an :class:`EpisodeData`, the split of a dataset, or a list."""


@runtime_checkable
class OpenLoopModel(Protocol):
    """A dynamics model that predicts H steps ahead from a history, in raw (unnormalized) units."""

    @property
    def history(self) -> int:
        """Number of real steps K (the current one included) the model needs to read."""
        ...

    def predict_open_loop(self, obs: torch.Tensor, act: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Predict ``next_obs [B,H,O]`` from histories ``obs [B,K,O]``, ``act [B,K-1,A]`` and future ``actions [B,H,A]``.

        ``obs[:, -1]`` is the current observation, ``actions[:, 0]`` is taken there; ``act[:, k]`` was
        taken at ``obs[:, k]``. K may exceed :attr:`history` (a model reads the last steps it needs).
        """
        ...


def episode_list(episodes: Episodes) -> list[Episode]:
    """The episodes of an :class:`EpisodeData`, of a :class:`TrajectoryDataset`'s split, or a list as is."""
    if isinstance(episodes, EpisodeData):
        return [episodes.episode(i) for i in range(episodes.n_episodes)]
    if isinstance(episodes, TrajectoryDataset):
        return [episodes.sources[k].episode(i) for k, i in episodes.episodes]
    return list(episodes)


@dataclass(frozen=True, kw_only=True)
class OpenLoopResult:
    """Open-loop error of one model at every step of the horizon."""

    mse: list[float]
    """Mean squared error in standardized obs units at steps ``k = 1..H`` (``mse[k-1]``)."""
    mse_per_dim: list[list[float]]
    """The same per observation dimension, ``[H][O]``."""
    n_starts: int
    """Number of start points averaged over."""
    history: int
    """History steps K given to the model."""

    @property
    def horizon(self) -> int:
        """Steps H rolled out."""
        return len(self.mse)

    @property
    def step1(self) -> float:
        """Error of the one-step prediction."""
        return self.mse[0]

    @property
    def final(self) -> float:
        """Error at the last step H."""
        return self.mse[-1]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "mse": self.mse,
            "mse_per_dim": self.mse_per_dim,
            "n_starts": self.n_starts,
            "history": self.history,
            "horizon": self.horizon,
        }


class TransformerPredictor:
    """:class:`OpenLoopModel` view of a :class:`MaskedControlTransformer` trained on normalized data.

    The model sees standardized observations and actions scaled to [-1, 1], and its delta head predicts
    ``normalize_delta(o_{t+1} - o_t)``; each imagined observation token is therefore
    ``normalize_obs(o_t + denormalize_delta(delta))`` (the pretraining targets' convention).

    :param model: the transformer (rolled out in eval mode; its training flag is restored afterwards).
    :param normalizer: the statistics it was trained with.
    :param history: history steps K it reads; K + H - 1 must fit its ``context_len``.
    """

    def __init__(self, model: MaskedControlTransformer, normalizer: Normalizer, *, history: int) -> None:
        cfg = model.config
        if cfg.discrete_actions:
            raise ValueError("open-loop evaluation needs continuous actions; the model has discrete ones")
        if not 1 <= history < cfg.context_len:
            raise ValueError(
                f"history must be in [1, {cfg.context_len - 1}] for context_len {cfg.context_len}"
            )
        if normalizer.obs_dim != cfg.obs_dim:
            raise ValueError(f"normalizer has obs dim {normalizer.obs_dim}, the model {cfg.obs_dim}")
        self.model = model
        self.device = next(model.parameters()).device
        self.normalizer = normalizer.to(self.device)
        self._history = history

    @property
    def history(self) -> int:
        """History steps K the transformer reads."""
        return self._history

    def _next_token(self, obs: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        norm = self.normalizer
        return norm.normalize_obs(norm.denormalize_obs(obs) + norm.denormalize_delta(delta))

    @torch.no_grad()
    def predict_open_loop(self, obs: torch.Tensor, act: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """See :meth:`OpenLoopModel.predict_open_loop`; runs :func:`maskctrl.models.kv_cache.imagine`."""
        k = self._history
        if obs.dim() != 3 or obs.shape[1] < k:
            raise ValueError(
                f"transformer reads a history of K={k} steps, got obs of shape {tuple(obs.shape)}"
            )
        norm, dev = self.normalizer, self.device
        obs_n = norm.normalize_obs(obs[:, -k:].to(dev))  # [B,K,O]
        act_n = norm.normalize_action(act[:, act.shape[1] - (k - 1) :].to(dev))  # [B,K-1,A]
        cand = norm.normalize_action(actions.to(dev)).unsqueeze(1)  # [B,1,H,A]
        was_training = self.model.training
        self.model.eval()
        try:
            out = imagine(self.model, obs_n, act_n, cand, next_obs_fn=self._next_token)
        finally:
            self.model.train(was_training)
        return norm.denormalize_obs(out.next_obs[:, 0])  # [B,H,O]


def sample_starts(
    episodes: Sequence[Episode], *, history: int, horizon: int, n_starts: int, seed: int
) -> np.ndarray:
    """Start points ``[S,2]`` of (episode, step t): ``t >= K-1`` real history steps and ``t + H <= T``.

    Drawn uniformly without replacement from all such points (all of them if there are at most
    ``n_starts``), sorted, and determined by ``seed``.
    """
    if history < 1 or horizon < 1 or n_starts < 1:
        raise ValueError(
            f"need history >= 1, horizon >= 1, n_starts >= 1; got {history}, {horizon}, {n_starts}"
        )
    if not episodes:
        raise ValueError("open-loop evaluation got no episodes")
    points = [
        (e, t)
        for e, ep in enumerate(episodes)
        for t in range(history - 1, ep.length - horizon + 1)  # obs index t, future obs up to t + H
    ]
    if not points:
        longest = max(ep.length for ep in episodes)
        raise ValueError(
            f"no episode is long enough for a history of K={history} and a horizon of H={horizon} "
            f"(needs {history - 1 + horizon} steps, the longest has {longest})"
        )
    all_points = np.asarray(points, dtype=np.int64)
    if len(all_points) <= n_starts:
        return all_points
    pick = np.random.default_rng(seed).choice(len(all_points), size=n_starts, replace=False)
    return all_points[np.sort(pick)]


def gather_windows(
    episodes: Sequence[Episode], starts: np.ndarray, *, history: int, horizon: int
) -> dict[str, torch.Tensor]:
    """float32 tensors for ``starts``: ``obs [S,K,O]``, ``act [S,K-1,A]``, ``actions [S,H,A]``, ``future [S,H,O]``."""
    obs, act, actions, future = [], [], [], []
    for e, t in starts:
        ep = episodes[int(e)]
        obs.append(ep.observations[t - history + 1 : t + 1])
        act.append(ep.actions[t - history + 1 : t])
        actions.append(ep.actions[t : t + horizon])
        future.append(ep.observations[t + 1 : t + horizon + 1])
    return {
        name: torch.as_tensor(np.stack(rows), dtype=torch.float32)
        for name, rows in (("obs", obs), ("act", act), ("actions", actions), ("future", future))
    }


def compare_open_loop(
    models: Mapping[str, OpenLoopModel],
    episodes: Episodes,
    normalizer: Normalizer,
    *,
    horizon: int = 10,
    history: int | None = None,
    n_starts: int = 1000,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, OpenLoopResult]:
    """Open-loop errors of several models on the same start points (see the module docstring).

    :param history: history steps K given to every model; default the largest any model needs.
    :param n_starts: start points drawn (fewer if the episodes hold fewer).
    :param batch_size: start points predicted at once.
    """
    if not models:
        raise ValueError("compare_open_loop needs at least one model")
    needed = max(model.history for model in models.values())
    k = needed if history is None else history
    short = {name: model.history for name, model in models.items() if model.history > k}
    if short:
        raise ValueError(f"history K={k} is shorter than the models need: {short}")
    eps = episode_list(episodes)
    _check_dims(eps, normalizer)
    starts = sample_starts(eps, history=k, horizon=horizon, n_starts=n_starts, seed=seed)
    data = gather_windows(eps, starts, history=k, horizon=horizon)
    scale = normalizer.obs_std.detach().cpu().float()  # [O]
    results = {}
    for name, model in models.items():
        sq_sum = torch.zeros(horizon, normalizer.obs_dim, dtype=torch.float64)
        for lo in range(0, len(starts), batch_size):
            part = {key: value[lo : lo + batch_size] for key, value in data.items()}
            pred = model.predict_open_loop(part["obs"], part["act"], part["actions"])
            if tuple(pred.shape) != tuple(part["future"].shape):
                raise ValueError(
                    f"model {name!r} predicted shape {tuple(pred.shape)}, expected {tuple(part['future'].shape)}"
                )
            err = (pred.detach().cpu().float() - part["future"]) / scale  # [b,H,O]
            sq_sum += err.double().square().sum(0)
        per_dim = sq_sum / len(starts)  # [H,O]
        results[name] = OpenLoopResult(
            mse=per_dim.mean(1).tolist(), mse_per_dim=per_dim.tolist(), n_starts=len(starts), history=k
        )
    return results


def evaluate_open_loop(
    model: OpenLoopModel,
    episodes: Episodes,
    normalizer: Normalizer,
    *,
    horizon: int = 10,
    history: int | None = None,
    n_starts: int = 1000,
    seed: int = 0,
    batch_size: int = 256,
) -> OpenLoopResult:
    """Open-loop error of one model; see :func:`compare_open_loop` for the arguments."""
    return compare_open_loop(
        {"model": model},
        episodes,
        normalizer,
        horizon=horizon,
        history=history,
        n_starts=n_starts,
        seed=seed,
        batch_size=batch_size,
    )["model"]


def _check_dims(episodes: Sequence[Episode], normalizer: Normalizer) -> None:
    for i, ep in enumerate(episodes):
        if ep.observations.ndim != 2 or ep.observations.shape[1] != normalizer.obs_dim:
            raise ValueError(
                f"episode {i} has observations of shape {ep.observations.shape}, expected [T+1, "
                f"{normalizer.obs_dim}] (the normalizer's obs dim)"
            )
