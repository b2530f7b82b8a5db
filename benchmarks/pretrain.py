"""Pretrained transformer vs the PETS-style MLP ensemble: held-out open-loop prediction error.

For each env (HalfCheetah, Hopper by default):

1. collect random episodes and noisy-expert episodes (oracle MPC: ``MPCController`` planning in the true
   simulator, as ``maskctrl collect --policy oracle-mpc``; Gaussian action noise on top);
2. pretrain the transformer twice on the same training episodes and for the same steps: all objectives
   summed (forward, reward, inverse, random masked hindsight; ``--forward-weight`` weighs the forward
   loss, 1 by default) and forward dynamics only;
3. train the MLP ensemble on the same training episodes and normalizer;
4. roll every model open loop on the TRUE actions of the held-out episodes (the datasets' validation
   split), from the same start points with K real history steps, and report the mean squared error in
   standardized obs units at step 1 and step H (and the whole curve, in the JSON), plus the single-process
   pretraining speed in tokens/s.

Budgets are explicit flags; ``--quick`` picks small ones (minutes on 2 CPU cores) and any flag given with
it still wins, e.g. ``python benchmarks/pretrain.py --quick --steps 300``. A full run
(``python benchmarks/pretrain.py``) collects 1000-step episodes and pretrains 5000 steps per run: hours on
a 2-core CPU (see the estimate the quick run prints), minutes on a GPU (``--device cuda``).
Writes ``benchmarks/results/pretrain.{json,md}``; collected data and runs go to ``--work-dir``.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import tyro
from common import machine_info, markdown_table, write_results

from maskctrl.commands.collect import CollectConfig, oracle_mpc_factory
from maskctrl.data.collect import collect_episodes
from maskctrl.data.dataset import TrajectoryDataset
from maskctrl.data.episodes import save_episodes
from maskctrl.models.checkpoint import load_checkpoint
from maskctrl.models.ensemble import EnsembleConfig, EnsembleMLPDynamics
from maskctrl.models.ensemble_training import train_ensemble
from maskctrl.models.evaluation import OpenLoopModel, TransformerPredictor, compare_open_loop
from maskctrl.models.objectives import ObjectiveWeights
from maskctrl.planner.presets import objective_tag
from maskctrl.pretrain import PretrainConfig, pretrain
from maskctrl.training.logs import LOG_FILE, read_log


@dataclass(frozen=True, kw_only=True)
class Budget:
    """How much data and training one env gets."""

    random_episodes: int
    """Random-policy episodes collected."""
    expert_episodes: int
    """Noisy oracle-MPC episodes collected."""
    max_steps: int
    """Cap on each collected episode's length."""
    steps: int
    """Pretraining steps per transformer run."""
    batch_size: int
    """Pretraining batch (windows per step)."""
    ensemble_epochs: int
    """Most ensemble epochs (PETS-style early stopping on a 10% holdout usually ends training sooner)."""
    n_starts: int
    """Held-out open-loop start points."""


