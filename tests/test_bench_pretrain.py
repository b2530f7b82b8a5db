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


def test_merged_records_keep_their_lr_and_forward_weight(tmp_path: Path) -> None:
    _, paths = _split(tmp_path)
    first = json.loads(paths[0].read_text())
    assert "forward_weight" not in first["config"]  # a record older than the flag: weight 1
    second = json.loads(paths[1].read_text())
    second["config"]["forward_weight"] = 1.0
    paths[1].write_text(json.dumps(second))
    merged = bench.main(bench.BenchConfig(merge=tuple(paths), out_dir=tmp_path, name="old_and_new"))
    assert "--lr" not in merged["command"] and "--forward-weight" not in merged["command"]
    for path in paths:
        record = json.loads(path.read_text())
        record["config"] |= {"lr": 1e-3, "forward_weight": 4.0}
        path.write_text(json.dumps(record))
    merged = bench.main(bench.BenchConfig(merge=tuple(paths), out_dir=tmp_path, name="weighted"))
    assert merged["command"].count("--lr 0.001 --forward-weight 4 ") == len(paths)
    page = (tmp_path / "weighted.md").read_text()
    assert "peak lr 0.001" in page and "sums forward (weight 4, the others 1), reward" in page
    record = json.loads(paths[1].read_text())
    record["config"]["forward_weight"] = 2.0
    paths[1].write_text(json.dumps(record))
    with pytest.raises(SystemExit, match=r"other settings than .*: forward_weight"):
        bench.main(bench.BenchConfig(merge=tuple(paths), out_dir=tmp_path, name="refused"))


def test_merged_command_names_the_budget_and_compile_flags_the_runs_used(tmp_path: Path) -> None:
    _, paths = _split(tmp_path)
    for path in paths:
        record = json.loads(path.read_text())
        record["config"] |= {"lr": 1e-3, "forward_weight": 4.0, "compile": True}
        record["budget"]["steps"] = 1_000_000  # an int flag, not 1e+06
        path.write_text(json.dumps(record))
    merged = bench.main(bench.BenchConfig(merge=tuple(paths), out_dir=tmp_path, name="long"))
    flags = " --compile --lr 0.001 --forward-weight 4 --steps 1000000"
    assert merged["command"].count(f"--name pretrain_{merged['envs'][0]['env']}{flags} &") == 1
    assert merged["command"].count(flags) == len(paths)
    page = (tmp_path / "long.md").read_text()
    assert "1000000 steps of batch 128" in page and "(NVIDIA H200), compiled;" in page
