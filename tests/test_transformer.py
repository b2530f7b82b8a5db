"""The masked control transformer: shapes, no leakage under each mask, padding, checkpoints, errors."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from maskctrl.models import masks
from maskctrl.models.transformer import MaskedControlTransformer, ModelOutput, TransformerConfig

OBS, ACT, T = 5, 3, 6
HEADS = ("delta_obs", "reward", "policy", "inverse", "recon_action", "recon_obs")


def make_model(seed: int = 0, **overrides: Any) -> MaskedControlTransformer:
    torch.manual_seed(seed)
    fields: dict[str, Any] = {
        "obs_dim": OBS,
        "act_dim": ACT,
        "context_len": 8,
        "n_layer": 3,
        "n_head": 2,
        "d_model": 32,
    }
    fields.update(overrides)
    return MaskedControlTransformer(TransformerConfig(**fields)).eval()


def window(batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, T, OBS, generator=gen), torch.randn(batch, T, ACT, generator=gen)


def all_heads(out: ModelOutput) -> dict[str, torch.Tensor]:
    return {name: getattr(out, name) for name in HEADS}


def assert_unchanged(new: torch.Tensor, old: torch.Tensor) -> None:
    """Masked-out inputs contribute exact zeros, so no leakage means bitwise-equal outputs."""
    assert torch.equal(new, old), f"changed by up to {(new - old).abs().max().item():.3g}"


def assert_changed(new: torch.Tensor, old: torch.Tensor) -> None:
    """Heads of a fresh model output ~1e-3; a real influence moves them far more than rounding."""
    assert (new - old).abs().max() > 1e-6, "expected the perturbation to reach this output"


def perturb_token(obs: torch.Tensor, act: torch.Tensor, token: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A copy of the window with token ``token`` (2t = o_t, 2t + 1 = a_t) changed a lot."""
    obs, act = obs.clone(), act.clone()
    step = token // 2
    if token % 2 == 0:
        obs[:, step] += 3.0
    else:
        act[:, step] -= 3.0
    return obs, act


def test_output_shapes_continuous() -> None:
    model = make_model()
    obs, act = window(batch=4)
    out = model(obs, act)
    assert out.hidden.shape == (4, 2 * T, 32)
    assert out.delta_obs.shape == (4, T, OBS) and out.recon_obs.shape == (4, T, OBS)
    assert out.reward.shape == (4, T)
    for name in ("policy", "inverse", "recon_action"):
        assert getattr(out, name).shape == (4, T, ACT)
    assert model.encode_features(obs, act).shape == (4, model.feature_dim)


def test_discrete_actions_give_logits_and_reject_float_shapes() -> None:
    model = make_model(discrete_actions=True, act_dim=4)
    obs, _ = window()
    act = torch.randint(0, 4, (2, T))
    out = model(obs, act)
    assert out.policy.shape == (2, T, 4) and out.inverse.shape == (2, T, 4)
    with pytest.raises(ValueError, match=r"discrete action indices of shape \(2, 6\)"):
        model(obs, torch.randn(2, T, 4))


@pytest.mark.parametrize("t", [0, 2, 4])
def test_causal_delta_prediction_ignores_every_later_token_but_not_earlier_ones(t: int) -> None:
    model = make_model()
    obs, act = window()
    base = model(obs, act).delta_obs[:, t]  # read at a_t, token 2t + 1
    for token in range(2 * t + 2, 2 * T):
        changed = model(*perturb_token(obs, act, token)).delta_obs[:, t]
        assert_unchanged(changed, base)
    for token in range(2 * t + 2):  # o_0 .. a_t, a_t itself included
        assert_changed(model(*perturb_token(obs, act, token)).delta_obs[:, t], base)


