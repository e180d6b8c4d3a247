"""Run several probes on one simulator and gather their results as JSON-able data."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from benchmarks.probes.core import ProbeResult, SimulateFunction, Simulator, as_simulator
from benchmarks.probes.motion import action_response, bounce, gravity, solid_walls
from benchmarks.probes.objects import count_monotonicity, object_permanence
from benchmarks.probes.stability import long_rollout, static_stability
from benchmarks.probes.takecover import (action_following, fireball_persistence, monster_count,
                                         wall_stop)
from worldsim.errors import ConfigError

PROBES: dict[str, tuple[str, Callable[..., ProbeResult]]] = {
    "gravity": ("physics/Bounce", gravity),
    "bounce": ("physics/Bounce", bounce),
    "long_rollout": ("physics/Bounce", long_rollout),
    "object_permanence": ("physics/Occlusion", object_permanence),
    "solid_walls": ("physics/Body", solid_walls),
    "action_response": ("physics/Body", action_response),
    "static_stability": ("physics/Body", static_stability),
    "count_monotonicity": ("physics/Spawn", count_monotonicity),
    "action_following": ("vizdoom/TakeCover", action_following),
    "wall_stop": ("vizdoom/TakeCover", wall_stop),
    "monster_count": ("vizdoom/TakeCover", monster_count),
    "fireball_persistence": ("vizdoom/TakeCover", fireball_persistence),
}
"""Probe name -> (the world it dreams in, the probe)."""
QUICK: dict[str, dict[str, int]] = {
    "static_stability": {"starts": 2, "steps": 100},
    "long_rollout": {"starts": 1, "steps": 500, "checkpoints": 25},
}
"""Settings of ``quick=True`` (other probes: 3 starts): seconds rather than minutes."""


def run_probes(simulator: Simulator | SimulateFunction, probes: Sequence[str] | None = None, *,
               quick: bool = False, seed: int = 0,
               world_options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Run probes on a simulator.

    Args:
        simulator: what dreams (a simulator object or a plain simulate function).
        probes: names from ``PROBES``; default all of them, or, for a simulator with a
            ``world`` (a world model), the probes of that world.
        quick: fewer starts and shorter long dreams (``QUICK``), for smoke runs.
        seed: fixes the starts of every probe.
        world_options: ``make_env`` options per world name, e.g.
            ``{"physics/Bounce": {"frame_size": 32}}``; default for a world model's own world:
            the options it was trained with (its ``options``).

    Returns:
        ``{"simulator", "quick", "seed", "mean_score", "probes": {name: result}}``.

    Raises:
        ConfigError: an unknown probe name.
    """
    simulator = as_simulator(simulator)
    world = getattr(simulator, "world", "")
    names = list(probes) if probes is not None else [
        name for name, (probe_world, _) in PROBES.items() if not world or probe_world == world]
    unknown = [name for name in names if name not in PROBES]
    if unknown or not names:
        raise ConfigError(f"unknown probe(s) {', '.join(unknown) or '(none given)'}; known: "
                          f"{', '.join(PROBES)}")
    results = {}
    for name in names:
        probe_world, probe = PROBES[name]
        settings: dict[str, Any] = dict(QUICK.get(name, {"starts": 3})) if quick else {}
        options = (world_options or {}).get(probe_world)
        if options is None and probe_world == world:  # a world model: the world it knows
            options = getattr(simulator, "options", None)
        results[name] = probe(simulator, seed=seed, options=options, **settings).to_dict()
    return {
        "simulator": simulator.name, "quick": quick, "seed": seed,
        "mean_score": float(np.mean([result["score"] for result in results.values()])),
        "probes": results,
    }
