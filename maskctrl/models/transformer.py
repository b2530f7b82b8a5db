"""The masked control transformer: one backbone for dynamics, inverse dynamics, hindsight and policy.

A window of T steps becomes L = 2T tokens, the observation of step t at index 2t and its action at 2t + 1
(see :mod:`maskctrl.models.masks`). Each token is a linear embedding of its (normalized) value plus a
modality embedding and a timestep embedding. Pre-LN blocks attend under a boolean mask (``True`` = may
attend), shared ``[L, L]`` or per sample ``[B, 1, L, L]``, so that the pretraining objectives of one batch
can each use their own mask in a single forward pass. Queries and keys are also rotated by their token
index (RoPE, ``config.rotary``): relative offsets such as "the observation after this action" are then
easy to attend to under bidirectional masks, which learned absolute timesteps alone make slow to learn.
Heads read the final hidden states:

==============  ==========================  ==============================================
head            read at                     predicts
==============  ==========================  ==============================================
delta_obs       action token a_t            o_{t+1} - o_t (in the units of the training target)
reward          action token a_t            r_t
policy          observation token o_t       a_t (logits for discrete actions)
inverse         observation token o_{t+1}   a_t (output index t + 1 predicts a_t)
recon_action    (hidden) action token       that action
recon_obs       (hidden) observation token  that observation
==============  ==========================  ==============================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from maskctrl.models import masks

_MASK_FILLS = ("learned", "constant")


@dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """Shape and size of a :class:`MaskedControlTransformer`."""

    obs_dim: int
    """Observation size O."""
    act_dim: int
    """Action size A (for discrete actions: the number of actions)."""
    discrete_actions: bool = False
    """Whether actions are integers in ``[0, act_dim)`` (cross-entropy) instead of vectors (MSE)."""
    context_len: int = 16
    """Most steps T in one window; sets the size of the timestep embedding."""
    n_layer: int = 4
    """Number of transformer blocks."""
    n_head: int = 4
    """Attention heads per block."""
    d_model: int = 128
    """Token width D."""
    mlp_ratio: int = 4
    """Hidden width of each block's MLP, as a multiple of D."""
    dropout: float = 0.0
    """Dropout on attention weights and residual branches during training."""
    mask_fill: str = "learned"
    """How hidden tokens are filled: ``"learned"`` [MASK] embedding per modality or ``"constant"``."""
    mask_value: float = -1.0
    """Fill value for hidden inputs when ``mask_fill == "constant"`` (the reference article uses -1)."""
    rotary: bool = True
    """Rotate queries and keys by their token index (RoPE) besides the timestep embedding."""
    rotary_base: float = 100.0
    """Base of the rotary angles' geometric frequency range (windows are short)."""

    def __post_init__(self) -> None:
        for name in ("obs_dim", "act_dim", "context_len", "n_layer", "n_head", "d_model", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"TransformerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_head != 0:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.rotary and (self.d_model // self.n_head) % 2 != 0:
            raise ValueError(f"rotary embeddings need an even head size, got {self.d_model // self.n_head}")
        if self.mask_fill not in _MASK_FILLS:
            raise ValueError(f"mask_fill must be one of {_MASK_FILLS}, got {self.mask_fill!r}")


Rotary = tuple[torch.Tensor, torch.Tensor]
"""Cosines and sines ``[L, hd]`` of the rotary angles at L token positions (each repeated for both halves)."""


def rotate(x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
    """Apply rotary position embeddings to queries or keys ``[..., L, hd]`` (halves rotated as pairs).

    ``rotary``: cos and sin ``[L, hd]``, each frequency's value repeated for both halves, so that the
    rotation is ``x * cos + (-x2, x1) * sin`` in five kernels.
    """
    cos, sin = rotary
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class SelfAttention(nn.Module):
    """Multi-head self-attention under an explicit boolean mask."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.resid_dropout = nn.Dropout(config.dropout)

    def split_heads(
        self, x: torch.Tensor, rotary: Rotary | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project ``x [..., L, D]`` to (rotated) queries, keys and values ``[..., h, L, D/h]`` each."""
        *lead, length, width = x.shape
        qkv = self.qkv(x).view(*lead, length, 3, self.n_head, width // self.n_head)  # [..., L, 3, h, hd]
        qkv = qkv.movedim(-3, 0).transpose(-3, -2)  # [3, ..., h, L, hd]
        if rotary is None:
            q, k, v = qkv.unbind(0)
            return q, k, v
        qk = rotate(qkv[:2], rotary)  # queries and keys in one pass (half the kernels of two)
        return qk[0], qk[1], qkv[2]

    def merge_heads(self, y: torch.Tensor) -> torch.Tensor:
        """Merge ``y [..., h, L, hd]`` back into tokens and project: ``[..., L, D]``."""
        y = y.transpose(-3, -2).flatten(-2)  # [..., L, h*hd]
        return self.resid_dropout(self.proj(y))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, rotary: Rotary | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attend ``x [B, L, D]`` under ``mask`` (bool ``[L, L]`` or ``[B, 1, L, L]``).

        :return: the output ``[B, L, D]`` and the keys and values ``[B, h, L, hd]`` (for a KV cache).
        """
        q, k, v = self.split_heads(x, rotary)
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)  # [B, h, L, hd]
        return self.merge_heads(y), k, v


class MLP(nn.Module):
    """The position-wise feed-forward part of a block."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.mlp_ratio * config.d_model)
        self.proj = nn.Linear(config.mlp_ratio * config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., D] -> [..., D]``."""
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """A pre-LayerNorm transformer block."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, rotary: Rotary | None = None) -> torch.Tensor:
        """``x [B, L, D]`` under an attention mask -> ``[B, L, D]``."""
        return self.forward_kv(x, mask, rotary)[0]

    def forward_kv(
        self, x: torch.Tensor, mask: torch.Tensor, rotary: Rotary | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like :meth:`forward`, also returning this block's keys and values ``[B, h, L, hd]``."""
        y, k, v = self.attn(self.ln_1(x), mask, rotary)
        x = x + y
        return x + self.mlp(self.ln_2(x)), k, v


def with_pending_action(act: torch.Tensor, steps: int) -> torch.Tensor:
    """Actions for ``steps`` steps: ``act`` itself, or, if it holds ``steps - 1``, with a zero placeholder
    appended for the action not chosen yet (which no causal prediction of the last observation sees)."""
    if act.dim() >= 2 and act.shape[1] == steps - 1:
        return torch.cat([act, act.new_zeros(act.shape[0], 1, *act.shape[2:])], dim=1)  # [B, T(, A)]
    return act


def _head(width: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, out))


class Heads(nn.Module):
    """The prediction heads; each maps hidden states ``[..., D]`` to its prediction ``[..., out]``."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        d, o, a = config.d_model, config.obs_dim, config.act_dim
        self.delta_obs = _head(d, o)
        self.reward = _head(d, 1)
        self.policy = _head(d, a)
        self.inverse = _head(d, a)
        self.recon_action = _head(d, a)
        self.recon_obs = _head(d, o)


@dataclass
class ModelOutput:
    """Final hidden states of a forward pass; each head's prediction is computed on first access.

    Predictions are made at every step; positions that a loss should not use (padding, tokens that were
    not hidden, the first step of ``inverse``) are for the caller to ignore.
    """

    hidden: torch.Tensor
    """Final (LayerNorm-ed) hidden states ``[B, 2T, D]``."""
    heads: Heads
    """The model's heads."""

    @property
    def obs_hidden(self) -> torch.Tensor:
        """Hidden states at observation tokens ``[B, T, D]``."""
        return self.hidden[:, 0::2]

    @property
    def act_hidden(self) -> torch.Tensor:
        """Hidden states at action tokens ``[B, T, D]``."""
        return self.hidden[:, 1::2]

    @cached_property
    def delta_obs(self) -> torch.Tensor:
        """``o_{t+1} - o_t`` read at a_t: ``[B, T, O]``."""
        return self.heads.delta_obs(self.act_hidden)

    @cached_property
    def reward(self) -> torch.Tensor:
        """``r_t`` read at a_t: ``[B, T]``."""
        return self.heads.reward(self.act_hidden).squeeze(-1)

    @cached_property
    def policy(self) -> torch.Tensor:
        """``a_t`` read at o_t: ``[B, T, A]`` (logits for discrete actions)."""
        return self.heads.policy(self.obs_hidden)

    @cached_property
    def inverse(self) -> torch.Tensor:
        """``a_t`` read at o_{t+1}: ``[B, T, A]``; index ``t + 1`` predicts ``a_t``, index 0 is unused."""
        return self.heads.inverse(self.obs_hidden)

    @cached_property
    def recon_action(self) -> torch.Tensor:
        """Each action reconstructed at its own token: ``[B, T, A]``."""
        return self.heads.recon_action(self.act_hidden)

    @cached_property
    def recon_obs(self) -> torch.Tensor:
        """Each observation reconstructed at its own token: ``[B, T, O]``."""
        return self.heads.recon_obs(self.obs_hidden)


class MaskedControlTransformer(nn.Module):
    """A transformer over interleaved observation/action tokens with per-sample attention and token masks.

    :param config: sizes and options; kept as ``self.config`` so that a checkpoint can rebuild the model
        with ``MaskedControlTransformer(TransformerConfig(**cfg))``. No weights are tied.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.obs_embed = nn.Linear(config.obs_dim, d)
        self.act_embed: nn.Module
        if config.discrete_actions:
            # With a constant fill, hidden discrete actions take the extra index act_dim (a [MASK] class).
            extra = 1 if config.mask_fill == "constant" else 0
            self.act_embed = nn.Embedding(config.act_dim + extra, d)
        else:
            self.act_embed = nn.Linear(config.act_dim, d)
        self.modality = nn.Parameter(torch.zeros(2, d))  # [obs, act]
        self.timestep = nn.Embedding(config.context_len, d)
        self.mask_token = nn.Parameter(torch.zeros(2, d)) if config.mask_fill == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(d)
        self.heads = Heads(config)
        half = config.d_model // config.n_head // 2
        frequency = config.rotary_base ** (-torch.arange(half) / half)  # [hd/2]
        angle = torch.arange(2 * config.context_len).unsqueeze(1) * frequency  # [2C, hd/2] per token index
        angle = torch.cat([angle, angle], dim=1)  # [2C, hd]: both halves of a pair turn together
        self.rotary_cos: torch.Tensor
        self.rotary_sin: torch.Tensor
        self.register_buffer("rotary_cos", angle.cos(), persistent=False)
        self.register_buffer("rotary_sin", angle.sin(), persistent=False)
        self.apply(self._init_weights)
        for name, param in self.named_parameters():
            if name.endswith("proj.weight"):  # residual projections, scaled as in GPT-2
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        nn.init.normal_(self.modality, std=0.02)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def feature_dim(self) -> int:
        """Size of the vector returned by :meth:`encode_features` (``D``)."""
        return self.config.d_model

    def rotary_at(self, positions: torch.Tensor) -> Rotary | None:
        """Rotary tables for window token indices ``positions [L]`` (None when ``config.rotary`` is off)."""
        if not self.config.rotary:
            return None
        return self.rotary_cos[positions], self.rotary_sin[positions]

    # --- tokens -------------------------------------------------------------------------------------

    def embed_obs(
        self, obs: torch.Tensor, step: torch.Tensor | int, hidden: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Observation tokens ``[..., D]`` from values ``[..., O]`` at window timestep(s) ``step``.

        :param hidden: optional bool ``[...]``; True replaces the value so that it cannot leak.
        """
        if hidden is not None:
            fill = self.config.mask_value if self.mask_token is None else 0.0
            obs = obs.masked_fill(hidden.unsqueeze(-1), fill)
        value = self.obs_embed(obs)
        if hidden is not None and self.mask_token is not None:
            value = torch.where(hidden.unsqueeze(-1), self.mask_token[0], value)
        return value + self.modality[0] + self._time(step)

    def embed_act(
        self, act: torch.Tensor, step: torch.Tensor | int, hidden: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Action tokens ``[..., D]`` from values ``[..., A]`` (or indices ``[...]``) at timestep(s) ``step``.

        :param hidden: optional bool ``[...]``; True replaces the value so that it cannot leak.
        """
        discrete = self.config.discrete_actions
        if hidden is not None:
            if discrete:
                fill = self.config.act_dim if self.mask_token is None else 0
                act = act.masked_fill(hidden, fill)
            else:
                fill_value = self.config.mask_value if self.mask_token is None else 0.0
                act = act.masked_fill(hidden.unsqueeze(-1), fill_value)
        value = self.act_embed(act.long() if discrete else act)
        if hidden is not None and self.mask_token is not None:
            value = torch.where(hidden.unsqueeze(-1), self.mask_token[1], value)
        return value + self.modality[1] + self._time(step)

    def _time(self, step: torch.Tensor | int) -> torch.Tensor:
        """Timestep embedding ``[..., D]`` of window timestep(s) ``step`` (an int gives ``[D]``)."""
        if isinstance(step, int):
            if not 0 <= step < self.config.context_len:
                raise ValueError(f"timestep {step} is outside the context [0, {self.config.context_len})")
            # A row of the table, not self.timestep(torch.tensor(step, device=...)): the same values and
            # gradient without a blocking host-to-device copy per decoded token on CUDA.
            return self.timestep.weight[step]
        return self.timestep(step)

    def tokens(
        self,
        obs: torch.Tensor,
        act: torch.Tensor,
        *,
        hidden: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        t0: int = 0,
    ) -> torch.Tensor:
        """Interleaved input tokens ``[B, 2T, D]`` (before dropout); see :meth:`forward` for arguments."""
        batch, steps = self._check_window(obs, act, t0)
        if valid is not None:
            if valid.shape != (batch, steps) or valid.dtype != torch.bool:
                raise ValueError(
                    f"expected valid of shape {(batch, steps)} (bool), got {tuple(valid.shape)} ({valid.dtype})"
                )
            # Padding must be finite: a NaN there would survive a zero attention weight (0 * NaN).
            obs = obs.masked_fill(~valid.unsqueeze(-1), 0.0)
            act = act.masked_fill(~valid.unsqueeze(-1) if act.dim() == 3 else ~valid, 0)
        hidden_obs = hidden_act = None
        if hidden is not None:
            if hidden.shape != (batch, 2 * steps):
                raise ValueError(f"expected hidden of shape {(batch, 2 * steps)}, got {tuple(hidden.shape)}")
            hidden_obs, hidden_act = hidden[:, 0::2], hidden[:, 1::2]
        step = torch.arange(t0, t0 + steps, device=obs.device)  # [T]
        obs_tok = self.embed_obs(obs, step, hidden_obs)  # [B, T, D]
        act_tok = self.embed_act(act, step, hidden_act)  # [B, T, D]
        return torch.stack([obs_tok, act_tok], dim=2).flatten(1, 2)  # [B, T, 2, D] -> [B, 2T, D]

    def _check_window(self, obs: torch.Tensor, act: torch.Tensor, t0: int) -> tuple[int, int]:
        cfg = self.config
        if obs.dim() != 3 or obs.shape[-1] != cfg.obs_dim:
            raise ValueError(f"expected obs of shape [B, T, {cfg.obs_dim}], got {tuple(obs.shape)}")
        batch, steps = obs.shape[:2]
        want = (batch, steps) if cfg.discrete_actions else (batch, steps, cfg.act_dim)
        if tuple(act.shape) != want:
            kind = "discrete action indices" if cfg.discrete_actions else "actions"
            raise ValueError(f"expected {kind} of shape {want}, got {tuple(act.shape)}")
        # A mismatch would otherwise surface deep inside as torch's "mat1 and mat2 must have the same dtype".
        dtype = self.obs_embed.weight.dtype
        for name, value in (("obs", obs), ("actions", None if cfg.discrete_actions else act)):
            if value is not None and value.dtype != dtype:
                raise ValueError(
                    f"expected {name} of dtype {dtype} (the model's), got {value.dtype}; convert with "
                    f".to({dtype})"
                )
        if t0 < 0 or t0 + steps > cfg.context_len:
            raise ValueError(
                f"window of {steps} steps starting at timestep {t0} exceeds context_len={cfg.context_len}"
            )
        return batch, steps

    # --- forward ------------------------------------------------------------------------------------

    def forward(
        self,
        obs: torch.Tensor,
        act: torch.Tensor,
        *,
        attn_mask: torch.Tensor | None = None,
        hidden: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        t0: int = 0,
    ) -> ModelOutput:
        """Run the transformer over a window.

        :param obs: normalized observations ``[B, T, O]``.
        :param act: actions ``[B, T, A]`` (float) or ``[B, T]`` (long, discrete).
        :param attn_mask: bool ``[2T, 2T]`` or ``[B, 1, 2T, 2T]``, True = may attend; default causal.
        :param hidden: bool token flags ``[B, 2T]``, True = the token's value is hidden from the model.
        :param valid: bool ``[B, T]``, False for padding steps; their keys are masked out for every query.
        :param t0: timestep of the first step in the window (for windows that continue an earlier one).
        :return: the final hidden states with lazily computed head predictions.
        """
        x = self.drop(self.tokens(obs, act, hidden=hidden, valid=valid, t0=t0))  # [B, L, D]
        length = x.shape[1]
        mask = masks.causal(length, device=x.device) if attn_mask is None else attn_mask.to(x.device)
        if mask.shape[-2:] != (length, length):
            raise ValueError(f"attn_mask is {tuple(mask.shape)}, expected [.., {length}, {length}]")
        if valid is not None:
            mask = masks.with_key_padding(mask, masks.step_tokens(valid))  # [B, 1, L, L]
        rotary = self.rotary_at(torch.arange(2 * t0, 2 * t0 + length, device=x.device))
        for block in self.blocks:
            x = block(x, mask, rotary)
        return ModelOutput(hidden=self.ln_f(x), heads=self.heads)

    def encode_features(
        self, obs: torch.Tensor, act: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One feature vector per window: the causal hidden state of the last observation token ``[B, D]``.

        :param obs: observations ``[B, T, O]``; ``obs[:, -1]`` is the current one.
        :param act: actions of T steps (the last is not looked at: causally, o_t does not see a_t) or of
            ``T - 1`` steps.
        :param valid: bool ``[B, T]`` marking real (non-padding) steps.
        """
        act = with_pending_action(act, obs.shape[1])
        return self(obs, act, valid=valid).hidden[:, -2]
