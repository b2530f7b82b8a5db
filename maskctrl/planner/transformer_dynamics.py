"""The pretrained masked control transformer as the planner's world model.

:class:`TransformerDynamics` is a :class:`~maskctrl.planner.dynamics.DynamicsModel`: for one env's
history it normalizes the last K real steps, encodes them **once**
(:func:`~maskctrl.models.kv_cache.encode_prefix`), shares that KV cache across the N candidates
(:meth:`~maskctrl.models.kv_cache.PrefixCache.expand`, no copy) and decodes two tokens per imagined step
(the predicted observation and the candidate's next action, :func:`~maskctrl.models.kv_cache.decode`).
The encoded history is kept for the next call with the same :class:`History` object, so the optimizer's
iterations of one control step encode it once. Rewards come from the env spec's ``reward_fn`` (default)
or the model's reward head; terminations from the spec's ``termination_fn``.

Window. History and horizon share the model's ``context_len`` C: K + H - 1 <= C. By default the
history is shortened to fit one window (K = C - H + 1); a horizon longer than C (or an explicit
``max_history``) is rolled out in consecutive windows, each re-encoding every candidate's last K
(real or imagined) steps.

Per imagined step nothing waits for the device: timesteps are indexed from a device tensor (an int
timestep would be a blocking host-to-device copy per token on CUDA) and nothing branches on tensor
values. Each window start costs one sync (the history check in ``encode_prefix``).

CUDA graphs. On a GPU the decoding of a window is hundreds of tiny kernels whose launches, not their
arithmetic, set the speed (an H200 ran the default HalfCheetah model's N=512, H=15 rollout in 54 ms
eagerly, of which 7 ms was GPU work). With ``cuda_graphs`` (the default on CUDA) the decoding of each
window shape is captured once into a :class:`torch.cuda.CUDAGraph` and replayed: the encoded prefix and
the candidates are copied into the graph's input buffers, the outputs copied out.

Compiling. On a CPU the decoding is a few hundred small kernels per imagined step (matmuls over
N candidates, and the LayerNorms, GELUs, softmaxes and additions between them). With ``compile=True`` each
step runs :func:`~maskctrl.models.kv_cache.decode_fixed` compiled by ``torch.compile``: the same tensor
shapes at every step (attention over the whole per-candidate buffer, masked), so one graph serves every
step and the pointwise work is fused. The default HalfCheetah model's N=512, H=15 rollout took 0.57-0.74x
the eager time on a 2-core CPU in four runs of ``benchmarks/planner_speed.py``. On a GPU the two
combine: the CUDA graph of a window captures the compiled steps' fused kernels (fewer kernels per replay),
and each step shape is compiled for its exact sizes (``dynamic=False``: the graphs fix the shapes anyway).
On an H200 that rollout took 7.2 ms against 8.3 ms with the graphs of the eager steps.

Weights. Decoding projects queries, keys and values with per-position copies of the weights that have
the rotary rotation folded in (:class:`~maskctrl.models.kv_cache.FoldedProjections`), and graphs capture
the parameter storage: the instance is a snapshot of the model, so build a new
:class:`TransformerDynamics` after changing or loading weights.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any, Literal

import torch

from maskctrl.envs.registry import EnvSpec
from maskctrl.models.checkpoint import CheckpointError, load_checkpoint
from maskctrl.models.kv_cache import (
    DecodeBuffers,
    DecodeCache,
    FoldedProjections,
    PrefixCache,
    decode,
    decode_fixed,
    encode_prefix,
    imagine_recompute,
)
from maskctrl.models.normalizer import Normalizer
from maskctrl.models.transformer import MaskedControlTransformer
from maskctrl.planner.dynamics import History, Rollout, previous_observations

RewardSource = Literal["spec", "model"]
"""Where rollout rewards come from: the env spec's ``reward_fn`` or the model's reward head."""

DecodeFn = Callable[[PrefixCache, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""Decodes a window: ``(prefix, candidates [R,M,S,A]) -> (next_obs, reward, actions)``, normalized."""
MAX_GRAPHS = 8
"""Captured decode graphs kept per :class:`TransformerDynamics` (one per window shape); more clear them."""


