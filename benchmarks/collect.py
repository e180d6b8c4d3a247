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
replays its episode from the seed (the settings read from the small preset): seconds per
episode, and the minutes for the preset's 2,500.
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
    """Seconds of recording ``episodes`` episodes with their branches, as the small preset
    of ``worldsim run takecover`` does in its ``branches`` stage (its game, policy, frame
    skip and branching, read from the preset)."""
    from agents.pipeline import RUN_PRESETS
    from envs.collect import Branching, collect

    small = RUN_PRESETS["small"]
    with tempfile.TemporaryDirectory() as root:
        started = time.perf_counter()
        result = collect(small.env, episodes, os.path.join(root, "data"),
                         policy=small.collect_policy, workers=workers,
                         env_options={"frame_skip": small.frame_skip},
                         branching=Branching(steps=small.branch_steps, every=small.branch_every),
                         progress=False)
        seconds = time.perf_counter() - started
    return {"workers": workers, "episodes": episodes, "frames": result.frames,
            "seconds": round(seconds, 2),
            "seconds_per_episode": round(seconds / episodes, 4),
            "small_preset_episodes": small.branch_episodes,
            "minutes_for_small_preset": round(small.branch_episodes * seconds / episodes / 60,
                                              1)}


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
                  f"episodes ({row['frames']} frames); the small preset's "
                  f"{row['small_preset_episodes']:,}: {row['minutes_for_small_preset']:.1f} min")
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