FULL = Budget(
    random_episodes=40,
    expert_episodes=10,
    max_steps=1000,
    steps=5000,
    batch_size=128,
    ensemble_epochs=200,
    n_starts=2000,
)
QUICK = Budget(
    random_episodes=10,
    expert_episodes=3,
    max_steps=150,
    steps=300,
    batch_size=64,
    ensemble_epochs=200,
    n_starts=500,
)
FORWARD_ONLY = ObjectiveWeights(forward=1.0, inverse=0.0, hindsight=0.0, hindsight_obs=0.0, reward=0.0)


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """Options of the benchmark; budget flags left at None take the --quick or full preset."""

    envs: tuple[str, ...] = ("HalfCheetah", "Hopper")
    """Registered env names."""
    quick: bool = False
    """Use the small preset budget (any budget flag given still wins)."""
    random_episodes: int | None = None
    """Random-policy episodes (full 40, quick 10)."""
    expert_episodes: int | None = None
    """Noisy oracle-MPC episodes (full 10, quick 3)."""
    max_steps: int | None = None
    """Episode length cap (full 1000, quick 150)."""
    steps: int | None = None
    """Pretraining steps per run (full 5000, quick 300)."""
    batch_size: int | None = None
    """Pretraining batch size (full 128, quick 64)."""
    ensemble_epochs: int | None = None
    """Most ensemble epochs (full and quick 200; early stopping on its holdout usually ends it sooner)."""
    n_starts: int | None = None
    """Held-out open-loop start points (full 2000, quick 500)."""
    expert_noise: float = 0.1
    """Expert action noise, as a fraction of half the action range."""
    expert_samples: int = 64
    """Oracle MPC candidates N (iCEM)."""
    expert_horizon: int = 10
    """Oracle MPC horizon."""
    expert_iterations: int = 2
    """Oracle MPC iterations per step."""
    lr: float = 3e-4
    """Peak pretraining learning rate (AdamW, warm-up then cosine decay), the same for both transformers."""
    forward_weight: float = 1.0
    """Weight of the forward-dynamics loss in the all-objectives sum (the other losses weigh 1)."""
    compile: bool = False
    """Pretrain with the transformer's forward and backward compiled (``maskctrl pretrain --compile``)."""
    window: int = 16
    """Pretraining window T (the transformer's context length)."""
    n_layer: int = 4
    """Transformer blocks."""
    d_model: int = 128
    """Transformer width."""
    history: int = 6
    """Real history steps K given to every model (K + horizon - 1 must fit the window)."""
    horizon: int = 10
    """Open-loop steps H."""
    val_fraction: float = 0.2
    """Share of each dataset's episodes held out (never trained on by any model)."""
    seed: int = 0
    """Seed of the data, the split, the models and the start points."""
    device: str = "cpu"
    """Where models train and predict."""
    num_threads: int = 2
    """torch CPU threads."""
    work_dir: Path = Path("runs/bench_pretrain")
    """Collected datasets (reused when present) and pretraining runs."""
    out_dir: Path = Path("benchmarks/results")
    """Where the JSON and markdown go."""
    name: str = "pretrain"
    """Base name of the result files."""
    merge: tuple[Path, ...] = ()
    """Instead of running: combine the JSON records of earlier runs with the same settings (e.g. one
    ``--envs X --name pretrain_X`` run per env, run side by side) into one page."""


def resolve(cfg: BenchConfig) -> Budget:
    """The budget: preset values where the flag was left at None."""
    preset = QUICK if cfg.quick else FULL
    given = {
        f.name: getattr(cfg, f.name) for f in dataclasses.fields(Budget) if getattr(cfg, f.name) is not None
    }
    return dataclasses.replace(preset, **given)


