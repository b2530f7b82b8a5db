"""A learned safety critic: the probability that an env terminates (falls) soon after a state.

Short-horizon MPC cannot see a fall that becomes certain beyond its horizon: oracle Hopper MPC leans and
slides forward until no plan inside 0.32 s can brake in time. :class:`SafetyCritic` is an ensemble of
MLPs, each fitted on its own bootstrap of recorded episodes, that reads an observation and predicts
``fall_discount ** (steps until the episode terminates)`` (0 on episodes that did not terminate), i.e. a
soft "falls soon" probability. :class:`FallPenalty` turns it into a terminal value for
:class:`~maskctrl.planner.mpc.MPCController`: ``-penalty * min(1, mean + kappa * std)`` over the members,
read at the last imagined observation of each candidate still alive there -- pessimistic where the members
disagree, i.e. away from the data.

Saved as a directory, like the other models: ``model.safetensors`` + ``config.json``; nothing is unpickled.
:mod:`maskctrl.critic_recipe` builds the one shipped for Hopper.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_model
from torch import nn
from tqdm import tqdm

import maskctrl
from maskctrl.data.episodes import EpisodeData
from maskctrl.models.atomic import load_safetensors_weights, read_saved_config, write_directory_atomically
from maskctrl.models.ensemble import EnsembleLinear

FORMAT = "maskctrl-safety-critic"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


@dataclass(frozen=True, kw_only=True)
class CriticConfig:
    """Architecture, labels and training of a :class:`SafetyCritic`."""

    members: int = 5
    """Ensemble size E (each member trains on its own bootstrap of the states)."""
    hidden: int = 256
    """Width of each hidden layer (SiLU)."""
    layers: int = 2
    """Number of hidden layers."""
    fall_discount: float = 0.95
    """A state ``k`` steps before a termination is labelled ``fall_discount ** k`` (the fallen state: 1)."""
    drop_tail: int = 100
    """Last states dropped from episodes that did not terminate: their future is unknown."""
    input_noise: float = 0.02
    """Gaussian noise added to the standardized inputs during training."""
    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    steps: int = 3000
    """Gradient steps."""
    batch_size: int = 256
    """States per member per gradient step."""

    def __post_init__(self) -> None:
        if min(self.members, self.hidden, self.layers, self.steps, self.batch_size) < 1:
            raise ValueError("members, hidden, layers, steps and batch_size must be >= 1")
        if not 0.0 < self.fall_discount < 1.0:
            raise ValueError(f"fall_discount must lie in (0, 1), got {self.fall_discount}")
        if self.drop_tail < 0 or self.input_noise < 0 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("need drop_tail >= 0, input_noise >= 0, lr > 0 and weight_decay >= 0")


class SafetyCritic(nn.Module):
    """E MLPs from a standardized observation to the logit of the "falls soon" probability.

    :param obs_dim: observation size O.
    :param mean: per-dimension input mean [O] (default 0).
    :param std: per-dimension input standard deviation [O] (default 1; floored at 1e-6).
    :param generator: source of the initial weights.
    """

    def __init__(
        self,
        obs_dim: int,
        config: CriticConfig | None = None,
        *,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if obs_dim < 1:
            raise ValueError(f"need obs_dim >= 1, got {obs_dim}")
        self.obs_dim = obs_dim
        self.config = config if config is not None else CriticConfig()
        e, width = self.config.members, self.config.hidden
        sizes = [obs_dim] + [width] * self.config.layers + [1]
        self.layers = nn.ModuleList(
            EnsembleLinear(e, d_in, d_out, generator) for d_in, d_out in itertools.pairwise(sizes)
        )
        self.obs_mean: torch.Tensor
        self.obs_std: torch.Tensor
        self.register_buffer("obs_mean", torch.zeros(obs_dim) if mean is None else mean.float().clone())
        self.register_buffer("obs_std", torch.ones(obs_dim) if std is None else std.float().clamp(min=1e-6))

    def standardize(self, obs: torch.Tensor) -> torch.Tensor:
        """``(obs - mean) / std``, any leading shape."""
        return (obs - self.obs_mean) / self.obs_std

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Member logits ``[E,B]`` for standardized inputs ``[E,B,O]`` or ``[B,O]`` (shared by all members)."""
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.config.members, -1, -1)
        for layer in self.layers[:-1]:
            x = F.silu(layer(x))
        return self.layers[-1](x).squeeze(-1)

    def fall_probability(self, obs: torch.Tensor) -> torch.Tensor:
        """Each member's probability ``[E,N]`` for raw observations ``obs [N,O]``."""
        if obs.dim() != 2 or obs.shape[-1] != self.obs_dim:
            raise ValueError(f"expected observations [N, {self.obs_dim}], got {tuple(obs.shape)}")
        return torch.sigmoid(self.logits(self.standardize(obs.to(self.obs_mean))))

    def risk(self, obs: torch.Tensor, kappa: float = 1.0) -> torch.Tensor:
        """Pessimistic fall probability ``min(1, mean + kappa * std)`` over the members, ``[N]``.

        The spread is 0 for a single member. A non-finite observation gives a non-finite risk.
        """
        p = self.fall_probability(obs)
        spread = p.std(dim=0) if p.shape[0] > 1 else torch.zeros_like(p[0])
        return (p.mean(dim=0) + kappa * spread).clamp(max=1.0)


