"""Write the README's generated sections from the files that hold the numbers, or check that it is current.

    python benchmarks/readme_results.py           # rewrite the generated sections of README.md
    python benchmarks/readme_results.py --check   # exit 1 (and say which section) if README.md is stale

Two sections are generated, each between marker comments that stay in the README::

    <!-- results:start --> ... <!-- results:end -->          from benchmarks/results/*.json
    <!-- checkpoints:start --> ... <!-- checkpoints:end -->  from maskctrl/checkpoints/<Env>/config.json

A benchmark whose JSON is missing is listed as "not yet measured" with the command that measures it, so
the README never shows a number that no file holds. The text depends only on those files (no clock, no
machine), so ``--check`` is reproducible; ``tests/test_readme.py`` runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import compiled_against, fmt_mean_std, markdown_table, planner_speed_table

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
CHECKPOINTS = ROOT / "maskctrl" / "checkpoints"

Record = dict[str, Any]


def _measured(record: Record, stem: str) -> str:
    """``"measured DATE on CPU x2, torch T; details: [file](link)"``."""
    info = record.get("machine") or record.get("meta") or {}
    where = info.get("processor") or info.get("machine") or "?"
    if info.get("cpu_count"):
        where += f" x{info['cpu_count']}"
    gpu = info.get("gpu") or (record.get("device_name") if record.get("device_name") != "cpu" else None)
    if gpu:
        where += f" with an {gpu}"
    link = f"benchmarks/results/{stem}.md"
    return f"measured {info.get('date', '?')} on {where}, torch {info.get('torch', '?')}; details: [{link}]({link})"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _verdict(met: bool | None) -> str:
    return "not measured" if met is None else ("met" if met else "**not met**")


def mpc_learned(record: Record) -> str:
    """Per env: returns of random, oracle, transformer and MLP-ensemble MPC; transformer vs oracle."""
    rows = record["rows"]
    verdicts = {v["env"]: v for v in record["verdicts"]}
    methods = ("random", "oracle", "transformer", "mlp")
    cells = []
    for env in dict.fromkeys(r["env"] for r in rows):
        by = {r["method"]: r for r in rows if r["env"] == env}
        v = verdicts.get(env, {})
        score = v.get("ratio") if v.get("ratio") is not None else v.get("normalized")
        target = (
            "-" if v.get("ratio_target") is None else f"≥ {v['ratio_target']:g}: {_verdict(v['ratio_met'])}"
        )
        cells.append(
            [
                env,
                *(fmt_mean_std(by[m]["returns"]) if m in by else "-" for m in methods),
                _ratio(score),
                target,
            ]
        )
    headers = [
        "env",
        "random",
        "MPC, oracle",
        "MPC, transformer",
        "MPC, MLP ensemble",
        "transformer/oracle",
        "target",
    ]
    models = {(m["env"], m["kind"]): m["provenance"] for m in record.get("models", [])}
    fallback = sorted({f"{env} {kind}" for (env, kind), p in models.items() if "fallback" in p})
    notes = [f"Same planner (each env's preset, {record['config']['optimizer']}) and seeds in every MPC row."]
    priors = [
        f"{r['env']} {r['policy_prior']:g}"
        for r in rows
        if r["method"] == "transformer" and r.get("policy_prior")
    ]
    if priors:
        notes.append(
            "Of the same number of candidates, the transformer's policy head proposes a share "
            f"(`POLICY_PRIOR`, TD-MPC2 style): {', '.join(priors)}."
        )
    if record["config"].get("max_steps"):
        notes.append(f"Episodes capped at {record['config']['max_steps']} steps.")
    if fallback:
        notes.append(f"**Quick fallback models, not the shipped ones:** {', '.join(fallback)}.")
    notes.append("transformer/oracle is the plain ratio where the oracle's return is positive, else "
                 "(R − R_random) / (R_oracle − R_random).")  # fmt: skip
    beats = [
        f"{v['env']} {_verdict(v['beats_mlp'])}" for v in record["verdicts"] if v.get("beats_mlp_required")
    ]
    if beats:
        notes.append(f"Target transformer ≥ MLP ensemble: {'; '.join(beats)}.")
    return f"{markdown_table(headers, cells)}\n\n{' '.join(notes)}"


def mpc_oracle(record: Record) -> str:
    """Per env: random vs oracle MPC with each optimizer at the env's budget."""
    rows = record["rows"]
    cells = []
    for env in dict.fromkeys(r["env"] for r in rows):
        by = {r["method"]: r for r in rows if r["env"] == env}
        planned = next((r for r in by.values() if r["method"] != "random"), None)
        budget = (
            "-"
            if planned is None
            else f"{planned['samples']} / {planned['horizon']} / {planned['iterations']}"
            + (f" (×{planned['action_repeat']} held)" if (planned.get("action_repeat") or 1) > 1 else "")
        )
        speed = fmt_mean_std(by["icem"]["steps_per_second"]) if "icem" in by else "-"
        returns = [
            fmt_mean_std(by[m]["returns"]) + (" + critic" if by[m].get("safety_critic") else "")
            if m in by
            else "-"
            for m in ("random", "cem", "icem", "mppi")
        ]
        cells.append([env, budget, *returns, speed])
    headers = ["env", "N / H / iters", "random", "CEM", "iCEM", "MPPI", "iCEM steps/s"]
    return (
        f"{markdown_table(headers, cells)}\n\nPlanning in the true simulator (`mujoco.rollout`): the upper "
        'bound a learned model can reach at the same budget. "+ critic": planned with the env\'s shipped '
        "safety critic (a learned fall probability at the horizon's end) and its objective, as `maskctrl mpc` "
        "does by default for the oracle with the optimizers it was tuned with (see "
        "[Hopper's safety critic](#hoppers-safety-critic))."
    )


