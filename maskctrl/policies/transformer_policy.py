"""The backbone's policy head as a policy with Stable-Baselines3's ``predict`` contract.

:class:`TransformerPolicy` keeps, for every env of a vector env, the last K observations and the
actions it emitted at them (:class:`EnvHistories`), runs the masked control transformer over that window
under the causal mask, and reads the policy head at the current observation token. Continuous actions
come out in the model's units (scaled to [-1, 1] by the normalizer), are mapped back to the action box
and clipped to it; discrete actions are the argmax of the logits (a sample when ``deterministic=False``).

The window follows the backbone's token order (:class:`maskctrl.planner.dynamics.History`): ``act[k]``
was taken at ``obs[k]``, and the current step's action slot is a zero placeholder that the causal mask
hides from the current observation token. Slots before the episode started are padding (``valid``
False), exactly as in the left-padded training windows of :class:`~maskctrl.data.dataset.TrajectoryDataset`.

:func:`bc_loss` is the policy head's training loss and :func:`freeze` picks which parts of the backbone
train with it (:mod:`maskctrl.policies.bc` runs the training).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from maskctrl.envs.spaces import describe_space, space_bounds
from maskctrl.models.checkpoint import (
    CheckpointError,
    EnvInfo,
    check_compatible,
    load_checkpoint,
    save_checkpoint,
)
from maskctrl.models.normalizer import Normalizer
from maskctrl.models.objectives import WindowBatch
from maskctrl.models.transformer import MaskedControlTransformer
from maskctrl.planner.history import EnvHistories, check_observations, starting_envs

POLICY_METADATA = "policy"
"""Key of the checkpoint metadata entry holding the policy's own settings (``history_len``)."""


def space_from_description(description: dict[str, Any]) -> gym.spaces.Space[Any]:
    """Rebuild a ``Box`` or ``Discrete`` space from :func:`maskctrl.envs.spaces.describe_space` output."""
    if description.get("type") == "Discrete":
        return gym.spaces.Discrete(int(description["n"]))
    if description.get("type") != "Box":
        raise ValueError(f"expected a Box or Discrete space description, got {description!r}")
    low, high = space_bounds(description)
    shape = tuple(int(s) for s in description["shape"])
    dtype = np.dtype(description.get("dtype", "float32"))
    low, high = low.reshape(shape).astype(dtype), high.reshape(shape).astype(dtype)
    return gym.spaces.Box(low, high, shape=shape, dtype=dtype)


