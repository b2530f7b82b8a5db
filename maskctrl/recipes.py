"""The recipe that builds the default pretrained backbones shipped under ``maskctrl/checkpoints/<Env>/``.

Run ``make checkpoints`` (or ``python -m maskctrl.recipes``) to rebuild all of them on CPU, or e.g.
``python -m maskctrl.recipes --envs Reacher --work-dir runs/recipes``. For each env it

1. collects random-policy episodes and noisy oracle-MPC expert episodes (``maskctrl collect``'s
   functions; the expert plans in the true simulator with the env's preset budget or the recipe's own),
   cached in ``--work-dir`` so that a rerun only retrains;
2. pretrains the masked control transformer on both with every objective summed (``maskctrl pretrain``;
   HalfCheetah's recipe weighs the forward loss, the planner's, 4 times); with ``planner_rounds`` (no
   default uses them now), it then collects episodes of MPC over that backbone and trains
   a fresh one on all the data, once per round (run directories are named after a hash of their
   settings: a finished run with the same data and settings is reused, and one with other settings is
   never replaced);
3. exports the final weights and normalizer, without optimizer state, to the package's checkpoint
   directory, with metadata recording the recipe, the data, the validation losses, the versions and the
   wall time of every stage.

The budgets are small on purpose: a few MB per checkpoint and minutes of CPU per env. How the result
scores as a planning model is measured by ``benchmarks/mpc_learned.py``, not assumed here.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tyro

if TYPE_CHECKING:
    from maskctrl.pretrain import PretrainResult

CHECKPOINT_ROOT = Path(__file__).resolve().parent / "checkpoints"
"""Where the shipped default checkpoints live: ``CHECKPOINT_ROOT / <Env>``."""


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """Data and training budget of one env's default backbone."""

    random_episodes: int
    """Uniform-random-policy episodes."""
    random_max_steps: int
    """Cap on a random episode's length."""
    expert_episodes: int
    """Noisy oracle-MPC episodes."""
    expert_max_steps: int
    """Cap on an expert episode's length."""
    expert_noise: float
    """Gaussian action noise on the expert, as a fraction of half the action range."""
    expert_samples: int | None = None
    """The expert planner's candidates per iteration (None: the env's oracle preset)."""
    expert_horizon: int | None = None
    """The expert planner's horizon (None: the env's oracle preset)."""
    expert_iterations: int | None = None
    """The expert planner's optimizer iterations per control step (None: the env's oracle preset)."""
    steps: int
    """Pretraining steps."""
    batch_size: int = 64
    """Windows per step."""
    window: int = 16
    """Steps per window (the model's context length)."""
    n_layer: int = 4
    """Transformer blocks."""
    d_model: int = 128
    """Token width."""
    n_head: int = 4
    """Attention heads."""
    lr: float = 1e-3
    """Peak learning rate."""
    forward_weight: float = 1.0
    """Weight of the forward (dynamics) loss, the one a planner uses, among the summed objectives (the
    policy loss weighs 0.5, the others 1)."""
    planner_rounds: int = 0
    """Rounds of data from the model's own planner: each collects :attr:`planner_episodes` episodes of MPC
    with the last trained backbone as the world model, then trains a fresh backbone on every dataset so
    far. The planner drives the model into the states where its errors pay, so that is where the next
    model gets data (0: one training on random and expert data only)."""
    planner_episodes: int = 4
    """Episodes per planner round."""
    planner_max_steps: int = 400
    """Cap on a planner episode's length."""
    planner_noise: float = 0.05
    """Gaussian action noise on the planner, as a fraction of half the action range."""


