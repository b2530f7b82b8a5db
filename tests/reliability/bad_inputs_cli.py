"""Bad inputs to the ``maskctrl`` command line: each must exit with code 2 and say what is wrong.

Rows run ``maskctrl.cli.main`` in-process (see :func:`reliability_table.run_cli`); one row runs a real
process to check that the exit code reaches the shell. Every command gets tiny sizes, so a row whose
bad input slipped through would still finish quickly (and fail its row).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from reliability_table import BadInput, Call, CommandFailed, cli, normalize

Options = dict[str, str | tuple[str, ...] | None]
"""``--flag value`` pairs by option name (``n_envs`` for ``--n-envs``); None is a bare flag."""

COLLECT_DEFAULTS: Options = {
    "env": "pointmass", "episodes": "1", "max_steps": "3", "out": "{tmp}/data", "no_progress": None,
}  # fmt: skip
PRETRAIN_DEFAULTS: Options = {
    "data": "{assets}/data-pointmass", "out": "{tmp}/run", "steps": "2", "window": "8", "n_layer": "1",
    "n_head": "2", "d_model": "16", "batch_size": "8", "num_threads": "1", "no_progress": None,
    "no_tensorboard": None,
}  # fmt: skip
MPC_DEFAULTS: Options = {
    "env": "pointmass", "episodes": "1", "max_steps": "2", "horizon": "3", "samples": "8",
    "iterations": "1", "out_dir": "{tmp}/mpc", "no_progress": None,
}  # fmt: skip


def command(name: str, defaults: Options, **options: str | tuple[str, ...] | None) -> Call:
    """``maskctrl NAME`` with ``defaults`` updated by ``options`` (each option given once)."""
    argv = [name]
    for key, value in {**defaults, **options}.items():
        argv.append("--" + key.replace("_", "-"))
        if isinstance(value, tuple):
            argv.extend(value)
        elif value is not None:
            argv.append(value)
    return cli(*argv)


def _collect(**options: str | tuple[str, ...] | None) -> Call:
    return command("collect", COLLECT_DEFAULTS, **options)


def _pretrain(**options: str | tuple[str, ...] | None) -> Call:
    return command("pretrain", PRETRAIN_DEFAULTS, **options)


def _mpc(**options: str | tuple[str, ...] | None) -> Call:
    return command("mpc", MPC_DEFAULTS, **options)


def _real_process(assets: Path, tmp: Path) -> None:
    """``python -m maskctrl.cli collect --episodes 0`` as a user's shell runs it."""
    argv = [sys.executable, "-m", "maskctrl.cli", "collect", "--episodes", "0", "--out", str(tmp / "x")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    if done.returncode != 0:
        raise CommandFailed(done.returncode, normalize(done.stderr))


CLI = [
    BadInput(id="cli/unknown-command", call=cli("nosuch"), error=CommandFailed,
             match=r"exit 2: maskctrl: unknown command 'nosuch'; expected one of .*\bmpc\b"),
    BadInput(id="cli/real-process-exit-code", call=_real_process, error=CommandFailed,
             match=r"exit 2: maskctrl collect: --episodes and --n-envs must be >= 1, got 0, 1"),
]  # fmt: skip

COLLECT_CLI = [
    BadInput(id="collect-cli/zero-episodes", call=_collect(episodes="0"), error=CommandFailed,
             match=r"exit 2: maskctrl collect: --episodes and --n-envs must be >= 1, got 0, 1"),
    BadInput(id="collect-cli/zero-envs", call=_collect(n_envs="0"), error=CommandFailed,
             match=r"maskctrl collect: --episodes and --n-envs must be >= 1, got 1, 0"),
    BadInput(id="collect-cli/unknown-env", call=_collect(env="nowhere"), error=CommandFailed,
             match=r"maskctrl collect: unknown env 'nowhere'; known envs: .*pointmass"),
    BadInput(id="collect-cli/non-integer-episodes", call=_collect(episodes="abc"), error=CommandFailed,
             match=r"Error parsing --episodes: invalid literal for int\(\) with base 10: 'abc'"),
    BadInput(id="collect-cli/unknown-policy", call=_collect(policy="expert"), error=CommandFailed,
             match=r"[Ii]nvalid choice 'expert' for argument '--policy'. Expected one of \('random', 'oracle-mpc'\)"),
    BadInput(id="collect-cli/negative-noise", call=_collect(noise="-0.5"), error=CommandFailed,
             match=r"maskctrl collect: expected seed >= 0, action_noise >= 0, max_steps >= 1; got 0, -0.5, 3"),
    BadInput(id="collect-cli/zero-max-steps", call=_collect(max_steps="0"), error=CommandFailed,
             match=r"maskctrl collect: expected seed >= 0, action_noise >= 0, max_steps >= 1; got 0, 0.0, 0"),
    BadInput(id="collect-cli/out-not-empty", call=_collect(out="{assets}/data-reacher"), error=CommandFailed,
             match=r"maskctrl collect: --out .*data-reacher is not empty; pass --overwrite to replace the dataset in it"),
    BadInput(id="collect-cli/out-is-file", call=_collect(out="{assets}/a-file"), error=CommandFailed,
             match=r"maskctrl collect: --out .*a-file exists and is not a directory"),
    BadInput(id="collect-cli/overwrite-foreign-directory", call=_collect(out="{assets}/notes", overwrite=None),
             error=CommandFailed,
             match=r"maskctrl collect: .*notes holds files that are not part of a dataset \(notes.txt\); refusing to replace it"),
    BadInput(id="collect-cli/oracle-zero-horizon", call=_collect(policy="oracle-mpc", horizon="0"), error=CommandFailed,
             match=r"maskctrl collect: expected horizon, samples, iterations, history_len and action_repeat >= 1, got 0, 64, 3, 8, 1"),
    BadInput(id="collect-cli/discrete-observations", call=_collect(env="FrozenLake-v1"), error=CommandFailed,
             match=r"maskctrl collect: collect_episodes needs flat Box observation and action spaces; env "
                   r"'FrozenLake-v1' has observations Discrete\(16\) and actions Discrete\(4\)"),
    BadInput(id="collect-cli/discrete-actions", call=_collect(env="CartPole-v1"), error=CommandFailed,
             match=r"maskctrl collect: .*(Box.*Discrete|Discrete.*Box)"),
]  # fmt: skip

PRETRAIN_CLI = [
    BadInput(id="pretrain-cli/zero-steps", call=_pretrain(steps="0"), error=CommandFailed,
             match=r"exit 2: .*--steps must be >= 1, got 0"),
    BadInput(id="pretrain-cli/negative-lr", call=_pretrain(lr="-1"), error=CommandFailed,
             match=r"exit 2: .*need lr > 0 and min_lr_ratio in \[0, 1\], got -1.0 and 0.1"),
    BadInput(id="pretrain-cli/missing-data", call=_pretrain(data="{tmp}/nowhere"), error=CommandFailed,
             match=r"exit 2: maskctrl pretrain: dataset directory .*nowhere does not exist"),
    BadInput(id="pretrain-cli/truncated-data", call=_pretrain(data="{assets}/data-truncated-npz"), error=CommandFailed,
             match=r"maskctrl pretrain: episodes.npz in .*data-truncated-npz: cannot be read"),
    BadInput(id="pretrain-cli/nan-data", call=_pretrain(data="{assets}/data-nan-obs"), error=CommandFailed,
             match=r"maskctrl pretrain: episodes.npz in .*data-nan-obs: episode 1 has NaN observations at step 3"),
    BadInput(id="pretrain-cli/empty-data", call=_pretrain(data="{assets}/data-empty"), error=CommandFailed,
             match=r"maskctrl pretrain: episodes.npz in .*data-empty: holds no episodes"),
    BadInput(id="pretrain-cli/mixed-envs", call=_pretrain(data=("{assets}/data-pointmass", "{assets}/data-reacher")),
             error=CommandFailed, match=r"maskctrl pretrain: datasets disagree on env_name: .*'pointmass', .*'Reacher'"),
    BadInput(id="pretrain-cli/out-not-empty", call=_pretrain(out="{assets}/notes"), error=CommandFailed,
             match=r"maskctrl pretrain: --out .*notes is not empty \(holds notes.txt\); pass --overwrite .* or --resume"),
    BadInput(id="pretrain-cli/out-is-file", call=_pretrain(out="{assets}/a-file"), error=CommandFailed,
             match=r"maskctrl pretrain: --out .*a-file exists and is not a directory"),
    BadInput(id="pretrain-cli/resume-and-overwrite", call=_pretrain(resume=None, overwrite=None), error=CommandFailed,
             match=r"maskctrl pretrain: --resume and --overwrite exclude each other"),
    BadInput(id="pretrain-cli/resume-nothing", call=_pretrain(resume=None), error=CommandFailed,
             match=r"maskctrl pretrain: --resume: nothing to resume in .*run: no checkpoint at"),
    BadInput(id="pretrain-cli/resume-corrupt-checkpoint", call=_pretrain(out="{assets}/run-corrupt-ckpt", resume=None),
             error=CommandFailed,
             match=r"--resume: nothing to resume in .*run-corrupt-ckpt: .*config.json is not valid JSON"),
    BadInput(id="pretrain-cli/val-fraction", call=_pretrain(val_fraction="1.5"), error=CommandFailed,
             match=r"maskctrl pretrain: val_fraction must be in \[0, 1\], got 1.5"),
    BadInput(id="pretrain-cli/dropout", call=_pretrain(dropout="1.5"), error=CommandFailed,
             match=r"maskctrl pretrain: dropout must lie in \[0, 1\), got 1.5"),
    BadInput(id="pretrain-cli/odd-head-size", call=_pretrain(d_model="30"), error=CommandFailed,
             match=r"maskctrl pretrain: rotary embeddings need an even head size, got 15"),
    BadInput(id="pretrain-cli/unknown-device", call=_pretrain(device="nonsense"), error=CommandFailed,
             match=r"exit 2: maskctrl pretrain: .*nonsense"),
    BadInput(id="pretrain-cli/cuda-without-cuda", call=_pretrain(device="cuda"), error=CommandFailed,
             match=r"exit 2: maskctrl pretrain: .*(CUDA|cuda).*not available",
             skip="CUDA is available here" if torch.cuda.is_available() else None),
]  # fmt: skip

MPC_CLI = [
    BadInput(id="mpc-cli/zero-episodes", call=_mpc(episodes="0"), error=CommandFailed,
             match=r"exit 2: maskctrl mpc: --episodes must be >= 1, got 0"),
    BadInput(id="mpc-cli/unknown-env", call=_mpc(env="Cheetah"), error=CommandFailed,
             match=r"maskctrl mpc: unknown env 'Cheetah'; known envs: .*; did you mean 'HalfCheetah'\?"),
    BadInput(id="mpc-cli/unknown-optimizer", call=_mpc(optimizer="adam"), error=CommandFailed,
             match=r"[Ii]nvalid choice 'adam' for argument '--optimizer'. Expected one of \('cem', 'icem', 'mppi'\)"),
    BadInput(id="mpc-cli/zero-horizon", call=_mpc(horizon="0"), error=CommandFailed,
             match=r"exit 2: maskctrl mpc: expected horizon, samples, iterations, history_len and action_repeat >= 1, got 0"),
    BadInput(id="mpc-cli/zero-samples", call=_mpc(samples="0"), error=CommandFailed,
             match=r"exit 2: maskctrl mpc: expected horizon, samples, iterations, history_len and action_repeat >= 1, got 3, 0"),
    BadInput(id="mpc-cli/discount-above-one", call=_mpc(discount="1.5"), error=CommandFailed,
             match=r"exit 2: maskctrl mpc: expected discount in \(0, 1\], got 1.5"),
    BadInput(id="mpc-cli/transformer-without-checkpoint-or-default", call=_mpc(dynamics="transformer"),
             error=CommandFailed,
             match=r"maskctrl mpc: --dynamics transformer without --checkpoint: no default checkpoint for env "
                   r"'pointmass' \(shipped: HalfCheetah, Hopper, InvertedPendulum, Reacher\)"),
    BadInput(id="mpc-cli/mlp-without-checkpoint", call=_mpc(dynamics="mlp"), error=CommandFailed,
             match=r"maskctrl mpc: --dynamics mlp needs --checkpoint DIR"),
    BadInput(id="mpc-cli/corrupt-checkpoint", call=_mpc(dynamics="transformer", checkpoint="{assets}/ckpt-bad-json"),
             error=CommandFailed,
             match=r"maskctrl mpc: cannot use .*ckpt-bad-json as transformer dynamics: .*config.json is not valid JSON"),
    BadInput(id="mpc-cli/pickled-checkpoint", call=_mpc(dynamics="transformer", checkpoint="{assets}/ckpt-pickled-weights"),
             error=CommandFailed, match=r"maskctrl mpc: cannot use .* as transformer dynamics: cannot read weights from"),
    BadInput(id="mpc-cli/env-checkpoint-mismatch", error=CommandFailed,
             call=_mpc(env="Reacher", dynamics="transformer", checkpoint="{assets}/ckpt-good"),
             match=r"checkpoint was trained on 'pointmass', not 'Reacher'; checkpoint expects obs dim 4, env 'Reacher' has 10"),
    BadInput(id="mpc-cli/foreign-ensemble", call=_mpc(dynamics="mlp", checkpoint="{assets}/ckpt-good"),
             error=CommandFailed, match=r"maskctrl mpc: cannot use .*ckpt-good as mlp dynamics: .*not a maskctrl ensemble"),
    BadInput(id="mpc-cli/zero-max-steps", call=_mpc(max_steps="0"), error=CommandFailed,
             match=r"exit 2: maskctrl mpc: .*max.steps.* 0"),
    BadInput(id="mpc-cli/unknown-device", call=_mpc(device="nonsense"), error=CommandFailed,
             match=r"exit 2: maskctrl mpc: .*nonsense"),
    BadInput(id="mpc-cli/cuda-without-cuda", call=_mpc(device="cuda"), error=CommandFailed,
             match=r"exit 2: maskctrl mpc: --device: device 'cuda' asked for, but CUDA is not available",
             skip="CUDA is available here" if torch.cuda.is_available() else None),
    BadInput(id="mpc-cli/transformer-unknown-device", error=CommandFailed,
             call=_mpc(dynamics="transformer", checkpoint="{assets}/ckpt-good", device="gpu"),
             match=r"exit 2: maskctrl mpc: --device: unknown device 'gpu'; expected 'auto', 'cpu', 'cuda'"),
    BadInput(id="mpc-cli/out-dir-under-file", call=_mpc(out_dir="{assets}/a-file/mpc"), error=CommandFailed,
             match=r"exit 2: maskctrl mpc: --out-dir .*a-file/mpc cannot be created: .*a-file exists and is not a directory"),
    BadInput(id="mpc-cli/out-dir-is-file", call=_mpc(out_dir="{assets}/a-file"), error=CommandFailed,
             match=r"exit 2: maskctrl mpc: --out-dir .*a-file .*not a directory"),
]  # fmt: skip

CLI_TABLES: dict[str, list[BadInput]] = {
    "cli": CLI,
    "collect-cli": COLLECT_CLI,
    "pretrain-cli": PRETRAIN_CLI,
    "mpc-cli": MPC_CLI,
}
"""Every command-line row, by command."""
