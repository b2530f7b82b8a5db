"""Behaviour cloning: return against the number of expert episodes, pretrained backbone vs scratch.

For each env (Reacher and HalfCheetah by default):

1. record ``max(--episodes)`` oracle-MPC demonstrations (``maskctrl collect --policy oracle-mpc``: the env's
   preset planner, no action noise, reset seeds ``seed + i``), or reuse them from ``--data-dir``; the
   n-episode dataset is the first n of them (nested subsets, each saved as its own dataset directory);
2. for each n and each initialisation, train :func:`maskctrl.policies.bc.train_bc` with one budget:
   *pretrained* fine-tunes the checkpoint of ``--checkpoint`` (default ``maskctrl/checkpoints/<Env>``; a
   ``maskctrl pretrain`` run directory works too), *scratch* starts from random weights of the same
   architecture and context length; all n episodes train (no held-out loss episodes) and ``keep_best``
   keeps the weights of the validation-return peak, measured on reset seeds 10000+. Each history length K
   of ``--windows`` (default 1 and the checkpoint's context) trains, and the K with the best validation
   return is kept, by the same rule for both initialisations. (Why K=1: in exploratory runs on
   HalfCheetah with 5 demonstrations, 1000 steps and 3 seeds, the pretrained model returned 86 with K=24
   and 1255 with K=1, scratch 734 and 243. Our reading, not tested further: with a history, a model that
   was pretrained on inverse dynamics can read its previous action off the observations and repeat it,
   the "copycat" shortcut of Wen et al. 2020, which fits the data and fails in closed loop);
3. run each saved policy on ``--eval-episodes`` held-out reset seeds (``eval_seed + i``), and a random
   policy on the same seeds.

The normalized score is ``(R - R_random) / (R_expert - R_random)`` with ``R_expert`` the mean return of
all recorded demonstrations. Targets (issue 7): with 5 episodes the pretrained policy scores >= 0.9 on
Reacher, and beats scratch on HalfCheetah by >= 20% (``(R_pre - R_scratch) / |R_scratch|``).

A full run records 20 HalfCheetah demonstrations of 1000 planned steps (about 35 minutes on 2 free CPU
cores) and trains one BC run per env, n, init, seed and K (72 with ``--seeds 0 1 2``: 72 minutes with
500 steps); check it first with tiny settings, e.g.
``python benchmarks/bc.py --episodes 1 2 --steps 20 --max-steps 30 --eval-episodes 2 --expert-samples 16``.
Writes ``benchmarks/results/bc.{json,md,png}``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import tyro
from common import command_line, fmt_mean_std, machine_info, markdown_table, mean_std, write_results

import maskctrl.envs  # noqa: F401  (registers the built-in envs)
from maskctrl.commands.collect import CollectConfig, expert_config, oracle_mpc_factory
from maskctrl.data.collect import RandomPolicy, collect_episodes
from maskctrl.data.episodes import EpisodeData, load_episodes, save_episodes
from maskctrl.envs.registry import get_spec
from maskctrl.models.checkpoint import read_config
from maskctrl.planner.presets import objective_tag
from maskctrl.policies.bc import DEFAULT_WINDOW, BCConfig, episode_returns, train_bc
from maskctrl.policies.transformer_policy import TransformerPolicy
from maskctrl.training.distributed import resolve_device

Init = Literal["pretrained", "scratch"]


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """Options of the BC benchmark."""

    envs: tuple[str, ...] = ("Reacher", "HalfCheetah")
    """Registered env names."""
    episodes: tuple[int, ...] = (1, 5, 20)
    """Numbers of expert episodes to clone (nested: the first n demonstrations)."""
    inits: tuple[Init, ...] = ("pretrained", "scratch")
    """Initialisations compared."""
    checkpoint: tuple[str, ...] = ()
    """Pretrained checkpoints as ENV=PATH (envs not named use --checkpoint-template)."""
    checkpoint_template: str = "maskctrl/checkpoints/{env}"
    """Where an env's pretrained checkpoint is looked for by default."""
    seeds: tuple[int, ...] = (0,)
    """BC training seeds (each row is the mean over them)."""
    steps: int = 2000
    """BC optimizer steps per run."""
    batch_size: int = 64
    """BC windows per step."""
    lr: float = 3e-4
    """BC peak learning rate."""
    windows: tuple[int, ...] = (1, 0)
    """History lengths K (window T) tried for every (n, init, seed), 0 meaning the pretrained checkpoint's
    context_len: each trains, and the one with the best validation return (seeds 10000+) is evaluated."""
    val_every: int = 250
    """Validation (return on seeds 10000+, loss on held-out episodes) every this many steps."""
    val_episodes: int = 3
    """Validation episodes per validation."""
    eval_episodes: int = 10
    """Held-out evaluation episodes per policy (reset seeds eval_seed + i)."""
    eval_seed: int = 20_000
    """Reset seed of the first evaluation episode."""
    max_steps: int | None = None
    """Cap on demonstration, validation and evaluation episodes (None: the env's limit)."""
    expert_samples: int | None = None
    """Oracle MPC candidates N (None: the env's preset)."""
    expert_horizon: int | None = None
    """Oracle MPC horizon (None: the env's preset)."""
    expert_iterations: int | None = None
    """Oracle MPC iterations (None: the env's preset)."""
    expert_return_mode: Literal["best", "mean"] | None = None
    """The action the oracle expert emits: its best candidate's or the optimizer's final mean (None: the
    optimizer's default; see ``maskctrl collect --return-mode``)."""
    seed: int = 0
    """Seed of the demonstrations (episode i reset with seed + i) and of the random policy."""
    data_dir: Path = Path("runs/bench_bc/data")
    """Recorded demonstrations, reused by later runs with the same settings."""
    work_dir: Path = Path("runs/bench_bc/runs")
    """BC run directories (replaced on every run)."""
    device: str = "cpu"
    """Where BC trains and acts ('auto': the GPU if there is one)."""
    num_threads: int = 2
    """torch CPU threads (1 on a CPU shared with other jobs: oversubscribed threads spin and crawl)."""
    out_dir: Path = Path("benchmarks/results")
    """Where the JSON, markdown and plot go."""
    name: str = "bc"
    """Stem of the output files."""


