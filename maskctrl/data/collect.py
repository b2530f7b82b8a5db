"""Collect episodes from a gymnasium env with any Stable-Baselines3-style policy, over a vector env.

A policy is anything with SB3's ``predict(obs [n_envs,O], state, episode_start, deterministic) ->
(actions [n_envs,A], state)`` (an SB3 model, :class:`RandomPolicy`, ``MPCController``), the string
``"random"``, or a factory that builds one from the sub-envs being stepped (the oracle planner needs them).

Resets. Under gymnasium >= 1.0 the vector env runs with autoreset disabled and finished sub-envs are
reset here, each episode ``j`` with seed ``seed + j``: every transition's next observation is the true
one, every episode can be replayed from its recorded reset seed, and the data does not depend on which
sub-env ran which episode. Where that mode does not exist (gymnasium 0.29) the vector env autoresets
in the same step and the final observation is read from ``info["final_observation"]`` (1.x:
``info["final_obs"]``); only the first ``n_envs`` episodes then have known reset seeds.

Episodes are stored in the order they started (episode ``j`` is the ``j``-th reset), so the result is
a function of the seed, not of the order in which sub-envs finish.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import gymnasium
import numpy as np
from tqdm.auto import tqdm

from maskctrl.data.episodes import Episode, EpisodeData
from maskctrl.envs.registry import EnvSpec, UnknownEnvError, get_spec
from maskctrl.envs.spaces import describe_space

AutoresetMode = Literal["disabled", "same_step"]
"""How sub-envs are reset: here with explicit seeds (``"disabled"``) or by the vector env (``"same_step"``)."""


@runtime_checkable
class Predictor(Protocol):
    """Stable-Baselines3's policy contract, batched over sub-envs."""

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """Actions [n_envs,A] for observations [n_envs,O], and the next recurrent state."""
        ...


PolicyFactory = Callable[[Sequence[gymnasium.Env]], Predictor]
"""Builds a :class:`Predictor` from the sub-envs that will be stepped (e.g. an oracle planner)."""


class RandomPolicy:
    """Uniform random actions in a bounded ``Box``, from its own seeded generator.

    Follows SB3's ``predict``: one action per sub-env for a batched observation, one action for a single
    one. Which it is comes from ``observation_space`` when given (as SB3 decides); without it an array
    ``[n_envs,O]`` is batched and ``[O]`` single (observations with more dims than the action are taken as
    batched), and a dict observation (e.g. :class:`~maskctrl.envs.wrappers.HistoryWrapper`'s through a
    vector env) is batched over the leading dim that all its entries share.

    :param action_space: the (single-env) ``Box`` action space; its bounds must be finite.
    :param seed: seed or generator of the actions.
    :param observation_space: the (single-env) observation space, to tell single observations from batches
        exactly; needed to act on a single (unbatched) dict observation.
    """

    def __init__(
        self,
        action_space: gymnasium.spaces.Box,
        seed: int | np.random.Generator,
        *,
        observation_space: gymnasium.spaces.Space[Any] | None = None,
    ) -> None:
        low, high = np.asarray(action_space.low), np.asarray(action_space.high)
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise ValueError(f"RandomPolicy needs finite action bounds, got low={low}, high={high}")
        self.low, self.high = low, high
        self.dtype = action_space.dtype
        self.observation_space = observation_space
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """Uniform actions ``[n_envs,A]`` for a batch of observations, or ``[A]`` for a single one."""
        n_envs = self._batch_size(observation)
        shape = self.low.shape if n_envs is None else (n_envs, *self.low.shape)
        return self.rng.uniform(self.low, self.high, size=shape).astype(self.dtype), state

    def _batch_size(self, observation: np.ndarray | dict[str, np.ndarray]) -> int | None:
        """Sub-envs in ``observation``, or None for a single observation."""
        if self.observation_space is not None:
            from stable_baselines3.common.utils import is_vectorized_observation

            obs: Any = (
                {key: np.asarray(value) for key, value in observation.items()}
                if isinstance(observation, dict)
                else np.asarray(observation)
            )
            if not is_vectorized_observation(obs, self.observation_space):
                return None
            return len(next(iter(obs.values())) if isinstance(obs, dict) else obs)
        if isinstance(observation, dict):
            leading = {key: np.shape(value)[:1] for key, value in observation.items()}
            sizes = set(leading.values())
            if len(sizes) != 1 or () in sizes:
                raise ValueError(
                    "RandomPolicy cannot tell the number of sub-envs of a dict observation whose entries' "
                    f"leading dims are {leading}; pass observation_space= to RandomPolicy"
                )
            return int(sizes.pop()[0])
        array = np.asarray(observation)
        return array.shape[0] if array.ndim > self.low.ndim else None


