"""Every command in README.md runs, so the README cannot rot.

The README's fenced ``bash`` and ``python`` blocks become steps, in README order, all in one scratch
directory whose ``maskctrl``, ``examples`` and ``benchmarks`` are links to the repository's, so that the
README's relative paths resolve as in a checkout while everything it writes stays in the scratch directory:

- a ``bash`` line ``maskctrl ...`` runs in-process through :func:`maskctrl.cli.main` (exit code 0);
  ``python ...``, ``torchrun ...`` and ``make ...`` lines run as subprocesses with this interpreter;
- a ``python`` block is executed in a fresh namespace; one preceded by
  ``<!-- readme-test: venv=DIR -->`` runs where ``imitation`` imports (in-process if this interpreter has
  it, else with ``DIR/bin/python`` from the repository root), and is skipped where neither exists;
- lines too slow for ``make test``, or that must not run here, are in :data:`ALLOWED` with the reason and
  where they are exercised instead; the ``slow`` ones run in :func:`test_slow_readme_command`.

A step that needs files from earlier steps (the CLI pipeline) runs those first when it is selected alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import maskctrl.envs.registry as registry_module
from maskctrl.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
LINKED = ("maskctrl", "examples", "benchmarks")
"""Repository folders the scratch directory links to (the README's relative paths read from them)."""

sys.path.insert(0, str(REPO / "benchmarks"))
import readme_results  # noqa: E402  (a script folder, not a package)


@dataclass(frozen=True)
class Allowed:
    """Why a README line is not run by the fast tests, and where it is exercised instead."""

    reason: str
    where: str
    slow: bool = False
    """Run by :func:`test_slow_readme_command` (``pytest -m slow tests/test_readme.py``)."""


BENCHMARK = Allowed(
    "minutes to hours on 2 CPU cores; writes the benchmarks/results JSON that the README's results show",
    "run by hand (results in benchmarks/results/); the same script at smoke size (the README's next block) "
    "runs in the slow test here, and the --check line and test_results_check_passes fail when the README "
    "and the results disagree",
)
MINUTE = Allowed("up to a minute", "the slow test here", slow=True)
SMOKE = Allowed("a benchmark at smoke size (5-20 s each)", "the slow test here", slow=True)
ALLOWED: dict[str, Allowed] = {
    "make demo": Allowed(
        "creates .venv, then runs `maskctrl demo` (minutes)",
        "`maskctrl demo` runs in the slow test here; tests/test_cli_demo.py runs the demo at tiny size",
    ),
    "make test": Allowed("the whole suite, lint and type check, including this file", "CI (.ci/run)"),
    "maskctrl demo": Allowed("3 episodes x 3 methods on Reacher (~3 min)", "the slow test here", slow=True),
    "python examples/mpc_oracle.py --quick": Allowed(
        "about 10 s of oracle planning", "the slow test here", slow=True
    ),
    "python examples/mpc_transformer.py --quick": Allowed(
        "about 10 s of transformer planning on Reacher", "the slow test here", slow=True
    ),
    "python examples/bc_reacher.py --quick": MINUTE,
    "python examples/sb3_ppo_pretrained.py --quick": MINUTE,
    ".venv-imitation/bin/python examples/imitation_bc.py --quick": MINUTE,
    ".venv-imitation/bin/python examples/imitation_dagger_mpc.py --quick": MINUTE,
    "python benchmarks/mpc_learned.py": BENCHMARK,
    "python benchmarks/mpc_oracle.py": BENCHMARK,
    "python benchmarks/planner_speed.py": BENCHMARK,
    "python benchmarks/backbone.py": BENCHMARK,
    "python benchmarks/pretrain.py": BENCHMARK,
    "python benchmarks/bc.py": BENCHMARK,
    "python benchmarks/sb3.py": BENCHMARK,
    "python benchmarks/mpc_oracle.py --envs Reacher --methods random icem --episodes 1 --max-steps 5 --out-dir runs/bench-smoke": SMOKE,
    "python benchmarks/backbone.py --quick --out runs/bench-smoke": SMOKE,
    "python benchmarks/planner_speed.py --quick --out-dir runs/bench-smoke": SMOKE,
    "python benchmarks/mpc_learned.py --envs Reacher --episodes 1 --max-steps 5 --ensemble-epochs 2 --work-dir runs/bench-smoke/learned --out-dir runs/bench-smoke": SMOKE,
    "python benchmarks/bc.py --envs Reacher --episodes 1 --inits scratch --steps 10 --val-every 5 --val-episodes 1 --eval-episodes 1 --data-dir runs/bench-smoke/bc-data --work-dir runs/bench-smoke/bc --out-dir runs/bench-smoke": SMOKE,
    "python benchmarks/sb3.py --envs Reacher --scratch-pretrain --timesteps 128 --seeds 0 --n-steps 64 --pretrain-episodes 2 --pretrain-steps 10 --eval-episodes 1 --work-dir runs/bench-smoke/sb3 --out-dir runs/bench-smoke": SMOKE,
    "python benchmarks/pretrain.py --quick --envs HalfCheetah --random-episodes 2 --expert-episodes 1 --max-steps 30 --steps 10 --ensemble-epochs 2 --n-starts 5 --work-dir runs/bench-smoke/pretrain --out-dir runs/bench-smoke": SMOKE,
    "python benchmarks/readme_results.py": Allowed(
        "rewrites README.md", "test_results_section_is_generated_from_the_json runs it on a copy"
    ),
    "torchrun --standalone --nproc_per_node=2 -m maskctrl.cli pretrain --data runs/data/pm-random "
    "--out runs/pm-ddp --steps 20 --batch-size 16 --window 8 --n-layer 1 --n-head 2 --d-model 32 "
    "--device cpu --no-progress": Allowed(
        "two processes each importing torch (10+ s on a busy CPU)",
        "the slow test here; tests/test_pretrain_ddp.py checks that two processes match one",
        slow=True,
    ),
    "torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 -m maskctrl.cli "
    "pretrain --data DATA --out RUN --batch-size 4096": Allowed(
        "needs two machines with 8 GPUs each (HOST, DATA and RUN are placeholders)",
        "its single-node form runs in the slow test here",
    ),
    "make checkpoints": Allowed(
        "rebuilds (overwrites) every shipped checkpoint: hours of CPU",
        "the recipe runs at --scale 0.01 into a scratch folder in the slow test here",
    ),
    "python -m maskctrl.recipes --envs Reacher": Allowed(
        "rebuilds (overwrites) the shipped Reacher checkpoint: an hour of CPU",
        "the recipe runs at --scale 0.01 into a scratch folder in the slow test here",
    ),
    "python -m maskctrl.recipes --envs Reacher --scale 0.01 --score-episodes 1 --score-max-steps 5 "
    "--work-dir runs/recipes --out-root runs/checkpoints --no-progress": Allowed(
        "a few oracle-MPC steps and 20 training steps", "the slow test here", slow=True
    ),
    "make docs": Allowed(
        "installs pdoc into .venv (PyPI) and imports every module",
        "the slow test here (rendering into a scratch folder)",
        slow=True,
    ),
}
"""README lines that the fast tests do not run, by their exact text."""


# ------------------------------------------------------------------------------------------ parsing


@dataclass(frozen=True)
class Step:
    """One runnable piece of the README: a shell line or a python block."""

    index: int
    """Position among all steps, in README order."""
    line: int
    """README line number where it starts."""
    kind: str
    """``"bash"`` or ``"python"``."""
    text: str
    """The command line or the block's source."""
    venv: str | None = None
    """A python block's ``<!-- readme-test: venv=DIR -->`` marker."""

    @property
    def id(self) -> str:
        """A short pytest id: the line number and the start of the command."""
        first = self.text.strip().splitlines()[0] if self.kind == "bash" else "python block"
        venv = "" if self.venv is None else f" venv{self.venv}"  # e.g. `-k venv_imitation`
        return f"L{self.line}-{re.sub(r'[^A-Za-z0-9_-]+', '_', first + venv)[:60]}"


def readme_steps(text: str) -> list[Step]:
    """The README's ``bash`` lines and ``python`` blocks, in order (other fences are not commands)."""
    steps: list[Step] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.fullmatch(r"```(\w*)\s*", lines[i])
        if not fence:
            i += 1
            continue
        lang, start = fence.group(1), i + 1
        end = next(j for j in range(start, len(lines)) if lines[j].startswith("```"))
        marker = re.search(r"<!--\s*readme-test:\s*venv=(\S+)\s*-->", lines[i - 1]) if i else None
        if lang == "python":
            body = "\n".join(lines[start:end]) + "\n"
            steps.append(Step(len(steps), start, "python", body, marker.group(1) if marker else None))
        elif lang == "bash":
            for offset, command in _shell_lines(lines[start:end]):
                steps.append(Step(len(steps), start + 1 + offset, "bash", command))
        i = end + 1
    return steps


def _shell_lines(lines: list[str]) -> Iterator[tuple[int, str]]:
    """Non-empty, non-comment lines, with backslash continuations joined."""
    pending, first = "", 0
    for n, raw in enumerate(lines):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            first = n
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        yield first, pending + line
        pending = ""


STEPS = readme_steps(README.read_text())
FAST = [s for s in STEPS if s.kind == "python" or s.text not in ALLOWED]
SLOW = [s for s in STEPS if s.kind == "bash" and s.text in ALLOWED and ALLOWED[s.text].slow]


# ------------------------------------------------------------------------------------------ running


@dataclass
class Workspace:
    """The scratch directory the README's steps share, and which of them have run."""

    root: Path
    outcome: dict[int, bool] = field(default_factory=dict)
    """Step index -> whether it passed (present once it has run)."""

    def before(self, step: Step, monkeypatch: pytest.MonkeyPatch) -> None:
        """Run the fast steps before ``step`` that have not run yet (they make the files it reads).

        Their failures are reported by their own tests; a step that needed their files fails on its own.
        A block for another venv stands alone (the steps before it may not run there).
        """
        for earlier in FAST if step.venv is None else []:
            if earlier.index >= step.index:
                break
            if earlier.index not in self.outcome:
                with contextlib.suppress(Exception, pytest.skip.Exception, pytest.fail.Exception):
                    run_step(earlier, self, monkeypatch)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A scratch directory with links to the repository folders the README reads."""
    root = tmp_path_factory.mktemp("readme")
    for name in LINKED:
        (root / name).symlink_to(REPO / name, target_is_directory=True)
    return Workspace(root)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}


def shell_argv(command: str, root: Path) -> list[str]:
    """The process to start for a non-``maskctrl`` README line."""
    argv = shlex.split(command)
    head, rest = argv[0], argv[1:]
    if head == "python":
        return [sys.executable, *rest]
    if head.startswith(".venv-imitation/"):
        python = REPO / head
        if not python.exists():
            pytest.skip(f"{python} does not exist (make setup-imitation builds it)")
        return [str(python), *rest]
    if head == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *rest]
    if head == "make" and rest == ["docs"]:
        return ["make", "-C", str(REPO), "docs", f"DOCS_OUT={root / 'docs-api'}"]
    raise AssertionError(f"README line {command!r}: no way to run it here; run it or list it in ALLOWED")


def run_step(step: Step, ws: Workspace, monkeypatch: pytest.MonkeyPatch, timeout: float = 300) -> None:
    """Run one step in the workspace; raise (assert) if it fails."""
    monkeypatch.chdir(ws.root)
    try:
        if step.kind == "python":
            run_python(step, ws.root, monkeypatch, timeout)
        elif step.text.split()[0] == "maskctrl":
            try:
                code = main(shlex.split(step.text)[1:])
            except SystemExit as exit_:  # tyro exits on bad options and on --help
                code = exit_.code if isinstance(exit_.code, int) else 1
            assert code == 0, f"README line {step.line}: `{step.text}` exited with {code}"
        else:
            done = subprocess.run(
                shell_argv(step.text, ws.root), cwd=ws.root, env=_env(), capture_output=True, text=True,
                timeout=timeout,
            )  # fmt: skip
            assert done.returncode == 0, (
                f"README line {step.line}: `{step.text}` exited with {done.returncode}\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
    except BaseException:
        ws.outcome[step.index] = False
        raise
    ws.outcome[step.index] = True


def run_python(step: Step, root: Path, monkeypatch: pytest.MonkeyPatch, timeout: float) -> None:
    """Exec a python block (in-process, or with a marked venv's interpreter)."""
    if step.venv is not None:
        try:  # a submodule: a bare `import imitation` finds the tests/imitation folder
            __import__("imitation.algorithms.bc")
        except ImportError:
            python = REPO / step.venv / "bin" / "python"
            if not python.exists():
                pytest.skip(f"the block at README line {step.line} needs {python} (make setup-imitation)")
            done = subprocess.run(
                [str(python), "-c", step.text], cwd=root, env=_env(), capture_output=True, text=True,
                timeout=timeout,
            )  # fmt: skip
            assert done.returncode == 0, f"README line {step.line}:\n{done.stderr[-4000:]}"
            return
    # A block may register env specs; they must not leak into other tests.
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))
    exec(compile(step.text, f"README.md:{step.line}", "exec"), {"__name__": "__readme__"})