RECIPES: dict[str, Recipe] = {
    # Random episodes fall within ~5 steps (2000 of them: ~10k transitions of falling); noisy expert
    # episodes show the pole balanced and recovering (with noise 0.3 they fell after 42 steps on average).
    # 10 expert episodes and 1500 steps stopped at validation forward loss 0.0032, still falling fast;
    # the cart then drifted to the rail under MPC (0.69 of the oracle). 20 and 6000: 0.0003 and 1.00.
    "InvertedPendulum": Recipe(
        random_episodes=2000,
        random_max_steps=1000,
        expert_episodes=20,
        expert_max_steps=200,
        expert_noise=0.15,
        steps=6000,
        batch_size=32,
        window=64,
        n_layer=3,
        d_model=64,
    ),
    "Reacher": Recipe(
        random_episodes=200,
        random_max_steps=50,
        expert_episodes=30,
        expert_max_steps=50,
        expert_noise=0.2,
        steps=2000,
        window=32,
        n_layer=3,
        d_model=96,
    ),
    # 10 random + 6 expert episodes (12.4k transitions) over-fitted: validation forward loss 0.090 against
    # 0.016 in training, and MPC scored 0.20 of the oracle. With 40 + 10 the planner still exploited the
    # model's errors (score 0.22, imagined returns up to 3x the real ones); two planner rounds of 4
    # episodes each scored 0.31, then 0.33, with a third of the spread over episodes. A third round
    # scored 0.20: the rounds do not help reliably with this little data per round.
    # That recipe (10 x 500 steps of the preset expert, 6000 steps, 2 planner rounds) scored 0.40 in
    # benchmarks/mpc_learned.py. A screen of d=64 models on the pretraining benchmark's HalfCheetah data
    # (40 random + 10 x 1000 steps of a slower expert, N=64, H=10, 2 iterations: return 2618 against the
    # preset's 3342 in 500 steps, so states nearer the learned planner's pace), each in that benchmark's
    # HalfCheetah row (3 episodes of 200 steps): 6000 steps 0.48, 6000 of batch 256 0.46, forward weight
    # 4: 0.53, and 12000 steps of that 0.59 (returns 619, 602, 685 ± 94, then 774 ± 8.5). This recipe, the
    # screen's last row on its own collection (the expert planner's seed differs), scored 0.56 there
    # (731.9 ± 21.8; the ensemble on the same data 639.3).
    "HalfCheetah": Recipe(
        random_episodes=40,
        random_max_steps=1000,
        expert_episodes=10,
        expert_max_steps=1000,
        expert_noise=0.1,
        expert_samples=64,
        expert_horizon=10,
        expert_iterations=2,
        steps=12000,
        window=24,
        d_model=64,
        forward_weight=4.0,
    ),
    # Random episodes fall within ~20 steps (1000 of them: ~20k transitions); the noisy expert stands and
    # hops slowly. The window holds the MPC history (8 steps) and the preset plan of 10 blocks of 4 held
    # actions (40 steps), so that one window covers a planned rollout.
    "Hopper": Recipe(
        random_episodes=1000,
        random_max_steps=1000,
        expert_episodes=8,
        expert_max_steps=500,
        expert_noise=0.1,
        steps=3000,
        window=48,
        n_layer=3,
        d_model=64,
    ),
}
"""The default backbones' budgets (see the module docstring for what each stage does). Each window is at
least the MPC history (8 steps) plus the env's preset horizon minus one, so that a planner's imagined
rollout stays inside the context the model was trained on. HalfCheetah's width (64) was chosen for planning
speed: a step of N=512 candidates, H=15, 4 iterations ran at 1.77 per second on 2 CPU cores (the target
is 2) and, before the last decoding changes, 28.5 per second on an H200 (``benchmarks/planner_speed.py``)."""