class _DecodeGraph:
    """One CUDA graph of a window's decoding for fixed shapes, with its own input and output buffers."""

    def __init__(self, fn: DecodeFn, prefix: PrefixCache, cand: torch.Tensor) -> None:
        self.prefix = PrefixCache(
            keys=[k.clone() for k in prefix.keys],
            values=[v.clone() for v in prefix.values],
            key_bias=prefix.key_bias.clone(),
            last_obs=prefix.last_obs.clone(),
            next_step=prefix.next_step,
        )
        self.cand = cand.clone()
        with torch.cuda.device(cand.device):
            current = torch.cuda.current_stream()
            side = torch.cuda.Stream()
            side.wait_stream(current)
            with torch.cuda.stream(side):  # warm-up outside the capture: cuBLAS handles, workspaces
                fn(self.prefix, self.cand)
            current.wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = fn(self.prefix, self.cand)

    def __call__(self, prefix: PrefixCache, cand: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Copy the inputs in, replay, and return copies of the outputs."""
        for dst, src in zip(self.prefix.keys + self.prefix.values, prefix.keys + prefix.values, strict=True):
            dst.copy_(src)
        self.prefix.key_bias.copy_(prefix.key_bias)
        self.prefix.last_obs.copy_(prefix.last_obs)
        self.cand.copy_(cand)
        self.graph.replay()
        return tuple(t.clone() for t in self.out)


class TransformerDynamics:
    """Roll candidate action sequences out with a pretrained :class:`MaskedControlTransformer`.

    :param model: the transformer (continuous actions), used in eval mode on its own device.
    :param normalizer: the statistics it was trained with (see :mod:`maskctrl.pretrain` for the units).
    :param spec: the env's spec: dims, ``reward_fn`` and ``termination_fn``.
    :param reward: ``"spec"`` (the spec's reward function of the imagined transitions) or ``"model"``
        (the reward head, denormalized).
    :param max_history: most real steps K read (None: as many as fit one window with the horizon).
    :param bf16: run the transformer under bfloat16 autocast (on CUDA; also works on CPU). Outputs stay
        float32. The default models are too small to gain: on an H200 it was slower (more kernels).
    :param recompute: re-run the whole window for every imagined step instead of decoding from the KV
        cache (the slow reference, for tests and benchmarks).
    :param policy_noise: std of the Gaussian noise added to the policy head's actions in
        :meth:`policy_samples`, in normalized action units ([-1, 1] spans the action box).
    :param cuda_graphs: replay the candidates' decoding from captured CUDA graphs (see the module
        docstring); None: on when the model is on a CUDA device. Not for CPU models.
    :param compile: decode with a compiled (``torch.compile``), shape-stable step
        (:func:`~maskctrl.models.kv_cache.decode_fixed`; see the module docstring); on a GPU inside the
        CUDA graphs (unless ``cuda_graphs=False``). The first rollouts compile (about 30 s each on a
        2-core CPU: one for the first candidate count, one shape-general graph when another count
        comes; on a GPU one per step shape); later ones run faster. The graphs are torch's per-function
        cache, shared by every instance in the process: past torch's recompile limit (many models or
        shapes), decoding runs uncompiled and torch warns.
        Needs a C++ compiler for inductor's CPU code. Off by default.
    """

    def __init__(
        self,
        model: MaskedControlTransformer,
        normalizer: Normalizer,
        spec: EnvSpec,
        *,
        reward: RewardSource = "spec",
        max_history: int | None = None,
        bf16: bool = False,
        recompute: bool = False,
        policy_noise: float = 0.2,
        cuda_graphs: bool | None = None,
        compile: bool = False,
    ) -> None:
        cfg = model.config
        if cfg.discrete_actions:
            raise ValueError("TransformerDynamics plans continuous actions; the model has discrete ones")
        if (cfg.obs_dim, cfg.act_dim) != (spec.obs_dim, spec.act_dim):
            raise ValueError(
                f"model has obs/act dims {cfg.obs_dim}/{cfg.act_dim}, env {spec.name!r} has "
                f"{spec.obs_dim}/{spec.act_dim}"
            )
        if normalizer.obs_dim != cfg.obs_dim:
            raise ValueError(f"normalizer has obs dim {normalizer.obs_dim}, the model {cfg.obs_dim}")
        if reward not in ("spec", "model"):
            raise ValueError(f"reward must be 'spec' or 'model', got {reward!r}")
        if max_history is not None and not 1 <= max_history <= cfg.context_len:
            raise ValueError(
                f"max_history must be in [1, {cfg.context_len}] (context_len), got {max_history}"
            )
        if policy_noise < 0:
            raise ValueError(f"policy_noise must be >= 0, got {policy_noise}")
        self.model = model.eval()
        self.spec = spec
        self.device = next(model.parameters()).device
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs needs a model on a CUDA device, this one is on {self.device}")
        on_cuda = self.device.type == "cuda"
        self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs
        # On CUDA each step shape gets its own static graph; on a CPU a second shape makes one general one.
        self._decode_fixed = (
            torch.compile(decode_fixed, dynamic=False if on_cuda else None) if compile else None
        )
        self._graphs: dict[tuple[Any, ...], _DecodeGraph] = {}
        self.normalizer = normalizer.to(self.device)
        self.reward, self.max_history, self.bf16 = reward, max_history, bf16
        self.recompute, self.policy_noise = recompute, policy_noise
        self._timesteps = torch.arange(cfg.context_len, device=self.device)  # [C] embedding indices
        self._slots = torch.arange(2 * cfg.context_len, device=self.device)  # [2C] decode_fixed positions
        norm = self.normalizer
        # next token = normalize_obs(denormalize_obs(o) + denormalize_delta(d)) = o + d * scale + shift
        self._delta_scale = norm.delta_std / norm.obs_std  # [O]
        self._delta_shift = norm.delta_mean / norm.obs_std  # [O]
        self._prefix: tuple[History, int, PrefixCache] | None = None
        self._folded = FoldedProjections(model)  # a snapshot of the projection weights
        self._buffers = DecodeBuffers()  # eager decoding reuses its KV buffers (graphs own theirs)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        spec: EnvSpec,
        *,
        device: torch.device | str = "cpu",
        env: Any = None,
        **options: Any,
    ) -> TransformerDynamics:
        """Load a checkpoint directory for the env ``spec`` describes.

        :param env: an env (or anything with its spaces) the checkpoint must fit; default a fresh
            ``spec.make()``. A checkpoint for another env raises
            :class:`~maskctrl.models.checkpoint.CheckpointError` naming each difference.
        :param options: keyword arguments of :class:`TransformerDynamics`.
        """
        made = env is None
        env = spec.make() if made else env
        try:
            ckpt = load_checkpoint(path, device=device, env=env, env_name=spec.name)
        finally:
            if made:
                env.close()
        if ckpt.normalizer is None:
            raise CheckpointError(
                f"checkpoint {path} has no normalizer statistics; TransformerDynamics needs them"
            )
        return cls(ckpt.model, ckpt.normalizer, spec, **options)

    # ------------------------------------------------------------------ public

    def window_plan(self, history_steps: int, horizon: int) -> tuple[int, int]:
        """``(K, S)``: read the last K real steps, roll out in windows of at most S imagined steps."""
        c = self.model.config.context_len
        k = min(history_steps, self.max_history or c)
        if k + horizon - 1 > c and self.max_history is None:
            k = c - horizon + 1 if horizon <= c else min(k, max(1, c // 2))
        return k, min(horizon, c - k + 1)

    @torch.no_grad()
    def rollout(self, history: History, actions: torch.Tensor) -> Rollout:
        """Predict what ``actions`` [N,H,A] do from the end of ``history`` (see :class:`DynamicsModel`).

        :return: next observations [N,H,O], rewards [N,H] and terminations [N,H], float32 on
            ``actions.device``.
        """
        a = self.spec.act_dim
        if actions.ndim != 3 or actions.shape[-1] != a or actions.shape[0] < 1 or actions.shape[1] < 1:
            raise ValueError(f"expected candidate actions [N,H,{a}], got {tuple(actions.shape)}")
        raw_actions = actions.to(self.device, torch.float32)  # [N,H,A]
        cand = self.normalizer.normalize_action(raw_actions)
        obs_n, reward_n, _ = self._imagine(history, cand.shape[0], cand.shape[1], cand, None)
        next_obs = self.normalizer.denormalize_obs(obs_n)  # [N,H,O]
        if self.reward == "model":
            reward = self.normalizer.denormalize_reward(reward_n)
        else:
            prev_obs = previous_observations(history.current_obs, next_obs)  # [N,H,O]
            reward = self.spec.reward_fn(prev_obs, raw_actions, next_obs)
        terminated = self.spec.termination_fn(next_obs)
        return Rollout(
            next_obs=next_obs.to(actions.device),
            reward=reward.to(actions.device, torch.float32),
            terminated=terminated.to(actions.device),
        )

    @torch.no_grad()
    def policy_samples(
        self, history: History, n: int, horizon: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` action sequences ``[n,H,A]`` from the policy head, rolled through imagined steps.

        At each imagined step the policy head reads the observation token, Gaussian noise of std
        ``policy_noise`` is added (drawn from ``generator``, on its device), the action is clipped to the
        box and fed back, and the delta head predicts the next observation. Returned on the model's device.
        Meaningful only for a backbone pretrained with the policy loss (``ObjectiveWeights.policy > 0``:
        the default recipes use 0.5, ``maskctrl pretrain`` defaults to 0).
        """
        if n < 1 or horizon < 1:
            raise ValueError(f"need n >= 1 samples and horizon >= 1, got {n} and {horizon}")
        noise_device = self.device if generator is None else generator.device
        noise = torch.randn(n, horizon, self.spec.act_dim, generator=generator, device=noise_device)
        _, _, act_n = self._imagine(history, n, horizon, None, noise.to(self.device) * self.policy_noise)
        return self.normalizer.denormalize_action(act_n)

    # ------------------------------------------------------------------ imagination

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.bf16:
            return contextlib.nullcontext()
        # No cast cache: a CUDA graph must not capture casts cached outside it (nor keep them).
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)

    def _imagine(
        self,
        history: History,
        n: int,
        horizon: int,
        cand: torch.Tensor | None,
        noise: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalized ``(next_obs [N,H,O], reward [N,H], actions [N,H,A])`` for candidates ``cand``
        (normalized ``[N,H,A]``) or, when None, for the policy head's actions plus ``noise``."""
        k, window = self.window_plan(history.obs.shape[0], horizon)
        norm, dev = self.normalizer, self.device
        seq_obs = norm.normalize_obs(history.obs[-k:].to(dev, torch.float32))[None]  # [1,K,O]
        seq_act = norm.normalize_action(history.act[-k:-1].to(dev, torch.float32))[None]  # [1,K-1,A]
        seq_valid = history.valid[-k:].to(dev)[None]  # [1,K]
        parts: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] = ([], [], [])
        done = 0
        with self._autocast():
            while done < horizon:
                steps = min(window, horizon - done)
                rows = seq_obs.shape[0]  # 1 shared history, then one window per candidate
                span = slice(done, done + steps)
                chunk = None if cand is None else cand[:, span].reshape(rows, n // rows, steps, -1)
                chunk_noise = None if noise is None else noise[:, span].reshape(rows, n // rows, steps, -1)
                window_act = seq_act[:, seq_act.shape[1] - (k - 1) :]  # [R,K-1,A]
                history_key = history if done == 0 else None
                out = self._window(
                    seq_obs[:, -k:], window_act, seq_valid[:, -k:], chunk, chunk_noise, history_key
                )
                for part, value in zip(parts, out, strict=True):
                    part.append(value.reshape(n, steps, *value.shape[3:]).float())
                done += steps
                if done < horizon:  # every candidate continues from its own imagined past
                    seq_obs = torch.cat([seq_obs.expand(n, -1, -1), parts[0][-1]], dim=1)
                    seq_act = torch.cat([seq_act.expand(n, -1, -1), parts[2][-1]], dim=1)
                    seq_valid = torch.cat([seq_valid.expand(n, -1), seq_valid.new_ones(n, steps)], dim=1)
        obs_n, reward_n, act_n = (torch.cat(p, dim=1) for p in parts)
        return obs_n, reward_n, act_n

    def _encode(
        self, obs: torch.Tensor, act: torch.Tensor, valid: torch.Tensor, history: History | None
    ) -> PrefixCache:
        """Encode the window's history, reusing the last encoding of the same ``history`` object."""
        k = obs.shape[1]
        cached = self._prefix
        if history is not None and cached is not None and cached[0] is history and cached[1] == k:
            return cached[2]
        prefix = encode_prefix(self.model, obs, act, valid)
        if history is not None:  # keeping the History alive keeps its id from being reused
            self._prefix = (history, k, prefix)
        return prefix

    def _next_token(self, obs: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return obs + delta * self._delta_scale + self._delta_shift

    def _window(
        self,
        obs: torch.Tensor,
        act: torch.Tensor,
        valid: torch.Tensor,
        cand: torch.Tensor | None,
        noise: torch.Tensor | None,
        history: History | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Roll out one window from R histories ``obs [R,K,O]``, ``act [R,K-1,A]``, ``valid [R,K]``.

        ``cand`` / ``noise``: ``[R,M,S,A]`` (M candidates per history). Returns normalized
        ``next_obs [R,M,S,O]``, ``reward [R,M,S]`` and the actions taken ``[R,M,S,A]``.
        """
        if cand is not None and self.recompute:
            ref = imagine_recompute(self.model, obs, act, cand, valid=valid, next_obs_fn=self._next_token)
            return ref.next_obs, ref.reward, cand
        given = cand if cand is not None else noise
        if given is None:
            raise ValueError("need candidate actions or policy noise")
        prefix = self._encode(obs, act, valid, history)
        if cand is not None and self.cuda_graphs:
            key = (tuple(cand.shape), tuple(prefix.keys[0].shape), prefix.keys[0].dtype, prefix.next_step)
            graph = self._graphs.get(key)
            if graph is None:
                if len(self._graphs) >= MAX_GRAPHS:
                    self._graphs.clear()
                graph = self._graphs[key] = _DecodeGraph(self._decode, prefix, cand)
            next_obs, reward, actions = graph(prefix, cand)
            return next_obs, reward, actions
        obs_hidden = None
        if cand is None:  # the policy reads the current observation's token, which the prefix holds
            rows, m = given.shape[:2]
            features = self.model.encode_features(obs, act, valid=valid)  # [R,D]
            obs_hidden = features.unsqueeze(1).expand(rows, m, -1)  # [R,M,D]
        return self._decode(prefix, cand, noise, obs_hidden)

    def _decode(
        self,
        prefix: PrefixCache,
        cand: torch.Tensor | None,
        noise: torch.Tensor | None = None,
        obs_hidden: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode a window from an encoded ``prefix`` for ``cand`` (or the policy plus ``noise``,
        starting from ``obs_hidden``, the current observation's hidden state ``[R,M,D]``).

        Free of host syncs and of Python branches on tensor values, so that it can be captured in a
        CUDA graph.
        """
        model, heads = self.model, self.model.heads
        given = cand if cand is not None else noise
        assert given is not None
        rows, m, steps = given.shape[:3]
        cache = prefix.expand(m, 2 * steps - 1, buffers=None if self.cuda_graphs else self._buffers)
        if self._decode_fixed is not None:
            cache.zero_values()
        t0 = prefix.next_step
        current = prefix.last_obs.unsqueeze(1).expand(rows, m, -1)  # [R,M,O]
        parts: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] = ([], [], [])
        for h in range(steps):
            step = self._timesteps[t0 + h]  # 0-d device tensor: no host-to-device copy
            obs_tok = model.embed_obs(current, step).unsqueeze(2) if h > 0 else None  # [R,M,1,D]
            if cand is None:
                assert noise is not None
                if obs_tok is not None:
                    obs_hidden = self._decode_tokens(cache, obs_tok, last_only=False)[:, :, -1]
                assert obs_hidden is not None
                action = self._clip(heads.policy(obs_hidden).float() + noise[:, :, h])  # [R,M,A]
                tokens = model.embed_act(action, step).unsqueeze(2)  # [R,M,1,D]
            else:
                action = cand[:, :, h]
                act_tok = model.embed_act(action, step).unsqueeze(2)
                tokens = act_tok if obs_tok is None else torch.cat([obs_tok, act_tok], dim=2)
            out = self._decode_tokens(cache, tokens, last_only=True)[:, :, -1]  # the action token
            current = self._next_token(current, heads.delta_obs(out).float())
            # The reward head is skipped when the spec scores the rollout (zeros keep the shapes).
            reward = (
                heads.reward(out).squeeze(-1)
                if self.reward == "model"
                else current.new_zeros(current.shape[:-1])
            )
            for part, value in zip(parts, (current, reward, action), strict=True):
                part.append(value)
        next_obs, reward, actions = (torch.stack(p, dim=2) for p in parts)
        return next_obs, reward, actions

    def _decode_tokens(self, cache: DecodeCache, tokens: torch.Tensor, *, last_only: bool) -> torch.Tensor:
        """:func:`~maskctrl.models.kv_cache.decode`, or its compiled shape-stable twin."""
        if self._decode_fixed is None:
            return decode(self.model, cache, tokens, last_only=last_only, folded=self._folded)
        q_len = tokens.shape[2]
        folded = self._folded.at(cache.next_position(q_len), q_len)
        try:
            out = self._decode_fixed(self.model, cache, tokens, self._slots[cache.length], folded, last_only)
        except Exception as err:
            # torch.compile imported torch._dynamo already; importing it at module level costs ~1 s.
            from torch._dynamo.exc import BackendCompilerFailed

            if not isinstance(err, BackendCompilerFailed):
                raise
            raise RuntimeError(
                "TransformerDynamics(compile=True): torch.compile failed to compile the decoding step "
                f"({type(err.inner_exception).__name__}: {err.inner_exception}). On a CPU, inductor needs a "
                "working C++ compiler; pass compile=False (maskctrl mpc without --compile) to decode eagerly"
            ) from err
        cache.length += q_len
        return out

    def _clip(self, action: torch.Tensor) -> torch.Tensor:
        if self.normalizer.act_low is None:  # unscaled actions: the box is not known here
            return action
        return action.clamp(-1.0, 1.0)
