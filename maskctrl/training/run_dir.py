"""The run directory of ``maskctrl pretrain``: what may be replaced, and what a resumed run must match."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from maskctrl.models.checkpoint import CheckpointError, read_config
from maskctrl.training.logs import LOG_FILE, LOG_TMP_FILE, PLOT_FILE, TENSORBOARD_DIR

CHECKPOINT_DIR = "checkpoint"
"""The latest checkpoint inside the run directory (periodic and final saves replace it atomically)."""
OUTPUTS = (
    CHECKPOINT_DIR,
    f".{CHECKPOINT_DIR}.tmp",
    f".{CHECKPOINT_DIR}.old",
    LOG_FILE,
    LOG_TMP_FILE,
    PLOT_FILE,
    TENSORBOARD_DIR,
)
"""Everything a run writes; ``--overwrite`` removes these and leaves any other file alone."""
MAY_CHANGE_ON_RESUME = frozenset(
    {
        "steps",
        "stop_after",
        "resume",
        "overwrite",
        "progress",
        "tensorboard",
        "device",
        "num_threads",
        "bf16",
        "compile",
        "log_every",
        "val_every",
        "checkpoint_every",
    }
)
"""Options a resumed run may set differently; any other difference is refused."""


def check_out_dir(out: Path, *, resume: bool, overwrite: bool, resumable: bool = True) -> None:
    """Refuse to write into ``out`` unless it is empty, ``overwrite`` is set, or ``resume`` finds a checkpoint.

    :param resumable: whether the command has ``--resume`` (the refusal offers it only then).
    :raises ValueError: both ``resume`` and ``overwrite`` are set.
    :raises FileExistsError: ``out`` is a file, or holds files and neither flag is set.
    :raises CheckpointError: ``resume`` is set but ``out`` holds no readable checkpoint.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run, or start it afresh")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory")
    if resume:
        try:
            read_config(out / CHECKPOINT_DIR)
        except CheckpointError as err:
            raise CheckpointError(f"--resume: nothing to resume in {out}: {err}") from err
        return
    if out.is_dir() and not overwrite:
        entries = sorted(path.name for path in out.iterdir())
        if entries:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            also = ", or --resume to continue it" if resumable else ""
            raise FileExistsError(
                f"--out {out} is not empty (holds {shown}); pass --overwrite to replace a previous run's "
                f"outputs{also}"
            )


def clear_outputs(out: Path) -> None:
    """Remove a previous run's outputs from ``out`` (see :data:`OUTPUTS`) and make sure ``out`` exists."""
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def config_to_json(config: Any) -> dict[str, Any]:
    """A dataclass config as plain JSON (paths as strings, tuples as lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, list | tuple):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value

    return {key: plain(value) for key, value in dataclasses.asdict(config).items()}


def check_resume_config(saved: dict[str, Any], current: dict[str, Any], out: Path) -> None:
    """Raise ``ValueError`` naming every option (outside :data:`MAY_CHANGE_ON_RESUME`) that differs."""
    keys = sorted((saved.keys() | current.keys()) - MAY_CHANGE_ON_RESUME)
    changed = [
        f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
        for key in keys
        if saved.get(key) != current.get(key)
    ]
    if changed:
        raise ValueError(
            f"--resume: the run in {out} was made with other settings ({'; '.join(changed)}); resume with "
            "the original ones, or start a new run"
        )
