"""Oracle MPC vs a random policy on the MuJoCo envs: env return, episode length and control steps/s.

The oracle (:class:`maskctrl.planner.oracle.OracleDynamics`) plans in the true simulator, so these numbers
are the upper bound a learned dynamics model can approach at the same planning budget. All optimizers
of an env share one budget (N candidates, horizon H, iterations), chosen so that a 2-core CPU plans at
>= 5 control steps/s; torch runs single-threaded and the mujoco.rollout pool on ``--nthread`` threads.

Run ``python benchmarks/mpc_oracle.py`` (all envs and methods, ``EPISODES`` episodes each: ~50 minutes on
2 cores), or select, e.g. ``--envs Reacher Hopper --methods random icem --episodes 3 --max-steps 200``.
Writes ``benchmarks/results/mpc_oracle.{json,md,png}``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import tyro
from common import fmt_mean_std, machine_info, markdown_table, mean_std, write_results
from tqdm import tqdm

import maskctrl.envs  # noqa: F401  (registers the built-in envs)
from maskctrl.commands.mpc import EpisodeResult, run_episodes
from maskctrl.data.collect import RandomPolicy
from maskctrl.envs.registry import get_spec
from maskctrl.planner.mpc import MPCController
from maskctrl.planner.oracle import OracleDynamics
from maskctrl.planner.presets import (
    BUDGETS,
    OPTIMIZER_OVERRIDES,
    critic_by_default,
    preset_config,
    preset_objective,
)

Method = Literal["random", "cem", "icem", "mppi"]
ENVS = ("InvertedPendulum", "Reacher", "HalfCheetah", "Hopper")

TARGETS = {"InvertedPendulum": 1000.0, "Reacher": -5.0, "HalfCheetah": 6000.0, "Hopper": 1500.0}
"""Return each oracle planner should reach (random: InvertedPendulum ~6, Reacher ~-43, HalfCheetah
~-300, Hopper ~25)."""
MIN_STEPS_PER_SECOND = 5.0
"""Planning speed each budget is meant to reach on 2 free CPU cores."""


EPISODES = {"InvertedPendulum": 2, "Reacher": 5, "HalfCheetah": 3, "Hopper": 3}
"""Default episodes per (env, method): many of the short ones, at least 3 of the 1000-step ones (one
HalfCheetah episode hid that the env reward flipped the cheetah onto its back on some reset seeds)."""


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """Options of the oracle MPC benchmark."""

    envs: tuple[str, ...] = ENVS
    """Envs to run."""
    methods: tuple[Method, ...] = ("random", "cem", "icem", "mppi")
    """Policies to compare: a uniform random policy and oracle MPC with each optimizer."""
    episodes: int | None = None
    """Episodes per (env, method), episode i reset with seed + i (None: the per-env ``EPISODES``)."""
    max_steps: int | None = None
    """Cap on episode length for quick runs (None: the full episode, 1000 steps for most envs)."""
    seed: int = 0
    """Seed of resets, planners and the random policy."""
    nthread: int = 2
    """Threads of the mujoco.rollout pool."""
    critic: bool = True
    """Plan with the env's shipped safety critic and its objective where it has one and the method is
    one it was tuned with (Hopper with icem and mppi; see maskctrl.planner.presets.CRITICS);
    --no-critic: the spec's planning objective only."""
    exact_observations: bool = False
    """Reacher: replay each imagined step's last substep for bit-exact observations (about half the
    speed; the planned returns matched the cheaper forward kinematics of the final state on every seed
    tried). Other envs are exact either way."""
    out_dir: Path = Path("benchmarks/results")
    """Where the JSON, markdown and plot go."""
    name: str = "mpc_oracle"
    """Stem of the output files."""
    update: bool = True
    """Keep the rows of (env, method) pairs not run now from the existing JSON (each row has its date);
    --no-update writes only this run's rows."""


def plans_with_critic(env_name: str, method: Method, cfg: BenchConfig) -> bool:
    """Whether ``method`` plans with the env's shipped safety critic in this run (never ``random``)."""
    return cfg.critic and critic_by_default(env_name, method)


def run_one(env_name: str, method: Method, cfg: BenchConfig) -> list[EpisodeResult]:
    """Run ``cfg.episodes`` episodes of ``method`` in ``env_name``."""
    spec = get_spec(env_name)
    max_steps = spec.episode_limit(cfg.max_steps)
    episodes = cfg.episodes if cfg.episodes is not None else EPISODES[env_name]
    env = spec.make(max_episode_steps=max_steps)
    policy: Any
    if method == "random":
        policy = RandomPolicy(env.action_space, cfg.seed)
    else:
        mpc = preset_config(env_name, method, seed=cfg.seed)
        policy = MPCController(
            OracleDynamics([env], spec, nthread=cfg.nthread, exact_observations=cfg.exact_observations),
            spec,
            env.action_space,
            mpc,
            **preset_objective(env_name, critic=plans_with_critic(env_name, method, cfg)),
        )
    with tqdm(total=episodes * max_steps, desc=f"{env_name} {method}", unit="step", leave=False) as bar:
        results = run_episodes(policy, env, episodes=episodes, seed=cfg.seed, on_step=bar.update)
    env.close()
    return results


