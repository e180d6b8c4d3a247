"""Physics-consistency probes: does a dream obey the laws of the world it imitates?

Each probe dreams from real starts of a seeded world (a procedural world of
``envs.physics``, or VizDoom TakeCover), so the real future is known, measures the dreamt
frames (by colour in the physics worlds, by view shift and a small engine-labelled detector
in TakeCover: ``benchmarks.probes.takecover``) and returns a ``ProbeResult`` whose
``score`` in [0, 1] is 1 when the law holds as in reality:

==========================  =====================  ============================================
probe                       world                  law
==========================  =====================  ============================================
``gravity``                 ``physics/Bounce``     a ball in free flight accelerates by ``g``
``bounce``                  ``physics/Bounce``     its velocity reverses at a wall
``long_rollout``            ``physics/Bounce``     a long dream stays a moving picture
``object_permanence``       ``physics/Occlusion``  an occluded object comes back, same colour
``solid_walls``             ``physics/Body``       a pushed body stops at the wall
``action_response``         ``physics/Body``       each action moves the body as in reality
``static_stability``        ``physics/Body``       a still scene does not drift
``count_monotonicity``      ``physics/Spawn``      objects never vanish
``action_following``        ``vizdoom/TakeCover``  the view slides as the actions say
``wall_stop``               ``vizdoom/TakeCover``  the view stops when the player hits a wall
``monster_count``           ``vizdoom/TakeCover``  monsters never vanish, new ones appear
``fireball_persistence``    ``vizdoom/TakeCover``  a fireball in flight keeps flying
==========================  =====================  ============================================

A simulator is anything with ``simulate(context_frames, context_actions, future_actions,
starts)`` (see ``benchmarks.probes.core``). ``TrueSimulator`` (the real world) should score
about 1 everywhere; ``CopyLastSimulator`` and ``NoiseSimulator`` score low on every probe
but ``static_stability``, where copying is exact. ``world_model_simulator(model)`` wraps a
trained world model::

    from benchmarks.probes import run_probes, world_model_simulator
    report = run_probes(world_model_simulator(WorldModel.load("runs/bounce")))

or from the shell: ``python -m benchmarks.probes --checkpoint runs/bounce``.
"""

from benchmarks.probes.core import ProbeResult, Simulator, Start, as_simulator
from benchmarks.probes.motion import action_response, bounce, gravity, solid_walls
from benchmarks.probes.objects import count_monotonicity, object_permanence
from benchmarks.probes.simulators import (CopyLastSimulator, NoiseSimulator, TrueSimulator,
                                          WorldModelSimulator, world_model_simulator)
from benchmarks.probes.stability import long_rollout, static_stability
from benchmarks.probes.suite import PROBES, run_probes
from benchmarks.probes.takecover import (TakeCoverDetector, action_following,
                                         fireball_persistence, load_detector, monster_count,
                                         wall_stop)

__all__ = [
    "PROBES",
    "CopyLastSimulator",
    "NoiseSimulator",
    "ProbeResult",
    "Simulator",
    "Start",
    "TakeCoverDetector",
    "TrueSimulator",
    "WorldModelSimulator",
    "action_following",
    "action_response",
    "as_simulator",
    "bounce",
    "count_monotonicity",
    "fireball_persistence",
    "gravity",
    "load_detector",
    "long_rollout",
    "monster_count",
    "object_permanence",
    "run_probes",
    "solid_walls",
    "static_stability",
    "wall_stop",
    "world_model_simulator",
]