def log(message: str) -> None:
    """Progress to stderr (the table goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def collect(cfg: BenchConfig, budget: Budget, env: str, kind: str) -> tuple[Path, dict[str, float]]:
    """Collect (or reuse) one dataset; return its directory and ``{"steps", "seconds"}`` of collecting it."""
    n = budget.random_episodes if kind == "random" else budget.expert_episodes
    tag = "" if kind == "random" else f"-{objective_tag(env)}"
    out = cfg.work_dir / env / f"{kind}-{n}x{budget.max_steps}{tag}-seed{cfg.seed}"
    timing_file = out.with_name(out.name + ".timing.json")  # beside the dataset, which holds only its files
    if (out / "episodes.npz").is_file() and timing_file.is_file():
        log(f"{env}: reusing {out}")
        return out, json.loads(timing_file.read_text())
    tic = time.perf_counter()
    if kind == "random":
        data = collect_episodes(
            env, "random", n_episodes=n, seed=cfg.seed, max_steps=budget.max_steps, progress=False
        )
    else:
        mpc = CollectConfig(
            env=env, policy="oracle-mpc", out=out, seed=cfg.seed + 10_000, samples=cfg.expert_samples,
            horizon=cfg.expert_horizon, iterations=cfg.expert_iterations, noise=cfg.expert_noise,
        )  # fmt: skip
        data = collect_episodes(
            env, oracle_mpc_factory(mpc), n_episodes=n, seed=mpc.seed, action_noise=cfg.expert_noise,
            max_steps=budget.max_steps, progress=False, policy_name="oracle-mpc (noisy expert)",
        )  # fmt: skip
    timing = {"steps": float(data.n_steps), "seconds": time.perf_counter() - tic}
    save_episodes(data, out, overwrite=True)
    timing_file.write_text(json.dumps(timing) + "\n")
    log(
        f"{env}: {kind} {data.n_steps} steps in {timing['seconds']:.0f} s, return {data.returns().mean():.1f}"
    )
    return out, timing


def full_run_estimate(cfg: BenchConfig, budget: Budget, envs: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds a run with the FULL budget would take here, scaled from this run's measured rates.

    Expert collection scales with expert steps (random collection is negligible), pretraining with
    steps x batch, the ensemble with training transitions (assuming as many epochs).
    """
    out = {"expert_collection_s": 0.0, "pretraining_s": 0.0, "ensemble_s": 0.0}
    for rec in envs:
        expert = rec["collect"]["expert"]
        full_steps = FULL.expert_episodes * FULL.max_steps  # an upper bound: Hopper's may terminate early
        out["expert_collection_s"] += expert["seconds"] / max(expert["steps"], 1.0) * full_steps
        work = FULL.steps * FULL.batch_size / (budget.steps * budget.batch_size)
        out["pretraining_s"] += sum(run["wall_s"] for run in rec["pretraining"].values()) * work
        full_data = (FULL.random_episodes + FULL.expert_episodes) * FULL.max_steps * (1 - cfg.val_fraction)
        out["ensemble_s"] += rec["ensemble"]["seconds"] * full_data / rec["train_steps"]
    out["total_s"] = sum(out.values())
    return out


