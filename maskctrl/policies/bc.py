"""Behaviour cloning: fine-tune the backbone's policy head on expert episodes.

Windows of T steps (:class:`~maskctrl.data.dataset.TrajectoryDataset`, left-padded at episode starts) are
fed under the causal mask; the policy head read at every real observation token ``o_t`` learns ``a_t``
(MSE on actions scaled to [-1, 1], cross-entropy for discrete ones). The model starts from a pretrained
checkpoint (whose normalizer it keeps: the trunk learned in those units) or from scratch (statistics of
the data). ``freeze_trunk`` trains the policy head alone; ``freeze_blocks=n`` freezes the token
embeddings and the first n blocks. Heads other than the policy head never change.

Every ``val_every`` steps the policy runs in the env (:class:`TransformerPolicy` over a vector env, reset
seeds ``val_seed + i``) for its validation return, and the loss is measured on held-out episodes. A run
directory gets::

    OUT/checkpoint/   the policy (best validation return with keep_best), metadata saying how it was made
    OUT/log.csv       step, lr, train/loss, val/loss, val/return, elapsed_s
    OUT/bc.png        loss curves and validation return against the demonstrations' return
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from maskctrl.data.collect import Predictor, collect_episodes
from maskctrl.data.dataset import TrajectoryDataset
from maskctrl.devices import resolve_device
from maskctrl.models.checkpoint import load_checkpoint, read_config
from maskctrl.models.normalizer import Normalizer
from maskctrl.models.transformer import MaskedControlTransformer, TransformerConfig
from maskctrl.policies.transformer_policy import TransformerPolicy, bc_loss, freeze, space_from_description
from maskctrl.training import sampling
from maskctrl.training.logs import LOG_FILE, RunLog, read_log
from maskctrl.training.run_dir import CHECKPOINT_DIR, check_out_dir, clear_outputs, config_to_json
from maskctrl.training.trainer import normalized_batch, targets

PLOT = "bc.png"
"""The result plot inside the run directory."""
DEFAULT_WINDOW = 16
"""Window T of a model trained from scratch when ``window`` is not given."""
COLUMNS = ["step", "lr", "train/loss", "val/loss", "val/return", "elapsed_s"]
"""Header of ``log.csv``."""


@dataclass(frozen=True, kw_only=True)
class BCConfig:
    """Options of ``maskctrl bc`` (one source of truth for every default)."""

    data: tuple[Path, ...]
    """Expert dataset directories from ``maskctrl collect`` (one or several, all for the same env)."""
    out: Path
    """Run directory for checkpoint/, log.csv and bc.png; must be empty unless --overwrite."""
    checkpoint: Path | None = None
    """Pretrained checkpoint to fine-tune (None: train from scratch with the sizes below)."""
    freeze_trunk: bool = False
    """Train the policy head alone (embeddings, blocks and final norm stay as loaded)."""
    freeze_blocks: int = 0
    """Freeze the token embeddings and the first n blocks."""
    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 64
    """Windows per step."""
    lr: float = 3e-4
    """Peak learning rate (AdamW); linear warm-up, then cosine decay to a tenth."""
    warmup_steps: int = 100
    """Steps of linear warm-up."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this (0: no clipping)."""
    window: int | None = None
    """Steps T per window, also the policy's history K (None: the checkpoint's context_len, 16 from scratch)."""
    n_layer: int = 4
    """From scratch: transformer blocks (ignored with --checkpoint)."""
    n_head: int = 4
    """From scratch: attention heads (ignored with --checkpoint)."""
    d_model: int = 128
    """From scratch: token width D (ignored with --checkpoint)."""
    mlp_ratio: int = 4
    """From scratch: MLP width as a multiple of D (ignored with --checkpoint)."""
    dropout: float = 0.1
    """From scratch: dropout (ignored with --checkpoint, which keeps its own)."""
    val_fraction: float = 0.1
    """Share of each dataset's episodes held out for the validation loss (none with a single episode)."""
    val_every: int = 250
    """Validate (loss and return) every this many steps and at the end (0: never)."""
    val_episodes: int = 5
    """Episodes run in the env for the validation return (0: no validation return)."""
    val_seed: int = 10_000
    """Reset seed of the first validation episode (episode i: val_seed + i), apart from the data's seeds."""
    val_max_steps: int | None = None
    """Cap on validation episodes (None: the data's episode limit)."""
    keep_best: bool = True
    """Save the weights of the best validation (return; loss without --val-episodes), else the final ones."""
    log_every: int = 50
    """Write a log row (train loss averaged since the previous row) every this many steps."""
    seed: int = 0
    """Seed of the initial weights, the split, the batches and dropout."""
    device: str = "auto"
    """'auto' (GPU if available), 'cpu', 'cuda', ..."""
    num_threads: int = 0
    """CPU threads torch may use (0: torch's default)."""
    overwrite: bool = False
    """Replace a previous run's outputs in --out."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("freeze_blocks", "warmup_steps", "val_every", "val_episodes", "num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not self.data:
            raise ValueError("--data needs at least one dataset directory")
        if self.freeze_trunk and self.freeze_blocks:
            raise ValueError("--freeze-trunk already freezes every block; drop --freeze-blocks")
        if self.lr <= 0 or self.val_seed < 0 or (self.window is not None and self.window < 1):
            raise ValueError(
                f"need lr > 0, val_seed >= 0, window >= 1; got {self.lr}, {self.val_seed}, {self.window}"
            )


@dataclass(frozen=True, kw_only=True)
class BCResult:
    """What a run produced."""

    checkpoint: Path
    """The saved policy checkpoint directory."""
    steps: int
    """Steps trained."""
    saved_step: int
    """Step whose weights were saved (the best validation return with keep_best)."""
    train_loss: float
    """Train loss of the last log row."""
    val_loss: float | None
    """Validation loss at the saved step (None without held-out episodes)."""
    val_return: float | None
    """Mean validation return at the saved step (None without validation episodes)."""
    data_return: float
    """Mean return of the demonstrations (all episodes of the data)."""
    wall_time_s: float
    """Wall-clock time of the run."""


def episode_returns(
    policy: Predictor, env_name: str, *, episodes: int, seed: int, max_steps: int | None = None
) -> list[float]:
    """Returns of ``episodes`` episodes of ``policy`` run side by side in a vector env (reset seeds ``seed + i``)."""
    data = collect_episodes(
        env_name, policy, n_episodes=episodes, n_envs=episodes, seed=seed, max_steps=max_steps, progress=False
    )
    return [float(r) for r in data.returns()]


@dataclass
class _Setup:
    """Everything a run trains with."""

    model: MaskedControlTransformer
    normalizer: Normalizer
    train_set: TrajectoryDataset
    val_set: TrajectoryDataset | None
    policy: TransformerPolicy
    base: dict[str, Any]


def _setup(cfg: BCConfig, device: torch.device) -> _Setup:
    """Load data and model; refuse a checkpoint whose env does not fit the data."""
    window = cfg.window
    if cfg.checkpoint is not None:
        context_len = int(read_config(cfg.checkpoint)["model"]["context_len"])
        window = window or context_len
        if window > context_len:
            raise ValueError(f"--window {window} exceeds the checkpoint's context_len {context_len}")
    window = window or DEFAULT_WINDOW
    split: dict[str, Any] = {"window": window, "val_fraction": cfg.val_fraction, "seed": cfg.seed}
    train_set = TrajectoryDataset(list(cfg.data), split="train", **split)
    val_set = None
    if cfg.val_fraction > 0:
        try:
            val_set = TrajectoryDataset(train_set.sources, split="val", **split)
        except ValueError:  # a single episode: nothing to hold out
            val_set = None
    meta = train_set.metadata
    obs_space = space_from_description(meta["observation_space"])
    act_space = space_from_description(meta["action_space"])
    normalizer: Normalizer | None = None
    base: dict[str, Any] = {"init": "scratch"}
    if cfg.checkpoint is not None:
        data_env = SimpleNamespace(observation_space=obs_space, action_space=act_space)
        ckpt = load_checkpoint(cfg.checkpoint, device=device, env=data_env, env_name=str(meta["env_name"]))
        model, normalizer = ckpt.model, ckpt.normalizer
        base = {
            "init": "pretrained",
            "checkpoint": str(cfg.checkpoint),
            "step": ckpt.step,
            "made_by": ckpt.metadata.get("made_by"),
            "normalizer": "checkpoint" if normalizer is not None else "fitted to the BC data",
        }
    else:
        model_config = TransformerConfig(
            obs_dim=train_set.obs_dim, act_dim=train_set.act_dim, context_len=window, n_layer=cfg.n_layer,
            n_head=cfg.n_head, d_model=cfg.d_model, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout,
        )  # fmt: skip
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sampling.derive_seed(cfg.seed, sampling.INIT))
            model = MaskedControlTransformer(model_config)
    normalizer = (normalizer or train_set.normalizer()).to(device)
    model.to(device)
    policy = TransformerPolicy(
        model, normalizer, act_space, observation_space=obs_space, history_len=window, device=device
    )
    return _Setup(model, normalizer, train_set, val_set, policy, base)


def train_bc(cfg: BCConfig) -> BCResult:
    """Train a BC policy as ``cfg`` says and save it under ``cfg.out`` (see the module docstring).

    :raises FileNotFoundError: a dataset directory is missing.
    :raises CheckpointError: the checkpoint is missing, corrupt, or does not fit the data's env.
    :raises FileExistsError: ``cfg.out`` holds files and ``overwrite`` is not set.
    """
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    check_out_dir(cfg.out, resume=False, overwrite=cfg.overwrite, resumable=False)
    run = _setup(cfg, device)
    model, normalizer, train_set, val_set = run.model, run.normalizer, run.train_set, run.val_set
    meta, env_name = train_set.metadata, str(train_set.metadata["env_name"])
    trainable = freeze(model, freeze_trunk=cfg.freeze_trunk, freeze_blocks=cfg.freeze_blocks)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    scheduler = _scheduler(optimizer, cfg)
    data_return = float(np.concatenate([src.returns() for src in train_set.sources]).mean())
    clear_outputs(cfg.out)
    (cfg.out / PLOT).unlink(missing_ok=True)
    log = RunLog(cfg.out, COLUMNS, tensorboard=False)

    def validate() -> tuple[float | None, float | None]:
        loss = None if val_set is None else _dataset_loss(model, val_set, normalizer, device, cfg.batch_size)
        if cfg.val_episodes == 0:
            return loss, None
        returns = episode_returns(
            run.policy, env_name, episodes=cfg.val_episodes, seed=cfg.val_seed,
            max_steps=cfg.val_max_steps or meta.get("max_episode_steps"),
        )  # fmt: skip
        return loss, float(np.mean(returns))

    sampler = sampling.EpochSampler(len(train_set), cfg.batch_size, cfg.seed)
    best = _Best(by_return=cfg.val_episodes > 0)
    started, counted, train_loss = time.perf_counter(), 0, float("nan")
    running = torch.zeros((), device=device)  # summed on the device: no sync per step
    bar = tqdm(total=cfg.steps, desc=f"bc {env_name}", disable=not cfg.progress or None)
    model.train()
    for step in range(cfg.steps):
        lr = optimizer.param_groups[0]["lr"]
        batch = normalized_batch(train_set.get_batch(sampler.indices(step)), normalizer, device)
        if model.config.dropout > 0:
            torch.manual_seed(sampling.derive_seed(cfg.seed, sampling.DROPOUT, step))
        loss = bc_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        running, counted, done = running + loss.detach(), counted + 1, step + 1
        bar.update(1)
        is_val = cfg.val_every > 0 and (done % cfg.val_every == 0 or done == cfg.steps)
        if done % cfg.log_every == 0 or done == cfg.steps or is_val:
            train_loss, counted = float(running) / counted, 0
            running.zero_()
            row: dict[str, float | int | None] = {"step": done, "lr": lr, "train/loss": train_loss}
            if is_val:
                val_loss, val_ret = validate()
                row.update({"val/loss": val_loss, "val/return": val_ret})
                best.offer(done, val_loss, val_ret, model, cfg.keep_best)
                shown = "-" if val_ret is None else f"{val_ret:.1f}"
                bar.set_postfix(loss=f"{train_loss:.4f}", val_return=shown)
            row["elapsed_s"] = time.perf_counter() - started
            log.write(row)
    bar.close()
    log.close()
    wall = time.perf_counter() - started
    saved_step, (val_loss, val_return) = cfg.steps, best.last
    if cfg.keep_best and best.state is not None:
        model.load_state_dict(best.state)
        saved_step, val_loss, val_return = best.step, best.loss, best.ret
    n_val = 0 if val_set is None else val_set.n_episodes
    dataset = {key: meta.get(key) for key in ("env_name", "gym_id", "policy")}
    dataset.update(train_episodes=train_set.n_episodes, val_episodes=n_val, return_mean=data_return)
    metadata = {
        "made_by": "maskctrl bc", "base": run.base, "data_dirs": [str(path) for path in cfg.data],
        "dataset": dataset, "config": config_to_json(cfg), "targets": targets(normalizer),
        "trainable": trainable, "steps": cfg.steps, "saved_step": saved_step, "train_loss": train_loss,
        "val_loss": val_loss, "val_return": val_return, "wall_time_s": wall,
    }  # fmt: skip
    path = run.policy.save(cfg.out / CHECKPOINT_DIR, env_name=env_name, step=saved_step, metadata=metadata)
    plot_bc(cfg.out / LOG_FILE, cfg.out / PLOT, f"maskctrl bc: {env_name} ({run.base['init']})", data_return)
    return BCResult(
        checkpoint=path, steps=cfg.steps, saved_step=saved_step, train_loss=train_loss, val_loss=val_loss,
        val_return=val_return, data_return=data_return, wall_time_s=wall,
    )  # fmt: skip


class _Best:
    """The best validation so far (highest return, or lowest loss without returns) and the latest one."""

    def __init__(self, *, by_return: bool) -> None:
        self.by_return, self.step = by_return, 0
        self.state: dict[str, Any] | None = None  # the best weights, if kept
        self.loss: float | None = None
        self.ret: float | None = None
        self.last: tuple[float | None, float | None] = (None, None)

    def offer(
        self, step: int, loss: float | None, ret: float | None, model: torch.nn.Module, keep: bool
    ) -> None:
        """Record a validation at ``step``; copy the weights if it is the best so far (and ``keep``)."""
        self.last = (loss, ret)
        score, best = (ret, self.ret) if self.by_return else (_neg(loss), _neg(self.loss))
        if score is not None and (best is None or score > best):
            self.step, self.loss, self.ret = step, loss, ret
            self.state = copy.deepcopy(model.state_dict()) if keep else None


def _neg(value: float | None) -> float | None:
    return None if value is None else -value


def _scheduler(optimizer: torch.optim.Optimizer, cfg: BCConfig) -> torch.optim.lr_scheduler.LRScheduler:
    decay_steps = max(1, cfg.steps - cfg.warmup_steps)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=decay_steps, eta_min=0.1 * cfg.lr)
    if cfg.warmup_steps == 0:
        return cosine
    warmup = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=1.0 / cfg.warmup_steps, total_iters=cfg.warmup_steps
    )
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[cfg.warmup_steps])


@torch.no_grad()
def _dataset_loss(
    model: MaskedControlTransformer,
    dataset: TrajectoryDataset,
    normalizer: Normalizer,
    device: torch.device,
    batch_size: int,
) -> float:
    """:func:`bc_loss` over every window of ``dataset``, weighted by real steps."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(dataset), 4 * batch_size):
        indices = torch.arange(start, min(start + 4 * batch_size, len(dataset)))
        batch = normalized_batch(dataset.get_batch(indices), normalizer, device)
        steps = int(batch.valid.sum())
        total += float(bc_loss(model, batch)) * steps
        count += steps
    model.train(was_training)
    return total / max(count, 1)


def plot_bc(log: Path, out: Path, title: str, data_return: float | None = None) -> Path:
    """Plot train/validation loss (log scale) and validation return (demonstrations' return dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log)

    def points(key: str) -> tuple[list[int], list[float]]:
        kept = [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]
        return [s for s, _ in kept], [v for _, v in kept]

    fig, (ax_loss, ax_ret) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(*points("train/loss"), label="train")
    ax_loss.plot(*points("val/loss"), "o--", markersize=4, label="validation")
    losses = points("train/loss")[1] + points("val/loss")[1]
    if losses and min(losses) > 0:
        ax_loss.set_yscale("log")
    ax_loss.set(xlabel="step", ylabel="BC loss", title="loss")
    ax_loss.legend(fontsize="small")
    ax_ret.plot(*points("val/return"), "o-", markersize=4, color="tab:green", label="BC policy")
    if data_return is not None:
        ax_ret.axhline(data_return, color="tab:red", linestyle="--", linewidth=1, label="demonstrations")
    ax_ret.set(xlabel="step", ylabel="episode return", title="validation return")
    ax_ret.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
