"""imitation's bc.BC fitting an ActorCriticPolicy whose features extractor is our backbone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3.common.evaluation import evaluate_policy

from maskctrl.data.collect import RandomPolicy
from maskctrl.data.episodes import EpisodeData
from maskctrl.envs.registry import EnvSpec
from maskctrl.models.checkpoint import CheckpointError, load_checkpoint
from maskctrl.policies.imitation import (
    BCTrainerConfig,
    episodes_to_trajectories,
    make_bc_trainer,
    make_policy,
    make_venv,
)

pytest.importorskip("imitation.algorithms.bc")

CheckpointFactory = Callable[[Path, EnvSpec, EpisodeData], Path]
"""The ``make_checkpoint`` fixture (see conftest)."""


def backbone_weights(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's parameters inside an SB3 policy's (shared) features extractor."""
    extractor = policy.features_extractor
    return {name: value.detach().clone() for name, value in extractor.backbone.state_dict().items()}


def head_weights(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The action head and the MLP between it and the features."""
    return {
        name: value.detach().clone()
        for name, value in policy.state_dict().items()
        if name.startswith(("action_net", "mlp_extractor.policy_net"))
    }


@pytest.mark.parametrize("history_len", [None, 4])
@pytest.mark.parametrize("freeze", [True, False])
def test_bc_keeps_a_frozen_checkpoint_and_tunes_an_unfrozen_one(
    tmp_path: Path,
    make_checkpoint: CheckpointFactory,
    pointmass: EnvSpec,
    pointmass_random_data: EpisodeData,
    freeze: bool,
    history_len: int | None,
) -> None:
    checkpoint = make_checkpoint(tmp_path / "ckpt", pointmass, pointmass_random_data)
    saved = load_checkpoint(checkpoint).model.state_dict()
    venv = make_venv(pointmass, seed=0, history_len=history_len)
    policy = make_policy(venv, checkpoint, freeze=freeze, env_name="pointmass")
    before = backbone_weights(policy)
    for name, value in saved.items():
        torch.testing.assert_close(before[name], value, rtol=0, atol=0, msg=name)
    heads_before = head_weights(policy)

    trajectories = episodes_to_trajectories(pointmass_random_data, history_len=history_len)
    trainer = make_bc_trainer(policy, trajectories, rng=np.random.default_rng(0))
    trainer.train(n_batches=10, progress_bar=False)

    after = backbone_weights(policy)
    changed = [name for name in saved if not torch.equal(after[name], saved[name])]
    if freeze:
        assert changed == []
    else:
        assert len(changed) > len(saved) // 2
    assert all(not torch.equal(head_weights(policy)[name], value) for name, value in heads_before.items())
    actions, _ = policy.predict(venv.reset(), deterministic=True)
    assert actions.shape == (1, 2)


def test_checkpoint_of_another_env_is_a_clear_error(
    tmp_path: Path,
    make_checkpoint: CheckpointFactory,
    pointmass: EnvSpec,
    reacher: EnvSpec,
    pointmass_random_data: EpisodeData,
) -> None:
    checkpoint = make_checkpoint(tmp_path / "ckpt", pointmass, pointmass_random_data)
    venv = make_venv(reacher, seed=0)
    with pytest.raises(CheckpointError, match=f"checkpoint expects obs dim 4, the env has {reacher.obs_dim}"):
        make_policy(venv, checkpoint)


def test_policy_needs_a_backbone_source(pointmass: EnvSpec) -> None:
    venv = make_venv(pointmass, seed=0)
    with pytest.raises(ValueError, match=r"exactly one of checkpoint .* or config"):
        make_policy(venv)


def test_bc_from_a_checkpoint_beats_random_on_reacher(
    tmp_path: Path, make_checkpoint: CheckpointFactory, reacher: EnvSpec, reacher_expert_data: EpisodeData
) -> None:
    """HistoryWrapper observations (K=4), backbone from a checkpoint, fine-tuned on 4 expert episodes."""
    history_len, eval_episodes = 4, 5
    checkpoint = make_checkpoint(tmp_path / "ckpt", reacher, reacher_expert_data)
    venv = make_venv(reacher, seed=0, history_len=history_len)
    torch.manual_seed(0)
    policy = make_policy(venv, checkpoint, freeze=False, env_name="Reacher")
    trajectories = episodes_to_trajectories(reacher_expert_data, history_len=history_len)
    trainer = make_bc_trainer(policy, trajectories, rng=np.random.default_rng(0), config=BCTrainerConfig())
    trainer.train(n_batches=200, progress_bar=False)

    venv.seed(1000)
    learned, _ = evaluate_policy(policy, venv, n_eval_episodes=eval_episodes, return_episode_rewards=True)
    venv.seed(1000)
    random_policy = RandomPolicy(venv.action_space, 0, observation_space=venv.observation_space)
    random, _ = evaluate_policy(
        random_policy, venv, n_eval_episodes=eval_episodes, return_episode_rewards=True
    )
    expert_return = float(reacher_expert_data.returns().mean())
    print(
        f"Reacher returns: BC {np.mean(learned):.2f}, random {np.mean(random):.2f}, expert {expert_return:.2f}"
    )
    # Random actions pay ~0.67 per step in control cost alone (about -42 per episode).
    assert np.mean(learned) > np.mean(random) + 20.0
