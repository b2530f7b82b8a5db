"""Fitting an :class:`~maskctrl.models.ensemble.EnsembleMLP` to one-step transitions (PETS-style).

Inputs and targets are normalized exactly as the transformer's forward targets; each member trains on its
own bootstrap resample, and with a holdout each member keeps its best epoch and the best members become
elites.

:func:`pretrain_ensemble` is ``maskctrl pretrain --model ensemble``: it trains on the same dataset
directories, train/validation episode split and normalizer as the transformer's pretraining with the
same ``seed`` and ``val_fraction``, and writes the same run layout::

    OUT/checkpoint/   model.safetensors, config.json (normalizer, env, data, training) via save_ensemble
    OUT/log.csv       per epoch: gradient steps, training loss, 1-step MSE on train / held-out transitions
    OUT/losses.png    the train and validation MSE curves
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from maskctrl.data.dataset import TrajectoryDataset
from maskctrl.devices import resolve_device
from maskctrl.models.ensemble import (
    ARCHITECTURE,
    EnsembleConfig,
    EnsembleMLP,
    EnsembleMLPDynamics,
    save_ensemble,
)
from maskctrl.models.evaluation import Episodes, OpenLoopModel, compare_open_loop, episode_list
from maskctrl.models.normalizer import Normalizer
from maskctrl.pretrain import EnsemblePretrainConfig, EnsemblePretrainResult
from maskctrl.training.logs import PLOT_FILE, RunLog, plot_losses
from maskctrl.training.run_dir import CHECKPOINT_DIR, check_out_dir, clear_outputs, config_to_json

EpochCallback = Callable[[int, EnsembleMLP, "EnsembleHistory"], None]
"""Called after every epoch with the 1-based epoch, the model (current weights, train mode) and the history."""


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


def model_inputs(
    data: Episodes | Mapping[str, Any], normalizer: Normalizer, *, predict_reward: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized inputs ``x [M,O+A]`` and targets ``y [M,D]`` (Δobs, then the reward) on the CPU."""
    obs, act, rew, next_obs = transitions(data)
    if obs.shape[1] != normalizer.obs_dim:
        raise ValueError(f"data has obs dim {obs.shape[1]}, the normalizer {normalizer.obs_dim}")
    norm = normalizer.to("cpu")
    x = torch.cat([norm.normalize_obs(obs), norm.normalize_action(act)], dim=1)  # [M,O+A]
    targets = [norm.normalize_delta(next_obs - obs)]
    if predict_reward:
        targets.append(norm.normalize_reward(rew).unsqueeze(1))
    return x, torch.cat(targets, dim=1)


