"""``maskctrl collect``: record episodes of a policy into a dataset directory.

Example::

    maskctrl collect --env HalfCheetah --policy oracle-mpc --episodes 20 --n-envs 4 --noise 0.1 --out data/hc-expert

writes ``episodes.npz`` and ``metadata.json`` into ``--out`` (see :mod:`maskctrl.data.episodes`) and
prints the episode count, step count and return mean ± std.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tyro

DESCRIPTION = (
    "Record episodes of a random policy or the oracle MPC expert into a dataset directory "
    "(episodes.npz + metadata.json) and print a summary."
)


@dataclass(frozen=True, kw_only=True)
class CollectConfig:
    """Options of ``maskctrl collect``."""

    env: str = "pointmass"
    """Registered env name (pointmass, InvertedPendulum, Reacher, HalfCheetah, Hopper) or a gymnasium id."""
    policy: Literal["random", "oracle-mpc"] = "random"
    """Who acts: uniform random actions, or MPC planning in the true simulator (the expert)."""
    episodes: int = 10
    """Episodes to record (episode j is reset with seed + j)."""
    n_envs: int = 1
    """Sub-envs stepped together."""
    seed: int = 0
    """Base seed of resets, action noise, the random policy and the planner."""
    noise: float = 0.0
    """Gaussian action noise, as a fraction of half the action range (clipped to the bounds)."""
    max_steps: int | None = None
    """Cap on an episode's length (None: the env's own limit)."""
    out: Path
    """Dataset directory to write; must be empty or absent unless --overwrite."""
    overwrite: bool = False
    """Replace an existing dataset in --out."""
    optimizer: Literal["cem", "icem", "mppi"] = "icem"
    """oracle-mpc: trajectory optimizer."""
    horizon: int | None = None
    """oracle-mpc: planning horizon H (None: the env's tuned preset, see maskctrl.planner.presets)."""
    samples: int | None = None
    """oracle-mpc: candidates N per optimizer iteration (None: the env's preset)."""
    iterations: int | None = None
    """oracle-mpc: optimizer iterations per control step (None: the env's preset)."""
    return_mode: Literal["best", "mean"] | None = None
    """oracle-mpc: the action the expert emits: the best candidate's ("best") or the optimizer's final
    mean ("mean": less sampling noise in the actions); None: the optimizer's default (best for cem/icem,
    mean for mppi)."""
    nthread: int = 2
    """oracle-mpc: threads of the oracle's mujoco.rollout pool."""
    progress: bool = True
    """Show a progress bar over episodes."""


def oracle_mpc_factory(cfg: CollectConfig) -> Any:
    """A policy factory building ``MPCController(OracleDynamics(sub_envs))`` for ``cfg.env``."""
    try:
        from maskctrl.planner.mpc import MPCController
        from maskctrl.planner.oracle import OracleDynamics
    except ImportError as exc:
        raise RuntimeError(
            f"--policy oracle-mpc needs maskctrl.planner (mpc, oracle), which failed to import: {exc}"
        ) from exc
    from maskctrl.envs.registry import get_spec

    spec = get_spec(cfg.env)
    config = expert_config(cfg)

    def build(envs: Sequence[Any]) -> Any:
        dynamics = OracleDynamics(list(envs), spec, nthread=cfg.nthread)
        return MPCController(dynamics, spec, envs[0].action_space, config)

    return build


def expert_config(cfg: CollectConfig) -> Any:
    """The oracle expert's :class:`~maskctrl.planner.mpc.MPCConfig`: the env's preset, flags on top."""
    from maskctrl.planner.presets import preset_config

    given: dict[str, Any] = {"horizon": cfg.horizon, "samples": cfg.samples, "iterations": cfg.iterations}
    changes = {key: value for key, value in given.items() if value is not None}
    if cfg.return_mode is not None:
        changes["optimizer_overrides"] = {"return_mode": cfg.return_mode}
    return preset_config(cfg.env, cfg.optimizer, seed=cfg.seed, **changes)


def run(cfg: CollectConfig) -> dict[str, Any]:
    """Collect and save the dataset ``cfg`` describes, print its summary, and return the summary."""
    from maskctrl.data.collect import collect_episodes
    from maskctrl.data.episodes import save_episodes

    if cfg.policy == "oracle-mpc":
        policy: Any = oracle_mpc_factory(cfg)
        mpc = expert_config(cfg)
        mode = mpc.optimizer_overrides.get("return_mode")
        name = (
            f"oracle-mpc ({mpc.optimizer}, N={mpc.samples}, H={mpc.horizon}, iterations={mpc.iterations}"
            + ("" if mode is None else f", return_mode={mode}")
            + ")"
        )
    else:
        policy, name = "random", "random"
    _check_out(cfg.out, cfg.overwrite)  # fail before collecting, not after
    data = collect_episodes(
        cfg.env,
        policy,
        n_episodes=cfg.episodes,
        n_envs=cfg.n_envs,
        seed=cfg.seed,
        action_noise=cfg.noise,
        max_steps=cfg.max_steps,
        progress=cfg.progress,
        policy_name=name,
    )
    save_episodes(data, cfg.out, overwrite=cfg.overwrite)
    summary = data.summary()
    print(format_summary(cfg.out, data.metadata, summary))
    return summary


def format_summary(out: Path, metadata: dict[str, Any], summary: dict[str, Any]) -> str:
    """A plain-text table: where, which env and policy, episodes, steps, return mean ± std."""
    rows = [
        ("dataset", str(out)),
        ("env", f"{metadata['env_name']} ({metadata['gym_id']})"),
        ("policy", f"{metadata['policy']}, noise {metadata.get('action_noise', 0.0)}"),
        (
            "episodes",
            f"{summary['n_episodes']} ({summary['n_terminated']} terminated, {summary['n_truncated']} truncated)",
        ),
        ("steps", str(summary["n_steps"])),
        ("return", f"{summary['return_mean']:.2f} ± {summary['return_std']:.2f}"),
        ("min / max", f"{summary['return_min']:.2f} / {summary['return_max']:.2f}"),
    ]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in rows)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out} is not empty; pass --overwrite to replace the dataset in it")


def main(argv: list[str]) -> int:
    """Entry point of ``maskctrl collect``; returns the process exit code."""
    cfg = tyro.cli(CollectConfig, args=argv, prog="maskctrl collect", description=DESCRIPTION)
    from maskctrl.envs.registry import UnknownEnvError  # here: --help does not pay for gymnasium

    if cfg.episodes < 1 or cfg.n_envs < 1:
        print(
            f"maskctrl collect: --episodes and --n-envs must be >= 1, got {cfg.episodes}, {cfg.n_envs}",
            file=sys.stderr,
        )
        return 2
    try:
        run(cfg)
    except UnknownEnvError as err:  # the registry's message lists the known ones
        print(f"maskctrl collect: {err.args[0]}", file=sys.stderr)
        return 2
    except (FileExistsError, ValueError, RuntimeError) as err:
        print(f"maskctrl collect: {err}", file=sys.stderr)
        return 2
    return 0
