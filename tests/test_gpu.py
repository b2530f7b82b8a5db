"""The CUDA path: dynamics, planner and controller on the GPU agree with the CPU; no host sync per step.

Every test here is marked ``gpu`` and skipped without CUDA. Float32 matmuls are kept off TF32 so that
CUDA and CPU agree to float32 rounding.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_mlp_dynamics import make_ensemble
from test_transformer_dynamics import (
    HIGH,
    LOW,
    A,
    O,
    candidates,
    controller,
    make_history,
    make_model,
    make_normalizer,
    toy_spec,
)

from maskctrl.commands import collect
from maskctrl.planner.dynamics import History
from maskctrl.planner.mlp_dynamics import MLPDynamics
from maskctrl.planner.optimizers import make_optimizer
from maskctrl.planner.transformer_dynamics import TransformerDynamics
from maskctrl.pretrain import PretrainConfig
from maskctrl.training import distributed
from maskctrl.training.trainer import Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _no_tf32() -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved


def _pair(cuda_graphs: bool | None = None, **options: Any) -> tuple[TransformerDynamics, TransformerDynamics]:
    """The same model on the CPU and on the GPU (``cuda_graphs`` applies to the GPU one)."""
    model, norm, spec = make_model(), make_normalizer(), toy_spec()
    on_gpu = copy.deepcopy(model).to(CUDA)
    return TransformerDynamics(model, norm, spec, **options), TransformerDynamics(
        on_gpu, norm, spec, cuda_graphs=cuda_graphs, **options
    )


def _on_cuda(history: History) -> History:
    return History(
        obs=history.obs.to(CUDA), act=history.act.to(CUDA), valid=history.valid.to(CUDA), env_index=0
    )


@pytest.mark.parametrize(("k0", "pad", "horizon"), [(6, 0, 5), (6, 3, 5), (3, 1, 25)])
def test_transformer_rollout_on_cuda_matches_cpu(k0: int, pad: int, horizon: int) -> None:
    cpu, gpu = _pair(reward="model")
    history, actions = make_history(k0, pad), candidates(64, horizon)
    want = cpu.rollout(history, actions)
    got = gpu.rollout(history, actions.to(CUDA))
    assert got.next_obs.device.type == "cuda" and got.reward.device.type == "cuda"
    torch.testing.assert_close(got.next_obs.cpu(), want.next_obs, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.reward.cpu(), want.reward, atol=1e-4, rtol=0)
    assert torch.equal(got.terminated.cpu(), want.terminated)
    # A CPU caller gets CPU tensors back from a model on the GPU.
    assert gpu.rollout(history, actions).next_obs.device.type == "cpu"


@pytest.mark.parametrize("graphs", [False, True])
def test_transformer_decode_steps_do_not_sync_the_host(graphs: bool) -> None:
    _, gpu = _pair(cuda_graphs=graphs)
    history, actions = _on_cuda(make_history(6, 2)), candidates(128, 5).to(CUDA)
    gpu.rollout(history, actions)  # encodes (and keeps) the history's prefix: one sync, allowed
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = gpu.rollout(history, actions)  # the same History: only the per-step decoding runs
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out.next_obs).all()


def test_bf16_autocast_on_cuda_stays_close_to_float32() -> None:
    _, full = _pair()
    _, half = _pair(bf16=True)
    history, actions = make_history(6, 0), candidates(64, 5).to(CUDA)
    want, got = full.rollout(history, actions), half.rollout(history, actions)
    assert got.next_obs.dtype == torch.float32
    diff = (got.next_obs - want.next_obs).abs().max()
    assert 0 < diff < 0.1 * want.next_obs.abs().max()


def test_policy_samples_on_cuda_match_cpu_without_noise() -> None:
    cpu, gpu = _pair(policy_noise=0.0)
    history = make_history(4, 1)
    want = cpu.policy_samples(history, 3, 6, torch.Generator().manual_seed(0))
    got = gpu.policy_samples(history, 3, 6, torch.Generator(device=CUDA).manual_seed(0))
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=0)


def test_mlp_rollout_on_cuda_matches_cpu() -> None:
    model, norm, spec = make_ensemble(), make_normalizer(), toy_spec()
    cpu = MLPDynamics(model, norm, spec)
    gpu = MLPDynamics(copy.deepcopy(model).to(CUDA), norm, spec)
    history, actions = make_history(4, 0), candidates(64, 7)
    want, got = cpu.rollout(history, actions), gpu.rollout(history, actions.to(CUDA))
    torch.testing.assert_close(got.next_obs.cpu(), want.next_obs, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.reward.cpu(), want.reward, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["cem", "icem", "mppi"])
def test_optimizers_on_cuda_find_the_optimum(name: str) -> None:
    target = torch.tensor([0.3, -0.7], device=CUDA)

    def objective(actions: torch.Tensor) -> torch.Tensor:  # [N,H,A] -> [N], best at `target`
        assert actions.device.type == "cuda"
        return -(actions - target).square().sum((1, 2))

    # MPPI's weighted mean is noisier than CEM's elites: sharper weights, more samples, looser bar.
    sharp: dict[str, Any] = (
        {"temperature": 0.05, "num_samples": 1024, "momentum": 0.5} if name == "mppi" else {}
    )
    tolerance = 0.2 if name == "mppi" else 0.05  # the midpoint start is 0.7 away
    optimizer = make_optimizer(
        name,
        horizon=4,
        action_low=[-1.0, -1.0],
        action_high=[1.0, 1.0],
        device=CUDA,
        num_iterations=8,
        **sharp,
    )
    result = optimizer.optimize(objective, generator=torch.Generator(device=CUDA).manual_seed(0))
    assert result.actions.device.type == "cuda"
    torch.testing.assert_close(result.actions, target.expand(4, 2), atol=tolerance, rtol=0)


def test_controller_on_cuda_scores_like_the_cpu_and_stays_in_bounds() -> None:
    cpu_dyn, gpu_dyn = _pair()
    cpu_ctrl = controller(cpu_dyn)
    gpu_ctrl = controller(gpu_dyn, device="cuda", policy_prior_fraction=0.25)
    observations = [np.linspace(-1.0, 2.0, O) + 0.1 * step for step in range(4)]
    for obs in observations:
        cpu_ctrl.predict(obs)
        action, _ = gpu_ctrl.predict(obs)
        assert isinstance(action, np.ndarray) and action.shape == (A,)
        assert np.isfinite(action).all() and np.all(action >= LOW.numpy()) and np.all(action <= HIGH.numpy())
    # The emitted actions differ (CPU and CUDA generators differ); the planning objective must not.
    history, fixed = make_history(4, 1), candidates(32, 4)
    want = cpu_ctrl._objective(history, fixed)
    got = gpu_ctrl._objective(_on_cuda(history), fixed.to(CUDA))
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), want, atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("bf16", [False, True])
def test_cuda_graph_replays_equal_eager_decoding_for_new_inputs(bf16: bool) -> None:
    model, norm, spec = make_model(), make_normalizer(), toy_spec()
    on_gpu = copy.deepcopy(model).to(CUDA)
    eager = TransformerDynamics(on_gpu, norm, spec, reward="model", bf16=bf16, cuda_graphs=False)
    graphed = TransformerDynamics(on_gpu, norm, spec, reward="model", bf16=bf16)
    assert graphed.cuda_graphs and not eager.cuda_graphs
    # New histories and candidates every call (the graph's input buffers must be refilled), another
    # history length and batch size (another graph) and a horizon past the window (per-candidate windows).
    cases = [(6, 0, 5, 64), (6, 2, 5, 64), (5, 1, 5, 32), (6, 0, 5, 64), (3, 1, 25, 16)]
    graphs = []
    for seed, (k0, pad, horizon, n) in enumerate(cases):
        history = make_history(k0, pad, seed=10 + seed)
        actions = candidates(n, horizon, seed=20 + seed).to(CUDA)
        want, got = eager.rollout(history, actions), graphed.rollout(history, actions)
        torch.testing.assert_close(got.next_obs, want.next_obs, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.reward, want.reward, atol=1e-5, rtol=0)
        graphs.append(len(graphed._graphs))
    assert graphs[:4] == [1, 1, 2, 2]  # one graph per window shape, replayed for same-shaped calls
    assert graphs[4] > 2


def test_compiled_decoding_replayed_from_cuda_graphs_equals_eager_without_host_syncs() -> None:
    """``compile=True`` on CUDA keeps the graphs, which capture the compiled (fused) decoding steps."""
    model, norm, spec = make_model(), make_normalizer(), toy_spec()
    on_gpu = copy.deepcopy(model).to(CUDA)
    eager = TransformerDynamics(on_gpu, norm, spec, reward="model", cuda_graphs=False)
    compiled = TransformerDynamics(on_gpu, norm, spec, reward="model", compile=True)
    assert compiled.cuda_graphs and compiled._decode_fixed is not None
    # New histories (padded differently) and candidates of one shape: one graph, refilled each call.
    for seed, pad in enumerate([0, 2, 1]):
        history = make_history(6, pad, seed=10 + seed)
        actions = candidates(64, 5, seed=20 + seed).to(CUDA)
        want, got = eager.rollout(history, actions), compiled.rollout(history, actions)
        torch.testing.assert_close(got.next_obs, want.next_obs, atol=1e-4, rtol=0)
        torch.testing.assert_close(got.reward, want.reward, atol=1e-4, rtol=0)
    assert len(compiled._graphs) == 1
    history, actions = _on_cuda(make_history(6, 1, seed=3)), candidates(64, 5, seed=4).to(CUDA)
    first = compiled.rollout(history, actions)  # encodes (and keeps) the prefix: one sync, allowed
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        again = compiled.rollout(history, actions)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(again.next_obs, first.next_obs)


def _trainer(data: Path, out: Path, device: str) -> Trainer:
    cfg = PretrainConfig(
        data=(data,), out=out, steps=10, batch_size=16, window=8, n_layer=1, n_head=2, d_model=32,
        val_every=0, checkpoint_every=0, device=device, bf16=False, progress=False, tensorboard=False,
    )  # fmt: skip
    return Trainer(cfg, distributed.start(device))


def test_pretraining_steps_on_cuda_match_cpu_without_host_syncs(tmp_path: Path) -> None:
    """The training step sends its batch and masks ahead without waiting (pinned, non-blocking copies):
    the same losses as on the CPU, and a step that never makes the host wait for the GPU."""
    data = tmp_path / "data"
    args = ["--env", "pointmass", "--episodes", "4", "--seed", "3", "--out", str(data), "--no-progress"]
    assert collect.main(args) == 0
    cpu, gpu = (_trainer(data, tmp_path / device, device) for device in ("cpu", "cuda"))
    for step in range(3):
        (cpu_sums, cpu_counts), (gpu_sums, gpu_counts) = cpu._step(step), gpu._step(step)
        torch.testing.assert_close(gpu_counts.cpu(), cpu_counts)
        torch.testing.assert_close(gpu_sums.cpu(), cpu_sums, rtol=1e-4, atol=1e-5)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sums, _ = gpu._step(3)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(sums.cpu(), cpu._step(3)[0], rtol=1e-4, atol=1e-5)
