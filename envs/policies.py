"""Behaviour policies for recording play: uniform random, sticky random, a trained agent.

A policy is seeded once per episode through ``reset(seed)`` so that an episode's seed fixes
both the game and the actions, and a recorded episode can be replayed exactly.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from worldsim.errors import ConfigError


class Policy(Protocol):
    """What the collector needs from a policy."""

    name: str

    def reset(self, seed: int) -> None: ...

    def act(self, frame: np.ndarray) -> int: ...


class RandomPolicy:
    """Uniform random actions, one draw per step."""

    def __init__(self, num_actions: int) -> None:
        self.num_actions = num_actions
        self.name = "random"
        self._rng = np.random.default_rng(0)

    def reset(self, seed: int) -> None:
        self._rng = np.random.default_rng([seed, 0x5EED])

    def act(self, frame: np.ndarray) -> int:
        return int(self._rng.integers(self.num_actions))


class StickyRandomPolicy:
    """Random actions held for a random number of steps (uniform in 1..max_repeat).

    Holding an action moves the player further than uniform noise does, so the recorded
    play covers more of the world (for TakeCover: the walls at both ends of the room).
    """

    def __init__(self, num_actions: int, max_repeat: int = 8) -> None:
        if max_repeat < 1:
            raise ConfigError(f"sticky policy needs max_repeat >= 1, got {max_repeat}")
        self.num_actions = num_actions
        self.max_repeat = max_repeat
        self.name = f"sticky:{max_repeat}"
        self._rng = np.random.default_rng(0)
        self._action = 0
        self._left = 0

    def reset(self, seed: int) -> None:
        self._rng = np.random.default_rng([seed, 0x5EED])
        self._left = 0

    def act(self, frame: np.ndarray) -> int:
        if self._left == 0:
            self._action = int(self._rng.integers(self.num_actions))
            self._left = int(self._rng.integers(1, self.max_repeat + 1))
        self._left -= 1
        return self._action


class MixturePolicy:
    """One of several policies per episode, drawn from the episode's seed.

    World Models' iterative recipe: record the dream-trained agent's play beside random play,
    so the next world model sees what the agent does (and cannot be exploited the same way).
    An episode's seed fixes which policy played it, so it replays exactly; its ``name`` (and
    so each recorded episode's metadata) is the policy that played.
    """

    def __init__(self, policies: list[Policy]) -> None:
        self.policies = policies
        self._current = policies[0]

    @property
    def name(self) -> str:
        return self._current.name

    def reset(self, seed: int) -> None:
        pick = np.random.default_rng([seed, 0x313]).integers(len(self.policies))
        self._current = self.policies[int(pick)]
        self._current.reset(seed)

    def act(self, frame: np.ndarray) -> int:
        return self._current.act(frame)


POLICY_HELP = (
    "behaviour policy: 'random' (uniform), 'sticky' or 'sticky:K' (hold a random action for "
    "1..K steps, K=8 by default), 'agent:PATH' (a trained worldsim agent; "
    "'agent:plan:CHECKPOINT[,KEY=VALUE,...]' a planner, as `worldsim eval` takes it), or "
    "'mix:A+B[+...]' (each episode played by one of the listed policies, drawn from its seed; "
    "list one twice to weight it), e.g. 'mix:sticky:4+agent:runs/agent'"
)


def make_policy(spec: str, num_actions: int) -> Policy:
    """Build a policy from its command-line spec (see :data:`POLICY_HELP`)."""
    kind, _, argument = spec.partition(":")
    if kind == "mix":
        parts = argument.split("+")
        if len(parts) < 2 or not all(parts) or any(p.startswith("mix:") for p in parts):
            raise ConfigError(f"bad policy {spec!r}: write 'mix:A+B' with two or more "
                              "policies that are not mixtures themselves")
        return MixturePolicy([make_policy(part, num_actions) for part in parts])
    if kind == "random" and not argument:
        return RandomPolicy(num_actions)
    if kind == "sticky":
        try:
            return StickyRandomPolicy(num_actions, int(argument) if argument else 8)
        except ValueError as error:
            raise ConfigError(f"bad policy {spec!r}: K in 'sticky:K' must be an integer") from error
    if kind == "agent" and argument:
        if argument.startswith("plan:"):  # a planner acts on raw frames too
            from agents.planner import load_planner

            return load_planner(argument)
        from agents import load as load_agent  # a trained agent acts on raw frames

        return load_agent(argument)
    raise ConfigError(f"unknown policy {spec!r}; {POLICY_HELP}")
