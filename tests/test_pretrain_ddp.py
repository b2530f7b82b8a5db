"""Two gloo processes under torchrun (CPU) follow the single-process run with the same global batch."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from maskctrl.commands import collect, pretrain
from maskctrl.models.checkpoint import load_checkpoint
from maskctrl.models.transformer import MaskedControlTransformer, TransformerConfig
from maskctrl.training.sampling import INIT, derive_seed

# 15 windows per step: shares of 8 and 7, with padding and objective groups falling unevenly on them.
ARGS = ["--steps", "10", "--batch-size", "15", "--window", "8", "--n-layer", "1", "--n-head", "2"]
ARGS += ["--d-model", "32", "--lr", "3e-3", "--warmup-steps", "2", "--log-every", "1", "--val-every", "5"]
ARGS += ["--checkpoint-every", "0", "--no-progress", "--no-tensorboard", "--num-threads", "1"]
ARGS += ["--weights.obs-mask-ratio", "0.25"]

LOSS_TOL = 1e-5
"""Largest absolute difference allowed between logged losses (measured: below 1e-6)."""
WEIGHT_TOL = 1e-5
"""Largest absolute difference allowed between final weights (measured: below 1e-6)."""


def test_two_process_gloo_run_matches_single_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert collect.main(["--env", "pointmass", "--episodes", "5", "--out", str(data), "--no-progress"]) == 0
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert pretrain.main(["--data", str(data), "--out", str(single), *ARGS]) == 0

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = tmp_path / "torchrun-logs"  # each rank's own stdout/stderr, for the message if a rank fails
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    launch += ["--log-dir", str(logs), "--redirects", "3", "--tee", "3"]
    command = [*launch, "-m", "maskctrl.commands.pretrain", "--data", str(data), "--out", str(multi), *ARGS]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, _rank_logs(logs) + "\ntorchrun:\n" + done.stderr[-3000:]
    assert done.stdout.count("checkpoint:") == 1  # only rank 0 reports

    rows_single, rows_multi = (list(csv.DictReader((out / "log.csv").open())) for out in (single, multi))
    assert [r["step"] for r in rows_multi] == [str(step) for step in range(1, 11)]
    worst = 0.0
    for a, b in zip(rows_single, rows_multi, strict=True):
        for key in a:
            if key.startswith(("train/", "val/")) and a[key]:
                worst = max(worst, abs(float(a[key]) - float(b[key])))
    assert worst < LOSS_TOL
    assert float(rows_multi[0]["train/hindsight_obs"]) > 0 and rows_multi[4]["val/total"]

    weights_single = load_file(single / "checkpoint" / "model.safetensors")
    weights_multi = load_file(multi / "checkpoint" / "model.safetensors")
    diff = max(float((weights_single[k] - weights_multi[k]).abs().max()) for k in weights_single)
    moved = max(float((weights_single[k] - w).abs().max()) for k, w in _initial().items())
    assert diff < WEIGHT_TOL < moved  # trained, and trained alike
    assert load_checkpoint(multi / "checkpoint").metadata["world_size"] == 2
    assert not any(p.name.startswith(".checkpoint") for p in multi.iterdir())


def _rank_logs(root: Path) -> str:
    """The tail of every rank's stderr under torchrun's ``--log-dir``."""
    parts = [
        f"{path.relative_to(root)}:\n{path.read_text()[-2000:]}" for path in sorted(root.rglob("stderr.log"))
    ]
    return "\n".join(parts) or f"no rank logs under {root}"


def _initial() -> dict[str, torch.Tensor]:
    """The weights every run starts from (seeded from the run's seed, see maskctrl.pretrain)."""
    config = TransformerConfig(obs_dim=4, act_dim=2, context_len=8, n_layer=1, n_head=2, d_model=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(0, INIT))
        return MaskedControlTransformer(config).state_dict()
