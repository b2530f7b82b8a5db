"""Attention and token masks for the masked control transformer.

Pure functions over token layouts in which a window of T steps becomes L = 2T tokens, the observation of
step t at index 2t and its action at 2t + 1. Attention masks are boolean with ``True`` meaning *may
attend*, shaped ``[L, L]`` (shared by the batch) or ``[B, 1, L, L]`` (one per sample, broadcast over
heads), ready for :func:`torch.nn.functional.scaled_dot_product_attention`.

Token masks say which input tokens are *hidden* (replaced by a ``[MASK]`` embedding or a constant before
the transformer sees them); they are ``[B, L]`` booleans with ``True`` meaning hidden.
"""

from __future__ import annotations

import torch

Device = torch.device | str | None


def causal(length: int, *, device: Device = None) -> torch.Tensor:
    """Lower-triangular mask: token ``i`` sees tokens ``0..i``. Returns ``[L, L]`` bool."""
    _check_length(length)
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def bidirectional(length: int, *, device: Device = None) -> torch.Tensor:
    """Every token sees every token (used with hidden tokens). Returns ``[L, L]`` bool."""
    _check_length(length)
    return torch.ones(length, length, dtype=torch.bool, device=device)


def inverse_dynamics(length: int, *, start: int = 2, k: int = 1, device: Device = None) -> torch.Tensor:
    """Causal mask in which each observation token cannot see the ``k`` action tokens just before it.

    The observation token at index ``i`` (``i = start, start + 2, ...``) loses sight of the action tokens
    at ``i - 1, i - 3, ..., i - 2k + 1``, so a head reading ``o_{t+1}`` must infer ``a_t`` (and, for
    ``k > 1``, the actions before it) from the observations alone. ``k = 1`` with ``start = 2`` is the
    reference article's matrix. Returns ``[L, L]`` bool.
    """
    _check_length(length)
    if k < 1:
        raise ValueError(f"k must be >= 1 (the number of hidden action tokens), got {k}")
    if start < 1 or start % 2 != 0:
        raise ValueError(f"start must be an even token index >= 2 (an observation token), got {start}")
    mask = causal(length, device=device)
    rows = torch.arange(start, length, 2, device=device)  # observation tokens
    for j in range(k):
        cols = rows - 1 - 2 * j  # the j-th action token before each row
        keep = cols >= 0
        mask[rows[keep], cols[keep]] = False
    return mask


def step_tokens(valid_steps: torch.Tensor) -> torch.Tensor:
    """Expand a per-step flag ``[B, T]`` to the interleaved tokens ``[B, 2T]`` (obs, action per step)."""
    if valid_steps.dim() != 2:
        raise ValueError(f"expected per-step flags of shape [B, T], got {tuple(valid_steps.shape)}")
    return valid_steps.repeat_interleave(2, dim=1)


def with_key_padding(mask: torch.Tensor, token_valid: torch.Tensor) -> torch.Tensor:
    """Combine an attention mask with key padding into one per-sample mask ``[B, 1, L, L]``.

    ``mask`` is ``[L, L]`` or ``[B, 1, L, L]``; ``token_valid`` is ``[B, L]`` (``False`` for tokens of a
    window that starts before its episode). Padding keys are hidden from every query. Each token keeps
    sight of itself, so that a padded query never has an empty row (which would make softmax NaN); the
    outputs at padded positions are meaningless and must be ignored by the losses.
    """
    if token_valid.dim() != 2:
        raise ValueError(f"expected token_valid of shape [B, L], got {tuple(token_valid.shape)}")
    batch, length = token_valid.shape
    if mask.shape[-2:] != (length, length):
        raise ValueError(f"mask is {tuple(mask.shape)} but token_valid has L={length} tokens")
    if mask.dim() == 2:
        mask = mask.view(1, 1, length, length)
    elif mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"expected an attention mask [L, L] or [B, 1, L, L], got {tuple(mask.shape)}")
    eye = torch.eye(length, dtype=torch.bool, device=mask.device)
    return (mask & token_valid.view(batch, 1, 1, length)) | eye


