"""``benchmarks/mpc_learned.py`` reuses a cached MLP ensemble only if it was trained on the same data."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from bench_scripts import load

bench = load("mpc_learned")


def test_cached_ensemble_is_retrained_when_its_data_or_epochs_changed(tmp_path: Path) -> None:
    cfg = bench.BenchConfig(recipe_dir=tmp_path / "no-recipes", work_dir=tmp_path / "work", ensemble_epochs=1)
    path, provenance = bench.ensemble_checkpoint("pointmass", cfg)
    assert "fallback data" in provenance and "cached" not in provenance
    saved = json.loads((path / "config.json").read_text())["metadata"]
    assert saved["epochs"] == 1 and len(saved["data_dirs"]) == 1

    again, provenance = bench.ensemble_checkpoint("pointmass", cfg)
    assert again == path and provenance.endswith("(cached)")

    _, provenance = bench.ensemble_checkpoint("pointmass", replace(cfg, ensemble_epochs=2))
    assert "cached" not in provenance
    assert json.loads((path / "config.json").read_text())["metadata"]["epochs"] == 2

    saved = json.loads((path / "config.json").read_text())
    saved["metadata"]["data_dirs"] = ["somewhere/else"]  # as if trained on an earlier recipe's datasets
    (path / "config.json").write_text(json.dumps(saved))
    _, provenance = bench.ensemble_checkpoint("pointmass", replace(cfg, ensemble_epochs=2))
    assert "cached" not in provenance
