"""MPC in the true simulator: iCEM plans through OracleDynamics, SB3's evaluate_policy scores it.

    python examples/mpc_oracle.py            # Reacher, 2 envs x 2 episodes each (about 30 s on 2 cores)
    python examples/mpc_oracle.py --quick    # smaller planner, 1 episode per env (about 10 s)

The controller is an SB3-style policy (``predict(obs, state, episode_start)``), so it drops into
``evaluate_policy`` on a vector env unchanged. The oracle reads each env's simulator state, so it must be
built over the very envs being stepped (``vec_env.envs``). Swap OracleDynamics for a learned model to
plan with what a model has learned instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tyro
from gymnasium import spaces
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

import maskctrl.envs  # noqa: F401  (registers the built-in envs)
from maskctrl.data.collect import RandomPolicy
from maskctrl.envs.registry import get_spec
from maskctrl.planner.mpc import MPCConfig, MPCController
from maskctrl.planner.oracle import OracleDynamics


@dataclass(frozen=True, kw_only=True)
class Args:
    """Options of the example."""

    env: str = "Reacher"
    """Registered env name (Reacher's 50-step episodes keep this short)."""
    quick: bool = False
    """Smaller planner and one episode per env."""
    seed: int = 0
    """Seed of the env resets and the planner."""


def main(args: Args) -> None:
    """Evaluate a random policy and oracle iCEM MPC on a 2-env DummyVecEnv."""
    spec = get_spec(args.env)
    vec_env = DummyVecEnv([lambda: Monitor(spec.make()) for _ in range(2)])
    action_space = vec_env.action_space
    assert isinstance(action_space, spaces.Box)
    episodes = 2 if args.quick else 4

    vec_env.seed(args.seed)
    random_policy = RandomPolicy(action_space, args.seed)
    random_returns, _ = evaluate_policy(
        random_policy, vec_env, n_eval_episodes=episodes, return_episode_rewards=True
    )

    config = MPCConfig(
        optimizer="icem",
        horizon=15 if args.quick else 25,
        samples=32 if args.quick else 64,
        iterations=2 if args.quick else 3,
        seed=args.seed,
    )
    controller = MPCController(OracleDynamics(vec_env.envs, spec), spec, action_space, config)
    vec_env.seed(args.seed)
    mpc_returns, lengths = evaluate_policy(
        controller, vec_env, n_eval_episodes=episodes, return_episode_rewards=True
    )

    print(f"{args.env}, {episodes} episodes on 2 envs")
    print(f"  random actions : {np.mean(random_returns):8.2f} ± {np.std(random_returns):.2f}")
    print(
        f"  oracle iCEM MPC: {np.mean(mpc_returns):8.2f} ± {np.std(mpc_returns):.2f}"
        f"  (N={config.samples}, H={config.horizon}, {config.iterations} iterations; lengths {lengths})"
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