@pytest.mark.parametrize("t", [0, 2, 4])
def test_inverse_dynamics_mask_hides_a_t_from_o_t_plus_1(t: int) -> None:
    model = make_model()
    obs, act = window()
    mask = masks.inverse_dynamics(2 * T)
    base = model(obs, act, attn_mask=mask).inverse[:, t + 1]  # o_{t+1} predicts a_t
    without_action = model(*perturb_token(obs, act, 2 * t + 1), attn_mask=mask).inverse[:, t + 1]
    assert_unchanged(without_action, base)
    for token in range(2 * t + 3, 2 * T):  # and nothing after o_{t+1}
        assert_unchanged(model(*perturb_token(obs, act, token), attn_mask=mask).inverse[:, t + 1], base)
    assert_changed(model(*perturb_token(obs, act, 2 * t), attn_mask=mask).inverse[:, t + 1], base)
    # Under the plain causal mask the same action does reach o_{t+1}: the mask is what hides it.
    causal = model(obs, act).inverse[:, t + 1]
    assert_changed(model(*perturb_token(obs, act, 2 * t + 1)).inverse[:, t + 1], causal)


@pytest.mark.parametrize("mask_fill", ["learned", "constant"])
def test_hidden_tokens_true_values_change_no_output(mask_fill: str) -> None:
    model = make_model(mask_fill=mask_fill)
    obs, act = window()
    hidden = torch.zeros(2, 2 * T, dtype=torch.bool)
    hidden[:, [1, 3, 6, 11]] = True  # a_0, a_1, o_3, a_5
    full = masks.bidirectional(2 * T)
    base = model(obs, act, attn_mask=full, hidden=hidden)
    for token in (1, 3, 6, 11):
        changed = model(*perturb_token(obs, act, token), attn_mask=full, hidden=hidden)
        assert_unchanged(changed.hidden, base.hidden)
        for name, value in all_heads(changed).items():
            assert_unchanged(value, getattr(base, name))
    visible = model(*perturb_token(obs, act, 5), attn_mask=full, hidden=hidden)  # a_2 is not hidden
    assert_changed(visible.recon_action, base.recon_action)


def test_hidden_discrete_action_does_not_leak_with_constant_fill() -> None:
    model = make_model(discrete_actions=True, act_dim=4, mask_fill="constant")
    obs, _ = window()
    act = torch.randint(0, 4, (2, T), generator=torch.Generator().manual_seed(3))
    hidden = torch.zeros(2, 2 * T, dtype=torch.bool)
    hidden[:, 3] = True
    full = masks.bidirectional(2 * T)
    base = model(obs, act, attn_mask=full, hidden=hidden).hidden
    other = act.clone()
    other[:, 1] = (act[:, 1] + 1) % 4
    assert_unchanged(model(obs, other, attn_mask=full, hidden=hidden).hidden, base)


def test_padding_steps_do_not_reach_real_positions_even_as_nan() -> None:
    model = make_model()
    obs, act = window()
    valid = torch.ones(2, T, dtype=torch.bool)
    valid[0, :2] = False
    base = model(obs, act, valid=valid)
    obs_nan, act_nan = obs.clone(), act.clone()
    obs_nan[0, :2] = float("nan")
    act_nan[0, :2] = float("inf")
    changed = model(obs_nan, act_nan, valid=valid)
    assert_unchanged(changed.hidden, base.hidden)
    assert torch.isfinite(changed.delta_obs).all()
    # Without the padding mask the padded values would matter.
    assert_changed(model(obs, act).hidden[0, 4:], base.hidden[0, 4:])


def test_per_sample_masks_equal_separate_forward_passes() -> None:
    model = make_model()
    obs, act = window(batch=3)
    length = 2 * T
    patterns = [masks.causal(length), masks.inverse_dynamics(length), masks.bidirectional(length)]
    together = model(obs, act, attn_mask=torch.stack(patterns).unsqueeze(1)).hidden  # [3, 1, L, L]
    for i, pattern in enumerate(patterns):
        alone = model(obs[i : i + 1], act[i : i + 1], attn_mask=pattern).hidden
        torch.testing.assert_close(together[i : i + 1], alone, rtol=0, atol=1e-5)