class FallPenalty:
    """Terminal value ``-penalty * critic.risk(obs, kappa)`` for :class:`~maskctrl.planner.mpc.MPCController`.

    :param critic: the fitted critic (moved to ``device``, eval mode).
    :param penalty: planning cost of a certain fall (Hopper: 1000, its termination penalty).
    :param kappa: how many member standard deviations are added to their mean (pessimism).
    """

    def __init__(
        self,
        critic: SafetyCritic,
        *,
        penalty: float = 1000.0,
        kappa: float = 1.0,
        device: str | torch.device = "cpu",
    ) -> None:
        if penalty < 0 or kappa < 0:
            raise ValueError(f"need penalty >= 0 and kappa >= 0, got {penalty} and {kappa}")
        self.critic = critic.to(device).eval()
        self.penalty, self.kappa = penalty, kappa
        self.obs_dim = critic.obs_dim

    @torch.no_grad()
    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        """Value ``[N]`` (<= 0) of the observations ``obs [N,O]``."""
        return -self.penalty * self.critic.risk(obs, self.kappa)


def fall_labels(data: EpisodeData, config: CriticConfig) -> tuple[np.ndarray, np.ndarray]:
    """States ``[M,O]`` and labels ``[M]`` of ``data`` (see :class:`CriticConfig`).

    A terminated episode of T steps gives its T+1 observations, the one ``k`` steps before the end labelled
    ``fall_discount ** k``; an episode that did not terminate gives its first ``T + 1 - drop_tail``
    observations, labelled 0. Empty arrays when no episode qualifies.
    """
    states, labels = [], []
    for i in range(data.n_episodes):
        ep = data.episode(i)
        obs = ep.observations
        if ep.terminated:
            k = np.arange(len(obs) - 1, -1, -1)
            states.append(obs)
            labels.append(config.fall_discount**k)
        elif len(obs) > config.drop_tail:
            kept = obs[: len(obs) - config.drop_tail]
            states.append(kept)
            labels.append(np.zeros(len(kept)))
    if not states:
        return np.zeros((0, data.obs_dim), np.float32), np.zeros(0, np.float32)
    return np.concatenate(states).astype(np.float32), np.concatenate(labels).astype(np.float32)


