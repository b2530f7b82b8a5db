"""Determinism on CPU: the same seed gives the same actions, datasets and weights, bit for bit.

Between the two runs of each check the global RNGs (``random``, numpy's legacy one, torch's) are set
to something else, so a result that secretly depended on global random state would differ. Each
check also runs a different seed and asserts that something changes, so it cannot pass by comparing
two constants.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_table import RecordProperty, run_cli
from safetensors.torch import load_file

from maskctrl.data.collect import RandomPolicy
from maskctrl.data.episodes import load_episodes
from maskctrl.envs import get_spec
from maskctrl.planner import MPCConfig, MPCController, OracleDynamics
from maskctrl.training import logs

DETERMINISM = "determinism check"


def scramble_global_rngs(seed: int) -> None:
    """Put every global RNG into a state no run should depend on."""
    random.seed(seed)
    np.random.seed(seed)  # the legacy global RNG, which no run may depend on
    torch.manual_seed(seed)


def mpc_rollout(env_name: str, seed: int, *, steps: int, nthread: int) -> tuple[np.ndarray, np.ndarray]:
    """Actions [steps,A] MPC with the oracle emits from reset seed 0, and the observations [steps,O] it meets."""
    spec = get_spec(env_name)
    env = spec.make()
    obs, _ = env.reset(seed=0)
    config = MPCConfig(horizon=5, samples=32, iterations=2, seed=seed)
    controller = MPCController(OracleDynamics([env], spec, nthread=nthread), spec, env.action_space, config)
    actions, observations = [], []
    for t in range(steps):
        action, _ = controller.predict(obs, episode_start=np.array([t == 0]))
        observations.append(obs)
        actions.append(action)
        obs, *_ = env.step(action)
    env.close()
    return np.stack(actions), np.stack(observations)


@pytest.mark.parametrize(("env_name", "nthread"), [("pointmass", 0), ("HalfCheetah", 2)])
def test_mpc_with_the_oracle_repeats_its_actions(
    env_name: str, nthread: int, record_property: RecordProperty
) -> None:
    record_property("reliability", DETERMINISM)
    scramble_global_rngs(1)
    actions, observations = mpc_rollout(env_name, seed=3, steps=8, nthread=nthread)
    scramble_global_rngs(2)
    again, observations_again = mpc_rollout(env_name, seed=3, steps=8, nthread=nthread)
    np.testing.assert_array_equal(again, actions)
    np.testing.assert_array_equal(observations_again, observations)
    other, _ = mpc_rollout(env_name, seed=4, steps=8, nthread=nthread)
    assert not np.array_equal(other, actions), "another planner seed should plan differently"


def test_random_policy_repeats_its_actions(record_property: RecordProperty) -> None:
    record_property("reliability", DETERMINISM)
    space = get_spec("HalfCheetah").make().action_space
    obs = np.zeros((3, 17))

    def draws(seed: int) -> np.ndarray:
        policy = RandomPolicy(space, seed)
        return np.stack([policy.predict(obs)[0] for _ in range(4)])  # [4,3,6]

    scramble_global_rngs(1)
    first = draws(7)
    scramble_global_rngs(2)
    np.testing.assert_array_equal(draws(7), first)
    assert not np.array_equal(draws(8), first)
    assert first.shape == (4, 3, 6) and np.all(first >= space.low) and np.all(first <= space.high)


COLLECTIONS = {
    "random": ["--policy", "random", "--noise", "0.2"],
    "oracle-mpc": ["--policy", "oracle-mpc", "--horizon", "4", "--samples", "16", "--iterations", "1"],
}


@pytest.mark.parametrize("policy", list(COLLECTIONS))
def test_collect_twice_writes_identical_arrays(
    policy: str, tmp_path: Path, record_property: RecordProperty
) -> None:
    record_property("reliability", DETERMINISM)

    def collect(name: str, seed: int) -> dict[str, np.ndarray]:
        out = tmp_path / name
        run_cli(["collect", "--env", "pointmass", "--episodes", "3", "--n-envs", "2", "--max-steps", "8",
                 "--seed", str(seed), "--out", str(out), "--no-progress", *COLLECTIONS[policy]])  # fmt: skip
        data = load_episodes(out)
        data.metadata.pop("created")
        return {**data.arrays(), "metadata": np.array(repr(sorted(data.metadata.items())))}

    scramble_global_rngs(1)
    first = collect("a", seed=5)
    scramble_global_rngs(2)
    second = collect("b", seed=5)
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(second[key], first[key], err_msg=key)
    assert not np.array_equal(collect("c", seed=6)["actions"], first["actions"])


def test_pretrain_twice_gives_identical_weights_and_losses(
    assets: Path, tmp_path: Path, record_property: RecordProperty
) -> None:
    record_property("reliability", DETERMINISM)

    def pretrain(name: str, seed: int) -> tuple[dict[str, torch.Tensor], list[dict[str, str]]]:
        out = tmp_path / name
        run_cli(["pretrain", "--data", str(assets / "data-pointmass"), "--out", str(out), "--steps", "6",
                 "--window", "8", "--n-layer", "1", "--n-head", "2", "--d-model", "16", "--batch-size", "8",
                 "--dropout", "0.1", "--val-every", "3", "--log-every", "1", "--seed", str(seed),
                 "--num-threads", "1", "--no-progress", "--no-tensorboard"])  # fmt: skip
        rows = logs.read_log(out / logs.LOG_FILE)
        losses = [{k: v for k, v in row.items() if k.startswith(("train/", "val/", "lr"))} for row in rows]
        return load_file(out / "checkpoint" / "model.safetensors"), losses

    scramble_global_rngs(1)
    weights, losses = pretrain("a", seed=2)
    scramble_global_rngs(2)
    weights_again, losses_again = pretrain("b", seed=2)
    assert losses_again == losses  # the exact float text of every loss
    assert weights.keys() == weights_again.keys()
    assert all(torch.equal(weights[key], weights_again[key]) for key in weights)
    other, _ = pretrain("c", seed=3)
    assert not torch.equal(other["obs_embed.weight"], weights["obs_embed.weight"])
