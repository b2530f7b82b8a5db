"""Learned world models in the MPC loop: random, oracle, transformer and MLP-ensemble rows, side by side.

Every planned row of an env uses the same planner (``preset_config(env, optimizer)``, the budget of
``maskctrl mpc``) and the same seeds; only the dynamics model differs. Rows: a uniform random policy,
the oracle (the true simulator), :class:`~maskctrl.planner.transformer_dynamics.TransformerDynamics` and
:class:`~maskctrl.planner.mlp_dynamics.MLPDynamics`. Reported per env: returns, transformer/oracle
(the plain ratio where the oracle's return is positive, else the random-normalized score
``(R - R_random) / (R_oracle - R_random)``) and whether the transformer beats the ensemble.

Models. The transformer of an env is ``--transformer ENV=DIR``, else the shipped default
(``maskctrl/checkpoints/<Env>``). The ensemble is ``--mlp ENV=DIR``, else one trained here (and cached in
``--work-dir``) on the same datasets as the default transformer (``maskctrl.recipes.data_dirs`` under ``runs/recipes``,
written by ``make checkpoints``). Whatever is missing is made by a quick tiny recipe with a loud warning:
rows from such models say nothing about the shipped ones.

    python benchmarks/mpc_learned.py                          # all envs and rows (long)
    python benchmarks/mpc_learned.py --envs Reacher --episodes 2 --max-steps 50

Writes ``benchmarks/results/mpc_learned.{json,md,png}``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
import tyro
from common import command_line, fmt_mean_std, machine_info, markdown_table, mean_std, write_results
from mpc_oracle import EPISODES
from tqdm import tqdm

import maskctrl.envs  # noqa: F401  (registers the built-in envs)
from maskctrl.commands.mpc import MPCCommandConfig, build_controller, run_episodes
from maskctrl.data.collect import RandomPolicy
from maskctrl.envs.registry import get_spec
from maskctrl.recipes import CHECKPOINT_ROOT, RECIPES, RecipeConfig, build, data_dirs, scaled

Method = Literal["random", "oracle", "transformer", "mlp"]
ENVS = ("InvertedPendulum", "Reacher", "HalfCheetah", "Hopper")
RATIO_TARGETS = {"InvertedPendulum": 0.95, "Reacher": 0.9, "HalfCheetah": 0.7}
"""transformer/oracle each env should reach (issue 6)."""
BEAT_MLP = ("HalfCheetah", "Hopper")
"""Envs where the transformer should score at least the MLP ensemble."""


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """Options of the learned-dynamics MPC benchmark."""

    envs: tuple[str, ...] = ENVS
    """Envs to run."""
    methods: tuple[Method, ...] = ("random", "oracle", "transformer", "mlp")
    """Rows per env."""
    episodes: int | None = None
    """Episodes per row, episode i reset with seed + i (None: mpc_oracle's per-env EPISODES)."""
    max_steps: int | None = None
    """Cap on episode length for quick runs (None: full episodes)."""
    optimizer: Literal["cem", "icem", "mppi"] = "icem"
    """Planner of every planned row."""
    samples: int | None = None
    """Override the preset's candidates N (all rows; None: preset)."""
    horizon: int | None = None
    """Override the preset's horizon H (all rows; None: preset)."""
    iterations: int | None = None
    """Override the preset's iterations (all rows; None: preset)."""
    seed: int = 0
    """Seed of resets, planners and the random policy."""
    device: str = "cpu"
    """Where the planner and the learned models run."""
    nthread: int = 2
    """Threads of the oracle's mujoco.rollout pool."""
    transformer: tuple[str, ...] = ()
    """Transformer checkpoints as ENV=DIR (default: the shipped ones)."""
    mlp: tuple[str, ...] = ()
    """Ensemble directories as ENV=DIR (default: trained here on the transformer's data)."""
    recipe_dir: Path = Path("runs/recipes")
    """Work dir of ``make checkpoints``: its datasets train the ensemble."""
    work_dir: Path = Path("runs/bench_learned")
    """Cache of ensembles trained here and of fallback models."""
    fallback_scale: float = 0.05
    """Scale of the quick recipe run when a transformer checkpoint is missing."""
    ensemble_epochs: int = 50
    """Epochs of an ensemble trained here."""
    out_dir: Path = Path("benchmarks/results")
    """Where the JSON, markdown and plot go."""
    name: str = "mpc_learned"
    """Stem of the output files."""


def _given(pairs: tuple[str, ...], env: str) -> Path | None:
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"expected ENV=DIR, got {pair!r}")
        if key == env:
            return Path(value)
    return None


