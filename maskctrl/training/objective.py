"""The pretraining losses of :mod:`maskctrl.models.objectives` under data parallelism.

Each process sees only its share of a global batch, so a mean over that share would depend on the number
of processes. Instead the masks come from one draw for the global batch (row ``i`` of it masks sample
``i`` wherever that sample lands), each process computes the *sums* of :func:`loss_sums` over its share,
and the trainer divides them by the *global* counts (summed over processes). Multiplied by the world size,
the gradient that DistributedDataParallel averages is then exactly the gradient of the single-process mean
over the global batch, however unevenly padding and groups fall on the processes.

:class:`PretrainingObjective` wraps the model so that DDP sees the heads used inside its forward; the
heads of switched-off losses (and the [MASK] embedding when nothing is hidden) are frozen, so every
trainable parameter receives a gradient on every process at every step (no ``find_unused_parameters``).
"""

from __future__ import annotations

import torch
from torch import nn

from maskctrl.models.objectives import GROUPS, TERM_HEADS, MaskDraw, ObjectiveWeights, WindowBatch, loss_sums
from maskctrl.models.transformer import MaskedControlTransformer


class PretrainingObjective(nn.Module):
    """The model plus its pretraining loss sums over a share of the batch (what DDP wraps).

    :param model: the transformer; heads of losses that ``weights`` switches off are frozen here.
    :param weights: loss weights and masking ratios.
    """

    def __init__(self, model: MaskedControlTransformer, weights: ObjectiveWeights) -> None:
        super().__init__()
        self.model = model
        self.weights = weights
        used = {TERM_HEADS[name] for name in weights.terms}
        for name, head in model.heads.named_children():
            head.requires_grad_(name in used)
        if model.mask_token is not None and GROUPS.index("hindsight") not in weights.active_groups:
            model.mask_token.requires_grad_(False)

    def forward(self, batch: WindowBatch, draw: MaskDraw) -> tuple[torch.Tensor, torch.Tensor]:
        """Each loss's sum and count of positions over this share, ``[n_terms]`` each (see :func:`loss_sums`).

        :param batch: this share's normalized windows.
        :param draw: this share's rows of the global :class:`MaskDraw`.
        """
        return loss_sums(self.model, batch, draw, self.weights)
