"""Backbone benchmark: pretraining throughput, and shared-prefix KV decoding against full recompute.

Both measurements run side by side in one process; the decode comparison alternates the two methods
within each repeat and reports medians and their ratio, because absolute times on a shared machine are
noise. Writes ``benchmarks/results/backbone.json`` and ``backbone.md``.

    python benchmarks/backbone.py [--repeats 5] [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskctrl.data.synthetic import LinearSystem
from maskctrl.models.kv_cache import imagine, imagine_recompute
from maskctrl.models.objectives import ObjectiveWeights, pretraining_loss
from maskctrl.models.transformer import MaskedControlTransformer, TransformerConfig

RESULTS = Path(__file__).resolve().parent / "results"
OBS_DIM, ACT_DIM = 17, 6  # HalfCheetah-sized


def timed(fn: Callable[[], object]) -> float:
    """Seconds taken by one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_training(batch: int, steps: int, repeats: int, iters: int) -> dict[str, Any]:
    """Tokens per second of pretraining_loss forward + backward + AdamW step."""
    config = TransformerConfig(
        obs_dim=OBS_DIM, act_dim=ACT_DIM, context_len=steps, n_layer=4, n_head=4, d_model=128
    )
    torch.manual_seed(0)
    model = MaskedControlTransformer(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    rng = np.random.default_rng(0)
    data = LinearSystem.random(OBS_DIM, ACT_DIM, rng).windows(batch, steps, rng, pad_fraction=0.2)
    gen = torch.Generator().manual_seed(0)
    weights = ObjectiveWeights()

    def train_steps(count: int) -> None:
        for _ in range(count):
            loss = pretraining_loss(model, data, weights=weights, generator=gen).total
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    train_steps(2)  # warm-up
    times = [timed(lambda: train_steps(iters)) / iters for _ in range(repeats)]
    step_s = statistics.median(times)
    return {
        "config": asdict(config),
        "batch": batch,
        "steps_per_window": steps,
        "tokens_per_step": batch * 2 * steps,
        "step_s_median": step_s,
        "step_s_all": times,
        "tokens_per_s": batch * 2 * steps / step_s,
        "params": sum(p.numel() for p in model.parameters()),
    }


def bench_decode(n: int, horizon: int, history: int, repeats: int) -> dict[str, Any]:
    """Median seconds of a KV-cached rollout and of a full-recompute rollout, and their difference."""
    config = TransformerConfig(
        obs_dim=OBS_DIM, act_dim=ACT_DIM, context_len=history + horizon, n_layer=4, n_head=4, d_model=128
    )
    torch.manual_seed(0)
    model = MaskedControlTransformer(config).eval()
    gen = torch.Generator().manual_seed(1)
    obs = torch.randn(1, history, OBS_DIM, generator=gen)
    act = torch.rand(1, history, ACT_DIM, generator=gen) * 2 - 1
    valid = torch.ones(1, history, dtype=torch.bool)
    valid[0, :3] = False  # a history that starts 3 steps into its window, like early in an episode
    actions = torch.rand(n, horizon, ACT_DIM, generator=gen) * 2 - 1  # [N, H, A]
    with torch.inference_mode():
        cached = imagine(model, obs, act, actions, valid=valid)  # warm-up, and the equality check
        full = imagine_recompute(model, obs, act, actions, valid=valid)
        diff_obs = (cached.next_obs - full.next_obs).abs().max().item()
        diff_rew = (cached.reward - full.reward).abs().max().item()
        kv_times, full_times = [], []
        for _ in range(repeats):
            kv_times.append(timed(lambda: imagine(model, obs, act, actions, valid=valid)))
            full_times.append(timed(lambda: imagine_recompute(model, obs, act, actions, valid=valid)))
    kv_s, full_s = statistics.median(kv_times), statistics.median(full_times)
    return {
        "config": asdict(config),
        "candidates": n,
        "horizon": horizon,
        "history": history,
        "kv_s_median": kv_s,
        "full_s_median": full_s,
        "kv_s_all": kv_times,
        "full_s_all": full_times,
        "speedup": full_s / kv_s,
        "max_abs_diff_next_obs": diff_obs,
        "max_abs_diff_reward": diff_rew,
        "max_abs_next_obs": cached.next_obs.abs().max().item(),
    }


def markdown(train: dict[str, Any], decode: dict[str, Any], meta: dict[str, Any]) -> str:
    """The results as a markdown table."""
    lines = [
        f"Backbone benchmark ({meta['device']}, {meta['threads']} threads, torch {meta['torch']}, "
        f"{meta['repeats']} repeats, medians; shared machine: compare ratios, not absolute times)",
        "",
        "| measurement | setting | result |",
        "|---|---|---|",
        f"| pretraining (fwd+bwd+AdamW) | 4 layers, d=128, 4 heads, B={train['batch']}, "
        f"T={train['steps_per_window']} | {train['tokens_per_s']:,.0f} tokens/s "
        f"({train['step_s_median'] * 1e3:.1f} ms/step) |",
        f"| KV-cached rollout | N={decode['candidates']}, H={decode['horizon']}, K={decode['history']}, "
        f"O={OBS_DIM}, A={ACT_DIM} | {decode['kv_s_median'] * 1e3:.1f} ms |",
        f"| full-recompute rollout | same | {decode['full_s_median'] * 1e3:.1f} ms |",
        f"| speedup (full / KV) | same | {decode['speedup']:.1f}x |",
        f"| max abs difference | next_obs / reward | {decode['max_abs_diff_next_obs']:.2e} / "
        f"{decode['max_abs_diff_reward']:.2e} |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run both benchmarks and write the results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median taken)")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run (N=64, 2 repeats)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for backbone.json and backbone.md")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else args.repeats
    n = 64 if args.quick else 512
    train = bench_training(batch=64, steps=16, repeats=repeats, iters=2 if args.quick else 5)
    decode = bench_decode(n=n, horizon=15, history=10, repeats=repeats)
    meta = {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "repeats": repeats,
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    table = markdown(train, decode, meta)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "backbone.json").write_text(
        json.dumps({"meta": meta, "training": train, "decode": decode}, indent=2)
    )
    (args.out / "backbone.md").write_text(table)


if __name__ == "__main__":
    main()