@pytest.mark.parametrize("step", FAST, ids=[s.id for s in FAST])
def test_readme_step(step: Step, workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    workspace.before(step, monkeypatch)
    run_step(step, workspace, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("step", SLOW, ids=[s.id for s in SLOW])
def test_slow_readme_command(step: Step, workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    workspace.before(step, monkeypatch)
    run_step(step, workspace, monkeypatch, timeout=1200)


# ------------------------------------------------------------------------------------------ consistency


def test_readme_has_runnable_steps_and_no_stale_allowances() -> None:
    commands = {s.text for s in STEPS if s.kind == "bash"}
    assert not set(ALLOWED) - commands, (
        f"ALLOWED lists lines the README no longer has: {set(ALLOWED) - commands}"
    )
    assert sum(s.kind == "python" for s in FAST) >= 5 and sum(s.kind == "bash" for s in FAST) >= 10
    for step in FAST:  # every fast shell line has a way to run (else shell_argv raises when it runs)
        assert step.kind == "python" or step.text.split()[0] in {"maskctrl", "python"}, step.text


def test_readme_lists_every_subcommand() -> None:
    text = README.read_text()
    for name in COMMANDS:
        assert f"| `maskctrl {name}` |" in text, f"the README's command table lacks `maskctrl {name}`"


def test_results_check_passes() -> None:
    assert readme_results.main(["--check"]) == 0


def test_results_section_is_generated_from_the_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = tmp_path / "README.md"
    shutil.copy(README, readme)
    empty = tmp_path / "no-results"
    empty.mkdir()
    # Against no JSON at all, the real README is stale, and regenerating says "not yet measured".
    has_results = any((REPO / "benchmarks" / "results").glob("*.json"))
    args = ["--readme", str(readme), "--results", str(empty)]
    assert readme_results.main([*args, "--check"]) == (1 if has_results else 0)
    assert readme_results.main(args) == 0
    section = readme.read_text().split("<!-- results:start -->")[1].split("<!-- results:end -->")[0]
    assert section.count("*Not yet measured:*") == len(readme_results.BENCHMARKS)
    assert readme_results.main([*args, "--check"]) == 0

    # One JSON: its numbers appear, formatted from the file.
    record = {
        "config": {"envs": ["Reacher"]},
        "machine": {"date": "2026-01-02 03:04:05", "processor": "TestCPU", "cpu_count": 2, "torch": "x"},
        "rows": [
            {"env": "Reacher", "method": m, "samples": 64, "horizon": 25, "iterations": 3,
             "returns": r, "steps_per_second": [15.0, 17.0]}
            for m, r in (("random", [-42.0, -40.0]), ("icem", [-4.5, -5.5]))
        ],
    }  # fmt: skip
    (empty / "mpc_oracle.json").write_text(json.dumps(record))
    assert readme_results.main([*args, "--check"]) == 1
    assert "stale in section(s) results" in capsys.readouterr().err
    assert readme_results.main(args) == 0
    text = readme.read_text()
    assert "| Reacher | 64 / 25 / 3   | -41.0 ± 1.0 | -   | -5.0 ± 0.5 | -    |   16.0 ± 1.0 |" in text
    assert "measured 2026-01-02 03:04:05 on TestCPU x2" in text
    assert text.count("*Not yet measured:*") == len(readme_results.BENCHMARKS) - 1

    # A JSON of another layout and a README without markers are reported, not half-written.
    (empty / "bc.json").write_text(json.dumps({"envs": [{"env": "Reacher"}]}))
    before = readme.read_text()
    assert readme_results.main(args) == 2
    assert "bc.json does not have the layout" in capsys.readouterr().err
    (empty / "bc.json").unlink()
    readme.write_text(before.replace("<!-- results:end -->", ""))
    assert readme_results.main(args) == 2
    assert (
        "expected one '<!-- results:start -->' followed by one '<!-- results:end -->'"
        in capsys.readouterr().err
    )


def test_oracle_results_mark_the_methods_planned_with_a_critic() -> None:
    rows = [
        {"env": "Hopper", "method": m, "samples": 64, "horizon": 10, "iterations": 3, "action_repeat": 4,
         "returns": [r, r + 2.0], "steps_per_second": [7.0, 7.0], "safety_critic": critic}
        for m, r, critic in (("random", 49.0, False), ("cem", 1025.0, False), ("icem", 1784.0, True))
    ]  # fmt: skip
    table = readme_results.mpc_oracle({"rows": rows})
    assert "| 1026.0 ± 1.0 | 1785.0 ± 1.0 + critic | - " in table
    assert "64 / 10 / 3 (×4 held) |" in table


def test_checkpoint_table_reads_the_shipped_config(tmp_path: Path) -> None:
    assert "No default checkpoint" in readme_results.render_checkpoints(tmp_path)
    made = tmp_path / "Reacher"
    made.mkdir()
    (made / "model.safetensors").write_bytes(b"0" * 1_500_000)
    rows = [
        {"method": "random", "score": 0.0},
        {"method": "transformer", "score": 0.876, "policy_prior": 0.25},
    ]
    metadata = {
        "val_losses": {"forward": 0.01234},
        "train_seconds": 600.0,
        "data": {
            "random": {"summary": {"n_episodes": 200}},
            "expert": {"summary": {"n_episodes": 30}},
            "planner1": {"summary": {"n_episodes": 4}},
        },
        "score": {"how": "maskctrl demo --env Reacher", "measured": "2026-11-25T21:00:00", "rows": rows},
    }
    model = {"n_layer": 3, "d_model": 96, "context_len": 32}
    (made / "config.json").write_text(json.dumps({"model": model, "step": 2000, "metadata": metadata}))
    table = readme_results.render_checkpoints(tmp_path)
    line = next(line for line in table.splitlines() if line.startswith("| Reacher "))
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    episodes = "200 random + 30 expert + 4 own-planner (round 1)"
    assert cells == ["Reacher", "3 × 96, context 32", "1.5 MB", episodes, "2000", "0.0123", "10 min", "0.88"]
    assert "Reacher: `maskctrl demo --env Reacher` with policy prior 0.25, 2026-11-25" in table
    rows[1]["policy_prior"] = 0.0  # no prior, or a score recorded before rows said: nothing added
    (made / "config.json").write_text(json.dumps({"model": model, "step": 2000, "metadata": metadata}))
    assert "Reacher: `maskctrl demo --env Reacher`, 2026-11-25" in readme_results.render_checkpoints(tmp_path)
    shipped = sorted(p.parent.name for p in (REPO / "maskctrl" / "checkpoints").glob("*/config.json"))
    table = readme_results.render_checkpoints(REPO / "maskctrl" / "checkpoints")
    for env in shipped:
        saved = json.loads((REPO / "maskctrl" / "checkpoints" / env / "config.json").read_text())
        model = saved["model"]
        assert f"| {env} " in table
        assert f"{model['n_layer']} × {model['d_model']}, context {model['context_len']}" in table


def test_results_measured_with_a_since_rebuilt_backbone_say_so() -> None:
    built = json.loads((REPO / "maskctrl/checkpoints/InvertedPendulum/config.json").read_text())["metadata"][
        "built"
    ]
    record = {
        "machine": {"date": "2000-01-01 00:00:00"},
        "models": [{"path": "/x/maskctrl/checkpoints/InvertedPendulum"}],
    }
    assert readme_results._rebuilt_since(record) == f"InvertedPendulum (rebuilt {built[:10]})"
    record["machine"]["date"] = "2999-01-01 00:00:00"  # measured after the build
    assert readme_results._rebuilt_since(record) == ""
    assert (
        readme_results._rebuilt_since({"machine": {}, "path": "maskctrl/checkpoints/Reacher"}) == ""
    )  # no date


def _pretrain_record(env: str, all_objectives: float, ensemble: float, **config: object) -> dict[str, object]:
    def res(final: float) -> dict[str, object]:
        return {"mse": [final / 5, final]}

    return {
        "config": {"d_model": 128, **config},
        "budget": {"random_episodes": 40, "expert_episodes": 10, "steps": 10000, "batch_size": 128},
        "machine": {"date": "2026-01-02 03:04:05", "processor": "TestCPU", "torch": "x"},
        "envs": [
            {
                "env": env,
                "open_loop": {
                    "transformer (all objectives)": res(all_objectives),
                    "transformer (forward only)": res(0.5),
                    "MLP ensemble (mean)": res(ensemble),
                },
            }
        ],
    }


def test_other_pretraining_runs_are_listed_under_the_benchmark_not_as_it(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    benchmark = _pretrain_record("HalfCheetah", 0.08, 0.06)
    benchmark["merged_from"] = ["/elsewhere/pretrain_HalfCheetah.json"]
    (results / "pretrain.json").write_text(json.dumps(benchmark))
    # the per-env record it was merged from is part of it, not another run
    (results / "pretrain_HalfCheetah.json").write_text(
        json.dumps(_pretrain_record("HalfCheetah", 0.08, 0.06))
    )
    alone = readme_results.render_results(results)
    assert "Other runs" not in alone and "HalfCheetah **not met**" in alone

    side = _pretrain_record("Hopper", 0.0119, 0.0163, lr=0.001, forward_weight=4.0, compile=True)
    (results / "pretrain_fw4_Hopper.json").write_text(json.dumps(side))
    text = readme_results.render_results(results)
    assert text.startswith(alone.split("#### Behaviour")[0].rstrip())  # the benchmark's own text unchanged
    line = next(ln for ln in text.splitlines() if ln.startswith("- [pretrain_fw4_Hopper]"))
    assert "(benchmarks/results/pretrain_fw4_Hopper.md)" in line
    assert "10000 steps of batch 128, d=128, lr 0.001, forward weight 4, compiled" in line
    assert (
        "all objectives 0.0119, forward only 0.5000, ensemble 0.0163 (all objectives below the ensemble: yes)"
        in line
    )
    assert "HalfCheetah **not met**" in text  # the verdict stays the benchmark's

    (results / "pretrain_broken.json").write_text(json.dumps({"config": {}}))
    with pytest.raises(ValueError, match=r"pretrain_broken\.json does not have the layout"):
        readme_results.render_results(results)
