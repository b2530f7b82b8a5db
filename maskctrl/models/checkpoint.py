"""Checkpoints: a directory holding ``model.safetensors`` and ``config.json`` (and optional trainer state).

Nothing in a checkpoint is unpickled as code: weights are safetensors, the configuration is JSON, and the
trainer state (optimizer, scheduler, step, RNG) is read with ``torch.load(weights_only=True)``.

Saving is atomic at the directory level (:mod:`maskctrl.models.atomic`): a crash at any point leaves
either the previous or the new checkpoint loadable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

import maskctrl
from maskctrl.envs.spaces import describe_space, space_bounds
from maskctrl.models.atomic import recover_directory, write_directory_atomically
from maskctrl.models.normalizer import Normalizer
from maskctrl.models.transformer import MaskedControlTransformer, TransformerConfig

FORMAT = "maskctrl-checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAINER_STATE = "trainer_state.pt"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, foreign, unsafe, or does not fit the environment."""


@dataclass(frozen=True, kw_only=True)
class EnvInfo:
    """What a checkpoint remembers about the environment it was trained for."""

    name: str | None
    """Registry name (e.g. ``"HalfCheetah"``) or None when unknown."""
    observation_space: dict[str, Any]
    """The observation space as JSON (see :func:`maskctrl.envs.spaces.describe_space`)."""
    action_space: dict[str, Any]
    """The action space as JSON."""

    @classmethod
    def from_env(cls, env: gym.Env[Any, Any] | Any, name: str | None = None) -> EnvInfo:
        """Describe ``env`` (anything with ``observation_space`` and ``action_space``)."""
        return cls(
            name=name,
            observation_space=describe_space(env.observation_space),
            action_space=describe_space(env.action_space),
        )


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """A loaded checkpoint: the model (in eval mode), its normalizer and what it knows of its env."""

    model: MaskedControlTransformer
    """The transformer, weights loaded, on the requested device."""
    normalizer: Normalizer | None
    """Normalization statistics saved with the model."""
    env: EnvInfo | None
    """The environment the model was trained for."""
    step: int
    """Training step at which it was saved."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance: how it was made, what it scored."""
    path: Path
    """Where it was loaded from."""


def save_checkpoint(
    path: str | os.PathLike[str],
    model: MaskedControlTransformer,
    *,
    normalizer: Normalizer | None = None,
    env: EnvInfo | None = None,
    step: int = 0,
    metadata: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory at ``path`` atomically and return its path.

    ``trainer_state`` must hold only tensors, numbers, strings and containers of them (it is read back
    with ``weights_only=True``). An existing directory at ``path`` that is not a maskctrl checkpoint is
    never replaced.
    """
    target = Path(path)

    def write(tmp: Path) -> None:
        save_model(model, str(tmp / WEIGHTS))
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "maskctrl_version": maskctrl.__version__,
            "model": dataclasses.asdict(model.config),
            "normalizer": None if normalizer is None else normalizer.to_dict(),
            "env": None if env is None else dataclasses.asdict(env),
            "step": int(step),
            "weights_sha256": _sha256(tmp / WEIGHTS),
            "metadata": metadata or {},
        }
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_STATE)

    try:
        return write_directory_atomically(target, write, marker=CONFIG)
    except FileExistsError as err:
        raise CheckpointError(
            f"{target} exists and is not a maskctrl checkpoint; refusing to replace it"
        ) from err


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a checkpoint's ``config.json`` without loading weights."""
    target = Path(path)
    recover_directory(target)
    if not target.exists():
        raise CheckpointError(f"no checkpoint at {target} (expected a directory with {WEIGHTS} and {CONFIG})")
    if not target.is_dir():
        raise CheckpointError(f"{target} is a file; a checkpoint is a directory with {WEIGHTS} and {CONFIG}")
    for name in (CONFIG, WEIGHTS):
        if not (target / name).is_file():
            raise CheckpointError(f"checkpoint {target} has no {name}")
    try:
        config = json.loads((target / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"{target / CONFIG} is not valid JSON (truncated or foreign file?): {err}"
        ) from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{target} is not a maskctrl checkpoint ({CONFIG} lacks format {FORMAT!r})")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{target} has checkpoint format {config['format_version']}; this maskctrl reads up to {FORMAT_VERSION}"
        )
    missing = [key for key in ("model", "step", "weights_sha256") if key not in config]
    if missing:
        raise CheckpointError(f"{target / CONFIG} lacks {', '.join(missing)}")
    step = config["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{target / CONFIG} has step {step!r}; expected an integer >= 0")
    return config


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    device: torch.device | str = "cpu",
    env: gym.Env[Any, Any] | Any | None = None,
    env_name: str | None = None,
) -> Checkpoint:
    """Load a checkpoint directory; with ``env`` given, check that the model fits it first.

    :param env: an env (or anything with ``observation_space``/``action_space``) the model must fit.
    :param env_name: the env's registry name, used in error messages and checked against the saved one.
    :raises CheckpointError: the checkpoint is missing, corrupt, foreign, or does not fit ``env``.
    """
    target = Path(path)
    config = read_config(target)
    env_info = _env_info(config.get("env"), target / CONFIG)
    try:
        model_config = TransformerConfig(**config["model"])
    except TypeError as err:
        raise CheckpointError(
            f"{target / CONFIG} has a model config this maskctrl does not understand: {err}"
        ) from err
    except ValueError as err:  # TransformerConfig's own checks
        raise CheckpointError(f"{target / CONFIG} has an invalid model config: {err}") from err
    if env is not None:
        check_compatible(model_config, env_info, env, env_name=env_name)
    if _sha256(target / WEIGHTS) != config["weights_sha256"]:
        raise CheckpointError(
            f"{target / WEIGHTS} does not match the checksum in {CONFIG} (corrupt or replaced)"
        )
    model = MaskedControlTransformer(model_config)
    try:
        load_model(model, str(target / WEIGHTS), strict=True)
    except (SafetensorError, RuntimeError, OSError) as err:
        raise CheckpointError(f"cannot read weights from {target / WEIGHTS}: {err}") from err
    try:
        normalizer = Normalizer.from_dict(config["normalizer"]) if config.get("normalizer") else None
    except ValueError as err:
        raise CheckpointError(f"{target / CONFIG} has invalid normalizer statistics: {err}") from err
    model.to(device).eval()
    return Checkpoint(
        model=model,
        normalizer=None if normalizer is None else normalizer.to(device),
        env=env_info,
        step=config["step"],
        metadata=dict(config.get("metadata") or {}),
        path=target,
    )


