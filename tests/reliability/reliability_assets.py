"""Good and broken datasets and checkpoints that the bad-input rows point at, built once per session.

Everything is tiny: pointmass datasets of 4 episodes x 12 steps (O=4, A=2), a Reacher dataset of 2 x 5
steps (for mixing envs), and a 1-layer d=16 transformer checkpoint for pointmass. Each broken variant is
a copy of a good one with exactly one thing wrong, named after it.

Two assets hide a payload whose unpickling would create a directory (``PWNED_*``) inside the assets:
the snapshot check of every row would see it appear.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from maskctrl.data.collect import collect_episodes
from maskctrl.data.episodes import EPISODES_FILE, METADATA_FILE, load_episodes, save_episodes
from maskctrl.models import checkpoint as ckpt
from maskctrl.models.checkpoint import EnvInfo, save_checkpoint
from maskctrl.models.normalizer import Normalizer
from maskctrl.models.transformer import MaskedControlTransformer, TransformerConfig

EPISODES, STEPS = 4, 12
"""Shape of the good pointmass dataset: 4 episodes of 12 steps."""
TINY_MODEL = TransformerConfig(obs_dim=4, act_dim=2, context_len=8, n_layer=1, n_head=2, d_model=16)
"""The checkpointed model: pointmass dims, one layer."""
PWNED_WEIGHTS = "pwned-by-weights"
"""Directory a pickled payload in a checkpoint's weights file would create."""
PWNED_STATE = "pwned-by-trainer-state"
"""Directory a pickled payload in a trainer state would create."""
PWNED_NPZ = "pwned-by-npz"
"""Directory a pickled payload in an episodes.npz would create."""


class Payload:
    """An object whose unpickling runs code: it creates the directory ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.marker,))


def tiny_model(seed: int = 0) -> MaskedControlTransformer:
    """The checkpointed model, initialized from ``seed`` without touching the global torch RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MaskedControlTransformer(TINY_MODEL)


def build_assets(root: Path) -> Path:
    """Write every asset under ``root`` (created) and return it."""
    root.mkdir(parents=True, exist_ok=True)
    _datasets(root)
    _checkpoints(root)
    (root / "notes").mkdir()
    (root / "notes" / "notes.txt").write_text("not a dataset, not a checkpoint: never replace me\n")
    (root / "a-file").write_text("a plain file where a directory is expected\n")
    return root


# --- datasets -------------------------------------------------------------------------------------


def _datasets(root: Path) -> None:
    good = root / "data-pointmass"
    save_episodes(
        collect_episodes("pointmass", "random", n_episodes=EPISODES, seed=0, max_steps=STEPS, progress=False),
        good,
    )
    save_episodes(
        collect_episodes("Reacher", "random", n_episodes=2, seed=0, max_steps=5, progress=False),
        root / "data-reacher",
    )
    data = load_episodes(good)
    arrays = data.arrays()
    obs_row = int(data.obs_offsets[1]) + 3
    step_row = int(data.step_offsets[2]) + 5

    def variant(name: str, **changes: np.ndarray) -> Path:
        out = root / name
        shutil.copytree(good, out)
        with open(out / EPISODES_FILE, "wb") as handle:
            np.savez(handle, **{**arrays, **changes})
        return out

    nan_obs = arrays["observations"].copy()
    nan_obs[obs_row, 1] = np.nan
    variant("data-nan-obs", observations=nan_obs)
    inf_rew = arrays["rewards"].copy()
    inf_rew[step_row] = np.inf
    variant("data-inf-reward", rewards=inf_rew)
    variant("data-int-actions", actions=np.round(arrays["actions"]).astype(np.int64))
    variant("data-obs-dim", observations=arrays["observations"][:, :3].copy())
    lengths = arrays["lengths"].copy()
    lengths[2] += 5
    variant("data-bad-lengths", lengths=lengths)
    pickled = np.empty(arrays["actions"].shape[0], dtype=object)
    pickled[:] = [Payload(str(root / PWNED_NPZ))] * pickled.shape[0]
    variant("data-pickled", actions=pickled)
    empty = {key: np.zeros((0, *value.shape[1:]), dtype=value.dtype) for key, value in arrays.items()}
    variant("data-empty", **empty)

    truncated = variant("data-truncated-npz")
    npz = truncated / EPISODES_FILE
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    bad_json = variant("data-bad-json")
    (bad_json / METADATA_FILE).write_text('{"env_name": "pointmass", "obs_dim": ')
    missing = variant("data-missing-npz")
    (missing / EPISODES_FILE).unlink()
    _edit_json(variant("data-future") / METADATA_FILE, format_version=99)
    _edit_json(variant("data-no-act-dim") / METADATA_FILE, act_dim=None)


