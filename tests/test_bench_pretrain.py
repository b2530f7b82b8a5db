"""``benchmarks/pretrain.py --merge``: per-env runs (run side by side) combine into one results page."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from bench_scripts import load

REPO = Path(__file__).resolve().parents[1]
bench = load("pretrain")

RESULTS = REPO / "benchmarks" / "results" / "pretrain.json"


def _split(tmp_path: Path) -> tuple[dict, list[Path]]:
    whole = json.loads(RESULTS.read_text())
    assert len(whole["envs"]) >= 2
    paths = []
    for env in whole["envs"]:
        part = copy.deepcopy(whole)
        part["envs"], part["config"]["envs"] = [env], [env["env"]]
        part["config"]["name"] = f"pretrain_{env['env']}"
        path = tmp_path / f"pretrain_{env['env']}.json"
        path.write_text(json.dumps(part))
        paths.append(path)
    return whole, paths


def test_merging_per_env_records_gives_the_page_of_one_run(tmp_path: Path) -> None:
    whole, paths = _split(tmp_path)
    merged = bench.main(bench.BenchConfig(merge=tuple(paths), out_dir=tmp_path, name="merged"))
    assert [e["env"] for e in merged["envs"]] == [e["env"] for e in whole["envs"]]
    page = (tmp_path / "merged.md").read_text()
    for env in whole["envs"]:
        for model, result in env["open_loop"].items():
            assert f"| {env['env']}" in page and model in page
            assert f"{result['mse'][-1]:.4f}" in page
    saved = json.loads((tmp_path / "merged.json").read_text())
    assert saved["merged_from"] == [str(p) for p in paths]
    for env in whole["envs"]:  # the record says how it was made: one run per env, then the merge
        assert f"--envs {env['env']} " in saved["command"]
    assert saved["command"].endswith(f"--merge {' '.join(p.name for p in paths)}")


def test_merging_runs_with_other_settings_is_refused(tmp_path: Path) -> None:
    _, paths = _split(tmp_path)
    other = json.loads(paths[1].read_text())
    other["budget"]["steps"] += 1
    other["config"]["seed"] += 1
    paths[1].write_text(json.dumps(other))
    with pytest.raises(SystemExit, match=r"other settings than .*: budget, seed"):
        bench.main(bench.BenchConfig(merge=tuple(paths), out_dir=tmp_path, name="merged"))


def test_merging_a_missing_record_says_which(tmp_path: Path) -> None:
    _, paths = _split(tmp_path)
    with pytest.raises(SystemExit, match=r"cannot read the record .*nowhere\.json"):
        bench.main(bench.BenchConfig(merge=(paths[0], tmp_path / "nowhere.json"), out_dir=tmp_path))