def load_trainer_state(path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load the trainer state saved with a checkpoint, refusing anything but plain tensors and containers."""
    target = Path(path)
    recover_directory(target)
    file = target / TRAINER_STATE
    if not file.is_file():
        raise CheckpointError(
            f"checkpoint {target} has no trainer state ({TRAINER_STATE}); it cannot be resumed"
        )
    try:
        state = torch.load(file, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{file} holds objects other than tensors and plain containers; refusing to unpickle it: {err}"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(
            f"cannot read trainer state {file} (truncated or foreign file?): {err}"
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{file} should hold a dict, found {type(state).__name__}")
    return state


def check_compatible(
    model_config: TransformerConfig,
    saved_env: EnvInfo | None,
    env: gym.Env[Any, Any] | Any,
    *,
    env_name: str | None = None,
) -> None:
    """Raise :class:`CheckpointError` naming each difference between the model's spaces and ``env``'s."""
    label = f"env {env_name!r}" if env_name else "the env"
    problems: list[str] = []
    if env_name and saved_env is not None and saved_env.name and saved_env.name != env_name:
        problems.append(f"checkpoint was trained on {saved_env.name!r}, not {env_name!r}")
    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        problems.append(f"checkpoint expects a flat Box observation, {label} has {obs_space}")
    elif obs_space.shape[0] != model_config.obs_dim:
        problems.append(
            f"checkpoint expects obs dim {model_config.obs_dim}, {label} has {obs_space.shape[0]}"
        )
    if model_config.discrete_actions:
        if not isinstance(act_space, gym.spaces.Discrete):
            problems.append(f"checkpoint expects discrete actions, {label} has {act_space}")
        elif int(act_space.n) != model_config.act_dim:
            problems.append(
                f"checkpoint expects {model_config.act_dim} discrete actions, {label} has {act_space.n}"
            )
    elif not isinstance(act_space, gym.spaces.Box):
        problems.append(f"checkpoint expects continuous (Box) actions, {label} has {act_space}")
    elif act_space.shape != (model_config.act_dim,):
        problems.append(
            f"checkpoint expects action dim {model_config.act_dim}, {label} has {act_space.shape[0]}"
        )
    elif saved_env is not None and saved_env.action_space.get("type") == "Box":
        saved_low, saved_high = space_bounds(saved_env.action_space)
        if not (np.allclose(saved_low, act_space.low) and np.allclose(saved_high, act_space.high)):
            problems.append(
                f"checkpoint action bounds [{saved_low.tolist()}, {saved_high.tolist()}] differ from {label}'s "
                f"[{act_space.low.tolist()}, {act_space.high.tolist()}]"
            )
    if problems:
        raise CheckpointError("; ".join(problems))


def _env_info(entry: Any, file: Path) -> EnvInfo | None:
    """The ``env`` entry of ``config.json`` (None when absent), checked field by field."""
    if not entry:
        return None
    expected = "expected an object with name (a string or null), observation_space and action_space (objects)"
    try:
        info = EnvInfo(**entry)
    except TypeError as err:  # not a mapping, or missing / unknown keys
        raise CheckpointError(f"{file} has a malformed env entry ({err}); {expected}") from err
    if not (info.name is None or isinstance(info.name, str)) or not all(
        isinstance(space, dict) and isinstance(space.get("type"), str)
        for space in (info.observation_space, info.action_space)
    ):
        raise CheckpointError(f"{file} has a malformed env entry {entry!r}; {expected}")
    return info


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
