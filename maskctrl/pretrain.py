"""Pretrain the masked control transformer on collected episodes, in one process or under ``torchrun``.

One optimizer step draws a global batch of windows and per-sample objective masks as pure functions of
``(seed, step)`` (:mod:`maskctrl.training.sampling`); each process trains on its contiguous share, and the
losses are normalised by global position counts (:mod:`maskctrl.training.objective`), so a run with two
processes follows the single-process run with the same global batch up to float rounding, and a resumed
run repeats an uninterrupted one exactly. Rank 0 alone writes the run directory::

    OUT/checkpoint/   model.safetensors, config.json (normalizer, env, metadata), trainer_state.pt
    OUT/log.csv       step, lr, each train and validation loss, tokens/s
    OUT/losses.png    the loss curves (written at the end)
    OUT/tensorboard/  the same scalars, if the tensorboard package is installed

``maskctrl pretrain --model ensemble`` trains the PETS-style MLP ensemble baseline instead, on the same
data, split and normalizer (:class:`EnsemblePretrainConfig`, run by
:func:`maskctrl.models.ensemble_training.pretrain_ensemble`), into the same run layout.

The model learns in normalized units, recorded in the checkpoint's ``metadata["targets"]``: observations
standardized (``normalize_obs``), the forward head predicts standardized deltas ``normalize_delta(o' - o)``,
rewards standardized (``normalize_reward``), actions scaled from the action box to [-1, 1]
(``normalize_action``). The inverse methods of the saved :class:`~maskctrl.models.normalizer.Normalizer`
convert predictions back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, overload

import torch

from maskctrl.models.ensemble import EnsembleConfig
from maskctrl.models.objectives import ObjectiveWeights
from maskctrl.training import distributed
from maskctrl.training.run_dir import check_out_dir

if TYPE_CHECKING:  # only a type: ensemble_training imports this module
    from maskctrl.models.ensemble_training import EnsembleHistory

Model = Literal["transformer", "ensemble"]
"""What ``maskctrl pretrain --model`` trains: the masked control transformer or the MLP ensemble baseline."""


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """Options of ``maskctrl pretrain`` (one source of truth for every default)."""

    data: tuple[Path, ...]
    """Dataset directories written by ``maskctrl collect`` (one or several, all for the same env)."""
    out: Path
    """Run directory for the checkpoint, log.csv and losses.png; must be empty unless --overwrite/--resume."""
    steps: int = 10_000
    """Optimizer steps."""
    batch_size: int = 256
    """Global batch size: windows per step summed over all processes."""
    lr: float = 3e-4
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = 0.1
    """Final learning rate of the cosine decay, as a fraction of the peak."""
    warmup_steps: int = 200
    """Steps of linear warm-up before the cosine decay."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices and embeddings (not on biases and LayerNorm gains)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: no clipping)."""
    window: int = 16
    """Steps T per training window (also the model's context length)."""
    n_layer: int = 4
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads per block."""
    d_model: int = 128
    """Token width D."""
    mlp_ratio: int = 4
    """MLP hidden width as a multiple of D."""
    dropout: float = 0.0
    """Dropout in the transformer (re-seeded from (seed, step, rank) every step when > 0)."""
    mask_fill: Literal["learned", "constant"] = "learned"
    """Hidden tokens: 'learned' [MASK] embeddings or 'constant' fill."""
    rotary: bool = True
    """Rotary position embeddings on queries and keys."""
    weights: ObjectiveWeights = field(default_factory=ObjectiveWeights)
    """Loss weights and masking ratios of the pretraining objectives."""
    val_fraction: float = 0.1
    """Share of each dataset's episodes held out for validation."""
    val_every: int = 500
    """Validate every this many steps, and at the end (0: never)."""
    val_batches: int = 4
    """Global batches of fixed validation windows (with fixed masks) per validation."""
    log_every: int = 10
    """Write a log row (losses averaged since the previous row) every this many steps."""
    checkpoint_every: int = 1000
    """Save a resumable checkpoint every this many steps (0: only at the end)."""
    seed: int = 0
    """Seed of the initial weights, the data split, the batches and the masks."""
    device: str = "auto"
    """'auto' (this process's GPU if CUDA is available, else CPU), 'cpu', 'cuda', 'cuda:1', ..."""
    bf16: bool = True
    """bfloat16 autocast on GPU (ignored on CPU)."""
    compile: bool = False
    """Run the transformer's forward and backward compiled by ``torch.compile`` (fused kernels). Small
    models on a GPU are bound by kernel launches, not arithmetic, which fusing cuts; the first steps
    compile (tens of seconds); checkpoints are saved as without it. Needs a C++ compiler on a CPU."""
    num_threads: int = 0
    """CPU threads torch may use per process (0: torch's default)."""
    overwrite: bool = False
    """Replace a previous run's outputs in --out."""
    resume: bool = False
    """Continue the run in --out from its last checkpoint."""
    progress: bool = True
    """Show a progress bar (rank 0)."""
    tensorboard: bool = True
    """Also write TensorBoard scalars when the tensorboard package is installed."""
    stop_after: int | None = None
    """Stop after this step without a final checkpoint, as an interrupted run would (tests --resume)."""

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "window", "val_batches", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "val_every", "checkpoint_every", "num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not self.data:
            raise ValueError("--data needs at least one dataset directory")
        if self.lr <= 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"need lr > 0 and min_lr_ratio in [0, 1], got {self.lr} and {self.min_lr_ratio}")


