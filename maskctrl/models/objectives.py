"""SMART-style self-supervised pretraining: several control objectives in one forward pass.

Each sample of a batch is assigned one objective group and carries that group's attention mask:

==========  =====================  ===============================  =================================
group       attention              input change                     losses (read at -> target)
==========  =====================  ===============================  =================================
forward     causal                 none                             ``forward``: a_t -> o_{t+1} - o_t;
                                                                    ``reward``: a_t -> r_t;
                                                                    ``policy``: o_t -> a_t
inverse     inverse_dynamics       none                             ``inverse``: o_{t+1} -> a_t
hindsight   bidirectional          random action/obs tokens hidden  ``hindsight``: hidden a_t -> a_t;
                                                                    ``hindsight_obs``: hidden o_t -> o_t
==========  =====================  ===============================  =================================

Losses are means over real (non-padding) positions of their group: MSE for observations, rewards and
continuous actions, cross-entropy for discrete actions. ``L_total = sum_i w_i L_i``. :func:`loss_sums`
returns each loss as a sum ``S_i`` and a count ``N_i`` of positions, so that a data-parallel trainer can
divide by counts summed over processes (:mod:`maskctrl.training.objective`); :func:`pretraining_loss`
divides by the batch's own.

The random part of the masks (:class:`MaskDraw`) is drawn row by row before padding is known, so a sample's
group and hidden tokens do not depend on how a batch is split among processes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from maskctrl.devices import to_device
from maskctrl.models import masks
from maskctrl.models.transformer import MaskedControlTransformer

GROUPS = ("forward", "inverse", "hindsight")
"""The objective groups, in the order of their index in :func:`assign_groups` and :attr:`MaskDraw.group`."""

TERM_HEADS = {
    "forward": "delta_obs",
    "reward": "reward",
    "policy": "policy",
    "inverse": "inverse",
    "hindsight": "recon_action",
    "hindsight_obs": "recon_obs",
}
"""Each loss and the head of ``model.heads`` it trains, in the order of :attr:`ObjectiveWeights.terms`."""


@dataclass(frozen=True, kw_only=True)
class WindowBatch:
    """Windows of T steps for pretraining, batch-first, already normalized.

    The forward-dynamics target needs ``o_{t+1}`` for every step t in the window, the last included,
    so the batch carries ``next_obs`` aligned with ``obs`` (``next_obs[:, t]`` is ``o_{t+1}``).
    """

    obs: torch.Tensor
    """Observations ``[B, T, O]``."""
    act: torch.Tensor
    """Actions ``[B, T, A]`` (float) or ``[B, T]`` (long, discrete)."""
    rew: torch.Tensor
    """Rewards ``[B, T]``; ``rew[:, t]`` follows ``act[:, t]``."""
    next_obs: torch.Tensor
    """Observation after each step ``[B, T, O]``."""
    valid: torch.Tensor
    """Bool ``[B, T]``: True for real steps, False for padding."""
    delta: torch.Tensor | None = None
    """Target of the forward head ``[B, T, O]`` (e.g. separately standardized deltas); default
    ``next_obs - obs``."""

    def __post_init__(self) -> None:
        if self.obs.dim() != 3:
            raise ValueError(f"expected obs of shape [B, T, O], got {tuple(self.obs.shape)}")
        batch, steps, _ = self.obs.shape
        shapes = {
            "rew": self.rew,
            "valid": self.valid,
            "act": self.act[..., 0] if self.act.dim() == 3 else self.act,
        }
        for name, value in shapes.items():
            if tuple(value.shape) != (batch, steps):
                raise ValueError(
                    f"expected {name} to start with [B, T] = {(batch, steps)}, got {tuple(value.shape)}"
                )
        for name in ("next_obs", "delta"):
            value = getattr(self, name)
            if value is not None and value.shape != self.obs.shape:
                raise ValueError(
                    f"expected {name} of shape {tuple(self.obs.shape)}, got {tuple(value.shape)}"
                )
        if self.valid.dtype != torch.bool:
            raise ValueError(f"valid must be a bool tensor, got {self.valid.dtype}")

    @property
    def forward_target(self) -> torch.Tensor:
        """What the forward head learns to predict ``[B, T, O]``."""
        return self.next_obs - self.obs if self.delta is None else self.delta

    def to(self, device: torch.device | str) -> WindowBatch:
        """The same batch on ``device``."""
        return WindowBatch(
            obs=self.obs.to(device),
            act=self.act.to(device),
            rew=self.rew.to(device),
            next_obs=self.next_obs.to(device),
            valid=self.valid.to(device),
            delta=None if self.delta is None else self.delta.to(device),
        )


@dataclass(frozen=True, kw_only=True)
class ObjectiveWeights:
    """Weights of the pretraining losses (0 switches a loss off) and how the hindsight group masks."""

    forward: float = 1.0
    """Forward dynamics: ``o_{t+1} - o_t`` read at a_t (causal group)."""
    inverse: float = 1.0
    """Inverse dynamics: a_t read at o_{t+1}, which cannot see a_t (inverse group)."""
    hindsight: float = 1.0
    """Random masked hindsight control: hidden actions reconstructed with bidirectional attention."""
    hindsight_obs: float = 1.0
    """Hidden observations reconstructed in the hindsight group (only when ``obs_mask_ratio > 0``)."""
    reward: float = 1.0
    """Reward r_t read at a_t (causal group)."""
    policy: float = 0.0
    """Behaviour cloning a_t read at o_t (causal group); off by default."""
    act_mask_ratio: float = 0.5
    """Share of action tokens hidden in a hindsight sample."""
    obs_mask_ratio: float = 0.0
    """Share of observation tokens hidden in a hindsight sample (the first one never is); SMART hides
    actions only, hence 0 by default."""
    inverse_k: int = 1
    """How many action tokens before each observation the inverse-dynamics mask hides."""

    def __post_init__(self) -> None:
        for name in ("forward", "inverse", "hindsight", "hindsight_obs", "reward", "policy"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss weight {name} must be >= 0, got {getattr(self, name)}")
        for name in ("act_mask_ratio", "obs_mask_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.inverse_k < 1:
            raise ValueError(f"inverse_k must be >= 1, got {self.inverse_k}")
        if not self.active_groups:
            raise ValueError("every loss weight is 0: nothing to train")

    @property
    def terms(self) -> dict[str, float]:
        """The switched-on losses and their weights, in the order of :data:`TERM_HEADS` (a hindsight loss
        needs tokens of its kind hidden)."""
        weights = {
            "forward": self.forward,
            "reward": self.reward,
            "policy": self.policy,
            "inverse": self.inverse,
            "hindsight": self.hindsight if self.act_mask_ratio > 0 else 0.0,
            "hindsight_obs": self.hindsight_obs if self.obs_mask_ratio > 0 else 0.0,
        }
        return {name: weight for name, weight in weights.items() if weight > 0}

    @property
    def active_groups(self) -> tuple[int, ...]:
        """Indices into :data:`GROUPS` of the groups that some switched-on loss reads."""
        on = self.terms
        wanted = (
            bool({"forward", "reward", "policy"} & on.keys()),
            "inverse" in on,
            bool({"hindsight", "hindsight_obs"} & on.keys()),
        )
        return tuple(i for i, group_on in enumerate(wanted) if group_on)


@dataclass(frozen=True)
class LossOutput:
    """The weighted total and each (unweighted) term, for logging."""

    total: torch.Tensor
    """Scalar ``sum_i w_i L_i`` to backpropagate."""
    terms: dict[str, torch.Tensor]
    """Each switched-on loss (scalar), unweighted."""

    @classmethod
    def from_sums(cls, sums: torch.Tensor, counts: torch.Tensor, weights: ObjectiveWeights) -> LossOutput:
        """The losses ``L_i = S_i / N_i`` of the sums and counts of :func:`loss_sums`, and their weighted total.

        :param sums: ``[n_terms]`` each loss summed over its positions.
        :param counts: ``[n_terms]`` the positions to average over (those of this batch, or of the global
            batch under data parallelism).
        """
        counts = counts.clamp_min(1)
        coefficients = to_device(torch.tensor(list(weights.terms.values())), sums.device)  # [n_terms]
        total = (coefficients * sums / counts).sum()  # as w_i * L_i, but rounded as runs logged so far
        return cls(total=total, terms=dict(zip(weights.terms, (sums / counts).unbind(), strict=True)))


def assign_groups(
    batch: int, weights: ObjectiveWeights, generator: torch.Generator | None
) -> list[torch.Tensor]:
    """Split ``batch`` sample indices at random, evenly among the active groups.

    Returns one sorted CPU index tensor per entry of :data:`GROUPS` (empty for inactive groups). The
    split is drawn on the host so that selecting a group's rows needs no device synchronisation.
    """
    active = weights.active_groups
    perm = torch.randperm(batch, generator=generator)
    rows = [torch.empty(0, dtype=torch.long) for _ in GROUPS]
    for slot, group in enumerate(active):
        rows[group] = perm[slot :: len(active)].sort().values
    return rows


@dataclass(frozen=True)
class MaskDraw:
    """The random part of the objective masks of a batch, drawn before its padding is known."""

    group: torch.Tensor
    """Long ``[B]`` on the host: index into :data:`GROUPS` of each sample's group."""
    act_scores: torch.Tensor
    """Uniform ``[B, T]``: the lowest-scoring real steps of a hindsight sample have their action hidden."""
    obs_scores: torch.Tensor
    """Uniform ``[B, T]``: likewise for hidden observations."""
    members: tuple[torch.Tensor, ...] | None = None
    """Per entry of :data:`GROUPS`, the rows of its samples (long ``[n_g]``); None: found from ``group``,
    which must then be on the host (finding them on a GPU would wait for it)."""

    def rows(self, part: slice) -> MaskDraw:
        """The draws of the samples in ``part``."""
        return MaskDraw(self.group[part], self.act_scores[part], self.obs_scores[part])

    def group_rows(self) -> tuple[torch.Tensor, ...]:
        """Per entry of :data:`GROUPS`, the sorted rows of its samples (long ``[n_g]``)."""
        if self.members is not None:
            return self.members
        if self.group.device.type != "cpu":
            raise ValueError("a MaskDraw moved to a device without its members: use MaskDraw.to")
        return tuple(torch.nonzero(self.group == index).flatten() for index in range(len(GROUPS)))

    def to(self, device: torch.device) -> MaskDraw:
        """This draw on ``device``, its groups' rows found on the host first and every copy asynchronous
        (:func:`~maskctrl.devices.to_device`): selecting a group's rows then never waits for the GPU."""
        return MaskDraw(
            to_device(self.group, device),
            to_device(self.act_scores, device),
            to_device(self.obs_scores, device),
            tuple(to_device(rows, device) for rows in self.group_rows()),
        )

    def hidden(self, valid: torch.Tensor, weights: ObjectiveWeights) -> torch.Tensor:
        """Hidden-token flags ``[B, 2T]`` on ``valid``'s device, given the real steps ``valid [B, T]``.

        As :func:`maskctrl.models.masks.random_token_mask`: ``round(ratio * T)`` (at least one) real steps
        per hindsight sample, never padding and never the first real observation; other groups hide nothing.
        """
        device, steps = valid.device, valid.shape[1]

        def lowest(scores: torch.Tensor, ratio: float) -> torch.Tensor:
            count = 0 if ratio == 0.0 else max(1, round(ratio * steps))
            ranks = scores.to(device).masked_fill(~valid, 2.0).argsort(1).argsort(1)  # padding ranks last
            return (ranks < count) & valid

        act = lowest(self.act_scores, weights.act_mask_ratio)
        obs = lowest(self.obs_scores, weights.obs_mask_ratio)
        obs &= ~masks.first_valid_step(valid)
        hindsight = (self.group.to(device) == GROUPS.index("hindsight")).unsqueeze(1)  # [B, 1]
        return masks.interleave(obs, act) & hindsight


