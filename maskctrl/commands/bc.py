"""``maskctrl bc``: behaviour cloning of expert episodes with the backbone's policy head.

Examples::

    maskctrl collect --env Reacher --policy oracle-mpc --episodes 5 --out data/reacher-expert
    maskctrl bc --data data/reacher-expert --checkpoint runs/reacher/checkpoint --out runs/reacher-bc
    maskctrl bc --data data/reacher-expert --out runs/reacher-bc-scratch --d-model 64 --n-layer 2
    maskctrl bc --data data/reacher-expert --checkpoint runs/reacher/checkpoint --freeze-trunk --out runs/x

writes ``checkpoint/``, ``log.csv`` and ``bc.png`` into ``--out`` (see :mod:`maskctrl.policies.bc`);
load the policy with ``TransformerPolicy.load(OUT / "checkpoint")``.
"""

from __future__ import annotations

import sys

import tyro

from maskctrl.data.episodes import DatasetError
from maskctrl.models.checkpoint import CheckpointError
from maskctrl.policies.bc import BCConfig, train_bc

DESCRIPTION = (
    "Behaviour cloning: fine-tune the masked control transformer's policy head (causal mask, history "
    "context) on expert dataset directories from 'maskctrl collect', from a pretrained checkpoint or "
    "from scratch, with validation returns in the env."
)


def main(argv: list[str]) -> int:
    """Entry point of ``maskctrl bc``; returns the process exit code."""
    # tyro reports BCConfig's own checks (and --help) itself and exits.
    cfg = tyro.cli(BCConfig, args=argv, prog="maskctrl bc", description=DESCRIPTION)
    try:
        result = train_bc(cfg)
    except (FileNotFoundError, FileExistsError, DatasetError, CheckpointError, ValueError) as err:
        print(f"maskctrl bc: {err}", file=sys.stderr)
        return 2
    val = "-" if result.val_loss is None else f"{result.val_loss:.4f}"
    ret = "-" if result.val_return is None else f"{result.val_return:.2f}"
    print(
        f"{result.steps} steps in {result.wall_time_s:.1f} s; train loss {result.train_loss:.4f}; "
        f"saved step {result.saved_step}: val loss {val}, val return {ret} "
        f"(demonstrations {result.data_return:.2f})"
    )
    print(f"checkpoint: {result.checkpoint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
