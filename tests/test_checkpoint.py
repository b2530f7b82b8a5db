"""Checkpoints: bit-exact round trips, refusal of unsafe or broken files, crash safety, env checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

from maskctrl.models import checkpoint as ckpt
from maskctrl.models.checkpoint import CheckpointError, EnvInfo, load_checkpoint, save_checkpoint
from maskctrl.models.normalizer import Normalizer
from maskctrl.models.transformer import MaskedControlTransformer, TransformerConfig

OBS, ACT = 17, 6


def _env(obs_dim: int = OBS, act_dim: int = ACT, low: float = -1.0) -> SimpleNamespace:
    return SimpleNamespace(
        observation_space=gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float64),
        action_space=gym.spaces.Box(low, 1.0, (act_dim,), np.float32),
    )


def _model(seed: int = 0) -> MaskedControlTransformer:
    torch.manual_seed(seed)
    return MaskedControlTransformer(
        TransformerConfig(obs_dim=OBS, act_dim=ACT, n_layer=1, n_head=2, d_model=32)
    )


def _normalizer() -> Normalizer:
    gen = torch.Generator().manual_seed(1)
    obs = torch.randn(100, OBS, generator=gen)
    return Normalizer.from_data(
        obs,
        obs + 0.1 * torch.randn(100, OBS, generator=gen),
        rewards=torch.randn(100, generator=gen),
        act_low=-np.ones(ACT),
        act_high=np.ones(ACT),
    )


def _save(path: Path, seed: int = 0, step: int = 7) -> MaskedControlTransformer:
    model = _model(seed)
    save_checkpoint(
        path,
        model,
        normalizer=_normalizer(),
        env=EnvInfo.from_env(_env(), "HalfCheetah"),
        step=step,
        metadata={"made_by": "test"},
    )
    return model


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    model = _save(tmp_path / "ck")
    loaded = load_checkpoint(tmp_path / "ck", env=_env(), env_name="HalfCheetah")
    saved_state, loaded_state = model.state_dict(), loaded.model.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    for key, value in saved_state.items():
        assert torch.equal(value, loaded_state[key]), key
    assert loaded.model.config == model.config
    assert loaded.step == 7 and loaded.metadata == {"made_by": "test"}
    assert loaded.env is not None and loaded.env.name == "HalfCheetah"
    expected = _normalizer()
    assert loaded.normalizer is not None
    for name in ("obs_mean", "obs_std", "delta_mean", "delta_std", "act_low", "act_high"):
        assert torch.equal(getattr(loaded.normalizer, name), getattr(expected, name)), name
    assert loaded.normalizer.reward_std == expected.reward_std


def test_trainer_state_round_trip(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, OBS), torch.randn(2, 3, ACT)).hidden.sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "step": 3, "rng": torch.get_rng_state()}
    save_checkpoint(tmp_path / "ck", model, trainer_state=state)
    loaded = ckpt.load_trainer_state(tmp_path / "ck")
    assert loaded["step"] == 3 and torch.equal(loaded["rng"], state["rng"])
    for key, value in opt.state_dict()["state"][0].items():
        assert torch.equal(loaded["optimizer"]["state"][0][key], value)


class _Payload:
    """An object whose unpickling would run code: it creates a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.marker,))


def test_pickled_object_posing_as_trainer_state_is_refused(tmp_path: Path) -> None:
    _save(tmp_path / "ck")
    marker = tmp_path / "code-ran"
    torch.save({"optimizer": _Payload(str(marker))}, tmp_path / "ck" / ckpt.TRAINER_STATE)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        ckpt.load_trainer_state(tmp_path / "ck")
    assert not marker.exists()


def test_missing_trainer_state_says_it_cannot_resume(tmp_path: Path) -> None:
    _save(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="cannot be resumed"):
        ckpt.load_trainer_state(tmp_path / "ck")


def test_truncated_weights_are_rejected(tmp_path: Path) -> None:
    _save(tmp_path / "ck")
    weights = tmp_path / "ck" / ckpt.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "ck")


def test_truncated_config_is_rejected(tmp_path: Path) -> None:
    _save(tmp_path / "ck")
    config = tmp_path / "ck" / ckpt.CONFIG
    config.write_text(config.read_text()[:50])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path / "ck")