def plot(path: Path, rows: list[dict[str, Any]], envs: tuple[str, ...]) -> None:
    """One panel per env: mean return per method (error bar: std over episodes), target dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(envs), figsize=(3.2 * len(envs), 3.2), squeeze=False)
    for ax, env_name in zip(axes[0], envs, strict=True):
        mine = [r for r in rows if r["env"] == env_name]
        colors = ["tab:gray" if r["method"] == "random" else "tab:blue" for r in mine]
        ax.bar(
            [r["method"] for r in mine],
            [r["return_mean"] for r in mine],
            yerr=[r["return_std"] for r in mine],
            color=colors,
        )
        ax.axhline(TARGETS[env_name], color="tab:red", linestyle="--", linewidth=1, label="target")
        ax.set_title(env_name)
        ax.tick_params(axis="x", labelrotation=30)
    axes[0][0].set_ylabel("episode return")
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def measure(env_name: str, method: Method, cfg: BenchConfig) -> dict[str, Any]:
    """Run one (env, method) pair and summarize it as a result row."""
    results = run_one(env_name, method, cfg)
    returns = [r.episode_return for r in results]
    speed = [r.steps_per_second for r in results]
    budget = BUDGETS[env_name]
    planned = method != "random"
    critic = plans_with_critic(env_name, method, cfg)
    ret_mean, ret_std = mean_std(returns)
    met = bool(ret_mean >= TARGETS[env_name] and min(speed) >= MIN_STEPS_PER_SECOND) if planned else None
    print(
        f"{env_name:>16} {method:>6}: return {fmt_mean_std(returns)}, {np.mean(speed):.1f} steps/s",
        file=sys.stderr,
    )
    return {
        "env": env_name,
        "method": method,
        "samples": budget.samples if planned else None,
        "horizon": budget.horizon if planned else None,
        "iterations": budget.iterations if planned else None,
        "action_repeat": budget.action_repeat if planned else None,
        "overrides": OPTIMIZER_OVERRIDES.get(env_name, {}).get(method, {}) if planned else {},
        "safety_critic": critic,
        "return_mean": ret_mean,
        "return_std": ret_std,
        "returns": returns,
        "seeds": [r.seed for r in results],
        "lengths": [r.length for r in results],
        "steps_per_second": speed,
        "target": TARGETS[env_name],
        "target_met": met,
        "date": machine_info()["date"],
    }


def render(rows: list[dict[str, Any]], cfg: BenchConfig, info: dict[str, Any]) -> str:
    """The markdown report: how it was measured, then one table row per (env, method)."""
    headers = [
        "env",
        "method",
        "N",
        "H",
        "iters",
        "repeat",
        "critic",
        "return",
        "length",
        "steps/s",
        "target",
        "met",
    ]
    cells = [
        [
            r["env"],
            r["method"],
            r["samples"] or "-",
            r["horizon"] or "-",
            r["iterations"] or "-",
            r.get("action_repeat") or "-",
            "yes" if r.get("safety_critic") else "-",
            fmt_mean_std(r["returns"]),
            fmt_mean_std(r["lengths"], digits=0),
            fmt_mean_std(r["steps_per_second"]),
            f"{r['target']:g}",
            "-" if r["target_met"] is None else ("yes" if r["target_met"] else "no"),
        ]
        for r in rows
    ]
    dates = sorted({r["date"][:16] for r in rows})
    steps = "full episodes" if cfg.max_steps is None else f"episodes capped at {cfg.max_steps} steps"
    return (
        f"# Oracle MPC vs random policy\n\nEach row: the episodes listed in the JSON (seeds {cfg.seed}, "
        f"{cfg.seed + 1}, ...), {steps}; mujoco.rollout on {cfg.nthread} threads, torch on 1, "
        f"exact_observations={cfg.exact_observations}. Measured {', '.join(dates)} on {info['processor']} "
        f"x{info['cpu_count']}, a CPU shared with other jobs: speeds are lower bounds.\n"
        f"'met': return >= target and every episode >= {MIN_STEPS_PER_SECOND:g} control steps/s. "
        "'critic': planned with the env's shipped safety critic (maskctrl/critics/<Env>) and its objective.\n\n"
        f"{markdown_table(headers, cells)}\n"
    )


def main(cfg: BenchConfig) -> list[dict[str, Any]]:
    """Run every (env, method) pair, print the markdown table and write JSON, markdown and plot."""
    torch.set_num_threads(1)
    rows = [measure(env_name, method, cfg) for env_name in cfg.envs for method in cfg.methods]
    json_path = cfg.out_dir / f"{cfg.name}.json"
    if cfg.update and json_path.exists():
        ran = {(r["env"], r["method"]) for r in rows}
        kept = [r for r in json.loads(json_path.read_text())["rows"] if (r["env"], r["method"]) not in ran]
        order = {name: i for i, name in enumerate(ENVS)}
        methods = ["random", "cem", "icem", "mppi"]
        rows = sorted(
            kept + rows, key=lambda r: (order.get(r["env"], len(order)), methods.index(r["method"]))
        )
    info = machine_info()
    markdown = render(rows, cfg, info)
    print(markdown)
    record = {"config": {**cfg.__dict__, "out_dir": str(cfg.out_dir)}, "machine": info, "rows": rows}
    json_path, md_path = write_results(cfg.out_dir, cfg.name, record, markdown)
    png_path = cfg.out_dir / f"{cfg.name}.png"
    plot(png_path, rows, tuple(dict.fromkeys(r["env"] for r in rows)))
    print(f"wrote {json_path}, {md_path}, {png_path}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
