"""maskctrl.planner: trajectory optimizers, dynamics models and the MPC controller that joins them."""

from maskctrl.planner.dynamics import DynamicsModel, History, Rollout
from maskctrl.planner.mpc import MPCConfig, MPCController, planning_return
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

__all__ = [
    "CEM",
    "ICEM",
    "MPPI",
    "CEMConfig",
    "DynamicsModel",
    "History",
    "ICEMConfig",
    "MPCConfig",
    "MPCController",
    "MPPIConfig",
    "OracleDynamics",
    "PlanResult",
    "PlanState",
    "Rollout",
    "TrajectoryOptimizer",
    "make_optimizer",
    "planning_return",
]
