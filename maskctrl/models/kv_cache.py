"""Shared-prefix KV cache: encode a real history once, roll N candidate action sequences out from it.

An MPC step asks the same question N times: "from this history, what happens under action sequence n?".
The history prefix ``o_0, a_0, ..., o_{K-1}`` (2K - 1 tokens) is encoded once per environment
(:func:`encode_prefix`); :meth:`PrefixCache.expand` then makes a :class:`DecodeCache` for N candidates
that *refers* to the prefix keys and values instead of copying them, plus pre-allocated per-candidate
buffers for the imagined tokens. Attention of an imagined token is split in two parts, concatenated
before the softmax: the scores against the prefix come from one matmul against the un-expanded prefix
(the N candidates are folded into the query length), the scores against the candidate's own imagined
tokens from a batched matmul against its buffer.

:func:`imagine` rolls out autoregressively with two tokens per imagined step (the predicted observation
and the next candidate action); :func:`imagine_recompute` is the reference that re-runs the whole window
every step. Both run without autograd: the cache is for inference. Two savings keep the results
(up to float rounding): the final block runs attention and MLP for the last new token only (``last_only``,
since only the action token's output is read), and :class:`FoldedProjections` projects new tokens with
the rotary rotation folded into per-position weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch

from maskctrl.models import masks
from maskctrl.models.transformer import Block, MaskedControlTransformer, Rotary, rotate, with_pending_action

NextObsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""Maps ``(obs [..., O], predicted delta [..., O])`` to the next observation token ``[..., O]``."""


@dataclass(frozen=True)
class Imagination:
    """An imagined rollout: ``[N, H, ...]`` for one history, ``[B, N, H, ...]`` for B histories."""

    next_obs: torch.Tensor
    """Observation after each candidate action ``[..., H, O]`` (the tokens fed back to the model)."""
    delta_obs: torch.Tensor
    """The delta head's prediction at each action ``[..., H, O]``."""
    reward: torch.Tensor
    """The reward head's prediction at each action ``[..., H]``."""


@dataclass(frozen=True)
class PrefixCache:
    """Keys and values of B encoded history prefixes (``P = 2K - 1`` tokens each), per layer."""

    keys: list[torch.Tensor]
    """Per layer ``[B, h, P, hd]``."""
    values: list[torch.Tensor]
    """Per layer ``[B, h, P, hd]``."""
    key_bias: torch.Tensor
    """Additive attention bias of the prefix keys ``[B, 1, 1, 1, P]``: 0, or -inf for padding."""
    last_obs: torch.Tensor
    """The current observation of each history ``[B, O]``, where imagination starts."""
    next_step: int
    """Timestep of the first token to decode: the pending action of the last history step (K - 1)."""

    def expand(self, n: int, max_new_tokens: int, *, buffers: DecodeBuffers | None = None) -> DecodeCache:
        """Share this prefix among ``n`` candidates per history, with room for ``max_new_tokens`` each.

        The prefix tensors are referenced, not copied; only the buffers for new tokens are allocated, or
        taken from ``buffers`` (reused across rollouts: writing into memory that was just used is faster
        than into fresh pages; decoding writes every token before reading it).
        """
        if n < 1 or max_new_tokens < 1:
            raise ValueError(f"need n >= 1 candidates and max_new_tokens >= 1, got {n} and {max_new_tokens}")
        batch, n_head, _, head_dim = self.keys[0].shape
        shape = (batch, n_head, n, max_new_tokens, head_dim)  # [B, h, N, S, hd]
        like = self.keys[0]
        if buffers is None:
            keys = [like.new_empty(shape) for _ in self.keys]
            values = [like.new_empty(shape) for _ in self.values]
        else:
            keys, values = buffers.get(shape, len(self.keys), like)
        return DecodeCache(prefix=self, n=n, keys=keys, values=values)


