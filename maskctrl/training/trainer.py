"""The pretraining loop behind :func:`maskctrl.pretrain.pretrain` (see that module for the run layout)."""

from __future__ import annotations

import inspect
import math
import time
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from maskctrl.data.dataset import TrajectoryDataset
from maskctrl.devices import to_device
from maskctrl.models.checkpoint import EnvInfo, load_checkpoint, load_trainer_state, save_checkpoint
from maskctrl.models.normalizer import Normalizer
from maskctrl.models.objectives import LossOutput, MaskDraw, WindowBatch, draw_masks
from maskctrl.models.transformer import MaskedControlTransformer, TransformerConfig
from maskctrl.pretrain import PretrainConfig, PretrainResult
from maskctrl.training import distributed, sampling
from maskctrl.training.logs import PLOT_FILE, RunLog, log_columns, plot_losses
from maskctrl.training.objective import PretrainingObjective
from maskctrl.training.run_dir import CHECKPOINT_DIR, check_resume_config, clear_outputs, config_to_json


def lr_factor(step: int, cfg: PretrainConfig) -> float:
    """Learning-rate multiplier of 0-based ``step``: linear warm-up, then cosine decay to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def normalized_batch(
    raw: dict[str, torch.Tensor], normalizer: Normalizer, device: torch.device
) -> WindowBatch:
    """Windows from :meth:`TrajectoryDataset.get_batch` on ``device`` in the model's units (padding zeroed)."""
    obs, next_obs = to_device(raw["obs"], device), to_device(raw["next_obs"], device)  # [B, T, O]
    valid = to_device(raw["valid"], device)  # [B, T]
    pad = ~valid.unsqueeze(-1)
    return WindowBatch(
        obs=normalizer.normalize_obs(obs).masked_fill(pad, 0.0),
        act=normalizer.normalize_action(to_device(raw["act"], device)).masked_fill(pad, 0.0),
        rew=normalizer.normalize_reward(to_device(raw["rew"], device)).masked_fill(~valid, 0.0),
        next_obs=normalizer.normalize_obs(next_obs).masked_fill(pad, 0.0),
        valid=valid,
        delta=normalizer.normalize_delta(next_obs - obs).masked_fill(pad, 0.0),
    )


def targets(normalizer: Normalizer) -> dict[str, str]:
    """The units the heads were trained in (for ``metadata["targets"]``)."""
    return {
        "obs": "normalized",
        "delta": "normalized_delta",
        "reward": "normalized",
        "actions": "raw" if normalizer.act_low is None else "scaled_-1_1",
    }


