"""``maskctrl demo``: MPC with the shipped pretrained backbone, next to oracle MPC and a random policy.

The built-in default of ``make demo``; it needs no data and no download. In ``--env`` (Reacher by default)
it runs, on the same reset seeds and with the same planning budget (the env's preset,
:mod:`maskctrl.planner.presets`):

- a uniform random policy,
- MPC whose world model is the pretrained masked control transformer shipped under
  ``maskctrl/checkpoints/<Env>/`` (or ``--checkpoint``),
- MPC in the true simulator (the oracle, the best this planner can do at this budget),

then prints a table of returns, and writes into ``--out-dir`` a JSON of the results, a bar plot of the
returns, a plot of the model's imagined trajectory against the real one for one control step, and, where
MuJoCo can render offscreen (EGL or OSMesa), a GIF of one learned-model MPC episode.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import tyro
from tqdm.auto import tqdm

Method = Literal["random", "transformer", "oracle"]
DESCRIPTION = (
    "MPC with the shipped pretrained transformer as its world model vs oracle MPC vs a random policy: "
    "a table of returns, plots and (where MuJoCo renders offscreen) a video."
)


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Options of ``maskctrl demo``."""

    env: str = "Reacher"
    """Env with a shipped backbone (or pass --checkpoint)."""
    checkpoint: Path | None = None
    """Pretrained backbone directory (None: the one shipped for --env)."""
    methods: tuple[Method, ...] = ("random", "transformer", "oracle")
    """Policies to compare, in table order."""
    episodes: int = 3
    """Episodes per method (episode i is reset with seed + i)."""
    max_steps: int | None = None
    """Cap on an episode's length (None: the env's own limit)."""
    seed: int = 0
    """Seed of the resets, the planners and the random policy."""
    video: bool = True
    """Render one learned-model MPC episode to a GIF (skipped, with a note, where rendering fails)."""
    out_dir: Path = Path("runs/demo")
    """Where the JSON, the plots and the video go."""
    threads: int = 1
    """Torch intra-op threads (extra threads only contend on a shared machine)."""
    progress: bool = True
    """Show progress bars."""


def _mpc_command(cfg: DemoConfig, dynamics: Literal["transformer", "oracle"], checkpoint: Path | None) -> Any:
    from maskctrl.commands.mpc import MPCCommandConfig

    return MPCCommandConfig(
        env=cfg.env,
        dynamics=dynamics,
        checkpoint=checkpoint,
        episodes=cfg.episodes,
        max_steps=cfg.max_steps,
        seed=cfg.seed,
        out_dir=cfg.out_dir,
        progress=False,
    )


def _policy(cfg: DemoConfig, method: Method, spec: Any, env: Any, checkpoint: Path) -> Any:
    from maskctrl.commands.mpc import build_controller
    from maskctrl.data.collect import RandomPolicy

    if method == "random":
        return RandomPolicy(env.action_space, cfg.seed)
    return build_controller(
        _mpc_command(cfg, method, checkpoint if method == "transformer" else None), spec, env
    )


def headless_gl_default(environ: MutableMapping[str, str], platform: str = sys.platform) -> str | None:
    """Choose MuJoCo's EGL backend on a Linux machine without a display, unless ``MUJOCO_GL`` is set.

    With ``MUJOCO_GL`` unset, gymnasium's renderer tries GLFW first, and GLFW without a display can
    abort the whole process in C, where no ``except`` catches it (seen in a headless test process).
    EGL renders offscreen without a display. Returns the backend ``environ`` names.
    """
    if platform.startswith("linux") and not environ.get("DISPLAY") and not environ.get("WAYLAND_DISPLAY"):
        environ.setdefault("MUJOCO_GL", "egl")
    return environ.get("MUJOCO_GL")


def _record_video(cfg: DemoConfig, spec: Any, checkpoint: Path, max_steps: int) -> tuple[Path | None, str]:
    """One learned-model MPC episode rendered offscreen to ``demo.gif``; (path or None, what happened)."""
    from maskctrl.commands.mpc import build_controller

    headless_gl_default(os.environ)
    try:
        env = spec.make(max_episode_steps=max_steps, render_mode="rgb_array", width=240, height=240)
        obs, _ = env.reset(seed=cfg.seed)
        frames = [env.render()]
    except Exception as err:  # no EGL/OSMesa, no display: rendering is optional
        return None, f"MuJoCo cannot render offscreen here ({type(err).__name__}: {err}); no video"
    from PIL import Image

    controller = build_controller(_mpc_command(cfg, "transformer", checkpoint), spec, env)
    done, start = False, True
    while not done:
        action, _ = controller.predict(obs, episode_start=np.array([start]))
        obs, _, terminated, truncated, _ = env.step(action)
        frames.append(env.render())
        done, start = terminated or truncated, False
    env.close()
    path = cfg.out_dir / "demo.gif"
    images = [Image.fromarray(np.asarray(frame)) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=40, loop=0)
    return path, f"video of one learned-model MPC episode ({len(frames)} frames)"


def _plot_returns(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"random": "tab:gray", "transformer": "tab:blue", "oracle": "tab:green"}
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(
        [r["label"] for r in rows],
        [r["return_mean"] for r in rows],
        yerr=[r["return_std"] for r in rows],
        color=[colors[r["method"]] for r in rows],
    )
    ax.set_ylabel("episode return")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


