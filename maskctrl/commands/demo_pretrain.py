"""``maskctrl demo-pretrain``: pretrain a tiny backbone on a synthetic linear system and watch every loss fall.

It needs no data set and no download: trajectories come from a
random stable linear system, the model is small enough to train on a laptop CPU in about a minute, and
the run prints each pretraining objective's loss (forward dynamics, inverse dynamics, masked hindsight
control, reward) as it falls, then saves a loss plot and a checkpoint.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro
from tqdm.auto import tqdm

from maskctrl.data.synthetic import LinearSystem
from maskctrl.models.checkpoint import EnvInfo, save_checkpoint
from maskctrl.models.normalizer import Normalizer
from maskctrl.models.objectives import ObjectiveWeights, WindowBatch, pretraining_loss
from maskctrl.models.transformer import MaskedControlTransformer, TransformerConfig


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Options of ``maskctrl demo-pretrain``."""

    steps: int = 400
    """Optimizer steps."""
    batch_size: int = 64
    """Windows per step."""
    window: int = 8
    """Steps T per window."""
    obs_dim: int = 4
    """State size of the synthetic system."""
    act_dim: int = 2
    """Input size of the synthetic system."""
    n_windows: int = 4096
    """Training windows generated up front."""
    lr: float = 3e-3
    """Peak learning rate (linear warm-up, cosine decay)."""
    report_every: int = 50
    """Print the losses every this many steps."""
    seed: int = 0
    """Seed for the system, the data, the masks and the initial weights."""
    out_dir: Path = Path("runs/demo")
    """Where the loss plot and the checkpoint go."""
    progress: bool = True
    """Show a progress bar."""
    threads: int = 1
    """Torch intra-op threads; the model is tiny, and extra threads only contend with other processes."""


def run(cfg: DemoConfig) -> dict[str, list[float]]:
    """Train and report; returns each loss term's value at every step."""
    if cfg.steps < 20 or cfg.report_every < 1 or cfg.threads < 1:
        raise ValueError(
            f"need steps >= 20, report_every >= 1 and threads >= 1, got {cfg.steps}, {cfg.report_every}, {cfg.threads}"
        )
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    system = LinearSystem.random(cfg.obs_dim, cfg.act_dim, rng)
    raw = system.windows(cfg.n_windows, cfg.window, rng, smoothness=0.9, pad_fraction=0.2)
    real = raw.valid
    normalizer = Normalizer.from_data(raw.obs[real], raw.next_obs[real], rewards=raw.rew[real])
    data = WindowBatch(
        obs=normalizer.normalize_obs(raw.obs).masked_fill(~real[..., None], 0.0),
        act=raw.act,
        rew=normalizer.normalize_reward(raw.rew).masked_fill(~real, 0.0),
        next_obs=normalizer.normalize_obs(raw.next_obs).masked_fill(~real[..., None], 0.0),
        valid=real,
    )
    config = TransformerConfig(
        obs_dim=cfg.obs_dim, act_dim=cfg.act_dim, context_len=cfg.window, n_layer=2, n_head=4, d_model=64
    )
    model = MaskedControlTransformer(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    weights = ObjectiveWeights()
    history: dict[str, list[float]] = {}
    print(
        f"maskctrl demo-pretrain: pretraining a {sum(p.numel() for p in model.parameters()):,}-parameter backbone"
    )
    print(f"on windows of a random {cfg.obs_dim}-state, {cfg.act_dim}-input linear system\n")
    header = None
    start = time.perf_counter()
    for step in tqdm(
        range(cfg.steps), disable=None if cfg.progress else True, desc="pretraining", leave=False
    ):
        warmup = min(1.0, (step + 1) / 20)
        cosine = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * warmup * cosine
        index = torch.randint(0, cfg.n_windows, (cfg.batch_size,), generator=gen)
        batch = WindowBatch(
            obs=data.obs[index], act=data.act[index], rew=data.rew[index],
            next_obs=data.next_obs[index], valid=data.valid[index],
        )  # fmt: skip
        out = pretraining_loss(model, batch, weights=weights, generator=gen)
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()
        for name, value in out.terms.items():
            history.setdefault(name, []).append(float(value.detach()))
        if header is None:
            header = "| step | " + " | ".join(history) + " |"
            tqdm.write(header + "\n|" + "---|" * (len(history) + 1))
        if step == 0 or (step + 1) % cfg.report_every == 0:
            tqdm.write(f"| {step + 1} | " + " | ".join(f"{v[-1]:.4f}" for v in history.values()) + " |")
    elapsed = time.perf_counter() - start

    print(f"\n{cfg.steps} steps in {elapsed:.1f} s. Loss drop (mean of first 10 steps / last 10 steps):")
    for name, values in history.items():
        print(f"  {name:>10}: {np.mean(values[:10]):.4f} -> {np.mean(values[-10:]):.4f}  "
              f"({np.mean(values[:10]) / np.mean(values[-10:]):.0f}x)")  # fmt: skip
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    plot = _plot(history, cfg.out_dir / "losses.png")
    box = {
        "type": "Box",
        "shape": [cfg.obs_dim],
        "low": ["-inf"] * cfg.obs_dim,
        "high": ["inf"] * cfg.obs_dim,
    }
    act_box = {**box, "shape": [cfg.act_dim], "low": ["-inf"] * cfg.act_dim, "high": ["inf"] * cfg.act_dim}
    env = EnvInfo(name="synthetic-linear", observation_space=box, action_space=act_box)
    ckpt = save_checkpoint(
        cfg.out_dir / "checkpoint", model, normalizer=normalizer, env=env, step=cfg.steps,
        metadata={"made_by": "maskctrl demo-pretrain", "seed": cfg.seed, "final_losses": {k: v[-1] for k, v in history.items()}},
    )  # fmt: skip
    print(f"\nloss plot: {plot}\ncheckpoint: {ckpt}")
    return history


def _plot(history: dict[str, list[float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in history.items():
        smooth = np.convolve(values, np.ones(10) / 10, mode="valid")
        ax.plot(np.arange(len(smooth)) + 10, smooth, label=name)
    ax.set(
        yscale="log",
        xlabel="step",
        ylabel="loss (10-step mean)",
        title="maskctrl demo-pretrain: pretraining losses",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    """Entry point of ``maskctrl demo-pretrain``."""
    run(tyro.cli(DemoConfig, args=argv, prog="maskctrl demo-pretrain"))
    return 0