def resolve_env(env: str | EnvSpec) -> tuple[str, Callable[..., gymnasium.Env], EnvSpec | None]:
    """``(name, make, spec)`` for a registry name, an :class:`EnvSpec` or a plain gymnasium id.

    ``make(**overrides)`` creates one env (``max_episode_steps`` among the overrides); ``spec`` is None
    for a gymnasium id that is not in the registry.
    """
    if isinstance(env, EnvSpec):
        return env.name, env.make, env
    try:
        spec = get_spec(env)
    except UnknownEnvError:
        if env not in gymnasium.envs.registry:
            raise
        return env, lambda **kw: gymnasium.make(env, **kw), None
    return spec.name, spec.make, spec


def collect_episodes(
    env: str | EnvSpec,
    policy: Predictor | PolicyFactory | str,
    *,
    n_episodes: int,
    seed: int,
    n_envs: int = 1,
    action_noise: float = 0.0,
    max_steps: int | None = None,
    deterministic: bool = True,
    progress: bool = True,
    autoreset_mode: AutoresetMode | None = None,
    policy_name: str | None = None,
) -> EpisodeData:
    """Run ``policy`` for ``n_episodes`` episodes on ``n_envs`` sub-envs and return them.

    :param env: registry name (``"pointmass"``, ``"Hopper"``, …), spec, or gymnasium id; its observation
        and action spaces must be flat ``Box`` es (``ValueError`` otherwise).
    :param policy: a :class:`Predictor`, ``"random"`` (a :class:`RandomPolicy`), or a :data:`PolicyFactory`.
    :param n_episodes: episodes to record (episode ``j`` is reset with seed ``seed + j``).
    :param seed: base seed of the resets, the action noise and the random policy.
    :param n_envs: sub-envs stepped together (capped at ``n_episodes``).
    :param action_noise: standard deviation of Gaussian noise added to actions, as a fraction of half
        the action range; noisy actions are clipped to the bounds. The recorded actions are the noisy,
        clipped ones that the env received.
    :param max_steps: episode length limit (truncation); None keeps the env's own.
    :param deterministic: passed to ``policy.predict``.
    :param progress: show a tqdm bar over episodes.
    :param autoreset_mode: see :data:`AutoresetMode`; None picks ``"disabled"`` where gymnasium has it.
    :param policy_name: description stored in the metadata (default: ``"random"`` or the class name).
    """
    if n_episodes < 1 or n_envs < 1:
        raise ValueError(f"expected n_episodes >= 1 and n_envs >= 1, got {n_episodes} and {n_envs}")
    if seed < 0 or action_noise < 0 or (max_steps is not None and max_steps < 1):
        raise ValueError(
            f"expected seed >= 0, action_noise >= 0, max_steps >= 1; got {seed}, {action_noise}, {max_steps}"
        )
    name, make, spec = resolve_env(env)
    overrides = {} if max_steps is None else {"max_episode_steps": max_steps}
    n_envs = min(n_envs, n_episodes)
    mode = autoreset_mode or ("disabled" if hasattr(gymnasium.vector, "AutoresetMode") else "same_step")
    envs = _make_vector_env([lambda: make(**overrides)] * n_envs, mode)
    try:
        obs_space, act_space = envs.single_observation_space, envs.single_action_space
        flat_box = [isinstance(s, gymnasium.spaces.Box) and len(s.shape) == 1 for s in (obs_space, act_space)]
        if not all(flat_box):  # episodes hold float arrays [T,O] and [T,A]; see maskctrl.data.episodes
            obs_text, act_text = (
                f"Box{s.shape}" if isinstance(s, gymnasium.spaces.Box) else str(s)
                for s in (obs_space, act_space)
            )
            raise ValueError(
                f"collect_episodes needs flat Box observation and action spaces; env {name!r} has "
                f"observations {obs_text} and actions {act_text}"
            )
        obs_desc, act_desc = describe_space(obs_space), describe_space(act_space)
        dims = (obs_desc["shape"][0], act_desc["shape"][0])
        if spec is not None and (spec.obs_dim, spec.act_dim) != dims:
            raise ValueError(
                f"env {name!r} has obs/act dims {dims[0]}/{dims[1]}, its spec says {spec.obs_dim}/{spec.act_dim}"
            )
        predictor, default_name = _make_predictor(policy, envs, act_space, seed)
        metadata: dict[str, Any] = {
            "env_name": name,
            "gym_id": _gym_id(envs),
            "obs_dim": obs_desc["shape"][0],
            "act_dim": act_desc["shape"][0],
            "observation_space": obs_desc,
            "action_space": act_desc,
            "max_episode_steps": getattr(envs.envs[0].spec, "max_episode_steps", None),
            "policy": policy_name or default_name,
            "deterministic": deterministic,
            "seed": seed,
            "reset_seeds": "seed + episode index"
            if mode == "disabled"
            else "seed + sub-env index, then autoreset",
            "action_noise": action_noise,
            "n_envs": n_envs,
            "autoreset_mode": mode,
            "versions": package_versions(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        with tqdm(total=n_episodes, unit="ep", desc=f"collect {name}", disable=not progress) as bar:
            episodes = _run(envs, predictor, mode, n_episodes, seed, action_noise, deterministic, bar)
    finally:
        envs.close()
    return EpisodeData.from_episodes(episodes, metadata)


class _Running:
    """The episode a sub-env is in the middle of."""

    def __init__(self, index: int, first_obs: np.ndarray, reset_seed: int | None) -> None:
        self.index, self.reset_seed = index, reset_seed
        self.obs, self.act, self.rew = [first_obs], list[np.ndarray](), list[float]()

    def finish(self, terminated: bool, truncated: bool, obs_dtype: np.dtype) -> Episode:
        return Episode(
            observations=np.stack(self.obs).astype(obs_dtype),  # [T+1,O]
            actions=np.stack(self.act),  # [T,A]
            rewards=np.asarray(self.rew, dtype=np.float64),  # [T]
            terminated=terminated,
            truncated=truncated,
            reset_seed=self.reset_seed,
        )


def _run(
    envs: Any,
    policy: Predictor,
    mode: AutoresetMode,
    n_episodes: int,
    seed: int,
    action_noise: float,
    deterministic: bool,
    bar: Any,
) -> list[Episode]:
    n_envs = envs.num_envs
    act_space = envs.single_action_space
    low, high = np.asarray(act_space.low, np.float64), np.asarray(act_space.high, np.float64)
    if action_noise > 0 and not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise ValueError("action_noise is a fraction of the action range and needs finite action bounds")
    noise_scale = action_noise * 0.5 * (high - low)  # [A]
    noise_rng = np.random.default_rng([seed, 1])
    obs_dtype = envs.single_observation_space.dtype
    obs_dtype = obs_dtype if np.issubdtype(obs_dtype, np.floating) else np.dtype(np.float64)

    obs, _ = envs.reset(seed=[seed + i for i in range(n_envs)])  # [n_envs,O]
    running = [_Running(i, obs[i].copy(), seed + i) for i in range(n_envs)]
    next_index = n_envs
    done_episodes: dict[int, Episode] = {}
    episode_start = np.ones(n_envs, dtype=bool)
    state: Any = None
    while len(done_episodes) < n_episodes:
        raw, state = policy.predict(
            obs, state=state, episode_start=episode_start, deterministic=deterministic
        )
        act = np.asarray(raw, dtype=np.float64)
        if act.shape != (n_envs, *act_space.shape):
            raise ValueError(
                f"policy returned actions of shape {act.shape}, expected {(n_envs, *act_space.shape)}"
            )
        if action_noise > 0:
            act = act + noise_scale * noise_rng.standard_normal(act.shape)
        act = np.clip(act, low, high).astype(act_space.dtype)  # [n_envs,A], exactly what the env receives
        next_obs, rew, term, trunc, info = envs.step(act)
        done = np.logical_or(term, trunc)
        final_obs = next_obs.copy()
        if mode == "same_step" and done.any():
            key = "final_obs" if "final_obs" in info else "final_observation"
            for j in np.flatnonzero(done):
                final_obs[j] = np.asarray(info[key][j])
        for i, run in enumerate(running):
            run.act.append(act[i])
            run.rew.append(float(rew[i]))
            run.obs.append(final_obs[i].copy())
        if done.any():
            new_index = {int(i): next_index + k for k, i in enumerate(np.flatnonzero(done))}
            next_index += len(new_index)
            if mode == "disabled":
                seeds = [seed + new_index[i] if i in new_index else None for i in range(n_envs)]
                reset_obs, _ = envs.reset(seed=seeds, options={"reset_mask": done})
                next_obs[done] = reset_obs[done]
            for k, index in new_index.items():
                finished = running[k]
                if finished.index < n_episodes:
                    done_episodes[finished.index] = finished.finish(bool(term[k]), bool(trunc[k]), obs_dtype)
                    bar.update(1)
                reset_seed = seed + index if mode == "disabled" else None
                running[k] = _Running(index, next_obs[k].copy(), reset_seed)
        obs, episode_start = next_obs, done
    return [done_episodes[j] for j in range(n_episodes)]


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that shape collected data (None where one is not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("maskctrl", "gymnasium", "mujoco", "numpy"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _make_vector_env(fns: Sequence[Callable[[], gymnasium.Env]], mode: AutoresetMode) -> Any:
    modes = getattr(gymnasium.vector, "AutoresetMode", None)
    if modes is None:
        if mode == "disabled":
            raise ValueError(f"gymnasium {gymnasium.__version__} cannot disable autoreset; use 'same_step'")
        return gymnasium.vector.SyncVectorEnv(fns)  # 0.29: autoreset in the same step
    chosen = modes.DISABLED if mode == "disabled" else modes.SAME_STEP
    return gymnasium.vector.SyncVectorEnv(fns, autoreset_mode=chosen)


def _make_predictor(policy: Any, envs: Any, act_space: Any, seed: int) -> tuple[Predictor, str]:
    if isinstance(policy, str):
        if policy != "random":
            raise ValueError(f"unknown policy {policy!r}; pass 'random' or an object with predict()")
        return RandomPolicy(act_space, np.random.default_rng([seed, 2])), "random"
    if isinstance(policy, Predictor):
        return policy, type(policy).__name__
    if callable(policy):
        built = policy(envs.envs)
        if not isinstance(built, Predictor):
            raise TypeError(f"policy factory returned {type(built).__name__}, which has no predict()")
        return built, type(built).__name__
    raise TypeError(f"policy must have predict(), be 'random' or a factory; got {type(policy).__name__}")


def _gym_id(envs: Any) -> str | None:
    spec = getattr(envs.envs[0], "spec", None)
    return None if spec is None else str(spec.id)
