"""PPO with the pretrained, frozen maskctrl extractor vs PPO with ``MlpPolicy``: learning curves.

For each env (InvertedPendulum, Reacher by default) and seed, PPO trains the same number of timesteps with
the same hyper-parameters and head sizes (``net_arch``) twice:

- ``mlp``: ``MlpPolicy`` on the plain observation;
- ``frozen``: ``MultiInputPolicy`` on ``HistoryWrapper(env, --history)`` whose features are the frozen
  pretrained backbone's hidden state at the current observation (``maskctrl_policy_kwargs``);
- ``tuned`` (only if listed in ``--methods``): the same, with the backbone fine-tuned.

The learning curve is the mean return of the last ``--smooth`` training episodes (from SB3's ``Monitor``)
against timesteps; "timesteps to threshold" is the first timestep at which that mean reaches the env's
threshold. A final deterministic evaluation (``evaluate_policy``) scores each trained policy.

Checkpoints: ``--checkpoint-dir`` gives one directory per env (in ``--envs`` order); the default is the
package's shipped ``maskctrl/checkpoints/<Env>/``. Without one, ``--scratch-pretrain`` pretrains a tiny
backbone on random-policy episodes first (seconds: runnable anywhere, but it shows only that the pipeline
works, not what a real pretrained backbone is worth). Example, a check that takes about a minute::

    python benchmarks/sb3.py --scratch-pretrain --timesteps 2048 --seeds 0 --out-dir /tmp/sb3

Writes ``<out-dir>/sb3.{json,md,png}`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import tyro
from common import command_line, fmt_mean_std, machine_info, markdown_table, write_results
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

import maskctrl
from maskctrl.envs import HistoryWrapper, get_spec
from maskctrl.models.checkpoint import read_config
from maskctrl.policies.sb3 import maskctrl_policy_kwargs
from maskctrl.recipes import random_data_backbone

Method = Literal["mlp", "frozen", "tuned"]
THRESHOLDS = {"InvertedPendulum": 500.0, "Reacher": -8.0, "HalfCheetah": 1000.0, "Hopper": 1000.0}
"""Return to reach (random policy: InvertedPendulum ~6, Reacher ~-43, HalfCheetah ~-300, Hopper ~25;
Reacher with zero actions: -11.5 ± 4.9 over 20 seeds, so its threshold asks for more than keeping still)."""
SHIPPED = Path(maskctrl.__file__).parent / "checkpoints"


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """Options of the SB3 benchmark."""

    envs: tuple[str, ...] = ("InvertedPendulum", "Reacher")
    """Registered env names."""
    methods: tuple[Method, ...] = ("mlp", "frozen")
    """Policies compared: MlpPolicy, frozen pretrained extractor, fine-tuned pretrained extractor."""
    checkpoint_dir: tuple[Path, ...] = ()
    """One checkpoint directory per env, in --envs order (default: maskctrl/checkpoints/<Env>/)."""
    scratch_pretrain: bool = False
    """Where an env has no checkpoint, pretrain a tiny backbone on random-policy episodes first."""
    timesteps: int = 100_000
    """PPO timesteps per run."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """One run per seed and method (the same seeds for every method)."""
    thresholds: tuple[float, ...] = ()
    """Return threshold per env, in --envs order (default: THRESHOLDS)."""
    history: int = 4
    """History steps K the extractor reads (HistoryWrapper)."""
    n_steps: int = 1024
    """PPO rollout length."""
    batch_size: int = 64
    """PPO minibatch size."""
    n_epochs: int = 10
    """PPO epochs per rollout."""
    learning_rate: float = 3e-4
    """PPO learning rate."""
    net_arch: tuple[int, ...] = (64, 64)
    """Hidden sizes of the policy and value heads (both methods)."""
    smooth: int = 10
    """Training episodes averaged into each point of the learning curve."""
    eval_episodes: int = 5
    """Episodes of the final deterministic evaluation."""
    pretrain_episodes: int = 20
    """--scratch-pretrain: random-policy episodes collected."""
    pretrain_steps: int = 300
    """--scratch-pretrain: optimizer steps."""
    device: str = "auto"
    """Device of the maskctrl policies ('auto': CUDA if available; MlpPolicy always trains on CPU)."""
    work_dir: Path = Path("runs/bench_sb3")
    """--scratch-pretrain: where the episodes and the pretraining run go."""
    out_dir: Path = Path("benchmarks/results")
    """Where the JSON, markdown and plot go."""
    name: str = "sb3"
    """Stem of the output files."""


def log(message: str) -> None:
    """Progress to stderr (the table goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def per_env(cfg: BenchConfig, values: tuple[Any, ...], flag: str, env: str, default: Any) -> Any:
    """The value of a per-env flag for ``env`` (its default when the flag was not given)."""
    if not values:
        return default
    if len(values) != len(cfg.envs):
        raise SystemExit(f"--{flag} takes one value per env ({len(cfg.envs)}: {cfg.envs}), got {len(values)}")
    return values[cfg.envs.index(env)]


def scratch_checkpoint(cfg: BenchConfig, env: str) -> Path:
    """Pretrain a tiny backbone on random-policy episodes of ``env``; return its checkpoint."""
    tic = time.perf_counter()
    result = random_data_backbone(
        env, cfg.work_dir / env, episodes=cfg.pretrain_episodes, steps=cfg.pretrain_steps,
        window=max(8, cfg.history), seed=1000,
    )  # fmt: skip
    log(f"{env}: scratch-pretrained {cfg.pretrain_steps} steps in {time.perf_counter() - tic:.0f} s")
    return result.checkpoint


def find_checkpoint(cfg: BenchConfig, env: str) -> tuple[Path, str]:
    """The checkpoint directory for ``env`` and where it came from; exits with a clear message if none."""
    given = per_env(cfg, cfg.checkpoint_dir, "checkpoint-dir", env, None)
    path = Path(given) if given is not None else SHIPPED / env
    if (path / "config.json").is_file():
        return path, "given" if given is not None else "shipped"
    if cfg.scratch_pretrain:
        log(
            f"{env}: no checkpoint at {path}; pretraining a tiny backbone on random data (--scratch-pretrain)"
        )
        return scratch_checkpoint(cfg, env), "scratch-pretrain (random data, tiny)"
    what = "" if given is not None else " (the package's shipped checkpoints are not built yet)"
    raise SystemExit(
        f"no checkpoint for {env} at {path}{what}; pass --checkpoint-dir DIR (one per env) or "
        "--scratch-pretrain to pretrain a tiny backbone on random data first"
    )


class EpisodeLog(BaseCallback):
    """Records ``(timestep, return)`` of every finished training episode (from ``Monitor``'s info)."""

    def __init__(self) -> None:
        super().__init__()
        self.timesteps: list[int] = []
        self.returns: list[float] = []

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            if "episode" in info:
                self.timesteps.append(int(self.num_timesteps))
                self.returns.append(float(info["episode"]["r"]))
        return True


def smoothed(returns: list[float], window: int) -> np.ndarray:
    """Mean of the last ``window`` returns after each episode (fewer at the start)."""
    arr = np.asarray(returns, dtype=np.float64)
    sums = np.concatenate([[0.0], np.cumsum(arr)])
    idx = np.arange(1, len(arr) + 1)
    start = np.maximum(idx - window, 0)
    return (sums[idx] - sums[start]) / (idx - start)


def steps_to_threshold(timesteps: list[int], curve: np.ndarray, threshold: float, window: int) -> int | None:
    """First timestep at which a full window of episodes averages at least ``threshold``."""
    for i in range(window - 1, len(curve)):
        if curve[i] >= threshold:
            return timesteps[i]
    return None


def policy_device(cfg: BenchConfig, method: Method) -> str:
    """Where a policy trains: MlpPolicy on CPU (SB3's advice), maskctrl ones on ``--device``."""
    if method == "mlp":
        return "cpu"
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def run_one(
    cfg: BenchConfig, env_name: str, method: Method, seed: int, checkpoint: Path | None
) -> dict[str, Any]:
    """Train one PPO policy and return its learning curve, evaluation and speed."""
    spec = get_spec(env_name)

    def make() -> Any:
        base = spec.make()
        return Monitor(base if method == "mlp" else HistoryWrapper(base, cfg.history))

    env, eval_env = make(), make()
    net_arch = {"pi": list(cfg.net_arch), "vf": list(cfg.net_arch)}
    device = policy_device(cfg, method)
    if method == "mlp":
        policy, kwargs = "MlpPolicy", {"net_arch": net_arch}
    else:
        policy = "MultiInputPolicy"
        kwargs = maskctrl_policy_kwargs(
            checkpoint, freeze=method == "frozen", env=env, env_name=env_name, net_arch=net_arch
        )
    model = PPO(
        policy, env, policy_kwargs=kwargs, n_steps=cfg.n_steps, batch_size=cfg.batch_size,
        n_epochs=cfg.n_epochs, learning_rate=cfg.learning_rate, seed=seed, device=device,
    )  # fmt: skip
    episodes = EpisodeLog()
    tic = time.perf_counter()
    model.learn(cfg.timesteps, callback=episodes)
    wall = time.perf_counter() - tic
    eval_env.reset(seed=10_000 + seed)
    returns, _ = evaluate_policy(
        model, eval_env, n_eval_episodes=cfg.eval_episodes, return_episode_rewards=True
    )
    curve = smoothed(episodes.returns, cfg.smooth)
    threshold = per_env(cfg, cfg.thresholds, "thresholds", env_name, THRESHOLDS.get(env_name, np.inf))
    reached = steps_to_threshold(episodes.timesteps, curve, threshold, cfg.smooth)
    final = float(curve[-1]) if len(curve) else float("nan")
    log(
        f"{env_name} {method:>6} seed {seed}: {len(curve)} episodes, final {final:.1f}, "
        f"eval {np.mean(returns):.1f}, threshold {threshold:g} at {reached}, "
        f"{cfg.timesteps / wall:.0f} steps/s"
    )
    return {
        "env": env_name,
        "method": method,
        "seed": seed,
        "timesteps": episodes.timesteps,
        "episode_returns": episodes.returns,
        "curve": curve.tolist(),
        "final_train_return": final,
        "eval_returns": [float(r) for r in returns],
        "threshold": threshold,
        "timesteps_to_threshold": reached,
        "wall_s": wall,
        "steps_per_s": cfg.timesteps / wall,
        "device": device,
    }


def summarize(runs: list[dict[str, Any]], cfg: BenchConfig) -> list[dict[str, Any]]:
    """One row per (env, method), over seeds."""
    rows = []
    for env_name in cfg.envs:
        for method in cfg.methods:
            mine = [r for r in runs if r["env"] == env_name and r["method"] == method]
            reached = [r["timesteps_to_threshold"] for r in mine if r["timesteps_to_threshold"] is not None]
            rows.append({
                "env": env_name,
                "method": method,
                "final_train_return": [r["final_train_return"] for r in mine],
                "eval_return": [float(np.mean(r["eval_returns"])) for r in mine],
                "threshold": mine[0]["threshold"],
                "reached": f"{len(reached)}/{len(mine)}",
                "timesteps_to_threshold": [r["timesteps_to_threshold"] for r in mine],
                "steps_per_s": [r["steps_per_s"] for r in mine],
            })  # fmt: skip
    return rows


def render(
    rows: list[dict[str, Any]], cfg: BenchConfig, sources: dict[str, str], info: dict[str, Any]
) -> str:
    """The markdown report: setup, then one row per (env, method)."""
    headers = [
        "env",
        "method",
        "final train return",
        "eval return",
        "threshold",
        "reached",
        "steps to thr.",
        "steps/s",
    ]
    cells = []
    for r in rows:
        hit = [t for t in r["timesteps_to_threshold"] if t is not None]
        cells.append([
            r["env"], r["method"], fmt_mean_std(r["final_train_return"]), fmt_mean_std(r["eval_return"]),
            f"{r['threshold']:g}", r["reached"], fmt_mean_std(hit, digits=0) if hit else "-",
            fmt_mean_std(r["steps_per_s"], digits=0),
        ])  # fmt: skip
    ckpts = ", ".join(f"{env}: {src}" for env, src in sources.items()) or "-"
    return (
        f"# PPO: pretrained frozen maskctrl extractor vs MlpPolicy\n\n"
        f"{cfg.timesteps} timesteps per run, seeds {list(cfg.seeds)}; PPO n_steps={cfg.n_steps}, "
        f"batch={cfg.batch_size}, epochs={cfg.n_epochs}, lr={cfg.learning_rate:g}, "
        f"heads {list(cfg.net_arch)}; "
        f"extractor history K={cfg.history}. Checkpoints: {ckpts}. 'final train return': mean of the last "
        f"{cfg.smooth} training episodes; 'steps to thr.': first timestep at which that mean reaches the "
        f"threshold (over the seeds that reached it); 'eval return': {cfg.eval_episodes} deterministic "
        f"episodes. Measured {info['date']} on {info['processor']} x{info['cpu_count']} (shared CPU: speeds "
        f"are lower bounds).\n\n{markdown_table(headers, cells)}\n"
    )


def plot(path: Path, runs: list[dict[str, Any]], cfg: BenchConfig) -> None:
    """One panel per env: each method's smoothed training return per seed (thin) against timesteps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"mlp": "tab:gray", "frozen": "tab:blue", "tuned": "tab:green"}
    fig, axes = plt.subplots(1, len(cfg.envs), figsize=(4.2 * len(cfg.envs), 3.4), squeeze=False)
    for ax, env_name in zip(axes[0], cfg.envs, strict=True):
        for method in cfg.methods:
            for i, r in enumerate(x for x in runs if x["env"] == env_name and x["method"] == method):
                label = method if i == 0 else None
                ax.plot(r["timesteps"], r["curve"], color=colors[method], linewidth=1, label=label)
        threshold = next(r["threshold"] for r in runs if r["env"] == env_name)
        ax.axhline(threshold, color="tab:red", linestyle="--", linewidth=1, label="threshold")
        ax.set_title(env_name)
        ax.set_xlabel("timesteps")
    axes[0][0].set_ylabel(f"training return (last {cfg.smooth} episodes)")
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(cfg: BenchConfig) -> list[dict[str, Any]]:
    """Run every (env, method, seed), print the table and write JSON, markdown and plot."""
    torch.set_num_threads(1)
    for env_name in cfg.envs:
        get_spec(env_name)  # unknown names fail before any training
    needs_backbone = any(m != "mlp" for m in cfg.methods)
    checkpoints: dict[str, Path] = {}
    sources: dict[str, str] = {}
    if needs_backbone:
        for env_name in cfg.envs:
            checkpoints[env_name], sources[env_name] = find_checkpoint(cfg, env_name)
    runs = [
        run_one(cfg, env_name, method, seed, checkpoints.get(env_name))
        for env_name in cfg.envs
        for method in cfg.methods
        for seed in cfg.seeds
    ]
    rows = summarize(runs, cfg)
    info = machine_info()
    markdown = render(rows, cfg, sources, info)
    print(markdown)
    record = {
        "command": command_line("sb3.py", cfg),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in cfg.__dict__.items()},
        "checkpoints": {
            env: {
                "path": str(p),
                "source": sources[env],
                "weights_sha256": read_config(p).get("weights_sha256"),
            }
            for env, p in checkpoints.items()
        },
        "machine": info,
        "rows": rows,
        "runs": runs,
    }
    record["config"]["checkpoint_dir"] = [str(p) for p in cfg.checkpoint_dir]
    json_path, md_path = write_results(cfg.out_dir, cfg.name, record, markdown)
    png_path = cfg.out_dir / f"{cfg.name}.png"
    plot(png_path, runs, cfg)
    log(f"wrote {json_path}, {md_path}, {png_path}")
    return rows


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
