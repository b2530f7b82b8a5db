"""Pretraining objectives: group split, per-sample masks, padding, weights, and that every loss learns."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from maskctrl.data.synthetic import LinearSystem
from maskctrl.models import masks
from maskctrl.models.objectives import (
    GROUPS,
    MaskDraw,
    ObjectiveWeights,
    WindowBatch,
    assign_groups,
    draw_masks,
    loss_sums,
    pretraining_loss,
)
from maskctrl.models.transformer import MaskedControlTransformer, TransformerConfig

T = 8


def tiny_model(
    obs_dim: int = 4, act_dim: int = 2, discrete: bool = False, seed: int = 0
) -> MaskedControlTransformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        obs_dim=obs_dim,
        act_dim=act_dim,
        discrete_actions=discrete,
        context_len=T,
        n_layer=2,
        n_head=4,
        d_model=64,
    )
    return MaskedControlTransformer(cfg)


def standardized_windows(n: int, seed: int, smoothness: float = 0.9) -> WindowBatch:
    """Synthetic windows with rewards standardized, as the pretraining pipeline's normalizer would."""
    rng = np.random.default_rng(seed)
    system = LinearSystem.random(4, 2, rng)
    data = system.windows(n, T, rng, smoothness=smoothness, pad_fraction=0.2)
    real = data.rew[data.valid]
    rew = ((data.rew - real.mean()) / real.std()).masked_fill(~data.valid, 0.0)
    return WindowBatch(obs=data.obs, act=data.act, rew=rew, next_obs=data.next_obs, valid=data.valid)


def rows(data: WindowBatch, index: torch.Tensor) -> WindowBatch:
    return WindowBatch(
        obs=data.obs[index],
        act=data.act[index],
        rew=data.rew[index],
        next_obs=data.next_obs[index],
        valid=data.valid[index],
    )


