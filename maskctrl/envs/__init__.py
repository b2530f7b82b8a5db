"""Environments maskctrl plans in: the spec registry, batched reward functions, pointmass, wrappers.

Importing this package registers the gymnasium id ``maskctrl/PointMass-v0`` and the built-in specs
(``pointmass``, ``InvertedPendulum``, ``Reacher``, ``HalfCheetah``, ``Hopper``).
"""

from maskctrl.envs.pointmass import POINTMASS_ID, PointMassEnv
from maskctrl.envs.registry import (
    EnvSpec,
    RewardFn,
    TerminationFn,
    UnknownEnvError,
    builtin_specs,
    get_spec,
    list_specs,
    register_spec,
    resolve_id,
)
from maskctrl.envs.wrappers import HistoryWrapper

__all__ = [
    "POINTMASS_ID",
    "EnvSpec",
    "HistoryWrapper",
    "PointMassEnv",
    "RewardFn",
    "TerminationFn",
    "UnknownEnvError",
    "builtin_specs",
    "get_spec",
    "list_specs",
    "register_spec",
    "resolve_id",
]
