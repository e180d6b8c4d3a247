"""Physics-consistency probes: does a dream obey the laws of the world it imitates?

Each probe dreams from real starts of a procedural world of ``envs.physics`` (seeded, so
the real future is known), measures the dreamt frames by colour alone and returns a
``ProbeResult`` whose ``score`` in [0, 1] is 1 when the law holds as in reality:

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

__all__ = [
    "PROBES",
    "CopyLastSimulator",
    "NoiseSimulator",
    "ProbeResult",
    "Simulator",
    "Start",
    "TrueSimulator",
    "WorldModelSimulator",
    "action_response",
    "as_simulator",
    "bounce",
    "count_monotonicity",
    "gravity",
    "long_rollout",
    "object_permanence",
    "run_probes",
    "solid_walls",
    "static_stability",
    "world_model_simulator",
]
