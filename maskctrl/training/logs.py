"""What a pretraining run writes besides checkpoints: a CSV log, optional TensorBoard events, a loss plot."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

LOG_FILE = "log.csv"
"""The CSV log inside the run directory."""
LOG_TMP_FILE = f".{LOG_FILE}.tmp"
"""Where the log is rewritten before it replaces :data:`LOG_FILE` (left only by a killed run)."""
PLOT_FILE = "losses.png"
"""The loss-curve plot inside the run directory."""
TENSORBOARD_DIR = "tensorboard"
"""TensorBoard event files inside the run directory (only when ``tensorboard`` is installed)."""


def log_columns(terms: tuple[str, ...]) -> list[str]:
    """CSV header: step, learning rate, each train loss and the total, the same for validation, speed."""
    losses = [*terms, "total"]
    return [
        "step",
        "lr",
        *(f"train/{name}" for name in losses),
        *(f"val/{name}" for name in losses),
        "tokens_per_s",
        "elapsed_s",
    ]


class RunLog:
    """Appends one CSV row per logged step (floats written exactly: ``float(text)`` reads them back).

    :param out_dir: the run directory.
    :param columns: the header (see :func:`log_columns`).
    :param resume_step: when resuming, rows after this step (logged after the checkpoint the run resumes
        from) are dropped so that they are not logged twice; None starts a fresh log.
    :param tensorboard: also write TensorBoard scalars if the ``tensorboard`` package is installed.
    """

    def __init__(
        self, out_dir: Path, columns: list[str], *, resume_step: int | None = None, tensorboard: bool = True
    ) -> None:
        self.path = out_dir / LOG_FILE
        self.columns = columns
        kept: list[dict[str, str]] = []
        if resume_step is not None and self.path.is_file():
            kept = [row for row in read_log(self.path, columns) if int(row["step"]) <= resume_step]
        # Rewritten beside it and swapped in: a run killed meanwhile keeps its whole log.
        tmp = out_dir / LOG_TMP_FILE
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(kept)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        self._writer: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional dependency
                pass
            else:
                self._writer = SummaryWriter(str(out_dir / TENSORBOARD_DIR), purge_step=resume_step)

    def write(self, row: dict[str, float | int | None]) -> None:
        """Append ``row`` (missing or None entries stay empty) and flush it to disk."""
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.columns).writerow(
                {key: "" if value is None else value for key, value in row.items()}
            )
        if self._writer is not None:
            step = int(row["step"] or 0)
            for key, value in row.items():
                if key != "step" and value is not None:
                    self._writer.add_scalar(key, float(value), step)
            self._writer.flush()

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self._writer is not None:
            self._writer.close()


def read_log(path: Path, columns: list[str] | None = None) -> list[dict[str, str]]:
    """Rows of a CSV log; with ``columns`` given, a different header raises ``ValueError``."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if columns is not None and reader.fieldnames != columns:
            raise ValueError(
                f"{path} has columns {reader.fieldnames}, expected {columns}: it belongs to a run with other "
                "objectives; resume that run with its own settings or start afresh with --overwrite"
            )
        return list(reader)


def plot_losses(log: Path, out: Path, title: str) -> Path:
    """Plot every train loss (lines) and validation loss (markers) of a CSV log on a log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = [key for key in (rows[0] if rows else {}) if key.startswith(("train/", "val/"))]
    for index, key in enumerate(k for k in names if k.startswith("train/")):
        points = [(int(r["step"]), float(r[key])) for r in rows if r[key]]
        color = f"C{index % 10}"
        if points:
            ax.plot(*zip(*points, strict=True), color=color, label=key)
        val_key = "val/" + key.removeprefix("train/")
        val = [(int(r["step"]), float(r[val_key])) for r in rows if r.get(val_key)]
        if val:
            ax.plot(*zip(*val, strict=True), "o--", color=color, markersize=4, label=val_key)
    finite = [float(r[k]) for r in rows for k in names if r[k] and math.isfinite(float(r[k]))]
    if finite and min(finite) > 0:
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="loss", title=title)
    if names:
        ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
