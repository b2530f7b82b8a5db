"""``maskctrl pretrain``: pretrain the masked control transformer (or the MLP ensemble) on collected episodes.

Examples::

    maskctrl pretrain --data data/hc-random data/hc-expert --out runs/hc --steps 20000 --batch-size 512
    torchrun --standalone --nproc_per_node=2 -m maskctrl.cli pretrain --data data/hc-random --out runs/hc
    maskctrl pretrain --data data/hc-random --out runs/hc --steps 40000 --resume   # continue, or extend
    maskctrl pretrain --model ensemble --data data/hc-random data/hc-expert --out runs/hc-ens --members 5

writes ``checkpoint/``, ``log.csv`` and ``losses.png`` into ``--out`` (see :mod:`maskctrl.pretrain`); an
ensemble's ``checkpoint/`` loads with :func:`maskctrl.models.ensemble.load_ensemble`.
"""

from __future__ import annotations

import os
import sys
from typing import get_args

import tyro

from maskctrl.data.episodes import DatasetError
from maskctrl.models.checkpoint import CheckpointError
from maskctrl.pretrain import (
    EnsemblePretrainConfig,
    EnsemblePretrainResult,
    Model,
    PretrainConfig,
    PretrainResult,
    pretrain,
)

DESCRIPTION = (
    "Pretrain the masked control transformer (forward/inverse dynamics, masked hindsight control) on "
    "dataset directories from 'maskctrl collect'; runs single-process or under torchrun (DDP). "
    "--model ensemble trains the PETS-style MLP ensemble baseline on the same data instead "
    "('maskctrl pretrain --model ensemble --help' lists its options)."
)
ENSEMBLE_DESCRIPTION = (
    "Train the PETS-style MLP ensemble baseline (--model ensemble) on dataset directories from "
    "'maskctrl collect', with the transformer's train/validation episode split and normalizer for the same "
    "--seed and --val-fraction; one process. Without --model, 'maskctrl pretrain' trains the transformer."
)


def take_model(argv: list[str]) -> tuple[Model, list[str]]:
    """Split ``--model NAME`` / ``--model=NAME`` (default ``transformer``) off the other arguments.

    :raises ValueError: the value is missing or not a known model.
    """
    model, rest, args = "transformer", [], iter(argv)
    for arg in args:
        if arg == "--model":
            model = next(args, "")
        elif arg.startswith("--model="):
            model = arg.removeprefix("--model=")
        else:
            rest.append(arg)
    if model not in get_args(Model):
        raise ValueError(f"--model must be one of {', '.join(get_args(Model))}; got {model!r}")
    return model, rest  # type: ignore[return-value]


def parse_args(argv: list[str]) -> PretrainConfig | EnsemblePretrainConfig:
    """The options of ``argv``: a :class:`PretrainConfig`, or with ``--model ensemble`` an ensemble's.

    tyro reports the configs' own checks (and ``--help``) itself and exits.
    """
    model, rest = take_model(argv)
    if model == "ensemble":
        # The EnsembleConfig fields become plain --members, --hidden, --epochs, ... flags.
        return tyro.cli(
            EnsemblePretrainConfig,
            args=rest,
            prog="maskctrl pretrain --model ensemble",
            description=ENSEMBLE_DESCRIPTION,
            config=(tyro.conf.OmitArgPrefixes,),
        )
    return tyro.cli(PretrainConfig, args=rest, prog="maskctrl pretrain", description=DESCRIPTION)


def main(argv: list[str]) -> int:
    """Entry point of ``maskctrl pretrain``; returns the process exit code."""
    try:
        cfg = parse_args(argv)
        result = pretrain(cfg)
    except (FileNotFoundError, FileExistsError, DatasetError, CheckpointError, ValueError) as err:
        print(f"maskctrl pretrain: {err}", file=sys.stderr)
        return 2
    if isinstance(result, EnsemblePretrainResult):
        report_ensemble(result)
        return 0
    assert isinstance(cfg, PretrainConfig)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        report_transformer(cfg, result)
    return 0


def report_transformer(cfg: PretrainConfig, result: PretrainResult) -> None:
    """Print the final losses and where the checkpoint is."""
    losses = ", ".join(
        f"{name} {value:.4f}" for name, value in (result.val_losses or result.train_losses).items()
    )
    kind = "val" if result.val_losses else "train"
    print(f"step {result.step} in {result.wall_time_s:.1f} s; {kind} losses: {losses}")
    if result.step < cfg.steps:
        print("stopped early as asked (--stop-after); continue from the last checkpoint with --resume")
    print(f"checkpoint: {result.checkpoint}")


def report_ensemble(result: EnsemblePretrainResult) -> None:
    """Print the training summary, the held-out errors against predicting no change, and the checkpoint."""
    history = result.history
    stopped = ", early-stopped" if history.stopped_early else ""
    print(
        f"ensemble: {len(history.train_loss)} epochs, {history.steps} steps in {result.wall_time_s:.1f} s"
        f"{stopped}; elites {history.elites}"
    )
    if result.val_mse is not None and result.zero_change_mse is not None:
        horizon = len(result.val_mse)
        print(
            f"held-out open-loop MSE (standardized obs): step 1 {result.val_mse[0]:.4f}, step {horizon} "
            f"{result.val_mse[-1]:.4f}; predicting no change: {result.zero_change_mse[0]:.4f}, "
            f"{result.zero_change_mse[-1]:.4f}"
        )
    print(f"checkpoint: {result.checkpoint}")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