def log(message: str) -> None:
    """Progress to stderr (the table goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def find_checkpoint(cfg: BenchConfig, env: str) -> tuple[Path | None, str]:
    """The env's pretrained checkpoint directory (or None) and a sentence saying where it was looked for."""
    bad = [item for item in cfg.checkpoint if "=" not in item]
    if bad:
        raise SystemExit(f"--checkpoint takes ENV=PATH items, got {bad}")
    named = dict(item.split("=", 1) for item in cfg.checkpoint)
    path = Path(named.get(env, cfg.checkpoint_template.format(env=env)))
    for candidate in (path, path / "checkpoint"):  # a checkpoint, or a `maskctrl pretrain` run directory
        if (candidate / "config.json").is_file():
            return candidate, f"pretrained checkpoint {candidate}"
    return None, (
        f"NO pretrained checkpoint for {env} at {path} (build one with `maskctrl pretrain`, or pass "
        f"--checkpoint {env}=PATH); only scratch rows were run"
    )


def demonstrations(cfg: BenchConfig, env: str) -> tuple[EpisodeData, dict[int, Path]]:
    """All recorded demonstrations and a dataset directory holding the first n of them, for each n."""
    given = {
        "samples": cfg.expert_samples,
        "horizon": cfg.expert_horizon,
        "iterations": cfg.expert_iterations,
        "return_mode": cfg.expert_return_mode,
    }
    collect = CollectConfig(env=env, policy="oracle-mpc", out=cfg.data_dir, seed=cfg.seed, **given)
    mpc = expert_config(collect)
    total = max(cfg.episodes)
    steps = "full" if cfg.max_steps is None else cfg.max_steps
    mode = "" if cfg.expert_return_mode is None else f"-{cfg.expert_return_mode}"
    budget = f"N{mpc.samples}H{mpc.horizon}I{mpc.iterations}{mode}"
    stem = f"expert-{total}x{steps}-{budget}-{objective_tag(env)}-seed{cfg.seed}"
    root = cfg.data_dir / env / stem
    if (root / "episodes.npz").is_file():
        log(f"{env}: reusing {root}")
        data = load_episodes(root)
    else:
        log(
            f"{env}: recording {total} oracle-MPC episodes ({mpc.optimizer}, N={mpc.samples}, H={mpc.horizon})"
        )
        tic = time.perf_counter()
        data = collect_episodes(
            env, oracle_mpc_factory(collect), n_episodes=total, seed=cfg.seed, max_steps=cfg.max_steps,
            progress=True, policy_name=f"oracle-mpc ({mpc.optimizer}, N={mpc.samples}, H={mpc.horizon})",
        )  # fmt: skip
        save_episodes(data, root, overwrite=True)
        log(f"{env}: {data.n_steps} expert steps in {time.perf_counter() - tic:.0f} s")
    subsets = {}
    for n in sorted(set(cfg.episodes)):
        path = root if n == total else root.with_name(f"{stem}-first{n}")
        if not (path / "episodes.npz").is_file():
            first = EpisodeData.from_episodes([data.episode(i) for i in range(n)], data.metadata)
            save_episodes(first, path, overwrite=True)
        subsets[n] = path
    return data, subsets


