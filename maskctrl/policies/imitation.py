"""maskctrl as a plugin for the ``imitation`` library: its ``bc.BC`` and DAgger over our backbone.

- :func:`make_policy`: an SB3 ``ActorCriticPolicy`` whose features extractor is
  :class:`~maskctrl.policies.sb3.MaskedControlExtractor` (pretrained and frozen or fine-tuned, or from
  scratch), on plain ``Box`` observations or :class:`~maskctrl.envs.wrappers.HistoryWrapper` ones.
- :func:`episodes_to_trajectories`: our episode datasets (:mod:`maskctrl.data.episodes`) as imitation
  ``TrajectoryWithRew`` lists, optionally with the observations a ``HistoryWrapper`` would have given.
- :func:`make_bc_trainer`: imitation's ``bc.BC`` fitting that policy.
- :class:`MPCExpert` and :func:`make_dagger_trainer`: imitation's ``SimpleDAggerTrainer`` with
  :class:`~maskctrl.planner.mpc.MPCController` over :class:`~maskctrl.planner.oracle.OracleDynamics` as
  the expert. DAgger asks its expert for deterministic actions, which imitation only does for SB3
  policies, so the controller goes in wrapped as one.

imitation is an optional dependency (``pip install maskctrl[imitation]``); it pins gymnasium ~=0.29 and
stable-baselines3 ~=2.2, so it lives in its own environment (``make imitation``). Importing this module
does not need it; the functions that do say so when it is missing.
"""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.vec_env import DummyVecEnv

from maskctrl.data.episodes import EpisodeData
from maskctrl.envs.registry import EnvSpec, get_spec
from maskctrl.envs.spaces import space_bounds
from maskctrl.envs.wrappers import HistoryWrapper
from maskctrl.models.transformer import TransformerConfig
from maskctrl.planner.mpc import MPCConfig, MPCController
from maskctrl.planner.oracle import OracleDynamics
from maskctrl.planner.presets import preset_config
from maskctrl.policies.sb3 import maskctrl_policy_kwargs

if TYPE_CHECKING:
    from imitation.algorithms.bc import BC
    from imitation.algorithms.dagger import SimpleDAggerTrainer
    from imitation.data.types import TrajectoryWithRew

INSTALL_HINT = "pip install maskctrl[imitation]  (or `make setup-imitation` for the .venv-imitation env)"
"""How to get the optional dependency."""


def require_imitation(feature: str = "this") -> None:
    """Raise ``ImportError`` saying how to install ``imitation`` when it cannot be imported.

    :param feature: what needs it, for the message.
    """
    try:
        # A submodule: a bare ``import imitation`` also "succeeds" on any directory of that name on
        # sys.path (a namespace package), such as a test folder.
        importlib.import_module("imitation.data.types")
    except ImportError as err:
        raise ImportError(
            f"{feature} needs the optional `imitation` package, which is not installed: {INSTALL_HINT}"
        ) from err


# ---------------------------------------------------------------------------------------------- data


