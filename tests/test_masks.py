"""The reference article's three worked examples, and the other functions of maskctrl.models.masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from maskctrl.models import masks


def test_causal_softmax_weights_and_weighted_average_match_the_article() -> None:
    mask = masks.causal(4)
    scores = torch.zeros(4, 4).masked_fill(~mask, float("-inf"))
    weights = F.softmax(scores, dim=1)
    expected = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],
            [1 / 2, 1 / 2, 0.0, 0.0],
            [1 / 3, 1 / 3, 1 / 3, 0.0],
            [1 / 4, 1 / 4, 1 / 4, 1 / 4],
        ]
    )
    torch.testing.assert_close(weights, expected, rtol=0, atol=1e-7)
    x = torch.tensor([-0.3107, 0.2057, 0.9657, 0.7057])
    torch.testing.assert_close(
        weights @ x, torch.tensor([-0.3107, -0.0525, 0.2869, 0.3916]), rtol=0, atol=1e-4
    )


def test_causal_mask_in_sdpa_gives_the_article_average() -> None:
    # The same example through scaled_dot_product_attention: zero queries/keys give uniform scores.
    x = torch.tensor([-0.3107, 0.2057, 0.9657, 0.7057]).view(1, 1, 4, 1)  # [B, h, L, 1] values
    zeros = torch.zeros(1, 1, 4, 1)
    out = F.scaled_dot_product_attention(zeros, zeros, x, attn_mask=masks.causal(4))
    torch.testing.assert_close(
        out.flatten(), torch.tensor([-0.3107, -0.0525, 0.2869, 0.3916]), rtol=0, atol=1e-4
    )


def test_inverse_dynamics_mask_is_the_articles_8x8_matrix() -> None:
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0, 0],
            [1, 0, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 1, 0, 0, 0],
            [1, 1, 1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 0, 1, 0],
            [1, 1, 1, 1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(masks.inverse_dynamics(8), expected)
    assert torch.equal(masks.inverse_dynamics(8, start=2, k=1), expected)


def test_token_masking_reproduces_the_articles_4x8_example() -> None:
    batch, length = 4, 8
    tokens = torch.ones(batch, length, 1)  # [B, L, C] with C = 1
    act_hidden = torch.zeros(batch, length // 2, dtype=torch.bool)
    act_hidden[:, [0, 1]] = True  # actions 0 and 1, i.e. tokens 1 and 3
    hidden = masks.interleave(torch.zeros_like(act_hidden), act_hidden)
    out = masks.apply_token_mask(tokens, hidden, -1.0).squeeze(-1)
    row = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, 1.0, 1.0, 1.0])
    assert torch.equal(out, row.expand(batch, length))


def test_inverse_dynamics_with_k2_hides_two_actions_before_each_observation() -> None:
    mask = masks.inverse_dynamics(8, k=2)
    assert not mask[4, 3] and not mask[4, 1] and mask[4, 0] and mask[4, 2]
    assert not mask[6, 5] and not mask[6, 3] and mask[6, 1]
    assert mask[5, 3]  # action tokens keep causal sight
    assert torch.equal(mask & ~masks.causal(8), torch.zeros(8, 8, dtype=torch.bool))


def test_bidirectional_and_bad_arguments() -> None:
    assert bool(masks.bidirectional(5).all())
    with pytest.raises(ValueError, match="length must be >= 1"):
        masks.causal(0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        masks.inverse_dynamics(8, k=0)
    with pytest.raises(ValueError, match="even token index"):
        masks.inverse_dynamics(8, start=3)


def test_step_tokens_and_interleave_put_obs_at_even_and_actions_at_odd_indices() -> None:
    valid = torch.tensor([[False, True, True]])
    assert masks.step_tokens(valid).tolist() == [[False, False, True, True, True, True]]
    obs = torch.tensor([[True, False, False]])
    act = torch.tensor([[False, False, True]])
    assert masks.interleave(obs, act).tolist() == [[True, False, False, False, False, True]]
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        masks.step_tokens(torch.ones(3, dtype=torch.bool))


def test_with_key_padding_hides_padding_keys_but_keeps_the_diagonal() -> None:
    token_valid = torch.tensor([[False, False, True, True], [True, True, True, True]])
    mask = masks.with_key_padding(masks.causal(4), token_valid)
    assert mask.shape == (2, 1, 4, 4)
    expected_0 = torch.tensor(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool
    )  # padded queries see only themselves, real ones only real keys
    assert torch.equal(mask[0, 0], expected_0)
    assert torch.equal(mask[1, 0], masks.causal(4))
    with pytest.raises(ValueError, match="token_valid has L=4"):
        masks.with_key_padding(masks.causal(5), token_valid)


def test_random_token_mask_counts_respects_padding_and_is_seeded() -> None:
    valid = torch.ones(64, 8, dtype=torch.bool)
    valid[:32, :3] = False
    gen = torch.Generator().manual_seed(0)
    hidden = masks.random_token_mask(64, 8, act_ratio=0.5, obs_ratio=0.25, generator=gen, valid_steps=valid)
    assert hidden.shape == (64, 16)
    obs_h, act_h = hidden[:, 0::2], hidden[:, 1::2]
    assert not bool(obs_h[:, 0].any())  # the first observation is an anchor
    assert not bool((hidden & ~masks.step_tokens(valid)).any())  # padding is never chosen
    assert act_h[32:].sum(1).eq(4).all()  # round(0.5 * 8) actions in full windows
    assert act_h[:32].sum(1).eq(4).all()  # still 4 of the 5 real steps in padded ones
    assert obs_h[32:].sum(1).le(2).all()
    again = masks.random_token_mask(
        64, 8, act_ratio=0.5, obs_ratio=0.25, generator=torch.Generator().manual_seed(0), valid_steps=valid
    )
    assert torch.equal(hidden, again)
    assert not torch.equal(hidden[:, 1::2].float().mean(0), torch.full((8,), 0.5))  # random positions
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        masks.random_token_mask(2, 4, act_ratio=1.5)


def test_random_token_mask_keeps_the_first_real_observation_of_a_padded_window() -> None:
    valid = torch.tensor([[False, False, True, True, True], [True] * 5, [False] * 4 + [True]])
    assert masks.first_valid_step(valid).int().tolist() == [[0, 0, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 1]]
    gen = torch.Generator().manual_seed(0)
    hidden = masks.random_token_mask(3, 5, act_ratio=0.0, obs_ratio=1.0, generator=gen, valid_steps=valid)
    obs_h = hidden[:, 0::2]
    # every real observation but the first real one is hidden; padding never is
    assert obs_h.int().tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 1], [0, 0, 0, 0, 0]]
    assert not bool(hidden[:, 1::2].any())
    with pytest.raises(ValueError, match=r"expected bool step flags of shape \[B, T\]"):
        masks.first_valid_step(valid.int())


def test_apply_token_mask_with_an_embedding_fill_and_shape_check() -> None:
    tokens = torch.arange(12.0).view(1, 4, 3)
    hidden = torch.tensor([[False, True, False, True]])
    fill = torch.tensor([7.0, 8.0, 9.0])
    out = masks.apply_token_mask(tokens, hidden, fill)
    assert torch.equal(out[0, 1], fill) and torch.equal(out[0, 3], fill)
    assert torch.equal(out[0, 0], tokens[0, 0]) and torch.equal(out[0, 2], tokens[0, 2])
    with pytest.raises(ValueError, match="do not match tokens"):
        masks.apply_token_mask(tokens, hidden[:, :3], fill)
