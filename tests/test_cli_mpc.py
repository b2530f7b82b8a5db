"""``maskctrl mpc`` end to end on pointmass with tiny sizes: oracle, transformer and MLP checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_transformer_dynamics import _save_pointmass_checkpoint, make_normalizer

from maskctrl.cli import main as cli_main
from maskctrl.commands.mpc import main
from maskctrl.envs.registry import get_spec
from maskctrl.models.ensemble import EnsembleConfig, EnsembleMLP, save_ensemble
from maskctrl.planner.presets import BUDGETS, POLICY_PRIOR, default_policy_prior, policy_loss_weight
from maskctrl.recipes import CHECKPOINT_ROOT

TINY = ["--env", "pointmass", "--horizon", "8", "--samples", "32", "--iterations", "2", "--no-progress"]


def test_mpc_command_runs_prints_and_saves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(
        ["mpc", *TINY, "--episodes", "2", "--optimizer", "cem", "--seed", "3", "--out-dir", str(tmp_path)]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "episode" in out and "steps/s" in out and "mean" in out and "±" in out
    record = json.loads((tmp_path / "pointmass_oracle_cem_seed3.json").read_text())
    episodes = record["episodes"]
    assert [e["seed"] for e in episodes] == [3, 4] and [e["length"] for e in episodes] == [50, 50]
    mean = sum(e["episode_return"] for e in episodes) / 2
    assert record["summary"]["return_mean"] == pytest.approx(mean)
    assert mean > -15  # doing nothing scores about -40 from these starts
    assert record["config"]["optimizer"] == "cem" and record["config"]["samples"] == 32
    assert f"{episodes[0]['episode_return']:.2f}" in out
    png = (tmp_path / "pointmass_oracle_cem_seed3.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_max_steps_caps_episodes(tmp_path: Path) -> None:
    assert main([*TINY, "--episodes", "1", "--max-steps", "7", "--out-dir", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "pointmass_oracle_icem_seed0.json").read_text())
    assert record["episodes"][0]["length"] == 7


def test_budget_defaults_to_the_env_preset_and_oracle_imagines_the_real_env(tmp_path: Path) -> None:
    args = ["--env", "pointmass", "--episodes", "1", "--max-steps", "6", "--plot-step", "3", "--no-progress"]
    assert main([*args, "--out-dir", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "pointmass_oracle_icem_seed0.json").read_text())
    budget = BUDGETS["pointmass"]
    assert (record["mpc"]["samples"], record["mpc"]["horizon"], record["mpc"]["iterations"]) == (
        budget.samples,
        budget.horizon,
        budget.iterations,
    )
    plot = record["imagined_vs_real"]
    assert plot["control_step"] == 3 and len(plot["imagined"]) == budget.horizon + 1
    assert len(plot["real"]) == 3 + 1  # the episode is truncated after 6 steps
    assert max(plot["rmse_per_step"]) < 1e-5  # the oracle's imagination is the real env
    assert (tmp_path / "pointmass_oracle_icem_seed0_imagined.png").read_bytes()[:4] == b"\x89PNG"


def _tiny_ensemble(path: Path) -> None:
    spec = get_spec("pointmass")
    box = spec.make().action_space
    norm = make_normalizer(4, torch.as_tensor(box.low), torch.as_tensor(box.high))
    config = EnsembleConfig(members=2, hidden=8, layers=1)
    model = EnsembleMLP(4, 2, config, generator=torch.Generator().manual_seed(0))
    save_ensemble(path, model, norm, metadata={"env_name": "pointmass"})


@pytest.mark.parametrize("dynamics", ["transformer", "mlp"])
def test_learned_dynamics_run_from_a_checkpoint(
    dynamics: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "model"
    _save_pointmass_checkpoint(ckpt) if dynamics == "transformer" else _tiny_ensemble(ckpt)
    out_dir = tmp_path / "out"
    args = [*TINY, "--dynamics", dynamics, "--checkpoint", str(ckpt), "--episodes", "1", "--max-steps", "5"]
    assert main([*args, "--plot-step", "2", "--reward", "model", "--out-dir", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert f"pointmass: {dynamics} dynamics, icem (N=32, H=8, iterations=2)" in out
    record = json.loads((out_dir / f"pointmass_{dynamics}_icem_seed0.json").read_text())
    assert record["config"]["checkpoint"] == str(ckpt) and record["episodes"][0]["length"] == 5
    plot = record["imagined_vs_real"]
    assert plot["control_step"] == 2 and len(plot["imagined"]) == 9 and len(plot["real"]) == 4
    assert all(len(row) == 4 for row in plot["imagined"] + plot["real"])
    assert plot["imagined"][0] == pytest.approx(plot["real"][0])  # both start at the real observation
    assert (out_dir / f"pointmass_{dynamics}_icem_seed0_imagined.png").read_bytes()[:4] == b"\x89PNG"


def test_transformer_policy_prior_flag(tmp_path: Path) -> None:
    _save_pointmass_checkpoint(tmp_path / "model")
    args = [*TINY, "--dynamics", "transformer", "--checkpoint", str(tmp_path / "model"), "--max-steps", "3"]
    assert (
        main([*args, "--episodes", "1", "--policy-prior-fraction", "0.25", "--out-dir", str(tmp_path)]) == 0
    )
    record = json.loads((tmp_path / "pointmass_transformer_icem_seed0.json").read_text())
    assert record["mpc"]["policy_prior_fraction"] == 0.25


def test_transformer_defaults_to_the_shipped_backbone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--env", "InvertedPendulum", "--dynamics", "transformer", "--samples", "8", "--horizon", "4"]
    args += ["--iterations", "1", "--episodes", "1", "--max-steps", "2", "--plot-step", "-1", "--no-progress"]
    assert main([*args, "--out-dir", str(tmp_path)]) == 0
    shipped = CHECKPOINT_ROOT / "InvertedPendulum"
    assert f"using the shipped backbone {shipped}" in capsys.readouterr().err
    record = json.loads((tmp_path / "InvertedPendulum_transformer_icem_seed0.json").read_text())
    assert record["config"]["checkpoint"] == str(shipped)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dynamics", "transformer"], "without --checkpoint: no default checkpoint for env 'pointmass'"),
        (["--dynamics", "mlp"], "--dynamics mlp needs --checkpoint DIR"),
        (["--dynamics", "transformer", "--checkpoint", "missing"], "no checkpoint at missing"),
        (["--dynamics", "mlp", "--checkpoint", "ckpt", "--policy-prior-fraction", "0.5"], "policy_samples"),
        (
            ["--env", "InvertedPendulum", "--dynamics", "transformer", "--checkpoint", "ckpt"],
            "not 'InvertedPendulum'",
        ),
        (
            ["--env", "InvertedPendulum", "--dynamics", "mlp", "--checkpoint", "ckpt"],
            "not 'InvertedPendulum'",
        ),
    ],
)
def test_learned_dynamics_errors_are_reported(
    extra: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (_tiny_ensemble if "mlp" in extra else _save_pointmass_checkpoint)(tmp_path / "ckpt")
    assert main([*TINY, *extra, "--out-dir", "out"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maskctrl mpc: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_unknown_env_lists_known_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--env", "Cheetah", "--out-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown env 'Cheetah'" in err and "HalfCheetah" in err


def test_policy_prior_defaults_per_env_and_dynamics() -> None:
    """No flag: the env's POLICY_PRIOR for a transformer whose metadata records a policy loss, else 0."""
    from maskctrl.commands.mpc import MPCCommandConfig, mpc_config, policy_prior_fraction

    shipped = CHECKPOINT_ROOT / "HalfCheetah"
    assert policy_loss_weight(json.loads((shipped / "config.json").read_text())["metadata"]) == 0.5
    transformer = MPCCommandConfig(env="HalfCheetah", dynamics="transformer", checkpoint=shipped)
    assert policy_prior_fraction(transformer) == POLICY_PRIOR["HalfCheetah"] > 0
    assert mpc_config(transformer).policy_prior_samples == round(POLICY_PRIOR["HalfCheetah"] * 128)
    flag = MPCCommandConfig(
        env="HalfCheetah", dynamics="transformer", checkpoint=shipped, policy_prior_fraction=0.0
    )
    assert policy_prior_fraction(flag) == 0.0  # the flag wins
    assert policy_prior_fraction(MPCCommandConfig(env="HalfCheetah", dynamics="oracle")) == 0.0
    reacher = MPCCommandConfig(env="Reacher", dynamics="transformer", checkpoint=CHECKPOINT_ROOT / "Reacher")
    assert policy_prior_fraction(reacher) == 0.0  # no default for Reacher
    missing = MPCCommandConfig(env="HalfCheetah", dynamics="transformer", checkpoint=Path("/nonexistent"))
    assert policy_prior_fraction(missing) == 0.0  # loading reports the missing checkpoint