def _loud(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr)


def transformer_checkpoint(env: str, cfg: BenchConfig) -> tuple[Path, str]:
    """``(directory, provenance)`` of the transformer for ``env``: given, shipped, or a quick fallback."""
    given = _given(cfg.transformer, env)
    if given is not None:
        return given, "given"
    if (CHECKPOINT_ROOT / env / "config.json").exists():
        return CHECKPOINT_ROOT / env, "shipped default"
    fallback = cfg.work_dir / "checkpoints" / env
    _loud(
        f"no default transformer checkpoint for {env} under {CHECKPOINT_ROOT}: using a QUICK TINY one "
        f"({fallback}); its numbers say nothing about the shipped model (run `make checkpoints`)"
    )
    if (fallback / "config.json").exists():
        return fallback, f"fallback (cached, scale {cfg.fallback_scale})"
    recipe = RecipeConfig(
        envs=(env,), work_dir=cfg.work_dir / "recipes", out_root=fallback.parent, scale=cfg.fallback_scale
    )
    if env in RECIPES:
        return build(env, replace(recipe, progress=False)), f"fallback recipe (scale {cfg.fallback_scale})"
    return _generic_fallback(env, cfg, fallback), "fallback (random data)"


def _generic_fallback(env: str, cfg: BenchConfig, out: Path) -> Path:
    """A small transformer pretrained on random episodes, for envs without a recipe (e.g. Hopper)."""
    from maskctrl.models.checkpoint import load_checkpoint, save_checkpoint
    from maskctrl.models.objectives import ObjectiveWeights
    from maskctrl.planner.presets import preset_config
    from maskctrl.pretrain import PretrainConfig, pretrain

    data = _random_data(env, cfg.work_dir / "data" / env)
    horizon = cfg.horizon or preset_config(env).horizon
    run = PretrainConfig(
        data=(data,), out=cfg.work_dir / "runs" / env, steps=max(50, round(3000 * cfg.fallback_scale)),
        batch_size=64, window=max(16, 8 + horizon - 1), weights=ObjectiveWeights(policy=0.5), val_every=0,
        checkpoint_every=0, seed=cfg.seed, device="cpu", overwrite=True, progress=False, tensorboard=False,
    )  # fmt: skip
    trained = load_checkpoint(pretrain(run).checkpoint)
    metadata = {"made_by": "benchmarks/mpc_learned.py fallback", "data": str(data)}
    return save_checkpoint(
        out,
        trained.model,
        normalizer=trained.normalizer,
        env=trained.env,
        step=trained.step,
        metadata=metadata,
    )


def _random_data(env: str, out: Path, episodes: int = 20, max_steps: int = 200) -> Path:
    from maskctrl.data.collect import collect_episodes
    from maskctrl.data.episodes import save_episodes

    if not (out / "metadata.json").exists():
        data = collect_episodes(
            env, "random", n_episodes=episodes, seed=0, max_steps=max_steps, progress=False
        )
        save_episodes(data, out, overwrite=True)
    return out


def recipe_datasets(env: str, recipe_dir: Path) -> list[Path]:
    """The datasets the shipped backbone of ``env`` was trained on, as its metadata lists them, under
    ``recipe_dir / env``; empty when it lists none or one of them is missing."""
    config = CHECKPOINT_ROOT / env / "config.json"
    names = json.loads(config.read_text()).get("metadata", {}).get("datasets") if config.exists() else None
    dirs = [recipe_dir / env / name for name in names or []]
    return dirs if all((d / "metadata.json").exists() for d in dirs) else []