def test_encode_features_is_the_last_obs_token_and_ignores_the_last_action() -> None:
    model = make_model()
    obs, act = window()
    valid = torch.tensor([[False, True, True, True, True, True], [True] * T])
    features = model.encode_features(obs, act, valid)
    torch.testing.assert_close(features, model(obs, act, valid=valid).hidden[:, 2 * T - 2])
    other = act.clone()
    other[:, -1] = 9.0
    assert_unchanged(model.encode_features(obs, other, valid), features)
    assert_unchanged(model.encode_features(obs, act[:, :-1], valid), features)


def test_timestep_offset_and_context_limit() -> None:
    model = make_model()  # context_len 8
    obs, act = window()  # 6 steps
    assert not torch.allclose(model(obs, act, t0=2).hidden, model(obs, act).hidden)
    with pytest.raises(ValueError, match="exceeds context_len=8"):
        model(obs, act, t0=3)


def test_int_and_tensor_timesteps_embed_alike_with_the_same_gradient() -> None:
    model = make_model()
    obs = torch.randn(3, 5)
    by_int = model.embed_obs(obs, 4)
    by_tensor = model.embed_obs(obs, torch.tensor(4))
    assert torch.equal(by_int, by_tensor)
    (grad_int,) = torch.autograd.grad(by_int.square().sum(), model.timestep.weight)
    (grad_tensor,) = torch.autograd.grad(by_tensor.square().sum(), model.timestep.weight)
    assert torch.equal(grad_int, grad_tensor) and grad_int[4].abs().sum() > 0
    with pytest.raises(ValueError, match=r"timestep 8 is outside the context \[0, 8\)"):
        model.embed_act(torch.zeros(3, 3), 8)


def test_boundary_errors_name_what_was_wrong() -> None:
    model = make_model()
    obs, act = window()
    with pytest.raises(ValueError, match=r"obs of shape \[B, T, 5\], got \(2, 6, 4\)"):
        model(obs[..., :4], act)
    with pytest.raises(ValueError, match=r"actions of shape \(2, 6, 3\), got \(2, 5, 3\)"):
        model(obs, act[:, :5])
    with pytest.raises(ValueError, match=r"hidden of shape \(2, 12\)"):
        model(obs, act, hidden=torch.zeros(2, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="valid of shape"):
        model(obs, act, valid=torch.ones(2, T))
    with pytest.raises(
        ValueError, match=r"actions of dtype torch.float32 \(the model's\), got torch.float64"
    ):
        model(obs, act.double())
    with pytest.raises(ValueError, match="divisible by n_head"):
        TransformerConfig(obs_dim=3, act_dim=2, d_model=30, n_head=4)
    with pytest.raises(ValueError, match="mask_fill must be one of"):
        TransformerConfig(obs_dim=3, act_dim=2, mask_fill="zeros")


def test_rotary_off_still_works_and_changes_the_model() -> None:
    obs, act = window()
    plain = make_model(rotary=False)
    assert plain(obs, act).hidden.shape == (2, 2 * T, 32)
    with torch.no_grad():
        rotary = make_model(rotary=True)
        rotary.load_state_dict(plain.state_dict())
    assert not torch.allclose(rotary(obs, act).hidden, plain(obs, act).hidden)


def test_checkpoint_round_trip_through_config_dict_and_safetensors(tmp_path: object) -> None:
    model = make_model(discrete_actions=False, mask_fill="learned")
    path = f"{tmp_path}/model.safetensors"
    save_file(model.state_dict(), path)  # fails on shared storage or non-tensors
    assert all(isinstance(v, torch.Tensor) for v in model.state_dict().values())
    assert not any(name.startswith("rotary_") for name in model.state_dict())  # derived, not stored
    rebuilt = MaskedControlTransformer(TransformerConfig(**dataclasses.asdict(model.config)))
    rebuilt.load_state_dict(load_file(path))
    rebuilt.eval()
    obs, act = window()
    torch.testing.assert_close(rebuilt(obs, act).hidden, model(obs, act).hidden, rtol=0, atol=0)
