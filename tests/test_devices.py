"""Device strings: resolved where they are used, refused with one clear message where they cannot work."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

from maskctrl.devices import resolve_device
from maskctrl.envs import POINTMASS_ID, get_spec
from maskctrl.planner import MPCConfig, MPCController, OracleDynamics
from maskctrl.training import distributed

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def test_cpu_and_auto() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected


@pytest.mark.parametrize("device", ["nonsense", "gpu", "cuda:x", ""])
def test_unknown_device_strings_are_refused(device: str) -> None:
    with pytest.raises(
        ValueError, match=rf"unknown device '{device}'; expected 'auto', 'cpu', 'cuda', 'cuda:N'"
    ):
        resolve_device(device)


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_refused(device: str) -> None:
    with pytest.raises(ValueError, match=rf"device '{device}' asked for, but CUDA is not available"):
        resolve_device(device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bare_cuda_is_this_process_gpu_and_missing_gpus_are_refused() -> None:
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    count = torch.cuda.device_count()
    with pytest.raises(ValueError, match=rf"only {count} CUDA device\(s\) are available"):
        resolve_device(f"cuda:{count}")


def test_training_and_planning_share_the_check() -> None:
    with pytest.raises(ValueError, match="unknown device 'nonsense'"):
        distributed.start("nonsense")
    env = gym.make(POINTMASS_ID)
    spec = get_spec("pointmass")
    with pytest.raises(ValueError, match="unknown device 'nonsense'"):
        MPCController(
            OracleDynamics([env], spec, nthread=0), spec, env.action_space, MPCConfig(device="nonsense")
        )
    controller = MPCController(OracleDynamics([env], spec, nthread=0), spec, env.action_space, MPCConfig())
    assert controller.device == torch.device("cpu")