class MiddleAction:
    """The middle of the action box at every step: how far a policy gets by not flailing (Reacher pays
    ``||a||^2`` every step, so doing nothing already beats random by far)."""

    def __init__(self, low: np.ndarray, high: np.ndarray) -> None:
        self.action = ((np.asarray(low) + np.asarray(high)) / 2).astype(np.float32)

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """The middle action for every row of ``observation [n_envs, O]``."""
        return np.tile(self.action, (len(observation), 1)), state


def evaluate(cfg: BenchConfig, env: str, policy: Any) -> list[float]:
    """Returns of ``policy`` on the held-out evaluation seeds."""
    return episode_returns(
        policy, env, episodes=cfg.eval_episodes, seed=cfg.eval_seed, max_steps=cfg.max_steps
    )


def bc_train(
    cfg: BenchConfig, env: str, data: Path, init: Init, seed: int, checkpoint: Path | None, window: int
) -> tuple[Path, dict[str, Any]]:
    """Train one BC policy (history ``window``; 0: the checkpoint's context_len); its checkpoint and record."""
    model = None if checkpoint is None else read_config(checkpoint)["model"]
    arch: dict[str, Any] = {}
    if init == "scratch" and model is not None:  # the pretrained model's shape, fresh weights
        arch = {k: model[k] for k in ("n_layer", "n_head", "d_model", "mlp_ratio", "dropout")}
    arch["window"] = window or (DEFAULT_WINDOW if model is None else model["context_len"])
    out = cfg.work_dir / env / f"{data.name}-{init}-seed{seed}-K{arch['window']}"
    run = BCConfig(
        data=(data,), out=out, overwrite=True,
        checkpoint=checkpoint if init == "pretrained" else None, steps=cfg.steps, batch_size=cfg.batch_size,
        lr=cfg.lr, val_fraction=0.0, val_every=cfg.val_every,
        val_episodes=cfg.val_episodes, val_max_steps=cfg.max_steps,
        seed=seed, device=cfg.device, progress=False, **arch,
    )  # fmt: skip
    result = train_bc(run)
    return result.checkpoint, {
        "window": arch["window"], "saved_step": result.saved_step, "val_return": result.val_return,
        "val_loss": result.val_loss, "train_loss": result.train_loss, "train_wall_s": result.wall_time_s,
    }  # fmt: skip


def bc_run(
    cfg: BenchConfig, env: str, data: Path, init: Init, seed: int, checkpoint: Path | None
) -> dict[str, Any]:
    """Train one BC policy per ``cfg.windows``, keep the best by validation return, evaluate it."""
    trained = [bc_train(cfg, env, data, init, seed, checkpoint, w) for w in _window_choices(cfg)]
    best = max(range(len(trained)), key=lambda i: _score(trained[i][1]["val_return"]))
    path, record = trained[best]
    policy = TransformerPolicy.load(path, device=resolve_device(cfg.device))
    record = {"seed": seed, **record, "returns": evaluate(cfg, env, policy)}
    if len(trained) > 1:
        record["candidates"] = [rec for _, rec in trained]
    return record


