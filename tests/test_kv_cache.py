"""Shared-prefix KV-cached rollouts equal re-running the whole window every step."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from maskctrl.models.kv_cache import (
    DecodeBuffers,
    FoldedProjections,
    decode,
    decode_fixed,
    encode_prefix,
    imagine,
    imagine_recompute,
)
from maskctrl.models.transformer import MaskedControlTransformer, TransformerConfig

CONFIGS = [
    # n_layer, n_head, d_model, K, H, B (histories), N (candidates), padded, rotary
    (1, 1, 16, 1, 1, 1, 1, False, True),
    (2, 2, 32, 3, 5, 1, 7, False, True),
    (3, 4, 32, 4, 4, 1, 16, True, True),
    (2, 4, 64, 6, 3, 3, 5, True, True),
    (4, 2, 24, 2, 7, 2, 9, True, False),
    (1, 8, 32, 5, 1, 2, 4, True, True),
]


def make(n_layer: int, n_head: int, d_model: int, seed: int, **kw: Any) -> MaskedControlTransformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        obs_dim=5, act_dim=3, context_len=10, n_layer=n_layer, n_head=n_head, d_model=d_model, **kw
    )
    model = MaskedControlTransformer(cfg).eval()
    with torch.no_grad():  # O(1) weights: sharp attention, so a wrong key, position or mask shows
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 1.0 / param.shape[-1] ** 0.5)
            elif not name.endswith("ln_1.weight") and not name.endswith("ln_2.weight"):
                param.normal_(0.0, 0.1)
    return model


def history(
    batch: int, steps: int, padded: bool, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(batch, steps, 5, generator=gen)
    act = torch.randn(batch, steps, 3, generator=gen)
    valid = torch.ones(batch, steps, dtype=torch.bool)
    if padded:
        for row in range(batch):
            pad = (row + 1) % steps  # different left padding per history, the last step always real
            valid[row, :pad] = False
            obs[row, :pad], act[row, :pad] = 0.0, 0.0
    return obs, act, valid


@pytest.mark.parametrize(("n_layer", "n_head", "d_model", "k", "h", "b", "n", "padded", "rotary"), CONFIGS)
def test_kv_cached_rollout_equals_full_recompute(
    n_layer: int, n_head: int, d_model: int, k: int, h: int, b: int, n: int, padded: bool, rotary: bool
) -> None:
    model = make(n_layer, n_head, d_model, seed=n_layer * 10 + k, rotary=rotary)
    obs, act, valid = history(b, k, padded, seed=h)
    actions = torch.randn(b, n, h, 3, generator=torch.Generator().manual_seed(5))
    cached = imagine(model, obs, act, actions, valid=valid)
    full = imagine_recompute(model, obs, act, actions, valid=valid)
    assert cached.next_obs.shape == (b, n, h, 5) and cached.reward.shape == (b, n, h)
    for name in ("next_obs", "delta_obs", "reward"):
        torch.testing.assert_close(getattr(cached, name), getattr(full, name), rtol=0, atol=1e-5)
    # The candidates really differ, so sharing the prefix did not collapse them.
    assert (cached.next_obs[:, 0] - cached.next_obs[:, -1]).abs().max() > 0 or n == 1


def test_single_history_takes_n_h_a_actions_and_history_actions_of_k_minus_1_steps() -> None:
    model = make(2, 2, 32, seed=0)
    obs, act, _ = history(1, 4, False, seed=1)
    actions = torch.randn(8, 5, 3, generator=torch.Generator().manual_seed(2))  # [N, H, A]
    cached = imagine(model, obs, act[:, :-1], actions)
    assert cached.next_obs.shape == (8, 5, 5) and cached.reward.shape == (8, 5)
    full = imagine_recompute(model, obs, act, actions)
    torch.testing.assert_close(cached.next_obs, full.next_obs, rtol=0, atol=1e-5)
    # The first imagined observation is o_{K-1} + delta: the chaining starts at the current obs.
    torch.testing.assert_close(cached.next_obs[:, 0], obs[0, -1] + cached.delta_obs[:, 0])


def test_history_action_of_the_current_step_is_ignored() -> None:
    model = make(2, 2, 32, seed=0)
    obs, act, _ = history(1, 4, False, seed=1)
    actions = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(2))
    other = act.clone()
    other[:, -1] = 7.0
    assert torch.equal(
        imagine(model, obs, act, actions).next_obs, imagine(model, obs, other, actions).next_obs
    )


def test_discrete_actions_and_a_custom_next_obs_function() -> None:
    torch.manual_seed(0)
    cfg = TransformerConfig(
        obs_dim=5, act_dim=4, discrete_actions=True, context_len=10, n_layer=2, n_head=2, d_model=32
    )
    model = MaskedControlTransformer(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    obs = torch.randn(1, 3, 5, generator=gen)
    act = torch.randint(0, 4, (1, 3), generator=gen)
    actions = torch.randint(0, 4, (6, 4), generator=gen)  # [N, H]
    scale, shift = torch.rand(5, generator=gen) + 0.5, torch.randn(5, generator=gen)

    def step(o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return o + d * scale + shift  # e.g. de-standardizing a separately normalized delta

    cached = imagine(model, obs, act, actions, next_obs_fn=step)
    full = imagine_recompute(model, obs, act, actions, next_obs_fn=step)
    assert cached.next_obs.shape == (6, 4, 5)
    torch.testing.assert_close(cached.next_obs, full.next_obs, rtol=0, atol=1e-5)
    torch.testing.assert_close(cached.reward, full.reward, rtol=0, atol=1e-5)


def test_expand_refers_to_the_prefix_and_decoding_one_token_at_a_time_matches_the_window() -> None:
    model = make(3, 2, 32, seed=3)
    obs, act, valid = history(2, 4, True, seed=4)
    prefix = encode_prefix(model, obs, act, valid)
    assert prefix.keys[0].shape == (2, 2, 7, 16)  # [B, h, 2K-1, hd]
    cache = prefix.expand(3, 3)
    assert cache.prefix.keys[0].data_ptr() == prefix.keys[0].data_ptr()  # shared, not copied
    assert cache.keys[0].shape == (2, 2, 3, 3, 16)  # [B, h, N, S, hd]: only the new tokens per candidate
    gen = torch.Generator().manual_seed(5)
    a3, o4, a4 = (
        torch.randn(2, 3, 3, generator=gen),
        torch.randn(2, 3, 5, generator=gen),
        torch.randn(2, 3, 3, generator=gen),
    )
    hidden = [
        decode(model, cache, model.embed_act(a3, 3).unsqueeze(2)),
        decode(model, cache, model.embed_obs(o4, 4).unsqueeze(2)),
        decode(model, cache, model.embed_act(a4, 4).unsqueeze(2)),
    ]  # each [B, N, 1, D]
    for c in range(3):
        w_obs = torch.cat([obs, o4[:, c : c + 1]], dim=1)  # [B, 5, O]
        w_act = torch.cat([act[:, :3], a3[:, c : c + 1], a4[:, c : c + 1]], dim=1)  # [B, 5, A]
        w_valid = torch.cat([valid, torch.ones(2, 1, dtype=torch.bool)], dim=1)
        ref = model(w_obs, w_act, valid=w_valid).hidden  # [B, 10, D]
        for i, token in enumerate((7, 8, 9)):
            torch.testing.assert_close(hidden[i][:, c, 0], ref[:, token], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="decode cache holds 3 tokens, 3 used, 1 more given"):
        decode(model, cache, model.embed_obs(o4, 5).unsqueeze(2))


def test_decoding_the_last_token_only_caches_every_token_and_gives_the_same_output() -> None:
    model = make(3, 2, 32, seed=6)
    obs, act, valid = history(2, 4, True, seed=7)
    gen = torch.Generator().manual_seed(8)
    a3, o4, a4, o5 = (torch.randn(2, 3, d, generator=gen) for d in (3, 5, 3, 5))
    caches, outs = [], []
    for last_only in (False, True):
        cache = encode_prefix(model, obs, act, valid).expand(3, 4)
        decode(model, cache, model.embed_act(a3, 3).unsqueeze(2), last_only=last_only)
        pair = torch.stack([model.embed_obs(o4, 4), model.embed_act(a4, 4)], dim=2)  # [B, N, 2, D]
        out = decode(model, cache, pair, last_only=last_only)
        later = decode(model, cache, model.embed_obs(o5, 5).unsqueeze(2))  # reads what was cached
        caches.append(cache)
        outs.append((out[:, :, -1:], later))
    assert outs[1][0].shape == (2, 3, 1, 32)  # the last token alone
    assert caches[1].length == caches[0].length == 4
    for full, last in zip(caches[0].keys + caches[0].values, caches[1].keys + caches[1].values, strict=True):
        torch.testing.assert_close(last[:, :, :, :4], full[:, :, :, :4], rtol=0, atol=1e-6)
    for full, last in zip(outs[0], outs[1], strict=True):
        torch.testing.assert_close(last, full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("rotary", [True, False])
def test_folded_projections_decode_like_the_model_projections(rotary: bool) -> None:
    model = make(2, 4, 32, seed=9, rotary=rotary)
    obs, act, valid = history(2, 3, True, seed=10)
    folded = FoldedProjections(model)
    gen = torch.Generator().manual_seed(11)
    a2, o3, a3 = (torch.randn(2, 4, d, generator=gen) for d in (3, 5, 3))
    results = []
    for projections in (None, folded):
        cache = encode_prefix(model, obs, act, valid).expand(4, 3)
        first = decode(model, cache, model.embed_act(a2, 2).unsqueeze(2), folded=projections)
        pair = torch.stack([model.embed_obs(o3, 3), model.embed_act(a3, 3)], dim=2)
        results.append((first, decode(model, cache, pair, folded=projections), *cache.keys, *cache.values))
    for plain, fast in zip(*results, strict=True):
        torch.testing.assert_close(fast, plain, rtol=0, atol=1e-5)
    assert folded.at(5, 2) is folded.at(5, 2)  # built once per position span
    weight, bias = folded.at(5, 2)[0]
    assert weight.shape == (2, 32, 96) and bias.shape == (2, 1, 96)  # [q, D, 3D], [q, 1, 3D]


def test_decode_buffers_are_reused_per_shape_and_decoding_into_used_ones_changes_nothing() -> None:
    model = make(2, 2, 32, seed=12)
    obs, act, valid = history(1, 3, False, seed=13)
    prefix = encode_prefix(model, obs, act, valid)
    buffers = DecodeBuffers(max_shapes=2)
    kept = prefix.expand(6, 3, buffers=buffers)
    assert prefix.expand(6, 3, buffers=buffers).keys[1].data_ptr() == kept.keys[1].data_ptr()
    assert kept.keys[0].shape == (1, 2, 6, 3, 16)
    gen = torch.Generator().manual_seed(14)
    for _ in range(2):  # the second round decodes into buffers the first one filled
        a2, o3, a3 = (torch.randn(1, 6, d, generator=gen) for d in (3, 5, 3))
        outs = []
        for cache in (prefix.expand(6, 3, buffers=buffers), prefix.expand(6, 3)):
            decode(model, cache, model.embed_act(a2, 2).unsqueeze(2))
            pair = torch.stack([model.embed_obs(o3, 3), model.embed_act(a3, 3)], dim=2)
            outs.append(decode(model, cache, pair))
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    prefix.expand(6, 2, buffers=buffers)
    prefix.expand(6, 1, buffers=buffers)  # a third shape: the kept sets are dropped
    assert prefix.expand(6, 3, buffers=buffers).keys[1].data_ptr() != kept.keys[1].data_ptr()


@pytest.mark.parametrize("rotary", [True, False])
def test_shape_stable_decoding_equals_decode_and_needs_zeroed_values(rotary: bool) -> None:
    model = make(3, 2, 32, seed=15, rotary=rotary)
    obs, act, valid = history(2, 3, True, seed=16)
    prefix = encode_prefix(model, obs, act, valid)
    first = prefix.keys[0].shape[2]  # P = 2K - 1 = 5 prefix tokens
    folded = FoldedProjections(model)
    gen = torch.Generator().manual_seed(17)
    a2 = torch.randn(2, 4, 3, generator=gen)
    pairs = [torch.randn(2, 4, d, generator=gen) for _ in range(3) for d in (5, 3)]  # o3, a3, ..., a5
    steps = [model.embed_act(a2, 2).unsqueeze(2)] + [
        torch.stack([model.embed_obs(pairs[2 * i], 3 + i), model.embed_act(pairs[2 * i + 1], 3 + i)], 2)
        for i in range(3)
    ]  # q = 1, then three q = 2 steps: 7 tokens
    reference = prefix.expand(4, 7)
    cache = prefix.expand(4, 7)
    stale = prefix.expand(4, 7)
    for values in cache.values + stale.values:
        values.fill_(float("nan"))  # what a rollout whose model produced NaN could leave behind
    cache.zero_values()
    for last_only in (False, True):
        for c in (reference, cache, stale):
            c.length = 0
        for tokens in steps:
            want = decode(model, reference, tokens, last_only=last_only, folded=folded)
            position, q_len = torch.tensor(cache.length), tokens.shape[2]
            tables = folded.at(first + cache.length, q_len)  # the tokens' window positions
            got = decode_fixed(model, cache, tokens, position, tables, last_only)
            poisoned = decode_fixed(model, stale, tokens, position, tables, last_only)
            cache.length += q_len
            stale.length += q_len
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        assert torch.isnan(poisoned).all()  # why the values are zeroed: 0 * nan of an unwritten slot
    for fixed, ref in zip(cache.keys + cache.values, reference.keys + reference.values, strict=True):
        torch.testing.assert_close(fixed, ref, rtol=0, atol=1e-5)  # sums in another order than a matmul


def test_errors_for_context_overflow_and_bad_shapes() -> None:
    model = make(1, 1, 16, seed=0)  # context_len 10
    obs, act, valid = history(1, 6, False, seed=0)
    with pytest.raises(ValueError, match=r"K \+ H - 1 = 11 timesteps, but context_len is 10"):
        imagine(model, obs, act, torch.zeros(4, 6, 3))
    imagine(model, obs, act, torch.zeros(4, 5, 3))  # exactly fits
    with pytest.raises(ValueError, match=r"\[N, H, 3\] or \[B, N, H, 3\]"):
        imagine(model, obs, act, torch.zeros(4, 5, 2))
    with pytest.raises(ValueError, match="need B = 1"):
        imagine(model, torch.cat([obs, obs]), torch.cat([act, act]), torch.zeros(4, 5, 3))
    bad_valid = valid.clone()
    bad_valid[0, -1] = False
    with pytest.raises(ValueError, match="last history step"):
        imagine(model, obs, act, torch.zeros(4, 2, 3), valid=bad_valid)
    with pytest.raises(ValueError, match="history actions for 5 or 6 steps"):
        encode_prefix(model, obs, act[:, :3])
