"""A PETS-style probabilistic ensemble of MLPs: the baseline dynamics model (Chua et al., 2018).

E members share one set of batched weights ``[E, in, out]`` so that the whole ensemble runs as one
``baddbmm`` per layer. A member maps ``(normalize_obs(o_t), normalize_action(a_t))`` to a Gaussian over
``(normalize_delta(o_{t+1} - o_t), normalize_reward(r_t))`` -- the transformer's forward targets, from the
same :class:`~maskctrl.models.normalizer.Normalizer` -- with its log-variance softly bounded by learned
limits (PETS). :func:`train_ensemble` fits it by Gaussian negative log-likelihood, each member on its
own bootstrap resample, optionally stopping early on a held-out share of the transitions and keeping
the best epoch of each member and the best members as elites (in :mod:`maskctrl.models.ensemble_training`). :class:`EnsembleMLPDynamics` predicts and
rolls out in raw units (mean of the elites, or one random elite per candidate as in PETS' TS-1 / TS-∞)
and is an :class:`~maskctrl.models.evaluation.OpenLoopModel`.

Saved as a directory, like a transformer checkpoint: ``model.safetensors`` + ``config.json``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import save_model
from torch import nn

import maskctrl
from maskctrl.models.atomic import load_safetensors_weights, read_saved_config, write_directory_atomically
from maskctrl.models.normalizer import Normalizer

if TYPE_CHECKING:  # only a type alias: no need to import the env registry (and gymnasium) here
    from maskctrl.envs.registry import RewardFn

FORMAT = "maskctrl-ensemble"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
# Config fields that define the weights' shapes; training may change the others.
ARCHITECTURE = ("members", "hidden", "layers", "activation", "learn_logvar", "predict_reward")
ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
Propagation = Literal["mean", "ts1", "tsinf"]
"""How a rollout uses the members: mean of the elites; a random elite per candidate and step (TS-1);
a random elite per candidate for the whole rollout (TS-∞)."""


@dataclass(frozen=True, kw_only=True)
class EnsembleConfig:
    """Architecture and training of an :class:`EnsembleMLP`."""

    members: int = 5
    """Ensemble size E."""
    hidden: int = 200
    """Width of each hidden layer."""
    layers: int = 4
    """Number of hidden layers."""
    activation: str = "silu"
    """Hidden activation: one of ``silu``, ``relu``, ``tanh``, ``gelu``."""
    learn_logvar: bool = True
    """Predict a log-variance and train by Gaussian NLL (PETS); False: mean only, trained by MSE."""
    predict_reward: bool = True
    """Also predict the (normalized) reward as the last output."""
    min_logvar: float = -10.0
    """Initial soft lower bound of the log-variance (learned)."""
    max_logvar: float = 0.5
    """Initial soft upper bound of the log-variance (learned)."""
    logvar_bound_weight: float = 0.01
    """Weight of the penalty that pulls the learned bounds together (PETS)."""
    weight_decay: float = 5e-5
    """AdamW decoupled weight decay on the layer weights (not biases or bounds)."""
    lr: float = 1e-3
    """Adam learning rate."""
    batch_size: int = 256
    """Transitions per member per gradient step."""
    epochs: int = 50
    """Passes over the training transitions (each member sees its own resample per epoch)."""
    max_steps: int | None = None
    """Cap on gradient steps (None: no cap)."""
    bootstrap: bool = True
    """Each member trains on a bootstrap resample (with replacement); False: its own shuffle."""
    holdout_fraction: float = 0.1
    """Share of transitions held out for early stopping and elite selection (0: none)."""
    patience: int | None = 5
    """Stop after this many epochs in which no member improved its holdout error by 1% (None: never)."""
    elites: int | None = None
    """Members with the lowest holdout error used for prediction (None: all)."""

    def __post_init__(self) -> None:
        for name in ("members", "hidden", "layers", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"EnsembleConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if not self.min_logvar < self.max_logvar:
            raise ValueError(f"min_logvar ({self.min_logvar}) must be below max_logvar ({self.max_logvar})")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must lie in [0, 1), got {self.holdout_fraction}")
        if self.elites is not None and not 1 <= self.elites <= self.members:
            raise ValueError(f"elites must be in [1, {self.members}], got {self.elites}")
        if self.lr <= 0 or self.weight_decay < 0 or (self.max_steps is not None and self.max_steps < 1):
            raise ValueError("need lr > 0, weight_decay >= 0 and max_steps >= 1 (or None)")


class EnsembleLinear(nn.Module):
    """E independent linear layers applied in one batched matmul: ``[E,B,in] -> [E,B,out]``."""

    def __init__(self, members: int, d_in: int, d_out: int, generator: torch.Generator | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(members, 1, d_out))
        std = 1.0 / (2.0 * d_in**0.5)  # PETS' truncated-normal initialization
        nn.init.trunc_normal_(self.weight, std=std, a=-2 * std, b=2 * std, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [E,B,in] -> [E,B,out]``."""
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleMLP(nn.Module):
    """E MLPs from normalized ``(obs, action)`` to a Gaussian over normalized ``(Δobs, reward)``.

    Every parameter and buffer has the member dimension first, so one member's state is ``p[e]``.

    :param generator: source of the initial weights (explicit, so a seed reproduces the model).
    """

    def __init__(
        self, obs_dim: int, act_dim: int, config: EnsembleConfig, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if obs_dim < 1 or act_dim < 1:
            raise ValueError(f"need obs_dim >= 1 and act_dim >= 1, got {obs_dim} and {act_dim}")
        self.obs_dim, self.act_dim, self.config = obs_dim, act_dim, config
        e, width = config.members, config.hidden
        self.out_dim = obs_dim + int(config.predict_reward)
        sizes = [obs_dim + act_dim] + [width] * config.layers
        self.hidden_layers = nn.ModuleList(
            EnsembleLinear(e, d_in, d_out, generator) for d_in, d_out in itertools.pairwise(sizes)
        )
        self.act = ACTIVATIONS[config.activation]()
        self.head = EnsembleLinear(e, width, self.out_dim * (2 if config.learn_logvar else 1), generator)
        self.min_logvar = nn.Parameter(torch.full((e, 1, self.out_dim), config.min_logvar))
        self.max_logvar = nn.Parameter(torch.full((e, 1, self.out_dim), config.max_logvar))
        self.elite_mask: torch.Tensor
        self.register_buffer("elite_mask", torch.ones(e, dtype=torch.bool))

    @property
    def elites(self) -> torch.Tensor:
        """Indices of the elite members ``[E']``."""
        return self.elite_mask.nonzero().squeeze(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean and log-variance ``[E,B,D]`` (None without ``learn_logvar``) for inputs ``[E,B,in]`` or ``[B,in]``.

        ``D = O + 1`` with the reward, else ``O``; a ``[B,in]`` input goes to every member.
        """
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.config.members, -1, -1)  # [E,B,in], no copy
        for layer in self.hidden_layers:
            x = self.act(layer(x))
        out = self.head(x)  # [E,B,D or 2D]
        if not self.config.learn_logvar:
            return out, None
        mean, raw = out.split(self.out_dim, dim=-1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - raw)  # soft bounds (PETS)
        return mean, self.min_logvar + F.softplus(logvar - self.min_logvar)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Training loss for per-member batches ``x [E,B,in]``, targets ``y [E,B,D]`` (summed over members)."""
        mean, logvar = self(x)
        if logvar is None:
            return (mean - y).square().mean((1, 2)).sum()
        nll = ((mean - y).square() * torch.exp(-logvar) + logvar).mean((1, 2)).sum()
        bounds = self.max_logvar.sum() - self.min_logvar.sum()
        return nll + self.config.logvar_bound_weight * bounds


class EnsembleMLPDynamics:
    """Predictions and rollouts of a trained :class:`EnsembleMLP` in raw (unnormalized) units.

    :param model: the ensemble (used in eval mode, on its own device).
    :param normalizer: the statistics it was trained with.
    :param propagation: see :data:`Propagation`.
    :param sample: also sample each prediction from the member's Gaussian (PETS' "PE" particles).
    :param reward_fn: a reward ``(obs, act, next_obs) -> [...]`` to use instead of the reward head
        (needed when the model predicts no reward).
    :param seed: seed of the member choices and samples.
    """

    def __init__(
        self,
        model: EnsembleMLP,
        normalizer: Normalizer,
        *,
        propagation: Propagation = "mean",
        sample: bool = False,
        reward_fn: RewardFn | None = None,
        seed: int = 0,
    ) -> None:
        if normalizer.obs_dim != model.obs_dim:
            raise ValueError(f"normalizer has obs dim {normalizer.obs_dim}, the ensemble {model.obs_dim}")
        if propagation not in ("mean", "ts1", "tsinf"):
            raise ValueError(f"propagation must be 'mean', 'ts1' or 'tsinf', got {propagation!r}")
        if reward_fn is None and not model.config.predict_reward:
            raise ValueError("the ensemble predicts no reward; pass reward_fn")
        if sample and not model.config.learn_logvar:
            raise ValueError("sample=True needs an ensemble trained with learn_logvar")
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.normalizer = normalizer.to(self.device)
        self.propagation, self.sample, self.reward_fn = propagation, sample, reward_fn
        self.elites = model.elites  # [E'], read once: nonzero() would sync the device every step
        self.generator = torch.Generator(self.device).manual_seed(seed)

    @property
    def history(self) -> int:
        """The ensemble reads only the current observation (K = 1)."""
        return 1

    def _check(self, obs: torch.Tensor, act: torch.Tensor) -> None:
        o, a = self.model.obs_dim, self.model.act_dim
        if obs.dim() != 2 or obs.shape[1] != o or act.shape != (obs.shape[0], a):
            raise ValueError(
                f"expected obs [N,{o}] and act [N,{a}] with one N, got {tuple(obs.shape)} and {tuple(act.shape)}"
            )

    def _draw_members(self, n: int) -> torch.Tensor:
        pick = torch.randint(len(self.elites), (n,), generator=self.generator, device=self.device)
        return self.elites[pick]  # [N]

    @torch.no_grad()
    def _step(
        self, obs: torch.Tensor, act: torch.Tensor, members: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        norm = self.normalizer
        x = torch.cat([norm.normalize_obs(obs), norm.normalize_action(act)], dim=-1)  # [N,O+A]
        mean, logvar = self.model(x)  # [E,N,D]
        if self.sample and logvar is not None:
            noise = torch.randn(mean.shape, generator=self.generator, device=self.device)
            mean = mean + noise * (0.5 * logvar).exp()
        if members is None:
            out = mean[self.elites].mean(0)  # [N,D]
        else:
            out = mean[members, torch.arange(obs.shape[0], device=self.device)]  # [N,D]
        next_obs = obs + norm.denormalize_delta(out[:, : self.model.obs_dim])
        if self.reward_fn is not None:
            return next_obs, self.reward_fn(obs, act, next_obs)
        return next_obs, norm.denormalize_reward(out[:, -1])

    def predict(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: ``obs [N,O]``, ``act [N,A]`` -> ``(next_obs [N,O], reward [N])`` in raw units."""
        self._check(obs, act)
        obs, act = obs.to(self.device, torch.float32), act.to(self.device, torch.float32)
        members = None if self.propagation == "mean" else self._draw_members(obs.shape[0])
        return self._step(obs, act, members)

    def rollout(self, obs0: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Roll ``actions [N,H,A]`` out from ``obs0 [O]`` (shared) or ``[N,O]``: ``next_obs [N,H,O]``, ``reward [N,H]``."""
        if actions.dim() != 3 or actions.shape[-1] != self.model.act_dim:
            raise ValueError(f"expected actions [N,H,{self.model.act_dim}], got {tuple(actions.shape)}")
        if not isinstance(obs0, torch.Tensor):  # e.g. a planner History: that protocol needs an adapter
            raise TypeError(
                f"rollout starts from an observation tensor [O] or [N,O], got {type(obs0).__name__}"
            )
        n, horizon = actions.shape[:2]
        obs = obs0.to(self.device, torch.float32)
        obs = obs.unsqueeze(0).expand(n, -1) if obs.dim() == 1 else obs
        actions = actions.to(self.device, torch.float32)
        self._check(obs, actions[:, 0])
        fixed = self._draw_members(n) if self.propagation == "tsinf" else None
        states, rewards = [], []
        for h in range(horizon):
            members = self._draw_members(n) if self.propagation == "ts1" else fixed
            obs, reward = self._step(obs, actions[:, h], members)
            states.append(obs)
            rewards.append(reward)
        return torch.stack(states, dim=1), torch.stack(rewards, dim=1)

    def predict_open_loop(self, obs: torch.Tensor, act: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """:class:`~maskctrl.models.evaluation.OpenLoopModel`: roll out from ``obs[:, -1]``; ``[B,H,O]``."""
        return self.rollout(obs[:, -1], actions)[0]


@dataclass(frozen=True, kw_only=True)
class EnsembleCheckpoint:
    """A loaded ensemble: the model (eval mode), its normalizer and free-form metadata."""

    model: EnsembleMLP
    """The ensemble, weights and elites loaded."""
    normalizer: Normalizer
    """The statistics it was trained with."""
    metadata: dict[str, Any]
    """Provenance saved with it (env, data, training history summary)."""
    path: Path
    """Where it was loaded from."""


def save_ensemble(
    path: str | os.PathLike[str],
    model: EnsembleMLP,
    normalizer: Normalizer,
    *,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into the directory ``path`` atomically."""

    def write(tmp: Path) -> None:
        save_model(model, str(tmp / WEIGHTS))
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "maskctrl_version": maskctrl.__version__,
            "obs_dim": model.obs_dim,
            "act_dim": model.act_dim,
            "ensemble": dataclasses.asdict(model.config),
            "normalizer": normalizer.to_dict(),
            "metadata": metadata or {},
        }
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")

    return write_directory_atomically(Path(path), write, marker=CONFIG)


def load_ensemble(path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> EnsembleCheckpoint:
    """Load a directory written by :func:`save_ensemble` (weights are safetensors, nothing is unpickled)."""
    target = Path(path)
    config = read_saved_config(
        target,
        config_name=CONFIG,
        weights_name=WEIGHTS,
        fmt=FORMAT,
        format_version=FORMAT_VERSION,
        what="ensemble",
        saver="save_ensemble",
    )
    try:
        ens_config = EnsembleConfig(**config["ensemble"])
        model = EnsembleMLP(int(config["obs_dim"]), int(config["act_dim"]), ens_config)
        normalizer = Normalizer.from_dict(config["normalizer"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{target / CONFIG} has an invalid or foreign configuration: {err}") from err
    load_safetensors_weights(model, target / WEIGHTS)
    model.to(device).eval()
    return EnsembleCheckpoint(
        model=model,
        normalizer=normalizer.to(device),
        metadata=dict(config.get("metadata") or {}),
        path=target,
    )
