"""Crafter as a Gymnasium env, plus Crafter's score.

``crafter.Env`` speaks the old gym API (``reset() -> obs``, ``step -> obs, reward, done,
info``) and seeds each world from ``hash((env._seed, env._episode))``. ``CrafterEnv`` sets
both on ``reset(seed=s)``, so a seeded reset is reproducible and the unseeded resets after it
follow a fixed sequence. ``done`` becomes ``terminated`` when the player died
(``info["discount"] == 0``) and ``truncated`` at the length limit (``max_steps``).

Crafter's score (Hafner 2021) is the geometric mean of the 22 achievement success rates, in
percent, offset by 1: ``exp(mean(log(1 + s))) - 1``. A random agent scores about 1.5.
crafter is imported inside ``CrafterEnv.__init__``, so importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, SupportsFloat

import gymnasium
import numpy as np

from envs.base import FrameEnv
from envs.frames import DEFAULT_FRAME_SIZE, check_frame_size, parse_frame_size, positive_int
from worldsim.errors import ConfigError

# Copied from crafter's data.yaml so that listing envs needs no crafter import; a test checks
# they still match the installed crafter.
ACTION_NAMES: tuple[str, ...] = (
    "noop", "move_left", "move_right", "move_up", "move_down", "do", "sleep",
    "place_stone", "place_table", "place_furnace", "place_plant", "make_wood_pickaxe",
    "make_stone_pickaxe", "make_iron_pickaxe", "make_wood_sword", "make_stone_sword",
    "make_iron_sword",
)
ACHIEVEMENTS: tuple[str, ...] = (
    "collect_coal", "collect_diamond", "collect_drink", "collect_iron", "collect_sapling",
    "collect_stone", "collect_wood", "defeat_skeleton", "defeat_zombie", "eat_cow",
    "eat_plant", "make_iron_pickaxe", "make_iron_sword", "make_stone_pickaxe",
    "make_stone_sword", "make_wood_pickaxe", "make_wood_sword", "place_furnace",
    "place_plant", "place_stone", "place_table", "wake_up",
)
_VIEW = 9  # crafter's default 9x9 view: each side needs at least one pixel per cell


class CrafterEnv(FrameEnv):
    """Crafter with frames of ``frame_size`` (non-square allowed) and gymnasium's API.

    Args:
        frame_size: observation size, an int or ``(H, W)``; each side at least 9 pixels.
        max_steps: crafter's episode length limit; reaching it truncates (default 10000).
        render_mode: None or ``"rgb_array"`` (``render()`` returns the current observation;
            re-rendering would draw from the world's RNG at night and change the episode).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(
        self,
        *,
        frame_size: int | str | tuple[int, int] = DEFAULT_FRAME_SIZE,
        max_steps: int = 10000,
        render_mode: str | None = None,
    ) -> None:
        import crafter

        self.env_name = "crafter"
        self.frame_size = check_frame_size(
            parse_frame_size(frame_size), self.env_name, minimum=(_VIEW, _VIEW)
        )
        self.max_steps = positive_int(max_steps, "max_steps", self.env_name)
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(
                f"crafter: render_mode {render_mode!r} is not supported; use 'rgb_array' or "
                "leave it unset"
            )
        self.render_mode = render_mode
        height, width = self.frame_size
        # crafter's size is (W, H): it draws x-major and transposes at the end.
        self._env = crafter.Env(size=(width, height), length=self.max_steps, seed=0)
        self._seeded = False
        self.observation_space = gymnasium.spaces.Box(0, 255, (height, width, 3), np.uint8)
        self.action_space = gymnasium.spaces.Discrete(len(ACTION_NAMES))
        self._frame = np.zeros((height, width, 3), np.uint8)
        self._steps = 0

    @property
    def action_names(self) -> tuple[str, ...]:
        """Names of the discrete actions, in action-index order."""
        return ACTION_NAMES

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Generate a world; ``seed`` fixes it and every unseeded world after it."""
        super().reset(seed=seed)
        if seed is not None or not self._seeded:
            # Unseeded first reset: take a seed from gymnasium's (randomly seeded) np_random.
            base = int(seed) if seed is not None else int(self.np_random.integers(2**31 - 1))
            self._env._seed = base
            self._env._episode = 0
            self._seeded = True
        # crafter hands out a transposed (non-contiguous) view; store frames C-contiguous.
        self._frame = np.ascontiguousarray(self._env.reset())
        self._steps = 0
        info = {
            "frames": 0,
            "achievements": {name: 0 for name in ACHIEVEMENTS},
            "inventory": self._env._player.inventory.copy(),
            "discount": 1.0,
        }
        return self._frame, info

    def step(
        self, action: int | np.integer
    ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """One crafter step; ``info`` keeps crafter's (achievements, inventory, ...)."""
        index = int(action)
        if not 0 <= index < len(ACTION_NAMES):
            raise ConfigError(
                f"action {action!r} is not one of the {len(ACTION_NAMES)} actions of crafter; "
                "was the agent made for another env?"
            )
        frame, reward, done, info = self._env.step(index)
        self._frame = np.ascontiguousarray(frame)
        self._steps += 1
        terminated = bool(done) and info["discount"] == 0
        truncated = bool(done) and not terminated
        info["frames"] = self._steps
        return self._frame, float(reward), terminated, truncated, info


