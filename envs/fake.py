"""``FakeImageEnv``: a tiny deterministic dodge game, so most tests need no real game.

Like SB3's ``FakeImageEnv`` but with real dynamics a world model can learn: the screen is a
``grid x grid`` board on a flat background. The player (a blue square, bottom centre at the
start) moves one cell per step (none/left/right/up/down, clamped at the walls). A red block
falls one row per step from a random column of the top row and, once past the bottom, starts
again from a new random column. Touching it ends the episode (``terminated``); surviving
``max_steps`` steps truncates it. Reward is +1 per step. All randomness comes from
``self.np_random``, so ``reset(seed=s)`` fixes the episode. ``info`` carries the true cell
positions (``player``, ``obstacle``, as ``(row, col)``) for physics probes.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium
import numpy as np

from envs.base import FrameEnv
from envs.frames import DEFAULT_FRAME_SIZE, check_frame_size, parse_frame_size, positive_int
from worldsim.errors import ConfigError

ACTION_NAMES: tuple[str, ...] = ("none", "left", "right", "up", "down")
_MOVES = ((0, 0), (0, -1), (0, 1), (-1, 0), (1, 0))  # (d_row, d_col) per action
_BACKGROUND = np.array([40, 40, 48], np.uint8)
_PLAYER = np.array([60, 140, 255], np.uint8)
_OBSTACLE = np.array([230, 50, 40], np.uint8)


class FakeImageEnv(FrameEnv):
    """A fast dodge-the-falling-block game drawn at any frame size.

    Args:
        frame_size: observation size, an int or ``(H, W)``; each side at least ``grid``.
        max_steps: steps after which an episode is truncated.
        grid: board cells per side.
        render_mode: None or ``"rgb_array"``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(
        self,
        *,
        frame_size: int | str | tuple[int, int] = DEFAULT_FRAME_SIZE,
        max_steps: int = 200,
        grid: int = 8,
        render_mode: str | None = None,
    ) -> None:
        self.env_name = "fake"
        self.grid = positive_int(grid, "grid", self.env_name)
        if self.grid < 2:
            raise ConfigError(f"fake: grid must be >= 2 (a board to dodge on), got {grid}")
        self.frame_size = check_frame_size(
            parse_frame_size(frame_size), self.env_name, minimum=(self.grid, self.grid)
        )
        self.max_steps = positive_int(max_steps, "max_steps", self.env_name)
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(
                f"fake: render_mode {render_mode!r} is not supported; use 'rgb_array' or "
                "leave it unset"
            )
        self.render_mode = render_mode
        self.observation_space = gymnasium.spaces.Box(0, 255, (*self.frame_size, 3), np.uint8)
        self.action_space = gymnasium.spaces.Discrete(len(ACTION_NAMES))
        height, width = self.frame_size
        # Cell edges in pixels: cells tile the frame exactly even when sizes do not divide.
        self._row_edges = [row * height // self.grid for row in range(self.grid + 1)]
        self._col_edges = [col * width // self.grid for col in range(self.grid + 1)]
        self._background = np.broadcast_to(_BACKGROUND, (height, width, 3)).copy()
        self._player = (self.grid - 1, self.grid // 2)
        self._obstacle = (0, 0)
        self._steps = 0
        self._frame = self._draw()

    @property
    def action_names(self) -> tuple[str, ...]:
        """Names of the discrete actions, in action-index order."""
        return ACTION_NAMES

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Put the player bottom centre and a block at the top of a random column."""
        super().reset(seed=seed)
        self._player = (self.grid - 1, self.grid // 2)
        self._obstacle = (0, self._random_column())
        self._steps = 0
        self._frame = self._draw()
        return self._frame, self._info()

    def step(
        self, action: int | np.integer
    ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Move the player, then let the block fall one row."""
        index = int(action)
        if not 0 <= index < len(_MOVES):
            raise ConfigError(
                f"action {action!r} is not one of the {len(_MOVES)} actions of fake "
                f"{ACTION_NAMES}; was the agent made for another env?"
            )
        d_row, d_col = _MOVES[index]
        last = self.grid - 1
        row = min(max(self._player[0] + d_row, 0), last)
        col = min(max(self._player[1] + d_col, 0), last)
        self._player = (row, col)
        hit = self._player == self._obstacle  # walked into it
        obstacle_row, obstacle_col = self._obstacle
        if obstacle_row == last:
            self._obstacle = (0, self._random_column())
        else:
            self._obstacle = (obstacle_row + 1, obstacle_col)
        hit = hit or self._player == self._obstacle  # it fell onto us
        self._steps += 1
        terminated = hit
        truncated = not terminated and self._steps >= self.max_steps
        self._frame = self._draw()
        return self._frame, 1.0, terminated, truncated, self._info()

    def _random_column(self) -> int:
        return int(self.np_random.integers(self.grid))

    def _draw(self) -> np.ndarray:
        frame = self._background.copy()
        for (row, col), colour in ((self._obstacle, _OBSTACLE), (self._player, _PLAYER)):
            frame[
                self._row_edges[row]:self._row_edges[row + 1],
                self._col_edges[col]:self._col_edges[col + 1],
            ] = colour
        return frame

    def _info(self) -> dict[str, Any]:
        return {"frames": self._steps, "player": self._player, "obstacle": self._obstacle}
