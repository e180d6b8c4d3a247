"""Dream env throughput against the world model's own stepping speed and the real game.

For each batch size N (default 1, 16, 64, 256) and each observation mode it measures:

- ``raw``: the world model alone, ``model.step`` in a bare loop (plus ``model.decode`` of
  every new frame for RGB): the most a wrapper could reach;
- ``env``: :class:`envs.dream.DreamVectorEnv` stepping N dreams (and, at N = 1, the single
  :class:`envs.dream.DreamEnv` too), with checked actions, per-dream noise streams, info
  dicts and observations handed back as NumPy;
- ``overhead`` = 1 - env / raw (the issue's bar: below 10 %), the median over ``--trials``
  pairs of back-to-back runs (raw, then env), so that a busy spell of the machine weighs on
  both sides alike.

Rates are dream frames per second (N x vector steps/s), best of ``--trials`` runs, random
actions on both sides, with termination off so every run does the same work (a restart
costs one prompt pass; with a real model episodes last hundreds of steps). The real game's
step rate (one env, one process, random actions) is measured beside them. Run it on an
otherwise idle machine.

    python -m benchmarks.dream_env --checkpoint takecover         # full run
    python -m benchmarks.dream_env --checkpoint RUN --quick       # a smoke run in seconds
    python -m benchmarks.dream_env --device cuda --batch-sizes 256 1024 4096 --precision bf16
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from benchmarks.speed import synchronize

MODES = ("latent", "rgb")


def timed_rate(step: Callable[[], None], frames_per_call: int, seconds: float,
               device: torch.device) -> float:
    """Frames/s of ``step`` called for at least ``seconds`` (work queued on ``device``
    counts in the time)."""
    calls, started = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        synchronize(device)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return calls * frames_per_call / elapsed


def paired_rates(raw: Callable[[], None], env: Callable[[], None], frames_per_call: int,
                 seconds: float, trials: int, device: torch.device,
                 warmup: int = 3) -> tuple[float, float, float]:
    """Time the bare model and the env in alternation, ``trials`` pairs of runs.

    Returns the best raw and env frames/s, and the median over pairs of ``1 - env / raw``:
    each pair runs back to back, so a slow spell of the machine slows both sides of a pair
    and the overhead stays fair where the best rates alone would not be.
    """
    for _ in range(warmup):
        raw()
        env()
    raws, envs = [], []
    for _ in range(trials):
        raws.append(timed_rate(raw, frames_per_call, seconds, device))
        envs.append(timed_rate(env, frames_per_call, seconds, device))
    overheads = [1 - e / r for r, e in zip(raws, envs)]
    return max(raws), max(envs), float(np.median(overheads))


def raw_stepper(model: Any, batch: int, mode: str, precision: str) -> Callable[[], None]:
    """One call = ``model.step`` of ``batch`` dreams (plus ``model.decode`` for RGB)."""
    prompts = model.prompt_frames[:1].expand(batch, -1, -1, -1, -1)
    prompt_actions = model.prompt_actions[:1].expand(batch, -1)
    generator = torch.Generator(device=model.device).manual_seed(0)
    rng = np.random.default_rng(0)
    with model.autocast(precision):
        state = model.start(prompts, prompt_actions)

    def step() -> None:
        actions = torch.from_numpy(rng.integers(model.num_actions, size=batch))
        with model.autocast(precision):
            result = model.step(state, actions, generator)
            if mode == "rgb":
                model.decode(result.latents[:, None].float())

    return step


def env_stepper(model: Any, batch: int, mode: str, precision: str,
                single: bool = False) -> Callable[[], None]:
    """One call = a step of DreamVectorEnv (or DreamEnv when ``single``), random actions."""
    from envs.dream import DreamEnv, DreamVectorEnv

    options = dict(model=model, obs_mode=mode, termination="never",
                   max_episode_steps=10**9, precision=precision)
    rng = np.random.default_rng(0)
    if single:
        env = DreamEnv(**options)
        env.reset(seed=0)
        return lambda: env.step(int(rng.integers(model.num_actions)))
    vector = DreamVectorEnv(num_envs=batch, **options)
    vector.reset(seed=0)
    return lambda: vector.step(rng.integers(model.num_actions, size=batch))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="takecover",
                        help="world model: run folder, model.safetensors or shipped name "
                             "(default: takecover)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16, 64, 256],
                        help="numbers of dreams N to measure (default: 1 16 64 256)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="observation modes (default: latent rgb)")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="length of each timed run (default: 2)")
    parser.add_argument("--trials", type=int, default=5,
                        help="pairs of timed runs (raw, env): best rates and median overhead "
                             "kept (default: 5)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="inference precision (default: fp32)")
    parser.add_argument("--device", default="cpu",
                        help="where the dreams run: cpu, cuda or auto (default: cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice)")
    parser.add_argument("--real-steps", type=int, default=3000,
                        help="steps of the real game to time (0: skip; default: 3000)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny budgets (N = 1 and 4, 0.2 s runs), for a smoke test")
    parser.add_argument("--out-dir", default=None,
                        help="results folder (default: benchmarks/results)")
    args = parser.parse_args(argv)

    from benchmarks.common import write_result
    from worldsim.utils import get_device
    from worldsim.world_model import WorldModel

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.batch_sizes, args.seconds, args.trials = [1, 4], 0.2, 1
        args.real_steps = min(args.real_steps, 200)
    model = WorldModel.load(args.checkpoint, get_device(args.device))
    if model.prompt_frames is None:
        raise SystemExit(f"{args.checkpoint} stores no prompt clips; retrain it with this worldsim")
    results: dict[str, Any] = {
        "checkpoint": str(args.checkpoint), "env": model.info.env, "device": str(model.device),
        "denoise_steps": model.sampler.denoise_steps, "precision": args.precision,
        "latent_shape": list(model.latent_shape),
        "seconds_per_run": args.seconds, "trials": args.trials, "rows": [],
    }
    print(f"{'mode':<7}{'N':>5}{'raw fr/s':>11}{'env fr/s':>11}{'overhead':>10}"
          f"{'single fr/s':>13}")
    for mode in args.modes:
        for batch in args.batch_sizes:
            raw_step = raw_stepper(model, batch, mode, args.precision)
            raw, env, overhead = paired_rates(
                raw_step, env_stepper(model, batch, mode, args.precision), batch,
                args.seconds, args.trials, model.device)
            row: dict[str, Any] = {"mode": mode, "num_dreams": batch,
                                   "raw_frames_per_s": round(raw, 1),
                                   "env_frames_per_s": round(env, 1),
                                   "env_steps_per_s": round(env / batch, 2),
                                   "overhead": round(overhead, 4)}
            single = ""
            if batch == 1:
                _, rate, overhead = paired_rates(
                    raw_step, env_stepper(model, 1, mode, args.precision, single=True), 1,
                    args.seconds, args.trials, model.device)
                row["single_env_frames_per_s"] = round(rate, 1)
                row["single_overhead"] = round(overhead, 4)
                single = f"{rate:13.1f}"
            results["rows"].append(row)
            print(f"{mode:<7}{batch:>5}{raw:11.1f}{env:11.1f}{row['overhead']:10.1%}{single}",
                  flush=True)
    if args.real_steps and model.info.env:
        from benchmarks.collect import raw_step_rate

        rate = raw_step_rate(model.info.env, args.real_steps)
        results["real_game_steps_per_s"] = round(rate, 1)
        print(f"real game {model.info.env}: {rate:.0f} steps/s (one env, one process)")
    name = "dream_env-cuda" if model.device.type == "cuda" else "dream_env"
    path = write_result(name, results, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
