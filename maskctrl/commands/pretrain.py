"""``maskctrl pretrain``: pretrain the masked control transformer on collected episodes.

Examples::

    maskctrl pretrain --data data/hc-random data/hc-expert --out runs/hc --steps 20000 --batch-size 512
    torchrun --standalone --nproc_per_node=2 -m maskctrl.cli pretrain --data data/hc-random --out runs/hc
    maskctrl pretrain --data data/hc-random --out runs/hc --steps 40000 --resume   # continue, or extend

writes ``checkpoint/``, ``log.csv`` and ``losses.png`` into ``--out`` (see :mod:`maskctrl.pretrain`).
"""

from __future__ import annotations

import os
import sys

import tyro

from maskctrl.data.episodes import DatasetError
from maskctrl.models.checkpoint import CheckpointError
from maskctrl.pretrain import PretrainConfig, pretrain

DESCRIPTION = (
    "Pretrain the masked control transformer (forward/inverse dynamics, masked hindsight control) on "
    "dataset directories from 'maskctrl collect'; runs single-process or under torchrun (DDP)."
)


def main(argv: list[str]) -> int:
    """Entry point of ``maskctrl pretrain``; returns the process exit code."""
    # tyro reports PretrainConfig's own checks (and --help) itself and exits.
    cfg = tyro.cli(PretrainConfig, args=argv, prog="maskctrl pretrain", description=DESCRIPTION)
    try:
        result = pretrain(cfg)
    except (FileNotFoundError, FileExistsError, DatasetError, CheckpointError, ValueError) as err:
        print(f"maskctrl pretrain: {err}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return 0
    losses = ", ".join(
        f"{name} {value:.4f}" for name, value in (result.val_losses or result.train_losses).items()
    )
    kind = "val" if result.val_losses else "train"
    print(f"step {result.step} in {result.wall_time_s:.1f} s; {kind} losses: {losses}")
    if result.step < cfg.steps:
        print("stopped early as asked (--stop-after); continue from the last checkpoint with --resume")
    print(f"checkpoint: {result.checkpoint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
