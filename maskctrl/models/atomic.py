"""Crash-safe replacement of a directory, shared by checkpoints, ensemble saves and episode datasets.

The new contents are written to ``.NAME.tmp`` beside the target, the previous directory is moved to
``.NAME.old``, the new one takes its place and the old one is removed. A crash at any point leaves the
previous or the new directory; if it struck between the two renames, :func:`recover_directory` (called
by every save and load) puts ``.NAME.old`` back.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def sibling(target: Path, kind: str) -> Path:
    """The hidden ``.NAME.<kind>`` path next to ``target`` (``kind`` is ``tmp`` or ``old``)."""
    return target.with_name(f".{target.name}.{kind}")


def recover_directory(target: Path) -> None:
    """Undo a save interrupted between moving the old directory aside and moving the new one in."""
    old = sibling(target, "old")
    if not target.exists() and old.is_dir():
        os.rename(old, target)


def write_directory_atomically(target: Path, write: Callable[[Path], None], *, marker: str | None) -> Path:
    """Fill a fresh temporary directory with ``write(tmp)`` and swap it in for ``target``.

    A ``.NAME.tmp`` left by an interrupted save is removed first.

    :param marker: a file every directory of this kind holds; an existing ``target`` without it is not
        ours and is never replaced (``FileExistsError``). None: the caller has checked that ``target``
        (if it exists) may be replaced.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(target)
    if marker is not None and target.exists() and not (target / marker).is_file():
        raise FileExistsError(f"{target} exists and has no {marker}; refusing to replace it")
    tmp, old = sibling(target, "tmp"), sibling(target, "old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write(tmp)
        for file in [*tmp.iterdir(), tmp]:
            fsync(file)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        os.rename(target, old)
    os.rename(tmp, target)
    fsync(target.parent)
    shutil.rmtree(old, ignore_errors=True)
    return target


def fsync(path: Path) -> None:
    """Flush a file or directory to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_saved_config(
    target: Path,
    *,
    config_name: str,
    weights_name: str,
    fmt: str,
    format_version: int,
    what: str,
    saver: str,
) -> dict[str, Any]:
    """The JSON config of a ``config + safetensors weights`` directory, after checking what it claims to be.

    Recovers an interrupted save, requires both files, parses the config and checks its ``format`` and
    that its ``format_version`` is an int this maskctrl reads. Errors name ``what`` (e.g. ``"ensemble"``)
    and ``saver`` (the function that writes such directories).
    """
    recover_directory(target)
    for name in (config_name, weights_name):
        if not (target / name).is_file():
            raise FileNotFoundError(f"{target} has no {name}; expected a {what} saved by {saver}")
    try:
        config = json.loads((target / config_name).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{target / config_name} is not valid JSON: {err}") from err
    if not isinstance(config, dict) or config.get("format") != fmt:
        raise ValueError(f"{target} is not a maskctrl {what} ({config_name} lacks format {fmt!r})")
    version = config.get("format_version", 0)
    if not isinstance(version, int) or not isinstance(config.get("metadata") or {}, dict):
        raise ValueError(
            f"{target / config_name} has an invalid format_version or metadata (expected an int and an object)"
        )
    if version > format_version:
        raise ValueError(f"{target} has {what} format {version}, newer than this maskctrl reads")
    return config


def load_safetensors_weights(module: torch.nn.Module, file: Path) -> None:
    """Load ``file`` into ``module`` strictly; a corrupt, truncated or mismatched file raises ``ValueError``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    try:
        load_model(module, str(file), strict=True)
    except (SafetensorError, RuntimeError, OSError) as err:
        raise ValueError(f"cannot read weights from {file}: {err}") from err
