"""imitation's DAgger with oracle MPC as the expert and the masked control transformer in the learner.

    .venv-imitation/bin/python examples/imitation_dagger_mpc.py            # 6 rounds on Reacher (~2 min)
    .venv-imitation/bin/python examples/imitation_dagger_mpc.py --quick    # 2 rounds (< 1 min)

Each DAgger round runs the current mix of expert and learner (the expert's share decays over rounds),
asks the expert what it would have done in every visited state, and retrains the learner (imitation's
``bc.BC``) on everything gathered so far. The expert is ``MPCController`` planning with iCEM through
``OracleDynamics``, the true simulator of the very envs DAgger steps, wrapped as an SB3 policy
(``MPCExpert``) because DAgger asks its expert for deterministic actions. imitation's DAgger takes array
observations only, so the learner's extractor reads each observation as a history of one step. Needs the
``imitation`` extra (``make setup-imitation`` builds ``.venv-imitation``).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
import tyro
from stable_baselines3.common.evaluation import evaluate_policy

from maskctrl.data.collect import RandomPolicy
from maskctrl.envs.registry import get_spec
from maskctrl.planner.presets import preset_config
from maskctrl.policies.imitation import (
    BCTrainerConfig,
    make_bc_trainer,
    make_dagger_trainer,
    make_policy,
    make_venv,
    oracle_expert,
    scratch_backbone,
)


@dataclass(frozen=True, kw_only=True)
class Args:
    """Options of the example."""

    env: str = "Reacher"
    """Registered env name (Reacher's 50-step episodes keep rounds short)."""
    quick: bool = False
    """Two rounds and fewer updates and evaluation episodes."""
    rounds: int = 6
    """DAgger rounds of one episode each (2 with --quick)."""
    batches: int = 300
    """BC gradient steps after each round (100 with --quick)."""
    checkpoint: Path | None = None
    """Pretrained backbone directory (default: a fresh two-block backbone)."""
    freeze: bool = False
    """Keep the backbone's weights fixed; only the policy's MLP head learns."""
    eval_episodes: int = 10
    """Evaluation episodes of the learned and the random policy (5 with --quick)."""
    seed: int = 0
    """Seed of the resets, the planner and the training."""


def main(args: Args) -> None:
    """Train a DAgger learner against the oracle MPC expert and compare it with random actions."""
    torch.set_num_threads(1)  # a small model: more threads only contend on a shared CPU
    datasets.disable_progress_bars()  # imitation saves each round's demonstrations as a HF dataset
    spec = get_spec(args.env)
    venv = make_venv(spec, seed=args.seed)
    steps = spec.max_episode_steps
    expert = oracle_expert(venv, spec, preset_config(args.env, seed=args.seed, samples=32, horizon=20))
    torch.manual_seed(args.seed)
    scratch = scratch_backbone(spec) if args.checkpoint is None else None
    policy = make_policy(venv, args.checkpoint, config=scratch, freeze=args.freeze, env_name=spec.name)
    # A batch no larger than an episode, so that each round needs one episode only.
    bc = make_bc_trainer(
        policy, None, rng=np.random.default_rng(args.seed), config=BCTrainerConfig(batch_size=min(64, steps))
    )
    rounds = 2 if args.quick else args.rounds
    n_eval = 5 if args.quick else args.eval_episodes
    eval_venv = make_venv(spec, seed=args.seed)
    with tempfile.TemporaryDirectory() as scratch_dir:
        dagger = make_dagger_trainer(
            venv, bc, expert, scratch_dir=scratch_dir, rng=np.random.default_rng(args.seed + 1)
        )
        for _ in range(rounds):
            dagger.train(
                steps,  # one round per call, so that progress shows
                rollout_round_min_episodes=1,
                rollout_round_min_timesteps=steps,
                bc_train_kwargs={
                    "n_batches": 100 if args.quick else args.batches,
                    "log_rollouts_venv": None,
                    "progress_bar": False,
                },
            )
            eval_venv.seed(args.seed + 1000)
            learned, _ = evaluate_policy(
                policy, eval_venv, n_eval_episodes=n_eval, return_episode_rewards=True
            )
            print(f"round {dagger.round_num}: learner return {np.mean(learned):8.2f} ± {np.std(learned):.2f}")

    eval_venv.seed(args.seed + 1000)
    random_policy = RandomPolicy(eval_venv.action_space, args.seed)
    random, _ = evaluate_policy(random_policy, eval_venv, n_eval_episodes=n_eval, return_episode_rewards=True)

    print(f"{spec.gym_id}: DAgger, {rounds} rounds against oracle iCEM MPC")
    print(f"  DAgger learner : {np.mean(learned):8.2f} ± {np.std(learned):.2f}  ({n_eval} episodes)")
    print(f"  random actions : {np.mean(random):8.2f} ± {np.std(random):.2f}")


if __name__ == "__main__":
    main(tyro.cli(Args))
