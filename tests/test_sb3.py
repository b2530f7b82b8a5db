"""SB3 plugin: checkpoint weights load, history aligns, frozen or tuned training, save and load."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.env_checker import check_env

from maskctrl.envs import HistoryWrapper, PointMassEnv, get_spec
from maskctrl.models.checkpoint import CheckpointError, EnvInfo, load_checkpoint, save_checkpoint
from maskctrl.models.normalizer import Normalizer
from maskctrl.models.transformer import MaskedControlTransformer, TransformerConfig
from maskctrl.policies.sb3 import MaskedControlExtractor, maskctrl_policy_kwargs

K = 4
PPO_SMALL: dict[str, Any] = {"n_steps": 64, "batch_size": 32, "n_epochs": 2, "seed": 0, "device": "cpu"}
SAC_SMALL: dict[str, Any] = {
    "learning_starts": 64, "batch_size": 32, "buffer_size": 1000, "train_freq": 2, "seed": 0, "device": "cpu",
}  # fmt: skip


def make_checkpoint(path: Path, env: Any, name: str, *, seed: int = 0, discrete: bool = False) -> Path:
    """A tiny checkpoint for ``env`` with non-trivial normalizer statistics."""
    obs_dim = int(np.prod(env.observation_space.shape))
    act_space = env.action_space
    act_dim = int(act_space.n) if discrete else int(act_space.shape[0])
    config = TransformerConfig(
        obs_dim=obs_dim,
        act_dim=act_dim,
        discrete_actions=discrete,
        context_len=8,
        n_layer=1,
        n_head=2,
        d_model=32,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MaskedControlTransformer(config)
    gen = torch.Generator().manual_seed(seed)
    obs = 0.5 + 2.0 * torch.randn(200, obs_dim, generator=gen)
    bounds = {} if discrete else {"act_low": act_space.low, "act_high": act_space.high}
    normalizer = Normalizer.from_data(obs, obs + 0.1 * torch.randn(200, obs_dim, generator=gen), **bounds)
    return save_checkpoint(path, model, normalizer=normalizer, env=EnvInfo.from_env(env, name))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "pointmass": make_checkpoint(root / "pm", PointMassEnv(), "pointmass"),
        "InvertedPendulum": make_checkpoint(
            root / "ip", get_spec("InvertedPendulum").make(), "InvertedPendulum"
        ),
        "cartpole": make_checkpoint(root / "cp", gym.make("CartPole-v1"), "CartPole", discrete=True),
    }


def pointmass(k: int = K) -> HistoryWrapper:
    return HistoryWrapper(PointMassEnv(), history_len=k)


def backbone_state(extractor: torch.nn.Module) -> dict[str, torch.Tensor]:
    assert isinstance(extractor, MaskedControlExtractor)
    return {name: p.detach().clone() for name, p in extractor.backbone.state_dict().items()}


def rollout_obs(env: gym.Env[Any, Any], steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The observation after ``steps`` random steps, batched as ``[1, ...]``."""
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    for _ in range(steps):
        obs, *_ = env.step(env.action_space.sample())
    return {key: value[None] for key, value in obs.items()}


