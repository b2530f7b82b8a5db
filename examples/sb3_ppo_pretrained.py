"""PPO whose features come from a pretrained, frozen masked control transformer.

    python examples/sb3_ppo_pretrained.py --quick                         # under a minute on 2 cores
    python examples/sb3_ppo_pretrained.py --checkpoint DIR --env Reacher  # your own pretrained backbone

The env is wrapped in ``HistoryWrapper`` so that the observation holds the last K observations and
actions; ``maskctrl_policy_kwargs`` plugs the backbone into ``MultiInputPolicy`` (checking that the
checkpoint fits the env); PPO then trains only the small policy and value heads on top. Without
``--checkpoint`` the example uses the package's shipped checkpoint for the env, or, if there is none yet,
pretrains a tiny backbone on random-policy episodes first (which shows the plumbing, not what a real
pretrained backbone is worth). Finally the model is saved, loaded back, and its actions compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro
from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

import maskctrl
from maskctrl.data.collect import RandomPolicy
from maskctrl.envs import HistoryWrapper, get_spec
from maskctrl.policies.sb3 import maskctrl_policy_kwargs
from maskctrl.recipes import random_data_backbone


@dataclass(frozen=True, kw_only=True)
class Args:
    """Options of the example."""

    env: str = "Reacher"
    """Registered env name."""
    checkpoint: Path | None = None
    """Pretrained checkpoint directory (default: maskctrl/checkpoints/<env>/, else a tiny one made here)."""
    quick: bool = False
    """Small budgets: 2048 PPO timesteps, 150 pretraining steps if a backbone must be made."""
    timesteps: int | None = None
    """PPO timesteps (default 2048 with --quick, else 50000)."""
    history: int = 4
    """History steps K in each observation."""
    seed: int = 0
    """Seed of the data, the pretraining, PPO and the evaluation."""
    out_dir: Path = Path("runs/sb3_ppo_pretrained")
    """Where a made-here backbone and the saved PPO model go."""


def tiny_backbone(args: Args) -> Path:
    """Pretrain a small backbone on random-policy episodes of ``args.env``; return its checkpoint."""
    result = random_data_backbone(args.env, args.out_dir, steps=150 if args.quick else 1000, seed=args.seed)
    losses = ", ".join(f"{name} {value:.3f}" for name, value in result.train_losses.items())
    print(f"pretrained a tiny backbone: {result.step} steps in {result.wall_time_s:.0f} s; losses {losses}")
    return result.checkpoint


def main(args: Args) -> None:
    """Pretrained backbone -> PPO -> evaluation against random actions -> save, load, same actions."""
    torch.set_num_threads(1)
    spec = get_spec(args.env)
    checkpoint = args.checkpoint or Path(maskctrl.__file__).parent / "checkpoints" / args.env
    if not (checkpoint / "config.json").is_file():
        if args.checkpoint is not None:
            raise SystemExit(f"no checkpoint at {checkpoint}")
        print(f"no shipped checkpoint for {args.env} yet; pretraining a tiny one on random data")
        checkpoint = tiny_backbone(args)

    env = Monitor(HistoryWrapper(spec.make(), history_len=args.history))
    policy_kwargs = maskctrl_policy_kwargs(checkpoint, env=env, env_name=args.env, freeze=True)
    model = PPO(
        "MultiInputPolicy", env, policy_kwargs=policy_kwargs, n_steps=512, seed=args.seed, device="cpu"
    )
    timesteps = args.timesteps or (2048 if args.quick else 50_000)
    model.learn(timesteps, progress_bar=False)

    eval_env = Monitor(HistoryWrapper(spec.make(), history_len=args.history))
    episodes = 5
    eval_env.reset(seed=args.seed + 1000)
    ppo_returns, _ = evaluate_policy(model, eval_env, n_eval_episodes=episodes, return_episode_rewards=True)
    eval_env.reset(seed=args.seed + 1000)
    random_policy = RandomPolicy(spec.make().action_space, args.seed)
    random_returns, _ = evaluate_policy(
        random_policy, eval_env, n_eval_episodes=episodes, return_episode_rewards=True
    )
    print(f"{args.env}: PPO with a frozen maskctrl extractor, {timesteps} timesteps")
    print(f"  random actions: {np.mean(random_returns):8.2f} ± {np.std(random_returns):.2f}")
    print(f"  PPO (frozen)  : {np.mean(ppo_returns):8.2f} ± {np.std(ppo_returns):.2f}")

    path = args.out_dir / "ppo_maskctrl.zip"
    model.save(path)
    loaded = PPO.load(path, device="cpu")
    obs, _ = eval_env.reset(seed=args.seed)
    same = np.array_equal(
        model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0]
    )
    print(f"saved to {path}; PPO.load gives the same actions: {same}")


if __name__ == "__main__":
    main(tyro.cli(Args))