class TransformerPolicy:
    """Acts with the backbone's policy head; SB3's ``predict`` contract, batched over envs.

    :param model: the transformer (moved to ``device``; its train/eval mode is restored after each call).
    :param normalizer: the statistics it was trained with (None: identity, actions scaled from the box).
    :param action_space: ``Box`` (continuous model) or ``Discrete`` (discrete model).
    :param observation_space: flat ``Box``; checked against the model when given.
    :param history_len: steps K of history fed to the model (default: its ``context_len``).
    :param device: where the model runs (default: where its weights are).
    :param seed: seed of the generator that samples discrete actions when ``deterministic=False``.
    :raises CheckpointError: the spaces do not fit the model (each difference named).
    """

    def __init__(
        self,
        model: MaskedControlTransformer,
        normalizer: Normalizer | None,
        action_space: gym.spaces.Space[Any],
        *,
        observation_space: gym.spaces.Space[Any] | None = None,
        history_len: int | None = None,
        device: torch.device | str | None = None,
        seed: int = 0,
    ) -> None:
        cfg = model.config
        obs_space = observation_space or gym.spaces.Box(-np.inf, np.inf, shape=(cfg.obs_dim,))
        check_compatible(cfg, None, SimpleNamespace(observation_space=obs_space, action_space=action_space))
        self.history_len = cfg.context_len if history_len is None else history_len
        if not 1 <= self.history_len <= cfg.context_len:
            raise ValueError(
                f"history_len must be in [1, {cfg.context_len}] (context_len), got {history_len}"
            )
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device)
        self.observation_space, self.action_space = obs_space, action_space
        self.discrete = cfg.discrete_actions
        box = action_space if isinstance(action_space, gym.spaces.Box) else None  # None: discrete
        if normalizer is None:
            normalizer = Normalizer.identity(cfg.obs_dim, *((box.low, box.high) if box else (None, None)))
        if normalizer.obs_dim != cfg.obs_dim:
            raise ValueError(f"normalizer has obs dim {normalizer.obs_dim}, the model {cfg.obs_dim}")
        self.normalizer = normalizer.to(self.device)
        self.low = None if box is None else torch.as_tensor(box.low, dtype=torch.float32, device=self.device)
        self.high = (
            None if box is None else torch.as_tensor(box.high, dtype=torch.float32, device=self.device)
        )
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        act_shape: tuple[int, ...] = () if self.discrete else (cfg.act_dim,)
        act_dtype = torch.long if self.discrete else torch.float32
        self.histories = EnvHistories(
            self.history_len, cfg.obs_dim, act_shape, act_dtype=act_dtype, device=self.device
        )

    @property
    def n_envs(self) -> int:
        """Number of envs whose histories are kept."""
        return self.histories.n_envs

    def reset(self, n_envs: int | None = None) -> None:
        """Forget every env's history (and resize to ``n_envs`` envs when given)."""
        self.histories.reset(self.n_envs if n_envs is None else n_envs)

    # ------------------------------------------------------------------ SB3 contract

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Return the next action of every env.

        :param observation: ``[n_envs, O]``, or ``[O]`` for a single env (then the action is ``[A]``).
        :param state: unused (the policy keeps each env's history itself); returned as given.
        :param episode_start: bool ``[n_envs]``; True empties that env's history first. A change in the
            number of envs resets every env.
        :param deterministic: continuous actions are always the head's output; discrete ones are the
            argmax when True and sampled from the logits when False.
        :return: ``(actions [n_envs, A] or [A], state)``, within the action space.
        """
        obs, single = self._check_observation(observation)
        n = obs.shape[0]
        if n != self.n_envs:
            self.reset(n)
        if episode_start is not None:
            for i in starting_envs(episode_start, n):
                self.histories.forget(i)
        h = self.histories
        h.push(torch.as_tensor(obs, dtype=torch.float32, device=self.device))
        actions = self.act(h.obs, h.act, h.valid, deterministic=deterministic)  # [E(, A)]
        h.record(actions)
        dtype = np.int64 if self.discrete else self.action_space.dtype
        out = actions.cpu().numpy().astype(dtype)
        return (out[0] if single else out), state

    def __call__(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """``imitation``'s policy-callable form of :meth:`predict`."""
        return self.predict(observation, state, episode_start)

    @torch.no_grad()
    def act(
        self, obs: torch.Tensor, act: torch.Tensor, valid: torch.Tensor, *, deterministic: bool = True
    ) -> torch.Tensor:
        """Actions in env units for windows ending at the current observation.

        :param obs: raw observations ``[B, K, O]``; ``obs[:, -1]`` is the current one.
        :param act: raw actions ``[B, K, A]`` (indices ``[B, K]`` if discrete); ``act[:, -1]`` is unseen.
        :param valid: bool ``[B, K]``, False on padding.
        :return: ``[B, A]`` clipped to the action box (indices ``[B]`` if discrete).
        """
        norm = self.normalizer
        was_training = self.model.training
        self.model.eval()
        try:
            pad = ~valid.unsqueeze(-1)
            obs_n = norm.normalize_obs(obs).masked_fill(pad, 0.0)  # [B, K, O]
            act_n = act if self.discrete else norm.normalize_action(act).masked_fill(pad, 0.0)
            head = self.model(obs_n, act_n, valid=valid).policy[:, -1]  # [B, A]: read at o_t
        finally:
            self.model.train(was_training)
        if self.low is None or self.high is None:  # discrete
            if deterministic:
                return head.argmax(-1)
            probs = torch.softmax(head.float(), -1)
            return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)
        action = norm.denormalize_action(head.float())  # [B, A]
        return torch.minimum(torch.maximum(action, self.low), self.high)

    def _check_observation(self, observation: Any) -> tuple[np.ndarray, bool]:
        return check_observations(observation, self.model.config.obs_dim, owner="TransformerPolicy")

    # ------------------------------------------------------------------ checkpoints

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        env_name: str | None = None,
        step: int = 0,
        metadata: dict[str, Any] | None = None,
    ) -> Path:
        """Write the model, normalizer, spaces and ``history_len`` as a checkpoint directory (atomically)."""
        env = EnvInfo(
            name=env_name,
            observation_space=describe_space(self.observation_space),
            action_space=describe_space(self.action_space),
        )
        meta = {**(metadata or {}), POLICY_METADATA: {"history_len": self.history_len}}
        return save_checkpoint(
            path, self.model, normalizer=self.normalizer, env=env, step=step, metadata=meta
        )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        env: gym.Env[Any, Any] | Any | None = None,
        env_name: str | None = None,
        device: torch.device | str = "cpu",
        history_len: int | None = None,
        seed: int = 0,
    ) -> TransformerPolicy:
        """Load a checkpoint (from :meth:`save`, ``maskctrl bc`` or ``maskctrl pretrain``) as a policy.

        :param env: an env (or anything with ``observation_space``/``action_space``) the policy must fit;
            without it the spaces saved in the checkpoint are used.
        :param env_name: the env's registry name, checked against the saved one.
        :param history_len: K (default: the one saved by :meth:`save`, else the model's ``context_len``).
        :raises CheckpointError: the checkpoint is missing, corrupt, or does not fit ``env``.
        """
        ckpt = load_checkpoint(path, device=device, env=env, env_name=env_name)
        if env is not None:
            obs_space, act_space = env.observation_space, env.action_space
        elif ckpt.env is not None:
            obs_space = space_from_description(ckpt.env.observation_space)
            act_space = space_from_description(ckpt.env.action_space)
        else:
            raise CheckpointError(
                f"checkpoint {path} records no env spaces; pass env= to load it as a policy"
            )
        saved = ckpt.metadata.get(POLICY_METADATA) or {}
        return cls(
            ckpt.model,
            ckpt.normalizer,
            act_space,
            observation_space=obs_space,
            history_len=history_len if history_len is not None else saved.get("history_len"),
            device=device,
            seed=seed,
        )