@dataclass(frozen=True, kw_only=True)
class PretrainResult:
    """What a run produced (the same on every process)."""

    checkpoint: Path
    """The checkpoint directory (final, or the last periodic one after ``stop_after``)."""
    step: int
    """Steps trained in total."""
    train_losses: dict[str, float]
    """Train losses of the last log row."""
    val_losses: dict[str, float] | None
    """Losses of the last validation (None without validation)."""
    wall_time_s: float
    """Training time over all sessions of the run (resumes add up)."""


@dataclass(frozen=True, kw_only=True)
class EnsemblePretrainConfig:
    """Options of ``maskctrl pretrain --model ensemble``: the data, the run directory and the ensemble."""

    data: tuple[Path, ...]
    """Dataset directories written by ``maskctrl collect`` (one or several, all for the same env)."""
    out: Path
    """Run directory for checkpoint/, log.csv and losses.png; must be empty unless --overwrite."""
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    """Architecture and training of the ensemble (members, hidden width, layers, epochs, lr, ...)."""
    val_fraction: float = 0.1
    """Share of each dataset's episodes held out (the transformer's split for the same seed)."""
    eval_horizon: int = 10
    """Steps of the open-loop error on the held-out episodes reported at the end (1: one-step only)."""
    eval_starts: int = 1000
    """Held-out start points of that evaluation."""
    seed: int = 0
    """Seed of the data split, the initial weights, the resamples and the evaluation's start points."""
    device: str = "auto"
    """'auto' (a GPU if CUDA is available, else CPU), 'cpu', 'cuda', 'cuda:1', ..."""
    num_threads: int = 0
    """CPU threads torch may use (0: torch's default)."""
    overwrite: bool = False
    """Replace a previous run's outputs in --out."""
    progress: bool = True
    """Show a progress bar over epochs."""
    tensorboard: bool = True
    """Also write TensorBoard scalars when the tensorboard package is installed."""

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("--data needs at least one dataset directory")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must lie in [0, 1), got {self.val_fraction}")
        if self.eval_horizon < 1 or self.eval_starts < 1 or self.num_threads < 0:
            raise ValueError("need --eval-horizon >= 1, --eval-starts >= 1 and --num-threads >= 0")


@dataclass(frozen=True, kw_only=True)
class EnsemblePretrainResult:
    """What ``maskctrl pretrain --model ensemble`` produced."""

    checkpoint: Path
    """The ensemble's directory (load it with :func:`~maskctrl.models.ensemble.load_ensemble`)."""
    history: EnsembleHistory
    """Epoch by epoch record of the training."""
    val_mse: list[float] | None
    """Open-loop MSE on held-out episodes at steps 1..H, standardized obs units (None: no held-out episodes)."""
    zero_change_mse: list[float] | None
    """The same for predicting no change (``o_{t+k} = o_t``) from the same start points."""
    wall_time_s: float
    """Seconds of training (evaluation and saving excluded)."""


@overload
def pretrain(cfg: PretrainConfig) -> PretrainResult: ...
@overload
def pretrain(cfg: EnsemblePretrainConfig) -> EnsemblePretrainResult: ...
def pretrain(cfg: PretrainConfig | EnsemblePretrainConfig) -> PretrainResult | EnsemblePretrainResult:
    """Train as ``cfg`` says and save the result: the transformer for a :class:`PretrainConfig` (joining
    the ``torchrun`` process group if there is one), the MLP ensemble for an :class:`EnsemblePretrainConfig`.
    """
    if isinstance(cfg, EnsemblePretrainConfig):
        from maskctrl.models.ensemble_training import pretrain_ensemble  # it imports this module

        return pretrain_ensemble(cfg)
    from maskctrl.training.trainer import Trainer  # here: the trainer module imports this one

    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    procs = distributed.start(cfg.device)
    try:
        # Rank 0 alone writes the run directory, so it alone checks it (reading a checkpoint may also
        # repair an interrupted save, which must happen once); the others wait and then read it.
        if procs.is_main:
            check_out_dir(cfg.out, resume=cfg.resume, overwrite=cfg.overwrite)
        procs.barrier()
        return Trainer(cfg, procs).train()
    finally:
        distributed.stop(procs)