def _window_choices(cfg: BenchConfig) -> tuple[int, ...]:
    """The history lengths trained per (n, init, seed); none given means the checkpoint's context."""
    return cfg.windows or (0,)


def _windows(cfg: BenchConfig) -> str:
    names = ["the checkpoint's context" if w == 0 else str(w) for w in _window_choices(cfg)]
    return "{" + ", ".join(names) + "}"


def _score(value: float | None) -> float:
    return -float("inf") if value is None else value


def bench_env(cfg: BenchConfig, env: str) -> dict[str, Any]:
    """Demonstrations, every (n, init) row and the reference returns of one env."""
    checkpoint, source = find_checkpoint(cfg, env)
    log(f"{env}: {source}")
    data, subsets = demonstrations(cfg, env)
    expert = float(data.returns().mean())
    space = get_spec(env).make().action_space
    random = evaluate(cfg, env, RandomPolicy(space, cfg.seed))
    middle = evaluate(cfg, env, MiddleAction(space.low, space.high))
    random_mean = float(np.mean(random))
    rows = []
    for n, path in subsets.items():
        for init in cfg.inits:
            if init == "pretrained" and checkpoint is None:
                continue
            runs = [bc_run(cfg, env, path, init, seed, checkpoint) for seed in cfg.seeds]
            means = [float(np.mean(r["returns"])) for r in runs]
            mean, std = mean_std(means)
            row = {
                "env": env, "episodes": n, "init": init, "return_mean": mean, "return_std_over_seeds": std,
                "normalized": (mean - random_mean) / (expert - random_mean), "runs": runs,
            }  # fmt: skip
            log(
                f"{env}: {n} episodes, {init}: return {fmt_mean_std(means)}, normalized {row['normalized']:.2f}"
            )
            rows.append(row)
    return {
        "env": env, "checkpoint": None if checkpoint is None else str(checkpoint), "checkpoint_note": source,
        "checkpoint_sha256": None if checkpoint is None else read_config(checkpoint).get("weights_sha256"),
        "expert_return": expert, "expert_returns": [float(r) for r in data.returns()],
        "random_return": random_mean, "random_returns": random, "middle_action_returns": middle,
        "rows": rows, "targets": targets(env, rows),
    }  # fmt: skip