def ensemble_checkpoint(env: str, cfg: BenchConfig) -> tuple[Path, str]:
    """``(directory, provenance)`` of the MLP ensemble: given, cached, or trained here on the datasets of
    the default transformer (``recipe_dir``), of the fallback recipe, or (last resort) random episodes."""
    given = _given(cfg.mlp, env)
    if given is not None:
        return given, "given"
    from maskctrl.data.dataset import TrajectoryDataset
    from maskctrl.models.ensemble import EnsembleConfig, save_ensemble
    from maskctrl.models.ensemble_training import train_ensemble

    def collected(root: Path, recipe: Any) -> list[Path]:
        return [d for d in data_dirs(env, root, recipe) if (d / "metadata.json").exists()]

    primary: list[Path] = []
    fallback: list[Path] = []  # envs without a recipe have neither
    if env in RECIPES:
        primary = recipe_datasets(env, cfg.recipe_dir) or collected(cfg.recipe_dir, RECIPES[env])
        fallback = collected(cfg.work_dir / "recipes", scaled(RECIPES[env], cfg.fallback_scale))
    dirs = primary or fallback
    provenance = "trained here on the default transformer's datasets"
    if not primary:
        _loud(f"no recipe datasets for {env} in {cfg.recipe_dir}: the ensemble trains on fallback data")
        dirs = dirs or [_random_data(env, cfg.work_dir / "data" / env)]
        provenance = "trained here on fallback data"
    sources = [str(d) for d in dirs]
    out = cfg.work_dir / "ensembles" / env
    if (out / "config.json").exists():  # reused only if trained on the very datasets it would train on now
        cached = json.loads((out / "config.json").read_text()).get("metadata", {})
        if cached.get("data_dirs") == sources and cached.get("epochs") == cfg.ensemble_epochs:
            return out, f"{provenance} (cached)"
        _loud(f"the cached ensemble {out} was trained on other data or epochs: training it again")
    dataset = TrajectoryDataset(sources, window=1, split="all")
    normalizer = dataset.normalizer()
    model, history = train_ensemble(
        dataset, EnsembleConfig(epochs=cfg.ensemble_epochs), normalizer, seed=cfg.seed, progress=False
    )
    metadata = {
        "env_name": env,
        "data_dirs": sources,
        "epochs": cfg.ensemble_epochs,
        "elites": history.elites,
    }
    return save_ensemble(out, model, normalizer, metadata=metadata), provenance


def run_row(env_name: str, method: Method, cfg: BenchConfig, models: dict[str, Path]) -> dict[str, Any]:
    """Run ``method``'s episodes in ``env_name`` and summarize them as a row."""
    spec = get_spec(env_name)
    max_steps = spec.episode_limit(cfg.max_steps)
    episodes = cfg.episodes if cfg.episodes is not None else EPISODES[env_name]
    env = spec.make(max_episode_steps=max_steps)
    command = MPCCommandConfig(
        env=env_name, dynamics="oracle" if method == "random" else method, checkpoint=models.get(method),
        optimizer=cfg.optimizer, samples=cfg.samples, horizon=cfg.horizon, iterations=cfg.iterations,
        seed=cfg.seed, device=cfg.device, nthread=cfg.nthread, progress=False,
        no_critic=True,  # the same planner and objective for every dynamics model (Hopper's critic: oracle only)
    )  # fmt: skip
    policy: Any = RandomPolicy(env.action_space, cfg.seed) if method == "random" else None
    budget: dict[str, Any] = {}
    if policy is None:
        policy = build_controller(command, spec, env)
        budget = {"samples": policy.config.samples, "horizon": policy.config.horizon}
        budget["iterations"] = policy.config.iterations
        budget["policy_prior"] = policy.config.policy_prior_fraction
    with tqdm(total=episodes * max_steps, desc=f"{env_name} {method}", unit="step", leave=False) as bar:
        results = run_episodes(policy, env, episodes=episodes, seed=cfg.seed, on_step=bar.update)
    env.close()
    returns = [r.episode_return for r in results]
    ret_mean, ret_std = mean_std(returns)
    print(f"{env_name:>16} {method:>11}: return {fmt_mean_std(returns)}", file=sys.stderr)
    return {
        "env": env_name, "method": method, **budget, "return_mean": ret_mean, "return_std": ret_std,
        "returns": returns, "seeds": [r.seed for r in results], "lengths": [r.length for r in results],
        "steps_per_second": [r.steps_per_second for r in results], "model": str(models.get(method, "")) or None,
    }  # fmt: skip