def planner_speed(record: Record) -> str:
    """KV-cached vs full-recompute planning with the transformer world model."""
    cfg, roll, model = record["config"], record["rollout"], record["model"]
    targets = "; ".join(f"{t['what']} {t['value']:.2f} (target ≥ {t['target']:g}): {_verdict(t['met'])}"
                        for t in record["targets"])  # fmt: skip
    return (
        f"{cfg['env']}, {cfg['optimizer']} N={cfg['samples']}, H={cfg['horizon']}, {cfg['iterations']} iterations"
        f" on {record['device_name']}; model {model['provenance']} ({model['n_layer']} layers, "
        f"d={model['d_model']}, {model['params']:,} parameters){' — quick run' if cfg.get('quick') else ''}.\n\n"
        f"{planner_speed_table(record)}\n\nShared-prefix KV cache: {roll['speedup']:.1f}× faster per rollout "
        f"than recomputing the window, largest difference {_diff(roll, 'recompute'):.1e}."
        + (
            f" Compiled (`TransformerDynamics(compile=True)`, `kv_compiled`): {roll['compile_speedup']:.2f}× "
            f"faster per rollout than {compiled_against(record)} (largest difference "
            f"{_diff(roll, 'kv_compiled'):.1e}), "
            f"after a first control step of {record['mpc']['kv_compiled']['warmup_s']:.0f} s that compiled."
            if "compile_speedup" in roll
            else ""
        )
        + f" {targets}."
    )


def _diff(roll: dict[str, Any], name: str) -> float:
    """Largest |next_obs| difference of rollout variant ``name`` from the KV rollout (older records: of all)."""
    per_variant = roll.get("max_abs_diff_from_kv")
    return float(per_variant[name]["next_obs"] if per_variant else roll["max_abs_diff_next_obs"])


def backbone(record: Record) -> str:
    """Pretraining throughput and the KV-cached rollout against full recompute, one model."""
    train, decode = record["training"], record["decode"]
    c = train["config"]
    quick = " (quick run)" if record["meta"].get("quick") else ""
    return (
        f"A {c['n_layer']}-layer, d={c['d_model']} transformer ({train['params']:,} parameters){quick}: "
        f"pretraining {train['tokens_per_s']:,.0f} tokens/s (batch {train['batch']} × "
        f"{train['steps_per_window']} steps); a rollout of N={decode['candidates']} candidates, "
        f"H={decode['horizon']} from K={decode['history']} real steps takes {decode['kv_s_median'] * 1e3:.0f} ms "
        f"with the shared-prefix KV cache and {decode['full_s_median'] * 1e3:.0f} ms recomputed "
        f"({decode['speedup']:.1f}×, largest difference {decode['max_abs_diff_next_obs']:.1e})."
    )


