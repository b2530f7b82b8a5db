"""JSON descriptions of gymnasium spaces, shared by dataset metadata and checkpoint configs."""

from __future__ import annotations

from typing import Any

import numpy as np


def describe_space(space: Any) -> dict[str, Any]:
    """JSON description of a gymnasium ``Box`` or ``Discrete`` space (others raise ``TypeError``).

    Non-finite bounds are written as the strings ``"inf"``/``"-inf"`` (``float()`` reads them back), so
    that the files stay standard JSON.
    """
    kind = type(space).__name__
    if kind == "Discrete" and hasattr(space, "n"):
        return {"type": "Discrete", "n": int(space.n)}
    if kind != "Box" or not hasattr(space, "low"):
        raise TypeError(f"maskctrl needs Box (or Discrete action) spaces, got {space!r}")
    return {
        "type": "Box",
        "shape": [int(s) for s in space.shape],
        "dtype": str(np.dtype(space.dtype)),
        "low": _encode_floats(np.asarray(space.low).reshape(-1)),
        "high": _encode_floats(np.asarray(space.high).reshape(-1)),
    }


def space_bounds(description: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` float64 arrays of a Box written by :func:`describe_space`."""
    low = np.array([float(x) for x in description["low"]], dtype=np.float64)
    high = np.array([float(x) for x in description["high"]], dtype=np.float64)
    return low, high


def _encode_floats(values: np.ndarray) -> list[float | str]:
    return [float(v) if np.isfinite(v) else str(float(v)) for v in values]