def compare(env_name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Transformer/oracle ratio (or normalized score) and transformer-vs-MLP verdicts of one env."""
    mean = {r["method"]: r["return_mean"] for r in rows if r["env"] == env_name}
    out: dict[str, Any] = {"env": env_name}
    if "transformer" in mean and "oracle" in mean:
        oracle, model = mean["oracle"], mean["transformer"]
        ratio = model / oracle if oracle > 0 else None
        normalized = None
        if "random" in mean and oracle != mean["random"]:
            normalized = (model - mean["random"]) / (oracle - mean["random"])
        out.update(ratio=ratio, normalized=normalized)
        target = RATIO_TARGETS.get(env_name)
        score = ratio if ratio is not None else normalized
        out["ratio_target"] = target
        out["ratio_met"] = None if target is None or score is None else bool(score >= target)
    if "transformer" in mean and "mlp" in mean:
        out["beats_mlp"] = bool(mean["transformer"] >= mean["mlp"])
        out["beats_mlp_required"] = env_name in BEAT_MLP
    return out


def plot(path: Path, rows: list[dict[str, Any]], envs: list[str]) -> None:
    """One panel per env: mean return per row (error bar: std over episodes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"random": "tab:gray", "oracle": "tab:green", "transformer": "tab:blue", "mlp": "tab:orange"}
    fig, axes = plt.subplots(1, len(envs), figsize=(3.2 * len(envs), 3.2), squeeze=False)
    for ax, env_name in zip(axes[0], envs, strict=True):
        mine = [r for r in rows if r["env"] == env_name]
        ax.bar(
            [r["method"] for r in mine],
            [r["return_mean"] for r in mine],
            yerr=[r["return_std"] for r in mine],
            color=[colors[r["method"]] for r in mine],
        )
        ax.set_title(env_name)
        ax.tick_params(axis="x", labelrotation=30)
    axes[0][0].set_ylabel("episode return")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def render(
    rows: list[dict[str, Any]], verdicts: list[dict[str, Any]], models: dict[str, Any], info: dict[str, Any]
) -> str:
    """The markdown report: the rows, then the per-env verdicts and where each model came from."""
    headers = ["env", "method", "N", "H", "iters", "policy prior", "return", "length", "steps/s"]
    cells = [
        [r["env"], r["method"], r.get("samples", "-"), r.get("horizon", "-"), r.get("iterations", "-"),
         f"{r['policy_prior']:g}" if r.get("policy_prior") else "-",
         fmt_mean_std(r["returns"]), fmt_mean_std(r["lengths"], digits=0), fmt_mean_std(r["steps_per_second"])]
        for r in rows
    ]  # fmt: skip
    vheaders = ["env", "transformer/oracle", "normalized", "target", "met", "transformer >= mlp", "required"]
    vcells = [
        [v["env"], "-" if v.get("ratio") is None else f"{v['ratio']:.3f}",
         "-" if v.get("normalized") is None else f"{v['normalized']:.3f}",
         v.get("ratio_target") or "-", _yes(v.get("ratio_met")), _yes(v.get("beats_mlp")),
         _yes(v.get("beats_mlp_required"))]
        for v in verdicts
    ]  # fmt: skip
    sources = "\n".join(
        f"- {env} {kind}: {src['path']} ({src['provenance']})" for (env, kind), src in models.items()
    )
    return (
        f"# MPC with learned world models\n\nSame planner budget (preset) and seeds for every planned row of an "
        "env; 'policy prior': the share of those candidates the transformer's policy head proposes "
        f"(`maskctrl.planner.presets.POLICY_PRIOR`). Measured {info['date']} on {info['processor']} "
        f"x{info['cpu_count']} (shared CPU: speeds are lower bounds). 'met' uses transformer/oracle where "
        "the oracle's return is positive, else the random-normalized score.\n\n"
        f"{markdown_table(headers, cells)}\n\n{markdown_table(vheaders, vcells)}\n\nModels:\n{sources}\n"
    )


def main(cfg: BenchConfig) -> list[dict[str, Any]]:
    """Run every (env, method) row, print the markdown and write JSON, markdown and plot."""
    torch.set_num_threads(1)
    rows, verdicts, sources = [], [], {}
    for env_name in cfg.envs:
        models: dict[str, Path] = {}
        for kind, find in (("transformer", transformer_checkpoint), ("mlp", ensemble_checkpoint)):
            if kind in cfg.methods:
                path, provenance = find(env_name, cfg)
                models[kind] = path
                sources[(env_name, kind)] = {"path": str(path), "provenance": provenance}
        rows += [run_row(env_name, method, cfg, models) for method in cfg.methods]
        verdicts.append(compare(env_name, rows))
    info = machine_info()
    markdown = render(rows, verdicts, sources, info)
    print(markdown)
    record = {
        "command": command_line("mpc_learned.py", cfg),
        "config": {**cfg.__dict__, **{k: str(v) for k, v in cfg.__dict__.items() if isinstance(v, Path)}},
        "machine": info,
        "rows": rows,
        "verdicts": verdicts,
        "models": [{"env": env, "kind": kind, **src} for (env, kind), src in sources.items()],
    }
    json_path, md_path = write_results(cfg.out_dir, cfg.name, record, markdown)
    png_path = cfg.out_dir / f"{cfg.name}.png"
    plot(png_path, rows, list(cfg.envs))
    print(f"wrote {json_path}, {md_path}, {png_path}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