def test_foreign_directory_and_files_are_rejected(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / ckpt.CONFIG).write_text(json.dumps({"architectures": ["BertModel"]}))
    (foreign / ckpt.WEIGHTS).write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a maskctrl checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        load_checkpoint(tmp_path / "file")


def test_weights_from_another_model_are_rejected(tmp_path: Path) -> None:
    _save(tmp_path / "ck")
    other = MaskedControlTransformer(
        TransformerConfig(obs_dim=OBS, act_dim=ACT, n_layer=2, n_head=2, d_model=32)
    )
    save_checkpoint(tmp_path / "other", other)
    (tmp_path / "ck" / ckpt.WEIGHTS).unlink()
    (tmp_path / "other" / ckpt.WEIGHTS).rename(tmp_path / "ck" / ckpt.WEIGHTS)
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(tmp_path / "ck")


def test_save_refuses_to_replace_a_directory_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    precious = tmp_path / "results"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="refusing to replace"):
        save_checkpoint(precious, _model())
    assert (precious / "notes.txt").read_text() == "keep me"


def test_crash_between_renames_leaves_previous_checkpoint_loadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _save(tmp_path / "ck", seed=0, step=1)
    real_rename = os.rename
    calls = {"n": 0}

    def failing_rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # old checkpoint moved aside, new one not yet in place
            raise OSError("simulated power loss")
        real_rename(src, dst)

    monkeypatch.setattr(ckpt.os, "rename", failing_rename)
    with pytest.raises(OSError, match="simulated"):
        _save(tmp_path / "ck", seed=1, step=2)
    monkeypatch.setattr(ckpt.os, "rename", real_rename)
    assert not (tmp_path / "ck").exists()  # the crash really struck in the window
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.step == 1
    for key, value in first.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)


def test_crash_while_writing_weights_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _save(tmp_path / "ck", step=1)

    def partial_write(model: torch.nn.Module, filename: str) -> None:
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_model", partial_write)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path / "ck", step=2)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "ck").step == 1
    _save(tmp_path / "ck", step=3)  # the leftover temporary directory does not block the next save
    assert load_checkpoint(tmp_path / "ck").step == 3


def test_killed_saver_never_leaves_an_unloadable_checkpoint(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, torch
        from maskctrl.models.checkpoint import save_checkpoint
        from maskctrl.models.transformer import MaskedControlTransformer, TransformerConfig
        model = MaskedControlTransformer(TransformerConfig(obs_dim=3, act_dim=2, n_layer=1, n_head=1, d_model=16))
        step = 0
        while True:
            step += 1
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(step)
            save_checkpoint({str(tmp_path / "ck")!r}, model, step=step)
            if step == 1:
                print("saved", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "saved"
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.step >= 1
    for value in loaded.model.state_dict().values():
        assert torch.all(value == loaded.step)  # weights and config come from the same save


def test_mismatched_env_names_the_difference(tmp_path: Path) -> None:
    _save(tmp_path / "ck")
    with pytest.raises(CheckpointError, match=r"checkpoint expects obs dim 17, env 'Hopper' has 11"):
        load_checkpoint(tmp_path / "ck", env=_env(obs_dim=11, act_dim=3), env_name="Hopper")
    with pytest.raises(CheckpointError, match=r"trained on 'HalfCheetah', not 'Hopper'"):
        load_checkpoint(tmp_path / "ck", env=_env(), env_name="Hopper")
    with pytest.raises(CheckpointError, match="action bounds"):
        load_checkpoint(tmp_path / "ck", env=_env(low=-2.0))
    discrete = SimpleNamespace(
        observation_space=_env().observation_space, action_space=gym.spaces.Discrete(6)
    )
    with pytest.raises(CheckpointError, match="expects continuous"):
        load_checkpoint(tmp_path / "ck", env=discrete)


def test_newer_format_is_refused(tmp_path: Path) -> None:
    _save(tmp_path / "ck")
    config_file = tmp_path / "ck" / ckpt.CONFIG
    config = json.loads(config_file.read_text())
    config["format_version"] = ckpt.FORMAT_VERSION + 1
    config_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="reads up to"):
        load_checkpoint(tmp_path / "ck")
