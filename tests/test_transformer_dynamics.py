"""TransformerDynamics: equals full recompute, windows, rewards, policy prior, NaN safety, env checks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces

import maskctrl.envs  # noqa: F401  (registers the built-in envs)
from maskctrl.envs.registry import EnvSpec, get_spec
from maskctrl.models.checkpoint import CheckpointError, EnvInfo, save_checkpoint
from maskctrl.models.kv_cache import imagine_recompute
from maskctrl.models.normalizer import Normalizer
from maskctrl.models.transformer import MaskedControlTransformer, TransformerConfig
from maskctrl.planner import transformer_dynamics as td
from maskctrl.planner.dynamics import DynamicsModel, History, Rollout
from maskctrl.planner.mpc import MPCConfig, MPCController
from maskctrl.planner.transformer_dynamics import TransformerDynamics

O, A, C = 5, 3, 10  # noqa: E741  (O is the obs dim, as in the shape comments)
LOW, HIGH = torch.tensor([-2.0, -1.0, 0.0]), torch.tensor([1.0, 1.0, 0.5])  # asymmetric action box


def toy_spec() -> EnvSpec:
    return EnvSpec(
        name="toy",
        gym_id="toy-v0",
        obs_dim=O,
        act_dim=A,
        reward_fn=lambda obs, act, nxt: -(nxt - 0.5 * obs).square().sum(-1) - act.square().sum(-1),
        termination_fn=lambda nxt: nxt[..., 1] > -0.3,
        reward_exact=True,
        termination_exact=True,
    )


def make_model(seed: int = 0, context_len: int = C, **kw: Any) -> MaskedControlTransformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        obs_dim=O, act_dim=A, context_len=context_len, n_layer=2, n_head=2, d_model=32, **kw
    )
    model = MaskedControlTransformer(cfg).eval()
    with torch.no_grad():  # O(1) weights: sharp attention, so a wrong key, position or mask shows
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 1.0 / param.shape[-1] ** 0.5)
            elif not name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                param.normal_(0.0, 0.1)
    return model


def make_normalizer(obs_dim: int = O, low: torch.Tensor = LOW, high: torch.Tensor = HIGH) -> Normalizer:
    gen = torch.Generator().manual_seed(1)
    obs = 2.0 * torch.randn(300, obs_dim, generator=gen) + 1.0
    return Normalizer.from_data(
        obs,
        obs + 0.3 * torch.randn(300, obs_dim, generator=gen) + 0.1,
        rewards=3.0 * torch.randn(300, generator=gen) - 1.0,
        act_low=low,
        act_high=high,
    )


def make_history(k: int, pad: int, seed: int = 2) -> History:
    gen = torch.Generator().manual_seed(seed)
    obs = 2.0 * torch.randn(k, O, generator=gen) + 1.0
    act = LOW + (HIGH - LOW) * torch.rand(k, A, generator=gen)
    act[-1] = 0.0
    valid = torch.ones(k, dtype=torch.bool)
    valid[:pad], obs[:pad], act[:pad] = False, 0.0, 0.0
    return History(obs=obs, act=act, valid=valid, env_index=0)


def candidates(n: int, h: int, seed: int = 3) -> torch.Tensor:
    return LOW + (HIGH - LOW) * torch.rand(n, h, A, generator=torch.Generator().manual_seed(seed))


def reference(
    model: MaskedControlTransformer,
    norm: Normalizer,
    history: History,
    actions: torch.Tensor,
    k: int,
    window: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw next_obs [N,H,O] and model reward [N,H] from imagine_recompute, window by window."""
    n, horizon, _ = actions.shape

    def next_token(o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return norm.normalize_obs(norm.denormalize_obs(o) + norm.denormalize_delta(d))

    obs = history.obs.expand(n, -1, -1)  # raw [N,K0,O]
    act = history.act[:-1].expand(n, -1, -1)  # raw [N,K0-1,A]
    valid = history.valid.expand(n, -1)
    out_obs, out_rew = [], []
    for start in range(0, horizon, window):
        part = actions[:, start : start + window]
        w_obs, w_valid = obs[:, obs.shape[1] - k :], valid[:, valid.shape[1] - k :]
        w_act = act[:, act.shape[1] - (k - 1) :]
        if start == 0:  # one shared history for all candidates
            w_obs, w_act, w_valid, part = w_obs[:1], w_act[:1], w_valid[:1], part[None]
        else:
            part = part[:, None]
        img = imagine_recompute(
            model,
            norm.normalize_obs(w_obs),
            norm.normalize_action(w_act),
            norm.normalize_action(part),
            valid=w_valid,
            next_obs_fn=next_token,
        )
        nxt = norm.denormalize_obs(img.next_obs).reshape(n, part.shape[2], O)
        out_obs.append(nxt)
        out_rew.append(norm.denormalize_reward(img.reward).reshape(n, part.shape[2]))
        obs = torch.cat([obs, nxt], dim=1)
        act = torch.cat([act, actions[:, start : start + window]], dim=1)
        valid = torch.cat([valid, torch.ones(n, part.shape[2], dtype=torch.bool)], dim=1)
    return torch.cat(out_obs, dim=1), torch.cat(out_rew, dim=1)


@pytest.mark.parametrize(
    ("k0", "pad", "horizon", "n", "max_history"),
    [
        (6, 0, 5, 7, None),  # history shortened to fit one window: K = C - H + 1 = 6
        (6, 3, 5, 7, None),  # left padding inside the window
        (4, 2, 3, 16, None),  # the whole (padded) history fits
        (1, 0, 10, 4, None),  # K = 1, H = C
        (8, 5, 2, 9, 8),
    ],
)
def test_rollout_equals_full_recompute(
    k0: int, pad: int, horizon: int, n: int, max_history: int | None
) -> None:
    model, norm, spec = make_model(), make_normalizer(), toy_spec()
    dyn = TransformerDynamics(model, norm, spec, reward="model", max_history=max_history)
    history, actions = make_history(k0, pad), candidates(n, horizon)
    k, window = dyn.window_plan(k0, horizon)
    assert window == horizon and k + horizon - 1 <= C  # one window: the shared-prefix KV path
    out = dyn.rollout(history, actions)
    ref_obs, ref_rew = reference(model, norm, history, actions, k, window)
    assert out.next_obs.shape == (n, horizon, O) and out.next_obs.dtype == torch.float32
    assert ref_obs.abs().max() > 1.0  # predictions are not trivially small
    torch.testing.assert_close(out.next_obs, ref_obs, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.reward, ref_rew, atol=1e-4, rtol=0)
    # Candidates differ, so a shared cache that leaked between them would show.
    assert (out.next_obs[0] - out.next_obs[1]).abs().max() > 1e-2


@pytest.mark.parametrize(("k0", "horizon", "max_history"), [(6, 12, None), (8, 9, 6), (3, 25, None)])
def test_long_horizons_roll_out_window_by_window(k0: int, horizon: int, max_history: int | None) -> None:
    model, norm = make_model(), make_normalizer()
    dyn = TransformerDynamics(model, norm, toy_spec(), reward="model", max_history=max_history)
    k, window = dyn.window_plan(k0, horizon)
    assert window < horizon and k + window - 1 == C
    history, actions = make_history(k0, 1), candidates(5, horizon)
    out = dyn.rollout(history, actions)
    ref_obs, ref_rew = reference(model, norm, history, actions, k, window)
    torch.testing.assert_close(out.next_obs, ref_obs, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.reward, ref_rew, atol=1e-4, rtol=0)
    recomputed = TransformerDynamics(model, norm, toy_spec(), max_history=max_history, recompute=True)
    torch.testing.assert_close(recomputed.rollout(history, actions).next_obs, out.next_obs, atol=1e-4, rtol=0)


def test_later_rollouts_decode_into_reused_buffers_with_the_same_results() -> None:
    model, norm = make_model(), make_normalizer()
    dyn = TransformerDynamics(model, norm, toy_spec(), reward="model")
    history = make_history(4, 1)
    first, second = candidates(5, 4), candidates(5, 4, seed=7)
    dyn.rollout(history, first)
    again = dyn.rollout(history, second)
    fresh = TransformerDynamics(model, norm, toy_spec(), reward="model").rollout(history, second)
    assert torch.equal(again.next_obs, fresh.next_obs) and torch.equal(again.reward, fresh.reward)


def test_window_plan() -> None:
    dyn = TransformerDynamics(make_model(), make_normalizer(), toy_spec())
    assert dyn.window_plan(8, 3) == (8, 3)  # fits: the whole history
    assert dyn.window_plan(8, 5) == (6, 5)  # shortened to one window
    assert dyn.window_plan(8, 10) == (1, 10)
    assert dyn.window_plan(8, 11) == (5, 6)  # longer than the context: windows of 6 after 5 real steps
    assert TransformerDynamics(make_model(), make_normalizer(), toy_spec(), max_history=7).window_plan(
        8, 5
    ) == (
        7,
        4,
    )
    with pytest.raises(ValueError, match="max_history must be in"):
        TransformerDynamics(make_model(), make_normalizer(), toy_spec(), max_history=C + 1)


def test_spec_rewards_and_terminations() -> None:
    model, norm, spec = make_model(), make_normalizer(), toy_spec()
    history, actions = make_history(4, 1), candidates(6, 4)
    out = TransformerDynamics(model, norm, spec).rollout(history, actions)
    prev = torch.cat([history.current_obs.expand(6, 1, O), out.next_obs[:, :-1]], dim=1)
    torch.testing.assert_close(out.reward, spec.reward_fn(prev, actions, out.next_obs))
    assert torch.equal(out.terminated, spec.termination_fn(out.next_obs))
    assert out.terminated.any() and not out.terminated.all()
    model_reward = TransformerDynamics(model, norm, spec, reward="model").rollout(history, actions).reward
    assert (model_reward - out.reward).abs().max() > 0.1


def test_history_is_encoded_once_per_history_object(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = td.encode_prefix

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(td, "encode_prefix", counting)
    dyn = TransformerDynamics(make_model(), make_normalizer(), toy_spec())
    history, actions = make_history(4, 1), candidates(6, 4)
    first = dyn.rollout(history, actions)
    again = dyn.rollout(history, candidates(3, 4, seed=9))
    assert len(calls) == 1 and again.next_obs.shape == (3, 4, O)
    same_values = History(obs=history.obs.clone(), act=history.act, valid=history.valid, env_index=0)
    torch.testing.assert_close(dyn.rollout(same_values, actions).next_obs, first.next_obs, atol=0, rtol=0)
    assert len(calls) == 2


def test_bf16_autocast_runs_and_stays_close() -> None:
    model, norm, spec = make_model(), make_normalizer(), toy_spec()
    history, actions = make_history(4, 0), candidates(8, 4)
    full = TransformerDynamics(model, norm, spec).rollout(history, actions)
    half = TransformerDynamics(model, norm, spec, bf16=True).rollout(history, actions)
    assert half.next_obs.dtype == torch.float32 and half.reward.dtype == torch.float32
    diff = (half.next_obs - full.next_obs).abs().max()
    assert 0 < diff < 0.1 * full.next_obs.abs().max()


def test_policy_samples_follow_the_policy_head_through_imagined_steps() -> None:
    model, norm, spec = make_model(), make_normalizer(), toy_spec()
    history, horizon = make_history(4, 1), 5
    dyn = TransformerDynamics(model, norm, spec, policy_noise=0.0)
    samples = dyn.policy_samples(history, 2, horizon, torch.Generator().manual_seed(0))
    assert samples.shape == (2, horizon, A)
    torch.testing.assert_close(samples[0], samples[1], atol=1e-6, rtol=0)  # no noise: one sequence
    assert ((samples >= LOW - 1e-6) & (samples <= HIGH + 1e-6)).all()
    k, _ = dyn.window_plan(4, horizon)
    imagined = norm.normalize_obs(
        TransformerDynamics(model, norm, spec).rollout(history, samples[:1]).next_obs[0]
    )
    obs = torch.cat([norm.normalize_obs(history.obs[-k:]), imagined])  # [K+H,O]
    act = torch.cat([norm.normalize_action(history.act[-k:-1]), norm.normalize_action(samples[0])])
    valid = torch.cat([history.valid[-k:], torch.ones(horizon, dtype=torch.bool)])
    for h in range(horizon):  # the policy head at o_h in a full forward over the window
        steps = k + h
        with torch.no_grad():
            out = model(obs[None, :steps], act[None, :steps], valid=valid[None, :steps])
        expected = norm.denormalize_action(out.policy[0, -1].clamp(-1.0, 1.0))
        torch.testing.assert_close(samples[0, h], expected, atol=1e-4, rtol=0)
    noisy = TransformerDynamics(model, norm, spec, policy_noise=0.3)
    one = noisy.policy_samples(history, 4, horizon, torch.Generator().manual_seed(0))
    two = noisy.policy_samples(history, 4, horizon, torch.Generator().manual_seed(0))
    assert torch.equal(one, two) and (one[0] - one[1]).abs().max() > 1e-3


class Recorder:
    """Wraps a dynamics model, keeping every batch of candidates the planner scored."""

    def __init__(self, inner: TransformerDynamics) -> None:
        self.inner, self.batches, self.priors = inner, list[torch.Tensor](), list[torch.Tensor]()

    def rollout(self, history: History, actions: torch.Tensor) -> Rollout:
        self.batches.append(actions.clone())
        return self.inner.rollout(history, actions)

    def policy_samples(
        self, history: History, n: int, horizon: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        self.priors.append(self.inner.policy_samples(history, n, horizon, generator))
        return self.priors[-1]


def controller(dynamics: DynamicsModel, **changes: Any) -> MPCController:
    box = spaces.Box(LOW.numpy(), HIGH.numpy(), dtype=np.float32)
    config = MPCConfig(optimizer="cem", horizon=4, samples=16, iterations=2, history_len=4, **changes)
    return MPCController(dynamics, toy_spec(), box, config)


def test_policy_prior_seeds_a_share_of_the_candidates() -> None:
    model, norm = make_model(), make_normalizer()
    obs = np.linspace(-1.0, 2.0, O)
    plain = Recorder(TransformerDynamics(model, norm, toy_spec()))
    action_plain, _ = controller(plain).predict(obs)
    assert MPCConfig().policy_prior_fraction == 0.0 and plain.priors == []  # off by default
    assert [b.shape[0] for b in plain.batches] == [16, 16]
    seeded = Recorder(TransformerDynamics(model, norm, toy_spec(), policy_noise=0.3))
    action, _ = controller(seeded, policy_prior_fraction=0.25).predict(obs)
    assert len(seeded.priors) == 1 and seeded.priors[0].shape == (4, 4, A)
    for batch in seeded.batches:  # 12 sampled + the same 4 policy sequences in every iteration
        assert batch.shape == (16, 4, A)
        torch.testing.assert_close(batch[-4:], seeded.priors[0], atol=1e-6, rtol=0)
        assert ((batch >= LOW) & (batch <= HIGH)).all()
    assert not torch.equal(seeded.batches[0][:12], plain.batches[0][:12])
    assert np.all(action >= LOW.numpy()) and np.all(action <= HIGH.numpy())
    assert not np.array_equal(action, action_plain)


def test_policy_prior_needs_a_policy() -> None:
    class NoPolicy:
        def rollout(self, history: History, actions: torch.Tensor) -> Rollout:
            raise AssertionError("not reached")

    with pytest.raises(ValueError, match="needs a dynamics model with policy_samples"):
        controller(NoPolicy(), policy_prior_fraction=0.5)
    with pytest.raises(ValueError, match="policy_prior_fraction in"):
        MPCConfig(policy_prior_fraction=1.0)


def _nan_hook(condition: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        return output.masked_fill(condition(inputs[0]).unsqueeze(-1), float("nan"))

    return hook


def test_nan_for_some_candidates_never_wins() -> None:
    model, norm = make_model(), make_normalizer()
    # The model breaks (NaN embedding) for any action whose first normalized component exceeds 0.5.
    model.act_embed.register_forward_hook(_nan_hook(lambda act: act[..., 0] > 0.5))
    recorder = Recorder(TransformerDynamics(model, norm, toy_spec()))
    ctrl = controller(recorder)
    action, _ = ctrl.predict(np.linspace(-1.0, 2.0, O))
    finite = torch.stack([torch.isfinite(ctrl._objective(ctrl.history(0), b)) for b in recorder.batches[:2]])
    assert finite.any() and not finite.all()  # the test covers both kinds of candidates
    assert np.isfinite(action).all() and np.all(action >= LOW.numpy()) and np.all(action <= HIGH.numpy())
    assert norm.normalize_action(torch.as_tensor(action))[0] <= 0.5  # a NaN candidate never won


def test_nan_for_every_candidate_falls_back_to_a_finite_action() -> None:
    model, norm = make_model(), make_normalizer()
    model.heads.delta_obs.register_forward_hook(
        _nan_hook(lambda x: torch.ones_like(x[..., 0], dtype=torch.bool))
    )
    ctrl = controller(TransformerDynamics(model, norm, toy_spec()), policy_prior_fraction=0.25)
    for step in range(2):
        action, _ = ctrl.predict(np.linspace(-1.0, 2.0, O) + step)
        assert np.isfinite(action).all()
        np.testing.assert_allclose(action, ((LOW + HIGH) / 2).numpy(), atol=1e-6)  # the box midpoint


def _save_pointmass_checkpoint(path: Path) -> None:
    spec = get_spec("pointmass")
    env = spec.make()
    torch.manual_seed(0)
    cfg = TransformerConfig(obs_dim=4, act_dim=2, context_len=12, n_layer=1, n_head=2, d_model=16)
    box = env.action_space
    norm = make_normalizer(4, torch.as_tensor(box.low), torch.as_tensor(box.high))
    save_checkpoint(
        path, MaskedControlTransformer(cfg), normalizer=norm, env=EnvInfo.from_env(env, "pointmass")
    )
    env.close()


def test_from_checkpoint_loads_for_its_env_and_refuses_another(tmp_path: Path) -> None:
    _save_pointmass_checkpoint(tmp_path / "ckpt")
    dyn = TransformerDynamics.from_checkpoint(tmp_path / "ckpt", get_spec("pointmass"), reward="model")
    assert dyn.reward == "model" and dyn.model.config.context_len == 12
    history = History(
        obs=torch.ones(3, 4), act=torch.zeros(3, 2), valid=torch.ones(3, dtype=torch.bool), env_index=0
    )
    assert dyn.rollout(history, torch.zeros(5, 6, 2)).next_obs.shape == (5, 6, 4)
    with pytest.raises(CheckpointError) as err:  # same obs dim, other action dim and name
        TransformerDynamics.from_checkpoint(tmp_path / "ckpt", get_spec("InvertedPendulum"))
    message = str(err.value)
    assert "trained on 'pointmass', not 'InvertedPendulum'" in message
    assert "checkpoint expects action dim 2, env 'InvertedPendulum' has 1" in message


def test_bad_inputs_are_refused() -> None:
    dyn = TransformerDynamics(make_model(), make_normalizer(), toy_spec())
    with pytest.raises(ValueError, match=r"expected candidate actions \[N,H,3\], got \(4, 2, 2\)"):
        dyn.rollout(make_history(3, 0), torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match="env 'pointmass' has 4/2"):
        TransformerDynamics(make_model(), make_normalizer(), get_spec("pointmass"))


def test_cuda_graphs_need_a_cuda_model() -> None:
    with pytest.raises(ValueError, match="cuda_graphs needs a model on a CUDA device"):
        TransformerDynamics(make_model(), make_normalizer(), toy_spec(), cuda_graphs=True)
    assert not TransformerDynamics(make_model(), make_normalizer(), toy_spec()).cuda_graphs


def _rollouts_and_policy_samples(dyn: TransformerDynamics) -> list[torch.Tensor]:
    history = make_history(6, 2)
    out = [dyn.rollout(history, candidates(n, 5, seed=n)).next_obs for n in (7, 4)]
    out.append(dyn.rollout(history, candidates(3, 12)).next_obs)  # two windows: 3 histories, 1 candidate each
    gen = torch.Generator().manual_seed(0)
    return [*out, dyn.policy_samples(history, 3, 5, generator=gen)]


@pytest.mark.parametrize("bf16", [False, True])
def test_shape_stable_decoding_path_gives_the_default_paths_results(
    monkeypatch: pytest.MonkeyPatch, bf16: bool
) -> None:
    """``compile=True`` wiring (slots, folded positions, zeroed values) with compilation itself skipped.

    Under bf16 autocast the new keys and values come out of the projection in bfloat16 and are stored
    in the cache's float32 buffers, as the default path's slice assignment stores them. The two paths
    round differently under bf16 (the default path's attention over imagined tokens is a bf16 matmul,
    the shape-stable one a float32 sum): they agree to bf16 precision, not to float32's."""
    model, norm = make_model(), make_normalizer()
    monkeypatch.setattr(td.torch, "compile", lambda fn, **_: fn)
    fixed = TransformerDynamics(model, norm, toy_spec(), reward="model", compile=True, bf16=bf16)
    assert fixed._decode_fixed is td.decode_fixed
    plain = TransformerDynamics(model, norm, toy_spec(), reward="model", bf16=bf16)
    for got, want in zip(
        _rollouts_and_policy_samples(fixed), _rollouts_and_policy_samples(plain), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=0, atol=2e-2 if bf16 else 1e-5)


def test_compiled_rollout_equals_full_recompute() -> None:
    model, norm = make_model(), make_normalizer()
    dyn = TransformerDynamics(model, norm, toy_spec(), reward="model", compile=True)
    history, actions = make_history(6, 2), candidates(7, 5)
    out = dyn.rollout(history, actions)
    k, window = dyn.window_plan(6, 5)
    ref_obs, ref_rew = reference(model, norm, history, actions, k, window)
    torch.testing.assert_close(out.next_obs, ref_obs, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.reward, ref_rew, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="cuda_graphs needs a model on a CUDA device"):
        TransformerDynamics(model, norm, toy_spec(), compile=True, cuda_graphs=True)


def test_a_failed_compilation_names_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._dynamo.exc import BackendCompilerFailed

    def broken(fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            raise BackendCompilerFailed(None, RuntimeError("no C++ compiler found"), None)

        return call

    monkeypatch.setattr(td.torch, "compile", broken)
    dyn = TransformerDynamics(make_model(), make_normalizer(), toy_spec(), compile=True)
    with pytest.raises(RuntimeError, match=r"no C\+\+ compiler found\). On a CPU, .* pass compile=False"):
        dyn.rollout(make_history(4, 0), candidates(3, 2))
