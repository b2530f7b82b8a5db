"""maskctrl.planner: trajectory optimizers, dynamics models and the MPC controller that joins them."""

from maskctrl.planner.critic import FallPenalty, SafetyCritic, fit_safety_critic, load_critic, save_critic
from maskctrl.planner.dynamics import DynamicsModel, History, Rollout
from maskctrl.planner.mlp_dynamics import MLPDynamics
from maskctrl.planner.mpc import MPCConfig, MPCController, PolicyPrior, TerminalValue, planning_return
from maskctrl.planner.optimizers import (
    CEM,
    ICEM,
    MPPI,
    CEMConfig,
    ICEMConfig,
    MPPIConfig,
    PlanResult,
    PlanState,
    TrajectoryOptimizer,
    make_optimizer,
)
from maskctrl.planner.oracle import OracleDynamics
from maskctrl.planner.transformer_dynamics import TransformerDynamics

__all__ = [
    "CEM",
    "ICEM",
    "MPPI",
    "CEMConfig",
    "DynamicsModel",
    "FallPenalty",
    "History",
    "ICEMConfig",
    "MLPDynamics",
    "MPCConfig",
    "MPCController",
    "MPPIConfig",
    "OracleDynamics",
    "PlanResult",
    "PlanState",
    "PolicyPrior",
    "Rollout",
    "SafetyCritic",
    "TerminalValue",
    "TrajectoryOptimizer",
    "TransformerDynamics",
    "fit_safety_critic",
    "load_critic",
    "make_optimizer",
    "planning_return",
    "save_critic",
]