# --- checkpoints ----------------------------------------------------------------------------------


def _checkpoints(root: Path) -> None:
    env = gym.make("maskctrl/PointMass-v0")
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(64, 4, generator=gen)
    normalizer = Normalizer.from_data(
        obs, obs + 0.1 * torch.randn(64, 4, generator=gen), act_low=env.action_space.low,
        act_high=env.action_space.high,
    )  # fmt: skip
    model = tiny_model()
    info = EnvInfo.from_env(env, "pointmass")
    good = root / "ckpt-good"
    state = {"step": 3, "seed": 0, "wall_time_s": 1.0}
    save_checkpoint(good, model, normalizer=normalizer, env=info, step=3, trainer_state=state)
    save_checkpoint(root / "ckpt-no-state", model, normalizer=normalizer, env=info, step=3)

    def variant(name: str) -> Path:
        out = root / name
        shutil.copytree(good, out)
        return out

    weights = variant("ckpt-truncated-weights") / ckpt.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:1000])
    config = variant("ckpt-bad-json") / ckpt.CONFIG
    config.write_text(config.read_text()[:60])
    (variant("ckpt-missing-weights") / ckpt.WEIGHTS).unlink()
    state_file = variant("ckpt-truncated-state") / ckpt.TRAINER_STATE
    state_file.write_bytes(state_file.read_bytes()[:100])
    torch.save(
        {"optimizer": Payload(str(root / PWNED_STATE))}, variant("ckpt-pickled-state") / ckpt.TRAINER_STATE
    )

    # A pickle where the safetensors file should be, with a checksum that matches it: only the
    # safetensors reader stands between the payload and execution.
    pickled = variant("ckpt-pickled-weights")
    torch.save({"weights": Payload(str(root / PWNED_WEIGHTS))}, pickled / ckpt.WEIGHTS)
    _edit_json(pickled / ckpt.CONFIG, weights_sha256=ckpt._sha256(pickled / ckpt.WEIGHTS))

    _edit_json(variant("ckpt-future") / ckpt.CONFIG, format_version=ckpt.FORMAT_VERSION + 1)
    _edit_json(variant("ckpt-missing-keys") / ckpt.CONFIG, step=None, weights_sha256=None)
    _edit_model(variant("ckpt-unknown-model-field"), n_experts=4)
    _edit_model(variant("ckpt-bad-model-value"), d_model=15)
    _edit_model(variant("ckpt-wrong-dims"), obs_dim=5)
    _edit_json(variant("ckpt-bad-env-entry") / ckpt.CONFIG, env={"name": "pointmass"})
    _edit_json(variant("ckpt-env-entry-not-object") / ckpt.CONFIG, env=["pointmass"])
    _edit_json(variant("ckpt-fractional-step") / ckpt.CONFIG, step=2.5)
    stats = normalizer.to_dict()
    _edit_json(
        variant("ckpt-bad-normalizer") / ckpt.CONFIG, normalizer={**stats, "obs_mean": ["a", "b", "c", "d"]}
    )
    _edit_json(variant("ckpt-zero-std") / ckpt.CONFIG, normalizer={**stats, "obs_std": [0.0] * 4})

    foreign = root / "ckpt-foreign"
    foreign.mkdir()
    (foreign / ckpt.CONFIG).write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "n_layer": 12}))
    (foreign / ckpt.WEIGHTS).write_bytes(b"\x00" * 256)
    torch.save(model.state_dict(), root / "model.pt")

    run = root / "run-corrupt-ckpt"
    shutil.copytree(root / "ckpt-bad-json", run / "checkpoint")
    (run / "log.csv").write_text("step,lr\n1,0.0003\n")


def _edit_json(path: Path, **changes: Any) -> None:
    """Set keys of the JSON object in ``path``; a value of None deletes the key."""
    content = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            content.pop(key, None)
        else:
            content[key] = value
    path.write_text(json.dumps(content, indent=2))


def _edit_model(directory: Path, **changes: Any) -> None:
    config = json.loads((directory / ckpt.CONFIG).read_text())
    _edit_json(directory / ckpt.CONFIG, model={**config["model"], **changes})
