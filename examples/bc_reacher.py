"""Behaviour cloning on Reacher: record oracle-MPC demonstrations, clone them, compare returns.

The expert is MPC planning in the true simulator (``maskctrl collect --policy oracle-mpc``); the clone is
the masked control transformer's policy head, trained by :func:`maskctrl.policies.bc.train_bc` from a
pretrained checkpoint (``--checkpoint``) or from scratch, and run through :class:`TransformerPolicy`.

    python examples/bc_reacher.py --quick                      # under a minute on 2 CPU cores
    python examples/bc_reacher.py --episodes 20 --steps 3000   # more demonstrations, longer training
    python examples/bc_reacher.py --data data/reacher-expert --checkpoint maskctrl/checkpoints/Reacher

Prints the return of the expert (on its demonstrations), of the clone and of a random policy (both on
the same held-out reset seeds), and leaves the run (checkpoint, log.csv, bc.png) in ``--out``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

import maskctrl.envs  # noqa: F401  (registers the built-in envs)
from maskctrl.commands.collect import CollectConfig, oracle_mpc_factory
from maskctrl.data.collect import RandomPolicy, collect_episodes
from maskctrl.data.episodes import load_episodes, save_episodes
from maskctrl.envs.registry import get_spec
from maskctrl.policies.bc import BCConfig, episode_returns, train_bc
from maskctrl.policies.transformer_policy import TransformerPolicy

ENV = "Reacher"


@dataclass(frozen=True, kw_only=True)
class Args:
    """Options of the example; --quick shrinks the defaults that are left at None."""

    quick: bool = False
    """Few demonstrations, a tiny model, short training (under a minute)."""
    data: Path | None = None
    """An existing Reacher dataset to clone (None: record oracle-MPC demonstrations into --out/data)."""
    checkpoint: Path | None = None
    """Pretrained checkpoint to fine-tune (None: from scratch)."""
    episodes: int | None = None
    """Demonstrations to record (quick 3, else 5)."""
    steps: int | None = None
    """BC optimizer steps (quick 300, else 2000)."""
    eval_episodes: int = 10
    """Held-out episodes for the clone and the random policy (reset seeds 1000, 1001, ...)."""
    out: Path = Path("runs/bc_reacher")
    """Where the demonstrations (when recorded) and the BC run go; replaced on every run."""
    seed: int = 0
    """Seed of the demonstrations and of training."""


def demonstrations(args: Args) -> Path:
    """The dataset to clone: ``--data``, or oracle-MPC episodes recorded now."""
    if args.data is not None:
        return args.data
    out = args.out / "data"
    episodes = args.episodes or (3 if args.quick else 5)
    # --quick plans with a quarter of the preset's budget (N=64, H=25, 3 iterations): still a good expert.
    budget = {"samples": 32, "horizon": 15, "iterations": 2} if args.quick else {}
    expert = CollectConfig(env=ENV, policy="oracle-mpc", out=out, seed=args.seed, **budget)
    tic = time.perf_counter()
    data = collect_episodes(
        ENV,
        oracle_mpc_factory(expert),
        n_episodes=episodes,
        seed=args.seed,
        progress=True,
        policy_name="oracle-mpc",
    )
    save_episodes(data, out, overwrite=True)
    print(f"recorded {episodes} oracle-MPC episodes in {time.perf_counter() - tic:.0f} s -> {out}")
    return out


def main(args: Args) -> None:
    """Record (or load) demonstrations, clone them, and print the returns side by side."""
    torch.set_num_threads(1)
    data_dir = demonstrations(args)
    tiny = {"n_layer": 2, "n_head": 2, "d_model": 64, "window": 8} if args.quick else {}
    cfg = BCConfig(
        data=(data_dir,), out=args.out / "bc", checkpoint=args.checkpoint, steps=args.steps or (300 if args.quick else 2000),
        lr=1e-3, val_every=100 if args.quick else 250, val_episodes=5, seed=args.seed, device="cpu",
        overwrite=True, **tiny,
    )  # fmt: skip
    result = train_bc(cfg)
    env = get_spec(ENV).make()
    policy = TransformerPolicy.load(result.checkpoint, env=env, env_name=ENV)
    clone = episode_returns(policy, ENV, episodes=args.eval_episodes, seed=1000)
    random = episode_returns(
        RandomPolicy(env.action_space, args.seed), ENV, episodes=args.eval_episodes, seed=1000
    )
    expert = load_episodes(data_dir).returns()
    init = "pretrained" if args.checkpoint else "scratch"
    print(f"\n{ENV}: behaviour cloning ({init}) from {len(expert)} demonstrations, {cfg.steps} steps")
    for name, rets in (("expert (demos)", expert), (f"BC {init}", clone), ("random", random)):
        print(f"  {name:<16} {np.mean(rets):8.2f} ± {np.std(rets):.2f}  ({len(rets)} episodes)")
    normalized = (np.mean(clone) - np.mean(random)) / (np.mean(expert) - np.mean(random))
    print(f"  BC normalized score (random 0, expert 1): {normalized:.2f}")
    print(f"run: {args.out / 'bc'} (checkpoint/, log.csv, bc.png)")
    env.close()


if __name__ == "__main__":
    main(tyro.cli(Args))
