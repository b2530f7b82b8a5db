"""The Hopper safety-critic recipe: round orchestration (synthetic data) and one real collection chunk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import maskctrl.critic_recipe as recipe
from maskctrl.critic_recipe import CriticRecipeConfig, Round, build, collect_chunk
from maskctrl.data.episodes import Episode, EpisodeData
from maskctrl.envs.registry import get_spec
from maskctrl.envs.spaces import describe_space
from maskctrl.planner.critic import CriticConfig, FallPenalty, load_critic, save_critic
from maskctrl.planner.critic import SafetyCritic as Critic

TINY = CriticConfig(members=2, hidden=8, steps=5, batch_size=8, drop_tail=2)


def synthetic(n: int, seed: int) -> EpisodeData:
    """``n`` Hopper-sized episodes of 6 steps; the even ones terminate."""
    rng = np.random.default_rng(seed)
    episodes = [
        Episode(
            observations=rng.normal(size=(7, 11)).astype(np.float32),
            actions=rng.uniform(-1, 1, size=(6, 3)).astype(np.float32),
            rewards=np.ones(6, np.float32),
            terminated=i % 2 == 0,
            truncated=i % 2 == 1,
            reset_seed=seed + i,
        )
        for i in range(n)
    ]
    env = get_spec("Hopper").make()
    metadata = {
        "env_name": "Hopper",
        "gym_id": env.spec.id,
        "obs_dim": 11,
        "act_dim": 3,
        "observation_space": describe_space(env.observation_space),
        "action_space": describe_space(env.action_space),
    }
    env.close()
    return EpisodeData.from_episodes(episodes, metadata)


def test_rounds_are_guided_by_the_earlier_critic_cached_and_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, Path | None]] = []

    def fake_round(cfg: CriticRecipeConfig, rnd: Round, critic_path: Path | None) -> EpisodeData:
        if critic_path is not None:  # a guided round reads a loadable critic fitted on the earlier rounds
            assert isinstance(load_critic(critic_path, obs_dim=11)[0], Critic)
        calls.append((rnd.seed, critic_path))
        return synthetic(rnd.episodes, rnd.seed)

    monkeypatch.setattr(recipe, "collect_round", fake_round)
    cfg = CriticRecipeConfig(
        rounds=(Round(episodes=4, seed=1000, guided=False), Round(episodes=3, seed=2000, guided=True)),
        critic=TINY,
        work_dir=tmp_path / "work",
        out=tmp_path / "critic",
        progress=False,
    )
    out = build(cfg)
    assert [seed for seed, _ in calls] == [1000, 2000]
    assert calls[0][1] is None and calls[1][1] == tmp_path / "work" / "Hopper" / "critic-after-round0"
    critic, metadata = load_critic(out, obs_dim=11)
    assert critic.config == TINY
    assert [r["seed"] for r in metadata["rounds"]] == [1000, 2000]
    assert [r["falls"] for r in metadata["rounds"]] == [2, 2]
    assert metadata["fit"]["episodes"] == 7 and metadata["fit"]["terminated_episodes"] == 4
    assert json.loads((out / "config.json").read_text())["metadata"]["env"] == "Hopper"
    # A rebuild reuses the cached rounds: nothing is collected again.
    calls.clear()
    build(cfg)
    assert calls == []


def test_first_round_cannot_be_guided(tmp_path: Path) -> None:
    cfg = CriticRecipeConfig(rounds=(Round(episodes=2, seed=0, guided=True),), work_dir=tmp_path)
    with pytest.raises(ValueError, match="first round cannot be guided"):
        build(cfg)


def test_a_collection_chunk_plans_hopper_with_and_without_a_critic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = CriticRecipeConfig(samples=8, iterations=1, max_steps=6, work_dir=tmp_path, progress=False)
    path = save_critic(tmp_path / "c", Critic(11, TINY))
    scored: list[int] = []
    original = FallPenalty.__call__

    def counting(self: FallPenalty, obs: Any) -> Any:
        scored.append(len(obs))
        return original(self, obs)

    monkeypatch.setattr(FallPenalty, "__call__", counting)
    for critic in (None, str(path)):
        scored.clear()
        data = collect_chunk(cfg, 1000, 2, critic)
        assert data.n_episodes == 2 and list(data.reset_seeds) == [1000, 1001]
        assert data.lengths.max() <= 6
        assert f"critic={critic}" in data.metadata["policy"]
        # Guided: every plan (one per 4 held steps: 2 per 6-step episode, 1 iteration) scores its 8
        # sampled candidates (iCEM adds its mean and kept elites from the second plan on).
        assert scored == [] if critic is None else len(scored) == 4 and min(scored) >= 8, scored
