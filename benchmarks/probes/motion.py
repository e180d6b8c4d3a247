"""Probes of motion laws: gravity, bounces, solid walls and the response to actions.

Each probe dreams from real starts of one physics world (``draw_and_dream``), locates the
moving object in every dreamt frame by its colour and compares what it did with what the
real world did from the same start under the same actions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from benchmarks.probes.core import (Clip, ProbeResult, SimulateFunction, Simulator,
                                    constant_policy, draw_and_dream, with_context)
from benchmarks.probes.measure import locate
from envs.physics import BALL, BODY, BodyEnv
from worldsim.errors import ConfigError

MIN_MEASURED_SPEED = 0.25
"""Pixels per step a dreamt object must move for its direction to count."""
_VERTICAL_WALLS = ("top", "bottom")
_WALL_AXIS = {"left": (0, -1), "right": (0, 1), "top": (1, -1), "bottom": (1, 1)}
"""Wall -> (axis of its normal: 0 x, 1 y; sign of the direction towards it)."""


def _positions(clip: Clip) -> np.ndarray:
    """(K + 1, 2) true ``[x, y]`` of the last context frame and of each future frame."""
    return np.array([info["position"] for info in clip.true_infos], np.float64)


def _ball_track(clip: Clip, frames: np.ndarray) -> np.ndarray:
    """(K + 1, 2) where the ball is in the last context frame and each dreamt frame."""
    radius = clip.true_infos[0]["radius"]
    return locate(with_context(clip, frames), BALL, math.pi * radius**2)


def _free_flight(clip: Clip) -> tuple[int, int]:
    """The longest run of frames ``[first, last]`` (0 = the last context frame) with no
    floor or ceiling contact between them."""
    best, first = (0, 0), 0
    for k, info in enumerate(clip.true_infos[1:], start=1):
        if any(info["contacts"][wall] for wall in _VERTICAL_WALLS):
            first = k
        elif k - first > best[1] - best[0]:
            best = (first, k)
    return best


def gravity(simulator: Simulator | SimulateFunction, *, starts: int = 6, horizon: int = 32,
            context: int = 4, seed: int = 0, options: Mapping[str, Any] | None = None,
            min_flight: int = 12) -> ProbeResult:
    """Does a ball in free flight fall with the world's gravity?

    World ``physics/Bounce``, no kicks. In each dream, over the longest stretch of free
    flight of the real future (no floor or ceiling contact; at least ``min_flight`` frames,
    the last real context frame first), the ball is found by colour and a parabola
    ``y = a t² / 2 + b t + c`` is fitted to its height. Per start
    ``s = found × clip(1 - |a - g| / g, 0, 1)``, ``g`` the true gravity and ``found`` the
    fraction of the stretch's frames where the ball was found (``s = 0`` when found in
    fewer than 3). Score: the mean of ``s`` over starts.

    Args:
        simulator, starts, horizon, context, seed, options: see ``benchmarks.probes.core``
            (the world's ``gravity`` must be > 0).
        min_flight: the shortest stretch of free flight a start must have, in frames.

    Returns:
        The score; details: true ``gravity``, ``fitted`` acceleration per start, ``found``.
    """
    world = "physics/Bounce"
    clips, dreams = draw_and_dream(
        simulator, world, count=starts, context=context, horizon=horizon, seed=seed,
        policy=constant_policy(0), options=options,
        accept=lambda clip: np.diff(_free_flight(clip))[0] + 1 >= min_flight)
    g = clips[0].true_infos[0]["gravity"]
    if g <= 0:
        raise ConfigError(f"the gravity probe needs gravity > 0 in {world}, got {g}")
    fitted, found, scores = [], [], []
    for clip, frames in zip(clips, dreams):
        first, last = _free_flight(clip)
        height = _ball_track(clip, frames)[first:last + 1, 1]
        seen = np.isfinite(height)
        found.append(float(seen.mean()))
        if seen.sum() < 3:
            fitted.append(None)
            scores.append(0.0)
            continue
        acceleration = 2 * float(np.polyfit(np.flatnonzero(seen), height[seen], 2)[0])
        fitted.append(acceleration)
        scores.append(found[-1] * float(np.clip(1 - abs(acceleration - g) / g, 0, 1)))
    return ProbeResult("gravity", world, float(np.mean(scores)), {
        "gravity": g, "fitted": fitted, "found": found, "per_start": scores,
    })


def _bounce_events(clip: Clip, min_speed: float) -> list[tuple[int, str]]:
    """``(k, wall)`` for each real wall contact on the way into future frame ``k`` that is
    measurable: 2 frames before, 1 after, a clear approach and no other contact on that axis
    just before or after."""
    positions = _positions(clip)
    contacts = [info["contacts"] for info in clip.true_infos]
    events = []
    for k in range(2, len(contacts) - 1):
        for wall, touched in contacts[k].items():
            axis, towards = _WALL_AXIS[wall]
            same_axis = [w for w, (a, _) in _WALL_AXIS.items() if a == axis]
            approach = (positions[k - 1, axis] - positions[k - 2, axis]) * towards
            clear = not any(contacts[j][w] for j in (k - 1, k + 1) for w in same_axis)
            if touched and clear and approach >= min_speed:
                events.append((k, wall))
    return events


def bounce(simulator: Simulator | SimulateFunction, *, starts: int = 6, horizon: int = 32,
           context: int = 4, seed: int = 0, options: Mapping[str, Any] | None = None,
           min_speed: float = 1.0) -> ProbeResult:
    """Does the ball's velocity reverse when it hits a wall?

    World ``physics/Bounce``, no kicks. An event is a real contact with a wall, floor or
    ceiling at future step ``k`` while the ball approached it at ``min_speed`` pixels per
    step or more. With ``m`` the ball's dreamt centroid along the wall's normal and ``n``
    the direction towards the wall, the event passes when
    ``(m[k-1] - m[k-2]) · n >= 0.25`` (it approached) and ``(m[k+1] - m[k]) · n <= -0.25``
    (it left). Score: passed events / events.

    Args:
        simulator, starts, horizon, context, seed, options: see ``benchmarks.probes.core``.
        min_speed: the slowest real approach that makes an event.

    Returns:
        The score; details: ``events``, ``passed`` and passes per wall.
    """
    world = "physics/Bounce"
    clips, dreams = draw_and_dream(
        simulator, world, count=starts, context=context, horizon=horizon, seed=seed,
        policy=constant_policy(0), options=options,
        accept=lambda clip: bool(_bounce_events(clip, min_speed)))
    by_wall: dict[str, list[bool]] = {wall: [] for wall in _WALL_AXIS}
    for clip, frames in zip(clips, dreams):
        track = _ball_track(clip, frames)
        for k, wall in _bounce_events(clip, min_speed):
            axis, towards = _WALL_AXIS[wall]
            approach = (track[k - 1, axis] - track[k - 2, axis]) * towards
            leave = (track[k + 1, axis] - track[k, axis]) * towards
            by_wall[wall].append(bool(approach >= MIN_MEASURED_SPEED
                                      and leave <= -MIN_MEASURED_SPEED))
    passed = [ok for oks in by_wall.values() for ok in oks]
    return ProbeResult("bounce", world, float(np.mean(passed)), {
        "events": len(passed), "passed": int(sum(passed)),
        "passed_by_wall": {wall: f"{sum(oks)}/{len(oks)}" for wall, oks in by_wall.items()},
    })


def _push_policy(rng: np.random.Generator, context: int, horizon: int) -> np.ndarray:
    """Stand still, then push towards one random wall for the whole horizon."""
    direction = int(rng.integers(1, len(BodyEnv.ACTION_NAMES)))
    return np.array([0] * context + [direction] * horizon, np.int64)


def _first_blocked(clip: Clip) -> int:
    """The first future step at which a wall stopped the body (K + 1 if none)."""
    blocked = [k for k, info in enumerate(clip.true_infos[1:], start=1) if info["blocked"]]
    return blocked[0] if blocked else len(clip.true_infos)


def _body_track(clip: Clip, frames: np.ndarray) -> np.ndarray:
    """(K + 1, 2) where the body is in the last context frame and each dreamt frame."""
    return locate(with_context(clip, frames), BODY, clip.true_infos[0]["size"] ** 2)


def solid_walls(simulator: Simulator | SimulateFunction, *, starts: int = 6, horizon: int = 24,
                context: int = 4, seed: int = 0, options: Mapping[str, Any] | None = None,
                tolerance: float = 1.5) -> ProbeResult:
    """Does the body stop at a wall it keeps pushing against?

    World ``physics/Body``: after the context the body is pushed towards one wall for the
    whole horizon; in reality it reaches the wall after 2 steps or more and then presses
    on it for at least a third of the horizon. Per start, with ``c[k]`` the dreamt centroid
    of the body after step ``k``: ``inside`` is the fraction of steps whose ``c[k]`` lies
    within the real bounds of the body's centre widened by ``tolerance`` pixels (a lost
    body is not inside), and ``reached`` is 1 if some ``c[k]`` came within ``tolerance``
    of the wall along the push, else 0 (a body that never moves tests no wall).
    ``s = reached × inside``. Score: the mean of ``s`` over starts.

    Args:
        simulator, starts, horizon, context, seed, options: see ``benchmarks.probes.core``.
        tolerance: pixels of slack for blur.

    Returns:
        The score; details: mean ``inside``, ``reached`` fraction and the deepest
        ``penetration`` into a wall in pixels.
    """
    world = "physics/Body"
    clips, dreams = draw_and_dream(
        simulator, world, count=starts, context=context, horizon=horizon, seed=seed,
        policy=_push_policy, options=options,
        accept=lambda clip: 2 <= _first_blocked(clip) <= horizon - horizon // 3)
    inside, reached, penetration, scores = [], [], 0.0, []
    for clip, frames in zip(clips, dreams):
        centre = _body_track(clip, frames)[1:]  # (K, 2)
        low = np.array(clip.true_infos[0]["bounds"][:2])
        high = np.array(clip.true_infos[0]["bounds"][2:])
        with np.errstate(invalid="ignore"):
            within = ((centre >= low - tolerance) & (centre <= high + tolerance)).all(axis=1)
        axis = 0 if int(clip.future_actions[0]) in (1, 2) else 1
        wall = clip.true_infos[-1]["position"][axis]  # pressed against it at the end
        towards = 1 if int(clip.future_actions[0]) in (2, 4) else -1
        beyond = (centre[:, axis] - wall) * towards
        found = np.isfinite(beyond)
        penetration = max([penetration, *beyond[found]])
        inside.append(float(within.mean()))
        reached.append(bool((np.abs(beyond[found]) <= tolerance).any()))
        scores.append(inside[-1] * reached[-1])
    return ProbeResult("solid_walls", world, float(np.mean(scores)), {
        "inside": float(np.mean(inside)), "reached": float(np.mean(reached)),
        "penetration": float(penetration), "per_start": scores,
    })


def _wander_policy(rng: np.random.Generator, context: int, horizon: int) -> np.ndarray:
    """Runs of 1 to 6 steps of one random action (none included)."""
    actions: list[int] = []
    while len(actions) < context + horizon:
        actions += [int(rng.integers(len(BodyEnv.ACTION_NAMES)))] * int(rng.integers(1, 7))
    return np.array(actions[:context + horizon], np.int64)


def _moves(clip: Clip) -> np.ndarray:
    """(K, 2) the real ``[dx, dy]`` of each future step."""
    return np.array([info["moved"] for info in clip.true_infos[1:]], np.float64)


def action_response(simulator: Simulator | SimulateFunction, *, starts: int = 6,
                    horizon: int = 24, context: int = 4, seed: int = 0,
                    options: Mapping[str, Any] | None = None,
                    tolerance: float = 1.5) -> ProbeResult:
    """Does the body move by the action's step, in its direction, and stop at walls?

    World ``physics/Body`` under runs of random actions; each start has at least 5 real
    moves and 2 steps where a wall stopped the body. A step is right when the dreamt
    displacement of the body's centroid is within ``tolerance`` pixels (in x and in y) of
    the real move, which is zero for ``none`` and for a push against a wall. With
    ``moving`` the fraction of right steps among real moves and ``still`` among real
    non-moves, pooled over starts: score ``sqrt(moving × still)`` (a body that never moves
    and one that ignores walls both fail).

    Args:
        simulator, starts, horizon, context, seed, options: see ``benchmarks.probes.core``.
        tolerance: pixels of slack for blur.

    Returns:
        The score; details: ``moving``, ``still``, ``blocked`` (right stops at walls) and
        accuracy per action name.
    """
    world = "physics/Body"

    def accept(clip: Clip) -> bool:
        moving = np.abs(_moves(clip)).sum(axis=1) > 0
        blocked = sum(info["blocked"] for info in clip.true_infos[1:])
        return bool(moving.sum() >= 5 and blocked >= 2)

    clips, dreams = draw_and_dream(
        simulator, world, count=starts, context=context, horizon=horizon, seed=seed,
        policy=_wander_policy, options=options, accept=accept)
    right, moving, blocked, actions = [], [], [], []
    for clip, frames in zip(clips, dreams):
        displacement = np.diff(_body_track(clip, frames), axis=0)  # (K, 2), NaN where lost
        truth = _moves(clip)
        with np.errstate(invalid="ignore"):
            right += list((np.abs(displacement - truth) <= tolerance).all(axis=1))
        moving += list(np.abs(truth).sum(axis=1) > 0)
        blocked += [info["blocked"] for info in clip.true_infos[1:]]
        actions += list(clip.future_actions)
    right_steps, moves = np.array(right), np.array(moving)
    accuracy = {"moving": float(right_steps[moves].mean()),
                "still": float(right_steps[~moves].mean()),
                "blocked": float(right_steps[np.array(blocked)].mean())}
    per_action = {name: _mean_or_none(right_steps[np.array(actions) == index])
                  for index, name in enumerate(BodyEnv.ACTION_NAMES)}
    return ProbeResult("action_response", world,
                       math.sqrt(accuracy["moving"] * accuracy["still"]),
                       {**accuracy, "per_action": per_action, "steps": len(right)})


def _mean_or_none(values: Sequence[bool] | np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None