def bc_loss(model: MaskedControlTransformer, batch: WindowBatch) -> torch.Tensor:
    """Mean policy loss over the real steps of ``batch`` (causal mask; policy head read at each ``o_t``).

    MSE per step averaged over action dims for continuous actions, cross-entropy for discrete ones.
    """
    pred = model(batch.obs, batch.act, valid=batch.valid).policy  # [B, T, A]
    if model.config.discrete_actions:
        target = batch.act.long().reshape(batch.valid.shape)  # [B, T]
        error = F.cross_entropy(pred.flatten(0, 1), target.flatten(), reduction="none").view_as(target)
    else:
        error = (pred.float() - batch.act).square().mean(-1)  # [B, T]
    keep = batch.valid
    return torch.where(keep, error, 0.0).sum() / keep.sum().clamp_min(1)


def freeze(
    model: MaskedControlTransformer, *, freeze_trunk: bool = False, freeze_blocks: int = 0
) -> list[str]:
    """Set ``requires_grad`` for BC and return the names of the parameters left trainable.

    The policy head always trains and the other heads never do; ``freeze_trunk`` freezes everything else,
    ``freeze_blocks=n`` the token embeddings (values, modalities, timesteps, [MASK]) and blocks ``0..n-1``.
    """
    n_layer = model.config.n_layer
    if not 0 <= freeze_blocks <= n_layer:
        raise ValueError(f"freeze_blocks must be in [0, {n_layer}] (the model's blocks), got {freeze_blocks}")
    embeddings = ("obs_embed.", "act_embed.", "modality", "timestep.", "mask_token")
    frozen_blocks = tuple(f"blocks.{i}." for i in range(freeze_blocks))
    trainable = []
    for name, param in model.named_parameters():
        if name.startswith("heads."):
            train = name.startswith("heads.policy.")
        elif freeze_trunk:
            train = False
        else:
            train = not (freeze_blocks and name.startswith((*embeddings, *frozen_blocks)))
        param.requires_grad_(train)
        if train:
            trainable.append(name)
    return trainable