def as_tensors(obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {key: torch.as_tensor(value) for key, value in obs.items()}


# --- loading and features ---------------------------------------------------------------------------


def test_weights_and_normalizer_equal_the_checkpoint(ckpts: dict[str, Path]) -> None:
    kwargs = maskctrl_policy_kwargs(ckpts["pointmass"], env=pointmass())
    model = PPO("MultiInputPolicy", pointmass(), policy_kwargs=kwargs, **PPO_SMALL)
    extractor = model.policy.features_extractor
    saved = load_checkpoint(ckpts["pointmass"])
    assert isinstance(extractor, MaskedControlExtractor) and saved.normalizer is not None
    expected = saved.model.state_dict()
    assert backbone_state(extractor).keys() == expected.keys()
    for name, value in backbone_state(extractor).items():
        assert torch.equal(value, expected[name]), name
    assert torch.equal(extractor.obs_mean, saved.normalizer.obs_mean)
    assert torch.equal(extractor.obs_std, saved.normalizer.obs_std)
    assert extractor.features_dim == 32


def test_history_features_equal_the_backbone_on_the_aligned_window(ckpts: dict[str, Path]) -> None:
    env = pointmass()
    extractor = MaskedControlExtractor(env.observation_space, checkpoint=str(ckpts["pointmass"]))
    saved = load_checkpoint(ckpts["pointmass"])
    assert saved.normalizer is not None
    obs = as_tensors(rollout_obs(env, steps=2))  # 3 real slots, 1 padding slot
    assert obs["valid"].tolist() == [[0.0, 1.0, 1.0, 1.0]]
    norm = saved.normalizer
    expected = saved.model.encode_features(
        norm.normalize_obs(obs["obs"]), norm.normalize_action(obs["act"][:, 1:]), obs["valid"] > 0
    )
    torch.testing.assert_close(extractor(obs), expected, rtol=0, atol=0)


def test_features_read_the_actions_inside_the_window_only(ckpts: dict[str, Path]) -> None:
    env = pointmass()
    extractor = MaskedControlExtractor(env.observation_space, checkpoint=str(ckpts["pointmass"]))
    obs = as_tensors(rollout_obs(env, steps=6))  # a full window
    base = extractor(obs)

    def perturbed(key: str, index: int) -> torch.Tensor:
        changed = {k: v.clone() for k, v in obs.items()}
        changed[key][:, index] += 0.5
        return extractor(changed)

    # act[0] led to the oldest observation: it has no token. act[-1] led to the current one.
    torch.testing.assert_close(perturbed("act", 0), base, rtol=0, atol=0)
    assert not torch.allclose(perturbed("act", -1), base)
    assert not torch.allclose(perturbed("obs", 0), base)


def test_padding_slots_do_not_change_features(ckpts: dict[str, Path]) -> None:
    env = pointmass()
    extractor = MaskedControlExtractor(env.observation_space, checkpoint=str(ckpts["pointmass"]))
    obs = as_tensors(rollout_obs(env, steps=1))  # valid [0, 0, 1, 1]
    noisy = {k: v.clone() for k, v in obs.items()}
    noisy["obs"][:, :2] = 3.0
    noisy["act"][:, :2] = -0.7
    torch.testing.assert_close(extractor(noisy), extractor(obs), rtol=0, atol=0)


def test_plain_box_is_a_history_of_one(ckpts: dict[str, Path]) -> None:
    box = MaskedControlExtractor(PointMassEnv().observation_space, checkpoint=str(ckpts["pointmass"]))
    one = pointmass(k=1)
    dict_one = MaskedControlExtractor(one.observation_space, checkpoint=str(ckpts["pointmass"]))
    obs = as_tensors(rollout_obs(one, steps=3))
    torch.testing.assert_close(box(obs["obs"][:, 0].double()), dict_one(obs), rtol=0, atol=0)


# --- training ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("freeze", [True, False])
def test_ppo_frozen_weights_stay_tuned_ones_change(ckpts: dict[str, Path], freeze: bool) -> None:
    env = pointmass()
    kwargs = maskctrl_policy_kwargs(ckpts["pointmass"], freeze=freeze, env=env)
    model = PPO("MultiInputPolicy", env, policy_kwargs=kwargs, **PPO_SMALL)
    extractor = model.policy.features_extractor
    before = backbone_state(extractor)
    model.learn(256)
    after = backbone_state(extractor)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    if freeze:
        assert changed == []
        assert not any(p.requires_grad for p in extractor.backbone.parameters())
        model.policy.set_training_mode(True)
        assert extractor.training and not extractor.backbone.training
    else:
        assert "blocks.0.attn.qkv.weight" in changed and "obs_embed.weight" in changed
        model.policy.set_training_mode(True)
        assert extractor.backbone.training


def test_sac_trains_with_a_frozen_extractor_on_history(ckpts: dict[str, Path]) -> None:
    env = pointmass()
    model = SAC(
        "MultiInputPolicy",
        env,
        policy_kwargs=maskctrl_policy_kwargs(ckpts["pointmass"], env=env),
        **SAC_SMALL,
    )
    before = backbone_state(model.actor.features_extractor)
    model.learn(200)
    assert model.num_timesteps == 200 and model._n_updates == (200 - 64) // 2
    for extractor in (model.actor.features_extractor, model.critic.features_extractor):
        after = backbone_state(extractor)
        assert all(torch.equal(before[name], after[name]) for name in before)


@pytest.mark.parametrize("algo", ["PPO", "SAC"])
def test_inverted_pendulum_plain_box_trains(ckpts: dict[str, Path], algo: str) -> None:
    env = get_spec("InvertedPendulum").make()
    check_env(env, warn=False, skip_render_check=True)
    kwargs = maskctrl_policy_kwargs(
        ckpts["InvertedPendulum"], env=env, env_name="InvertedPendulum", freeze=False
    )
    model = (
        PPO("MlpPolicy", env, policy_kwargs=kwargs, **PPO_SMALL)
        if algo == "PPO"
        else SAC("MlpPolicy", env, policy_kwargs=kwargs, **SAC_SMALL)
    )
    extractors = (
        [model.policy.features_extractor]
        if isinstance(model, PPO)
        else [model.actor.features_extractor, model.critic.features_extractor]  # tuned: one each
    )
    assert len({id(e) for e in extractors}) == len(extractors)
    before = [backbone_state(e) for e in extractors]
    model.learn(192)
    assert model.num_timesteps >= 192
    for old, extractor in zip(before, extractors, strict=True):
        assert not torch.equal(
            old["blocks.0.mlp.fc.weight"], backbone_state(extractor)["blocks.0.mlp.fc.weight"]
        )
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert env.action_space.contains(action)


def test_check_env_passes_on_the_wrapped_envs() -> None:
    check_env(pointmass(), warn=False)
    check_env(
        HistoryWrapper(get_spec("InvertedPendulum").make(), history_len=K), warn=False, skip_render_check=True
    )


def test_scratch_config_trains() -> None:
    env = pointmass()
    config = TransformerConfig(obs_dim=4, act_dim=2, context_len=K, n_layer=1, n_head=2, d_model=16)
    model = PPO(
        "MultiInputPolicy", env, policy_kwargs=maskctrl_policy_kwargs(config=config, freeze=False, env=env),
        **PPO_SMALL,
    )  # fmt: skip
    assert model.policy.features_extractor.features_dim == 16
    model.learn(64)


# --- saving and loading -----------------------------------------------------------------------------


@pytest.mark.parametrize("remove_checkpoint", [False, True])
def test_save_then_load_gives_identical_actions(
    ckpts: dict[str, Path], tmp_path: Path, remove_checkpoint: bool
) -> None:
    ckpt = shutil.copytree(ckpts["pointmass"], tmp_path / "ckpt")
    env = pointmass()
    kwargs = maskctrl_policy_kwargs(ckpt, freeze=False, env=env)
    model = PPO("MultiInputPolicy", env, policy_kwargs=kwargs, **PPO_SMALL)
    model.learn(64)  # tuned: the saved weights are no longer the checkpoint's
    model.save(tmp_path / "ppo.zip")
    if remove_checkpoint:
        shutil.rmtree(ckpt)
        with pytest.warns(UserWarning, match="no longer exists"):
            loaded = PPO.load(tmp_path / "ppo.zip", device="cpu")
    else:
        loaded = PPO.load(tmp_path / "ppo.zip", device="cpu")
    batch = {
        k: np.concatenate([rollout_obs(env, s, seed=s)[k] for s in range(5)]) for k in ("obs", "act", "valid")
    }
    expected, _ = model.predict(batch, deterministic=True)
    actual, _ = loaded.predict(batch, deterministic=True)
    np.testing.assert_array_equal(actual, expected)
    tuned, restored = (
        backbone_state(model.policy.features_extractor),
        backbone_state(loaded.policy.features_extractor),
    )
    assert all(torch.equal(tuned[name], restored[name]) for name in tuned)


def test_policy_kwargs_are_plain_data(ckpts: dict[str, Path]) -> None:
    import json

    kwargs = maskctrl_policy_kwargs(ckpts["pointmass"])
    assert kwargs["features_extractor_class"] is MaskedControlExtractor
    assert json.loads(json.dumps(kwargs["features_extractor_kwargs"]))["checkpoint"] == str(
        ckpts["pointmass"]
    )
    assert kwargs["share_features_extractor"] is True
    assert "share_features_extractor" not in maskctrl_policy_kwargs(ckpts["pointmass"], freeze=False)


# --- bad input --------------------------------------------------------------------------------------


def test_checkpoint_dims_that_do_not_fit_the_env_are_named(ckpts: dict[str, Path]) -> None:
    reacher, o = get_spec("Reacher").make(), get_spec("Reacher").obs_dim  # 10 (v5) or 11 (v4)
    with pytest.raises(CheckpointError, match=rf"checkpoint expects obs dim 4, the env has {o}"):
        maskctrl_policy_kwargs(ckpts["pointmass"], env=reacher)
    with pytest.raises(CheckpointError, match=rf"checkpoint expects obs dim 4, the observation has {o} per"):
        PPO("MlpPolicy", reacher, policy_kwargs=maskctrl_policy_kwargs(ckpts["pointmass"]), **PPO_SMALL)
    with pytest.raises(CheckpointError, match=r"expects action dim 1, the observation's 'act' has 2"):
        MaskedControlExtractor(pointmass().observation_space, checkpoint=str(ckpts["InvertedPendulum"]))
    with pytest.raises(CheckpointError, match=r"trained on 'pointmass', not 'InvertedPendulum'"):
        maskctrl_policy_kwargs(
            ckpts["pointmass"], env=get_spec("InvertedPendulum").make(), env_name="InvertedPendulum"
        )
    with pytest.raises(CheckpointError, match=r"K=9 steps exceeds the checkpoint's context_len=8"):
        maskctrl_policy_kwargs(ckpts["pointmass"], env=pointmass(k=9))


def test_history_required_but_plain_env_or_wrong_dict(ckpts: dict[str, Path]) -> None:
    with pytest.raises(
        ValueError, match=r"history_len=4 needs observations from .*HistoryWrapper\(env, history_len=4\)"
    ):
        maskctrl_policy_kwargs(ckpts["pointmass"], env=PointMassEnv(), history_len=4)
    kwargs = maskctrl_policy_kwargs(ckpts["pointmass"], history_len=4)
    with pytest.raises(ValueError, match=r"HistoryWrapper\(env, history_len=4\)"):
        PPO("MlpPolicy", PointMassEnv(), policy_kwargs=kwargs, **PPO_SMALL)
    with pytest.raises(ValueError, match=r"observations hold K=3 steps"):
        PPO("MultiInputPolicy", pointmass(k=3), policy_kwargs=kwargs, **PPO_SMALL)
    space = pointmass().observation_space
    assert isinstance(space, spaces.Dict)
    no_act = spaces.Dict({"obs": space["obs"], "valid": space["valid"]})
    with pytest.raises(ValueError, match=r"Dict observation lacks \['act'\]"):
        MaskedControlExtractor(no_act, checkpoint=str(ckpts["pointmass"]))


def test_discrete_and_continuous_mismatch(ckpts: dict[str, Path]) -> None:
    cartpole = gym.make("CartPole-v1")
    with pytest.raises(
        CheckpointError, match=r"checkpoint expects continuous \(Box\) actions, the env has Discrete"
    ):
        maskctrl_policy_kwargs(ckpts["pointmass"], env=cartpole)
    with pytest.raises(CheckpointError, match=r"checkpoint expects discrete actions, the env has Box"):
        maskctrl_policy_kwargs(ckpts["cartpole"], env=get_spec("InvertedPendulum").make())
    with pytest.raises(
        CheckpointError, match=r"discrete actions, HistoryWrapper observations record continuous"
    ):
        MaskedControlExtractor(
            HistoryWrapper(get_spec("InvertedPendulum").make(), 2).observation_space,
            checkpoint=str(ckpts["cartpole"]),
        )
    # A discrete checkpoint on a discrete env works (a history of one: no past actions needed).
    model = PPO(
        "MlpPolicy",
        cartpole,
        policy_kwargs=maskctrl_policy_kwargs(ckpts["cartpole"], env=cartpole),
        **PPO_SMALL,
    )
    model.learn(64)


def test_needs_exactly_one_source(ckpts: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of checkpoint"):
        maskctrl_policy_kwargs()
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        maskctrl_policy_kwargs(tmp_path / "missing")
    config = TransformerConfig(obs_dim=3, act_dim=2, n_layer=1, n_head=2, d_model=16)
    with pytest.raises(ValueError, match=r"model config expects obs dim 3, the env has 4"):
        maskctrl_policy_kwargs(config=config, env=pointmass())