@dataclass(frozen=True, kw_only=True)
class RecipeConfig:
    """Options of ``python -m maskctrl.recipes``."""

    envs: tuple[str, ...] = tuple(RECIPES)
    """Envs whose default backbone to build."""
    work_dir: Path = Path("runs/recipes")
    """Cached datasets and training runs."""
    out_root: Path = CHECKPOINT_ROOT
    """Where the exported checkpoints go (``<out_root>/<Env>``)."""
    scale: float = 1.0
    """Multiply every episode count and step budget (e.g. 0.05 for a smoke test)."""
    seed: int = 0
    """Seed of collection and training."""
    threads: int = 1
    """Torch threads for training."""
    progress: bool = True
    """Show progress bars."""
    score_episodes: int = 3
    """After export, MPC episodes per method (random, transformer, oracle) whose returns are recorded in
    the checkpoint's metadata as its score (0: do not score)."""
    score_max_steps: int | None = 200
    """Cap on a scoring episode's length (None: the env's own limit)."""
    score_only: bool = False
    """Only (re)score the existing checkpoints of --envs, keeping their weights."""


def scaled(recipe: Recipe, scale: float) -> Recipe:
    """``recipe`` with every episode count and step budget multiplied by ``scale`` (small floors kept)."""
    if scale == 1.0:
        return recipe

    def s(n: int, floor: int) -> int:
        return max(floor, round(n * scale))

    return dataclasses.replace(
        recipe,
        random_episodes=s(recipe.random_episodes, 2),
        expert_episodes=s(recipe.expert_episodes, 1),
        expert_max_steps=s(recipe.expert_max_steps, 20),
        steps=s(recipe.steps, 20),
        planner_episodes=s(recipe.planner_episodes, 1),
        planner_max_steps=s(recipe.planner_max_steps, 20),
    )


def _collect(
    env: str,
    out: Path,
    *,
    expert: bool,
    recipe: Recipe,
    seed: int,
    progress: bool,
    planner_model: Path | None = None,
) -> dict[str, Any]:
    """Collect one dataset into ``out`` unless a complete one is there; return its summary and seconds.

    Random episodes, oracle-MPC episodes (``expert``), or MPC episodes with the backbone at
    ``planner_model`` as the world model."""
    from maskctrl.commands.collect import CollectConfig, expert_config, oracle_mpc_factory
    from maskctrl.data.collect import collect_episodes
    from maskctrl.data.episodes import load_episodes, save_episodes

    if (out / "metadata.json").exists():
        return {"summary": load_episodes(out).summary(), "seconds": None, "cached": True}
    start = time.perf_counter()
    if planner_model is not None:
        data = collect_episodes(
            env,
            _transformer_mpc_factory(env, planner_model),
            n_episodes=recipe.planner_episodes,
            seed=seed,
            action_noise=recipe.planner_noise,
            max_steps=recipe.planner_max_steps,
            progress=progress,
            policy_name=f"transformer-mpc (preset) over {planner_model}",
        )
    elif expert:
        overrides = _expert_overrides(recipe)
        expert_cfg = CollectConfig(env=env, policy="oracle-mpc", seed=seed, out=out, **overrides)
        policy: Any = oracle_mpc_factory(expert_cfg)
        mpc = expert_config(expert_cfg)
        planner = f"N={mpc.samples}, H={mpc.horizon}, iterations={mpc.iterations}" if overrides else None
        data = collect_episodes(
            env,
            policy,
            n_episodes=recipe.expert_episodes,
            seed=seed + 10_000,
            action_noise=recipe.expert_noise,
            max_steps=recipe.expert_max_steps,
            progress=progress,
            policy_name=f"oracle-mpc (preset{'' if planner is None else f' with {planner}'})",
        )
    else:
        data = collect_episodes(
            env,
            "random",
            n_episodes=recipe.random_episodes,
            seed=seed,
            max_steps=recipe.random_max_steps,
            progress=progress,
        )
    save_episodes(data, out)
    return {"summary": data.summary(), "seconds": time.perf_counter() - start, "cached": False}


def _expert_overrides(recipe: Recipe) -> dict[str, Any]:
    """The oracle expert's planner settings ``recipe`` sets, as ``CollectConfig`` fields (empty: the preset)."""
    given = {
        "samples": recipe.expert_samples,
        "horizon": recipe.expert_horizon,
        "iterations": recipe.expert_iterations,
    }
    return {key: value for key, value in given.items() if value is not None}