def test_policy_loss_weight_reads_recipe_and_pretrain_metadata() -> None:
    assert policy_loss_weight({"objective_weights": {"policy": 0.5}}) == 0.5
    assert policy_loss_weight({"config": {"weights": {"forward": 1.0, "policy": 0.0}}}) == 0.0
    assert policy_loss_weight({"config": {"steps": 10}}) is None and policy_loss_weight({}) is None
    # A backbone without a trained policy head gets no prior: its proposals would waste candidates.
    assert default_policy_prior("HalfCheetah", {"config": {"weights": {"policy": 0.0}}}) == 0.0
    assert default_policy_prior("HalfCheetah", {}) == 0.0
    assert (
        default_policy_prior("HalfCheetah", {"objective_weights": {"policy": 1.0}})
        == POLICY_PRIOR["HalfCheetah"]
    )
    assert default_policy_prior("Reacher", {"objective_weights": {"policy": 1.0}}) == 0.0


def test_compile_flag_reaches_the_transformer_dynamics(tmp_path: Path) -> None:
    from maskctrl.commands.mpc import MPCCommandConfig, load_dynamics
    from maskctrl.planner.transformer_dynamics import TransformerDynamics

    _save_pointmass_checkpoint(tmp_path / "model")
    spec = get_spec("pointmass")
    env = spec.make()
    for flag in (False, True):
        cfg = MPCCommandConfig(
            env="pointmass", dynamics="transformer", checkpoint=tmp_path / "model", compile=flag
        )
        dynamics = load_dynamics(cfg, spec, env)
        assert isinstance(dynamics, TransformerDynamics)
        assert (dynamics._decode_fixed is not None) == flag  # compiled lazily, at the first rollout
    env.close()