class DecodeBuffers:
    """Per-candidate key and value buffers kept for reuse by :meth:`PrefixCache.expand`, per shape.

    :param max_shapes: buffer sets kept; a new shape beyond it drops the others.
    """

    def __init__(self, max_shapes: int = 4) -> None:
        self.max_shapes = max_shapes
        self._sets: dict[tuple[Any, ...], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    def get(
        self, shape: tuple[int, ...], n_layer: int, like: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Keys and values ``[n_layer]`` of ``shape`` with ``like``'s dtype and device, reused if kept."""
        key = (shape, n_layer, like.dtype, like.device)
        found = self._sets.get(key)
        if found is None:
            if len(self._sets) >= self.max_shapes:
                self._sets.clear()
            found = self._sets[key] = (
                [like.new_empty(shape) for _ in range(n_layer)],
                [like.new_empty(shape) for _ in range(n_layer)],
            )
        return found


@dataclass
class DecodeCache:
    """Per-candidate keys and values of imagined tokens on top of a shared :class:`PrefixCache`."""

    prefix: PrefixCache
    """The shared history (not copied)."""
    n: int
    """Candidates per history N."""
    keys: list[torch.Tensor]
    """Per layer ``[B, h, N, S, hd]`` buffers; the first :attr:`length` tokens are filled."""
    values: list[torch.Tensor]
    """Per layer ``[B, h, N, S, hd]``."""
    length: int = 0
    """Number of imagined tokens decoded so far."""

    def next_position(self, q_len: int) -> int:
        """Window token index of the next new token, after checking that ``q_len`` more tokens fit."""
        capacity = self.keys[0].shape[3]
        if self.length + q_len > capacity:
            raise ValueError(f"decode cache holds {capacity} tokens, {self.length} used, {q_len} more given")
        return self.prefix.keys[0].shape[2] + self.length

    def zero_values(self) -> None:
        """Zero the value buffers: :func:`decode_fixed` reads every slot (empty ones with weight 0,
        and ``0 * nan`` would be nan if a buffer kept a non-finite value from an earlier rollout)."""
        for values in self.values:
            values.zero_()


class FoldedProjections:
    """Each block's query/key/value projection per token position, with the rotary rotation and the
    attention scale ``1/sqrt(hd)`` folded into the weights.

    The rotation of a query or key is linear in it, so ``rotate(W x + b) = (R_p W) x + R_p b`` for the
    position's rotation ``R_p``: decoding then projects each new token with one batched matmul and skips
    the rotary and scaling kernels (about a tenth of a CPU rollout's time with the default HalfCheetah
    model). Tables are built lazily for the positions decoded and kept; they are a snapshot of the
    weights, so make a new instance after changing them.
    """

    def __init__(self, model: MaskedControlTransformer) -> None:
        self.model = model
        self._tables: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    @torch.no_grad()
    def at(self, first: int, q_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per block, weights ``[q, D, 3D]`` and biases ``[q, 1, 3D]`` for token positions
        ``first .. first + q_len - 1`` of the window (for ``torch.baddbmm``)."""
        key = (first, q_len)
        tables = self._tables.get(key)
        if tables is None:
            tables = self._tables[key] = [self._fold(block, first, q_len) for block in _blocks(self.model)]
        return tables

    def _fold(self, block: Block, first: int, q_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        attn = block.attn
        weight, bias = attn.qkv.weight, attn.qkv.bias  # [3D, D], [3D]
        width = weight.shape[1]
        n_head = attn.n_head
        head_dim = width // n_head
        rotary = self.model.rotary_at(torch.arange(first, first + q_len, device=weight.device))
        w = weight.t().reshape(1, width, 3, n_head, head_dim).expand(q_len, -1, -1, -1, -1)
        b = bias.reshape(1, 1, 3, n_head, head_dim).expand(q_len, -1, -1, -1, -1)
        scale = torch.tensor([1.0 / math.sqrt(head_dim), 1.0, 1.0], dtype=weight.dtype, device=weight.device)
        scale = scale.view(1, 1, 3, 1, 1)
        if rotary is not None:  # [q, hd] tables, broadcast over the input channels and the heads
            cos, sin = (t.view(q_len, 1, 1, 1, head_dim) for t in rotary)
            w = torch.cat([rotate(w[:, :, :2], (cos, sin)), w[:, :, 2:]], dim=2)
            b = torch.cat([rotate(b[:, :, :2], (cos, sin)), b[:, :, 2:]], dim=2)
        w, b = (t * scale for t in (w, b))
        return w.reshape(q_len, width, 3 * width).contiguous(), b.reshape(q_len, 1, 3 * width).contiguous()


@torch.no_grad()
def encode_prefix(
    model: MaskedControlTransformer,
    obs: torch.Tensor,
    act: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> PrefixCache:
    """Encode B histories ``o_0, a_0, ..., o_{K-1}`` once (causal attention, left padding allowed).

    :param obs: normalized observations ``[B, K, O]``, oldest first; ``obs[:, -1]`` is the current one.
    :param act: actions ``[B, K - 1, A]``, or ``[B, K, A]`` whose last entry (the action still being
        planned) is ignored; ``[B, K - 1]`` / ``[B, K]`` indices for discrete actions.
    :param valid: bool ``[B, K]``, False for padding before the episode start; the last step must be real.
    """
    if obs.dim() != 3:
        raise ValueError(f"expected history obs of shape [B, K, O], got {tuple(obs.shape)}")
    batch, steps = obs.shape[:2]
    act = with_pending_action(act, steps)  # [B, K(, A)]; a_{K-1} is never looked at
    if act.shape[:2] != (batch, steps):
        raise ValueError(
            f"expected history actions for {steps - 1} or {steps} steps, got {tuple(act.shape)} "
            f"for obs {tuple(obs.shape)}"
        )
    if valid is None:
        valid = torch.ones(batch, steps, dtype=torch.bool, device=obs.device)
    elif valid.shape == (batch, steps) and not bool(valid[:, -1].all()):
        raise ValueError("the last history step (the current observation) must be valid in every row")
    x = model.tokens(obs, act, valid=valid)[:, :-1]  # [B, P, D]: drop the pending action token
    token_valid = masks.step_tokens(valid)[:, :-1]  # [B, P]
    mask = masks.with_key_padding(masks.causal(x.shape[1], device=x.device), token_valid)
    rotary = model.rotary_at(torch.arange(x.shape[1], device=x.device))
    keys, values = [], []
    for block in _blocks(model):
        x, k, v = block.forward_kv(x, mask, rotary)  # k, v: [B, h, P, hd]
        keys.append(k)
        values.append(v)
    bias = torch.zeros(token_valid.shape, dtype=x.dtype, device=x.device)
    bias = bias.masked_fill(~token_valid, float("-inf")).view(batch, 1, 1, 1, -1)  # [B, 1, 1, 1, P]
    return PrefixCache(keys=keys, values=values, key_bias=bias, last_obs=obs[:, -1], next_step=steps - 1)


def _blocks(model: MaskedControlTransformer) -> list[Block]:
    return [cast(Block, block) for block in model.blocks]


def _decode_block(
    block: Block,
    x: torch.Tensor,
    cache: DecodeCache,
    layer: int,
    rotary: Rotary | None,
    later: torch.Tensor | None,
    last_only: bool = False,
    folded: tuple[torch.Tensor, torch.Tensor] | None = None,
    slots: torch.Tensor | None = None,
) -> torch.Tensor:
    """One block over new tokens ``x [B, N, q, D]``, appending their keys and values to the cache.

    ``later``: bool ``[q, S]``, True where a new token must not see an imagined token (None for q = 1).
    ``last_only``: the keys and values of every new token are cached, but attention and MLP run for the
    last token alone and ``[B, N, 1, D]`` is returned (the final block, when only the last token's
    output is read). ``folded``: this block's :class:`FoldedProjections` weights and biases for the new
    tokens' positions (then ``rotary`` is not used). ``slots``: shape-stable mode (see
    :func:`decode_fixed`): the new tokens go to these buffer slots ``[q]``, attention reads the whole
    buffer, and ``later [q, S]`` must cover every slot.
    """
    batch, n, q_len, width = x.shape
    attn = block.attn
    if folded is None:
        q, k, v = attn.split_heads(block.ln_1(x), rotary)  # [B, N, h, q, hd] each
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, h, N, q, hd]
        q = q * (1.0 / math.sqrt(q.shape[-1]))
    else:  # one matmul per token position, rotated and scaled already
        tokens = block.ln_1(x).permute(2, 0, 1, 3).reshape(q_len, batch * n, width)  # [q, B*N, D]
        qkv = torch.baddbmm(folded[1], tokens, folded[0])  # [q, B*N, 3D]
        qkv = qkv.view(q_len, batch, n, 3, attn.n_head, width // attn.n_head)
        q, k, v = qkv.permute(3, 1, 4, 2, 0, 5).unbind(0)  # [B, h, N, q, hd] each
    if slots is None:
        start, end = cache.length, cache.length + q_len
        cache.keys[layer][:, :, :, start:end] = k
        cache.values[layer][:, :, :, start:end] = v
        new_k = cache.keys[layer][:, :, :, :end]  # [B, h, N, S, hd]
        new_v = cache.values[layer][:, :, :, :end]
    else:  # the same shapes at every step; slots not written yet are masked by `later`
        # Stored in the buffers' dtype (under bf16 autocast k, v come out in bfloat16), as slicing does.
        cache.keys[layer].index_copy_(3, slots, k.to(cache.keys[layer].dtype))
        cache.values[layer].index_copy_(3, slots, v.to(cache.values[layer].dtype))
        new_k, new_v = cache.keys[layer], cache.values[layer]  # [B, h, N, S_max, hd]
    if last_only and q_len > 1:  # the last token sees every new token (and, shape-stable, no later slot)
        last_later = None if later is None or slots is None else later[-1:]
        q, x, later, q_len = q[:, :, :, -1:], x[:, :, -1:], last_later, 1
    prefix_k, prefix_v = cache.prefix.keys[layer], cache.prefix.values[layer]  # [B, h, P, hd]
    n_head, head_dim = q.shape[1], q.shape[-1]
    n_prefix = prefix_k.shape[2]

    # Candidates folded into the query length: one matmul against the shared, un-expanded prefix.
    q_flat = q.reshape(batch, n_head, n * q_len, head_dim)  # [B, h, N*q, hd]
    scores_prefix = (q_flat @ prefix_k.transpose(-1, -2)).view(batch, n_head, n, q_len, n_prefix)
    scores_prefix = scores_prefix + cache.prefix.key_bias  # [B, h, N, q, P]
    if slots is None:
        scores_new = q @ new_k.transpose(-1, -2)  # [B, h, N, q, S]
    else:  # as products and sums, which inductor fuses (about 10% faster compiled than B*h*N tiny bmms)
        scores_new = (q.unsqueeze(-2) * new_k.unsqueeze(-3)).sum(-1)  # [B, h, N, q, S_max]
    if later is not None:  # causal among the tokens decoded together
        scores_new = scores_new.masked_fill(later, float("-inf"))
    probs = torch.cat([scores_prefix, scores_new], dim=-1).softmax(dim=-1)  # [B, h, N, q, P+S]
    probs_prefix, probs_new = probs.split([n_prefix, new_k.shape[3]], dim=-1)
    y = (probs_prefix.reshape(batch, n_head, n * q_len, n_prefix) @ prefix_v).view(q.shape)
    if slots is None:
        y = y + probs_new @ new_v  # [B, h, N, q, hd]
    else:
        y = y + (probs_new.unsqueeze(-1) * new_v.unsqueeze(-3)).sum(-2)  # [B, h, N, q, hd]
    x = x + attn.merge_heads(y.transpose(1, 2))  # [B, N, h, q, hd] -> [B, N, q, D]
    return x + block.mlp(block.ln_2(x))


@torch.no_grad()
def decode(
    model: MaskedControlTransformer,
    cache: DecodeCache,
    tokens: torch.Tensor,
    *,
    last_only: bool = False,
    folded: FoldedProjections | None = None,
) -> torch.Tensor:
    """Decode new input tokens ``[B, N, q, D]`` (from ``embed_obs``/``embed_act``) on top of the cache.

    Each new token attends to the valid prefix, to the candidate's earlier imagined tokens and causally
    to the tokens given with it. Returns final hidden states ``[B, N, q, D]`` for the heads, or with
    ``last_only`` those of the last token alone, ``[B, N, 1, D]``: the final block then skips attention
    and MLP for the others (whose keys and values it still caches), the same result for less work.
    ``folded``: project with these :class:`FoldedProjections` of ``model`` (faster, same result).
    """
    q_len = tokens.shape[2]
    first = cache.next_position(q_len)  # window token index of tokens[:, :, 0]
    tables = None if folded is None else folded.at(first, q_len)
    rotary = (
        None
        if tables is not None
        else model.rotary_at(torch.arange(first, first + q_len, device=tokens.device))
    )
    end = cache.length + q_len
    later = None  # one causal mask among the new tokens, shared by the layers
    if q_len > 1:
        later = torch.ones(q_len, end, dtype=torch.bool, device=tokens.device).triu(cache.length + 1)
    x = tokens
    blocks = _blocks(model)
    for layer, block in enumerate(blocks):
        last = last_only and layer == len(blocks) - 1
        x = _decode_block(
            block, x, cache, layer, rotary, later, last, None if tables is None else tables[layer]
        )
    cache.length += q_len
    return model.ln_f(x)


def decode_fixed(
    model: MaskedControlTransformer,
    cache: DecodeCache,
    tokens: torch.Tensor,
    position: torch.Tensor,
    folded: list[tuple[torch.Tensor, torch.Tensor]],
    last_only: bool = False,
) -> torch.Tensor:
    """:func:`decode` with the same tensor shapes at every step, for ``torch.compile``.

    Every step attends over the whole per-candidate buffer (its ``S_max`` slots), masking the slots that
    lie ahead of each new token, and the write position comes as a tensor: one compiled graph then
    serves every step of a rollout (with :func:`decode`, the key length changes at every token, and
    so would the graph). The extra attention over empty slots costs less than the fusion saves on a
    CPU. Slots not written yet are read with weight 0, so they must hold finite numbers: zero the
    value buffers before a rollout (:meth:`DecodeCache.zero_values`).

    :param position: ``cache.length`` as a 0-d integer tensor, the slot of ``tokens[:, :, 0]``.
    :param folded: :meth:`FoldedProjections.at` for the tokens' window positions (the first one is
        :meth:`DecodeCache.next_position`, which also checks the room left).
    Does not advance ``cache.length``; the caller does. Returns what :func:`decode` returns.
    """
    q_len = tokens.shape[2]
    capacity = cache.keys[0].shape[3]
    slots = position + torch.arange(q_len, device=tokens.device)  # [q]
    later = torch.arange(capacity, device=tokens.device)[None, :] > slots[:, None]  # [q, S_max]
    x = tokens
    blocks = _blocks(model)
    for layer, block in enumerate(blocks):
        last = last_only and layer == len(blocks) - 1
        x = _decode_block(block, x, cache, layer, None, later, last, folded[layer], slots)
    return model.ln_f(x)


def _check_rollout(
    model: MaskedControlTransformer, obs: torch.Tensor, actions: torch.Tensor
) -> tuple[torch.Tensor, bool]:
    """Bring ``actions`` to ``[B, N, H(, A)]``; also say whether they came without the B dimension."""
    cfg = model.config
    given = tuple(actions.shape)  # errors report what the caller passed, not the batched view
    per_step = 0 if cfg.discrete_actions else 1  # trailing action dimension
    squeeze = actions.dim() == 2 + per_step
    if squeeze:
        actions = actions.unsqueeze(0)
    if actions.dim() != 3 + per_step or (per_step and actions.shape[-1] != cfg.act_dim):
        want = (
            "[N, H] or [B, N, H]"
            if cfg.discrete_actions
            else f"[N, H, {cfg.act_dim}] or [B, N, H, {cfg.act_dim}]"
        )
        raise ValueError(f"expected candidate actions of shape {want}, got {given}")
    if obs.dim() != 3 or actions.shape[0] != obs.shape[0]:
        raise ValueError(
            f"candidate actions {tuple(actions.shape)} do not match history obs {tuple(obs.shape)} "
            "(expected [B, K, O] with the same B; [N, H, ...] actions need B = 1)"
        )
    steps = obs.shape[1] + actions.shape[2] - 1
    if steps > cfg.context_len:
        raise ValueError(
            f"a history of K={obs.shape[1]} steps and a horizon of H={actions.shape[2]} need K + H - 1 = "
            f"{steps} timesteps, but context_len is {cfg.context_len}; shorten the history or the horizon"
        )
    return actions, squeeze


def _finish(
    parts: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]], squeeze: bool
) -> Imagination:
    next_obs, delta, reward = (torch.stack(p, dim=2) for p in parts)  # [B, N, H, ...]
    if squeeze:
        next_obs, delta, reward = next_obs[0], delta[0], reward[0]
    return Imagination(next_obs=next_obs, delta_obs=delta, reward=reward)


def _add(obs: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return obs + delta


@torch.no_grad()
def imagine(
    model: MaskedControlTransformer,
    obs: torch.Tensor,
    act: torch.Tensor,
    actions: torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
    next_obs_fn: NextObsFn = _add,
) -> Imagination:
    """Roll candidate action sequences out from a history with the shared-prefix KV cache.

    :param obs: history observations ``[B, K, O]`` (see :func:`encode_prefix` for ``act`` and ``valid``).
    :param actions: candidates ``[N, H, A]`` (needs B = 1) or ``[B, N, H, A]``; ``actions[..., 0, :]`` is
        taken at the current observation ``obs[:, -1]``.
    :param next_obs_fn: turns the current observation token and the predicted delta into the next
        observation token; default ``obs + delta`` (a model trained on differences of normalized
        observations). Pass the conversion when deltas were standardized separately.
    :return: next observations, deltas and rewards ``[N, H, ...]`` (or ``[B, N, H, ...]``).
    """
    actions, squeeze = _check_rollout(model, obs, actions)
    batch, n, horizon = actions.shape[:3]
    prefix = encode_prefix(model, obs, act, valid)
    cache = prefix.expand(n, 2 * horizon - 1)
    folded = FoldedProjections(model)
    step = prefix.next_step
    current = prefix.last_obs.unsqueeze(1).expand(batch, n, -1)  # [B, N, O]
    tokens = model.embed_act(actions[:, :, 0], step).unsqueeze(2)  # [B, N, 1, D]
    parts: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] = ([], [], [])
    for h in range(horizon):
        if h > 0:
            obs_tok = model.embed_obs(current, step + h)  # [B, N, D]
            act_tok = model.embed_act(actions[:, :, h], step + h)  # [B, N, D]
            tokens = torch.stack([obs_tok, act_tok], dim=2)  # [B, N, 2, D]
        out = decode(model, cache, tokens, last_only=True, folded=folded)[:, :, -1]  # [B, N, D]: action token
        delta = model.heads.delta_obs(out)
        current = next_obs_fn(current, delta)
        for part, value in zip(parts, (current, delta, model.heads.reward(out).squeeze(-1)), strict=True):
            part.append(value)
    return _finish(parts, squeeze)


@torch.no_grad()
def imagine_recompute(
    model: MaskedControlTransformer,
    obs: torch.Tensor,
    act: torch.Tensor,
    actions: torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
    next_obs_fn: NextObsFn = _add,
) -> Imagination:
    """The reference for :func:`imagine`: re-run the full window (history + imagined steps) every step.

    Same arguments and result as :func:`imagine`; the history is copied for every candidate.
    """
    actions, squeeze = _check_rollout(model, obs, actions)
    batch, n, horizon = actions.shape[:3]
    steps = obs.shape[1]
    if act.shape[1] == steps:
        act = act[:, :-1]
    if valid is None:
        valid = torch.ones(batch, steps, dtype=torch.bool, device=obs.device)
    rows = batch * n
    hist_obs = obs.unsqueeze(1).expand(batch, n, *obs.shape[1:]).reshape(rows, steps, -1)  # [B*N, K, O]
    hist_act = act.unsqueeze(1).expand(batch, n, *act.shape[1:]).reshape(rows, steps - 1, *act.shape[2:])
    hist_valid = valid.unsqueeze(1).expand(batch, n, steps).reshape(rows, steps)  # [B*N, K]
    cand = actions.reshape(rows, horizon, *actions.shape[3:])  # [B*N, H(, A)]
    window_obs = hist_obs
    parts: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] = ([], [], [])
    for h in range(horizon):
        window_act = torch.cat([hist_act, cand[:, : h + 1]], dim=1)  # [B*N, K+h(, A)]
        window_valid = torch.cat([hist_valid, hist_valid.new_ones(rows, h)], dim=1)  # [B*N, K+h]
        out = model(window_obs, window_act, valid=window_valid)
        delta = out.delta_obs[:, -1]  # [B*N, O]
        current = next_obs_fn(window_obs[:, -1], delta)
        window_obs = torch.cat([window_obs, current.unsqueeze(1)], dim=1)  # [B*N, K+h+1, O]
        for part, value in zip(parts, (current, delta, out.reward[:, -1]), strict=True):
            part.append(value.view(batch, n, *value.shape[1:]))
    return _finish(parts, squeeze)
