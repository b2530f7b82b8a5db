"""``benchmarks/mpc_learned.py`` reuses a cached MLP ensemble only if it was trained on the same data."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
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


def test_ensemble_datasets_are_the_ones_the_shipped_backbone_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped, recipes = tmp_path / "checkpoints", tmp_path / "recipes"
    (shipped / "Reacher").mkdir(parents=True)
    names = ["random-a", "expert-b", "planner1-c"]
    config = {"metadata": {"datasets": names}}
    (shipped / "Reacher" / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(bench, "CHECKPOINT_ROOT", shipped)
    for name in names[:2]:
        (recipes / "Reacher" / name).mkdir(parents=True)
        (recipes / "Reacher" / name / "metadata.json").write_text("{}")
    assert bench.recipe_datasets("Reacher", recipes) == []  # one is missing: not the shipped model's data
    (recipes / "Reacher" / names[2]).mkdir()
    (recipes / "Reacher" / names[2] / "metadata.json").write_text("{}")
    assert bench.recipe_datasets("Reacher", recipes) == [recipes / "Reacher" / n for n in names]
    assert bench.recipe_datasets("Hopper", recipes) == []  # no shipped config lists any
