"""The PETS-style MLP ensemble as a :class:`~maskctrl.planner.dynamics.DynamicsModel`: the baseline.

:class:`MLPDynamics` adapts :class:`~maskctrl.models.ensemble.EnsembleMLPDynamics` (which reads only the
current observation) to the planner's interface, with the same reward and termination handling as
:class:`~maskctrl.planner.transformer_dynamics.TransformerDynamics`: rewards from the env spec's
``reward_fn`` (default) or the ensemble's reward head, terminations from the spec's ``termination_fn``.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from maskctrl.envs.registry import EnvSpec
from maskctrl.models.ensemble import EnsembleMLP, EnsembleMLPDynamics, Propagation, load_ensemble
from maskctrl.models.normalizer import Normalizer
from maskctrl.planner.dynamics import History, Rollout
from maskctrl.planner.transformer_dynamics import RewardSource


class MLPDynamics:
    """Roll candidates out with a trained :class:`~maskctrl.models.ensemble.EnsembleMLP`.

    :param model: the ensemble (used in eval mode on its own device).
    :param normalizer: the statistics it was trained with.
    :param spec: the env's spec: dims, ``reward_fn`` and ``termination_fn``.
    :param reward: ``"spec"`` (the spec's reward of the imagined transitions) or ``"model"`` (the
        ensemble's reward output; the ensemble must predict rewards).
    :param propagation: how members are used (mean of the elites, TS-1 or TS-∞; see
        :data:`~maskctrl.models.ensemble.Propagation`).
    :param sample: also sample each prediction from its member's Gaussian.
    :param seed: seed of the member choices and samples.
    """

    def __init__(
        self,
        model: EnsembleMLP,
        normalizer: Normalizer,
        spec: EnvSpec,
        *,
        reward: RewardSource = "spec",
        propagation: Propagation = "mean",
        sample: bool = False,
        seed: int = 0,
    ) -> None:
        if (model.obs_dim, model.act_dim) != (spec.obs_dim, spec.act_dim):
            raise ValueError(
                f"ensemble has obs/act dims {model.obs_dim}/{model.act_dim}, env {spec.name!r} has "
                f"{spec.obs_dim}/{spec.act_dim}"
            )
        if reward not in ("spec", "model"):
            raise ValueError(f"reward must be 'spec' or 'model', got {reward!r}")
        self.spec = spec
        self.ensemble = EnsembleMLPDynamics(
            model,
            normalizer,
            propagation=propagation,
            sample=sample,
            reward_fn=spec.reward_fn if reward == "spec" else None,
            seed=seed,
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        spec: EnvSpec,
        *,
        device: torch.device | str = "cpu",
        **options: Any,
    ) -> MLPDynamics:
        """Load an ensemble directory (:func:`~maskctrl.models.ensemble.save_ensemble`) for ``spec``'s env.

        An ensemble for another env (other dims, or another env name in its metadata) raises
        ``ValueError`` naming each difference.

        :param options: keyword arguments of :class:`MLPDynamics`.
        """
        ckpt = load_ensemble(path, device=device)
        problems = []
        saved_name = _env_name(ckpt.metadata)
        if saved_name is not None and saved_name != spec.name:
            problems.append(f"ensemble was trained on {saved_name!r}, not {spec.name!r}")
        if ckpt.model.obs_dim != spec.obs_dim:
            problems.append(
                f"ensemble expects obs dim {ckpt.model.obs_dim}, env {spec.name!r} has {spec.obs_dim}"
            )
        if ckpt.model.act_dim != spec.act_dim:
            problems.append(
                f"ensemble expects action dim {ckpt.model.act_dim}, env {spec.name!r} has {spec.act_dim}"
            )
        if problems:
            raise ValueError(f"{path}: " + "; ".join(problems))
        return cls(ckpt.model, ckpt.normalizer, spec, **options)

    @property
    def device(self) -> torch.device:
        """Where the ensemble runs."""
        return self.ensemble.device

    @torch.no_grad()
    def rollout(self, history: History, actions: torch.Tensor) -> Rollout:
        """Predict what ``actions`` [N,H,A] do from ``history.current_obs`` (the ensemble is Markov).

        :return: next observations [N,H,O], rewards [N,H] and terminations [N,H], float32 on
            ``actions.device``.
        """
        next_obs, reward = self.ensemble.rollout(history.current_obs, actions)  # [N,H,O], [N,H]
        terminated = self.spec.termination_fn(next_obs)
        return Rollout(
            next_obs=next_obs.to(actions.device),
            reward=reward.to(actions.device, torch.float32),
            terminated=terminated.to(actions.device),
        )


def _env_name(metadata: dict[str, Any]) -> str | None:
    """The env name an ensemble's metadata records (top level, or under ``dataset`` as pretrain writes)."""
    for source in (metadata, metadata.get("dataset") or {}):
        name = source.get("env_name") or source.get("env")
        if isinstance(name, str):
            return name
    return None