def draw_masks(
    batch: int, steps: int, weights: ObjectiveWeights, generator: torch.Generator | None
) -> MaskDraw:
    """Objective groups (:func:`assign_groups`) and hiding scores for ``batch`` samples of ``steps`` steps."""
    members = assign_groups(batch, weights, generator)
    group = torch.empty(batch, dtype=torch.long)
    for index, rows in enumerate(members):
        group[rows] = index
    act_scores = torch.rand(batch, steps, generator=generator)
    obs_scores = torch.rand(batch, steps, generator=generator)
    return MaskDraw(group, act_scores, obs_scores)


@functools.lru_cache(maxsize=16)
def _group_attention(length: int, inverse_k: int, device: torch.device) -> torch.Tensor:
    """Attention masks ``[3, L, L]`` of the groups, in the order of :data:`GROUPS` (cached per device)."""
    patterns = [
        masks.causal(length),
        masks.inverse_dynamics(length, k=inverse_k),
        masks.bidirectional(length),
    ]
    return torch.stack(patterns).to(device)


def _squared_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-position MSE ``[B, T]`` of ``[B, T, C]`` predictions."""
    return (pred.float() - target).square().mean(-1)


def _action_error(pred: torch.Tensor, target: torch.Tensor, discrete: bool) -> torch.Tensor:
    """Per-position loss ``[B, T]``: cross-entropy for discrete actions, MSE otherwise."""
    if discrete:
        error = F.cross_entropy(pred.flatten(0, 1), target.long().flatten(), reduction="none")
        return error.view(target.shape)
    return _squared_error(pred, target)


def loss_sums(
    model: MaskedControlTransformer, batch: WindowBatch, draw: MaskDraw, weights: ObjectiveWeights
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each switched-on loss summed over its positions, from one forward pass of ``model``.

    Every switched-on head runs even on an empty group, so each of its parameters gets a gradient.

    :param batch: normalized windows; padding positions are never part of a loss.
    :param draw: the groups and hiding scores of ``batch``'s samples (see :func:`draw_masks`).
    :param weights: which losses are on and how the hindsight group masks.
    :return: sums ``S_i`` and float counts ``N_i`` of positions, both ``[n_terms]`` in the order of
        ``weights.terms``; :meth:`LossOutput.from_sums` turns them into losses.
    """
    device, valid = batch.obs.device, batch.valid
    hidden = draw.hidden(valid, weights)  # [B, 2T]
    patterns = _group_attention(2 * valid.shape[1], weights.inverse_k, device)
    attn_mask = patterns[draw.group.to(device)].unsqueeze(1)  # [B, 1, L, L]
    out = model(batch.obs, batch.act, attn_mask=attn_mask, hidden=hidden, valid=valid)

    heads, discrete = model.heads, model.config.discrete_actions
    act_h, obs_h = out.act_hidden, out.obs_hidden  # [B, T, D]
    fwd, inv, hind = (rows.to(device) for rows in draw.group_rows())
    # Targets at padding are zeroed: a NaN there would reach the gradients through the masked sum.
    pad = ~valid.unsqueeze(-1)
    obs_t, delta_t = batch.obs.masked_fill(pad, 0.0), batch.forward_target.masked_fill(pad, 0.0)
    act_t = batch.act.masked_fill(pad if batch.act.dim() == 3 else ~valid, 0)
    rew_t = batch.rew.masked_fill(~valid, 0.0).unsqueeze(-1)  # [B, T, 1]
    transitions = valid[:, 1:] & valid[:, :-1]  # [B, T-1] both ends of t -> t+1 are real

    on = weights.terms
    errors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (error, where it counts) [b, T]
    if "forward" in on:
        errors["forward"] = _squared_error(heads.delta_obs(act_h[fwd]), delta_t[fwd]), valid[fwd]
    if "reward" in on:
        errors["reward"] = _squared_error(heads.reward(act_h[fwd]), rew_t[fwd]), valid[fwd]
    if "policy" in on:
        errors["policy"] = _action_error(heads.policy(obs_h[fwd]), act_t[fwd], discrete), valid[fwd]
    if "inverse" in on:  # o_{t+1} -> a_t for t = 0..T-2
        error = _action_error(heads.inverse(obs_h[inv][:, 1:]), act_t[inv][:, :-1], discrete)
        errors["inverse"] = error, transitions[inv]
    if "hindsight" in on:
        error = _action_error(heads.recon_action(act_h[hind]), act_t[hind], discrete)
        errors["hindsight"] = error, hidden[hind][:, 1::2]
    if "hindsight_obs" in on:
        error = _squared_error(heads.recon_obs(obs_h[hind]), obs_t[hind])
        errors["hindsight_obs"] = error, hidden[hind][:, 0::2]
    kept = [errors[name] for name in on]
    sums = torch.stack([torch.where(keep, error, 0.0).sum() for error, keep in kept])
    counts = torch.stack([keep.sum() for _, keep in kept]).float()
    return sums, counts


def pretraining_loss(
    model: MaskedControlTransformer,
    batch: WindowBatch,
    *,
    weights: ObjectiveWeights | None = None,
    generator: torch.Generator | None = None,
) -> LossOutput:
    """All switched-on pretraining losses from one forward pass of ``model``, averaged over ``batch``.

    :param batch: normalized windows; padding positions are never part of a loss.
    :param weights: loss weights and masking ratios (default :class:`ObjectiveWeights`).
    :param generator: a CPU generator for the group split and the hidden tokens (drawn on the host).
    """
    weights = ObjectiveWeights() if weights is None else weights
    draw = draw_masks(batch.valid.shape[0], batch.valid.shape[1], weights, generator)
    sums, counts = loss_sums(model, batch, draw, weights)
    return LossOutput.from_sums(sums, counts, weights)
