"""Batch indices and objective masks as pure functions of ``(seed, step)``, independent of the world size.

Every process of a run draws the same *global* batch and the same global masks for a step (with
:func:`maskctrl.models.objectives.draw_masks` from :func:`generator` ``(seed, MASKS, step)``), then keeps its
own contiguous share of the rows (:func:`shard`). A sample therefore gets the same window, objective
group and hidden tokens whether it lands on rank 0 or 1 of a two-process run or in a single process, and
resuming needs nothing but the step number: no generator state has to be saved.
"""

from __future__ import annotations

import numpy as np
import torch

BATCHES, MASKS, VAL_BATCHES, VAL_MASKS, DROPOUT, INIT = range(6)
"""Independent random streams derived from the run's seed."""


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for ``torch.Generator.manual_seed`` from ``seed`` and stream/step keys (well mixed)."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, np.uint64)
    return int((int(state[0]) << 32 ^ int(state[1])) & ((1 << 63) - 1))


def generator(seed: int, *keys: int) -> torch.Generator:
    """A fresh CPU generator seeded by :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


class EpochSampler:
    """Global batch indices for each step: consecutive slices of a fresh permutation per epoch.

    Step ``s`` takes positions ``s*B .. s*B+B-1`` of the endless sequence ``perm_0, perm_1, ...`` where
    ``perm_e`` is a permutation of the ``n`` windows drawn from ``(seed, e)``; every window is seen once
    per epoch and a batch may straddle two epochs.

    :param n: number of windows in the dataset.
    :param batch_size: global batch size B.
    :param seed: seed of the run.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < 1 or batch_size < 1:
            raise ValueError(f"need n >= 1 and batch_size >= 1, got {n} and {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._cached: tuple[int, torch.Tensor] | None = None

    def _perm(self, epoch: int) -> torch.Tensor:
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, torch.randperm(self.n, generator=generator(self.seed, BATCHES, epoch)))
        return self._cached[1]

    def indices(self, step: int) -> torch.Tensor:
        """Dataset indices ``[B]`` of the global batch of optimizer step ``step`` (0-based)."""
        start = step * self.batch_size
        positions = torch.arange(start, start + self.batch_size)  # [B]
        epochs = positions // self.n
        out = torch.empty(self.batch_size, dtype=torch.long)
        for epoch in range(int(epochs[0]), int(epochs[-1]) + 1):
            rows = epochs == epoch
            out[rows] = self._perm(epoch)[positions[rows] % self.n]
        return out


def shard(batch: int, rank: int, world_size: int) -> slice:
    """The contiguous rows of a global batch of ``batch`` samples that process ``rank`` trains on."""
    if batch < world_size:
        raise ValueError(f"global batch size {batch} is smaller than the number of processes {world_size}")
    base, extra = divmod(batch, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))
