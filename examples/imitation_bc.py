"""imitation's behaviour cloning with the masked control transformer as the policy's features extractor.

    .venv-imitation/bin/python examples/imitation_bc.py            # 10 expert episodes on Reacher (~2 min)
    .venv-imitation/bin/python examples/imitation_bc.py --quick    # 3 episodes, fewer updates (< 1 min)
    .venv-imitation/bin/python examples/imitation_bc.py --checkpoint runs/reacher/checkpoint --freeze

Oracle MPC (iCEM planning in the true simulator) demonstrates, ``maskctrl.data.collect`` records the
episodes in maskctrl's dataset format (``--data DIR`` reads a saved one instead), and
``episodes_to_trajectories`` hands them to imitation as the observations ``HistoryWrapper`` would show.
imitation's ``bc.BC`` then fits an SB3 ``ActorCriticPolicy`` whose extractor is the backbone: a
pretrained checkpoint (frozen or fine-tuned) or a fresh one. Needs the ``imitation`` extra, which pins
gymnasium 0.29 (``make setup-imitation`` builds ``.venv-imitation``); under 0.29 Reacher is v4, whose
observation has 11 numbers (v5: 10), so a checkpoint must have been trained on v4 data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import tyro
from stable_baselines3.common.evaluation import evaluate_policy

from maskctrl.data.collect import RandomPolicy, collect_episodes
from maskctrl.data.episodes import load_episodes
from maskctrl.envs.registry import get_spec
from maskctrl.planner.presets import preset_config
from maskctrl.policies.imitation import (
    episodes_to_trajectories,
    make_bc_trainer,
    make_policy,
    make_venv,
    oracle_controller,
    scratch_backbone,
)


@dataclass(frozen=True, kw_only=True)
class Args:
    """Options of the example."""

    env: str = "Reacher"
    """Registered env name."""
    quick: bool = False
    """Fewer demonstrations, updates and evaluation episodes."""
    data: Path | None = None
    """A dataset directory from ``maskctrl collect`` to learn from (default: collect expert demos here)."""
    episodes: int = 10
    """Expert episodes to collect (3 with --quick)."""
    checkpoint: Path | None = None
    """Pretrained backbone directory (default: a fresh two-block backbone)."""
    freeze: bool = False
    """Keep the backbone's weights fixed; only the policy's MLP head learns."""
    history_len: int = 4
    """Steps K of HistoryWrapper observations the policy reads."""
    batches: int = 1000
    """BC gradient steps (200 with --quick)."""
    eval_episodes: int = 10
    """Evaluation episodes of the learned and the random policy (5 with --quick)."""
    seed: int = 0
    """Seed of the demonstrations, the training and the evaluation resets."""


def main(args: Args) -> None:
    """Collect (or load) demonstrations, clone them with imitation's BC, and compare against random."""
    torch.set_num_threads(1)  # a small model: more threads only contend on a shared CPU
    spec = get_spec(args.env)
    if args.data is not None:
        data = load_episodes(args.data)
    else:
        expert = partial(oracle_controller, spec=spec, config=preset_config(args.env, samples=32, horizon=20))
        episodes = 3 if args.quick else args.episodes
        data = collect_episodes(spec, expert, n_episodes=episodes, seed=args.seed + 100, progress=True)
    trajectories = episodes_to_trajectories(data, history_len=args.history_len)

    venv = make_venv(spec, seed=args.seed, history_len=args.history_len)
    torch.manual_seed(args.seed)
    scratch = scratch_backbone(spec) if args.checkpoint is None else None
    policy = make_policy(venv, args.checkpoint, config=scratch, freeze=args.freeze, env_name=spec.name)
    trainer = make_bc_trainer(policy, trajectories, rng=np.random.default_rng(args.seed))
    trainer.train(n_batches=200 if args.quick else args.batches, progress_bar=False)

    n_eval = 5 if args.quick else args.eval_episodes
    venv.seed(args.seed + 1000)
    learned, _ = evaluate_policy(policy, venv, n_eval_episodes=n_eval, return_episode_rewards=True)
    venv.seed(args.seed + 1000)
    random_policy = RandomPolicy(venv.action_space, args.seed, observation_space=venv.observation_space)
    random, _ = evaluate_policy(random_policy, venv, n_eval_episodes=n_eval, return_episode_rewards=True)

    backbone = "scratch" if args.checkpoint is None else str(args.checkpoint)
    print(f"{spec.gym_id}: BC on {data.n_episodes} episodes ({data.n_steps} steps), K={args.history_len}")
    print(f"  backbone: {backbone} ({'frozen' if args.freeze else 'fine-tuned'})")
    print(f"  demonstrations : {data.returns().mean():8.2f} ± {data.returns().std():.2f}")
    print(f"  BC policy      : {np.mean(learned):8.2f} ± {np.std(learned):.2f}  ({n_eval} episodes)")
    print(f"  random actions : {np.mean(random):8.2f} ± {np.std(random):.2f}")


if __name__ == "__main__":
    main(tyro.cli(Args))
