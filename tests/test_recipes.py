"""The default-backbone recipe end to end at a tiny scale: data cached, checkpoint exported and scored."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from maskctrl.models.checkpoint import load_checkpoint, read_config
from maskctrl.recipes import (
    RECIPES,
    RecipeConfig,
    build,
    data_dirs,
    default_checkpoint,
    main,
    random_data_backbone,
    scaled,
)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def small_reacher(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Reacher recipe with a one-block, narrow backbone: ``--scale`` shrinks data and steps but not
    the model, whose size would set these tests' time (training, and planning with it as world model)."""
    small = dataclasses.replace(RECIPES["Reacher"], n_layer=1, d_model=32, n_head=2)
    monkeypatch.setitem(RECIPES, "Reacher", small)


@pytest.mark.usefixtures("small_reacher")
def test_tiny_recipe_builds_a_loadable_scored_checkpoint(tmp_path: Path) -> None:
    cfg = RecipeConfig(
        envs=("Reacher",),
        work_dir=tmp_path / "work",
        out_root=tmp_path / "ckpt",
        scale=0.01,
        score_episodes=1,
        score_max_steps=3,
        progress=False,
    )
    dest = build("Reacher", cfg)
    ckpt = load_checkpoint(dest, env_name="Reacher")
    meta = ckpt.metadata
    assert meta["recipe"]["steps"] == 20 and meta["data"]["random"]["summary"]["n_episodes"] == 2
    assert meta["built_by"].startswith("python -m maskctrl.recipes")
    assert ckpt.model.config.context_len == RECIPES["Reacher"].window
    rows = {r["method"]: r for r in meta["score"]["rows"]}
    assert set(rows) == {"random", "transformer", "oracle"}
    assert len(rows["transformer"]["returns"]) == 1
    assert rows["transformer"]["policy_prior"] == 0.0 and rows["random"]["policy_prior"] is None
    assert not (dest / "trainer_state.pt").exists()  # shipped weights carry no optimizer state
    # Rescoring keeps the weights byte for byte and reuses the cached datasets.
    weights = _sha(dest / "model.safetensors")
    datasets = sorted(p.name for p in (tmp_path / "work" / "Reacher").iterdir())
    assert main(["--envs", "Reacher", "--work-dir", str(tmp_path / "work"), "--out-root", str(tmp_path / "ckpt"),
                 "--scale", "0.01", "--score-only", "--score-episodes", "1", "--score-max-steps", "2",
                 "--no-progress"]) == 0  # fmt: skip
    assert _sha(dest / "model.safetensors") == weights
    assert sorted(p.name for p in (tmp_path / "work" / "Reacher").iterdir()) == datasets
    assert load_checkpoint(dest).metadata["score"]["how"].endswith("--max-steps 2")


@pytest.mark.usefixtures("small_reacher")
def test_planner_round_collects_with_the_first_model_and_a_rebuild_reuses_finished_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(RECIPES, "Reacher", dataclasses.replace(RECIPES["Reacher"], planner_rounds=1))
    cfg = RecipeConfig(
        envs=("Reacher",), work_dir=tmp_path / "work", out_root=tmp_path / "ckpt", scale=0.01,
        score_episodes=0, progress=False,
    )  # fmt: skip
    dest = build("Reacher", cfg)
    meta = load_checkpoint(dest).metadata
    work = tmp_path / "work" / "Reacher"
    names = [r["run"] for r in meta["runs"]]
    assert [name.rsplit("-", 1)[0] for name in names] == ["run", "run1"]
    first_sha = read_config(work / names[0] / "checkpoint")["weights_sha256"]
    planner = meta["datasets"][2]
    assert meta["datasets"][:2] == [
        p.name for p in data_dirs("Reacher", cfg.work_dir, scaled(RECIPES["Reacher"], 0.01))
    ]
    assert planner.startswith("planner1-1x20-") and planner.endswith(first_sha[:12])
    assert meta["data"]["planner1"]["summary"]["n_episodes"] == 1
    assert [r["cached"] for r in meta["runs"]] == [False, False]
    run1 = load_checkpoint(work / names[1] / "checkpoint").metadata
    assert [Path(d).name for d in run1["data_dirs"]] == meta["datasets"]  # the second model saw all three
    weights = _sha(dest / "model.safetensors")
    capsys.readouterr()
    build("Reacher", cfg)  # nothing changed: both runs and the planner's episodes are reused
    assert capsys.readouterr().err.count("reusing the finished run") == 2
    meta = load_checkpoint(dest).metadata
    assert [r["cached"] for r in meta["runs"]] == [True, True] and meta["data"]["planner1"]["cached"]
    assert [r["run"] for r in meta["runs"]] == names
    assert _sha(dest / "model.safetensors") == weights
    # Other settings train into other directories: the finished runs stay as they were.
    first_weights = _sha(work / names[0] / "checkpoint" / "model.safetensors")
    build("Reacher", dataclasses.replace(cfg, threads=cfg.threads + 1))
    other = [r["run"] for r in load_checkpoint(dest).metadata["runs"]]
    assert other[0] != names[0] and other[0].startswith("run-")
    assert _sha(work / names[0] / "checkpoint" / "model.safetensors") == first_weights
    assert read_config(work / names[0] / "checkpoint")["metadata"]["finished"]


