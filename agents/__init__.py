"""Agents trained in the dream and scored on the real game.

- :func:`load` (``agents.portable``): a portable trained agent that acts on raw real-game
  frames, ``agent.reset(seed)``; ``agent.act(frame) -> int``.
- ``agents.ppo.train_ppo``: stable-baselines3 (PPO, A2C, DQN) on the batched dream env.
- ``agents.cmaes.train_cmaes``: World Models' linear controller, trained with CMA-ES.
- ``agents.evaluate.evaluate``: frames survived on the real game over seeded episodes.

Torch is imported only when one of these is used, so ``worldsim --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agents.portable import Agent

__all__ = ["Agent", "load", "shipped_agents"]


def load(path: str | Path, deterministic: bool = True, device: str = "cpu",
         decision_steps: int | None = None, keep_bonus: float | None = None) -> Agent:
    """Load a portable agent: a file, a ``train-agent`` folder or a shipped short name.

    See :func:`agents.portable.load`.
    """
    from agents.portable import load as load_agent

    return load_agent(path, deterministic=deterministic, device=device,
                      decision_steps=decision_steps, keep_bonus=keep_bonus)


def shipped_agents() -> list[str]:
    """Short names accepted by :func:`load` (agents in ``agents/checkpoints``)."""
    from agents.portable import shipped_agents as names

    return names()


def __getattr__(name: str) -> Any:
    if name == "Agent":
        from agents.portable import Agent

        return Agent
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