def train_ensemble(
    data: Episodes | Mapping[str, Any],
    config: EnsembleConfig,
    normalizer: Normalizer,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    model: EnsembleMLP | None = None,
    on_epoch: EpochCallback | None = None,
) -> tuple[EnsembleMLP, EnsembleHistory]:
    """Fit an ensemble to the one-step transitions of ``data`` (see :func:`transitions`).

    Inputs and targets are normalized with ``normalizer`` exactly as the transformer's forward targets.
    Each member trains on its own bootstrap resample (or shuffle) each epoch; with a holdout, each member
    keeps the weights of its best holdout epoch and the best ``config.elites`` members become elites.

    :param model: continue training this ensemble (e.g. after new data) instead of a fresh one; its
        architecture must match ``config``.
    :param on_epoch: called after every epoch (see :data:`EpochCallback`), e.g. to log it.
    """
    x, y = model_inputs(data, normalizer, predict_reward=config.predict_reward)
    obs_dim, act_dim = normalizer.obs_dim, x.shape[1] - normalizer.obs_dim
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 transitions to train an ensemble, got {x.shape[0]}")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(x.shape[0], generator=gen)
    n_hold = min(round(config.holdout_fraction * x.shape[0]), x.shape[0] - 1)
    hold, train = order[:n_hold], order[n_hold:]
    x_hold, y_hold = x[hold].to(device), y[hold].to(device)
    x_train, y_train = x[train].to(device), y[train].to(device)

    if model is None:
        model = EnsembleMLP(obs_dim, act_dim, config, generator=gen)
    else:
        arch = [f for f in ARCHITECTURE if getattr(model.config, f) != getattr(config, f)]
        if arch or (model.obs_dim, model.act_dim) != (obs_dim, act_dim):
            raise ValueError(
                f"the model to continue has obs/act dims {model.obs_dim}/{model.act_dim} (data: "
                f"{obs_dim}/{act_dim}) and differs from config in {arch or 'nothing'}"
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
    bar = tqdm(range(config.epochs), desc="ensemble", unit="epoch", disable=not progress or None)
    for epoch in bar:
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
        bar.set_postfix(loss=f"{history.train_loss[-1]:.4f}", refresh=False)
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
            history.stopped_early = config.patience is not None and stale >= config.patience
        if on_epoch is not None:
            on_epoch(epoch + 1, model, history)
        if history.stopped_early or history.steps == config.max_steps:
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


class ZeroChangePredictor:
    """The trivial :class:`~maskctrl.models.evaluation.OpenLoopModel`: the state never changes."""

    history = 1

    def predict_open_loop(self, obs: torch.Tensor, act: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``obs[:, -1]`` repeated for every step: ``[B,H,O]``."""
        return obs[:, -1:].expand(-1, actions.shape[1], -1)


LOG_COLUMNS = ["step", "epoch", "loss", "train/mse", "val/mse", "holdout/mse", "elapsed_s"]
"""log.csv of an ensemble run: gradient steps, epoch, training loss, then members' mean one-step MSE in
normalized target units on a fixed sample of training transitions, on the held-out episodes, and on the
early-stopping holdout (a share of the training transitions)."""


def pretrain_ensemble(cfg: EnsemblePretrainConfig) -> EnsemblePretrainResult:
    """Train an ensemble as ``cfg`` says and save the run into ``cfg.out`` (see the module docstring)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--model ensemble trains in one process; run it without torchrun")
    check_out_dir(cfg.out, resume=False, overwrite=cfg.overwrite, resumable=False)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    train_set, val_set = _split(cfg)
    meta, normalizer, with_reward = train_set.metadata, train_set.normalizer(), cfg.ensemble.predict_reward
    x_train, y_train = model_inputs(train_set, normalizer, predict_reward=with_reward)
    sample = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(cfg.seed))[:8192]
    fit_sample = x_train[sample].to(device), y_train[sample].to(device)
    held_out = None
    if val_set is not None:
        x_val, y_val = model_inputs(val_set, normalizer, predict_reward=with_reward)
        held_out = x_val.to(device), y_val.to(device)

    clear_outputs(cfg.out)
    log = RunLog(cfg.out, LOG_COLUMNS, tensorboard=cfg.tensorboard)
    started = time.perf_counter()

    def log_epoch(epoch: int, model: EnsembleMLP, history: EnsembleHistory) -> None:
        log.write({
            "step": history.steps, "epoch": epoch, "loss": history.train_loss[-1],
            "train/mse": float(holdout_mse(model, *fit_sample).mean()),
            "val/mse": None if held_out is None else float(holdout_mse(model, *held_out).mean()),
            "holdout/mse": float(np.mean(history.holdout_mse[-1])) if history.holdout_mse else None,
            "elapsed_s": time.perf_counter() - started,
        })  # fmt: skip

    try:
        model, history = train_ensemble(
            train_set, cfg.ensemble, normalizer, seed=cfg.seed, device=device, progress=cfg.progress,
            on_epoch=log_epoch,
        )  # fmt: skip
    finally:
        log.close()
    wall = time.perf_counter() - started
    val_mse = zero_mse = None
    if val_set is not None:
        models: dict[str, OpenLoopModel] = {
            "ensemble": EnsembleMLPDynamics(model, normalizer),
            "zero change": ZeroChangePredictor(),
        }
        scores = compare_open_loop(
            models, val_set, normalizer, horizon=cfg.eval_horizon, history=1, n_starts=cfg.eval_starts,
            seed=cfg.seed,
        )  # fmt: skip
        val_mse, zero_mse = scores["ensemble"].mse, scores["zero change"].mse
    from maskctrl.training.trainer import targets  # here: the trainer imports maskctrl.pretrain

    metadata = {
        "made_by": "maskctrl pretrain --model ensemble",
        "env_name": meta.get("env_name"),  # where MLPDynamics.from_checkpoint looks first
        "data_dirs": [str(path) for path in cfg.data],
        "dataset": {
            **{key: meta.get(key) for key in ("env_name", "gym_id", "observation_space", "action_space")},
            "train_episodes": train_set.n_episodes,
            "train_transitions": len(train_set),
            "val_episodes": 0 if val_set is None else val_set.n_episodes,
        },
        "config": config_to_json(cfg),
        "targets": targets(normalizer),
        "training": {k: v for k, v in dataclasses.asdict(history).items() if k != "holdout_mse"},
        "validation": None
        if val_mse is None
        else {"horizon": cfg.eval_horizon, "mse": val_mse, "zero_change_mse": zero_mse},
        "device": str(device),
        "wall_time_s": wall,
    }
    checkpoint = save_ensemble(cfg.out / CHECKPOINT_DIR, model, normalizer, metadata=metadata)
    plot_losses(log.path, cfg.out / PLOT_FILE, f"maskctrl pretrain --model ensemble: {meta.get('env_name')}")
    return EnsemblePretrainResult(
        checkpoint=checkpoint, history=history, val_mse=val_mse, zero_change_mse=zero_mse, wall_time_s=wall
    )


def _split(cfg: EnsemblePretrainConfig) -> tuple[TrajectoryDataset, TrajectoryDataset | None]:
    """The training episodes and the held-out ones (None if there are too few), as the transformer's split."""
    train_set = TrajectoryDataset(list(cfg.data), window=1, val_fraction=cfg.val_fraction, seed=cfg.seed)
    if train_set.metadata["action_space"].get("type") != "Box":
        raise ValueError(f"the ensemble needs Box actions, the data has {train_set.metadata['action_space']}")
    if cfg.val_fraction == 0:
        return train_set, None
    try:
        val_set = TrajectoryDataset(
            train_set.sources, window=1, split="val", val_fraction=cfg.val_fraction, seed=cfg.seed
        )
    except ValueError as err:  # too few episodes to hold any out
        tqdm.write(f"maskctrl pretrain: no validation ({err})")
        return train_set, None
    longest = max(ep.length for ep in episode_list(val_set))
    if longest < cfg.eval_horizon:
        raise ValueError(
            f"--eval-horizon {cfg.eval_horizon} exceeds the longest held-out episode ({longest} steps)"
        )
    return train_set, val_set