def _transformer_mpc_factory(env: str, checkpoint: Path) -> Any:
    """A policy factory: the env's preset MPC with the backbone at ``checkpoint`` as the world model."""
    from maskctrl.envs.registry import get_spec
    from maskctrl.planner.mpc import MPCController
    from maskctrl.planner.presets import preset_config
    from maskctrl.planner.transformer_dynamics import TransformerDynamics

    spec = get_spec(env)

    def build(envs: Any) -> Any:
        dynamics = TransformerDynamics.from_checkpoint(checkpoint, spec, env=envs[0])
        return MPCController(dynamics, spec, envs[0].action_space, preset_config(env))

    return build


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def data_dirs(env: str, work_dir: Path, recipe: Recipe | None = None, *, seed: int = 0) -> tuple[Path, Path]:
    """The cached random and expert dataset directories of ``env``'s recipe under ``work_dir``.

    They are keyed by what made them (the expert's by its planning objective too), so a changed recipe
    or objective collects afresh.
    """
    from maskctrl.planner.presets import objective_tag

    r = RECIPES[env] if recipe is None else recipe
    work = work_dir / env
    random_dir = work / f"random-{r.random_episodes}x{r.random_max_steps}-seed{seed}"
    tag = objective_tag(env)
    letters = {"samples": "N", "horizon": "H", "iterations": "I"}
    # the preset expert's directories keep their names
    planner = "".join(f"-{letters[key]}{value}" for key, value in _expert_overrides(r).items())
    expert_dir = (
        work
        / f"expert-{r.expert_episodes}x{r.expert_max_steps}-noise{r.expert_noise}{planner}-{tag}-seed{seed}"
    )
    return random_dir, expert_dir


def build(env: str, cfg: RecipeConfig) -> Path:
    """Build ``env``'s default backbone as :data:`RECIPES` says; return the exported checkpoint directory."""
    from maskctrl.data.collect import package_versions
    from maskctrl.models.checkpoint import load_checkpoint, read_config, save_checkpoint
    from maskctrl.models.objectives import ObjectiveWeights
    from maskctrl.planner.presets import objective_tag

    if env not in RECIPES:
        raise KeyError(f"no recipe for env {env!r}; recipes exist for {', '.join(RECIPES)}")
    recipe = scaled(RECIPES[env], cfg.scale)
    random_dir, expert_dir = data_dirs(env, cfg.work_dir, recipe, seed=cfg.seed)
    data = {
        "random": _collect(
            env, random_dir, expert=False, recipe=recipe, seed=cfg.seed, progress=cfg.progress
        ),
        "expert": _collect(env, expert_dir, expert=True, recipe=recipe, seed=cfg.seed, progress=cfg.progress),
    }
    weights = ObjectiveWeights(forward=recipe.forward_weight, policy=0.5)
    datasets = [random_dir, expert_dir]
    runs: list[dict[str, Any]] = []

    def train(name: str) -> PretrainResult:
        result, cached = _train(tuple(datasets), cfg.work_dir / env, name, recipe, weights, cfg)
        runs.append({"run": result.checkpoint.parent.name, "cached": cached, "val_losses": result.val_losses,
                     "train_seconds": result.wall_time_s})  # fmt: skip
        return result

    result = train("run")
    for r in range(1, recipe.planner_rounds + 1):
        model_sha = read_config(result.checkpoint)["weights_sha256"]
        # Keyed by the model that planned, so that a retrained predecessor collects afresh.
        name = f"planner{r}-{recipe.planner_episodes}x{recipe.planner_max_steps}-noise{recipe.planner_noise}"
        planner_dir = cfg.work_dir / env / f"{name}-{objective_tag(env)}-seed{cfg.seed}-model{model_sha[:12]}"
        data[f"planner{r}"] = _collect(
            env, planner_dir, expert=False, recipe=recipe, seed=cfg.seed + 20_000 + 1000 * r,
            progress=cfg.progress, planner_model=result.checkpoint,
        )  # fmt: skip
        datasets.append(planner_dir)
        result = train(f"run{r}")
    trained = load_checkpoint(result.checkpoint)
    metadata = {
        "recipe": dataclasses.asdict(recipe),
        "objective_weights": dataclasses.asdict(weights),
        "data": data,
        "datasets": [str(path.relative_to(cfg.work_dir / env)) for path in datasets],
        "runs": runs,
        "train_losses": result.train_losses,
        "val_losses": result.val_losses,
        "train_seconds": sum(float(r["train_seconds"]) for r in runs),
        "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "built_by": "python -m maskctrl.recipes (make checkpoints)",
        "git_commit": _git_commit(),
        "versions": package_versions(),
        "seed": cfg.seed,
        "scale": cfg.scale,
    }
    dest = save_checkpoint(
        cfg.out_root / env,
        trained.model,
        normalizer=trained.normalizer,
        env=trained.env,
        step=trained.step,
        metadata=metadata,
    )
    print(f"{env}: exported {dest} (val losses {result.val_losses})", file=sys.stderr)
    if cfg.score_episodes > 0:
        score(env, dest, cfg)
    return dest


