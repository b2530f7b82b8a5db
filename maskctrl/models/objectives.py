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
continuous actions, cross-entropy for discrete actions. ``L_total = sum_i w_i L_i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from maskctrl.models import masks
from maskctrl.models.transformer import MaskedControlTransformer

GROUPS = ("forward", "inverse", "hindsight")
"""The objective groups, in the order of their index in :func:`assign_groups`."""


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
        """The switched-on losses and their weights (a hindsight loss needs tokens of its kind hidden)."""
        weights = {
            "forward": self.forward,
            "inverse": self.inverse,
            "hindsight": self.hindsight if self.act_mask_ratio > 0 else 0.0,
            "hindsight_obs": self.hindsight_obs if self.obs_mask_ratio > 0 else 0.0,
            "reward": self.reward,
            "policy": self.policy,
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


def _masked_mean(err: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return torch.where(keep, err, 0.0).sum() / keep.sum().clamp_min(1)


def _action_error(model: MaskedControlTransformer, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-position loss ``[B, T]``: cross-entropy for discrete actions, MSE otherwise."""
    if model.config.discrete_actions:
        return F.cross_entropy(pred.flatten(0, 1), target.long().flatten(), reduction="none").view(
            target.shape
        )
    return (pred - target).square().mean(-1)


def pretraining_loss(
    model: MaskedControlTransformer,
    batch: WindowBatch,
    *,
    weights: ObjectiveWeights | None = None,
    generator: torch.Generator | None = None,
) -> LossOutput:
    """All switched-on pretraining losses from one forward pass of ``model``.

    :param batch: normalized windows; padding positions are never part of a loss.
    :param weights: loss weights and masking ratios (default :class:`ObjectiveWeights`).
    :param generator: a CPU generator for the group split and the hidden tokens (drawn on the host).
    """
    weights = ObjectiveWeights() if weights is None else weights
    device = batch.obs.device
    size, steps = batch.valid.shape
    length = 2 * steps
    rows = assign_groups(size, weights, generator)
    group = torch.empty(size, dtype=torch.long)  # [B] group index of each sample, on the host
    for index, members in enumerate(rows):
        group[members] = index
    patterns = torch.stack(
        [
            masks.causal(length),
            masks.inverse_dynamics(length, k=weights.inverse_k),
            masks.bidirectional(length),
        ]
    )  # [3, L, L], in the order of GROUPS
    attn_mask = patterns[group].unsqueeze(1).to(device)  # [B, 1, L, L]
    hidden = masks.random_token_mask(
        size,
        steps,
        act_ratio=weights.act_mask_ratio,
        obs_ratio=weights.obs_mask_ratio,
        generator=generator,
        valid_steps=batch.valid.cpu(),
    )
    hidden = (hidden & (group == GROUPS.index("hindsight")).unsqueeze(1)).to(device)  # [B, 2T]
    out = model(batch.obs, batch.act, attn_mask=attn_mask, hidden=hidden, valid=batch.valid)

    heads, on = model.heads, weights.terms
    valid = batch.valid
    # Targets at padding are zeroed: a NaN there would reach the gradients through the masked mean.
    obs_t = batch.obs.masked_fill(~valid.unsqueeze(-1), 0.0)
    act_t = batch.act.masked_fill(~valid.unsqueeze(-1) if batch.act.dim() == 3 else ~valid, 0)
    terms: dict[str, torch.Tensor] = {}
    fwd, inv, hind = (r.to(device) for r in rows)
    if "forward" in on or "reward" in on or "policy" in on:
        act_h, obs_h, keep = out.act_hidden[fwd], out.obs_hidden[fwd], valid[fwd]  # [Bf, T, D], [Bf, T]
        if "forward" in on:
            target = batch.forward_target[fwd].masked_fill(~keep.unsqueeze(-1), 0.0)
            terms["forward"] = _masked_mean((heads.delta_obs(act_h) - target).square().mean(-1), keep)
        if "reward" in on:
            target = batch.rew[fwd].masked_fill(~keep, 0.0)
            terms["reward"] = _masked_mean((heads.reward(act_h).squeeze(-1) - target).square(), keep)
        if "policy" in on:
            terms["policy"] = _masked_mean(_action_error(model, heads.policy(obs_h), act_t[fwd]), keep)
    if "inverse" in on:
        obs_h = out.obs_hidden[inv][:, 1:]  # [Bi, T-1, D]: o_{t+1} for t = 0..T-2
        keep = valid[inv][:, 1:] & valid[inv][:, :-1]  # both ends of the transition are real
        error = _action_error(model, heads.inverse(obs_h), act_t[inv][:, :-1])
        terms["inverse"] = _masked_mean(error, keep)
    if "hindsight" in on:
        keep = hidden[hind][:, 1::2]  # [Bh, T] hidden actions
        error = _action_error(model, heads.recon_action(out.act_hidden[hind]), act_t[hind])
        terms["hindsight"] = _masked_mean(error, keep)
    if "hindsight_obs" in on:
        keep = hidden[hind][:, 0::2]  # [Bh, T] hidden observations
        error = (heads.recon_obs(out.obs_hidden[hind]) - obs_t[hind]).square().mean(-1)
        terms["hindsight_obs"] = _masked_mean(error, keep)
    total = sum((on[name] * value for name, value in terms.items()), start=torch.zeros((), device=device))
    return LossOutput(total=total, terms=terms)
