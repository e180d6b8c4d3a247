"""The ``worldsim`` command line: one subcommand per pipeline step.

Each subcommand lives beside the code it drives and exposes ``register(subparsers)``;
this module only collects them. Command modules import heavy libraries (torch, VizDoom)
inside their ``run`` functions, so ``worldsim --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from worldsim.errors import WorldsimError

# Modules that define subcommands, in the order they appear in --help.
COMMAND_MODULES: tuple[str, ...] = ("envs.commands", "worldsim.commands", "envs.dream_commands",
                                   "agents.commands", "agents.pipeline_commands",
                                   "benchmarks.commands")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worldsim",
        description=(
            "Train agents inside action-conditioned video diffusion world models and score "
            "them on the real game. Run `worldsim COMMAND --help` for each step."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.run(args)
    except WorldsimError as error:
        print(f"worldsim {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"worldsim {args.command}: interrupted; re-run the same command to resume.",
              file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