class Trainer:
    """One process's part of a pretraining run: data, model, optimizer and the loop.

    :param cfg: the run's options.
    :param procs: this process's place in the run (see :func:`maskctrl.training.distributed.start`).
    """

    def __init__(self, cfg: PretrainConfig, procs: distributed.Processes) -> None:
        self.cfg, self.procs = cfg, procs
        self.device = procs.device
        self.train_set = TrajectoryDataset(
            list(cfg.data), window=cfg.window, split="train", val_fraction=cfg.val_fraction, seed=cfg.seed
        )
        meta = self.train_set.metadata
        if meta["action_space"].get("type") != "Box":
            raise ValueError(f"pretraining needs Box actions, the data has {meta['action_space']}")
        self.val_set = self._val_set()
        self.config_json = config_to_json(cfg)
        self.checkpoint_path = cfg.out / CHECKPOINT_DIR
        self.env_info = EnvInfo(
            name=meta.get("env_name"),
            observation_space=meta["observation_space"],
            action_space=meta["action_space"],
        )
        model_config = TransformerConfig(
            obs_dim=self.train_set.obs_dim, act_dim=self.train_set.act_dim, context_len=cfg.window,
            n_layer=cfg.n_layer, n_head=cfg.n_head, d_model=cfg.d_model, mlp_ratio=cfg.mlp_ratio,
            dropout=cfg.dropout, mask_fill=cfg.mask_fill, rotary=cfg.rotary,
        )  # fmt: skip
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sampling.derive_seed(cfg.seed, sampling.INIT))
            self.model = MaskedControlTransformer(model_config)
        self.objective = PretrainingObjective(self.model, cfg.weights).to(self.device)
        if cfg.compile:  # in place: the objective calls the compiled forward, state_dict keys unchanged
            self.model.compile()
        self.terms = tuple(cfg.weights.terms)
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95)
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(step, cfg))
        self.start_step, self.wall_before = 0, 0.0
        self.saved_metadata: dict[str, Any] = {}
        self.normalizer = self.train_set.normalizer()
        if cfg.resume:
            self._restore()
        self.normalizer = self.normalizer.to(self.device)
        self.ddp: torch.nn.Module = self.objective
        if procs.distributed:
            self.ddp = _wrap_ddp(self.objective)
        self.autocast = cfg.bf16 and self.device.type == "cuda"
        self.sampler = sampling.EpochSampler(len(self.train_set), cfg.batch_size, cfg.seed)
        self.part = sampling.shard(cfg.batch_size, procs.rank, procs.world_size)

    def _val_set(self) -> TrajectoryDataset | None:
        cfg = self.cfg
        if cfg.val_every == 0 or cfg.val_fraction == 0:
            return None
        try:
            return TrajectoryDataset(
                self.train_set.sources,
                window=cfg.window,
                split="val",
                val_fraction=cfg.val_fraction,
                seed=cfg.seed,
            )
        except ValueError as err:  # too few episodes to hold any out
            if self.procs.is_main:
                tqdm.write(f"maskctrl pretrain: no validation ({err})")
            return None

    def _restore(self) -> None:
        saved = load_checkpoint(self.checkpoint_path)
        check_resume_config(saved.metadata.get("config", {}), self.config_json, self.cfg.out)
        state = load_trainer_state(self.checkpoint_path)
        self.model.load_state_dict(saved.model.state_dict())
        self.saved_metadata = saved.metadata
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
            group["lr"] = base * lr_factor(self.scheduler.last_epoch, self.cfg)  # --steps may have changed
        self.start_step, self.wall_before = int(state["step"]), float(state["wall_time_s"])
        if saved.normalizer is not None:
            self.normalizer = saved.normalizer

    # --- one step -----------------------------------------------------------------------------------

    def _share(
        self, dataset: TrajectoryDataset, indices: torch.Tensor, draw: MaskDraw
    ) -> tuple[WindowBatch, MaskDraw]:
        """This process's rows of a global batch: windows and their rows of the global mask draw, sent to
        the device without waiting for it (the step then queues its work with no host sync)."""
        batch = normalized_batch(dataset.get_batch(indices[self.part]), self.normalizer, self.device)
        return batch, draw.rows(self.part).to(self.device)

    def _step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        draw = draw_masks(
            cfg.batch_size, cfg.window, cfg.weights, sampling.generator(cfg.seed, sampling.MASKS, step)
        )
        batch, draw = self._share(self.train_set, self.sampler.indices(step), draw)
        if cfg.dropout > 0:
            torch.manual_seed(sampling.derive_seed(cfg.seed, sampling.DROPOUT, step, self.procs.rank))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            sums, counts = self.ddp(batch, draw)
        counts = self.procs.sum(counts)
        # DDP averages the processes' gradients: scaled by the world size, that is the global mean's.
        total = self.procs.world_size * LossOutput.from_sums(sums, counts, cfg.weights).total
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return sums.detach(), counts

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Each loss over the fixed validation windows and masks, pooled over all validation batches."""
        assert self.val_set is not None
        cfg = self.cfg
        size = cfg.val_batches * cfg.batch_size
        perm = torch.randperm(len(self.val_set), generator=sampling.generator(cfg.seed, sampling.VAL_BATCHES))
        windows = perm[torch.arange(size) % len(perm)].view(cfg.val_batches, cfg.batch_size)  # [V, B]
        sums = torch.zeros(len(self.terms), device=self.device)
        counts = torch.zeros(len(self.terms), device=self.device)
        self.model.eval()
        for index in range(cfg.val_batches):
            gen = sampling.generator(cfg.seed, sampling.VAL_MASKS, index)
            draw = draw_masks(cfg.batch_size, cfg.window, cfg.weights, gen)
            batch, draw = self._share(self.val_set, windows[index], draw)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                batch_sums, batch_counts = self.objective(batch, draw)
            sums += batch_sums
            counts += batch_counts
        self.model.train()
        return self._means(self.procs.sum(sums), self.procs.sum(counts))

    def _means(self, sums: torch.Tensor, counts: torch.Tensor) -> dict[str, float]:
        values = (sums / counts.clamp_min(1)).tolist()
        means = dict(zip(self.terms, values, strict=True))
        means["total"] = sum(w * v for w, v in zip(self.cfg.weights.terms.values(), values, strict=True))
        return means

    # --- the loop -----------------------------------------------------------------------------------

    def train(self) -> PretrainResult:
        """Run the steps from the start (or the resumed step) to ``cfg.steps`` and save the result."""
        cfg, main = self.cfg, self.procs.is_main
        last = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
        if self.start_step >= last:  # resumed a run that already got this far
            if main:
                tqdm.write(
                    f"maskctrl pretrain: {cfg.out} is already at step {self.start_step}; nothing to do"
                )
            return PretrainResult(
                checkpoint=self.checkpoint_path, step=self.start_step,
                train_losses=self.saved_metadata.get("train_losses") or {},
                val_losses=self.saved_metadata.get("val_losses"), wall_time_s=self.wall_before,
            )  # fmt: skip
        log = None
        if main:
            if not cfg.resume:
                clear_outputs(cfg.out)
            log = RunLog(
                cfg.out,
                log_columns(self.terms),
                resume_step=self.start_step if cfg.resume else None,
                tensorboard=cfg.tensorboard,
            )
        self.procs.barrier()
        sums = torch.zeros(len(self.terms), device=self.device)
        counts = torch.zeros_like(sums)
        train_losses: dict[str, float] = {}
        val_losses: dict[str, float] | None = None
        started = time.perf_counter()
        mark, busy, since = time.perf_counter(), 0.0, 0  # speed excludes validation and checkpoint time
        bar = tqdm(
            total=cfg.steps,
            initial=self.start_step,
            desc="pretraining",
            disable=not (main and cfg.progress) or None,
        )
        self.model.train()
        for step in range(self.start_step, last):
            lr = self.optimizer.param_groups[0]["lr"]
            step_sums, step_counts = self._step(step)
            sums += step_sums
            counts += step_counts
            done, since = step + 1, since + 1
            bar.update(1)
            is_val = self.val_set is not None and (done % cfg.val_every == 0 or done == cfg.steps)
            if done % cfg.log_every == 0 or done == last or is_val:
                train_losses = self._means(self.procs.sum(sums), counts)
                sums.zero_()
                counts.zero_()
                seconds = time.perf_counter() - mark - busy
                speed = since * cfg.batch_size * 2 * cfg.window / max(seconds, 1e-9)
                mark, busy, since = time.perf_counter(), 0.0, 0
                tic = time.perf_counter()
                row: dict[str, float | int | None] = {"step": done, "lr": lr, "tokens_per_s": speed}
                row.update({f"train/{k}": v for k, v in train_losses.items()})
                if is_val:
                    val_losses = self.validate()
                    row.update({f"val/{k}": v for k, v in val_losses.items()})
                row["elapsed_s"] = self.wall_before + time.perf_counter() - started
                if log is not None:
                    log.write(row)
                    bar.set_postfix(loss=f"{train_losses['total']:.4f}", refresh=False)
                busy += time.perf_counter() - tic
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                tic = time.perf_counter()
                self._save(done, self.wall_before + time.perf_counter() - started, train_losses, val_losses)
                busy += time.perf_counter() - tic
        bar.close()
        wall = self.wall_before + time.perf_counter() - started
        finished = last == cfg.steps
        if finished and last > self.start_step:
            self._save(last, wall, train_losses, val_losses)
        if log is not None:
            log.close()
            if finished:
                plot_losses(log.path, cfg.out / PLOT_FILE, f"maskctrl pretrain: {self.env_info.name}")
        self.procs.barrier()
        return PretrainResult(
            checkpoint=self.checkpoint_path, step=last, train_losses=train_losses,
            val_losses=val_losses, wall_time_s=wall,
        )  # fmt: skip

    def _save(
        self, step: int, wall: float, train_losses: dict[str, float], val_losses: dict[str, float] | None
    ) -> None:
        if not self.procs.is_main:
            return
        cfg = self.cfg
        metadata: dict[str, Any] = {
            "made_by": "maskctrl pretrain",
            "data_dirs": [str(path) for path in cfg.data],
            "dataset": {
                "env_name": self.train_set.metadata.get("env_name"),
                "gym_id": self.train_set.metadata.get("gym_id"),
                "train_episodes": self.train_set.n_episodes,
                "train_windows": len(self.train_set),
                "val_episodes": 0 if self.val_set is None else self.val_set.n_episodes,
            },
            "config": self.config_json,
            "targets": targets(self.normalizer),
            "steps": step,
            "finished": step == cfg.steps,
            "world_size": self.procs.world_size,
            "wall_time_s": wall,
            "train_losses": train_losses,
            "val_losses": val_losses,
        }
        trainer_state = {
            "step": step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "wall_time_s": wall,
            # Batches, masks and dropout are functions of (seed, step[, rank]): no generator state to keep.
            "seed": cfg.seed,
        }
        save_checkpoint(
            self.checkpoint_path, self.model, normalizer=self.normalizer, env=self.env_info, step=step,
            metadata=metadata, trainer_state=trainer_state,
        )  # fmt: skip


def _wrap_ddp(objective: PretrainingObjective) -> DistributedDataParallel:
    """DDP over the objective: frozen heads need no ``find_unused_parameters``, and the only buffers
    (rotary tables) are equal everywhere, so they are not re-broadcast at every forward."""
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    sync = (
        {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    )
    return DistributedDataParallel(objective, device_ids=None, **sync)  # type: ignore[arg-type]


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices and embeddings, none on biases and norms; frozen parameters left out."""
    trainable = [param for param in model.parameters() if param.requires_grad]
    return [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]