def fit_safety_critic(
    data: EpisodeData | Sequence[EpisodeData],
    config: CriticConfig | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
) -> tuple[SafetyCritic, dict[str, Any]]:
    """Fit a :class:`SafetyCritic` to recorded episodes; returns it (eval mode) and a training summary.

    Each member draws its batches from its own bootstrap resample of the states (binary cross-entropy to
    the soft labels of :func:`fall_labels`). Raises ``ValueError`` when the datasets disagree on the
    observation size, hold non-finite observations or have no fall at all.
    """
    config = config if config is not None else CriticConfig()
    datasets = [data] if isinstance(data, EpisodeData) else list(data)
    if not datasets:
        raise ValueError("fit_safety_critic needs at least one dataset")
    dims = {d.obs_dim for d in datasets}
    if len(dims) != 1:
        raise ValueError(f"the datasets disagree on the observation size: {sorted(dims)}")
    pairs = [fall_labels(d, config) for d in datasets]
    states = torch.from_numpy(np.concatenate([p[0] for p in pairs]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in pairs]))
    if len(states) == 0:
        raise ValueError(
            f"no states to fit a critic on: no episode terminated or ran longer than drop_tail={config.drop_tail} steps"
        )
    if not torch.isfinite(states).all():
        raise ValueError("the episodes hold non-finite observations; a critic cannot be fitted on them")
    falls = sum(int(d.terminated.sum()) for d in datasets)
    if falls == 0:
        raise ValueError("none of the episodes terminated: there is no fall for the critic to learn")
    generator = torch.Generator().manual_seed(seed)
    critic = SafetyCritic(
        states.shape[1], config, mean=states.mean(0), std=states.std(0), generator=generator
    )
    x_all = critic.standardize(states)
    m, e = len(states), config.members
    bootstrap = torch.randint(m, (e, m), generator=generator)  # [E,M] each member's resample
    optimizer = torch.optim.AdamW(critic.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    critic.train()
    losses = []
    for _ in tqdm(range(config.steps), desc="fit critic", unit="step", disable=not progress, leave=False):
        pick = torch.randint(m, (e, config.batch_size), generator=generator)
        rows = torch.gather(bootstrap, 1, pick)  # [E,B]
        x = x_all[rows]  # [E,B,O]
        x = x + config.input_noise * torch.randn(x.shape, generator=generator)
        loss = F.binary_cross_entropy_with_logits(critic.logits(x), labels[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    critic.eval()
    summary = {
        "episodes": sum(d.n_episodes for d in datasets),
        "terminated_episodes": falls,
        "states": m,
        "final_loss": float(np.mean(losses[-100:])),
        "seed": seed,
    }
    return critic, summary


def save_critic(
    path: str | os.PathLike[str], critic: SafetyCritic, *, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into the directory ``path`` atomically."""

    def write(tmp: Path) -> None:
        save_model(critic, str(tmp / WEIGHTS))
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "maskctrl_version": maskctrl.__version__,
            "obs_dim": critic.obs_dim,
            "critic": dataclasses.asdict(critic.config),
            "metadata": metadata or {},
        }
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")

    return write_directory_atomically(Path(path), write, marker=CONFIG)


def load_critic(
    path: str | os.PathLike[str], *, obs_dim: int | None = None, device: torch.device | str = "cpu"
) -> tuple[SafetyCritic, dict[str, Any]]:
    """Load a directory written by :func:`save_critic`: the critic (eval mode) and its metadata.

    :param obs_dim: the observation size it must read (e.g. the env spec's); a mismatch raises ``ValueError``.
    """
    target = Path(path)
    config = read_saved_config(
        target,
        config_name=CONFIG,
        weights_name=WEIGHTS,
        fmt=FORMAT,
        format_version=FORMAT_VERSION,
        what="safety critic",
        saver="save_critic",
    )
    try:
        if not isinstance(config["obs_dim"], int):
            raise TypeError(f"obs_dim must be an int, got {config['obs_dim']!r}")
        critic = SafetyCritic(config["obs_dim"], CriticConfig(**config["critic"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{target / CONFIG} has an invalid or foreign configuration: {err}") from err
    if obs_dim is not None and critic.obs_dim != obs_dim:
        raise ValueError(
            f"the critic at {target} reads observations of size {critic.obs_dim}, expected {obs_dim}"
        )
    load_safetensors_weights(critic, target / WEIGHTS)
    return critic.to(device).eval(), dict(config.get("metadata") or {})