def train(
    weights: ObjectiveWeights, steps: int, seed: int = 0, batch: int = 64, lr: float = 3e-3
) -> dict[str, list[float]]:
    """AdamW with a short warm-up and cosine decay; returns each term's value at every step."""
    data = standardized_windows(4096, seed)
    model = tiny_model(seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {}
    for step in range(steps):
        scale = min(1.0, (step + 1) / 20) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        sample = torch.randint(0, len(data.obs), (batch,), generator=gen)
        out = pretraining_loss(model, rows(data, sample), weights=weights, generator=gen)
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()
        for name, value in out.terms.items():
            history.setdefault(name, []).append(value.item())
    return history


def drop_factors(history: dict[str, list[float]]) -> dict[str, float]:
    return {name: float(np.mean(v[:10]) / np.mean(v[-10:])) for name, v in history.items()}


def test_every_default_loss_term_drops_at_least_10x_on_the_linear_system() -> None:
    history = train(ObjectiveWeights(), steps=400)
    assert set(history) == {"forward", "inverse", "hindsight", "reward"}
    factors = drop_factors(history)
    assert all(f >= 10 for f in factors.values()), factors


@pytest.mark.slow
def test_hidden_observation_reconstruction_drops_at_least_10x() -> None:
    # Off by default (SMART hides actions only); with bidirectional attention it needs ~1000 steps.
    weights = ObjectiveWeights(
        forward=0, inverse=0, hindsight=0, reward=0, hindsight_obs=1, obs_mask_ratio=0.3, act_mask_ratio=0.0
    )
    history = train(weights, steps=1000)
    assert set(history) == {"hindsight_obs"}
    factors = drop_factors(history)
    assert factors["hindsight_obs"] >= 10, factors


def test_discrete_actions_forward_and_backward() -> None:
    model = tiny_model(act_dim=5, discrete=True)
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(12, T, 4, generator=gen)
    act = torch.randint(0, 5, (12, T), generator=gen)
    valid = torch.ones(12, T, dtype=torch.bool)
    valid[:4, :3] = False
    batch = WindowBatch(
        obs=obs, act=act, rew=torch.randn(12, T, generator=gen), next_obs=obs + 0.1, valid=valid
    )
    weights = ObjectiveWeights(policy=1.0, obs_mask_ratio=0.25)
    out = pretraining_loss(model, batch, weights=weights, generator=gen)
    assert set(out.terms) == {"forward", "inverse", "hindsight", "hindsight_obs", "reward", "policy"}
    assert all(torch.isfinite(v) and v > 0 for v in out.terms.values())
    # Cross-entropy of near-uniform logits over 5 actions.
    for name in ("inverse", "hindsight", "policy"):
        assert out.terms[name].item() == pytest.approx(math.log(5), rel=0.1)
    out.total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    embedding = next(model.act_embed.parameters())
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0


def test_groups_are_an_even_random_split_of_the_active_objectives() -> None:
    weights = ObjectiveWeights()
    split = assign_groups(10, weights, torch.Generator().manual_seed(0))
    assert sorted(torch.cat(split).tolist()) == list(range(10))
    assert sorted(len(r) for r in split) == [3, 3, 4]
    again = assign_groups(10, weights, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(split, again, strict=True))
    other = assign_groups(10, weights, torch.Generator().manual_seed(1))
    assert not all(torch.equal(a, b) for a, b in zip(split, other, strict=True))
    only_inverse = assign_groups(6, ObjectiveWeights(forward=0, reward=0, hindsight=0), None)
    assert [len(r) for r in only_inverse] == [0, 6, 0]


def test_mask_draw_is_the_group_split_and_token_mask_and_independent_of_sharding() -> None:
    weights = ObjectiveWeights(obs_mask_ratio=0.25)
    valid = standardized_windows(30, seed=1).valid
    draw = draw_masks(30, T, weights, torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(4)
    split = assign_groups(30, weights, gen)
    tokens = masks.random_token_mask(30, T, act_ratio=0.5, obs_ratio=0.25, generator=gen, valid_steps=valid)
    assert all(bool((draw.group[members] == index).all()) for index, members in enumerate(split))
    hindsight = draw.group == GROUPS.index("hindsight")
    hidden = draw.hidden(valid, weights)
    assert torch.equal(hidden, tokens & hindsight.unsqueeze(1)) and bool(hidden.any())
    first = masks.first_valid_step(valid)
    padded = ~valid[:, 0]
    assert bool(padded.any()) and not bool((hidden[:, 0::2] & first).any())  # the first real obs stays
    all_obs = draw.hidden(valid, ObjectiveWeights(obs_mask_ratio=1.0))[:, 0::2]  # [B, T]
    assert torch.equal(all_obs, (valid & ~first) & hindsight.unsqueeze(1))
    parts = [slice(0, 13), slice(13, 30)]  # a share's masks are the global masks' rows
    assert torch.equal(torch.cat([draw.rows(part).hidden(valid[part], weights) for part in parts]), hidden)


def test_a_draw_sent_to_a_device_carries_its_groups_rows_found_on_the_host() -> None:
    weights = ObjectiveWeights()
    draw = draw_masks(30, T, weights, torch.Generator().manual_seed(4))
    split = assign_groups(30, weights, torch.Generator().manual_seed(4))
    assert all(torch.equal(rows, members) for rows, members in zip(draw.group_rows(), split, strict=True))
    model, batch = tiny_model(), standardized_windows(30, seed=1)  # a moved draw gives the same losses
    host, moved = (loss_sums(model, batch, d, weights) for d in (draw, draw.to(torch.device("cpu"))))
    assert all(torch.equal(a, b) for a, b in zip(host, moved, strict=True))
    elsewhere = draw.to(torch.device("meta"))  # a device the host cannot read back without waiting
    assert [rows.device.type for rows in elsewhere.group_rows()] == ["meta"] * len(GROUPS)
    with pytest.raises(ValueError, match=r"without its members: use MaskDraw\.to"):
        MaskDraw(elsewhere.group, elsewhere.act_scores, elsewhere.obs_scores).group_rows()


def test_each_sample_gets_its_groups_mask_and_only_hindsight_samples_hide_tokens() -> None:
    model = tiny_model()
    data = standardized_windows(30, seed=1)
    seen: dict[str, Any] = {}
    original = model.forward

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return original(*args, **kwargs)

    model.forward = spy  # type: ignore[method-assign]
    weights = ObjectiveWeights(obs_mask_ratio=0.25)
    pretraining_loss(model, data, weights=weights, generator=torch.Generator().manual_seed(3))
    split = assign_groups(30, weights, torch.Generator().manual_seed(3))
    expected = {
        "forward": masks.causal(2 * T),
        "inverse": masks.inverse_dynamics(2 * T),
        "hindsight": masks.bidirectional(2 * T),
    }
    attn, hidden = seen["attn_mask"], seen["hidden"]
    assert attn.shape == (30, 1, 2 * T, 2 * T)
    for name, members in zip(GROUPS, split, strict=True):
        assert len(members) == 10
        for i in members.tolist():
            assert torch.equal(attn[i, 0], expected[name])
            assert bool(hidden[i].any()) == (name == "hindsight")
    assert not bool((hidden & ~masks.step_tokens(data.valid)).any())  # padding is never a target


def test_padding_values_do_not_change_the_loss_even_as_nan() -> None:
    model = tiny_model()
    data = standardized_windows(16, seed=2)
    assert not bool(data.valid.all())
    base = pretraining_loss(model, data, generator=torch.Generator().manual_seed(0))
    pad = ~data.valid
    dirty = WindowBatch(
        obs=data.obs.masked_fill(pad.unsqueeze(-1), float("nan")),
        act=data.act.masked_fill(pad.unsqueeze(-1), float("inf")),
        rew=data.rew.masked_fill(pad, float("nan")),
        next_obs=data.next_obs.masked_fill(pad.unsqueeze(-1), float("nan")),
        valid=data.valid,
    )
    out = pretraining_loss(model, dirty, generator=torch.Generator().manual_seed(0))
    for name, value in base.terms.items():
        torch.testing.assert_close(out.terms[name], value)
    out.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_total_is_the_weighted_sum_and_zero_weights_switch_terms_off() -> None:
    model = tiny_model()
    data = standardized_windows(24, seed=3)
    weights = ObjectiveWeights(forward=2.0, inverse=0.5, hindsight=0.0, reward=0.25, policy=1.5)
    out = pretraining_loss(model, data, weights=weights, generator=torch.Generator().manual_seed(0))
    assert set(out.terms) == {"forward", "inverse", "reward", "policy"}
    expected = sum(weights.terms[name] * value for name, value in out.terms.items())
    torch.testing.assert_close(out.total, expected)


def test_forward_target_can_be_given_explicitly() -> None:
    model = tiny_model()
    data = standardized_windows(12, seed=4)
    weights = ObjectiveWeights(inverse=0, hindsight=0, reward=0)
    gen_seed = 5
    implicit = pretraining_loss(
        model, data, weights=weights, generator=torch.Generator().manual_seed(gen_seed)
    )
    explicit = WindowBatch(
        obs=data.obs,
        act=data.act,
        rew=data.rew,
        next_obs=data.next_obs,
        valid=data.valid,
        delta=data.next_obs - data.obs,
    )
    same = pretraining_loss(
        model, explicit, weights=weights, generator=torch.Generator().manual_seed(gen_seed)
    )
    torch.testing.assert_close(same.terms["forward"], implicit.terms["forward"])
    shifted = WindowBatch(
        obs=data.obs,
        act=data.act,
        rew=data.rew,
        next_obs=data.next_obs,
        valid=data.valid,
        delta=data.next_obs,
    )
    other = pretraining_loss(
        model, shifted, weights=weights, generator=torch.Generator().manual_seed(gen_seed)
    )
    assert not torch.allclose(other.terms["forward"], implicit.terms["forward"])


def test_bad_batches_and_weights_are_rejected() -> None:
    obs = torch.zeros(2, T, 4)
    with pytest.raises(ValueError, match=r"rew to start with \[B, T\] = \(2, 8\)"):
        WindowBatch(
            obs=obs,
            act=torch.zeros(2, T, 2),
            rew=torch.zeros(2, T - 1),
            next_obs=obs,
            valid=torch.ones(2, T, dtype=torch.bool),
        )
    with pytest.raises(ValueError, match="valid must be a bool tensor"):
        WindowBatch(
            obs=obs, act=torch.zeros(2, T, 2), rew=torch.zeros(2, T), next_obs=obs, valid=torch.ones(2, T)
        )
    with pytest.raises(ValueError, match="must be >= 0"):
        ObjectiveWeights(forward=-1.0)
    with pytest.raises(ValueError, match=r"act_mask_ratio must lie in \[0, 1\], got 1.5"):
        ObjectiveWeights(act_mask_ratio=1.5)
    with pytest.raises(ValueError, match="nothing to train"):
        ObjectiveWeights(forward=0, inverse=0, hindsight=0, reward=0)


def test_synthetic_linear_system_is_what_it_claims() -> None:
    rng = np.random.default_rng(0)
    system = LinearSystem.random(4, 2, rng, noise_std=0.0)
    assert np.abs(np.linalg.eigvals(system.a)).max() < 1.0
    data = system.windows(64, T, rng, pad_fraction=0.5)
    real = data.valid.unsqueeze(-1).numpy()
    predicted = data.obs.numpy() @ system.a.T + data.act.numpy() @ system.b.T
    np.testing.assert_allclose(np.where(real, predicted, 0.0), data.next_obs.numpy(), atol=1e-5)
    np.testing.assert_allclose(
        data.rew.numpy(),
        np.where(data.valid.numpy(), system.reward(data.obs.numpy(), data.act.numpy()), 0.0),
        atol=1e-4,
    )
    padded = ~data.valid
    assert padded.any() and not padded[:, -1].any()
    assert torch.equal(padded, padded.cummin(dim=1).values)  # padding only on the left
    same = system.windows(64, T, np.random.default_rng(1))
    again = system.windows(64, T, np.random.default_rng(1))
    assert torch.equal(same.obs, again.obs)
