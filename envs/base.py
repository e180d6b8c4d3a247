"""What every real-game adapter shares: uint8 RGB frames and named discrete actions."""

from __future__ import annotations

import gymnasium
import numpy as np


class FrameEnv(gymnasium.Env[np.ndarray, np.int64]):
    """Base of the adapters. Subclasses set ``env_name`` and keep the latest observation in
    ``_frame``; they define ``action_names``."""

    env_name: str
    _frame: np.ndarray

    def render(self) -> np.ndarray | None:  # type: ignore[override]
        """Return the current observation (``render_mode="rgb_array"``), else None."""
        if self.render_mode != "rgb_array":
            gymnasium.logger.warn(
                f"{self.env_name}: render() without render_mode='rgb_array' returns None"
            )
            return None
        return self._frame.copy()
