"""``maskctrl mpc``: run model predictive control in an environment and report its returns.

Examples::

    maskctrl mpc --env Reacher --dynamics oracle --optimizer icem --episodes 3 --out-dir runs/mpc
    maskctrl mpc --env HalfCheetah --dynamics transformer --checkpoint runs/hc/checkpoint
    maskctrl mpc --env HalfCheetah --dynamics mlp --checkpoint runs/hc-ensemble

prints one row per episode (return, length, control steps/s) and the mean ± std, and writes into
``--out-dir`` a JSON of the results, a plot of the per-episode returns and a plot of imagined vs real
trajectories for one control step: the model's rollout of the plan chosen at that step of episode 0, against
what the real env did executing the same actions open loop from the same state (a fresh env reset with the
same seed and replayed to that step; the MuJoCo envs are deterministic). The planning budget defaults to
the env's preset (:func:`maskctrl.planner.presets.preset_config`); flags override it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import tyro
from tqdm import tqdm

if TYPE_CHECKING:
    from maskctrl.data.collect import Predictor
    from maskctrl.envs.registry import EnvSpec
    from maskctrl.planner.dynamics import DynamicsModel
    from maskctrl.planner.mpc import MPCController

DESCRIPTION = (
    "Run model predictive control in an environment with the true simulator (oracle), a pretrained "
    "transformer or an MLP ensemble as the dynamics model: prints per-episode returns, lengths and control "
    "steps/s with their mean ± std, and writes a JSON, a plot of the returns and a plot of imagined vs real "
    "trajectories into --out-dir."
)
LEARNED = {"transformer": "maskctrl pretrain", "mlp": "save_ensemble (maskctrl pretrain --model ensemble)"}
"""Learned dynamics and what writes their --checkpoint directory."""


@dataclass(frozen=True, kw_only=True)
class MPCCommandConfig:
    """Options of ``maskctrl mpc``."""

    env: str = "Reacher"
    """Registered env name (pointmass, InvertedPendulum, Reacher, HalfCheetah, Hopper, ...)."""
    dynamics: Literal["oracle", "transformer", "mlp"] = "oracle"
    """Dynamics model: "oracle" (the true simulator), "transformer" (TransformerDynamics) or "mlp"
    (the PETS-style ensemble, MLPDynamics)."""
    checkpoint: Path | None = None
    """Checkpoint directory of the learned dynamics (needed for mlp; transformer defaults to the env's
    shipped backbone, maskctrl/checkpoints/<Env>)."""
    optimizer: Literal["cem", "icem", "mppi"] = "icem"
    """Trajectory optimizer."""
    episodes: int = 3
    """Episodes to run (episode i is reset with seed + i)."""
    max_steps: int | None = None
    """Cap on an episode's length (None: the spec's max_episode_steps)."""
    horizon: int | None = None
    """Planning horizon H (None: the env's preset)."""
    samples: int | None = None
    """Candidates N per optimizer iteration (None: the env's preset)."""
    iterations: int | None = None
    """Optimizer iterations per control step (None: the env's preset)."""
    history_len: int | None = None
    """Real steps K of history handed to the dynamics model (None: MPCConfig's default)."""
    elites: int | None = None
    """Elites for CEM / iCEM (None: the optimizer's default, capped at samples // 2)."""
    discount: float = 1.0
    """Per-step discount of the planning return."""
    reward: Literal["spec", "model"] = "spec"
    """Learned dynamics: what the planner scores. "spec": the env spec's functions of the imagined
    transitions (its shaped planning objective where it has one, e.g. HalfCheetah, Hopper); "model": the
    model's reward head, unshaped."""
    bf16: bool = False
    """Transformer: bfloat16 autocast (meant for CUDA; with the small default models slower than float32
    on an H200, its casts being more kernels, and less accurate)."""
    compile: bool = False
    """Transformer: decode with torch.compile (faster control steps after about 30 s of compiling at the
    first ones on a CPU, about 20 s on an H200, where the CUDA graphs replay the compiled steps; see
    TransformerDynamics)."""
    policy_prior_fraction: float | None = None
    """Transformer: share of the candidates drawn from its policy head (0: off; None: the env's default,
    maskctrl.planner.presets.POLICY_PRIOR, for a backbone pretrained with the policy loss, else 0)."""
    critic: Path | None = None
    """Safety-critic directory (maskctrl.planner.critic) whose fall probability at the horizon's end the
    planner pays for, with the env's critic objective (None: the env's shipped critic with the oracle,
    maskctrl/critics/<Env>, where it has one -- Hopper -- and none otherwise). Tuned for icem and mppi,
    so plain cem plans without it unless a critic is named here (on Hopper cem fell with it, seeds 0-2:
    475, against 1026 without)."""
    no_critic: Annotated[bool, tyro.conf.FlagCreatePairsOff] = False
    """Plan without a safety critic, with the spec's planning objective only."""
    plot_step: int = 10
    """Control step of episode 0 whose imagined rollout is plotted against the real env (-1: no plot)."""
    seed: int = 0
    """Seed of the env resets and the planner."""
    device: str = "cpu"
    """Device the planner samples and scores on."""
    nthread: int = 2
    """Threads of the oracle's mujoco.rollout pool."""
    out_dir: Path = Path("runs/mpc")
    """Where the JSON and the plot go."""
    progress: bool = True
    """Show a progress bar over control steps."""


@dataclass(frozen=True, kw_only=True)
class EpisodeResult:
    """One episode's outcome."""

    episode: int
    """Index of the episode in the run."""
    seed: int
    """Seed the env was reset with."""
    episode_return: float
    """Sum of the env's rewards."""
    length: int
    """Control steps taken."""
    seconds: float
    """Wall-clock time of the episode (planning and env steps)."""

    @property
    def steps_per_second(self) -> float:
        """Control steps per second."""
        return self.length / max(self.seconds, 1e-9)


class CommandError(Exception):
    """A problem with the options or the files they name; reported without a traceback."""


def run_episodes(
    policy: Predictor,
    env: Any,
    *,
    episodes: int,
    seed: int,
    on_step: Callable[[], object] | None = None,
) -> list[EpisodeResult]:
    """Run ``episodes`` episodes of ``policy`` in the single gymnasium ``env``.

    :param on_step: called after every control step (e.g. a progress bar's ``update``).
    """
    results = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        start, total, length, done = time.perf_counter(), 0.0, 0, False
        episode_start = np.array([True])
        while not done:
            action, _ = policy.predict(obs, episode_start=episode_start)
            episode_start = np.array([False])
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            length += 1
            done = terminated or truncated
            if on_step is not None:
                on_step()
        seconds = time.perf_counter() - start
        results.append(
            EpisodeResult(
                episode=episode, seed=seed + episode, episode_return=total, length=length, seconds=seconds
            )
        )
    return results


def summarize(results: list[EpisodeResult]) -> dict[str, float]:
    """Mean and (population) std of returns, lengths and control steps/s over episodes."""
    returns = np.array([r.episode_return for r in results])
    lengths = np.array([r.length for r in results])
    speed = np.array([r.steps_per_second for r in results])
    return {
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "length_mean": float(lengths.mean()),
        "steps_per_second_mean": float(speed.mean()),
    }


def format_table(results: list[EpisodeResult]) -> str:
    """A plain-text table of the episodes with a mean ± std row."""
    lines = [f"{'episode':>7}  {'return':>12}  {'length':>6}  {'steps/s':>8}"]
    for r in results:
        lines.append(f"{r.episode:>7}  {r.episode_return:>12.2f}  {r.length:>6}  {r.steps_per_second:>8.2f}")
    s = summarize(results)
    returns = f"{s['return_mean']:.2f} ± {s['return_std']:.2f}"
    lines.append(f"{'mean':>7}  {returns:>12}  {s['length_mean']:>6.1f}  {s['steps_per_second_mean']:>8.2f}")
    return "\n".join(lines)


def plot_returns(path: Path, results: list[EpisodeResult], title: str) -> None:
    """Save a bar plot of per-episode returns with their mean to ``path`` (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([r.episode for r in results], [r.episode_return for r in results], color="tab:blue")
    ax.axhline(summarize(results)["return_mean"], color="tab:red", linestyle="--", label="mean")
    ax.set_xlabel("episode")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def mpc_config(cfg: MPCCommandConfig) -> Any:
    """The env's preset :class:`~maskctrl.planner.mpc.MPCConfig` with the flags that were given on top."""
    from maskctrl.planner.presets import preset_config

    given = {
        "horizon": cfg.horizon,
        "samples": cfg.samples,
        "iterations": cfg.iterations,
        "history_len": cfg.history_len,
        "elites": cfg.elites,
    }
    changes = {name: value for name, value in given.items() if value is not None}
    return preset_config(
        cfg.env,
        cfg.optimizer,
        seed=cfg.seed,
        device=cfg.device,
        discount=cfg.discount,
        use_planning_reward=cfg.reward == "spec",
        policy_prior_fraction=policy_prior_fraction(cfg),
        **changes,
    )


def policy_prior_fraction(cfg: MPCCommandConfig) -> float:
    """The share of policy-proposed candidates ``cfg`` asks for: the flag when given, else the env's
    default for a transformer whose checkpoint metadata records a policy loss (0 for other dynamics)."""
    from maskctrl.models.checkpoint import CheckpointError, read_config
    from maskctrl.planner.presets import default_policy_prior

    if cfg.policy_prior_fraction is not None:
        return cfg.policy_prior_fraction
    if cfg.dynamics != "transformer" or cfg.checkpoint is None:
        return 0.0
    try:
        metadata = read_config(cfg.checkpoint).get("metadata", {})
    except CheckpointError:  # load_dynamics reports what is wrong with the checkpoint
        return 0.0
    return default_policy_prior(cfg.env, metadata if isinstance(metadata, dict) else {})


def load_dynamics(cfg: MPCCommandConfig, spec: EnvSpec, env: Any) -> DynamicsModel:
    """The dynamics model ``cfg`` names, for ``env`` (the oracle reads its state)."""
    from maskctrl.planner.mlp_dynamics import MLPDynamics
    from maskctrl.planner.oracle import OracleDynamics
    from maskctrl.planner.transformer_dynamics import TransformerDynamics

    if cfg.dynamics == "oracle":
        return OracleDynamics([env], spec, nthread=cfg.nthread)
    if cfg.checkpoint is None:
        raise CommandError(
            f"--dynamics {cfg.dynamics} needs --checkpoint DIR (a directory written by {LEARNED[cfg.dynamics]})"
        )
    try:
        if cfg.dynamics == "transformer":
            return TransformerDynamics.from_checkpoint(
                cfg.checkpoint, spec, device=cfg.device, env=env, reward=cfg.reward, bf16=cfg.bf16,
                compile=cfg.compile,
            )  # fmt: skip
        return MLPDynamics.from_checkpoint(
            cfg.checkpoint, spec, device=cfg.device, reward=cfg.reward, seed=cfg.seed
        )
    except (ValueError, FileNotFoundError) as err:  # CheckpointError is a ValueError
        raise CommandError(f"cannot use {cfg.checkpoint} as {cfg.dynamics} dynamics: {err}") from err


def critic_objective(cfg: MPCCommandConfig, spec: EnvSpec) -> dict[str, Any]:
    """The safety critic's controller arguments ``cfg`` asks for (``{}``: none); see ``--critic``."""
    from maskctrl.planner.presets import critic_by_default, preset_objective

    if cfg.no_critic:
        return {}
    if cfg.critic is None and (cfg.dynamics != "oracle" or not critic_by_default(spec.name, cfg.optimizer)):
        return {}
    try:
        return preset_objective(
            spec.name, critic=True if cfg.critic is None else cfg.critic, device=cfg.device
        )
    except (ValueError, FileNotFoundError) as err:
        raise CommandError(f"cannot use the safety critic: {err}") from err


def build_controller(cfg: MPCCommandConfig, spec: EnvSpec, env: Any) -> MPCController:
    """An :class:`~maskctrl.planner.mpc.MPCController` for ``env`` as ``cfg`` describes."""
    from maskctrl.planner.mpc import MPCController

    objective = critic_objective(cfg, spec)
    try:
        return MPCController(
            load_dynamics(cfg, spec, env), spec, env.action_space, mpc_config(cfg), **objective
        )
    except ValueError as err:  # a bad budget, or e.g. a policy prior for a model without a policy
        raise CommandError(str(err)) from err


class _PlanRecorder:
    """Passes an optimizer's calls through, keeping the last plan (for the imagined-vs-real plot)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.horizon, self.action_dim = inner, inner.horizon, inner.action_dim
        self.last: Any = None

    def optimize(self, objective: Any, state: Any = None, **kwargs: Any) -> Any:
        self.last = self.inner.optimize(objective, state, **kwargs)
        return self.last

    def initial_state(self) -> Any:
        return self.inner.initial_state()


def imagined_vs_real(cfg: MPCCommandConfig, spec: EnvSpec, max_steps: int) -> dict[str, Any] | None:
    """The plan chosen at control step ``cfg.plot_step`` of episode 0 (seed ``cfg.seed``): the model's
    imagined observations ``[H+1][O]`` and the real env's under the same actions, open loop, from the
    same state (a second env reset with the same seed replays the actions taken before). None when
    ``plot_step`` is negative; an episode ending earlier moves the plot to its last step."""
    if cfg.plot_step < 0:
        return None
    import torch

    env = spec.make(max_episode_steps=max_steps)
    controller = build_controller(cfg, spec, env)
    recorder = _PlanRecorder(controller.optimizer)
    controller.optimizer = recorder
    obs, _ = env.reset(seed=cfg.seed)
    taken: list[np.ndarray] = []
    for t in range(cfg.plot_step + 1):
        action, _ = controller.predict(obs, episode_start=np.array([t == 0]))
        plan = recorder.last.actions  # [H,A]
        imagined = controller.dynamics.rollout(controller.history(0), plan[None]).next_obs[0]  # [H,O]
        start = obs
        if t == cfg.plot_step:
            break
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
        taken.append(action)
    env.close()
    real_env = spec.make(max_episode_steps=max_steps)
    real_obs, _ = real_env.reset(seed=cfg.seed)
    for action in taken:
        real_obs, *_ = real_env.step(action)
    real = [real_obs]
    for action in plan.detach().cpu().numpy().astype(real_env.action_space.dtype):
        real_obs, _, terminated, truncated, _ = real_env.step(action)
        real.append(real_obs)
        if terminated or truncated:
            break
    real_env.close()
    first = torch.as_tensor(start, dtype=imagined.dtype, device=imagined.device)[None]
    model = torch.cat([first, imagined]).detach().cpu().double().numpy()  # [H+1,O]
    actual = np.asarray(real, dtype=np.float64)  # [<=H+1,O]
    error = np.sqrt(((model[: len(actual)] - actual) ** 2).mean(axis=1))
    return {
        "control_step": len(taken),
        "real_source": "same actions open loop in a fresh env reset with the same seed and replayed",
        "imagined": model.tolist(),
        "real": actual.tolist(),
        "rmse_per_step": error.tolist(),
    }


def plot_imagined(path: Path, record: dict[str, Any], title: str, dims: int = 4) -> None:
    """Imagined (dashed) vs real (solid) trajectories of the ``dims`` obs dimensions that move most."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, actual = np.asarray(record["imagined"]), np.asarray(record["real"])
    order = np.argsort(-actual.std(axis=0))[:dims]
    fig, ax = plt.subplots(figsize=(7, 4))
    for color, d in enumerate(order):
        ax.plot(np.arange(len(actual)), actual[:, d], color=f"C{color}", label=f"obs[{d}] real")
        ax.plot(
            np.arange(len(model)), model[:, d], color=f"C{color}", linestyle="--", label=f"obs[{d}] imagined"
        )
    ax.set_xlabel(f"steps after control step {record['control_step']}")
    ax.set_ylabel("observation")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def check_options(cfg: MPCCommandConfig) -> MPCCommandConfig:
    """Check what can be checked before any episode runs; return ``cfg`` with its device resolved.

    :raises CommandError: naming the first bad option.
    """
    from maskctrl.devices import resolve_device

    if cfg.episodes < 1:
        raise CommandError(f"--episodes must be >= 1, got {cfg.episodes}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise CommandError(f"--max-steps must be >= 1, got {cfg.max_steps}")
    if cfg.compile and cfg.dynamics != "transformer":
        raise CommandError(f"--compile applies to --dynamics transformer, not {cfg.dynamics}")
    if cfg.reward == "model" and cfg.dynamics == "oracle":
        raise CommandError("--reward model applies to learned dynamics; the oracle's rewards are the env's")
    if cfg.critic is not None and cfg.no_critic:
        raise CommandError("--critic and --no-critic contradict each other; give one")
    if cfg.critic is not None and cfg.reward == "model":
        raise CommandError(
            "--critic plans with the critic's objective; --reward model scores the model's reward head"
        )
    existing = next(path for path in (cfg.out_dir, *cfg.out_dir.parents) if path.exists())
    if not existing.is_dir():  # the results are written after every episode ran: fail now, not then
        where = "" if existing == cfg.out_dir else f" cannot be created: {existing}"
        raise CommandError(f"--out-dir {cfg.out_dir}{where} exists and is not a directory")
    try:
        device = resolve_device(cfg.device)
    except ValueError as err:
        raise CommandError(f"--device: {err}") from err
    checkpoint = cfg.checkpoint
    if cfg.dynamics == "transformer" and checkpoint is None:
        import maskctrl.envs  # noqa: F401  (registers the built-in envs)
        from maskctrl.envs.registry import get_spec
        from maskctrl.recipes import default_checkpoint

        try:
            checkpoint = default_checkpoint(get_spec(cfg.env).name)
        except FileNotFoundError as err:
            raise CommandError(f"--dynamics transformer without --checkpoint: {err}") from err
        print(f"maskctrl mpc: using the shipped backbone {checkpoint}", file=sys.stderr)
    if cfg.compile:
        print(
            "maskctrl mpc: --compile: the first control step compiles (about 30-40 s on a CPU, 20 s on an H200)",
            file=sys.stderr,
        )
    return replace(cfg, device=str(device), checkpoint=checkpoint)


def run(cfg: MPCCommandConfig) -> dict[str, Any]:
    """Run the episodes ``cfg`` describes, print the table, save JSON and plots; return the JSON dict."""
    import maskctrl.envs  # noqa: F401  (registers the built-in envs)
    from maskctrl.envs.registry import get_spec

    spec = get_spec(cfg.env)
    max_steps = spec.episode_limit(cfg.max_steps)
    env = spec.make(max_episode_steps=max_steps)
    controller = build_controller(cfg, spec, env)
    mpc = controller.config
    with tqdm(
        total=cfg.episodes * max_steps, desc=f"mpc {cfg.env}", unit="step", disable=not cfg.progress
    ) as bar:
        results = run_episodes(controller, env, episodes=cfg.episodes, seed=cfg.seed, on_step=bar.update)
    env.close()
    imagined = imagined_vs_real(cfg, spec, max_steps)
    critic = controller.terminal_value is not None
    print(
        f"{cfg.env}: {cfg.dynamics} dynamics, {cfg.optimizer} "
        f"(N={mpc.samples}, H={mpc.horizon}, iterations={mpc.iterations}"
        f"{', safety critic' if critic else ''})"
    )
    print(format_table(results))
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{cfg.env}_{cfg.dynamics}_{cfg.optimizer}_seed{cfg.seed}"
    record = {
        "config": {
            **asdict(cfg),
            "out_dir": str(cfg.out_dir),
            "checkpoint": cfg.checkpoint and str(cfg.checkpoint),
            "critic": cfg.critic and str(cfg.critic),
        },
        "mpc": {**asdict(mpc), "optimizer_overrides": dict(mpc.optimizer_overrides)},
        "episodes": [{**asdict(r), "steps_per_second": r.steps_per_second} for r in results],
        "summary": summarize(results),
        "safety_critic": critic,
        "imagined_vs_real": imagined,
    }
    json_path, png_path = cfg.out_dir / f"{stem}.json", cfg.out_dir / f"{stem}.png"
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    plot_returns(png_path, results, f"{cfg.env} · {cfg.dynamics} · {cfg.optimizer}")
    written = [json_path, png_path]
    if imagined is not None:
        written.append(cfg.out_dir / f"{stem}_imagined.png")
        plot_imagined(written[-1], imagined, f"{cfg.env} · {cfg.dynamics}: imagined vs real")
    print(f"wrote {', '.join(str(path) for path in written)}")
    return record


def main(argv: list[str]) -> int:
    """Entry point of ``maskctrl mpc``; returns the process exit code."""
    cfg = tyro.cli(MPCCommandConfig, args=argv, prog="maskctrl mpc", description=DESCRIPTION)
    from maskctrl.envs.registry import UnknownEnvError  # here: --help does not pay for gymnasium

    try:
        cfg = check_options(cfg)
        run(cfg)
    except UnknownEnvError as err:  # the registry's message lists the known ones
        print(f"maskctrl mpc: {err.args[0]}", file=sys.stderr)
        return 2
    except CommandError as err:
        print(f"maskctrl mpc: {err}", file=sys.stderr)
        return 2
    return 0
