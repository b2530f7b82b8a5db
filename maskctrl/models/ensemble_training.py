"""Fitting an :class:`~maskctrl.models.ensemble.EnsembleMLP` to one-step transitions (PETS-style).

Inputs and targets are normalized exactly as the transformer's forward targets; each member trains on its
own bootstrap resample, and with a holdout each member keeps its best epoch and the best members become
elites.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from maskctrl.models.ensemble import ARCHITECTURE, EnsembleConfig, EnsembleMLP
from maskctrl.models.evaluation import Episodes, episode_list
from maskctrl.models.normalizer import Normalizer


@dataclass
class EnsembleHistory:
    """What :func:`train_ensemble` did, epoch by epoch."""

    train_loss: list[float] = field(default_factory=list)
    """Mean training loss per epoch (NLL summed over members, or MSE)."""
    holdout_mse: list[list[float]] = field(default_factory=list)
    """Per epoch, each member's holdout MSE in normalized target units ``[E]`` (empty without holdout)."""
    best_holdout_mse: list[float] = field(default_factory=list)
    """Each member's holdout MSE at its kept epoch ``[E]``."""
    elites: list[int] = field(default_factory=list)
    """Indices of the elite members."""
    steps: int = 0
    """Gradient steps taken."""
    stopped_early: bool = False
    """Whether the patience rule ended training before ``epochs``."""


def transitions(data: Episodes | Mapping[str, Any]) -> tuple[torch.Tensor, ...]:
    """``(obs [M,O], act [M,A], rew [M], next_obs [M,O])`` float32 from episodes or a mapping of arrays.

    A mapping needs the keys ``obs``, ``act``, ``rew`` and ``next_obs`` (one row per transition).
    """
    if isinstance(data, Mapping):
        missing = [key for key in ("obs", "act", "rew", "next_obs") if key not in data]
        if missing:
            raise ValueError(f"transition arrays lack {', '.join(missing)}")
        arrays = [np.asarray(data[key], dtype=np.float32) for key in ("obs", "act", "rew", "next_obs")]
    else:
        eps = episode_list(data)
        if not eps:
            raise ValueError("cannot train an ensemble on zero episodes")
        arrays = [
            np.concatenate([ep.observations[:-1] for ep in eps]).astype(np.float32),
            np.concatenate([ep.actions for ep in eps]).astype(np.float32),
            np.concatenate([ep.rewards for ep in eps]).astype(np.float32),
            np.concatenate([ep.observations[1:] for ep in eps]).astype(np.float32),
        ]
    obs, act, rew, next_obs = (torch.from_numpy(a) for a in arrays)
    m = obs.shape[0]
    if (
        obs.dim() != 2
        or act.dim() != 2
        or rew.shape != (m,)
        or next_obs.shape != obs.shape
        or act.shape[0] != m
    ):
        raise ValueError(
            f"expected obs [M,O], act [M,A], rew [M], next_obs [M,O]; got {tuple(obs.shape)}, "
            f"{tuple(act.shape)}, {tuple(rew.shape)}, {tuple(next_obs.shape)}"
        )
    return obs, act, rew, next_obs