def interleave(obs_flags: torch.Tensor, act_flags: torch.Tensor) -> torch.Tensor:
    """Interleave per-step observation and action flags ``[B, T]`` into token flags ``[B, 2T]``."""
    if obs_flags.shape != act_flags.shape or obs_flags.dim() != 2:
        raise ValueError(
            f"expected obs and action flags of the same shape [B, T], got {tuple(obs_flags.shape)} "
            f"and {tuple(act_flags.shape)}"
        )
    return torch.stack([obs_flags, act_flags], dim=2).flatten(1)  # [B, T, 2] -> [B, 2T]


def first_valid_step(valid_steps: torch.Tensor) -> torch.Tensor:
    """Flag each sample's first real step: ``[B, T]`` bool, one True per row (none for an all-padding row).

    In a left-padded window that is the first step of the episode, not step 0.
    """
    if valid_steps.dim() != 2 or valid_steps.dtype != torch.bool:
        raise ValueError(
            f"expected bool step flags of shape [B, T], got {valid_steps.dtype} {tuple(valid_steps.shape)}"
        )
    return valid_steps & (valid_steps.cumsum(dim=1) == 1)


def random_step_mask(
    batch: int,
    steps: int,
    ratio: float,
    *,
    generator: torch.Generator | None = None,
    device: Device = None,
    valid_steps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Choose steps to hide: ``round(ratio * T)`` distinct steps per sample (at least one if ratio > 0).

    Returns ``[B, T]`` bool, ``True`` = hidden. Steps marked invalid in ``valid_steps`` (padding) are
    never chosen, so the count may be smaller for windows that start before their episode.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must lie in [0, 1], got {ratio}")
    count = 0 if ratio == 0.0 else max(1, round(ratio * steps))
    scores = torch.rand(batch, steps, generator=generator, device=device)
    if valid_steps is not None:
        scores = scores.masked_fill(~valid_steps, 2.0)  # invalid steps sort last, never chosen
    ranks = scores.argsort(dim=1).argsort(dim=1)  # rank of each step's score within its sample
    hidden = ranks < count
    if valid_steps is not None:
        hidden &= valid_steps
    return hidden


def random_token_mask(
    batch: int,
    steps: int,
    *,
    act_ratio: float,
    obs_ratio: float = 0.0,
    generator: torch.Generator | None = None,
    device: Device = None,
    valid_steps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Random hindsight masking: hide a share of action (and optionally observation) tokens.

    Returns token flags ``[B, 2T]``, ``True`` = hidden. The first real observation (the first step that
    ``valid_steps`` marks valid, step 0 without it) is never hidden, so every window keeps an anchor state.
    """
    act = random_step_mask(
        batch, steps, act_ratio, generator=generator, device=device, valid_steps=valid_steps
    )
    obs = random_step_mask(
        batch, steps, obs_ratio, generator=generator, device=device, valid_steps=valid_steps
    )
    if valid_steps is None:
        obs[:, 0] = False
    else:
        obs &= ~first_valid_step(valid_steps)
    return interleave(obs, act)


def apply_token_mask(tokens: torch.Tensor, hidden: torch.Tensor, fill: torch.Tensor | float) -> torch.Tensor:
    """Replace hidden tokens by ``fill`` (a constant, or an embedding ``[C]`` / ``[B, L, C]``).

    ``tokens`` is ``[B, L, C]`` and ``hidden`` is ``[B, L]`` bool. Returns a new tensor; the hidden
    tokens' original values cannot influence anything computed from it.
    """
    if hidden.shape != tokens.shape[:2]:
        raise ValueError(f"hidden flags {tuple(hidden.shape)} do not match tokens {tuple(tokens.shape[:2])}")
    fill_t = torch.as_tensor(fill, dtype=tokens.dtype, device=tokens.device)
    return torch.where(hidden.unsqueeze(-1), fill_t.expand_as(tokens), tokens)


def _check_length(length: int) -> None:
    if length < 1:
        raise ValueError(f"mask length must be >= 1, got {length}")
