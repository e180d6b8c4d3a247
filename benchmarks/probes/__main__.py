"""Physics-consistency probes of a world model (or of a reference simulator).

    python -m benchmarks.probes --checkpoint runs/bounce          # the probes of its world
    python -m benchmarks.probes --simulator true --quick          # check the probes themselves

Writes ``probes-<date>.json`` under ``benchmarks/results`` and prints a score per probe.
"""

from __future__ import annotations

import argparse

from benchmarks.common import write_result
from benchmarks.probes.core import Simulator
from benchmarks.probes.simulators import CopyLastSimulator, NoiseSimulator, TrueSimulator
from benchmarks.probes.suite import PROBES, run_probes
from worldsim.diffusion.edm import sampler_settings, with_sampler_settings
from worldsim.errors import ConfigError
from worldsim.sampler_settings import SAMPLER_KEYS, parse_sampler_settings

REFERENCES = {"true": TrueSimulator, "copy_last": CopyLastSimulator, "noise": NoiseSimulator}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint",
                        help="world model trained on a physics/* world or VizDoom TakeCover: "
                             "run folder, model.safetensors, or shipped name")
    source.add_argument("--simulator", choices=sorted(REFERENCES),
                        help="a reference simulator instead of a model")
    parser.add_argument("--probes", default=None,
                        help=f"comma-separated, from {', '.join(PROBES)} (default: all, or "
                             "those of the model's world)")
    parser.add_argument("--quick", action="store_true", help="few starts, short long dreams")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="model inference precision (default: fp32)")
    parser.add_argument("--sampler", default="", metavar="KEY=VALUE,...",
                        help="change the model's sampler for the dreams, e.g. "
                             f"temperature=1.5,denoise_steps=4 (keys: {SAMPLER_KEYS}"
                             "; default: the checkpoint's own)")
    parser.add_argument("--seed", type=int, default=0, help="start and noise seed (default: 0)")
    parser.add_argument("--out-dir", default=None,
                        help="results folder (default: benchmarks/results)")
    args = parser.parse_args(argv)

    simulator: Simulator
    if args.checkpoint:
        from benchmarks.probes.simulators import world_model_simulator
        from worldsim.world_model import WorldModel

        model = WorldModel.load(args.checkpoint)
        try:
            model.sampler = with_sampler_settings(model.sampler,
                                                  parse_sampler_settings(args.sampler))
        except ConfigError as error:
            parser.error(f"--sampler: {error}")
        simulator = world_model_simulator(model, args.seed, args.precision)
    else:
        simulator = REFERENCES[args.simulator]()
    probes = args.probes.split(",") if args.probes else None
    results = run_probes(simulator, probes, quick=args.quick, seed=args.seed)
    if args.checkpoint:
        results["sampler"] = sampler_settings(model.sampler)
    path = write_result("probes", results, args.out_dir)
    for name, result in results["probes"].items():
        print(f"{name:<20} {result['score']:.3f}  ({result['world']})")
    print(f"{'mean':<20} {results['mean_score']:.3f}\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