LABELS = {
    "random": "random policy",
    "transformer": "MPC, pretrained transformer",
    "oracle": "MPC, true simulator",
}


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A markdown table: method, return mean ± std, per-episode returns, control steps/s, score."""
    lines = [
        "| method | return | episodes | steps/s | score |",
        "|---|---:|---|---:|---:|",
    ]
    for r in rows:
        score = "-" if r["score"] is None else f"{r['score']:.2f}"
        episodes = ", ".join(f"{x:.1f}" for x in r["returns"])
        lines.append(
            f"| {r['label']} | {r['return_mean']:.1f} ± {r['return_std']:.1f} | {episodes} | "
            f"{r['steps_per_second']:.1f} | {score} |"
        )
    return "\n".join(lines)


def run(cfg: DemoConfig) -> dict[str, Any]:
    """Run every method, print the table, write JSON, plots and video; return the JSON record."""
    import maskctrl.envs  # noqa: F401  (registers the built-in envs)
    from maskctrl.commands.mpc import imagined_vs_real, plot_imagined, run_episodes
    from maskctrl.envs.registry import get_spec
    from maskctrl.planner.presets import preset_config
    from maskctrl.recipes import default_checkpoint

    if cfg.episodes < 1 or cfg.threads < 1:
        raise ValueError(f"need --episodes >= 1 and --threads >= 1, got {cfg.episodes}, {cfg.threads}")
    torch.set_num_threads(cfg.threads)
    spec = get_spec(cfg.env)
    checkpoint = cfg.checkpoint if cfg.checkpoint is not None else default_checkpoint(cfg.env)
    max_steps = spec.episode_limit(cfg.max_steps)
    if cfg.out_dir.exists() and not cfg.out_dir.is_dir():
        raise FileExistsError(f"--out-dir {cfg.out_dir} exists and is not a directory")
    budget = preset_config(cfg.env)
    print(
        f"maskctrl demo: {cfg.env}, {cfg.episodes} episodes per method, planner {budget.optimizer} "
        f"(N={budget.samples}, H={budget.horizon}, {budget.iterations} iterations), backbone {checkpoint}\n"
    )
    envs = {method: spec.make(max_episode_steps=max_steps) for method in cfg.methods}
    # Every policy is built (and the checkpoint checked against the env) before any episode runs.
    policies = {method: _policy(cfg, method, spec, envs[method], checkpoint) for method in cfg.methods}
    rows: list[dict[str, Any]] = []
    for method in cfg.methods:
        env, policy = envs[method], policies[method]
        with tqdm(
            total=cfg.episodes * max_steps, desc=LABELS[method], unit="step", disable=not cfg.progress
        ) as bar:
            results = run_episodes(policy, env, episodes=cfg.episodes, seed=cfg.seed, on_step=bar.update)
        env.close()
        returns = [r.episode_return for r in results]
        steps = sum(r.length for r in results)
        rows.append(
            {
                "method": method,
                "label": LABELS[method],
                "returns": returns,
                "return_mean": float(np.mean(returns)),
                "return_std": float(np.std(returns)),
                "steps_per_second": steps / sum(r.seconds for r in results),
                # The share of the candidates the backbone's policy head proposed (``planner`` is the
                # budget all MPC rows share; None: not a planner).
                "policy_prior": getattr(getattr(policy, "config", None), "policy_prior_fraction", None),
                "score": None,
            }
        )
    by_method = {r["method"]: r["return_mean"] for r in rows}
    if "random" in by_method and "oracle" in by_method and by_method["oracle"] != by_method["random"]:
        for r in rows:  # 0 = random, 1 = oracle MPC
            r["score"] = (r["return_mean"] - by_method["random"]) / (
                by_method["oracle"] - by_method["random"]
            )
    print(format_rows(rows))
    print("score: (return - random) / (oracle - random); 1.0 is as good as planning in the true simulator.\n")

    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    _plot_returns(cfg.out_dir / "returns.png", rows, f"maskctrl demo: {cfg.env}")
    written = [cfg.out_dir / "returns.png"]
    imagined = None
    if "transformer" in cfg.methods:
        imagined = imagined_vs_real(_mpc_command(cfg, "transformer", checkpoint), spec, max_steps)
        if imagined is not None:
            written.append(cfg.out_dir / "imagined_vs_real.png")
            plot_imagined(written[-1], imagined, f"{cfg.env}: pretrained transformer, imagined vs real")
    video, video_note = (None, "video off (--no-video)")
    if cfg.video and "transformer" in cfg.methods:
        video, video_note = _record_video(cfg, spec, checkpoint, max_steps)
        if video is not None:
            written.append(video)
    record = {
        "config": {**asdict(cfg), "out_dir": str(cfg.out_dir), "checkpoint": str(checkpoint)},
        "planner": {**asdict(budget), "optimizer_overrides": dict(budget.optimizer_overrides)},
        "rows": rows,
        "imagined_vs_real": imagined,
        "video": video_note,
        "extras_seconds": time.perf_counter() - started,
    }
    (cfg.out_dir / "demo.json").write_text(json.dumps(record, indent=2) + "\n")
    written.insert(0, cfg.out_dir / "demo.json")
    print(video_note)
    print("wrote " + ", ".join(str(path) for path in written))
    return record


def main(argv: list[str]) -> int:
    """Entry point of ``maskctrl demo``; returns the process exit code."""
    from maskctrl.commands.mpc import CommandError

    cfg = tyro.cli(DemoConfig, args=argv, prog="maskctrl demo", description=DESCRIPTION)
    try:
        run(cfg)
    except KeyError as err:  # unknown env name: the registry's message lists the known ones
        print(f"maskctrl demo: {err.args[0]}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, ValueError, CommandError) as err:  # and CheckpointError
        print(f"maskctrl demo: {err}", file=sys.stderr)
        return 2
    return 0
