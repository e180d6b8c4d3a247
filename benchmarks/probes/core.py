"""What every probe shares: the simulator protocol, real starts, dreaming and results.

A **simulator** is anything with a ``name`` and a method::

    simulate(context_frames, context_actions, future_actions, starts) -> frames

on numpy arrays: ``context_frames`` ``(B, T, H, W, 3)`` uint8 real frames (in the later
chunks of a long dream, the last frames it dreamt),
``context_actions`` ``(B, T - 1)`` int64 (the action taken after each context frame but the
last), ``future_actions`` ``(B, K)`` int64; it returns ``(B, K, H, W, 3)`` uint8, the frame
after each future action. ``starts`` holds one ``Start`` per row: which real episode the
context frames come from (world, options, seed and every action since the reset). Only
``TrueSimulator`` uses it, to replay the real world; a world model ignores it. A plain
function of the first three arguments becomes a simulator with ``as_simulator``.

A probe draws its starts from a physics world itself (``draw_clips``: seeded resets and
known actions), so it knows the true future of every dream, runs the simulator on the
context (``dream``; long dreams in chunks, each re-prompted with the last ``T`` dreamt
frames), measures the dreamt frames by colour (``benchmarks.probes.measure``) and returns
a ``ProbeResult``. Every probe is called as ``probe(simulator, *, starts, horizon, context,
seed, options, ...)`` with these common arguments:

- ``simulator``: what dreams (a ``Simulator`` or a plain simulate function);
- ``starts``: how many dreams (real starts) to measure;
- ``horizon``: steps dreamt from each start (long-dream probes take ``steps`` instead);
- ``context``: real frames given as context (``T``);
- ``seed``: fixes the starts and actions (the same seed gives the same clips);
- ``options``: ``make_env`` options of the probe's world (e.g. the ``frame_size`` a model was
  trained at); ``max_steps`` is raised to fit the dream.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium
import numpy as np

from envs.registry import make_env
from worldsim.errors import ConfigError


@dataclass(frozen=True)
class Start:
    """Where a dream starts: the real episode its context frames are the end of."""

    world: str
    """The env name, e.g. ``"physics/Bounce"``."""
    options: Mapping[str, Any]
    """``make_env`` options of that env."""
    seed: int
    """The ``reset(seed=...)`` of the episode."""
    actions: tuple[int, ...]
    """Every action from the reset up to the last context frame."""

    def then(self, actions: Sequence[int] | np.ndarray) -> Start:
        """The same episode after ``actions`` more steps."""
        return Start(self.world, self.options, self.seed,
                     self.actions + tuple(int(a) for a in actions))


class Simulator(Protocol):
    """Predicts frames from real context frames and actions (see the module docstring)."""

    name: str

    def simulate(self, context_frames: np.ndarray, context_actions: np.ndarray,
                 future_actions: np.ndarray, starts: Sequence[Start]) -> np.ndarray: ...


SimulateFunction = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class _FunctionSimulator:
    function: SimulateFunction
    name: str

    def simulate(self, context_frames: np.ndarray, context_actions: np.ndarray,
                 future_actions: np.ndarray, starts: Sequence[Start]) -> np.ndarray:
        return self.function(context_frames, context_actions, future_actions)


def as_simulator(simulator: Simulator | SimulateFunction) -> Simulator:
    """Accept a simulator object or a plain ``simulate(context_frames, context_actions,
    future_actions)`` function (named after the function)."""
    if hasattr(simulator, "simulate"):
        return simulator  # type: ignore[return-value]
    if callable(simulator) and len(inspect.signature(simulator).parameters) >= 3:
        return _FunctionSimulator(simulator, getattr(simulator, "__name__", "function"))
    raise ConfigError(
        f"{simulator!r} is not a simulator: pass an object with a simulate(context_frames, "
        "context_actions, future_actions, starts) method or a function of the first three"
    )


@dataclass
class ProbeResult:
    """What one probe found."""

    name: str
    """The probe, e.g. ``"gravity"``."""
    world: str
    """The env it probed, e.g. ``"physics/Bounce"``."""
    score: float
    """In [0, 1]: 1 when the dreams obey the law as the real world does (formula in each
    probe's docstring)."""
    details: dict[str, Any] = field(default_factory=dict)
    """Raw measurements behind the score, JSON-able."""

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-able data."""
        return {"name": self.name, "world": self.world, "score": self.score,
                "details": self.details}


@dataclass
class Clip:
    """A real run from a seeded reset: the context a dream starts from and what came next."""

    start: Start
    """The real history up to the last context frame."""
    context_frames: np.ndarray
    """(T, H, W, 3) uint8 real frames."""
    context_actions: np.ndarray
    """(T - 1,) int64 actions between them."""
    future_actions: np.ndarray
    """(K,) int64 actions to dream."""
    true_frames: np.ndarray
    """(K, H, W, 3) uint8 what really followed each future action."""
    true_infos: list[dict[str, Any]]
    """K + 1 env infos: of the last context frame, then after each future action."""


Policy = Callable[[np.random.Generator, int, int], np.ndarray]
"""``policy(rng, context_actions, future_actions)`` -> all the actions of a clip, in order."""


def constant_policy(action: int = 0) -> Policy:
    """A policy that always takes ``action``."""
    def policy(rng: np.random.Generator, context: int, horizon: int) -> np.ndarray:
        return np.full(context + horizon, action, np.int64)
    return policy


def world_options(options: Mapping[str, Any] | None, steps: int) -> dict[str, Any]:
    """``options`` with ``max_steps`` raised to at least ``steps`` (a probe must not be cut
    short by truncation)."""
    merged = dict(options or {})
    merged["max_steps"] = max(int(merged.get("max_steps", 0)), steps)
    return merged


def draw_clips(world: str, *, count: int, context: int, horizon: int, seed: int,
               policy: Policy, accept: Callable[[Clip], bool] | None = None,
               options: Mapping[str, Any] | None = None, max_tries: int | None = None,
               ) -> list[Clip]:
    """Play real episodes until ``count`` clips pass ``accept``.

    Try ``i`` seeds ``numpy.random.default_rng([seed, i])``, which gives the episode's reset
    seed and the policy's randomness: the clips are a function of ``seed`` alone.

    Args:
        world: the env name.
        count: clips wanted.
        context: context frames ``T`` per clip (at least 1).
        horizon: future actions ``K`` per clip.
        seed: fixes everything.
        policy: the actions of a clip.
        accept: keeps only clips in which the law under test shows (e.g. a bounce happens).
        options: ``make_env`` options (``max_steps`` is raised to fit the clip).
        max_tries: episodes to try before giving up (default ``50 * count``).

    Returns:
        ``count`` clips.

    Raises:
        ConfigError: too few episodes passed ``accept``.
    """
    if context < 1 or horizon < 0 or count < 1:
        raise ConfigError(f"a probe needs context >= 1, horizon >= 0 and starts >= 1; got "
                          f"context={context}, horizon={horizon}, starts={count}")
    options = world_options(options, context + horizon)
    env = make_env(world, **options)
    clips: list[Clip] = []
    tries = max_tries or 50 * count
    for attempt in range(tries):
        rng = np.random.default_rng([seed, attempt])
        episode_seed = int(rng.integers(2**31))
        actions = np.asarray(policy(rng, context - 1, horizon), np.int64)
        frames, infos = play_episode(env, episode_seed, actions)
        start = Start(world, options, episode_seed, tuple(int(a) for a in actions[:context - 1]))
        clip = Clip(start, frames[:context], actions[:context - 1], actions[context - 1:],
                    frames[context:], infos[context - 1:])
        if accept is None or accept(clip):
            clips.append(clip)
            if len(clips) == count:
                return clips
    raise ConfigError(
        f"only {len(clips)} of {tries} {world} episodes (options {options}) showed what the "
        f"probe measures within a horizon of {horizon} steps; ask for fewer starts or a "
        "longer horizon"
    )


def play_episode(env: gymnasium.Env, seed: int, actions: np.ndarray
                 ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Reset ``env`` with ``seed`` and take ``actions``: frames ``(len + 1, H, W, 3)`` and the
    info of each frame."""
    frame, info = env.reset(seed=seed)
    frames, infos = [frame], [info]
    for action in actions:
        frame, _, _, _, info = env.step(action)
        frames.append(frame)
        infos.append(info)
    return np.stack(frames), infos


@dataclass
class _Run:
    env: gymnasium.Env
    actions: tuple[int, ...]
    frame: np.ndarray


class Replayer:
    """Real envs positioned at the end of ``Start`` s, for replaying the truth.

    A start that continues the episode last replayed for the same world, options and seed
    (its actions extend the ones already taken) only takes the new actions, so a long dream
    in chunks costs one real step per dreamt step.
    """

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}

    def position(self, start: Start) -> np.ndarray:
        """Bring the start's episode to its last context frame and return that frame."""
        return self._run(start).frame

    def play(self, start: Start, actions: Sequence[int] | np.ndarray
             ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """The real frames ``(K, H, W, 3)`` and infos after each of ``actions``, taken from
        the end of ``start``."""
        run = self._run(start)
        height, width = run.frame.shape[:2]
        frames, infos = [np.zeros((0, height, width, 3), np.uint8)], []
        for action in actions:
            run.frame, _, _, _, info = run.env.step(int(action))
            frames.append(run.frame[None])
            infos.append(info)
        run.actions = start.then(actions).actions
        return np.concatenate(frames), infos

    def _run(self, start: Start) -> _Run:
        key = json.dumps([start.world, start.options, start.seed], sort_keys=True, default=str)
        run = self._runs.get(key)
        if run is None or start.actions[:len(run.actions)] != run.actions:
            env = run.env if run else make_env(start.world, **start.options)
            run = _Run(env, (), env.reset(seed=start.seed)[0])
            self._runs[key] = run
        for action in start.actions[len(run.actions):]:
            run.frame = run.env.step(action)[0]
        run.actions = start.actions
        return run


def draw_and_dream(simulator: Simulator | SimulateFunction, world: str, **draw: Any
                   ) -> tuple[list[Clip], np.ndarray]:
    """``draw_clips(world, **draw)``, then ``dream`` them: the clips and ``(B, K, H, W, 3)``
    dreamt frames."""
    clips = draw_clips(world, **draw)
    return clips, dream(as_simulator(simulator), clips)


def dream_chunks(simulator: Simulator, clips: Sequence[Clip], future_actions: np.ndarray,
                 chunk: int | None = None) -> Iterator[np.ndarray]:
    """Dream from the clips' contexts under ``future_actions``, ``chunk`` steps per call.

    After each call the simulator is prompted again with the last ``T`` frames (real or
    dreamt) and the actions between them, and the starts move on by the chunk's actions.

    Args:
        simulator: what dreams.
        clips: where the dreams start (their context frames, actions and starts).
        future_actions: ``(B, K)`` actions to dream.
        chunk: steps per simulator call (default: all ``K`` in one call).

    Yields:
        ``(B, k, H, W, 3)`` frames as the simulator returned them (shape checked), ``k`` the
        chunk's length.
    """
    frames = np.stack([clip.context_frames for clip in clips])  # (B, T, H, W, 3)
    actions = np.stack([clip.context_actions for clip in clips]).astype(np.int64)  # (B, T-1)
    starts = [clip.start for clip in clips]
    batch, context = frames.shape[:2]
    total = future_actions.shape[1]
    step = chunk or max(total, 1)
    for begin in range(0, total, step):
        future = np.ascontiguousarray(future_actions[:, begin:begin + step], np.int64)
        dreamt = np.asarray(simulator.simulate(frames, actions, future, starts))
        expected = (batch, future.shape[1], *frames.shape[2:])
        if dreamt.shape != expected:
            raise ConfigError(f"simulator {simulator.name!r} returned frames of shape "
                              f"{dreamt.shape}; expected (B, K, H, W, 3) = {expected}")
        yield dreamt
        frames = np.concatenate([frames, as_uint8(dreamt)], axis=1)[:, -context:]
        joined = np.concatenate([actions, future], axis=1)
        actions = joined[:, joined.shape[1] - (context - 1):]
        starts = [start.then(row) for start, row in zip(starts, future)]


def dream(simulator: Simulator, clips: Sequence[Clip], chunk: int | None = None) -> np.ndarray:
    """Dream every clip's future actions: ``(B, K, H, W, 3)`` uint8."""
    future = np.stack([clip.future_actions for clip in clips])
    return np.concatenate([as_uint8(part) for part in
                           dream_chunks(simulator, clips, future, chunk)], axis=1)


def as_uint8(frames: np.ndarray) -> np.ndarray:
    """Frames as uint8: float frames are rounded and clipped to 0..255, NaN becomes 0."""
    if frames.dtype == np.uint8:
        return frames
    return np.clip(np.nan_to_num(np.rint(frames.astype(np.float64))), 0, 255).astype(np.uint8)


def with_context(clip: Clip, frames: np.ndarray) -> np.ndarray:
    """``(K + 1, H, W, 3)``: the last real context frame, then the dreamt ``frames``."""
    return np.concatenate([clip.context_frames[-1:], frames])
