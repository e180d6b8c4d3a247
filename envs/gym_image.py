"""Any registered Gymnasium env with discrete actions, as ``gym:<id>``, seen through frames.

If the env already observes ``(H, W, 3)`` uint8 images those are the frames; otherwise it is
made with ``render_mode="rgb_array"`` and ``env.render()`` after every reset and step is the
observation (``gym:CartPole-v1`` becomes a 64x64 picture of the cart). Frames are shrunk to
``frame_size`` with the same box filter as every other adapter; they are never upscaled.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium
import numpy as np

from envs.base import FrameEnv
from envs.frames import DEFAULT_FRAME_SIZE, check_frame_size, parse_frame_size, resize_frame
from worldsim.errors import ConfigError


def is_image_space(space: gymnasium.Space[Any]) -> bool:
    """Whether ``space`` is an ``(H, W, 3)`` uint8 Box, i.e. already RGB frames."""
    return (
        isinstance(space, gymnasium.spaces.Box)
        and len(space.shape) == 3
        and space.shape[2] == 3
        and space.dtype == np.uint8
    )


class GymImageEnv(FrameEnv):
    """A Gymnasium env with ``Discrete`` actions, observed as RGB frames of ``frame_size``.

    Args:
        env_id: a registered Gymnasium id, e.g. ``"CartPole-v1"``.
        frame_size: observation size, an int or ``(H, W)``; at most the env's own frame.
        env_kwargs: extra keyword arguments for ``gymnasium.make`` (not ``render_mode``).
        render_mode: None or ``"rgb_array"`` (``render()`` returns the current observation).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        env_id: str,
        *,
        frame_size: int | str | tuple[int, int] = DEFAULT_FRAME_SIZE,
        env_kwargs: dict[str, Any] | None = None,
        render_mode: str | None = None,
    ) -> None:
        self.env_name = f"gym:{env_id}"
        self.frame_size = parse_frame_size(frame_size)
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(
                f"{self.env_name}: render_mode {render_mode!r} is not supported; use "
                "'rgb_array' or leave it unset"
            )
        self.render_mode = render_mode
        env_kwargs = dict(env_kwargs or {})
        if "render_mode" in env_kwargs:
            raise ConfigError(
                f"{self.env_name}: do not pass render_mode in env_kwargs; the adapter chooses "
                "it (frames come from render() when observations are not images)"
            )
        self._inner = _make_inner(env_id, env_kwargs, self.env_name)
        try:
            action_space = self._inner.action_space
            if not isinstance(action_space, gymnasium.spaces.Discrete):
                raise ConfigError(
                    f"{self.env_name} has action space {action_space}; worldsim needs "
                    "Discrete actions. Wrap the env in a discretising wrapper (e.g. "
                    "gymnasium.wrappers.DiscretizeAction) and register it under a new id"
                )
            self._action_start = int(action_space.start)
            self._frames_from_obs = is_image_space(self._inner.observation_space)
            native = self._native_size()
            check_frame_size(self.frame_size, self.env_name, maximum=native)
        except BaseException:
            self._inner.close()
            raise
        count = int(action_space.n)
        meanings = getattr(self._inner.unwrapped, "get_action_meanings", None)
        names = tuple(str(name) for name in meanings()) if callable(meanings) else ()
        self._action_names = names if len(names) == count else tuple(map(str, range(count)))
        self.observation_space = gymnasium.spaces.Box(0, 255, (*self.frame_size, 3), np.uint8)
        self.action_space = gymnasium.spaces.Discrete(count)
        self._frame = np.zeros((*self.frame_size, 3), np.uint8)
        self._steps = 0

    @property
    def action_names(self) -> tuple[str, ...]:
        """Names of the discrete actions, in action-index order."""
        return self._action_names

    def _native_size(self) -> tuple[int, int]:
        if self._frames_from_obs:
            shape = self._inner.observation_space.shape
            return int(shape[0]), int(shape[1])
        if self._inner.render_mode != "rgb_array":
            raise ConfigError(
                f"{self.env_name} observes {self._inner.observation_space}, not RGB images, "
                "and cannot render rgb_array frames; worldsim needs one or the other"
            )
        # The frame size is only known once something is drawn. This unseeded reset does not
        # matter: reset(seed=...) re-seeds the env before any episode we hand out.
        self._inner.reset()
        frame = self._inner.render()
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
            got = getattr(frame, "shape", type(frame).__name__)
            raise ConfigError(f"{self.env_name}: render() gave {got}, not an (H, W, 3) frame")
        return int(frame.shape[0]), int(frame.shape[1])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset the wrapped env with ``seed`` and return its first frame."""
        super().reset(seed=seed)
        observation, info = self._inner.reset(seed=seed, options=options)
        self._steps = 0
        self._frame = self._to_frame(observation)
        return self._frame, {**info, "frames": 0}

    def step(
        self, action: int | np.integer
    ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the wrapped env; ``info["frames"]`` counts steps so far."""
        index = int(action)
        if not 0 <= index < self.action_space.n:
            raise ConfigError(
                f"action {action!r} is not one of the {self.action_space.n} actions of "
                f"{self.env_name}; was the agent made for another env?"
            )
        observation, reward, terminated, truncated, info = self._inner.step(
            self._action_start + index
        )
        self._steps += 1
        self._frame = self._to_frame(observation)
        return self._frame, float(reward), bool(terminated), bool(truncated), {
            **info, "frames": self._steps
        }

    def _to_frame(self, observation: Any) -> np.ndarray:
        frame = observation if self._frames_from_obs else self._inner.render()
        return resize_frame(np.asarray(frame, np.uint8), self.frame_size)

    def close(self) -> None:
        """Close the wrapped env."""
        self._inner.close()


def _make_inner(env_id: str, env_kwargs: dict[str, Any], env_name: str) -> gymnasium.Env:
    try:
        gymnasium.spec(env_id)
    except gymnasium.error.Error as error:
        raise ConfigError(
            f"{env_name}: Gymnasium does not know {env_id!r} ({error}); give a registered id "
            "such as CartPole-v1, and import the package that registers it first"
        ) from error
    try:
        # Ask for rgb_array frames up front; envs whose constructor has no render_mode
        # argument are made without it (they then need image observations).
        return gymnasium.make(env_id, render_mode="rgb_array", **env_kwargs)
    except TypeError as error:
        if "render_mode" not in str(error):
            raise ConfigError(f"{env_name}: gymnasium.make failed: {error}") from error
    try:
        return gymnasium.make(env_id, **env_kwargs)
    except TypeError as error:
        raise ConfigError(f"{env_name}: gymnasium.make failed: {error}") from error