def history_observations(
    observations: np.ndarray,
    actions: np.ndarray,
    history_len: int,
    *,
    act_low: np.ndarray | None = None,
    act_high: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """What :class:`~maskctrl.envs.wrappers.HistoryWrapper` shows at each step of one recorded episode.

    :param observations: ``[T+1,O]``, the reset observation first.
    :param actions: ``[T,A]``, ``actions[t]`` taken at ``observations[t]``.
    :param history_len: K.
    :param act_low: action bounds the wrapper clips recorded actions to (None: no clipping).
    :param act_high: see ``act_low``.
    :return: ``{"obs": [T+1,K,O], "act": [T+1,K,A], "valid": [T+1,K]}`` float32; slot ``k`` of step
        ``t`` holds episode step ``s = t-K+1+k``: its observation, the action taken *before* it (zero
        at the reset), and 1 in ``valid``; slots with ``s < 0`` are zero padding.
    """
    obs = np.asarray(observations, dtype=np.float64).reshape(len(observations), -1)  # [T+1,O]
    act = np.asarray(actions, dtype=np.float64).reshape(len(actions), -1)  # [T,A]
    if history_len < 1:
        raise ValueError(f"history_len must be >= 1, got {history_len}")
    if obs.shape[0] != act.shape[0] + 1:
        raise ValueError(f"expected T+1 observations for T actions, got {obs.shape[0]} and {act.shape[0]}")
    if act_low is not None and act_high is not None:
        act = np.clip(act, act_low, act_high)
    steps, k = obs.shape[0], history_len
    # Pad K-1 zero steps in front; the action "before" step s is act[s-1], zero for the reset step.
    padded_obs = np.concatenate([np.zeros((k - 1, obs.shape[1])), obs])  # [T+K,O]
    before = np.concatenate([np.zeros((k, act.shape[1])), act])  # [T+K,A]
    padded_valid = np.concatenate([np.zeros(k - 1), np.ones(steps)])  # [T+K]
    index = np.arange(steps)[:, None] + np.arange(k)[None, :]  # [T+1,K] into the padded arrays
    return {
        "obs": padded_obs[index].astype(np.float32),
        "act": before[index].astype(np.float32),
        "valid": padded_valid[index].astype(np.float32),
    }


def episodes_to_trajectories(data: EpisodeData, *, history_len: int | None = None) -> list[TrajectoryWithRew]:
    """Every episode of ``data`` as an imitation ``TrajectoryWithRew`` (``terminal=True``: whole episodes).

    :param history_len: None keeps the plain observations ``[T+1,O]``; K gives the ``DictObs`` that
        ``HistoryWrapper(env, K)`` would have produced (:func:`history_observations`), clipping the
        recorded actions to the dataset's action space as the wrapper does.
    """
    require_imitation("episodes_to_trajectories")
    from imitation.data.types import DictObs, TrajectoryWithRew

    low = high = None
    action_space = data.metadata.get("action_space")
    if history_len is not None and isinstance(action_space, dict) and action_space.get("type") == "Box":
        low, high = space_bounds(action_space)
    trajectories = []
    for index in range(data.n_episodes):
        episode = data.episode(index)
        obs: Any = episode.observations
        if history_len is not None:
            obs = DictObs(
                history_observations(
                    episode.observations, episode.actions, history_len, act_low=low, act_high=high
                )
            )
        trajectories.append(
            TrajectoryWithRew(
                obs=obs,
                acts=np.asarray(episode.actions),
                infos=None,
                terminal=True,
                rews=np.asarray(episode.rewards, dtype=np.float32),
            )
        )
    return trajectories


def make_venv(
    env: str | EnvSpec, n_envs: int = 1, *, seed: int, history_len: int | None = None
) -> DummyVecEnv:
    """A ``DummyVecEnv`` of ``n_envs`` copies of ``env`` for imitation's rollouts, seeded for its next reset.

    Each env is wrapped in imitation's ``RolloutInfoWrapper`` (its rollouts read the whole episode from
    it), after ``HistoryWrapper(env, history_len)`` when ``history_len`` is given.
    """
    require_imitation("make_venv")
    from imitation.data.wrappers import RolloutInfoWrapper

    spec = get_spec(env) if isinstance(env, str) else env

    def make() -> gymnasium.Env[Any, Any]:
        inner = spec.make()
        return RolloutInfoWrapper(inner if history_len is None else HistoryWrapper(inner, history_len))

    venv = DummyVecEnv([make for _ in range(n_envs)])
    venv.seed(seed)
    return venv


# ---------------------------------------------------------------------------------------------- policy


def scratch_backbone(
    spec: EnvSpec, *, n_layer: int = 2, n_head: int = 2, d_model: int = 32, context_len: int = 8
) -> TransformerConfig:
    """A small backbone config for ``spec``'s dims, to train from scratch (seconds on one CPU thread)."""
    return TransformerConfig(
        obs_dim=spec.obs_dim,
        act_dim=spec.act_dim,
        context_len=context_len,
        n_layer=n_layer,
        n_head=n_head,
        d_model=d_model,
    )


def make_policy(
    env: Any,
    checkpoint: str | Path | None = None,
    *,
    config: TransformerConfig | None = None,
    freeze: bool = True,
    net_arch: Sequence[int] = (64, 64),
    log_std_init: float = -1.0,
    env_name: str | None = None,
    device: str = "cpu",
) -> ActorCriticPolicy:
    """An ``ActorCriticPolicy`` over :class:`~maskctrl.policies.sb3.MaskedControlExtractor` for ``env``.

    :param env: an env or vector env (anything with ``observation_space`` and ``action_space``):
        a ``HistoryWrapper`` ``Dict`` observation or a plain ``Box`` one (a history of one step).
    :param checkpoint: pretrained backbone directory; give this or ``config`` (from scratch).
    :param config: backbone config to train from scratch (e.g. :func:`scratch_backbone`).
    :param freeze: keep the backbone's weights fixed; only the MLP heads and the action std learn.
    :param net_arch: hidden layers of the policy (and the unused value) MLP on top of the features.
    :param log_std_init: initial log standard deviation of the Gaussian actions.
    :param env_name: registry name, checked against the checkpoint's.
    :raises CheckpointError: the checkpoint is unreadable or its dims do not fit ``env``.
    :raises ValueError: neither or both of ``checkpoint`` and ``config``; the observations are neither
        a history nor a ``Box``; the action space is not a ``Box``.
    """
    if not isinstance(env.action_space, spaces.Box):
        raise ValueError(
            f"make_policy trains continuous (Box) actions, got {type(env.action_space).__name__}"
        )
    kwargs = maskctrl_policy_kwargs(
        checkpoint,
        config=config,
        freeze=freeze,
        env=env,
        env_name=env_name,
        net_arch=list(net_arch),
    )
    policy = ActorCriticPolicy(
        env.observation_space,
        env.action_space,
        # imitation's trainers bring their own optimizer; an infinite rate makes any use of the policy's
        # own optimizer blow up loudly instead of silently training with a wrong setting.
        lr_schedule=lambda _: float(torch.finfo(torch.float32).max),
        log_std_init=log_std_init,
        **kwargs,
    )
    return policy.to(device)


@dataclass(frozen=True, kw_only=True)
class BCTrainerConfig:
    """Settings of imitation's ``bc.BC`` over a maskctrl policy."""

    batch_size: int = 64
    """Transitions per gradient step."""
    lr: float = 1e-3
    """Adam learning rate."""
    ent_weight: float = 1e-3
    """Weight of the entropy bonus in imitation's BC loss."""
    l2_weight: float = 0.0
    """Weight of the L2 penalty on the policy's parameters."""
    device: str = "cpu"
    """Where the policy trains."""
    log_dir: Path | None = None
    """Where imitation writes its training log as CSV (None: nowhere)."""


def make_bc_trainer(
    policy: ActorCriticPolicy,
    demonstrations: Any,
    *,
    rng: np.random.Generator,
    config: BCTrainerConfig | None = None,
) -> BC:
    """imitation's ``bc.BC`` training ``policy`` (e.g. from :func:`make_policy`) on ``demonstrations``.

    :param demonstrations: trajectories (e.g. :func:`episodes_to_trajectories`) or transitions whose
        observations match ``policy.observation_space``; None to set them later (DAgger does).
    :param rng: the trainer's source of randomness (batch order).
    """
    require_imitation("make_bc_trainer")
    from imitation.algorithms import bc
    from imitation.util.logger import configure

    cfg = config if config is not None else BCTrainerConfig()
    if cfg.log_dir is not None:
        logger = configure(cfg.log_dir, format_strs=["csv"])
    else:
        # imitation's default logger makes a new timestamped directory on every call; with no formats and
        # the temp dir itself as folder it writes nothing and creates nothing.
        logger = configure(tempfile.gettempdir(), format_strs=[])
    return bc.BC(
        observation_space=policy.observation_space,
        action_space=policy.action_space,
        rng=rng,
        policy=policy,
        demonstrations=demonstrations,
        batch_size=cfg.batch_size,
        optimizer_kwargs={"lr": cfg.lr},
        ent_weight=cfg.ent_weight,
        l2_weight=cfg.l2_weight,
        device=cfg.device,
        custom_logger=logger,
    )


# ---------------------------------------------------------------------------------------------- DAgger


class MPCExpert(BasePolicy):
    """An :class:`~maskctrl.planner.mpc.MPCController` dressed as an SB3 policy, as DAgger wants its expert.

    imitation's DAgger compares the expert's spaces with the env's and asks it for deterministic actions,
    which imitation only does through an SB3 policy's ``predict``; here that is the controller's.

    The controller records the actions *it* planned as each env's past actions. When DAgger executes the
    learner's action instead, a learned dynamics model would see a history that did not happen; the
    oracle reads the true simulator state and is unaffected.

    :param controller: the planner; it reads plain observations ``[n_envs,O]``.
    :param observation_space: the env's (``Box``) observation space.
    :param action_space: the env's action space.
    """

    def __init__(
        self, controller: MPCController, observation_space: spaces.Space[Any], action_space: spaces.Box
    ) -> None:
        if not isinstance(observation_space, spaces.Box):
            raise ValueError(
                "MPCExpert plans from plain Box observations; got "
                f"{type(observation_space).__name__}. imitation's DAgger only supports array observations, "
                "so run it on the unwrapped env (the learner's extractor reads a Box as a history of one)"
            )
        super().__init__(observation_space, action_space)
        self.controller = controller

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """The controller's planned actions ``[n_envs,A]`` (``[A]`` for one observation ``[O]``)."""
        return self.controller.predict(observation, state, episode_start, deterministic)

    def _predict(self, observation: Any, deterministic: bool = False) -> torch.Tensor:
        obs = observation.detach().cpu().numpy() if isinstance(observation, torch.Tensor) else observation
        actions, _ = self.controller.predict(obs)
        return torch.as_tensor(actions)


def oracle_controller(
    envs: Sequence[Any],
    spec: EnvSpec,
    config: MPCConfig | None = None,
    *,
    nthread: int = 2,
    exact_observations: bool = False,
) -> MPCController:
    """MPC planning in the true simulator of ``envs`` (the very envs being stepped, index = env index).

    :param config: planning settings (default: the env's tuned preset, :func:`preset_config`).
    :param exact_observations: see :class:`~maskctrl.planner.oracle.OracleDynamics` (Reacher only;
        False is about twice as fast and plans as well).
    """
    dynamics = OracleDynamics(list(envs), spec, nthread=nthread, exact_observations=exact_observations)
    action_space = envs[0].action_space
    return MPCController(
        dynamics, spec, action_space, config if config is not None else preset_config(spec.name)
    )


def oracle_expert(
    venv: DummyVecEnv, spec: EnvSpec, config: MPCConfig | None = None, *, nthread: int = 2
) -> MPCExpert:
    """:class:`MPCExpert` planning with :func:`oracle_controller` over the sub-envs of ``venv``."""
    action_space = venv.action_space
    if not isinstance(action_space, spaces.Box):
        raise ValueError(f"oracle MPC needs a Box action space, got {type(action_space).__name__}")
    controller = oracle_controller(venv.envs, spec, config, nthread=nthread)
    return MPCExpert(controller, venv.observation_space, action_space)


def make_dagger_trainer(
    venv: DummyVecEnv,
    bc_trainer: BC,
    expert: BasePolicy,
    *,
    scratch_dir: str | Path,
    rng: np.random.Generator,
    beta_schedule: Callable[[int], float] | None = None,
) -> SimpleDAggerTrainer:
    """imitation's ``SimpleDAggerTrainer``: ``expert`` labels every visited state, ``bc_trainer`` learns.

    :param venv: the env DAgger steps, with plain ``Box`` observations (imitation's DAgger supports no
        ``Dict`` ones); for an :class:`MPCExpert` from :func:`oracle_expert`, the very venv it plans in.
    :param scratch_dir: where DAgger saves each round's demonstrations and policy.
    :param beta_schedule: probability, per round, that the expert's action is the one executed
        (default: imitation's linear decay from 1 to 0 over 15 rounds).
    """
    require_imitation("make_dagger_trainer")
    from imitation.algorithms.dagger import SimpleDAggerTrainer

    if not isinstance(venv.observation_space, spaces.Box):
        raise ValueError(
            "imitation's DAgger supports only array observations, got "
            f"{type(venv.observation_space).__name__}; build the venv without HistoryWrapper "
            "(make_venv(..., history_len=None))"
        )
    if bc_trainer.observation_space != venv.observation_space:
        raise ValueError(
            f"the BC policy observes {bc_trainer.observation_space}, the venv gives {venv.observation_space}"
        )
    return SimpleDAggerTrainer(
        venv=venv,
        scratch_dir=Path(scratch_dir),
        expert_policy=expert,
        bc_trainer=bc_trainer,
        rng=rng,
        beta_schedule=beta_schedule,
        custom_logger=bc_trainer.logger,
    )
