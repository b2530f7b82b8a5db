"""Crash-safe replacement of a directory, shared by checkpoints, ensemble saves and episode datasets.

The new contents are written to ``.NAME.tmp`` beside the target, the previous directory is moved to
``.NAME.old``, the new one takes its place and the old one is removed. A crash at any point leaves the
previous or the new directory; if it struck between the two renames, :func:`recover_directory` (called
by every save and load) puts ``.NAME.old`` back.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


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