def targets(env: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets for ``env`` with 5 episodes (None where a needed row is missing)."""
    at5 = {r["init"]: r for r in rows if r["episodes"] == 5}
    if env == "Reacher":
        pre = at5.get("pretrained")
        value = None if pre is None else pre["normalized"]
        return {
            "what": "pretrained normalized score >= 0.9",
            "value": value,
            "met": None if value is None else value >= 0.9,
        }
    if env == "HalfCheetah":
        pre, scratch = at5.get("pretrained"), at5.get("scratch")
        if pre is None or scratch is None:
            return {"what": "pretrained beats scratch by >= 20%", "value": None, "met": None}
        gain = (pre["return_mean"] - scratch["return_mean"]) / max(abs(scratch["return_mean"]), 1e-9)
        return {"what": "pretrained beats scratch by >= 20%", "value": gain, "met": gain >= 0.2}
    return {"what": "none", "value": None, "met": None}


def plot(path: Path, envs: list[dict[str, Any]]) -> None:
    """One panel per env: return against demonstrations per init; expert dashed, random dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(envs), figsize=(4.5 * len(envs), 3.6), squeeze=False)
    for ax, rec in zip(axes[0], envs, strict=True):
        for init, color in (("pretrained", "tab:blue"), ("scratch", "tab:orange")):
            mine = [r for r in rec["rows"] if r["init"] == init]
            if mine:
                ax.errorbar(
                    [r["episodes"] for r in mine], [r["return_mean"] for r in mine],
                    yerr=[r["return_std_over_seeds"] for r in mine], marker="o", color=color, label=init,
                )  # fmt: skip
        ax.axhline(rec["expert_return"], color="tab:red", linestyle="--", linewidth=1, label="expert")
        ax.axhline(rec["random_return"], color="tab:gray", linestyle=":", linewidth=1, label="random")
        middle = float(np.mean(rec["middle_action_returns"]))
        ax.axhline(middle, color="tab:gray", linestyle="-.", linewidth=1, label="middle action")
        ax.set_xscale("log")
        ns = sorted({r["episodes"] for r in rec["rows"]})
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
        ax.set(title=rec["env"], xlabel="expert episodes", ylabel="return")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render(cfg: BenchConfig, envs: list[dict[str, Any]], info: dict[str, Any]) -> str:
    """The results page."""
    headers = ["env", "episodes", "init", "return", "normalized", "K", "saved step", "train s"]
    cells = []
    for rec in envs:
        for r in rec["rows"]:
            per_episode = [x for run in r["runs"] for x in run["returns"]]
            cells.append([
                rec["env"], r["episodes"], r["init"], fmt_mean_std(per_episode), f"{r['normalized']:.2f}",
                "/".join(str(run.get("window", "-")) for run in r["runs"]),
                "/".join(str(run["saved_step"]) for run in r["runs"]),
                f"{np.mean([run['train_wall_s'] for run in r['runs']]):.0f}",
            ])  # fmt: skip
    notes = []
    for rec in envs:
        t = rec["targets"]
        verdict = "not measured" if t["met"] is None else ("met" if t["met"] else "NOT met")
        value = "" if t["value"] is None else f" ({t['value']:.2f})"
        notes.append(
            f"- {rec['env']}: expert (demonstrations) {fmt_mean_std(rec['expert_returns'])}, random "
            f"{fmt_mean_std(rec['random_returns'])}, constant middle action {fmt_mean_std(rec['middle_action_returns'])} "
            f"(normalized {(np.mean(rec['middle_action_returns']) - rec['random_return']) / (rec['expert_return'] - rec['random_return']):.2f}); "
            f"{rec['checkpoint_note']}. Target with 5 episodes, "
            f"{t['what']}: {verdict}{value}."
        )
    return (
        f"# Behaviour cloning: expert episodes vs return, pretrained vs scratch\n\n"
        f"BC ({cfg.steps} steps of batch {cfg.batch_size}, lr {cfg.lr}, best validation return kept; history K "
        f"from {_windows(cfg)} chosen by validation return, per training seed) on the first n "
        f"oracle-MPC demonstrations; 'return' is over {cfg.eval_episodes} held-out episodes (seeds {cfg.eval_seed}+) "
        f"per training seed {list(cfg.seeds)}; normalized = (R - random) / (expert - random). Episodes "
        f"{'capped at ' + str(cfg.max_steps) + ' steps' if cfg.max_steps else 'at full length'}. "
        f"Measured {info['date']} on {info['processor']} x{info['cpu_count']}, torch {info['torch']}.\n\n"
        f"{markdown_table(headers, cells)}\n\n" + "\n".join(notes) + "\n"
    )


def main(cfg: BenchConfig) -> dict[str, Any]:
    """Run every env and write JSON, markdown and plot."""
    torch.set_num_threads(cfg.num_threads)
    started = time.perf_counter()
    envs = [bench_env(cfg, env) for env in cfg.envs]
    info = machine_info()
    page = render(cfg, envs, info)
    print(page)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}
    record = {
        "command": command_line("bc.py", cfg), "config": config, "machine": info,
        "total_s": time.perf_counter() - started, "envs": envs,
    }  # fmt: skip
    json_path, md_path = write_results(cfg.out_dir, cfg.name, record, page)
    png_path = cfg.out_dir / f"{cfg.name}.png"
    plot(png_path, envs)
    log(f"wrote {json_path}, {md_path}, {png_path} ({record['total_s']:.0f} s in all)")
    return record


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