@pytest.mark.usefixtures("small_reacher")
def test_a_recipes_expert_planner_and_forward_weight_reach_its_data_and_its_run(tmp_path: Path) -> None:
    preset = data_dirs("Reacher", tmp_path)[1].name
    assert "-N" not in preset and "-H" not in preset  # the preset expert's datasets keep their names
    recipe = dataclasses.replace(
        RECIPES["Reacher"], expert_samples=8, expert_horizon=3, expert_iterations=1, forward_weight=4.0
    )
    RECIPES["Reacher"] = recipe  # undone by the fixture's monkeypatch
    cfg = RecipeConfig(
        envs=("Reacher",), work_dir=tmp_path / "work", out_root=tmp_path / "ckpt", scale=0.01,
        score_episodes=0, progress=False,
    )  # fmt: skip
    meta = load_checkpoint(build("Reacher", cfg)).metadata
    expert = tmp_path / "work" / "Reacher" / meta["datasets"][1]
    assert expert.name == preset.replace("-noise0.2-", "-noise0.2-N8-H3-I1-").replace("30x50", "1x20")
    policy = json.loads((expert / "metadata.json").read_text())["policy"]
    assert policy == "oracle-mpc (preset with N=8, H=3, iterations=1)"
    assert meta["recipe"]["forward_weight"] == 4.0
    assert meta["objective_weights"]["forward"] == 4.0 and meta["objective_weights"]["policy"] == 0.5
    run = read_config(tmp_path / "work" / "Reacher" / meta["runs"][0]["run"] / "checkpoint")["metadata"]
    assert run["config"]["weights"]["forward"] == 4.0


def test_unknown_env_and_missing_default_checkpoint_are_clear(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--envs", "Nowhere"]) == 2
    assert "no recipe for ['Nowhere']" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no default checkpoint for env 'Nowhere'"):
        default_checkpoint("Nowhere")


def test_random_data_backbone_is_tiny_loadable_and_reuses_its_episodes(tmp_path: Path) -> None:
    result = random_data_backbone("pointmass", tmp_path, episodes=2, steps=4, window=6, seed=3)
    ckpt = load_checkpoint(result.checkpoint, env_name="pointmass")
    cfg = ckpt.model.config
    assert (cfg.n_layer, cfg.d_model, cfg.context_len) == (2, 32, 6)
    assert result.step == 4
    episodes = tmp_path / "random-2-seed3" / "episodes.npz"
    before, weights = _sha(episodes), _sha(result.checkpoint / "model.safetensors")
    mtime = episodes.stat().st_mtime_ns
    again = random_data_backbone("pointmass", tmp_path, episodes=2, steps=4, window=6, seed=3)
    assert episodes.stat().st_mtime_ns == mtime and _sha(episodes) == before  # reused, not collected again
    assert _sha(again.checkpoint / "model.safetensors") == weights  # same seed, same data: same weights
