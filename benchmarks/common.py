"""Small helpers shared by the benchmark scripts: mean ± std, markdown tables, JSON + markdown output."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std of ``values`` (std 0 for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std())


def fmt_mean_std(values: Sequence[float], digits: int = 1) -> str:
    """``"12.3 ± 0.4"`` (just the mean for a single value)."""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are ``str()``-ed, numbers right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    for row in cells:
        if len(row) != len(headers):
            raise ValueError(f"expected {len(headers)} cells per row, got {len(row)}: {row}")
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([line(list(headers)), rule, *(line(r) for r in cells)])


def planner_speed_table(record: dict[str, Any]) -> str:
    """The KV-vs-recompute table of a ``planner_speed.py`` record (its page and the README show the same)."""
    mpc, roll = record["mpc"], record["rollout"]
    rows = [
        [name, f"{mpc[name]['control_steps_per_s']:.2f}", f"{mpc[name]['imagined_transitions_per_s']:,.0f}",
         f"{roll[f'{name}_s_median'] * 1e3:.1f}"]
        for name in mpc  # kv, kv_eager (GPU runs), kv_compiled, recompute
    ]  # fmt: skip
    return markdown_table(["rollout", "control steps/s", "imagined transitions/s", "one rollout (ms)"], rows)


def compiled_against(record: dict[str, Any]) -> str:
    """What ``kv_compiled`` is compared with in a ``planner_speed.py`` record: ``kv``, which on CUDA
    replays CUDA graphs of the eager steps (the compiled ones are replayed from graphs too)."""
    return (
        "KV decoding replayed from CUDA graphs"
        if "graph_speedup" in record["rollout"]
        else "eager KV decoding"
    )


def _is_number(text: str) -> bool:
    try:
        float(text.split(" ± ")[0])
    except ValueError:
        return False
    return True


def command_line(script: str, cfg: Any) -> str:
    """``python benchmarks/<script>`` plus the flags (tyro's names) of every option of the dataclass
    ``cfg`` that differs from its default: how to reproduce a record, written into it."""
    parts = ["python", f"benchmarks/{script}"]
    for field in dataclasses.fields(cfg):
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = dataclasses.MISSING
        value = getattr(cfg, field.name)
        if value == default:
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, tuple | list):
            parts += [flag, *(str(item) for item in value)]
        else:
            parts += [flag, str(value)]
    return " ".join(parts)


def machine_info() -> dict[str, Any]:
    """Where and when the numbers were measured (they are only comparable within one run)."""
    import torch

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_results(out_dir: Path, name: str, record: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``record`` to ``out_dir/name.json`` and ``markdown`` to ``out_dir/name.md``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path
