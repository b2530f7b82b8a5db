"""``maskctrl mpc``: run model predictive control in an environment and report its returns.

Example::

    maskctrl mpc --env Reacher --dynamics oracle --optimizer icem --episodes 3 --out-dir runs/mpc

prints one row per episode (return, length, control steps/s) and the mean ± std, and writes a JSON of
the results and a plot of the per-episode returns into ``--out-dir``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import tyro
from tqdm import tqdm

DESCRIPTION = (
    "Run model predictive control in an environment: prints per-episode returns, lengths and control "
    "steps/s with their mean ± std, and writes a JSON and a plot of the returns into --out-dir."
)
LATER_DYNAMICS = {
    "transformer": "the learned masked-transformer dynamics (TransformerDynamics)",
    "mlp": "the PETS-style ensemble MLP baseline (EnsembleMLPDynamics)",
}


@dataclass(frozen=True, kw_only=True)
class MPCCommandConfig:
    """Options of ``maskctrl mpc``."""

    env: str = "Reacher"
    """Registered env name (pointmass, InvertedPendulum, Reacher, HalfCheetah, Hopper, ...)."""
    dynamics: Literal["oracle", "transformer", "mlp"] = "oracle"
    """Dynamics model: "oracle" (the true simulator); "transformer" and "mlp" are not available yet."""
    optimizer: Literal["cem", "icem", "mppi"] = "icem"
    """Trajectory optimizer."""
    episodes: int = 3
    """Episodes to run (episode i is reset with seed + i)."""
    max_steps: int | None = None
    """Cap on an episode's length (None: the spec's max_episode_steps)."""
    horizon: int = 15
    """Planning horizon H."""
    samples: int = 128
    """Candidates N per optimizer iteration."""
    iterations: int = 3
    """Optimizer iterations per control step."""
    elites: int | None = None
    """Elites for CEM / iCEM (None: the optimizer's default, capped at samples // 2)."""
    discount: float = 1.0
    """Per-step discount of the planning return."""
    seed: int = 0
    """Seed of the env resets and the planner."""
    device: str = "cpu"
    """Device the planner samples and scores on."""
    nthread: int = 2
    """Threads of the oracle's mujoco.rollout pool."""
    out_dir: Path = Path("runs/mpc")
    """Where the JSON and the plot go."""
    progress: bool = True
    """Show a progress bar over control steps."""


@dataclass(frozen=True, kw_only=True)
class EpisodeResult:
    """One episode's outcome."""

    episode: int
    """Index of the episode in the run."""
    seed: int
    """Seed the env was reset with."""
    episode_return: float
    """Sum of the env's rewards."""
    length: int
    """Control steps taken."""
    seconds: float
    """Wall-clock time of the episode (planning and env steps)."""

    @property
    def steps_per_second(self) -> float:
        """Control steps per second."""
        return self.length / max(self.seconds, 1e-9)


class Policy(Protocol):
    """SB3's ``predict`` contract, as :class:`~maskctrl.planner.mpc.MPCController` implements it."""

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Actions for ``observation``."""
        ...


def run_episodes(
    policy: Policy,
    env: Any,
    *,
    episodes: int,
    seed: int,
    on_step: Callable[[], object] | None = None,
) -> list[EpisodeResult]:
    """Run ``episodes`` episodes of ``policy`` in the single gymnasium ``env``.

    :param on_step: called after every control step (e.g. a progress bar's ``update``).
    """
    results = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        start, total, length, done = time.perf_counter(), 0.0, 0, False
        episode_start = np.array([True])
        while not done:
            action, _ = policy.predict(obs, episode_start=episode_start)
            episode_start = np.array([False])
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            length += 1
            done = terminated or truncated
            if on_step is not None:
                on_step()
        seconds = time.perf_counter() - start
        results.append(
            EpisodeResult(
                episode=episode, seed=seed + episode, episode_return=total, length=length, seconds=seconds
            )
        )
    return results


def summarize(results: list[EpisodeResult]) -> dict[str, float]:
    """Mean and (population) std of returns, lengths and control steps/s over episodes."""
    returns = np.array([r.episode_return for r in results])
    lengths = np.array([r.length for r in results])
    speed = np.array([r.steps_per_second for r in results])
    return {
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "length_mean": float(lengths.mean()),
        "steps_per_second_mean": float(speed.mean()),
    }


def format_table(results: list[EpisodeResult]) -> str:
    """A plain-text table of the episodes with a mean ± std row."""
    lines = [f"{'episode':>7}  {'return':>12}  {'length':>6}  {'steps/s':>8}"]
    for r in results:
        lines.append(f"{r.episode:>7}  {r.episode_return:>12.2f}  {r.length:>6}  {r.steps_per_second:>8.2f}")
    s = summarize(results)
    returns = f"{s['return_mean']:.2f} ± {s['return_std']:.2f}"
    lines.append(f"{'mean':>7}  {returns:>12}  {s['length_mean']:>6.1f}  {s['steps_per_second_mean']:>8.2f}")
    return "\n".join(lines)


def plot_returns(path: Path, results: list[EpisodeResult], title: str) -> None:
    """Save a bar plot of per-episode returns with their mean to ``path`` (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([r.episode for r in results], [r.episode_return for r in results], color="tab:blue")
    ax.axhline(summarize(results)["return_mean"], color="tab:red", linestyle="--", label="mean")
    ax.set_xlabel("episode")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _build_controller(cfg: MPCCommandConfig, spec: Any, env: Any) -> Any:
    from maskctrl.planner.mpc import MPCConfig, MPCController
    from maskctrl.planner.oracle import OracleDynamics

    mpc = MPCConfig(
        optimizer=cfg.optimizer,
        horizon=cfg.horizon,
        samples=cfg.samples,
        iterations=cfg.iterations,
        elites=cfg.elites,
        discount=cfg.discount,
        device=cfg.device,
        seed=cfg.seed,
    )
    return MPCController(OracleDynamics([env], spec, nthread=cfg.nthread), spec, env.action_space, mpc)


def run(cfg: MPCCommandConfig) -> dict[str, Any]:
    """Run the episodes ``cfg`` describes, print the table, save JSON and plot; return the JSON dict."""
    import maskctrl.envs  # noqa: F401  (registers the built-in envs)
    from maskctrl.envs.registry import get_spec

    spec = get_spec(cfg.env)
    max_steps = cfg.max_steps if cfg.max_steps is not None else spec.max_episode_steps
    env = spec.make(max_episode_steps=max_steps)
    controller = _build_controller(cfg, spec, env)
    with tqdm(
        total=cfg.episodes * max_steps, desc=f"mpc {cfg.env}", unit="step", disable=not cfg.progress
    ) as bar:
        results = run_episodes(controller, env, episodes=cfg.episodes, seed=cfg.seed, on_step=bar.update)
    env.close()
    print(
        f"{cfg.env}: {cfg.dynamics} dynamics, {cfg.optimizer} "
        f"(N={cfg.samples}, H={cfg.horizon}, iterations={cfg.iterations})"
    )
    print(format_table(results))
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{cfg.env}_{cfg.dynamics}_{cfg.optimizer}_seed{cfg.seed}"
    record = {
        "config": {**asdict(cfg), "out_dir": str(cfg.out_dir)},
        "episodes": [{**asdict(r), "steps_per_second": r.steps_per_second} for r in results],
        "summary": summarize(results),
    }
    json_path, png_path = cfg.out_dir / f"{stem}.json", cfg.out_dir / f"{stem}.png"
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    plot_returns(png_path, results, f"{cfg.env} · {cfg.dynamics} · {cfg.optimizer}")
    print(f"wrote {json_path} and {png_path}")
    return record


def main(argv: list[str]) -> int:
    """Entry point of ``maskctrl mpc``; returns the process exit code."""
    cfg = tyro.cli(MPCCommandConfig, args=argv, prog="maskctrl mpc", description=DESCRIPTION)
    if cfg.dynamics in LATER_DYNAMICS:
        print(
            f"maskctrl mpc: --dynamics {cfg.dynamics} ({LATER_DYNAMICS[cfg.dynamics]}) is not available yet; "
            "it comes with a later release. Use --dynamics oracle.",
            file=sys.stderr,
        )
        return 2
    if cfg.episodes < 1:
        print(f"maskctrl mpc: --episodes must be >= 1, got {cfg.episodes}", file=sys.stderr)
        return 2
    try:
        run(cfg)
    except KeyError as err:  # unknown env name: the registry's message lists the known ones
        print(f"maskctrl mpc: {err.args[0]}", file=sys.stderr)
        return 2
    return 0
