"""Stable-Baselines3 plugin: the masked control transformer as a features extractor.

:class:`MaskedControlExtractor` reads :class:`~maskctrl.envs.wrappers.HistoryWrapper` observations (the
last K observations, actions and a validity mask) or a plain ``Box`` observation (a history of one step),
runs the backbone under its causal mask and returns the hidden state at the current observation token,
the token whose state the policy head reads (``features_dim`` = ``d_model``). Any SB3 algorithm with
``policy_kwargs`` takes it; :func:`maskctrl_policy_kwargs` builds them::

    from stable_baselines3 import PPO
    from maskctrl.envs import HistoryWrapper, get_spec
    from maskctrl.policies.sb3 import maskctrl_policy_kwargs

    env = HistoryWrapper(get_spec("Reacher").make(), history_len=4)
    kwargs = maskctrl_policy_kwargs("checkpoints/Reacher", env=env, freeze=True)
    model = PPO("MultiInputPolicy", env, policy_kwargs=kwargs)

Saving. ``model.save`` pickles ``policy_kwargs``; here they are plain data (the checkpoint's absolute path,
its model config and normalizer statistics as dicts, bools), and the normalizer statistics are buffers of
the extractor, so the saved parameters hold everything. ``PPO.load`` rebuilds the extractor from the
checkpoint when it still exists and from the embedded config otherwise (with a warning); either way the
weights then come from the saved parameters.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from maskctrl.models.checkpoint import CheckpointError, check_compatible, load_checkpoint
from maskctrl.models.normalizer import Normalizer
from maskctrl.models.transformer import MaskedControlTransformer, TransformerConfig

HISTORY_KEYS = ("obs", "act", "valid")
"""Keys of a :class:`~maskctrl.envs.wrappers.HistoryWrapper` observation."""


@dataclass(frozen=True, kw_only=True)
class HistoryLayout:
    """What an observation space offers the backbone."""

    history_len: int
    """Steps K per observation (1 for a plain ``Box``)."""
    obs_dim: int
    """Observation size O of one step."""
    act_dim: int | None
    """Action size A of the recorded actions; None for a plain ``Box`` (no actions recorded)."""


def history_layout(space: spaces.Space[Any], history_len: int | None = None) -> HistoryLayout:
    """Read K, O and A from a ``HistoryWrapper`` ``Dict`` space or a ``Box`` (a history of one step).

    :param history_len: the K the caller wants; None accepts whatever the space holds.
    :raises ValueError: the space is not one of those, lacks a key, or holds another K than requested.
    """
    if isinstance(space, spaces.Dict):
        missing = [key for key in HISTORY_KEYS if key not in space.spaces]
        if missing:
            raise ValueError(
                f"Dict observation lacks {missing}; expected maskctrl.envs.wrappers.HistoryWrapper keys "
                f"'obs' [K,O], 'act' [K,A], 'valid' [K], got keys {sorted(space.spaces)}"
            )
        boxes = [space.spaces[key] for key in HISTORY_KEYS]
        for key, sub in zip(HISTORY_KEYS, boxes, strict=True):
            if not isinstance(sub, spaces.Box):
                raise ValueError(f"HistoryWrapper observation {key!r} must be a Box, got {sub}")
        obs, act, valid = (box.shape for box in boxes if isinstance(box, spaces.Box))
        if len(obs) != 2 or len(act) != 2 or act[0] != obs[0]:
            raise ValueError(
                f"expected HistoryWrapper 'obs' [K,O] and 'act' [K,A] with one K, got {obs} and {act}"
            )
        k = int(obs[0])
        if valid != (k,):
            raise ValueError(f"expected HistoryWrapper 'valid' of shape ({k},), got {valid}")
        if history_len is not None and history_len != k:
            raise ValueError(
                f"history_len={history_len} was requested, but the observations hold K={k} steps; "
                f"wrap the env in HistoryWrapper(env, history_len={history_len})"
            )
        return HistoryLayout(history_len=k, obs_dim=int(obs[1]), act_dim=int(act[1]))
    if isinstance(space, spaces.Box):
        if history_len is not None and history_len != 1:
            raise ValueError(
                f"history_len={history_len} needs observations from "
                f"maskctrl.envs.wrappers.HistoryWrapper(env, history_len={history_len}); the env gives a "
                f"plain {space} (a history of one step)"
            )
        return HistoryLayout(history_len=1, obs_dim=int(np.prod(space.shape)), act_dim=None)
    raise ValueError(
        f"MaskedControlExtractor reads HistoryWrapper Dict observations or a Box, got {type(space).__name__}"
    )


def check_layout_fit(config: TransformerConfig, layout: HistoryLayout, *, source: str) -> None:
    """Raise an error naming each way ``layout`` misfits ``config``.

    :param source: ``"checkpoint"`` (raises :class:`CheckpointError`) or ``"model config"`` (``ValueError``).
    """
    problems: list[str] = []
    if layout.obs_dim != config.obs_dim:
        problems.append(
            f"{source} expects obs dim {config.obs_dim}, the observation has {layout.obs_dim} per step"
        )
    if layout.act_dim is not None:
        if config.discrete_actions:
            problems.append(
                f"{source} expects discrete actions, HistoryWrapper observations record continuous (Box) ones"
            )
        elif layout.act_dim != config.act_dim:
            problems.append(
                f"{source} expects action dim {config.act_dim}, the observation's 'act' has {layout.act_dim}"
            )
    if layout.history_len > config.context_len:
        problems.append(
            f"a history of K={layout.history_len} steps exceeds the {source}'s "
            f"context_len={config.context_len}"
        )
    if problems:
        error = CheckpointError if source == "checkpoint" else ValueError
        raise error("; ".join(problems))


class MaskedControlExtractor(BaseFeaturesExtractor):
    """Features of the masked control transformer for any SB3 policy (``features_dim`` = ``d_model``).

    Give ``checkpoint`` (a pretrained model, normalizer included) or ``config`` (a model from scratch,
    with ``normalizer`` statistics if you have them; without, inputs pass unscaled). Padding slots
    (``valid`` 0) are key-masked; the current observation always counts as real.

    :param observation_space: a ``HistoryWrapper`` ``Dict`` space or a ``Box`` (a history of one).
    :param checkpoint: checkpoint directory (:func:`maskctrl.models.checkpoint.load_checkpoint`).
    :param config: model config (a :class:`TransformerConfig` or its ``dataclasses.asdict`` dict); with
        ``checkpoint``, what the checkpoint held when the kwargs were made (rebuilds it if it is gone).
    :param normalizer: normalizer statistics (:meth:`Normalizer.to_dict`), used when the checkpoint
        is not read.
    :param freeze: keep the backbone fixed: no gradients, and eval mode even under ``policy.train()``.
    :param history_len: the K that the observations must hold (None: whatever they hold).
    :raises CheckpointError: the checkpoint is unreadable or does not fit the observations.
    :raises ValueError: the observation space is not a history (or not the requested one), or a
        ``config`` does not fit it.
    """

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        *,
        checkpoint: str | None = None,
        config: TransformerConfig | dict[str, Any] | None = None,
        normalizer: dict[str, Any] | None = None,
        freeze: bool = True,
        history_len: int | None = None,
    ) -> None:
        layout = history_layout(observation_space, history_len)
        backbone, stats, source = _build_backbone(checkpoint, config, normalizer)
        check_layout_fit(backbone.config, layout, source=source)
        super().__init__(observation_space, features_dim=backbone.config.d_model)
        self.layout = layout
        self.backbone = backbone
        self.frozen = freeze
        act_dim = backbone.config.act_dim
        norm = stats if stats is not None else Normalizer.identity(backbone.config.obs_dim)
        if norm.obs_dim != backbone.config.obs_dim:
            raise ValueError(f"normalizer has obs dim {norm.obs_dim}, the model {backbone.config.obs_dim}")
        # Buffers, so that SB3's saved parameters carry the statistics and .to(device) moves them.
        self.obs_mean: torch.Tensor
        self.obs_std: torch.Tensor
        self.act_low: torch.Tensor
        self.act_high: torch.Tensor
        self.register_buffer("obs_mean", norm.obs_mean.detach().clone().float())
        self.register_buffer("obs_std", norm.obs_std.detach().clone().float())
        # [-1, 1] bounds make the action scaling the identity.
        low = -torch.ones(act_dim) if norm.act_low is None else norm.act_low.detach().clone().float()
        high = torch.ones(act_dim) if norm.act_high is None else norm.act_high.detach().clone().float()
        if low.shape != (act_dim,) and not backbone.config.discrete_actions:
            raise ValueError(
                f"normalizer has action bounds of shape {tuple(low.shape)}, the model ({act_dim},)"
            )
        self.register_buffer("act_low", low)
        self.register_buffer("act_high", high)
        if freeze:
            self.backbone.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> Self:
        """Set training mode; a frozen backbone stays in eval mode (no dropout) whatever ``mode`` is."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def apply(self, fn: Callable[[nn.Module], None]) -> Self:
        """Apply ``fn`` to this module and its submodules except the backbone.

        SB3's PPO and A2C policies re-initialize their features extractor through ``apply``
        (``ortho_init``), which would overwrite the pretrained weights; the backbone keeps its own
        (checkpoint or GPT-2 style) initialization.
        """
        for module in self.children():
            if module is not self.backbone:
                module.apply(fn)
        fn(self)
        return self

    def window(
        self, observations: torch.Tensor | dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Normalized backbone inputs: obs ``[B,K,O]``, actions ``[B,K-1,A]`` (``[B,0]``), valid ``[B,K]``.

        The wrapper's ``act[k]`` is the action taken *before* ``obs[k]``, the backbone's ``a_k`` the one
        taken after ``o_k``: so the backbone's actions are ``act[1:]``, and ``act[0]`` (which led to
        the oldest observation) has no token.
        """
        cfg = self.backbone.config
        if isinstance(observations, dict):
            obs = observations["obs"].float()  # [B,K,O]
            act = observations["act"][:, 1:].float()  # [B,K-1,A]
            valid = observations["valid"][:, :-1] > 0.5  # [B,K-1]
            valid = torch.cat([valid, valid.new_ones(valid.shape[0], 1)], dim=1)  # [B,K]
            act = 2.0 * (act - self.act_low) / (self.act_high - self.act_low) - 1.0
        else:
            obs = observations.float().flatten(1).unsqueeze(1)  # [B,1,O]
            shape = (obs.shape[0], 0) if cfg.discrete_actions else (obs.shape[0], 0, cfg.act_dim)
            act = obs.new_zeros(shape)  # no past actions; the pending one is appended by the backbone
            valid = None
        return (obs - self.obs_mean) / self.obs_std, act, valid

    def forward(self, observations: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """Features ``[B, d_model]``: the backbone's causal hidden state at the current observation token."""
        obs, act, valid = self.window(observations)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.backbone.encode_features(obs, act, valid)


