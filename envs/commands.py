"""CLI subcommands for real environments: ``worldsim envs`` and ``worldsim collect``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from envs.policies import POLICY_HELP


def register(subparsers: argparse._SubParsersAction) -> None:
    listing = subparsers.add_parser(
        "envs", help="list the real environments and their frame sizes and actions",
        description="List every environment make_env knows, with its default frame size and "
                    "its discrete actions. Any Gymnasium env id also works as gym:<id>.")
    listing.add_argument("--json", action="store_true", help="print the list as JSON")
    listing.set_defaults(run=run_envs)

    collect = subparsers.add_parser(
        "collect", help="record play from a real environment into a dataset",
        description="Play a real environment with a behaviour policy in parallel worker "
                    "processes and store every episode (frames, actions, rewards, ends) in "
                    "a dataset folder. Re-running with the same --out resumes: only missing "
                    "episodes are recorded. With --branch-steps, also what every other action "
                    "would have done from recorded states (VizDoom replays from seeds).")
    collect.add_argument("--env", required=True,
                         help="environment name, e.g. vizdoom/TakeCover, crafter, gym:<id> "
                              "(see `worldsim envs`)")
    collect.add_argument("--episodes", type=int, required=True,
                         help="number of episodes the dataset should hold when done")
    collect.add_argument("--out", required=True, help="dataset folder (created or resumed)")
    collect.add_argument("--policy", default="random", help=POLICY_HELP + " (default: random)")
    collect.add_argument("--workers", type=int, default=1,
                         help="worker processes, one env each (default: 1; use the core count)")
    collect.add_argument("--seed", type=int, default=0,
                         help="base seed: episode i is played with seed+i (default: 0)")
    collect.add_argument("--frame-size", default=None,
                         help="frame size as H, or HxW, e.g. 64 or 64x96 (default: the env's, 64x64)")
    collect.add_argument("--max-steps", type=int, default=None,
                         help="cap on steps per episode, ends it as truncated (default: the env's own)")
    collect.add_argument("--env-option", action="append", default=[], metavar="KEY=VALUE",
                         help="extra env option, repeatable, e.g. --env-option max_frames=2100 "
                              "--env-option frame_skip=2 (values parsed as JSON when possible)")
    collect.add_argument("--branch-steps", type=int, default=0, metavar="H",
                         help="also record branches: from recorded states, each action held "
                              "for H steps in the game replayed from the episode's seed "
                              "(VizDoom), so the world model sees every action from the same "
                              "state (default: 0, none)")
    collect.add_argument("--branch-every", type=int, default=8, metavar="K",
                         help="branch from every K-th state of an episode (default: 8)")
    collect.add_argument("--branch-context", type=int, default=8, metavar="C",
                         help="frames before the branching state kept in each branch "
                              "(default: 8, the small model's context)")
    collect.add_argument("--branch-all", action="store_true",
                         help="keep every branching state, not only the decisive ones (where "
                              "some action ends the episode within H steps and another does "
                              "not)")
    collect.add_argument("--quiet", action="store_true", help="no progress bar")
    collect.set_defaults(run=run_collect)


def run_envs(args: argparse.Namespace) -> int:
    import envs

    infos = envs.list_envs()
    if args.json:
        print(json.dumps([{"name": i.name, "frame_size": list(i.frame_size),
                           "actions": list(i.action_names), "description": i.description}
                          for i in infos], indent=2))
        return 0
    width = max(len(i.name) for i in infos)
    print(f"{'name':<{width}}  {'frames':>7}  actions")
    for info in infos:
        size = f"{info.frame_size[0]}x{info.frame_size[1]}"
        print(f"{info.name:<{width}}  {size:>7}  {len(info.action_names)}: "
              f"{', '.join(info.action_names)}")
    print("\nAny Gymnasium env with image observations or rgb_array rendering: gym:<id>, "
          "e.g. gym:CartPole-v1")
    return 0


def parse_key_values(pairs: list[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> a dict, values parsed as JSON where they are JSON (numbers,
    booleans, lists), else kept as text; ``flag`` names the option they came from in errors."""
    from worldsim.errors import ConfigError

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def parse_env_options(pairs: list[str], frame_size: str | None,
                      flag: str = "--env-option") -> dict[str, Any]:
    """Turn ``KEY=VALUE`` strings (and --frame-size) into make_env keyword options; ``flag``
    names the option they came from in errors."""
    options = parse_key_values(pairs, flag)
    if frame_size is not None:
        from envs.frames import parse_frame_size

        options["frame_size"] = list(parse_frame_size(frame_size))
    return options


def run_collect(args: argparse.Namespace) -> int:
    from envs.collect import Branching, collect

    branching = None
    if args.branch_steps:
        branching = Branching(args.branch_steps, args.branch_every, args.branch_context,
                              decisive_only=not args.branch_all)
    result = collect(
        env=args.env, episodes=args.episodes, out=args.out, policy=args.policy,
        env_options=parse_env_options(args.env_option, args.frame_size),
        workers=args.workers, seed=args.seed, max_steps=args.max_steps,
        branching=branching, progress=not args.quiet,
    )
    dataset = result.dataset
    print(f"{dataset.root}: {len(dataset)} episodes, {dataset.num_frames} frames "
          f"(this run: {result.recorded} episodes, {result.frames} frames, "
          f"{result.frames_per_second:.0f} frames/s)")
    if dataset.skipped:
        for path, reason in dataset.skipped:
            print(f"warning: skipped {reason}")
    return 0
