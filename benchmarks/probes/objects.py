"""Probes of objects: permanence behind an occluder, and counts that never go down."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from benchmarks.probes.core import (Clip, ProbeResult, SimulateFunction, Simulator,
                                    constant_policy, draw_and_dream, with_context)
from benchmarks.probes.measure import count_objects, locate
from envs.physics import PALETTE


def _reappearances(clip: Clip, after: int) -> list[tuple[int, int, int]]:
    """``(object, k, hidden)``: the first future frame ``k`` in which an object that was fully
    visible in the last context frame is fully visible again after being fully hidden at
    some earlier future step (``hidden`` frames in all), with ``after`` more frames to
    check it in. An object hidden at the start of the dream is no event: nothing in the
    context says it exists."""
    events = []
    steps = clip.true_infos[1:]
    for index in range(len(steps[0]["objects"])):
        if clip.true_infos[0]["objects"][index]["visible_fraction"] < 1.0:
            continue
        hidden = [k for k, info in enumerate(steps, 1) if info["objects"][index]["occluded"]]
        if not hidden:
            continue
        back = [k for k, info in enumerate(steps, 1)
                if k > hidden[0] and info["objects"][index]["visible_fraction"] == 1.0]
        if back and back[0] + after <= len(steps):
            events.append((index, back[0], sum(k < back[0] for k in hidden)))
    return events


def object_permanence(simulator: Simulator | SimulateFunction, *, starts: int = 6,
                      horizon: int = 32, context: int = 4, seed: int = 0,
                      options: Mapping[str, Any] | None = None, tolerance: float = 2.0,
                      follow: int = 2) -> ProbeResult:
    """Does an object that passes behind the occluder come out where and when it should, in
    its own colour?

    World ``physics/Occlusion``. An event is an object, fully visible in the last context
    frame, that is fully hidden at some future step and fully visible again at step ``k``
    (each start has at least one). The event
    passes when, in each of the dreamt frames ``k`` to ``k + follow``, a blob of the
    object's colour has its centroid within ``tolerance`` pixels (in x and in y) of the
    real position. Score: passed events / events.

    Args:
        simulator, starts, horizon, context, seed, options: see ``benchmarks.probes.core``.
        tolerance: pixels of slack for blur.
        follow: frames after the reappearance that must also be right.

    Returns:
        The score; details: ``events``, ``passed``, ``seen`` (events whose object shows up
        in its colour anywhere in frame ``k``) and ``hidden_frames`` (per event: for how
        many frames it was fully hidden, ``passed`` in the same order, to compare with a
        model's context length).
    """
    world = "physics/Occlusion"
    clips, dreams = draw_and_dream(
        simulator, world, count=starts, context=context, horizon=horizon, seed=seed,
        policy=constant_policy(0), options=options,
        accept=lambda clip: bool(_reappearances(clip, follow)))
    passed, seen, hidden_frames = [], [], []
    for clip, frames in zip(clips, dreams):
        size = clip.true_infos[0]["size"]
        for index, k, hidden in _reappearances(clip, follow):
            hidden_frames.append(hidden)
            colour = clip.true_infos[0]["objects"][index]["colour"]
            checked = with_context(clip, frames)[k:k + follow + 1]
            found = locate(checked, colour, size**2)
            truth = np.array([info["objects"][index]["position"]
                              for info in clip.true_infos[k:k + follow + 1]])
            with np.errstate(invalid="ignore"):
                passed.append(bool((np.abs(found - truth) <= tolerance).all()))
            seen.append(bool(np.isfinite(found[0]).all()))
    return ProbeResult("object_permanence", world, float(np.mean(passed)), {
        "events": len(passed), "passed": int(sum(passed)), "seen": int(sum(seen)),
        "hidden_frames": hidden_frames, "passed_by_event": passed,
    })


def _spawn_policy(rng: np.random.Generator, context: int, horizon: int) -> np.ndarray:
    """No spawning during the context, then ``spawn`` with probability 0.2 per step."""
    return np.concatenate([np.zeros(context, np.int64),
                           (rng.random(horizon) < 0.2).astype(np.int64)])


def _true_counts(clip: Clip) -> np.ndarray:
    return np.array([info["count"] for info in clip.true_infos])


def count_monotonicity(simulator: Simulator | SimulateFunction, *, starts: int = 6,
                       horizon: int = 24, context: int = 4, seed: int = 0,
                       options: Mapping[str, Any] | None = None) -> ProbeResult:
    """Does the number of objects never go down while new ones keep appearing?

    World ``physics/Spawn`` with ``spawn`` actions at random; in each start at least 2
    objects really appear during the horizon. With ``n[k]`` the objects counted in dreamt
    frame ``k`` (0: the last real context frame; blobs of palette colours of object size)
    and ``N[k]`` the real count: ``monotone`` is the fraction of steps with
    ``n[k] >= max(n[0..k-1])`` and ``recall = clip((n[K] - n[0]) / (N[K] - N[0]), 0, 1)``
    (a dream that freezes the count is not monotone by obeying the law).
    Per start ``s = monotone × recall``. Score: the mean of ``s`` over starts.

    Args:
        simulator, starts, horizon, context, seed, options: see ``benchmarks.probes.core``.

    Returns:
        The score; details: mean ``monotone``, mean ``recall`` and the mean absolute
        ``count_error``.
    """
    world = "physics/Spawn"
    clips, dreams = draw_and_dream(
        simulator, world, count=starts, context=context, horizon=horizon, seed=seed,
        policy=_spawn_policy, options=options,
        accept=lambda clip: _true_counts(clip)[-1] - _true_counts(clip)[0] >= 2)
    monotone, recall, error, scores = [], [], [], []
    for clip, frames in zip(clips, dreams):
        counted = count_objects(with_context(clip, frames), PALETTE,
                                clip.true_infos[0]["size"] ** 2)
        truth = _true_counts(clip)
        monotone.append(float((counted[1:] >= np.maximum.accumulate(counted)[:-1]).mean()))
        recall.append(float(np.clip((counted[-1] - counted[0]) / (truth[-1] - truth[0]), 0, 1)))
        error.append(float(np.abs(counted - truth).mean()))
        scores.append(monotone[-1] * recall[-1])
    return ProbeResult("count_monotonicity", world, float(np.mean(scores)), {
        "monotone": float(np.mean(monotone)), "recall": float(np.mean(recall)),
        "count_error": float(np.mean(error)), "per_start": scores,
    })
