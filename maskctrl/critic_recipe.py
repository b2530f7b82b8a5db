"""The recipe that builds the safety critic shipped under ``maskctrl/critics/Hopper/``.

Run ``make critics`` (or ``python -m maskctrl.critic_recipe``; about 55 minutes on 2 cores). It

1. collects episodes of a cheap oracle planner (the Hopper preset with fewer candidates and
   iterations, forward pay tripled up to 1.0 m/s, the posture costs kept, no critic): it moves faster
   than it can stay up, so nearly every episode ends in a fall, which is what a critic learns from;
2. fits a first critic (:func:`~maskctrl.planner.critic.fit_safety_critic`) and collects as many
   episodes again with that planner guided by it, reaching states nearer the edge of safety;
3. fits the final critic on all episodes and writes it with its provenance (rounds, seeds, planner,
   data and fit summaries, versions, wall times).

Episodes are collected by worker processes (``--workers``; one mujoco thread each) in chunks of
consecutive reset seeds, so the data do not depend on the number of workers; each round is cached in
``--work-dir``. The reset seeds (1000+ and 2000+) are disjoint from the benchmark's (0, 1, 2). What the
critic is worth is measured by ``benchmarks/mpc_oracle.py``, not here.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import tyro
from tqdm import tqdm

from maskctrl.planner.critic import CriticConfig
from maskctrl.planner.presets import CRITIC_ROOT

ENV = "Hopper"


@dataclass(frozen=True, kw_only=True)
class Round:
    """One round of data collection."""

    episodes: int
    """Episodes to collect."""
    seed: int
    """Reset seed of the first episode (episode ``j``: ``seed + j``)."""
    guided: bool
    """Plan with the critic fitted on the earlier rounds."""


@dataclass(frozen=True, kw_only=True)
class CriticRecipeConfig:
    """Options of the Hopper safety-critic recipe."""

    rounds: tuple[Round, ...] = (
        Round(episodes=100, seed=1000, guided=False),
        Round(episodes=100, seed=2000, guided=True),
    )
    """Collection rounds, in order (a guided round needs an earlier one)."""
    samples: int = 32
    """Candidates of the cheap collecting planner (the preset has 64)."""
    iterations: int = 2
    """Its iterations (the preset has 3)."""
    speed_cap: float = 1.0
    """Its forward bonus pays up to this speed (m/s)."""
    posture: float = 1.0
    """Weight of the posture costs in its objective (the shipped critic was collected with 1)."""
    kappa: float = 1.0
    """Pessimism of the guided rounds' fall penalty (the shipped critic was collected with 1)."""
    max_steps: int = 600
    """Episode length cap of the collected episodes."""
    chunk: int = 10
    """Episodes per worker task."""
    workers: int = 2
    """Worker processes."""
    critic: CriticConfig = field(default_factory=CriticConfig)
    """Architecture, labels and training of the critics."""
    seed: int = 0
    """Seed of the planners and the critic fits."""
    work_dir: Path = Path("runs/critic")
    """Where the collected rounds are cached."""
    out: Path = CRITIC_ROOT / ENV
    """Where the critic is written."""
    progress: bool = True
    """Show progress bars."""


def collect_chunk(cfg: CriticRecipeConfig, first_seed: int, episodes: int, critic_path: str | None) -> Any:
    """Collect ``episodes`` episodes from reset seed ``first_seed`` (runs in a worker process)."""
    import torch

    from maskctrl.data.collect import collect_episodes
    from maskctrl.envs import rewards
    from maskctrl.envs.registry import get_spec
    from maskctrl.planner.critic import FallPenalty, load_critic
    from maskctrl.planner.mpc import MPCController
    from maskctrl.planner.oracle import OracleDynamics
    from maskctrl.planner.presets import CRITICS, preset_config

    torch.set_num_threads(1)
    spec = get_spec(ENV)
    config = preset_config(ENV, "icem", seed=cfg.seed, samples=cfg.samples, iterations=cfg.iterations)
    reward = rewards.make_hopper_critic_planning_reward(cfg.speed_cap, posture=cfg.posture)
    value = None
    if critic_path is not None:
        preset = CRITICS[ENV]
        critic, _ = load_critic(critic_path, obs_dim=spec.obs_dim)
        value = FallPenalty(critic, penalty=preset.penalty, kappa=cfg.kappa)

    def build(envs: Any) -> MPCController:
        dynamics = OracleDynamics(list(envs), spec, nthread=1)
        return MPCController(
            dynamics, spec, envs[0].action_space, config, terminal_value=value, planning_reward_fn=reward
        )

    return collect_episodes(
        ENV,
        build,
        n_episodes=episodes,
        seed=first_seed,
        max_steps=cfg.max_steps,
        progress=False,
        policy_name=f"oracle icem N={cfg.samples} it={cfg.iterations} cap={cfg.speed_cap} critic={critic_path}",
    )