def crafter_success_rates(
    episode_achievements: Iterable[Mapping[str, int]],
) -> dict[str, float]:
    """Per-achievement success rates, in percent, over a set of episodes.

    Args:
        episode_achievements: one dict per episode, achievement name -> times unlocked
            (crafter's final ``info["achievements"]``; an ``achievement_`` prefix is allowed).

    Returns:
        ``{achievement: percent of episodes where it was unlocked at least once}`` for all 22.

    Raises:
        ConfigError: no episodes, or an achievement name crafter does not have.
    """
    counts = dict.fromkeys(ACHIEVEMENTS, 0)
    episodes = 0
    for achievements in episode_achievements:
        episodes += 1
        for name, count in achievements.items():
            key = _achievement_key(name)
            counts[key] += int(count > 0)
    if episodes == 0:
        raise ConfigError("crafter success rates need at least one episode; got none")
    return {name: 100.0 * count / episodes for name, count in counts.items()}


def crafter_score(success_rates: Mapping[str, float] | np.ndarray | Iterable[float]) -> float:
    """Crafter's score: ``exp(mean(log(1 + s))) - 1`` over the 22 success rates ``s`` in %.

    Args:
        success_rates: percent (0-100) per achievement, either a dict with all 22
            achievements (names as in crafter, optionally prefixed ``achievement_``) or 22
            numbers in the order of ``ACHIEVEMENTS``.

    Returns:
        The score in percent: 0 when nothing is ever unlocked, 100 when everything always is.

    Raises:
        ConfigError: missing or unknown achievements, a wrong count, or rates outside 0-100.
    """
    if isinstance(success_rates, Mapping):
        rates = {_achievement_key(name): float(value) for name, value in success_rates.items()}
        missing = [name for name in ACHIEVEMENTS if name not in rates]
        if missing:
            raise ConfigError(
                f"crafter score needs all 22 achievements; missing: {', '.join(missing)}"
            )
        values = np.array([rates[name] for name in ACHIEVEMENTS], np.float64)
    else:
        values = np.asarray(list(success_rates), np.float64)
        if values.shape != (len(ACHIEVEMENTS),):
            raise ConfigError(
                f"crafter score needs 22 success rates (one per achievement), got shape "
                f"{values.shape}"
            )
    if not np.all((values >= 0) & (values <= 100)):
        raise ConfigError(
            "crafter success rates must be percentages in [0, 100]; got "
            f"min {values.min():g}, max {values.max():g} (multiply fractions by 100)"
        )
    return float(np.exp(np.mean(np.log1p(values))) - 1.0)


def _achievement_key(name: str) -> str:
    key = name.removeprefix("achievement_")
    if key not in ACHIEVEMENTS:
        raise ConfigError(
            f"{name!r} is not a crafter achievement; known: {', '.join(ACHIEVEMENTS)}"
        )
    return key
