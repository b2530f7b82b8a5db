"""Planner speed with the transformer world model, and the shared-prefix KV cache against full recompute.

Two measurements, both side by side in one run on the same inputs:

1. MPC: an :class:`~maskctrl.planner.mpc.MPCController` over :class:`TransformerDynamics` plans from the
   same recorded observations (a random-policy trajectory of the env) with the KV-cached rollout and
   with ``recompute=True``: control steps/s and imagined transitions/s (candidates x horizon scored).
2. Rollout: one batch of N candidates from one real history, the methods alternating, medians of
   ``--repeats``; the speedup of the model alone and the largest difference between their predictions.

A third variant, ``kv_compiled``, decodes with ``TransformerDynamics(compile=True)`` (a compiled,
shape-stable decoding step; on CUDA replayed from CUDA graphs like ``kv``, and ``kv_eager`` is the same
model decoded without graphs or compiling); its compile time falls in the warm-up step and is recorded
apart. The steps/s target reads the fastest KV variant.

Targets (issue 6): on CPU >= 6x KV speedup and >= 2 control steps/s with the default HalfCheetah model
(N=512, H=15, 4 iterations); on GPU >= 50 control steps/s. The checkpoint is ``--checkpoint``, else the
shipped default, else a quick tiny recipe run with a loud warning (the model's size, not its quality,
sets the speed, so such numbers are indicative only if the architecture matches).

    python benchmarks/planner_speed.py                    # CPU, default HalfCheetah model
    python benchmarks/planner_speed.py --device cuda --name planner_speed_gpu
    python benchmarks/planner_speed.py --quick            # smoke run

Writes ``benchmarks/results/planner_speed.{json,md}``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import tyro
from backbone import timed
from common import command_line, compiled_against, machine_info, planner_speed_table, write_results
from mpc_learned import BenchConfig as LearnedConfig
from mpc_learned import transformer_checkpoint

import maskctrl.envs  # noqa: F401  (registers the built-in envs)
from maskctrl.data.collect import RandomPolicy
from maskctrl.envs.registry import get_spec
from maskctrl.planner.dynamics import History, Rollout
from maskctrl.planner.mpc import MPCConfig, MPCController
from maskctrl.planner.transformer_dynamics import TransformerDynamics

CPU_SPEEDUP, CPU_STEPS, GPU_STEPS = 6.0, 2.0, 50.0


@dataclass(frozen=True, kw_only=True)
class SpeedConfig:
    """Options of the planner speed benchmark."""

    env: str = "HalfCheetah"
    """Env whose model plans."""
    checkpoint: Path | None = None
    """Transformer checkpoint (None: the shipped default, else a quick fallback)."""
    samples: int = 512
    """Candidates N per iteration."""
    horizon: int = 15
    """Planning horizon H."""
    iterations: int = 4
    """Optimizer iterations per control step."""
    optimizer: Literal["cem", "icem", "mppi"] = "cem"
    """Optimizer; CEM scores exactly N candidates per iteration (iCEM's population decays)."""
    control_steps: int = 10
    """Timed control steps of the KV-cached planner."""
    recompute_steps: int = 2
    """Timed control steps of the (slow) recompute planner."""
    repeats: int = 5
    """Rollout-level repeats per method (median taken)."""
    device: str = "cpu"
    """Where the model and the planner run."""
    bf16: bool = False
    """bfloat16 autocast for the transformer."""
    cuda_graphs: bool = True
    """On CUDA: replay the KV decoding from CUDA graphs, and time the eager KV decoding beside it."""
    compile: bool = True
    """Also time the KV decoding compiled with ``torch.compile`` (``kv_compiled``; inside the CUDA graphs
    on CUDA)."""
    threads: int | None = None
    """Torch intra-op threads (None: torch's default)."""
    seed: int = 0
    """Seed of the trajectory, the candidates and the planner."""
    work_dir: Path = Path("runs/bench_learned")
    """Cache of fallback models."""
    fallback_scale: float = 0.05
    """Scale of the quick recipe run when no checkpoint exists."""
    quick: bool = False
    """Smoke run: N=64, 2 + 1 control steps, 2 repeats."""
    out_dir: Path = Path("benchmarks/results")
    """Where the JSON and markdown go."""
    name: str = "planner_speed"
    """Stem of the output files."""


class CountingDynamics:
    """Counts the imagined transitions (candidates x horizon) a planner asks for."""

    def __init__(self, inner: TransformerDynamics) -> None:
        self.inner, self.transitions = inner, 0

    def rollout(self, history: History, actions: torch.Tensor) -> Rollout:
        """Delegate, counting ``N * H``."""
        self.transitions += actions.shape[0] * actions.shape[1]
        return self.inner.rollout(history, actions)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def observations(cfg: SpeedConfig, count: int) -> list[Any]:
    """``count`` consecutive observations of a random-policy run (reset when an episode ends)."""
    spec = get_spec(cfg.env)
    env = spec.make()
    policy = RandomPolicy(env.action_space, cfg.seed)
    obs, _ = env.reset(seed=cfg.seed)
    out = [obs]
    while len(out) < count:
        obs, _, terminated, truncated, _ = env.step(policy.predict(obs)[0])
        if terminated or truncated:
            obs, _ = env.reset()
        out.append(obs)
    env.close()
    return out


def time_controller(
    dynamics: TransformerDynamics, cfg: SpeedConfig, observed: list[Any], steps: int
) -> tuple[dict[str, Any], MPCController]:
    """Control steps/s and imagined transitions/s over ``steps`` planned steps after one warm-up step (each
    step's seconds kept too, and the rate of the median step: whether a slow run was slow throughout)."""
    spec = get_spec(cfg.env)
    counting = CountingDynamics(dynamics)
    env = spec.make()
    config = MPCConfig(
        optimizer=cfg.optimizer, horizon=cfg.horizon, samples=cfg.samples, iterations=cfg.iterations,
        device=cfg.device, seed=cfg.seed,
    )  # fmt: skip
    controller = MPCController(counting, spec, env.action_space, config)
    env.close()
    start = time.perf_counter()
    controller.predict(observed[0])  # warm-up: allocations, lazy initialization, compilation
    _sync(dynamics.device)
    warmup = time.perf_counter() - start
    counting.transitions = 0
    _sync(dynamics.device)
    step_seconds = []
    for obs in observed[1 : steps + 1]:
        start = time.perf_counter()
        controller.predict(obs)
        _sync(dynamics.device)
        step_seconds.append(time.perf_counter() - start)
    seconds = sum(step_seconds)
    return {
        "control_steps": steps,
        "warmup_s": warmup,
        "seconds": seconds,
        "control_steps_per_s": steps / seconds,
        "control_steps_per_s_median": 1.0 / statistics.median(step_seconds),
        "step_seconds": step_seconds,
        "imagined_transitions_per_s": counting.transitions / seconds,
    }, controller


def time_rollouts(
    variants: dict[str, TransformerDynamics], history: History, cfg: SpeedConfig
) -> dict[str, Any]:
    """Median seconds of one ``[N,H,A]`` rollout per variant (alternating), and their largest difference
    from the ``"kv"`` variant's predictions."""
    kv = variants["kv"]
    spec = get_spec(cfg.env)
    env = spec.make()
    low, high = (
        torch.as_tensor(b, dtype=torch.float32, device=kv.device)
        for b in (env.action_space.low, env.action_space.high)
    )
    env.close()
    gen = torch.Generator(device=kv.device).manual_seed(cfg.seed)
    actions = low + (high - low) * torch.rand(
        cfg.samples, cfg.horizon, spec.act_dim, generator=gen, device=kv.device
    )
    times: dict[str, list[float]] = {name: [] for name in variants}
    outs: dict[str, Rollout] = {}
    for _ in range(cfg.repeats + 1):  # the first round warms up
        for name, dyn in variants.items():
            # A fresh History object, so that the prefix encoding is timed too.
            fresh = History(obs=history.obs.clone(), act=history.act, valid=history.valid, env_index=0)
            _sync(kv.device)

            def call(dyn: TransformerDynamics = dyn, name: str = name, fresh: History = fresh) -> None:
                outs[name] = dyn.rollout(fresh, actions)
                _sync(kv.device)

            times[name].append(timed(call))
    medians = {name: statistics.median(t[1:]) for name, t in times.items()}
    out: dict[str, Any] = {f"{name}_s_median": m for name, m in medians.items()}
    out |= {f"{name}_s_all": t[1:] for name, t in times.items()}
    out["speedup"] = medians["recompute"] / medians["kv"]
    if "kv_eager" in medians:
        out["graph_speedup"] = medians["kv_eager"] / medians["kv"]
    if "kv_compiled" in medians:
        out["compile_speedup"] = medians["kv"] / medians["kv_compiled"]
    others = [name for name in variants if name != "kv"]
    diffs = {
        name: {
            key: float((getattr(outs["kv"], key) - getattr(outs[name], key)).abs().max())
            for key in ("next_obs", "reward")
        }
        for name in others
    }
    out["max_abs_diff_from_kv"] = diffs  # per variant
    for key in ("next_obs", "reward"):
        out[f"max_abs_diff_{key}"] = max(diff[key] for diff in diffs.values())
    return out


def render(record: dict[str, Any]) -> str:
    """The markdown report."""
    cfg, mpc, roll, model = record["config"], record["mpc"], record["rollout"], record["model"]
    table = planner_speed_table(record)
    targets = "\n".join(
        f"- {t['what']}: {t['value']:.2f} (target >= {t['target']:g}): {'met' if t['met'] else 'NOT met'}"
        for t in record["targets"]
    )
    info = record["machine"]
    return (
        f"# Planner speed: {cfg['env']} transformer world model\n\n"
        f"{cfg['optimizer']}, N={cfg['samples']}, H={cfg['horizon']}, {cfg['iterations']} iterations, device "
        f"{record['device_name']}, bf16={cfg['bf16']}, torch threads {info['torch_threads']}; model "
        f"{model['path']} ({model['provenance']}: {model['n_layer']} layers, d={model['d_model']}, "
        f"context {model['context_len']}, {model['params']:,} parameters), history K={model['history']}.\n"
        f"Measured {info['date']} on {info['processor']} x{info['cpu_count']} (shared machine: ratios are "
        "the robust numbers).\n\n"
        f"{table}\n\nKV speedup: {roll['speedup']:.1f}x per rollout, "
        f"{mpc['kv']['control_steps_per_s'] / mpc['recompute']['control_steps_per_s']:.1f}x per control step"
        + (
            f"; CUDA graphs {roll['graph_speedup']:.1f}x per rollout over eager KV decoding"
            if "graph_speedup" in roll
            else ""
        )
        + (
            f"; torch.compile {roll['compile_speedup']:.2f}x per rollout over {compiled_against(record)} (largest "
            f"difference {roll['max_abs_diff_from_kv']['kv_compiled']['next_obs']:.1e}; its first "
            f"control step, which compiled, took {mpc['kv_compiled']['warmup_s']:.0f} s"
            f"{' from an empty inductor cache' if record.get('inductor_cache') == 'fresh' else ''})"
            if "compile_speedup" in roll
            else ""
        )
        + f"; largest difference from kv: next_obs {roll['max_abs_diff_next_obs']:.1e}, "
        f"reward {roll['max_abs_diff_reward']:.1e}.\n\n"
        f"{targets}\n"
    )


def main(cfg: SpeedConfig) -> dict[str, Any]:
    """Measure, print the markdown and write JSON and markdown."""
    if cfg.quick:
        cfg = SpeedConfig(
            **{
                **asdict(cfg),
                "samples": 64,
                "control_steps": 2,
                "recompute_steps": 1,
                "repeats": 2,
                "quick": True,
            }
        )
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    spec = get_spec(cfg.env)
    learned = LearnedConfig(
        transformer=(f"{cfg.env}={cfg.checkpoint}",) if cfg.checkpoint else (), work_dir=cfg.work_dir,
        fallback_scale=cfg.fallback_scale, horizon=cfg.horizon,
    )  # fmt: skip
    path, provenance = transformer_checkpoint(cfg.env, learned)
    on_cuda = torch.device(cfg.device).type == "cuda"
    kv = TransformerDynamics.from_checkpoint(
        path, spec, device=cfg.device, bf16=cfg.bf16, cuda_graphs=cfg.cuda_graphs if on_cuda else None
    )
    variants = {"kv": kv}
    if kv.cuda_graphs:  # the same model decoded eagerly, for the graphs' speedup
        variants["kv_eager"] = TransformerDynamics(
            kv.model, kv.normalizer, spec, bf16=cfg.bf16, cuda_graphs=False
        )
    fresh_cache = None
    if cfg.compile:
        if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
            # Inductor keeps compiled kernels between processes (under /tmp): a fresh cache makes the
            # recorded compile time a first run's.
            fresh_cache = os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(
                prefix="maskctrl-inductor-"
            )
        variants["kv_compiled"] = TransformerDynamics(
            kv.model, kv.normalizer, spec, bf16=cfg.bf16, compile=True
        )
    variants["recompute"] = TransformerDynamics(kv.model, kv.normalizer, spec, bf16=cfg.bf16, recompute=True)
    observed = observations(cfg, cfg.control_steps + 1)
    mpc: dict[str, dict[str, Any]] = {}
    for name, dyn in variants.items():
        steps = cfg.recompute_steps if name == "recompute" else cfg.control_steps
        mpc[name], controller = time_controller(dyn, cfg, observed, steps)
        if name == "kv":
            kv_controller = controller
    rollout = time_rollouts(variants, kv_controller.history(0), cfg)
    if fresh_cache is not None:
        shutil.rmtree(fresh_cache, ignore_errors=True)
        del os.environ["TORCHINDUCTOR_CACHE_DIR"]
    fastest = max((name for name in mpc if name != "recompute"), key=lambda n: mpc[n]["control_steps_per_s"])
    model_cfg = kv.model.config
    steps_target = GPU_STEPS if kv.device.type == "cuda" else CPU_STEPS
    targets = [
        {
            "what": f"control steps/s ({fastest})",
            "value": mpc[fastest]["control_steps_per_s"],
            "target": steps_target,
        }
    ]
    if kv.device.type != "cuda":
        targets.append({"what": "KV speedup per rollout", "value": rollout["speedup"], "target": CPU_SPEEDUP})
    for target in targets:
        target["met"] = bool(target["value"] >= target["target"])
    record = {
        "command": command_line("planner_speed.py", cfg),
        "config": {**asdict(cfg), "checkpoint": str(cfg.checkpoint) if cfg.checkpoint else None,
                   "work_dir": str(cfg.work_dir), "out_dir": str(cfg.out_dir)},
        "machine": machine_info(),
        "device_name": torch.cuda.get_device_name(kv.device) if kv.device.type == "cuda" else "cpu",
        "model": {"path": str(path), "provenance": provenance, "n_layer": model_cfg.n_layer,
                  "d_model": model_cfg.d_model, "context_len": model_cfg.context_len,
                  "params": sum(p.numel() for p in kv.model.parameters()),
                  "history": kv.window_plan(MPCConfig().history_len, cfg.horizon)[0]},
        "mpc": mpc,
        "inductor_cache": None if "kv_compiled" not in mpc else "fresh" if fresh_cache else "as found",
        "rollout": rollout,
        "targets": targets,
    }  # fmt: skip
    markdown = render(record)
    print(markdown)
    json_path, md_path = write_results(cfg.out_dir, cfg.name, record, markdown)
    print(f"wrote {json_path}, {md_path}", file=sys.stderr)
    return record


if __name__ == "__main__":
    main(tyro.cli(SpeedConfig))
