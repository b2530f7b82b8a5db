"""``benchmarks/common.py``: the command line a record says it was made with."""

from __future__ import annotations

from dataclasses import dataclass

from bench_scripts import load

common = load("common")


@dataclass(frozen=True)
class Options:
    envs: tuple[str, ...] = ("Reacher", "HalfCheetah")
    max_steps: int | None = None
    progress: bool = True
    lr: float = 3e-4


def test_command_line_names_the_options_that_differ_from_their_defaults() -> None:
    assert common.command_line("x.py", Options()) == "python benchmarks/x.py"
    changed = Options(envs=("Hopper",), max_steps=200, progress=False, lr=1e-3)
    expected = "python benchmarks/x.py --envs Hopper --max-steps 200 --no-progress --lr 0.001"
    assert common.command_line("x.py", changed) == expected