def pretrain_run(
    cfg: BenchConfig, budget: Budget, data: tuple[Path, ...], out: Path, weights: ObjectiveWeights
) -> dict[str, Any]:
    """Pretrain one transformer; return its checkpoint path, wall time and median tokens/s."""
    run = PretrainConfig(
        data=data, out=out, steps=budget.steps, batch_size=budget.batch_size, window=cfg.window,
        n_layer=cfg.n_layer, d_model=cfg.d_model, lr=cfg.lr, weights=weights, val_fraction=cfg.val_fraction,
        val_every=0, checkpoint_every=0, seed=cfg.seed, device=cfg.device, num_threads=cfg.num_threads,
        compile=cfg.compile, overwrite=True, progress=False, tensorboard=False,
        warmup_steps=min(200, budget.steps // 10),
    )  # fmt: skip
    result = pretrain(run)
    speeds = [float(row["tokens_per_s"]) for row in read_log(out / LOG_FILE)]
    speeds = speeds[1:] or speeds  # the first row carries the warm-up
    return {
        "checkpoint": result.checkpoint,
        "wall_s": result.wall_time_s,
        "tokens_per_s": statistics.median(speeds),
        "final_train_losses": result.train_losses,
    }


def bench_env(cfg: BenchConfig, budget: Budget, env: str) -> dict[str, Any]:
    """Everything for one env: data, three models, paired open-loop errors."""
    random_dir, random_timing = collect(cfg, budget, env, "random")
    expert_dir, expert_timing = collect(cfg, budget, env, "expert")
    dirs = (random_dir, expert_dir)
    runs = {}
    all_objectives = ObjectiveWeights(forward=cfg.forward_weight)
    for label, weights in (("all objectives", all_objectives), ("forward only", FORWARD_ONLY)):
        log(f"{env}: pretraining ({label}), {budget.steps} steps")
        runs[label] = pretrain_run(cfg, budget, dirs, cfg.work_dir / env / label.replace(" ", "-"), weights)
        log(f"{env}: {label}: {runs[label]['wall_s']:.0f} s, {runs[label]['tokens_per_s']:.0f} tokens/s")
    split = {"window": cfg.window, "val_fraction": cfg.val_fraction, "seed": cfg.seed}
    train_set = TrajectoryDataset(list(dirs), split="train", **split)
    val_set = TrajectoryDataset(list(dirs), split="val", **split)
    normalizer = train_set.normalizer()
    ens_config = EnsembleConfig(epochs=budget.ensemble_epochs)
    tic = time.perf_counter()
    ensemble, history = train_ensemble(train_set, ens_config, normalizer, seed=cfg.seed, device=cfg.device)
    ensemble_s = time.perf_counter() - tic
    log(f"{env}: ensemble {len(history.train_loss)} epochs, {history.steps} steps in {ensemble_s:.0f} s")
    models: dict[str, OpenLoopModel] = {}
    for label, run in runs.items():
        ckpt = load_checkpoint(run["checkpoint"], device=cfg.device)
        assert ckpt.normalizer is not None
        torch.testing.assert_close(ckpt.normalizer.obs_std.cpu(), normalizer.obs_std)  # same training split
        models[f"transformer ({label})"] = TransformerPredictor(
            ckpt.model, ckpt.normalizer, history=cfg.history
        )
    models["MLP ensemble (mean)"] = EnsembleMLPDynamics(ensemble, normalizer)
    results = compare_open_loop(
        models,
        val_set,
        normalizer,
        horizon=cfg.horizon,
        history=cfg.history,
        n_starts=budget.n_starts,
        seed=cfg.seed,
    )
    return {
        "env": env,
        "train_episodes": train_set.n_episodes,
        "train_steps": len(train_set),
        "val_episodes": val_set.n_episodes,
        "collect": {"random": random_timing, "expert": expert_timing},
        "pretraining": {k: {**v, "checkpoint": str(v["checkpoint"])} for k, v in runs.items()},
        "ensemble": {
            "seconds": ensemble_s,
            "epochs": len(history.train_loss),
            "steps": history.steps,
            "elites": history.elites,
            "stopped_early": history.stopped_early,
        },
        "open_loop": {name: r.to_dict() for name, r in results.items()},
    }


def markdown(
    cfg: BenchConfig,
    budget: Budget,
    envs: list[dict[str, Any]],
    info: dict[str, Any],
    estimate: dict[str, float] | None,
    merged: int = 1,
) -> str:
    """The results page: one row per env and model (``merged``: how many runs' records it combines)."""
    rows = []
    for rec in envs:
        for name, res in rec["open_loop"].items():
            run = rec["pretraining"].get(name.removeprefix("transformer (").removesuffix(")"))
            rows.append([
                rec["env"], name, f"{res['mse'][0]:.4f}", f"{res['mse'][-1]:.4f}", res["n_starts"],
                "-" if run is None else f"{run['tokens_per_s']:.0f}",
            ])  # fmt: skip
    table = markdown_table(
        ["env", "model", "MSE step 1", f"MSE step {cfg.horizon}", "starts", "pretrain tokens/s"], rows
    )
    verdicts = []
    for rec in envs:
        ol = rec["open_loop"]
        tf, ens = ol["transformer (all objectives)"]["mse"][-1], ol["MLP ensemble (mean)"]["mse"][-1]
        verdicts.append(
            f"- {rec['env']}: transformer (all objectives) {cfg.horizon}-step error {tf:.4f} vs ensemble {ens:.4f}: "
            f"target (transformer lower) {'met' if tf < ens else 'NOT met'}; "
            f"{rec['train_episodes']} train / {rec['val_episodes']} held-out episodes, {rec['train_steps']} train steps; "
            f"ensemble trained {rec['ensemble']['epochs']} epochs ({rec['ensemble']['steps']} steps"
            f"{', early-stopped' if rec['ensemble']['stopped_early'] else ''})."
        )
    where = f"single process, {cfg.device}" + (f" ({info['gpu']})" if info.get("gpu") else "")
    where += ", compiled" if cfg.compile else ""
    if merged > 1:
        where += f"; the {merged} envs ran as one process each, side by side on that device"
    if budget == FULL:
        mode = "full budget"
    elif cfg.quick:
        mode = "--quick: small budget, not the full benchmark"
    else:
        mode = "custom budget, not the full benchmark"
    return (
        f"# Pretraining benchmark: transformer vs MLP ensemble ({mode})\n\n"
        f"Open-loop MSE in standardized obs units on held-out episodes (same start points for every model, "
        f"K={cfg.history} real history steps, true actions, H={cfg.horizon}). Data per env: "
        f"{budget.random_episodes} random + {budget.expert_episodes} noisy oracle-MPC episodes "
        f"(noise {cfg.expert_noise}, ≤{budget.max_steps} steps each), {cfg.val_fraction:.0%} of each held out. "
        f"Transformer: {cfg.n_layer} layers, d={cfg.d_model}, window {cfg.window}, {budget.steps} steps of "
        f"batch {budget.batch_size}, peak lr {cfg.lr:g} ({where}, {cfg.num_threads} CPU threads). Ensemble: "
        f"{EnsembleConfig().members}×{EnsembleConfig().layers}×{EnsembleConfig().hidden} PETS MLP, ≤{budget.ensemble_epochs} epochs. "
        f"Measured {info['date']} on {info['processor']}, torch {info['torch']}.\n\n{table}\n\n"
        + "\n".join(verdicts)
        + "\n\nAblation: 'forward only' trains the forward-dynamics loss alone; 'all objectives' sums forward"
        + ("" if cfg.forward_weight == 1.0 else f" (weight {cfg.forward_weight:g}, the others 1)")
        + ", reward, inverse dynamics and random masked hindsight, which share each batch between their groups "
        "(the forward loss sees about a third of the windows), for the same number of steps.\n"
        + (
            ""
            if estimate is None
            else (
                f"\nA full-budget run (`python benchmarks/pretrain.py`) would take about {estimate['total_s'] / 3600:.1f} h "
                f"on this machine (scaled from this run: expert collection {estimate['expert_collection_s'] / 3600:.1f} h, "
                f"pretraining {estimate['pretraining_s'] / 3600:.1f} h, ensembles {estimate['ensemble_s'] / 60:.0f} min).\n"
            )
        )
    )


def merge_records(paths: tuple[Path, ...]) -> dict[str, Any]:
    """One record of several runs' envs; their settings other than ``envs``, ``name`` and ``out_dir``
    must agree (budget, models, seeds, device)."""
    records = []
    for path in paths:
        try:
            records.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise SystemExit(f"cannot read the record {path}: {err}") from err
    ignored = {"envs", "name", "out_dir", "merge"}

    defaults = {f.name: f.default for f in dataclasses.fields(BenchConfig)}  # for records older than a flag

    def settings(rec: dict[str, Any]) -> dict[str, Any]:
        config = {k: defaults[k] for k in defaults.keys() - rec["config"].keys()} | rec["config"]
        return {k: v for k, v in config.items() if k not in ignored} | {"budget": rec["budget"]}

    def flags(rec: dict[str, Any]) -> str:
        """The run's ``--quick``, ``--compile``, ``--lr``, ``--forward-weight`` and budget flags where
        they are not the defaults (budget: not the preset's)."""
        config = settings(rec)
        preset = dataclasses.asdict(QUICK if config["quick"] else FULL)
        numbers = {key: config[key] for key in ("lr", "forward_weight") if config[key] != defaults[key]}
        numbers |= {key: value for key, value in config["budget"].items() if value != preset[key]}
        switches = "".join(f" --{key}" for key in ("quick", "compile") if config[key])
        shown = {
            key: f"{value:g}" if isinstance(value, float) else str(value) for key, value in numbers.items()
        }
        return switches + "".join(f" --{key.replace('_', '-')} {value}" for key, value in shown.items())

    first = records[0]
    expected = settings(first)
    for path, rec in zip(paths[1:], records[1:], strict=True):
        given = settings(rec)
        diff = sorted(k for k in expected.keys() | given.keys() if expected.get(k) != given.get(k))
        if diff:
            raise SystemExit(f"{path} was run with other settings than {paths[0]}: {', '.join(diff)}")
    envs = [env for rec in records for env in rec["envs"]]
    names = [env["env"] for env in envs]
    if len(set(names)) != len(names):
        raise SystemExit(f"the records repeat an env: {names}")
    estimates = [rec["full_run_estimate_s"] for rec in records]
    estimate = None if None in estimates else {k: sum(e[k] for e in estimates) for k in estimates[0]}
    return {
        **first,
        "config": {**first["config"], "envs": names},
        "total_s": sum(rec["total_s"] for rec in records),
        "envs": envs,
        "full_run_estimate_s": estimate,
        "merged_from": [str(p) for p in paths],
        "command": " & ".join(
            f"python benchmarks/pretrain.py --envs {' '.join(rec['config']['envs'])} --device "
            f"{rec['config']['device']} --num-threads {rec['config']['num_threads']} --name {rec['config']['name']}"
            + flags(rec)
            for rec in records
        )
        + f" & wait; python benchmarks/pretrain.py --merge {' '.join(Path(p).name for p in paths)}",
    }


def main(cfg: BenchConfig) -> dict[str, Any]:
    """Run the benchmark for every env (or merge earlier runs' records) and write the results."""
    if cfg.merge:
        record = merge_records(cfg.merge)
        config = {**record["config"], "work_dir": Path(record["config"]["work_dir"]), "merge": ()}
        config |= {"out_dir": cfg.out_dir, "name": cfg.name, "envs": tuple(config["envs"])}
        budget = Budget(**record["budget"])
        page = markdown(
            BenchConfig(**config),
            budget,
            record["envs"],
            record["machine"],
            record["full_run_estimate_s"],
            merged=len(cfg.merge),
        )
        print(page)
        json_path, md_path = write_results(cfg.out_dir, cfg.name, record, page)
        log(f"wrote {json_path} and {md_path} (merged {len(cfg.merge)} records)")
        return record
    if cfg.forward_weight <= 0:
        raise SystemExit(f"--forward-weight must be > 0, got {cfg.forward_weight}")
    if cfg.history + cfg.horizon - 1 > cfg.window:
        raise SystemExit(
            f"--history {cfg.history} + --horizon {cfg.horizon} - 1 exceeds --window {cfg.window}"
        )
    torch.set_num_threads(cfg.num_threads)
    budget = resolve(cfg)
    started = time.perf_counter()
    envs = [bench_env(cfg, budget, env) for env in cfg.envs]
    info = machine_info()
    record = {
        "config": {**dataclasses.asdict(cfg), "work_dir": str(cfg.work_dir), "out_dir": str(cfg.out_dir)},
        "budget": dataclasses.asdict(budget),
        "machine": info,
        "total_s": time.perf_counter() - started,
        "envs": envs,
    }
    estimate = full_run_estimate(cfg, budget, envs) if budget != FULL else None
    record["full_run_estimate_s"] = estimate
    page = markdown(cfg, budget, envs, info, estimate)
    print(page)
    json_path, md_path = write_results(cfg.out_dir, cfg.name, record, page)
    log(f"wrote {json_path} and {md_path} ({record['total_s']:.0f} s in all)")
    return record


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
