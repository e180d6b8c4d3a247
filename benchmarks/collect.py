"""Collection throughput against the raw env step rate, for TakeCover and Crafter.

The target (issue: foundation) is collection at >= 80 % of the raw env step rate per core:
``efficiency = collected frames/s / (workers x raw steps/s of one env in one process)``,
where the raw rate is the same adapter stepped in a bare loop (frames resized, nothing
stored) and collected frames/s is the steady rate once workers are up; the start-up time
(spawning workers, importing torch and the game) is reported beside it. Run it on an
otherwise idle machine: the figures are only as good as the quiet.

    python -m benchmarks.collect            # full run (about 2 minutes on 2 cores)
    python -m benchmarks.collect --quick    # a smoke run in seconds
    python -m benchmarks.collect --branches 200   # recording with branches (below)

``--branches N`` times instead what ``worldsim run takecover`` does in its ``branches``
stage: N sticky:4 TakeCover episodes (frame skip 4) recorded again with every action held 8
steps from every 8th state (``worldsim collect --branch-steps 8``), where each branch
replays its episode from the seed: seconds per episode, and the small preset's 2,500.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import numpy as np

DEFAULT_ENVS = ("vizdoom/TakeCover", "crafter")


def raw_step_rate(env_name: str, steps: int, seed: int = 0) -> float:
    """Steps/s of one env in this process with uniform random actions (resets included)."""
    import envs

    env = envs.make_env(env_name)
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    started = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        if terminated or truncated:
            env.reset()
    rate = steps / (time.perf_counter() - started)
    env.close()
    return rate


def collect_rate(env_name: str, episodes: int, workers: int, max_steps: int | None) -> dict[str, Any]:
    """Frames/s of ``worldsim collect`` (files written) with ``workers`` processes."""
    from envs.collect import collect

    with tempfile.TemporaryDirectory() as root:
        started = time.perf_counter()
        result = collect(env_name, episodes, os.path.join(root, "data"), policy="random",
                         workers=workers, max_steps=max_steps, progress=False)
        seconds = time.perf_counter() - started
    return {"workers": workers, "episodes": episodes, "frames": result.frames,
            "seconds_total": round(seconds, 2),
            "startup_seconds": round(result.startup_seconds, 2),
            "frames_per_s_total": round(result.frames / seconds, 1),
            "frames_per_s": round(result.steady_frames_per_second, 1)}


def branch_rate(episodes: int, workers: int) -> dict[str, Any]:
    """Seconds of recording ``episodes`` TakeCover episodes with their branches, as the
    pipeline's ``branches`` stage does (sticky:4, frame skip 4, 8 steps from every 8th)."""
    from envs.collect import Branching, collect

    with tempfile.TemporaryDirectory() as root:
        started = time.perf_counter()
        result = collect("vizdoom/TakeCover", episodes, os.path.join(root, "data"),
                         policy="sticky:4", workers=workers, env_options={"frame_skip": 4},
                         branching=Branching(steps=8, every=8), progress=False)
        seconds = time.perf_counter() - started
    return {"workers": workers, "episodes": episodes, "frames": result.frames,
            "seconds": round(seconds, 2),
            "seconds_per_episode": round(seconds / episodes, 4),
            "minutes_for_2500_episodes": round(2500 * seconds / episodes / 60, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(DEFAULT_ENVS),
                        help="env names to measure (default: vizdoom/TakeCover crafter)")
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2],
                        help="worker counts to measure (default: 1 2)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets, for a smoke test")
    parser.add_argument("--out-dir", default=None, help="results folder (default: benchmarks/results)")
    parser.add_argument("--branches", type=int, default=0, metavar="N",
                        help="time recording N TakeCover episodes with their branches instead "
                             "(see above; --workers applies)")
    args = parser.parse_args(argv)

    from benchmarks.common import write_result

    if args.branches:
        rows = [branch_rate(args.branches, workers) for workers in args.workers]
        for row in rows:
            print(f"branches x{row['workers']}: {row['seconds']:.1f} s for {row['episodes']} "
                  f"episodes ({row['frames']} frames); 2,500 episodes: "
                  f"{row['minutes_for_2500_episodes']:.1f} min")
        print(f"wrote {write_result('collect-branches', {'takecover': rows}, args.out_dir)}")
        return 0

    # Budgets: enough frames that process start-up (about 1 s) is amortised.
    budgets = {"vizdoom/TakeCover": dict(raw_steps=30000, episodes=300, max_steps=None),
               "crafter": dict(raw_steps=5000, episodes=48, max_steps=300)}
    results: dict[str, Any] = {}
    for env_name in args.envs:
        budget = budgets.get(env_name, dict(raw_steps=5000, episodes=20, max_steps=500))
        if args.quick:
            budget = dict(raw_steps=300, episodes=2 * max(args.workers), max_steps=50)
        raw = raw_step_rate(env_name, budget["raw_steps"])
        rows = []
        for workers in args.workers:
            row = collect_rate(env_name, budget["episodes"], workers, budget["max_steps"])
            row["efficiency_per_core"] = round(row["frames_per_s"] / (workers * raw), 3)
            rows.append(row)
            print(f"{env_name}: raw {raw:.0f} steps/s, collect x{workers}: "
                  f"{row['frames_per_s']:.0f} frames/s, efficiency {row['efficiency_per_core']:.2f}")
        results[env_name] = {"raw_steps_per_s": round(raw, 1), "collect": rows,
                             "target_efficiency": 0.8}
    if not args.quick:
        print(f"wrote {write_result('collect', results, args.out_dir)}")
    else:
        print("quick run: nothing written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