def pretrain(record: Record) -> str:
    """Held-out open-loop error of the transformer (with and without the other objectives) vs the ensemble."""
    cells = []
    horizon = 0
    for env in record["envs"]:
        for model, res in env["open_loop"].items():
            horizon = len(res["mse"])
            cells.append([env["env"], model, f"{res['mse'][0]:.4f}", f"{res['mse'][-1]:.4f}"])
    headers = ["env", "model", "MSE, step 1", f"MSE, step {horizon}"]
    budget = record["budget"]
    if record["config"].get("quick"):
        quick = "**A `--quick` run (small budget), not the full benchmark.** "
    elif record.get("full_run_estimate_s") is not None:  # set whenever the budget differs from the full one
        quick = "**A reduced-budget run, not the full benchmark.** "
    else:
        quick = ""
    verdicts = [f"{env['env']} {_verdict(_below_ensemble(env))}" for env in record["envs"]]
    return (
        f"{quick}Open-loop prediction error on held-out episodes (standardized observations, true actions); "
        f"{budget['random_episodes']} random + {budget['expert_episodes']} expert episodes per env, "
        f"{budget['steps']} pretraining steps.\n\n{markdown_table(headers, cells)}\n\n"
        f"Target (transformer with all objectives below the ensemble at step {horizon}): {'; '.join(verdicts)}."
    )


def _final_errors(env: Record) -> dict[str, float]:
    """Each model's error at the last step of the horizon, by model name, for one env of a pretrain record."""
    return {model: res["mse"][-1] for model, res in env["open_loop"].items()}


def _below_ensemble(env: Record) -> bool:
    """Whether the all-objectives transformer's last-step error is below the ensemble's (the target)."""
    final = _final_errors(env)
    return final["transformer (all objectives)"] < final["MLP ensemble (mean)"]


def pretrain_side(stem: str, record: Record) -> str:
    """One line for another run of the pretraining benchmark (other settings or fewer envs): its budget and
    each env's step-H errors, with whether the all-objectives transformer is below the ensemble."""
    cfg, budget = record["config"], record["budget"]
    settings = [f"{budget['steps']} steps of batch {budget['batch_size']}", f"d={cfg.get('d_model', 128)}"]
    if cfg.get("lr") is not None:
        settings.append(f"lr {cfg['lr']:g}")
    if cfg.get("forward_weight") not in (None, 1.0):
        settings.append(f"forward weight {cfg['forward_weight']:g}")
    if cfg.get("compile"):
        settings.append("compiled")
    envs = []
    for env in record["envs"]:
        final, horizon = _final_errors(env), len(env["open_loop"]["MLP ensemble (mean)"]["mse"])
        envs.append(
            f"{env['env']} step-{horizon} MSE: all objectives {final['transformer (all objectives)']:.4f}, "
            f"forward only {final['transformer (forward only)']:.4f}, "
            f"ensemble {final['MLP ensemble (mean)']:.4f} "
            f"(all objectives below the ensemble: {'yes' if _below_ensemble(env) else 'no'})"
        )
    link = f"benchmarks/results/{stem}.md"
    return f"- [{stem}]({link}) ({', '.join(settings)}; {_measured(record, stem).split(';')[0]}): {'; '.join(envs)}."


def bc(record: Record) -> str:
    """BC return against the number of expert episodes, pretrained backbone vs scratch."""
    cells = []
    for env in record["envs"]:
        for r in env["rows"]:
            returns = [x for run in r["runs"] for x in run["returns"]]
            history = "/".join(str(run.get("window", "-")) for run in r["runs"])  # per training seed
            cells.append([env["env"], r["episodes"], r["init"], history, fmt_mean_std(returns),
                          f"{r['normalized']:.2f}"])  # fmt: skip
    headers = ["env", "expert episodes", "backbone", "history K", "return", "normalized"]
    refs = "; ".join(
        f"{e['env']}: expert {fmt_mean_std(e['expert_returns'])}, random {fmt_mean_std(e['random_returns'])}, "
        f"target {e['targets']['what']}: {_verdict(e['targets']['met'])}"
        for e in record["envs"]
    )
    cap = record["config"].get("max_steps")
    capped = f" Episodes capped at {cap} steps." if cap else ""
    return f"{markdown_table(headers, cells)}\n\nnormalized = (R − R_random) / (R_expert − R_random). {refs}.{capped}"


def sb3(record: Record) -> str:
    """PPO with the frozen pretrained extractor vs ``MlpPolicy``."""
    cells = []
    for r in record["rows"]:
        hit = [t for t in r["timesteps_to_threshold"] if t is not None]
        cells.append([r["env"], r["method"], fmt_mean_std(r["eval_return"]), f"{r['threshold']:g}", r["reached"],
                      fmt_mean_std(hit, digits=0) if hit else "-"])  # fmt: skip
    headers = ["env", "policy", "eval return", "threshold", "seeds reaching it", "timesteps to threshold"]
    cfg = record["config"]
    return f"PPO, {cfg['timesteps']:,} timesteps per run, seeds {cfg['seeds']}.\n\n{markdown_table(headers, cells)}"