def test_compile_flag_needs_the_transformer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY, "--dynamics", "oracle", "--compile", "--out-dir", str(tmp_path)]) != 0
    assert "--compile applies to --dynamics transformer, not oracle" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before any episode ran


def test_reward_flag_picks_what_the_planner_scores() -> None:
    """--reward spec: the spec's shaped planning objective of the imagined transitions; --reward model:
    the model's reward head (it had no effect for envs with a planning objective before)."""
    from maskctrl.commands.mpc import MPCCommandConfig, build_controller
    from maskctrl.planner.dynamics import previous_observations

    spec = get_spec("HalfCheetah")
    env = spec.make()
    obs, _ = env.reset(seed=0)
    actions = torch.rand(4, 15, 6, generator=torch.Generator().manual_seed(0)) * 2 - 1  # [N,H,A]
    scores = {}
    for reward in ("spec", "model"):
        cfg = MPCCommandConfig(
            env="HalfCheetah",
            dynamics="transformer",
            checkpoint=CHECKPOINT_ROOT / "HalfCheetah",
            reward=reward,
        )
        controller = build_controller(cfg, spec, env)
        controller.reset(1)
        controller.histories.push(torch.as_tensor(obs[None], dtype=torch.float32))
        history = controller.history(0)
        out = controller.dynamics.rollout(history, actions)
        prev = previous_observations(history.current_obs, out.next_obs)
        assert spec.planning_reward_fn is not None
        expected = spec.planning_reward_fn(prev, actions, out.next_obs) if reward == "spec" else out.reward
        scores[reward] = controller._objective(history, actions)
        torch.testing.assert_close(scores[reward], expected.sum(1))
    assert (scores["spec"] - scores["model"]).abs().max() > 0.1  # the two objectives differ


def test_reward_model_flag_needs_learned_dynamics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY, "--dynamics", "oracle", "--reward", "model", "--out-dir", str(tmp_path)]) != 0
    assert "--reward model applies to learned dynamics" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_hopper_oracle_plans_with_the_shipped_safety_critic_unless_told_not_to(tmp_path: Path) -> None:
    from maskctrl.commands.mpc import MPCCommandConfig, critic_objective
    from maskctrl.envs import rewards
    from maskctrl.planner import presets
    from maskctrl.planner.critic import FallPenalty

    small = ["--env", "Hopper", "--samples", "8", "--iterations", "1", "--episodes", "1", "--max-steps", "3"]
    args = [*small, "--plot-step", "-1", "--no-progress"]
    for extra, expected in (([], True), (["--no-critic"], False)):
        out = tmp_path / str(expected)
        assert main([*args, *extra, "--out-dir", str(out)]) == 0
        record = json.loads(next(out.glob("Hopper_oracle_icem_seed0.json")).read_text())
        assert record["safety_critic"] is expected
    spec = get_spec("Hopper")
    objective = critic_objective(MPCCommandConfig(env="Hopper"), spec)
    assert isinstance(objective["terminal_value"], FallPenalty)
    assert objective["planning_reward_fn"] is rewards.hopper_critic_planning_reward
    # Learned dynamics keep the spec's objective unless a critic is named: the critic was tuned on the oracle.
    assert critic_objective(MPCCommandConfig(env="Hopper", dynamics="transformer"), spec) == {}
    # So does plain CEM (the critic was tuned with icem and mppi), unless a critic is named.
    assert critic_objective(MPCCommandConfig(env="Hopper", optimizer="mppi"), spec) != {}
    assert critic_objective(MPCCommandConfig(env="Hopper", optimizer="cem"), spec) == {}
    named = MPCCommandConfig(env="Hopper", optimizer="cem", critic=presets.CRITIC_ROOT / "Hopper")
    assert isinstance(critic_objective(named, spec)["terminal_value"], FallPenalty)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--critic", "somewhere", "--no-critic"], "contradict"),
        (["--critic", "missing-dir"], "no safety-critic preset"),
    ],
)
def test_critic_flag_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main([*TINY, "--episodes", "1", *extra, "--out-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