def _build_backbone(
    checkpoint: str | None,
    config: TransformerConfig | dict[str, Any] | None,
    normalizer: dict[str, Any] | None,
) -> tuple[MaskedControlTransformer, Normalizer | None, str]:
    """The model, its statistics and where they came from (``"checkpoint"`` or ``"model config"``)."""
    model_config = TransformerConfig(**config) if isinstance(config, dict) else config
    if checkpoint is None and model_config is None:
        raise ValueError("MaskedControlExtractor needs a checkpoint directory or a model config")
    if checkpoint is not None and (Path(checkpoint).exists() or model_config is None):
        ckpt = load_checkpoint(checkpoint)
        if model_config is not None and model_config != ckpt.model.config:
            raise CheckpointError(
                f"checkpoint {checkpoint} was replaced since these policy_kwargs were made: its model config "
                f"{ckpt.model.config} differs from {model_config}; rebuild them with maskctrl_policy_kwargs"
            )
        return ckpt.model, ckpt.normalizer, "checkpoint"
    assert model_config is not None
    if checkpoint is not None:
        warnings.warn(
            f"checkpoint {checkpoint} no longer exists; building the backbone from the model config saved in "
            "policy_kwargs. Its weights are random until loaded from saved parameters (as PPO.load does).",
            stacklevel=3,
        )
    stats = None if normalizer is None else Normalizer.from_dict(normalizer)
    return MaskedControlTransformer(model_config), stats, "checkpoint" if checkpoint else "model config"


