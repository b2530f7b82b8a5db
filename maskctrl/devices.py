"""Turning a user's ``--device`` string into a :class:`torch.device` that exists on this machine.

Every command that takes a device (``pretrain``, ``bc``, ``mpc``, the ensemble run) resolves it here, so
that a typo or a GPU that is not there is reported at the boundary with the same message, instead of as a
torch error (or an ``AttributeError`` from a CPU-only build) deep inside.
"""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """The device ``device`` names, checked to exist here.

    ``"auto"`` is this process's GPU (``cuda:local_rank``) when CUDA is available, else the CPU; a bare
    ``"cuda"`` also becomes ``cuda:local_rank`` (the GPU ``torchrun`` gives this process).

    :raises ValueError: ``device`` is not a device string, or names a CUDA / MPS device this machine does
        not have.
    """
    if device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"unknown device {str(device)!r}; expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r} asked for, but CUDA is not available on this machine "
                f"(torch {torch.__version__}); use 'cpu' or 'auto'"
            )
        if resolved.index is None:
            resolved = torch.device("cuda", local_rank)
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"device {str(resolved)!r} asked for, but only {count} CUDA device(s) are available"
            )
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but MPS is not available on this machine")
    return resolved


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``, without making the host wait for the GPU.

    A plain ``.to("cuda")`` of a host tensor synchronizes: it returns only after the copy, so after all the
    work queued before it. Here a CPU tensor bound for CUDA is copied into page-locked memory and sent
    asynchronously (torch keeps that memory until the copy is done); other moves are plain ``.to``.
    """
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