BENCHMARKS: tuple[tuple[str, str, Callable[[Record], str]], ...] = (
    ("mpc_learned", "MPC with the pretrained transformer as world model", mpc_learned),
    ("mpc_oracle", "Oracle MPC (planning in the true simulator)", mpc_oracle),
    ("planner_speed", "Planner speed", planner_speed),
    ("planner_speed_gpu", "Planner speed on a GPU", planner_speed),
    ("backbone", "Backbone throughput", backbone),
    ("pretrain", "Pretraining: open-loop error, transformer vs MLP ensemble", pretrain),
    ("bc", "Behaviour cloning: pretrained vs scratch", bc),
    ("sb3", "Stable-Baselines3 PPO: frozen pretrained extractor vs MlpPolicy", sb3),
)
"""``(JSON stem, title, renderer)`` in README order; the command is ``python benchmarks/<stem>.py``
unless :data:`COMMANDS` names another."""

SIDE_RECORDS: dict[str, Callable[[str, Record], str]] = {"pretrain": pretrain_side}
"""Benchmarks whose other runs (``<stem>_*.json``: other settings or fewer envs) are listed under their table,
one line each, by the given renderer; they are not the benchmark's result."""

COMMANDS = {"planner_speed_gpu": "python benchmarks/planner_speed.py --device cuda --name planner_speed_gpu"}
"""Commands of the results that ``python benchmarks/<stem>.py`` does not write."""


def render_results(results: Path) -> str:
    """The results section: one subsection per benchmark, "not yet measured" where its JSON is missing.

    :raises ValueError: a JSON exists but does not have the layout its renderer reads.
    """
    parts = []
    for stem, title, render in BENCHMARKS:
        path = results / f"{stem}.json"
        head = f"#### {title}\n\n"
        command = COMMANDS.get(stem, f"python benchmarks/{stem}.py")
        if not path.exists():
            parts.append(f"{head}*Not yet measured:* run `{command}`.")
            continue
        record = json.loads(path.read_text())
        try:
            body = render(record)
        except (KeyError, TypeError, IndexError) as err:
            raise _layout_error(path, err, render) from err
        command = record.get("command", command)  # a record made otherwise (e.g. merged runs) says how
        stale = _rebuilt_since(record)
        if stale:
            body += f"\n\n*Measured with earlier shipped backbones, since rebuilt: {stale}.*"
        parts.append(
            f"{head}`{command}`, {_measured(record, stem)}\n\n{body}{_side_records(results, stem, record)}"
        )
    return "\n\n".join(parts)


def _layout_error(path: Path, err: Exception, render: Callable[..., str]) -> ValueError:
    return ValueError(
        f"{path} does not have the layout benchmarks/readme_results.py reads ({type(err).__name__}: {err}); "
        f"update its renderer {render.__name__}()"
    )


def _side_records(results: Path, stem: str, record: Record) -> str:
    """The list of ``stem``'s other runs (:data:`SIDE_RECORDS`), or ``""``; the per-env records that
    ``record`` was merged from (its ``merged_from``) are part of it, not other runs."""
    render = SIDE_RECORDS.get(stem)
    merged = {Path(source).name for source in record.get("merged_from", [])}
    paths = sorted(p for p in results.glob(f"{stem}_*.json") if p.name not in merged) if render else []
    if render is None or not paths:
        return ""
    lines = []
    for path in paths:
        try:
            lines.append(render(path.stem, json.loads(path.read_text())))
        except (KeyError, TypeError, IndexError, json.JSONDecodeError) as err:
            raise _layout_error(path, err, render) from err
    return "\n\nOther runs with other settings or fewer envs (not the benchmark's result):\n\n" + "\n".join(
        lines
    )


def _rebuilt_since(record: Record) -> str:
    """The shipped checkpoints a record names (``.../maskctrl/checkpoints/<Env>``) that were rebuilt after
    it was measured, as ``"Env (rebuilt DATE)"``; empty when none was."""
    measured = (record.get("machine") or record.get("meta") or {}).get("date")
    if not measured:
        return ""
    named: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and "maskctrl/checkpoints/" in value:
            named.add(value.split("maskctrl/checkpoints/", 1)[1].split("/")[0])

    walk(record)
    rebuilt = []
    for env in sorted(named):
        config = CHECKPOINTS / env / "config.json"
        built = json.loads(config.read_text()).get("metadata", {}).get("built") if config.exists() else None
        if built and built.replace("T", " ")[:19] > measured:  # both UTC, ISO order
            rebuilt.append(f"{env} (rebuilt {built[:10]})")
    return ", ".join(rebuilt)