def maskctrl_policy_kwargs(
    checkpoint: str | Path | None = None,
    *,
    config: TransformerConfig | None = None,
    freeze: bool = True,
    env: Any = None,
    env_name: str | None = None,
    history_len: int | None = None,
    net_arch: list[int] | dict[str, list[int]] | None = None,
    share_features_extractor: bool | None = None,
) -> dict[str, Any]:
    """``policy_kwargs`` that put :class:`MaskedControlExtractor` into an SB3 policy (PPO, A2C, SAC, TD3).

    Use ``"MultiInputPolicy"`` with ``HistoryWrapper`` envs and ``"MlpPolicy"`` with plain ``Box`` ones.

    :param checkpoint: a pretrained checkpoint directory (read here, so that errors show now).
    :param config: a model config to train from scratch instead (give one of the two).
    :param freeze: keep the backbone fixed (True) or fine-tune it with the policy (False).
    :param env: the env (or vector env) to be trained; when given, the model must fit it: obs and action
        dims, action bounds, discrete vs continuous actions, and the history its observations hold.
    :param env_name: the env's registry name, checked against the name saved in the checkpoint.
    :param history_len: the K the observations must hold (None: whatever the env gives).
    :param net_arch: the policy/value heads on top of the features (None: the algorithm's default).
    :param share_features_extractor: None shares one frozen backbone between actor and critic (the same
        features, half the memory) and leaves a fine-tuned one to the algorithm's default (PPO shares,
        SAC and TD3 give the critic its own).
    :raises CheckpointError: the checkpoint is unreadable or does not fit ``env``.
    :raises ValueError: neither or both of ``checkpoint`` and ``config``; ``env``'s observations are not
        the requested history.
    """
    if (checkpoint is None) == (config is None):
        raise ValueError(
            "maskctrl_policy_kwargs needs exactly one of checkpoint (pretrained) or config (scratch)"
        )
    stats: dict[str, Any] | None = None
    saved_env = None
    if checkpoint is not None:
        ckpt = load_checkpoint(checkpoint)
        config, saved_env = ckpt.model.config, ckpt.env
        stats = None if ckpt.normalizer is None else ckpt.normalizer.to_dict()
        checkpoint = Path(checkpoint).resolve()
    assert config is not None
    if env is not None:
        layout = history_layout(env.observation_space, history_len)
        step_obs = spaces.Box(-np.inf, np.inf, shape=(layout.obs_dim,), dtype=np.float32)
        try:
            check_compatible(config, saved_env, _StepSpaces(step_obs, env.action_space), env_name=env_name)
        except CheckpointError as err:
            if checkpoint is None:
                raise ValueError(str(err).replace("checkpoint", "model config")) from None
            raise
        check_layout_fit(config, layout, source="model config" if checkpoint is None else "checkpoint")
    extractor_kwargs: dict[str, Any] = {
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "config": dataclasses.asdict(config),
        "normalizer": stats,
        "freeze": freeze,
        "history_len": history_len,
    }
    kwargs: dict[str, Any] = {
        "features_extractor_class": MaskedControlExtractor,
        "features_extractor_kwargs": extractor_kwargs,
    }
    if share_features_extractor is None and freeze:
        share_features_extractor = True
    if share_features_extractor is not None:
        kwargs["share_features_extractor"] = share_features_extractor
    if net_arch is not None:
        kwargs["net_arch"] = net_arch
    return kwargs


@dataclass(frozen=True)
class _StepSpaces:
    """One step's spaces, as :func:`maskctrl.models.checkpoint.check_compatible` reads them off an env."""

    observation_space: spaces.Box
    action_space: spaces.Space[Any]
