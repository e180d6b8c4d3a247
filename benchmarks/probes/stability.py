"""Probes of long dreams: a still scene that must not drift, a moving one that must not
collapse. Both dream in chunks (see ``dream_chunks``) and look at evenly spaced
checkpoints, so thousands of steps fit in memory."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from benchmarks.probes.core import (Clip, ProbeResult, Replayer, SimulateFunction, Simulator,
                                    as_simulator, as_uint8, constant_policy, draw_clips,
                                    dream_chunks, world_options)
from benchmarks.probes.measure import block_means, locate
from envs.physics import BACKGROUND, BALL
from worldsim.errors import ConfigError

MIN_MOVE = 0.5
"""Pixels the ball must move between checkpoints of ``long_rollout``."""


def checkpoint_steps(steps: int, checkpoints: int) -> list[int]:
    """``checkpoints`` evenly spaced step numbers in ``1..steps``, the last being ``steps``."""
    if not 1 <= checkpoints <= steps:
        raise ConfigError(f"need 1 <= checkpoints <= steps, got checkpoints={checkpoints}, "
                          f"steps={steps}")
    return sorted({round(steps * (i + 1) / checkpoints) for i in range(checkpoints)})


def _long_dream(simulator: Simulator | SimulateFunction, world: str, *, starts: int,
                steps: int, checkpoints: int, chunk: int, context: int, seed: int,
                options: Mapping[str, Any] | None) -> tuple[list[Clip], Iterator[
                    tuple[int, np.ndarray]]]:
    """Real starts (no kicks, no moves: action 0 for ever) and an iterator of ``(step,
    (B, H, W, 3) dreamt frames as returned)`` at each checkpoint."""
    marks = checkpoint_steps(steps, checkpoints)
    clips = draw_clips(world, count=starts, context=context, horizon=0, seed=seed,
                       policy=constant_policy(0), options=world_options(options,
                                                                        context + steps))
    future = np.zeros((starts, steps), np.int64)

    def at_checkpoints() -> Iterator[tuple[int, np.ndarray]]:
        done = 0
        for part in dream_chunks(as_simulator(simulator), clips, future, chunk):
            for mark in marks:
                if done < mark <= done + part.shape[1]:
                    yield mark, part[:, mark - done - 1]
            done += part.shape[1]

    return clips, at_checkpoints()


def static_stability(simulator: Simulator | SimulateFunction, *, starts: int = 4,
                     steps: int = 1000, checkpoints: int = 10, chunk: int = 100,
                     context: int = 4, seed: int = 0, options: Mapping[str, Any] | None = None,
                     tolerance: float = 16.0) -> ProbeResult:
    """Does a scene where nothing moves stay the same over many dreamt steps?

    World ``physics/Body`` with the action ``none`` throughout: in reality no pixel ever
    changes. At ``checkpoints`` evenly spaced steps up to ``steps``, ``e`` is the mean
    absolute difference in grey levels between the mean colours of the dreamt and the real
    frame's 8x8-pixel tiles (tiles, so that per-pixel sampling noise and blur do not count
    while a drifting colour or a wandering object does), and ``s = clip(1 - e / tolerance,
    0, 1)``. Score: the mean of ``s`` over starts and checkpoints. Copying the last frame is
    exact here: this probe catches drift (of background, walls or body), not a frozen world.

    Args:
        simulator, starts, context, seed, options: see ``benchmarks.probes.core``.
        steps: steps dreamt from each start.
        checkpoints: how many evenly spaced steps are compared.
        chunk: steps per simulator call.
        tolerance: the error in grey levels that scores 0.

    Returns:
        The score; details per checkpoint (means over starts): the tile ``error``, the
        per-pixel error on ``background`` pixels, and ``drift`` (the last checkpoint's tile
        error minus the first's).
    """
    world = "physics/Body"
    clips, dreamt = _long_dream(simulator, world, starts=starts, steps=steps,
                                checkpoints=checkpoints, chunk=chunk, context=context,
                                seed=seed, options=options)
    replayer = Replayer()
    reached = 0
    errors, background_errors = [], []
    for mark, frames in dreamt:
        truth = np.stack([  # (B, H, W, 3) the real frames at this step
            replayer.play(clip.start.then([0] * reached), [0] * (mark - reached))[0][-1]
            for clip in clips])
        reached = mark
        frames = as_uint8(frames)
        errors.append(np.abs(block_means(frames) - block_means(truth)).mean(axis=(1, 2, 3)))
        difference = np.abs(frames.astype(np.float64) - truth)  # (B, H, W, 3)
        background = (truth == BACKGROUND).all(axis=-1)  # (B, H, W)
        background_errors.append([float(d[m].mean()) for d, m in zip(difference, background)])
    error = np.array(errors)  # (checkpoints, B)
    scores = np.clip(1 - error / tolerance, 0, 1)
    return ProbeResult("static_stability", world, float(scores.mean()), {
        "steps": checkpoint_steps(steps, checkpoints),
        "error": [round(float(e), 3) for e in error.mean(axis=1)],
        "background": [round(float(np.mean(e)), 3) for e in background_errors],
        "drift": float(error[-1].mean() - error[0].mean()),
    })


def long_rollout(simulator: Simulator | SimulateFunction, *, starts: int = 2,
                 steps: int = 10_000, checkpoints: int = 100, chunk: int = 100,
                 context: int = 4, seed: int = 0, options: Mapping[str, Any] | None = None,
                 min_contrast: float = 4.0) -> ProbeResult:
    """Does a long dream stay a moving picture of the world?

    World ``physics/Bounce`` with no kicks (elastic bounces keep the ball moving for ever).
    At ``checkpoints`` evenly spaced steps up to ``steps``, a dreamt frame passes when it is
    ``finite`` (no NaN or infinity in what the simulator returned), not ``blank`` (the
    standard deviation of its values is at least ``min_contrast`` grey levels), shows the
    ball (a blob of the ball's colour and size: not ``lost``) and the ball moved at least
    0.5 pixels since the previous checkpoint (the first is compared with the last context
    frame: not ``frozen``). Score: passing checkpoints / checkpoints, over all starts.

    Args:
        simulator, starts, context, seed, options: see ``benchmarks.probes.core``.
        steps: steps dreamt from each start.
        checkpoints: how many evenly spaced steps are checked.
        chunk: steps per simulator call.
        min_contrast: the least standard deviation of a frame that is not blank.

    Returns:
        The score; details: checkpoints failing each check and the ``first_failure`` step
        of each start (None if none).
    """
    world = "physics/Bounce"
    clips, dreamt = _long_dream(simulator, world, starts=starts, steps=steps,
                                checkpoints=checkpoints, chunk=chunk, context=context,
                                seed=seed, options=options)
    area = math.pi * clips[0].true_infos[0]["radius"] ** 2
    previous = locate(np.stack([clip.context_frames[-1] for clip in clips]), BALL, area)
    failures = {"nonfinite": 0, "blank": 0, "lost": 0, "frozen": 0}
    first_failure: list[int | None] = [None] * len(clips)
    passed = 0
    for mark, raw in dreamt:
        frames = as_uint8(raw)
        ball = locate(frames, BALL, area)
        checks = {
            "nonfinite": ~np.isfinite(raw).reshape(len(raw), -1).all(axis=1),
            "blank": frames.reshape(len(frames), -1).std(axis=1) < min_contrast,
            "lost": ~np.isfinite(ball).all(axis=1),
        }
        with np.errstate(invalid="ignore"):
            moved = np.abs(ball - previous).max(axis=1)
        checks["frozen"] = ~checks["lost"] & ~(moved >= MIN_MOVE)
        failed = np.zeros(len(clips), bool)
        for name, failing in checks.items():
            failures[name] += int(failing.sum())
            failed |= failing
        passed += int((~failed).sum())
        first_failure = [first if first is not None or not fail else mark
                         for first, fail in zip(first_failure, failed)]
        previous = ball
    total = len(clips) * len(checkpoint_steps(steps, checkpoints))
    return ProbeResult("long_rollout", world, passed / total, {
        "checkpoints": total, "passed": passed, "failures": failures,
        "first_failure": first_failure,
    })