def _train(
    datasets: tuple[Path, ...], parent: Path, name: str, recipe: Recipe, weights: Any, cfg: RecipeConfig
) -> tuple[PretrainResult, bool]:
    """Pretrain a fresh backbone on ``datasets`` into ``parent/<name>-<key>``, the key a hash of the run's
    settings (everything but the progress bar and the output path; datasets by name), so that runs with
    other settings never replace each other. A finished run found there is reused instead, and says so."""
    from maskctrl.models.checkpoint import read_config
    from maskctrl.pretrain import PretrainConfig, PretrainResult, pretrain
    from maskctrl.training.run_dir import config_to_json

    train = PretrainConfig(
        data=datasets,
        out=parent / name,
        steps=recipe.steps,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        warmup_steps=min(200, recipe.steps // 10),
        window=recipe.window,
        n_layer=recipe.n_layer,
        n_head=recipe.n_head,
        d_model=recipe.d_model,
        weights=weights,
        val_every=max(1, recipe.steps // 4),
        checkpoint_every=0,
        seed=cfg.seed,
        device="cpu",
        num_threads=cfg.threads,
        overwrite=True,
        progress=cfg.progress,
        tensorboard=False,
    )
    settings = {k: v for k, v in config_to_json(train).items() if k not in ("progress", "out")}
    settings["data"] = [path.name for path in datasets]
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    train = dataclasses.replace(train, out=parent / f"{name}-{key}")
    saved = train.out / "checkpoint"
    if (saved / "config.json").exists():
        meta = read_config(saved).get("metadata", {})
        wanted = {k: v for k, v in config_to_json(train).items() if k != "progress"}
        if meta.get("finished") and {k: meta.get("config", {}).get(k) for k in wanted} == wanted:
            print(f"reusing the finished run {train.out} (same data and settings)", file=sys.stderr)
            result = PretrainResult(
                checkpoint=saved, step=meta["steps"], train_losses=meta["train_losses"],
                val_losses=meta["val_losses"], wall_time_s=meta["wall_time_s"],
            )  # fmt: skip
            return result, True
    return pretrain(train), False


def score(env: str, checkpoint: Path, cfg: RecipeConfig) -> dict[str, Any]:
    """Run ``maskctrl demo``'s comparison for ``checkpoint`` and record its rows in the metadata.

    The weights are untouched (only ``config.json`` is rewritten, atomically, with the same sha256).
    """
    from maskctrl.commands.demo import DemoConfig
    from maskctrl.commands.demo import run as run_demo
    from maskctrl.models.checkpoint import load_checkpoint, save_checkpoint

    demo = DemoConfig(
        env=env,
        checkpoint=checkpoint,
        episodes=cfg.score_episodes,
        max_steps=cfg.score_max_steps,
        seed=cfg.seed,
        video=False,
        out_dir=cfg.work_dir / env / "score",
        threads=cfg.threads,
        progress=cfg.progress,
    )
    record = run_demo(demo)
    result = {
        "how": f"maskctrl demo --env {env} --episodes {cfg.score_episodes} --max-steps {cfg.score_max_steps}",
        "planner": record["planner"],
        "rows": [
            {k: r[k] for k in ("method", "returns", "return_mean", "policy_prior", "score")}
            for r in record["rows"]
        ],
        "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    loaded = load_checkpoint(checkpoint)
    save_checkpoint(
        checkpoint,
        loaded.model,
        normalizer=loaded.normalizer,
        env=loaded.env,
        step=loaded.step,
        metadata={**loaded.metadata, "score": result},
    )
    return result


def default_checkpoint(env: str) -> Path:
    """The shipped default checkpoint directory of ``env``; a clear error when there is none."""
    path = CHECKPOINT_ROOT / env
    if not (path / "config.json").exists():
        known = (
            sorted(p.name for p in CHECKPOINT_ROOT.iterdir() if (p / "config.json").exists())
            if CHECKPOINT_ROOT.exists()
            else []
        )
        raise FileNotFoundError(
            f"no default checkpoint for env {env!r} (shipped: {', '.join(known) or 'none'}); pass a checkpoint "
            "directory, or build one with `make checkpoints`"
        )
    return path


def random_data_backbone(
    env: str, out_dir: Path, *, episodes: int = 20, steps: int = 1000, window: int = 8, seed: int = 0
) -> PretrainResult:
    """Pretrain a tiny backbone (2 blocks, width 32) on random-policy episodes of ``env``.

    For examples and pipeline checks where no real checkpoint exists: it takes seconds to a minute on a CPU
    and shows that the pipeline works, not what a real pretrained backbone is worth (see :data:`RECIPES`).
    The episodes are cached in ``out_dir/random-<episodes>-seed<seed>``; the run goes to
    ``out_dir/pretrain`` (replaced).

    :param episodes: random-policy episodes to collect (reset seeds ``seed + i``).
    :param steps: pretraining steps (batch 64).
    :param window: context length; at least the history the backbone will be given.
    :return: the run's result; ``.checkpoint`` is the backbone's directory.
    """
    from maskctrl.data.collect import collect_episodes
    from maskctrl.data.episodes import save_episodes
    from maskctrl.pretrain import PretrainConfig, pretrain

    data_dir = out_dir / f"random-{episodes}-seed{seed}"
    if not (data_dir / "metadata.json").is_file():
        data = collect_episodes(env, "random", n_episodes=episodes, seed=seed, progress=False)
        save_episodes(data, data_dir, overwrite=True)
    run = PretrainConfig(
        data=(data_dir,), out=out_dir / "pretrain", steps=steps, batch_size=64, window=window, n_layer=2,
        n_head=2, d_model=32, warmup_steps=min(50, max(1, steps // 10)), val_every=0, checkpoint_every=0,
        seed=seed, device="cpu", num_threads=1, overwrite=True, progress=False, tensorboard=False,
    )  # fmt: skip
    return pretrain(run)


def main(argv: list[str] | None = None) -> int:
    """Build the default backbones ``argv`` selects; returns the process exit code."""
    cfg = tyro.cli(RecipeConfig, args=argv, prog="python -m maskctrl.recipes", description=__doc__)
    unknown = [env for env in cfg.envs if env not in RECIPES]
    if unknown:
        print(f"no recipe for {unknown}; recipes exist for {', '.join(RECIPES)}", file=sys.stderr)
        return 2
    for env in cfg.envs:
        if cfg.score_only:
            score(
                env, default_checkpoint(env) if cfg.out_root == CHECKPOINT_ROOT else cfg.out_root / env, cfg
            )
        else:
            build(env, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