def collect_round(cfg: CriticRecipeConfig, rnd: Round, critic_path: Path | None) -> Any:
    """All episodes of one round, in seed order, collected by ``cfg.workers`` processes."""
    from maskctrl.data.episodes import EpisodeData

    starts = list(range(rnd.seed, rnd.seed + rnd.episodes, cfg.chunk))
    sizes = [min(cfg.chunk, rnd.seed + rnd.episodes - s) for s in starts]
    path = None if critic_path is None else str(critic_path)
    results: dict[int, Any] = {}
    with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(collect_chunk, cfg, s, n, path): s for s, n in zip(starts, sizes, strict=True)}
        with tqdm(
            total=rnd.episodes, desc=f"collect seeds {rnd.seed}+", unit="ep", disable=not cfg.progress
        ) as bar:
            for future in as_completed(futures):
                data = future.result()
                results[futures[future]] = data
                bar.update(data.n_episodes)
    chunks = [results[s] for s in starts]
    episodes = [c.episode(i) for c in chunks for i in range(c.n_episodes)]
    metadata = dict(chunks[0].metadata, seed=rnd.seed, reset_seeds="seed + episode index")
    return EpisodeData.from_episodes(episodes, metadata)


def build(cfg: CriticRecipeConfig) -> Path:
    """Run every round, fit the final critic and write it to ``cfg.out``; returns its path."""
    from maskctrl.data.collect import package_versions
    from maskctrl.data.episodes import load_episodes, save_episodes
    from maskctrl.planner.critic import fit_safety_critic, save_critic
    from maskctrl.recipes import _git_commit

    if not cfg.rounds or cfg.rounds[0].guided:
        raise ValueError("the first round cannot be guided: no critic has been fitted yet")
    start = time.perf_counter()
    work = cfg.work_dir / ENV
    data, log = [], []
    critic_path: Path | None = None
    for k, rnd in enumerate(cfg.rounds):
        guide = critic_path if rnd.guided else None
        tag = "guided" if rnd.guided else "plain"
        key = (
            f"round{k}-{tag}-{rnd.episodes}x{cfg.max_steps}-seed{rnd.seed}-N{cfg.samples}it{cfg.iterations}"
            f"cap{cfg.speed_cap}posture{cfg.posture}" + (f"kappa{cfg.kappa}" if rnd.guided else "")
        )
        directory = work / key
        t0 = time.perf_counter()
        if (directory / "metadata.json").exists():
            episodes, cached = load_episodes(directory), True
        else:
            episodes, cached = collect_round(cfg, rnd, guide), False
            save_episodes(episodes, directory, overwrite=True)
        data.append(episodes)
        summary = episodes.summary()
        falls = int(episodes.terminated.sum())
        print(
            f"round {k} ({tag}): {episodes.n_episodes} episodes, {falls} fell, mean length "
            f"{float(episodes.lengths.mean()):.0f}",
            file=sys.stderr,
        )
        log.append(
            {
                **dataclasses.asdict(rnd),
                "directory": key,
                "falls": falls,
                "mean_length": float(episodes.lengths.mean()),
                "return_mean": summary.get("return_mean"),
                "cached": cached,
                "seconds": time.perf_counter() - t0,
            }
        )
        if k + 1 < len(cfg.rounds) and cfg.rounds[k + 1].guided:
            critic, _ = fit_safety_critic(data, cfg.critic, seed=cfg.seed, progress=cfg.progress)
            critic_path = save_critic(work / f"critic-after-round{k}", critic, metadata={"rounds": log})
    t0 = time.perf_counter()
    critic, fit = fit_safety_critic(data, cfg.critic, seed=cfg.seed, progress=cfg.progress)
    metadata = {
        "env": ENV,
        "recipe": "maskctrl.critic_recipe",
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()},
        "rounds": log,
        "fit": {**fit, "seconds": time.perf_counter() - t0},
        "total_seconds": time.perf_counter() - start,
        "git_commit": _git_commit(),
        "versions": package_versions(),
    }
    out = save_critic(cfg.out, critic, metadata=metadata)
    print(f"wrote {out}: {fit}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: ``python -m maskctrl.critic_recipe [--workers 2] [--out DIR]``."""
    cfg = tyro.cli(CriticRecipeConfig, args=argv)
    build(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