def train_ensemble(
    data: Episodes | Mapping[str, Any],
    config: EnsembleConfig,
    normalizer: Normalizer,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    model: EnsembleMLP | None = None,
) -> tuple[EnsembleMLP, EnsembleHistory]:
    """Fit an ensemble to the one-step transitions of ``data`` (see :func:`transitions`).

    Inputs and targets are normalized with ``normalizer`` exactly as the transformer's forward targets.
    Each member trains on its own bootstrap resample (or shuffle) each epoch; with a holdout, each member
    keeps the weights of its best holdout epoch and the best ``config.elites`` members become elites.

    :param model: continue training this ensemble (e.g. after new data) instead of a fresh one; its
        architecture must match ``config``.
    """
    obs, act, rew, next_obs = transitions(data)
    if obs.shape[1] != normalizer.obs_dim:
        raise ValueError(f"data has obs dim {obs.shape[1]}, the normalizer {normalizer.obs_dim}")
    if obs.shape[0] < 2:
        raise ValueError(f"need at least 2 transitions to train an ensemble, got {obs.shape[0]}")
    norm = normalizer.to("cpu")
    x = torch.cat([norm.normalize_obs(obs), norm.normalize_action(act)], dim=1)  # [M,O+A]
    targets = [norm.normalize_delta(next_obs - obs)]
    if config.predict_reward:
        targets.append(norm.normalize_reward(rew).unsqueeze(1))
    y = torch.cat(targets, dim=1)  # [M,D]
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(x.shape[0], generator=gen)
    n_hold = min(round(config.holdout_fraction * x.shape[0]), x.shape[0] - 1)
    hold, train = order[:n_hold], order[n_hold:]
    x_hold, y_hold = x[hold].to(device), y[hold].to(device)
    x_train, y_train = x[train].to(device), y[train].to(device)

    if model is None:
        model = EnsembleMLP(obs.shape[1], act.shape[1], config, generator=gen)
    else:
        arch = [f for f in ARCHITECTURE if getattr(model.config, f) != getattr(config, f)]
        if arch or (model.obs_dim, model.act_dim) != (obs.shape[1], act.shape[1]):
            raise ValueError(
                f"the model to continue has obs/act dims {model.obs_dim}/{model.act_dim} (data: "
                f"{obs.shape[1]}/{act.shape[1]}) and differs from config in {arch or 'nothing'}"
            )
        model.config = config  # the training settings (e.g. the bound penalty) of this run
    model = model.to(device)
    decay = [p for name, p in model.named_parameters() if name.endswith("weight")]
    rest = [p for name, p in model.named_parameters() if not name.endswith("weight")]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=config.lr,
    )
    e, m = config.members, x_train.shape[0]
    history = EnsembleHistory()
    best = torch.full((e,), float("inf"))
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}  # all [E,...]
    stale = 0
    for _ in tqdm(range(config.epochs), desc="ensemble", unit="epoch", disable=not progress):
        model.train()
        if config.bootstrap:
            idx = torch.randint(m, (e, m), generator=gen)  # [E,M]
        else:
            idx = torch.stack([torch.randperm(m, generator=gen) for _ in range(e)])
        idx, batches = idx.to(device), 0
        total = torch.zeros((), device=device)  # summed on the device: no sync per step
        for lo in range(0, m, config.batch_size):
            batch = idx[:, lo : lo + config.batch_size]  # [E,b]: each member its own rows
            loss = model.loss(x_train[batch], y_train[batch])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            total, batches, history.steps = total + loss.detach(), batches + 1, history.steps + 1
            if history.steps == config.max_steps:
                break
        history.train_loss.append(float(total) / batches)
        if n_hold:
            mse = holdout_mse(model, x_hold, y_hold).cpu()  # [E]
            history.holdout_mse.append(mse.tolist())
            kept = mse < best  # NaN never is
            significant = ~torch.isfinite(best) | (best - mse > 0.01 * best.abs())
            for k, v in model.state_dict().items():
                on_device = kept.to(v.device)
                best_state[k][on_device] = v.detach()[on_device]
            best = torch.where(kept, mse, best)
            stale = 0 if bool(significant.any()) else stale + 1
            if config.patience is not None and stale >= config.patience:
                history.stopped_early = True
                break
        if history.steps == config.max_steps:
            break
    if n_hold:
        model.load_state_dict(best_state)
        history.best_holdout_mse = best.tolist()
    n_elite = config.elites or e
    ranking = torch.argsort(best) if n_hold else torch.arange(e)
    elite_mask = torch.zeros(e, dtype=torch.bool)
    elite_mask[ranking[:n_elite]] = True
    model.elite_mask.copy_(elite_mask)
    history.elites = model.elites.tolist()
    return model.eval(), history


@torch.no_grad()
def holdout_mse(model: EnsembleMLP, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Each member's mean squared error of its mean prediction on ``x [M,in]``, ``y [M,D]``: ``[E]``."""
    was_training = model.training
    model.eval()
    sq = torch.zeros(model.config.members, device=x.device)
    for lo in range(0, x.shape[0], batch_size):
        mean, _ = model(x[lo : lo + batch_size])  # [E,b,D]
        sq += (mean - y[lo : lo + batch_size]).square().mean(-1).sum(-1)
    model.train(was_training)
    return sq / x.shape[0]
