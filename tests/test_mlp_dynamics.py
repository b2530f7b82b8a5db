"""MLPDynamics: the ensemble behind the planner interface, rewards, terminations, checkpoints, NaN safety."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_transformer_dynamics import (
    HIGH,
    LOW,
    A,
    O,
    candidates,
    controller,
    make_history,
    make_normalizer,
    toy_spec,
)

import maskctrl.envs  # noqa: F401  (registers the built-in envs)
from maskctrl.envs.registry import get_spec
from maskctrl.models.ensemble import EnsembleConfig, EnsembleMLP, EnsembleMLPDynamics, save_ensemble
from maskctrl.planner.mlp_dynamics import MLPDynamics


def make_ensemble(obs_dim: int = O, act_dim: int = A, **kw: bool) -> EnsembleMLP:
    config = EnsembleConfig(members=3, hidden=16, layers=2, **kw)
    return EnsembleMLP(obs_dim, act_dim, config, generator=torch.Generator().manual_seed(0)).eval()


def test_rollout_matches_the_ensemble_with_spec_rewards_and_terminations() -> None:
    model, norm, spec = make_ensemble(), make_normalizer(), toy_spec()
    history, actions = make_history(4, 1), candidates(6, 5)
    out = MLPDynamics(model, norm, spec).rollout(history, actions)
    expected_obs, head_reward = EnsembleMLPDynamics(model, norm).rollout(history.current_obs, actions)
    torch.testing.assert_close(out.next_obs, expected_obs)
    assert out.next_obs.shape == (6, 5, O) and out.reward.shape == (6, 5)
    prev = torch.cat([history.current_obs.expand(6, 1, O), out.next_obs[:, :-1]], dim=1)
    torch.testing.assert_close(out.reward, spec.reward_fn(prev, actions, out.next_obs))
    assert torch.equal(out.terminated, spec.termination_fn(out.next_obs))
    model_reward = MLPDynamics(model, norm, spec, reward="model").rollout(history, actions).reward
    torch.testing.assert_close(model_reward, head_reward)
    assert (model_reward - out.reward).abs().max() > 0.1


def test_reward_head_needed_for_model_rewards() -> None:
    with pytest.raises(ValueError, match="predicts no reward"):
        MLPDynamics(make_ensemble(predict_reward=False), make_normalizer(), toy_spec(), reward="model")


def test_from_checkpoint_checks_the_env(tmp_path: Path) -> None:
    box = get_spec("pointmass").make().action_space
    norm = make_normalizer(4, torch.as_tensor(box.low), torch.as_tensor(box.high))
    save_ensemble(
        tmp_path / "named", make_ensemble(4, 2), norm, metadata={"dataset": {"env_name": "pointmass"}}
    )
    save_ensemble(tmp_path / "anonymous", make_ensemble(4, 2), norm)
    dyn = MLPDynamics.from_checkpoint(tmp_path / "named", get_spec("pointmass"), propagation="ts1")
    assert dyn.ensemble.propagation == "ts1" and dyn.device == torch.device("cpu")
    with pytest.raises(ValueError) as err:
        MLPDynamics.from_checkpoint(tmp_path / "named", get_spec("InvertedPendulum"))
    assert "trained on 'pointmass', not 'InvertedPendulum'" in str(err.value)
    assert "ensemble expects action dim 2, env 'InvertedPendulum' has 1" in str(err.value)
    with pytest.raises(ValueError, match="ensemble expects obs dim 4, env 'Reacher' has 10"):
        MLPDynamics.from_checkpoint(tmp_path / "anonymous", get_spec("Reacher"))


def test_nan_predictions_give_finite_in_bounds_actions() -> None:
    model, norm = make_ensemble(), make_normalizer()
    threshold = norm.normalize_action(torch.zeros(A))[0] + 0.2  # normalized first action component

    def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        broken = inputs[0][..., O] > threshold  # [E,N]: the model breaks for large first actions
        return output.masked_fill(broken.unsqueeze(-1), float("nan"))

    handle = model.hidden_layers[0].register_forward_hook(hook)
    ctrl = controller(MLPDynamics(model, norm, toy_spec()))
    action, _ = ctrl.predict(np.linspace(-1.0, 2.0, O))
    returns = ctrl._objective(ctrl.history(0), candidates(64, 4))
    assert torch.isfinite(returns).any() and not torch.isfinite(returns).all()
    assert np.isfinite(action).all() and np.all(action >= LOW.numpy()) and np.all(action <= HIGH.numpy())
    assert norm.normalize_action(torch.as_tensor(action))[0] <= threshold
    handle.remove()
    model.hidden_layers[0].register_forward_hook(lambda m, i, out: torch.full_like(out, float("nan")))
    ctrl = controller(MLPDynamics(model, norm, toy_spec()))
    action, _ = ctrl.predict(np.linspace(-1.0, 2.0, O))
    np.testing.assert_allclose(action, ((LOW + HIGH) / 2).numpy(), atol=1e-6)
