"""The TakeCover score table: trained agents and baselines on the real game, and each agent
in its world model's dream at several temperatures (the exploit gap).

Every method plays the same real episodes (episode ``i``: seed ``--seed + i``) under the same
cap in game frames, acting once per ``frame_skip`` tics (an agent's own frame skip, which
the baselines are given too). World Models' published 1092 +- 556 is printed beside the
measured rows, as a reference, not a measurement.

    python -m benchmarks.takecover_scores --agent ppo=runs/agents/ppo --checkpoint takecover
    python -m benchmarks.takecover_scores --agent ppo=takecover --episodes 10 --quick-dream

Writes ``benchmarks/results/takecover-scores-<date>.json`` (with the machine) and a markdown
table beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from worldsim.errors import ConfigError


def parse_agents(specs: list[str]) -> dict[str, str]:
    """``NAME=PATH`` pairs -> ``{name: path}``."""
    agents = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--agent takes NAME=PATH (e.g. ppo=runs/agents/ppo), got {spec!r}")
        if name in agents:
            raise ConfigError(f"agent name {name!r} is given twice")
        agents[name] = path
    return agents


def markdown_table(results: dict[str, Any]) -> str:
    """The score table as markdown: real scores, then dream scores per temperature."""
    from agents.report import PUBLISHED

    lines = [f"Real {results['env']}, {results['episodes']} episodes (seeds {results['seed']}+), "
             f"cap {results['max_frames']} frames, one action per {results['frame_skip']} "
             "tics; frames survived.", "",
             "| method | mean +- std | median | min / max | eval wall time |",
             "| --- | --- | --- | --- | --- |"]
    for name, row in results["real"].items():
        f = row["frames_survived"]
        lines.append(f"| {name} | {f['mean']:.0f} +- {f['std']:.0f} | {f['median']:.0f} | "
                     f"{f['min']:.0f} / {f['max']:.0f} | {row['wall_seconds']:.0f} s |")
    for row in PUBLISHED:
        lines.append(f"| {row['method']} (published) | {row['mean']:.0f} +- {row['std']:.0f} "
                     "| | | |")
    if results["dream"]:
        lines += ["", "In the dream (the exploit gap), frames = dream steps x frame skip:", "",
                  "| agent | temperature | mean +- std | median | real mean |",
                  "| --- | --- | --- | --- | --- |"]
        for row in results["dream"]:
            f, real = row["frames_survived"], results["real"][row["agent"]]["frames_survived"]
            lines.append(f"| {row['agent']} | {row['temperature']:g} | {f['mean']:.0f} +- "
                         f"{f['std']:.0f} | {f['median']:.0f} | {real['mean']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", action="append", default=[], metavar="NAME=PATH",
                        help="a trained agent to score (file, train-agent folder or shipped "
                             "name), repeatable")
    parser.add_argument("--baselines", default="random,always-left",
                        help="comma-separated baselines (default: random,always-left)")
    parser.add_argument("--checkpoint", default=None,
                        help="world model for the dream scores (default: none, real only)")
    parser.add_argument("--temperatures", nargs="+", type=float, default=[0.5, 1.0, 1.5],
                        help="dream temperatures (default: 0.5 1.0 1.5)")
    parser.add_argument("--denoise-steps", type=int, default=None,
                        help="denoising steps per dream frame (default: what each agent was "
                             "trained with, else the checkpoint's)")
    parser.add_argument("--dream-episodes", type=int, default=32,
                        help="dreams per agent and temperature (default: 32)")
    parser.add_argument("--episodes", type=int, default=100,
                        help="real episodes per method (default: 100)")
    parser.add_argument("--seed", type=int, default=1_000_000,
                        help="episode i uses seed + i; never a collection seed "
                             "(default: 1000000)")
    parser.add_argument("--max-frames", type=int, default=2100,
                        help="episode cap in game frames, every method (default: 2100)")
    parser.add_argument("--frame-skip", type=int, default=None,
                        help="tics per action for every method (default: the first agent's, "
                             "else 1)")
    parser.add_argument("--workers", type=int, default=2,
                        help="real-game processes (default: 2)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16",
                        help="dream inference precision (default: bf16)")
    parser.add_argument("--video-dir", default=None,
                        help="film each agent's best and worst real episode here")
    parser.add_argument("--out-dir", default=None,
                        help="results folder (default: benchmarks/results)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    import agents
    from agents.evaluate import evaluate, evaluate_in_dream
    from benchmarks.common import write_result
    from envs.frames import frame_skip

    trained = parse_agents(args.agent)
    loaded = {name: agents.load(path) for name, path in trained.items()}
    skip = args.frame_skip
    if skip is None:
        first = next(iter(loaded.values()), None)
        skip = frame_skip(first.info.env_options) if first else 1
    env = "vizdoom/TakeCover"
    results: dict[str, Any] = {"env": env, "episodes": args.episodes, "seed": args.seed,
                               "max_frames": args.max_frames, "frame_skip": skip,
                               "checkpoint": args.checkpoint, "real": {}, "dream": []}
    methods = [(b.strip(), b.strip(), False) for b in args.baselines.split(",") if b.strip()]
    methods += [(name, path, True) for name, path in trained.items()]
    for name, spec, is_agent in methods:
        video_dir = Path(args.video_dir) / name if args.video_dir and is_agent else None
        result = evaluate(spec, env=env, episodes=args.episodes, seed=args.seed,
                          max_frames=args.max_frames, env_options={"frame_skip": skip},
                          workers=args.workers, video_dir=video_dir, progress=not args.quiet)
        row = result.to_dict()
        if is_agent:
            row["training"] = loaded[name].info.trained
        results["real"][name] = row
        print(f"{name:>14}: {result.describe()}", flush=True)
    if args.checkpoint:
        for name, spec in trained.items():
            agent = loaded[name]
            steps = args.denoise_steps or agent.info.trained.get("denoise_steps")
            for temperature in args.temperatures:
                result = evaluate_in_dream(agent, args.checkpoint, episodes=args.dream_episodes,
                                           seed=args.seed, temperature=temperature,
                                           denoise_steps=steps, precision=args.precision,
                                           progress=not args.quiet)
                results["dream"].append({**result.to_dict(), "agent": name,
                                         "agent_spec": spec, "temperature": temperature})
                print(f"{name:>14} in the dream at T{temperature:g}: {result.describe()}",
                      flush=True)
    path = write_result("takecover-scores", results, args.out_dir)
    table = markdown_table(results)
    path.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
