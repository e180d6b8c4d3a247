"""CLI subcommand of the benchmark suite: ``worldsim bench``."""

from __future__ import annotations

import argparse

from worldsim.sampler_settings import SAMPLER_KEYS


def register(subparsers: argparse._SubParsersAction) -> None:
    from benchmarks.bench import PARTS

    bench = subparsers.add_parser(
        "bench", help="benchmark a world model: fidelity, speed, physics probes, transfer",
        description="Measure a world model: fidelity on real episodes it never saw (recorded "
                    "for the benchmark), dream speed, the physics-consistency probes of its "
                    "game, and, given an agent, dream-to-real transfer. Writes "
                    "OUT_DIR/SUITE-DATE.json (naming the machine), a markdown report and "
                    "PNG plots beside it, and videos.")
    bench.add_argument("--checkpoint", default="takecover",
                       help="world model: run folder, model.safetensors or shipped name "
                            "(default: takecover)")
    bench.add_argument("--agent", default=None,
                       help="an agent trained in this model's dream (path or shipped name): "
                            "adds its real-game and dream scores (the exploit gap)")
    bench.add_argument("--quick", action="store_true",
                       help="small budgets: a few minutes on 2 CPU cores (12 unseen episodes, "
                            "horizon 8, short probes, 5 transfer episodes)")
    bench.add_argument("--data", default=None,
                       help="the model's training dataset, to measure fidelity on its "
                            "held-out split instead of on freshly recorded episodes")
    bench.add_argument("--parts", default=",".join(PARTS),
                       help=f"comma-separated parts to run (default: {','.join(PARTS)}; "
                            "transfer runs only with --agent)")
    bench.add_argument("--suite", default="bench",
                       help="result name: OUT_DIR/SUITE-DATE.json (default: bench)")
    bench.add_argument("--out-dir", default=None,
                       help="results folder (default: benchmarks/results)")
    bench.add_argument("--work-dir", default="runs/bench",
                       help="where recorded benchmark episodes are kept and reused "
                            "(default: runs/bench)")
    bench.add_argument("--seed", type=int, default=0,
                       help="seed of clips, dreams and probe starts (default: 0)")
    bench.add_argument("--workers", type=int, default=2,
                       help="processes recording and scoring real episodes (default: 2)")
    bench.add_argument("--sampler", default="", metavar="KEY=VALUE,...",
                       help="dream with the model's sampler changed by these settings, e.g. "
                            f"denoise_steps=16,sigma_max=20,temperature=1.3 (keys: {SAMPLER_KEYS}; "
                            "default: the sampler saved with the model)")
    bench.add_argument("--quiet", action="store_true", help="no progress output")
    bench.set_defaults(run=run_bench_command)


def run_bench_command(args: argparse.Namespace) -> int:
    from benchmarks.bench import run_bench
    from worldsim.sampler_settings import parse_sampler_settings

    parts = tuple(part.strip() for part in args.parts.split(",") if part.strip())
    path = run_bench(args.checkpoint, args.out_dir, args.agent, args.quick, args.data, parts,
                     args.suite, args.seed, args.workers, args.work_dir,
                     progress=not args.quiet, sampler=parse_sampler_settings(args.sampler))
    print(path.with_suffix(".md").read_text())
    print(f"wrote {path} (+ .md report, plots and videos beside it)")
    return 0
