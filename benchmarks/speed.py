"""Dream-step speed of a world model: steps/s by batch size, latent vs decoded RGB, and the
cost of a late step against an early one.

A dream step = ``denoise_steps`` cached denoiser passes + 1 commit pass over the new frame's
tokens, for every dream in the batch (``WorldModel.step``), plus decoding to RGB when asked.
Targets (issue: the world model, 2 threads): >= 1,000 dream steps/s at batch 64 with latent
observations, >= 300 with RGB; step 10,000 costs what step 10 costs.

    python -m benchmarks.speed --checkpoint runs/takecover     # a trained model
    python -m benchmarks.speed --preset small                  # random weights, same speed
    python -m benchmarks.speed --checkpoint takecover --compile  # torch.compile'd blocks
    python -m benchmarks.speed --checkpoint takecover --ab-compile 5 --batch 64 --precision bf16
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from worldsim.config import preset
from worldsim.utils import get_device
from worldsim.world_model import WorldModel, WorldModelInfo


def build(checkpoint: str | None, preset_name: str, device: str = "cpu") -> WorldModel:
    if checkpoint:
        return WorldModel.load(checkpoint, device=get_device(device))
    model = WorldModel(preset(preset_name, num_actions=3), WorldModelInfo(frame_size=(64, 64)))
    return model.eval().to(get_device(device))


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock time covers it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def steps_per_second(model: WorldModel, batch: int, rgb: bool, precision: str,
                     seconds: float, trials: int = 3) -> dict[str, Any]:
    """Median and best dream steps/s over ``trials`` timed runs of ``seconds / trials``."""
    height, width = model.info.frame_size
    device = model.device
    context = torch.randint(0, 256, (batch, model.config.dynamics.context_frames, 3, height,
                                     width), dtype=torch.uint8, device=device)
    actions = torch.randint(0, model.num_actions, (batch, context.shape[1] - 1), device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with model.autocast(precision):
        state = model.start(context, actions)

        def step() -> None:
            chosen = torch.randint(0, model.num_actions, (batch,), device=device)
            result = model.step(state, chosen, generator)
            if rgb:
                model.decode(result.latents[:, None])

        for _ in range(2):
            step()
        per_step = []
        for _ in range(trials):
            synchronize(device)
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds / trials or count < 2:
                step()
                count += 1
                synchronize(device)
            per_step.append((time.perf_counter() - started) / count)
    median = sorted(per_step)[len(per_step) // 2]
    return {"batch": batch, "obs": "rgb" if rgb else "latent", "precision": precision,
            "ms_per_batched_step": round(1e3 * median, 3),
            "dream_steps_per_s": round(batch / median, 1),
            "best_dream_steps_per_s": round(batch / min(per_step), 1)}


@torch.no_grad()
def late_vs_early(model: WorldModel, batch: int, precision: str, late: int = 10_000,
                  window: int = 50) -> dict[str, Any]:
    """Mean time of steps 10..10+window against steps late..late+window of one rollout."""
    height, width = model.info.frame_size
    device = model.device
    state = model.start(torch.zeros(batch, 1, 3, height, width, dtype=torch.uint8, device=device),
                        torch.zeros(batch, 0, dtype=torch.long, device=device))
    generator = torch.Generator(device=device).manual_seed(0)
    times: dict[int, float] = {}
    with model.autocast(precision):
        step = 0
        while step < late + window:
            timed = 10 <= step < 10 + window or late <= step < late + window
            started = time.perf_counter()
            chosen = torch.randint(0, model.num_actions, (batch,), device=device)
            result = model.step(state, chosen, generator)
            synchronize(device)
            if timed:
                times[step] = time.perf_counter() - started
            step += 1
    early = [t for s, t in times.items() if s < late]
    later = [t for s, t in times.items() if s >= late]
    finite = bool(torch.isfinite(result.latents).all())
    return {"batch": batch, "precision": precision, "late_step": late,
            "ms_early": round(1e3 * sorted(early)[len(early) // 2], 3),
            "ms_late": round(1e3 * sorted(later)[len(later) // 2], 3),
            "late_over_early": round(sorted(later)[len(later) // 2] / sorted(early)[len(early) // 2], 3),
            "latents_finite_at_end": finite}


def compare_compiled(model: WorldModel, args: argparse.Namespace, seconds: float) -> int:
    """Eager against compiled blocks, ``args.ab_compile`` interleaved rounds per setting."""
    from benchmarks.common import write_result

    compiled = build(args.checkpoint, args.preset, args.device)
    compiled.sampler = model.sampler
    compiled.compile_blocks()
    rows = []
    for precision in args.precision:
        for batch in args.batch:
            steps_per_second(compiled, batch, False, precision, 0.1)  # compiles this shape
            runs: dict[str, list[float]] = {"eager": [], "compiled": []}
            for _ in range(args.ab_compile):
                for name, candidate in (("eager", model), ("compiled", compiled)):
                    row = steps_per_second(candidate, batch, False, precision, seconds)
                    runs[name].append(row["dream_steps_per_s"])
            medians = {name: sorted(v)[len(v) // 2] for name, v in runs.items()}
            rows.append({"batch": batch, "obs": "latent", "precision": precision,
                         "dream_steps_per_s": runs, "median": medians})
            print(f"{precision} latent batch {batch:4d}: eager {runs['eager']} (median "
                  f"{medians['eager']:.0f}), compiled {runs['compiled']} (median "
                  f"{medians['compiled']:.0f}) dream steps/s", flush=True)
    if not args.quick:
        results = {"checkpoint": args.checkpoint, "preset": None if args.checkpoint else
                   args.preset, "denoise_steps": model.sampler.denoise_steps,
                   "threads": args.threads, "rounds": args.ab_compile, "rows": rows}
        print(f"wrote {write_result('speed-compile-ab', results)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None,
                        help="world model to time (default: random weights of --preset)")
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "base"],
                        help="architecture when no checkpoint is given (default: small)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64, 256],
                        help="batch sizes (default: 1 16 64 256)")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"],
                        choices=["fp32", "bf16"], help="inference precisions (default: both)")
    parser.add_argument("--denoise-steps", type=int, default=None,
                        help="sampler steps per frame (default: the model's)")
    parser.add_argument("--compile", action="store_true",
                        help="compile the transformer blocks first (WorldModel.compile_blocks; "
                             "the warm-up steps of each setting include the compiling)")
    parser.add_argument("--ab-compile", type=int, default=0, metavar="ROUNDS",
                        help="instead of the table: ROUNDS interleaved timings of the eager "
                             "and the compiled model per batch and precision (one run is "
                             "noisy on a shared host; interleaving pairs them in time)")
    parser.add_argument("--device", default="cpu",
                        help="cpu, cuda or auto; results on a GPU go to "
                             "speed-cuda-<date>.json (default: cpu)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="timing budget per setting (default: 6)")
    parser.add_argument("--late-step", type=int, default=10_000,
                        help="late step compared with step 10 (default: 10000; 0 skips it)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets, writes nothing")
    args = parser.parse_args(argv)
    if args.compile and args.ab_compile:
        parser.error("--ab-compile times the eager model against a compiled copy: drop --compile")

    from benchmarks.common import write_result

    torch.set_num_threads(args.threads)
    model = build(args.checkpoint, args.preset, args.device)
    if args.denoise_steps:
        model.sampler.denoise_steps = args.denoise_steps
    if args.compile:
        model.compile_blocks()
    seconds = 0.3 if args.quick else args.seconds
    if args.ab_compile:
        return compare_compiled(model, args, seconds)
    rows = []
    for precision in args.precision:
        for rgb in (False, True):
            for batch in args.batch:
                row = steps_per_second(model, batch, rgb, precision, seconds)
                rows.append(row)
                print(f"{precision} {row['obs']:6s} batch {batch:4d}: "
                      f"{row['dream_steps_per_s']:8.0f} dream steps/s "
                      f"({row['ms_per_batched_step']:.1f} ms per batched step)", flush=True)
    late = None
    if args.late_step:
        late = late_vs_early(model, 16, args.precision[-1], 200 if args.quick else args.late_step)
        print(f"step {late['late_step']} vs step 10 at batch 16: {late['ms_late']:.2f} ms vs "
              f"{late['ms_early']:.2f} ms (x{late['late_over_early']:.2f})")
    results = {
        "checkpoint": args.checkpoint, "preset": None if args.checkpoint else args.preset,
        "parameters": {"autoencoder": sum(p.numel() for p in model.autoencoder.parameters()),
                       "dynamics": sum(p.numel() for p in model.denoiser.parameters())},
        "denoise_steps": model.sampler.denoise_steps, "threads": args.threads,
        "compiled": args.compile, "device": str(model.device), "steps": rows,
        "late_vs_early": late,
        "targets": {"latent_batch64": 1000, "rgb_batch64": 300},
    }
    if not args.quick:
        name = "speed-compiled" if args.compile else "speed"
        if model.device.type == "cuda":
            name = name.replace("speed", "speed-cuda")
        print(f"wrote {write_result(name, results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