def render_checkpoints(root: Path) -> str:
    """A table of the shipped default backbones, read from their ``config.json``, with how each was scored."""
    cells, scored = [], []
    for config in sorted(root.glob("*/config.json")):
        saved = json.loads(config.read_text())
        model, meta = saved["model"], saved.get("metadata", {})
        data = meta.get("data", {})
        episodes = " + ".join(
            f"{d['summary']['n_episodes']} {_data_kind(kind)}" for kind, d in data.items() if "summary" in d
        )
        val = meta.get("val_losses") or {}
        size = sum(p.stat().st_size for p in config.parent.iterdir() if p.is_file()) / 1e6
        score = _transformer_score(meta.get("score"))
        if score != "-":
            prior = _transformer_row(meta.get("score")).get("policy_prior")
            with_prior = f" with policy prior {prior:g}" if prior else ""
            scored.append(
                f"{config.parent.name}: `{meta['score']['how']}`{with_prior}, {meta['score']['measured'][:10]}"
            )
        cells.append([
            config.parent.name, f"{model['n_layer']} × {model['d_model']}, context {model['context_len']}",
            f"{size:.1f} MB", episodes or "-", saved.get("step", "-"),
            "-" if "forward" not in val else f"{val['forward']:.4f}",
            "-" if meta.get("train_seconds") is None else f"{meta['train_seconds'] / 60:.0f} min", score,
        ])  # fmt: skip
    if not cells:
        return "*No default checkpoint is shipped yet:* build them with `make checkpoints`."
    headers = ["env", "layers × width", "size", "episodes", "steps", "val forward loss"]
    headers += ["pretraining", "MPC score"]
    note = (
        "MPC score: `(R_transformer − R_random) / (R_oracle − R_random)` of MPC with the backbone as world "
        "model, next to random actions and oracle MPC at the same budget, as the recipe recorded it"
    )
    return markdown_table(headers, cells) + (f"\n\n{note} ({'; '.join(scored)})." if scored else "")


def _data_kind(kind: str) -> str:
    """``random``, ``expert``, or ``planner<r>`` (the recipe's planner round r) as the table says it."""
    return f"own-planner (round {kind[len('planner') :]})" if kind.startswith("planner") else kind


def _transformer_row(score: dict[str, Any] | None) -> dict[str, Any]:
    """The transformer's row of a recipe's recorded score (empty when it has none)."""
    rows = {} if score is None else {r["method"]: r for r in score.get("rows", [])}
    return dict(rows.get("transformer", {}))


def _transformer_score(score: dict[str, Any] | None) -> str:
    value = _transformer_row(score).get("score")
    return "-" if value is None else f"{value:.2f}"


SECTIONS: dict[str, Callable[[Path, Path], str]] = {
    "results": lambda results, _checkpoints: render_results(results),
    "checkpoints": lambda _results, checkpoints: render_checkpoints(checkpoints),
}
"""Generated sections by marker name."""


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with what lies between ``<!-- name:start -->`` and ``<!-- name:end -->`` replaced by ``body``.

    :raises ValueError: the markers are missing, repeated or out of order.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"expected one '{start}' followed by one '{end}' in the README")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{body.strip()}\n{end}{tail}"


def generate(text: str, results: Path = RESULTS, checkpoints: Path = CHECKPOINTS) -> str:
    """``text`` (a README) with every generated section rewritten from the files."""
    for name, render in SECTIONS.items():
        text = replace_section(text, name, render(results, checkpoints))
    return text


def main(argv: list[str] | None = None) -> int:
    """Rewrite the README's generated sections, or with ``--check`` report whether they are current."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if the README is stale")
    parser.add_argument("--readme", type=Path, default=README, help="the README to update or check")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the benchmark JSON files")
    parser.add_argument("--checkpoints", type=Path, default=CHECKPOINTS, help="folder of <Env>/config.json")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    try:
        fresh = generate(text, args.results, args.checkpoints)
    except ValueError as err:
        print(f"readme_results: {err}", file=sys.stderr)
        return 2
    if args.check:
        stale = [name for name in SECTIONS if _section(text, name) != _section(fresh, name)]
        if stale:
            print(
                f"readme_results: {args.readme} is stale in section(s) {', '.join(stale)}; "
                "run `python benchmarks/readme_results.py`",
                file=sys.stderr,
            )
            return 1
        print(f"{args.readme}: generated sections are current")
        return 0
    if fresh != text:
        args.readme.write_text(fresh)
        print(f"updated {args.readme}")
    else:
        print(f"{args.readme}: already current")
    return 0


def _section(text: str, name: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    return text.split(start)[1].split(end)[0]


if __name__ == "__main__":
    raise SystemExit(main())
