"""Bad inputs to the envs, planner and model APIs, one list per component.

See ``reliability_table`` for the row format.
Each call gets ``(a, t)``: the assets directory (``reliability_assets``) and an empty directory.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from reliability_assets import tiny_model
from reliability_table import BadInput

from maskctrl.envs import HistoryWrapper, get_spec, register_spec, resolve_id
from maskctrl.envs.pointmass import POINTMASS_ID
from maskctrl.envs.registry import EnvSpec
from maskctrl.models import kv_cache
from maskctrl.models.normalizer import Normalizer
from maskctrl.models.transformer import TransformerConfig
from maskctrl.planner import (
    CEMConfig,
    History,
    MPCConfig,
    MPCController,
    MPPIConfig,
    OracleDynamics,
    PlanState,
    make_optimizer,
)

PM = get_spec("pointmass")


def make_env(gym_id: str = POINTMASS_ID) -> Any:
    """A gymnasium env, reset with seed 0."""
    env = gym.make(gym_id)
    env.reset(seed=0)
    return env


def _history(k: int = 3, env_index: int = 0) -> History:
    return History(obs=torch.zeros(k, 4), act=torch.zeros(k, 2), valid=torch.ones(k, dtype=torch.bool), env_index=env_index)  # fmt: skip


def _oracle() -> OracleDynamics:
    return OracleDynamics([make_env()], PM, nthread=0)


def _controller() -> MPCController:
    env = make_env()
    config = MPCConfig(horizon=3, samples=8, iterations=1)
    return MPCController(OracleDynamics([env], PM, nthread=0), PM, env.action_space, config)


def _cem(**overrides: Any) -> Any:
    kwargs: dict[str, Any] = {"horizon": 3, "action_low": [-1.0, -1.0], "action_high": [1.0, 1.0]}
    kwargs.update(overrides)
    name = kwargs.pop("name", "cem")
    return make_optimizer(name, num_samples=8, num_elites=2, num_iterations=1, **kwargs)


def _spec(**changes: Any) -> EnvSpec:
    fields = {f.name: getattr(PM, f.name) for f in dataclasses.fields(PM)}
    return EnvSpec(**{**fields, "name": "bad", **changes})


def box(low: float, high: float, dim: int) -> gym.spaces.Box:
    """A float32 ``Box`` of ``dim`` dims with the same bounds everywhere."""
    return gym.spaces.Box(low, high, (dim,), np.float32)


def _transformer(obs: Any, act: Any, **kwargs: Any) -> Any:
    return tiny_model()(obs, act, **kwargs)


def _imagine(obs_shape: tuple[int, ...], act_shape: tuple[int, ...], cand: tuple[int, ...], **kw: Any) -> Any:
    return kv_cache.imagine(tiny_model(), torch.zeros(obs_shape), torch.zeros(act_shape), torch.zeros(cand), **kw)  # fmt: skip


ENVS = [
    BadInput(id="envs/unknown-name", call=lambda a, t: get_spec("Cheetah"), error=KeyError,
             match=r"unknown env 'Cheetah'; known envs: .*HalfCheetah.*; did you mean 'HalfCheetah'\?"),
    BadInput(id="envs/duplicate-registration", call=lambda a, t: register_spec(PM), error=ValueError,
             match=r"env 'pointmass' is already registered; pass overwrite=True to replace it"),
    BadInput(id="envs/spec-zero-obs-dim", call=lambda a, t: _spec(obs_dim=0), error=ValueError,
             match=r"EnvSpec 'bad': expected positive obs_dim and act_dim, got 0, 2"),
    BadInput(id="envs/spec-negative-penalty", call=lambda a, t: _spec(termination_penalty=-1.0), error=ValueError,
             match=r"termination_penalty is a cost \(>= 0\), got -1.0"),
    BadInput(id="envs/unregistered-gym-id", call=lambda a, t: resolve_id("NoSuchEnv"), error=KeyError,
             match=r"none of NoSuchEnv-v5, NoSuchEnv-v4 is registered in gymnasium"),
]  # fmt: skip

HISTORY_WRAPPER = [
    BadInput(id="history-wrapper/zero-history", call=lambda a, t: HistoryWrapper(make_env(), 0), error=ValueError,
             match=r"history_len must be >= 1, got 0"),
    BadInput(id="history-wrapper/discrete-obs", call=lambda a, t: HistoryWrapper(gym.make("FrozenLake-v1"), 2),
             error=TypeError, match=r"needs a Box observation space, got Discrete"),
    BadInput(id="history-wrapper/discrete-actions", call=lambda a, t: HistoryWrapper(gym.make("CartPole-v1"), 2),
             error=TypeError, match=r"needs a Box action space, got Discrete"),
    BadInput(id="history-wrapper/inf-action", error=ValueError, match=r"expected a finite action, got \[0.0, inf\]",
             call=lambda a, t: HistoryWrapper(make_env(), 2).step(np.array([0.0, np.inf]))),
    BadInput(id="history-wrapper/action-shape", call=lambda a, t: HistoryWrapper(make_env(), 2).step(np.zeros(3)),
             error=ValueError, match=r"expected action of shape \(2,\), got \(3,\)"),
    BadInput(id="history-wrapper/nan-action", error=ValueError, match=r"expected a finite action, got \[nan, 0.0\]",
             call=lambda a, t: HistoryWrapper(make_env(), 2).step(np.array([np.nan, 0.0]))),
]  # fmt: skip

OPTIMIZERS = [
    BadInput(id="optimizer/unknown-name", call=lambda a, t: _cem(name="adam"), error=ValueError,
             match=r"unknown optimizer 'adam'; expected one of \['cem', 'icem', 'mppi'\]"),
    BadInput(id="optimizer/zero-horizon", call=lambda a, t: _cem(horizon=0), error=ValueError,
             match=r"horizon must be a positive int, got 0"),
    BadInput(id="optimizer/inverted-bounds", call=lambda a, t: _cem(action_low=[1.0, -1.0], action_high=[-1.0, 1.0]),
             error=ValueError, match=r"action_low must be strictly below action_high; violated at indices \[0\]"),
    BadInput(id="optimizer/infinite-bounds", call=lambda a, t: _cem(action_high=[np.inf, 1.0]), error=ValueError,
             match=r"action_high must be finite, got \[inf, 1.0\]"),
    BadInput(id="optimizer/bool-bounds", call=lambda a, t: _cem(action_low=np.zeros(2, dtype=bool)),
             error=ValueError, match=r"action_low must be real numbers, got dtype bool"),
    BadInput(id="optimizer/bounds-shape", call=lambda a, t: _cem(action_low=[[-1.0, -1.0]]), error=ValueError,
             match=r"action_low must have shape \(A,\), got \(1, 2\)"),
    BadInput(id="optimizer/elites-exceed-samples", call=lambda a, t: CEMConfig(num_samples=8, num_elites=9),
             error=ValueError, match=r"num_elites must be in \[1, num_samples=8\], got 9"),
    BadInput(id="optimizer/zero-temperature", call=lambda a, t: MPPIConfig(temperature=0.0), error=ValueError,
             match=r"temperature must be > 0, got 0.0"),
    BadInput(id="optimizer/unknown-field", call=lambda a, t: _cem(popsize=10), error=TypeError,
             match=r"unknown CEMConfig fields \['popsize'\]; valid fields: \[.*'num_samples'"),
    BadInput(id="optimizer/config-type", call=lambda a, t: make_optimizer("cem", horizon=3, action_low=[-1.0],
             action_high=[1.0], config=MPPIConfig()), error=TypeError,
             match=r"optimizer 'cem' takes a CEMConfig, got MPPIConfig"),
    BadInput(id="optimizer/objective-shape", call=lambda a, t: _cem().optimize(lambda x: x.sum(-1)), error=ValueError,
             match=r"objective must return a tensor of shape \(8,\) for actions of shape \(8, 3, 2\), got torch.Size\(\[8, 3\]\)"),
    BadInput(id="optimizer/prior-samples-shape", error=ValueError,
             call=lambda a, t: _cem().optimize(lambda x: -x.square().sum((1, 2)), prior_samples=torch.zeros(4, 5, 2)),
             match=r"prior_samples must have shape \(M, 3, 2\) = \(M, horizon, action_dim\), got \(4, 5, 2\)"),
    BadInput(id="optimizer/warm-start-shape", error=ValueError,
             call=lambda a, t: _cem().optimize(lambda x: -x.square().sum((1, 2)),
                                               PlanState(mean=torch.zeros(5, 2), std=torch.ones(5, 2), elites=None)),
             match=r"state.mean must have shape \(3, 2\) = \(horizon, action_dim\), got \(5, 2\)"),
]  # fmt: skip

MPC = [
    BadInput(id="mpc/obs-shape", call=lambda a, t: _controller().predict(np.zeros(3)), error=ValueError,
             match=r"expected observation of shape \(n_envs, 4\) or \(4,\), got \(3,\)"),
    BadInput(id="mpc/nan-obs", call=lambda a, t: _controller().predict(np.array([[0.0] * 4, [0, np.nan, 0, 0]])),
             error=ValueError, match=r"observation contains NaN or inf \(env index \[1\]\)"),
    BadInput(id="mpc/inf-obs", call=lambda a, t: _controller().predict(np.array([np.inf, 0, 0, 0])),
             error=ValueError, match=r"observation contains NaN or inf \(env index \[0\]\)"),
    BadInput(id="mpc/bool-obs", call=lambda a, t: _controller().predict(np.zeros(4, dtype=bool)), error=ValueError,
             match=r"expected a numeric observation, got dtype bool"),
    BadInput(id="mpc/complex-obs", call=lambda a, t: _controller().predict(np.zeros(4, dtype=complex)),
             error=ValueError, match=r"expected a real observation, got dtype complex128"),
    BadInput(id="mpc/dict-obs", call=lambda a, t: _controller().predict({"obs": np.zeros((1, 4))}), error=ValueError,
             match=r"got a dict with keys \['obs'\]; the controller keeps its own history"),
    BadInput(id="mpc/episode-start-shape", error=ValueError,
             call=lambda a, t: _controller().predict(np.zeros((2, 4)), episode_start=np.array([True])),
             match=r"expected episode_start of shape \(2,\), got \(1,\)"),
    BadInput(id="mpc/zero-horizon", call=lambda a, t: MPCConfig(horizon=0), error=ValueError,
             match=r"expected horizon, samples, iterations, history_len and action_repeat >= 1, got 0, 128, 3, 8, 1"),
    BadInput(id="mpc/discount-above-one", call=lambda a, t: MPCConfig(discount=1.5), error=ValueError,
             match=r"expected discount in \(0, 1\], got 1.5"),
    BadInput(id="mpc/zero-discount", call=lambda a, t: MPCConfig(discount=0.0), error=ValueError,
             match=r"expected discount in \(0, 1\], got 0.0"),
    BadInput(id="mpc/action-space-shape", call=lambda a, t: MPCController(_oracle(), PM, box(-1, 1, 3)),
             error=ValueError, match=r"spec 'pointmass' expects actions \(2,\), action_space is \(3,\)"),
    BadInput(id="mpc/unbounded-actions", call=lambda a, t: MPCController(_oracle(), PM, box(-np.inf, np.inf, 2)),
             error=ValueError, match=r"MPCController needs a bounded action space \(finite low and high\)"),
    BadInput(id="mpc/unknown-optimizer-override", error=TypeError,
             call=lambda a, t: MPCController(_oracle(), PM, box(-1, 1, 2), MPCConfig(optimizer_overrides={"popsize": 3})),
             match=r"unknown ICEMConfig fields \['popsize'\]"),
]  # fmt: skip

ORACLE = [
    BadInput(id="oracle/no-envs", call=lambda a, t: OracleDynamics([], PM), error=ValueError,
             match=r"OracleDynamics needs at least one env to read states from"),
    BadInput(id="oracle/env-spec-mismatch", call=lambda a, t: OracleDynamics([make_env()], get_spec("HalfCheetah")),
             error=ValueError, match=r"env PointMassEnv observes shape \(4,\), spec 'HalfCheetah' expects \(17,\)"),
    BadInput(id="oracle/unsupported-env", call=lambda a, t: OracleDynamics([make_env("CartPole-v1")], PM),
             error=ValueError, match=r"supports gymnasium MuJoCo envs and pointmass, got CartPoleEnv"),
    BadInput(id="oracle/actions-shape", call=lambda a, t: _oracle().rollout(_history(), torch.zeros(4, 5, 3)),
             error=ValueError, match=r"expected actions \[N,H,2\], got \(4, 5, 3\)"),
    BadInput(id="oracle/env-index", call=lambda a, t: _oracle().rollout(_history(env_index=3), torch.zeros(4, 5, 2)),
             error=ValueError, match=r"history.env_index 3 is not in \[0, 1\)"),
    BadInput(id="oracle/history-mismatch", error=ValueError,
             call=lambda a, t: History(obs=torch.zeros(3, 4), act=torch.zeros(2, 2), valid=torch.ones(3, dtype=torch.bool), env_index=0),
             match=r"expected History obs \[K,O\], act \[K,A\], valid \[K\] with one K, got obs \(3, 4\), act \(2, 2\), valid \(3,\)"),
    BadInput(id="oracle/integer-actions", error=ValueError,
             match=r"expected floating-point actions \(float32 or float64\), got torch.int64",
             call=lambda a, t: _oracle().rollout(_history(), torch.ones(2, 3, 2, dtype=torch.long))),
]  # fmt: skip

NORMALIZER = [
    BadInput(id="normalizer/shape-mismatch", call=lambda a, t: Normalizer.from_data(np.zeros((10, 4)), np.zeros((10, 3))),
             error=ValueError, match=r"obs \(10, 4\) and next_obs \(10, 3\) must share a shape \[\.\.\.,O\]"),
    BadInput(id="normalizer/nan-data", call=lambda a, t: Normalizer.from_data(np.full((10, 4), np.nan), np.zeros((10, 4))),
             error=ValueError, match=r"cannot fit a normalizer to data containing NaN or inf"),
    BadInput(id="normalizer/zero-transitions", call=lambda a, t: Normalizer.from_data(np.zeros((0, 4)), np.zeros((0, 4))),
             error=ValueError, match=r"cannot fit a normalizer to zero transitions"),
    BadInput(id="normalizer/missing-statistic", error=ValueError,
             call=lambda a, t: Normalizer.from_dict({"obs_mean": [0.0], "delta_mean": [0.0], "delta_std": [1.0]}),
             match=r"normalizer statistics lack 'obs_std'"),
    BadInput(id="normalizer/statistic-shape", error=ValueError,
             call=lambda a, t: Normalizer.from_dict({"obs_mean": [0.0] * 4, "obs_std": [1.0] * 3, "delta_mean": [0.0] * 4, "delta_std": [1.0] * 4}),
             match=r"normalizer obs_std has shape \(3,\), expected \(4,\)"),
    BadInput(id="normalizer/nested-statistic", error=ValueError,
             call=lambda a, t: Normalizer.from_dict({"obs_mean": [[0.0, 0.0]], "obs_std": [1.0], "delta_mean": [0.0], "delta_std": [1.0]}),
             match=r"normalizer 'obs_mean' must be a flat list of numbers"),
    BadInput(id="normalizer/nan-std", error=ValueError,
             call=lambda a, t: Normalizer.from_dict({"obs_mean": [0.0] * 2, "obs_std": [1.0] * 2, "delta_mean": [0.0] * 2, "delta_std": [1.0, float("nan")]}),
             match=r"normalizer delta_std must be finite and > 0; it is not at dims \[1\]"),
    BadInput(id="normalizer/zero-reward-std", error=ValueError,
             call=lambda a, t: Normalizer.from_dict({"obs_mean": [0.0], "obs_std": [1.0], "delta_mean": [0.0], "delta_std": [1.0], "reward_std": 0.0}),
             match=r"normalizer needs a finite reward_mean and a finite reward_std > 0, got 0.0 and 0.0"),
    BadInput(id="normalizer/inverted-action-bounds", call=lambda a, t: Normalizer.identity(4, [1.0, 1.0], [-1.0, -1.0]),
             error=ValueError, match=r"every action upper bound must exceed its lower bound"),
    BadInput(id="normalizer/one-sided-action-bounds", call=lambda a, t: Normalizer.identity(4, act_low=[-1.0, -1.0]),
             error=ValueError, match=r"normalizer needs both act_low and act_high, or neither"),
]  # fmt: skip

TRANSFORMER = [
    BadInput(id="transformer/head-split", call=lambda a, t: TransformerConfig(obs_dim=4, act_dim=2, d_model=30, n_head=4),
             error=ValueError, match=r"d_model \(30\) must be divisible by n_head \(4\)"),
    BadInput(id="transformer/dropout", call=lambda a, t: TransformerConfig(obs_dim=4, act_dim=2, dropout=1.0),
             error=ValueError, match=r"dropout must lie in \[0, 1\), got 1.0"),
    BadInput(id="transformer/mask-fill", call=lambda a, t: TransformerConfig(obs_dim=4, act_dim=2, mask_fill="zeros"),
             error=ValueError, match=r"mask_fill must be one of .*got 'zeros'"),
    BadInput(id="transformer/obs-dim", call=lambda a, t: _transformer(torch.zeros(2, 3, 5), torch.zeros(2, 3, 2)),
             error=ValueError, match=r"expected obs of shape \[B, T, 4\], got \(2, 3, 5\)"),
    BadInput(id="transformer/act-shape", call=lambda a, t: _transformer(torch.zeros(2, 3, 4), torch.zeros(2, 3, 3)),
             error=ValueError, match=r"expected actions of shape \(2, 3, 2\), got \(2, 3, 3\)"),
    BadInput(id="transformer/window-too-long", call=lambda a, t: _transformer(torch.zeros(1, 9, 4), torch.zeros(1, 9, 2)),
             error=ValueError, match=r"window of 9 steps starting at timestep 0 exceeds context_len=8"),
    BadInput(id="transformer/float-valid-mask", error=ValueError,
             call=lambda a, t: _transformer(torch.zeros(2, 3, 4), torch.zeros(2, 3, 2), valid=torch.ones(2, 3)),
             match=r"expected valid of shape \(2, 3\) \(bool\), got \(2, 3\) \(torch.float32\)"),
    BadInput(id="transformer/attn-mask-size", error=ValueError,
             call=lambda a, t: _transformer(torch.zeros(2, 3, 4), torch.zeros(2, 3, 2), attn_mask=torch.ones(4, 4, dtype=torch.bool)),
             match=r"attn_mask is \(4, 4\), expected \[\.\., 6, 6\]"),
    BadInput(id="transformer/float64-obs", error=ValueError,
             match=r"expected obs of dtype torch.float32 \(the model's\), got torch.float64",
             call=lambda a, t: _transformer(torch.zeros(2, 3, 4, dtype=torch.float64), torch.zeros(2, 3, 2))),
]  # fmt: skip

KV_CACHE = [
    BadInput(id="kv-cache/horizon-exceeds-context", call=lambda a, t: _imagine((1, 4, 4), (1, 3, 2), (8, 6, 2)),
             error=ValueError, match=r"a history of K=4 steps and a horizon of H=6 need K \+ H - 1 = 9 timesteps, but context_len is 8"),
    BadInput(id="kv-cache/candidate-shape", call=lambda a, t: _imagine((1, 3, 4), (1, 2, 2), (8, 3, 3)),
             error=ValueError, match=r"expected candidate actions of shape \[N, H, 2\] or \[B, N, H, 2\], got \(8, 3, 3\)"),
    BadInput(id="kv-cache/batch-mismatch", call=lambda a, t: _imagine((2, 3, 4), (2, 2, 2), (8, 3, 2)),
             error=ValueError, match=r"candidate actions \(1, 8, 3, 2\) do not match history obs \(2, 3, 4\)"),
    BadInput(id="kv-cache/padded-current-step", error=ValueError,
             call=lambda a, t: _imagine((1, 3, 4), (1, 2, 2), (8, 3, 2), valid=torch.tensor([[True, True, False]])),
             match=r"the last history step \(the current observation\) must be valid in every row"),
    BadInput(id="kv-cache/history-actions", call=lambda a, t: _imagine((1, 3, 4), (1, 1, 2), (8, 3, 2)),
             error=ValueError, match=r"expected history actions for 2 or 3 steps, got \(1, 1, 2\)"),
    BadInput(id="kv-cache/zero-candidates", error=ValueError,
             call=lambda a, t: kv_cache.encode_prefix(tiny_model(), torch.zeros(1, 3, 4), torch.zeros(1, 2, 2)).expand(0, 4),
             match=r"need n >= 1 candidates and max_new_tokens >= 1, got 0 and 4"),
]  # fmt: skip

API_TABLES: dict[str, list[BadInput]] = {
    "envs": ENVS,
    "history-wrapper": HISTORY_WRAPPER,
    "optimizer": OPTIMIZERS,
    "mpc": MPC,
    "oracle": ORACLE,
    "normalizer": NORMALIZER,
    "transformer": TRANSFORMER,
    "kv-cache": KV_CACHE,
}
"""Every row on envs, planning and the model, by component."""
