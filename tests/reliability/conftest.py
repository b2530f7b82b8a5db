"""Fixtures of the reliability suite, and the summary line that says how much it tried.

Tests record what they are with ``record_property("reliability", KIND)`` (``"bad input"``,
``"fault injection"`` or ``"determinism check"``); the terminal summary then reads, e.g.
``reliability: 160 bad inputs (150 passed, 10 xfailed: known defects), 6 fault injections (6 passed)``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from reliability_assets import build_assets

KINDS = ("bad input", "fault injection", "determinism check")
"""What a reliability test can be, in the order the summary lists them."""
_TALLY: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The good and broken datasets and checkpoints of ``reliability_assets`` (built once)."""
    return build_assets(tmp_path_factory.mktemp("reliability-assets"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Count each reliability test once, by its outcome."""
    if report.when != "call":
        return
    kinds = [value for name, value in report.user_properties if name == "reliability"]
    if not kinds:
        return
    outcome = "xfailed" if hasattr(report, "wasxfail") and report.skipped else report.outcome
    _TALLY[str(kinds[0])][outcome] += 1


def _plural(count: int, kind: str) -> str:
    return f"{count} {kind}" + ("s" if count != 1 else "")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the reliability line when any reliability test ran."""
    parts = []
    for kind in KINDS:
        tally = _TALLY[kind]
        total = sum(tally.values())
        if not total:
            continue
        outcomes = ", ".join(
            f"{count} {outcome}" + (": known defects" if outcome == "xfailed" else "")
            for outcome, count in sorted(tally.items())
        )
        parts.append(f"{_plural(total, kind)} ({outcomes})")
    if parts:
        terminalreporter.write_line("reliability: " + ", ".join(parts))
