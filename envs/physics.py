"""Procedural 2D physics worlds whose exact state is known at every step, for physics probes.

Four small worlds, each drawn with flat colours on a dark background inside a solid wall
(``WALL_THICKNESS`` pixels on every side), so that a probe can find every object in a frame
by its colour and compare what a world model dreams with what the law says:

- ``BounceEnv`` (``physics/Bounce``): a ball under constant gravity bouncing off the walls,
  floor and ceiling; actions kick it.
- ``OcclusionEnv`` (``physics/Occlusion``): objects of distinct colours gliding sideways at
  constant speeds, passing behind a fixed occluder bar.
- ``BodyEnv`` (``physics/Body``): a body the agent moves a fixed number of pixels per action;
  walls stop it.
- ``SpawnEnv`` (``physics/Spawn``): objects appear at random times and places and never
  vanish.

Coordinates are ``(x, y)`` in pixels, x to the right and y down. Pixel (row r, column c)
covers ``x in [c, c + 1)``, ``y in [r, r + 1)``, so its centre is ``(c + 0.5, r + 0.5)``. A
position is the centre of an object, and an object covers the pixels whose centres lie
inside it: the centroid of its drawn pixels is its position within half a pixel. Time
advances one step per action with ``dt = 1``, so velocities are pixels per step and
accelerations pixels per step². Sizes and speeds are in pixels and do not scale with
``frame_size``: a larger frame is a larger room.

Every world observes ``(H, W, 3)`` uint8 frames, is seeded only by ``reset(seed=...)``
(all randomness comes from ``self.np_random``), is deterministic given the seed and the
actions, gives reward 0, never terminates and truncates after ``max_steps`` steps. ``info``
holds the true state as plain floats, ints, bools and lists; ``info["frames"]`` counts steps.
"""

from __future__ import annotations

import math
from typing import Any, SupportsFloat

import gymnasium
import numpy as np

from envs.base import FrameEnv
from envs.frames import DEFAULT_FRAME_SIZE, check_frame_size, parse_frame_size, positive_int
from worldsim.errors import ConfigError

WALL_THICKNESS = 2
"""Pixels of solid wall on each side of every world."""
BACKGROUND = (30, 30, 40)
WALL = (200, 200, 200)
OCCLUDER = (110, 110, 110)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 40, 40),  # red: the ball
    (50, 90, 255),  # blue: the body
    (40, 220, 60),  # green
    (240, 220, 40),  # yellow
    (220, 50, 220),  # magenta
    (40, 220, 230),  # cyan
)
"""Object colours: every pair, and each against the background, wall and occluder, differs by
more than 96 grey levels in some channel, so a colour tolerance of 48 never confuses them."""
BALL = PALETTE[0]
BODY = PALETTE[1]


class PhysicsEnv(FrameEnv):
    """What the worlds share: options, walls, step counting, truncation and drawing.

    Subclasses set ``ACTION_NAMES`` and ``description``, take their options as keyword-only
    arguments (the registry checks options against them), call ``super().__init__`` and
    define ``_new_episode``, ``_advance``, ``_draw_objects`` and ``_state``.
    """

    ACTION_NAMES: tuple[str, ...] = ("none",)
    description = ""
    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(
        self,
        name: str,
        frame_size: int | str | tuple[int, int],
        max_steps: int,
        render_mode: str | None,
        minimum: tuple[int, int],
    ) -> None:
        """Check the shared options and draw the empty room.

        Args:
            name: the env's registry name, for messages.
            frame_size: as the worlds take it.
            max_steps: steps after which an episode is truncated.
            render_mode: None or ``"rgb_array"``.
            minimum: the smallest ``(H, W)`` the world fits in.
        """
        self.env_name = name
        self.frame_size = check_frame_size(parse_frame_size(frame_size), name, minimum=minimum)
        self.max_steps = positive_int(max_steps, "max_steps", name)
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(
                f"{name}: render_mode {render_mode!r} is not supported; use 'rgb_array' or "
                "leave it unset"
            )
        self.render_mode = render_mode
        self.observation_space = gymnasium.spaces.Box(0, 255, (*self.frame_size, 3), np.uint8)
        self.action_space = gymnasium.spaces.Discrete(len(self.ACTION_NAMES))
        height, width = self.frame_size
        room = np.empty((height, width, 3), np.uint8)
        room[:] = WALL
        room[WALL_THICKNESS:height - WALL_THICKNESS, WALL_THICKNESS:width - WALL_THICKNESS] = (
            BACKGROUND
        )
        self._room = room
        self._steps = 0

    @property
    def action_names(self) -> tuple[str, ...]:
        """Names of the discrete actions, in action-index order."""
        return self.ACTION_NAMES

    def bounds(self, half_width: float, half_height: float) -> tuple[float, float, float, float]:
        """Where the centre of an object of the given half extents may be.

        Args:
            half_width: half the object's width in pixels.
            half_height: half its height.

        Returns:
            ``(x_min, y_min, x_max, y_max)``: the object touches a wall at each bound.
        """
        height, width = self.frame_size
        return (WALL_THICKNESS + half_width, WALL_THICKNESS + half_height,
                width - WALL_THICKNESS - half_width, height - WALL_THICKNESS - half_height)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new episode; ``seed`` fixes it (and the unseeded ones after it)."""
        super().reset(seed=seed)
        self._steps = 0
        self._new_episode()
        self._frame = self._draw()
        return self._frame, self._info()

    def step(
        self, action: int | np.integer
    ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Apply ``action`` and advance the world by one step (``dt = 1``)."""
        index = int(action)
        if not 0 <= index < len(self.ACTION_NAMES):
            raise ConfigError(
                f"action {action!r} is not one of the {len(self.ACTION_NAMES)} actions of "
                f"{self.env_name} {self.ACTION_NAMES}; was the agent made for another env?"
            )
        self._advance(index)
        self._steps += 1
        self._frame = self._draw()
        return self._frame, 0.0, False, self._steps >= self.max_steps, self._info()

    def _draw(self) -> np.ndarray:
        frame = self._room.copy()
        self._draw_objects(frame)
        return frame

    def _info(self) -> dict[str, Any]:
        return {"frames": self._steps, **self._state()}

    def _new_episode(self) -> None:
        raise NotImplementedError

    def _advance(self, action: int) -> None:
        raise NotImplementedError

    def _draw_objects(self, frame: np.ndarray) -> None:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError


def fill_box(frame: np.ndarray, x: float, y: float, size: int, colour: tuple[int, ...]) -> None:
    """Draw a ``size`` x ``size`` square centred on ``(x, y)``: the pixels whose centres lie in
    ``[x - size/2, x + size/2)`` and likewise in y (always exactly ``size`` per side)."""
    left = math.ceil(x - size / 2 - 0.5)
    top = math.ceil(y - size / 2 - 0.5)
    frame[max(top, 0):top + size, max(left, 0):left + size] = colour


def box_columns(x: float, size: int) -> range:
    """The pixel columns a square of side ``size`` centred at ``x`` covers (see ``fill_box``)."""
    left = math.ceil(x - size / 2 - 0.5)
    return range(left, left + size)


def fill_disc(frame: np.ndarray, x: float, y: float, radius: float,
              colour: tuple[int, ...]) -> None:
    """Draw a disc: the pixels whose centres lie within ``radius`` of ``(x, y)``."""
    top, bottom = max(int(y - radius), 0), min(int(y + radius) + 1, frame.shape[0])
    left, right = max(int(x - radius), 0), min(int(x + radius) + 1, frame.shape[1])
    rows = np.arange(top, bottom)[:, None] + 0.5 - y
    cols = np.arange(left, right)[None, :] + 0.5 - x
    frame[top:bottom, left:right][rows**2 + cols**2 <= radius**2] = colour


def reflect(position: float, velocity: float, low: float, high: float,
            restitution: float = 1.0) -> tuple[float, float, str]:
    """Bounce a coordinate off the walls at ``low`` and ``high``.

    A coordinate that went past a wall is mirrored back into the room, its overshoot and its
    velocity scaled by ``restitution`` and the velocity reversed. ``|velocity|`` must be
    below ``high - low`` so that one mirror suffices.

    Returns:
        The new position and velocity, and ``"low"``, ``"high"`` or ``""`` for the wall hit.
    """
    if position < low:
        return low + restitution * (low - position), -restitution * velocity, "low"
    if position > high:
        return high - restitution * (position - high), -restitution * velocity, "high"
    return position, velocity, ""


def _positive_number(value: object, option: str, env_name: str, *, zero_ok: bool = False,
                     at_most: float | None = None) -> float:
    """Check a float option that must be > 0 (or >= 0), and at most ``at_most``."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    number = float(value) if ok else math.nan  # type: ignore[arg-type]
    if not (number >= 0 if zero_ok else number > 0) or (at_most is not None and number > at_most):
        wanted = ">= 0" if zero_ok else "> 0"
        upper = f" and <= {at_most}" if at_most is not None else ""
        raise ConfigError(f"{env_name}: {option} must be a number {wanted}{upper}, got {value!r}")
    return number


# ---------------------------------------------------------------- Bounce


class BounceEnv(PhysicsEnv):
    """A ball under constant gravity bouncing inside solid walls; actions kick it.

    Each step: the kick of the action is added to the velocity, but a kick never takes a
    component's speed above ``max(kick_speed, its speed before)`` (kicks can steer and brake
    a fast ball, and speed up a slow one, but not pump energy into it without bound); then
    gravity (``vy += gravity``), then each velocity component is capped at half the room's
    extent on that axis, then the ball moves (``x += vx``, ``y += vy``: semi-implicit Euler, so in
    free flight ``y[t+1] - 2 y[t] + y[t-1] == gravity`` exactly). A ball that went past a
    wall is mirrored back inside and its velocity component reversed, both scaled by
    ``restitution`` (1: elastic). The ball starts anywhere in the upper half with a random
    sideways speed of 0.5 to 1.5 pixels per step.

    ``info``: ``position`` ``[x, y]`` (the ball's centre), ``velocity`` ``[vx, vy]`` (the last
    step's displacement in free flight), ``gravity``, ``restitution``, ``radius``,
    ``contacts`` (``{"left", "right", "top", "bottom"}`` -> whether the ball hit that wall
    this step), ``bounds`` (``[x_min, y_min, x_max, y_max]`` of the centre) and ``colour``.

    Args:
        frame_size: observation size, an int or ``(H, W)``; the ball must fit with room to move.
        max_steps: steps after which an episode is truncated.
        gravity: downward acceleration in pixels per step² (0 for none).
        restitution: the fraction of speed a bounce keeps, in (0, 1].
        kick: the speed change of a kick, in pixels per step.
        kick_speed: the speed, in pixels per step, up to which kicks accelerate the ball.
            Without a limit a random player's kicks add up, and within a few hundred steps
            the ball crosses the room in two steps (several times its own size per step).
        radius: the ball's radius in pixels.
        render_mode: None or ``"rgb_array"``.
    """

    ACTION_NAMES = ("none", "kick_left", "kick_right", "kick_up")
    description = "a ball under gravity bouncing off solid walls; kicks push it"
    _KICKS = ((0.0, 0.0), (-1.0, 0.0), (1.0, 0.0), (0.0, -1.0))  # (dvx, dvy) per action, in kicks

    def __init__(
        self,
        *,
        frame_size: int | str | tuple[int, int] = DEFAULT_FRAME_SIZE,
        max_steps: int = 1000,
        gravity: float = 0.25,
        restitution: float = 1.0,
        kick: float = 1.5,
        kick_speed: float = 3.0,
        radius: float = 3.0,
        render_mode: str | None = None,
    ) -> None:
        name = "physics/Bounce"
        self.radius = _positive_number(radius, "radius", name)
        side = 2 * WALL_THICKNESS + 2 * math.ceil(self.radius) + 4
        super().__init__(name, frame_size, max_steps, render_mode, (side, side))
        self.gravity = _positive_number(gravity, "gravity", name, zero_ok=True)
        self.restitution = _positive_number(restitution, "restitution", name, at_most=1.0)
        self.kick = _positive_number(kick, "kick", name, zero_ok=True)
        self.kick_speed = _positive_number(kick_speed, "kick_speed", name)
        self._bounds = self.bounds(self.radius, self.radius)
        x_min, y_min, x_max, y_max = self._bounds
        self._max_speed = ((x_max - x_min) / 2, (y_max - y_min) / 2)
        self._position = ((x_min + x_max) / 2, y_min)
        self._velocity = (0.0, 0.0)
        self._contacts = dict.fromkeys(("left", "right", "top", "bottom"), False)
        self._frame = self._draw()

    def _new_episode(self) -> None:
        x_min, y_min, x_max, y_max = self._bounds
        rng = self.np_random
        self._position = (float(rng.uniform(x_min, x_max)),
                          float(rng.uniform(y_min, (y_min + y_max) / 2)))
        self._velocity = (float(rng.choice((-1.0, 1.0)) * rng.uniform(0.5, 1.5)),
                          float(rng.uniform(-1.0, 0.5)))
        self._contacts = dict.fromkeys(self._contacts, False)

    def _advance(self, action: int) -> None:
        kick_x, kick_y = self._KICKS[action]
        vx = self._kicked(self._velocity[0], self.kick * kick_x)
        vy = self._kicked(self._velocity[1], self.kick * kick_y) + self.gravity
        vx = min(max(vx, -self._max_speed[0]), self._max_speed[0])
        vy = min(max(vy, -self._max_speed[1]), self._max_speed[1])
        x_min, y_min, x_max, y_max = self._bounds
        x, vx, x_wall = reflect(self._position[0] + vx, vx, x_min, x_max, self.restitution)
        y, vy, y_wall = reflect(self._position[1] + vy, vy, y_min, y_max, self.restitution)
        self._position, self._velocity = (x, y), (vx, vy)
        self._contacts = {"left": x_wall == "low", "right": x_wall == "high",
                          "top": y_wall == "low", "bottom": y_wall == "high"}

    def _kicked(self, velocity: float, change: float) -> float:
        """``velocity + change``, its speed held to ``max(kick_speed, |velocity|)``."""
        kicked = velocity + change
        limit = max(self.kick_speed, abs(velocity))
        return kicked if abs(kicked) <= limit else math.copysign(limit, kicked)

    def _draw_objects(self, frame: np.ndarray) -> None:
        fill_disc(frame, *self._position, self.radius, BALL)

    def _state(self) -> dict[str, Any]:
        return {
            "position": list(self._position), "velocity": list(self._velocity),
            "gravity": self.gravity, "restitution": self.restitution, "radius": self.radius,
            "contacts": dict(self._contacts), "bounds": list(self._bounds),
            "colour": list(BALL),
        }


# ---------------------------------------------------------------- Occlusion


class OcclusionEnv(PhysicsEnv):
    """Objects of distinct colours glide sideways behind a fixed occluder bar.

    Each object is a square in its own horizontal lane (lanes never overlap), moving at a
    constant horizontal speed of 0.75 to 2 pixels per step and bouncing elastically off the
    side walls. A grey bar, ``occluder_width`` pixels wide and as tall as the room, stands
    in the middle and is drawn on top: an object behind it is hidden. The single action
    does nothing (the world runs by itself).

    ``info["objects"]``: per object ``position`` ``[x, y]``, ``velocity`` ``[vx, 0]``,
    ``colour`` ``[r, g, b]``, ``visible_fraction`` (of its columns not behind the bar) and
    ``occluded`` (fully hidden). ``info["occluder"]``: ``[first, last + 1]`` pixel columns.

    Args:
        frame_size: observation size, an int or ``(H, W)``.
        max_steps: steps after which an episode is truncated.
        objects: how many objects, 1 to 6 (one colour each).
        size: side of each object in pixels.
        occluder_width: width of the occluder bar in pixels, more than ``size`` so an object
            can hide entirely.
        render_mode: None or ``"rgb_array"``.
    """

    description = "coloured objects glide at constant speeds behind a fixed occluder bar"

    def __init__(
        self,
        *,
        frame_size: int | str | tuple[int, int] = DEFAULT_FRAME_SIZE,
        max_steps: int = 1000,
        objects: int = 3,
        size: int = 6,
        occluder_width: int = 12,
        render_mode: str | None = None,
    ) -> None:
        name = "physics/Occlusion"
        self.objects = positive_int(objects, "objects", name)
        if self.objects > len(PALETTE):
            raise ConfigError(f"{name}: objects must be at most {len(PALETTE)} (one colour "
                              f"each), got {objects}")
        self.size = positive_int(size, "size", name)
        self.occluder_width = positive_int(occluder_width, "occluder_width", name)
        if self.occluder_width <= self.size:
            raise ConfigError(f"{name}: occluder_width ({occluder_width}) must be larger than "
                              f"size ({size}) so that an object can hide behind it")
        minimum = (2 * WALL_THICKNESS + self.objects * (self.size + 2),
                   2 * WALL_THICKNESS + self.occluder_width + 4 * self.size)
        super().__init__(name, frame_size, max_steps, render_mode, minimum)
        height, width = self.frame_size
        left = (width - self.occluder_width) // 2
        self.occluder = (left, left + self.occluder_width)
        lane = (height - 2 * WALL_THICKNESS) / self.objects
        self._lanes = [WALL_THICKNESS + lane * (index + 0.5) for index in range(self.objects)]
        self._xs = [0.0] * self.objects
        self._vxs = [0.0] * self.objects
        self._frame = self._draw()

    def _new_episode(self) -> None:
        x_min, _, x_max, _ = self.bounds(self.size / 2, self.size / 2)
        rng = self.np_random
        self._xs = [float(x) for x in rng.uniform(x_min, x_max, self.objects)]
        self._vxs = [float(v) for v in rng.choice((-1.0, 1.0), self.objects)
                     * rng.uniform(0.75, 2.0, self.objects)]

    def _advance(self, action: int) -> None:
        x_min, _, x_max, _ = self.bounds(self.size / 2, self.size / 2)
        for index, (x, vx) in enumerate(zip(self._xs, self._vxs)):
            self._xs[index], self._vxs[index], _ = reflect(x + vx, vx, x_min, x_max)

    def _draw_objects(self, frame: np.ndarray) -> None:
        for x, y, colour in zip(self._xs, self._lanes, PALETTE):
            fill_box(frame, x, y, self.size, colour)
        frame[WALL_THICKNESS:-WALL_THICKNESS, self.occluder[0]:self.occluder[1]] = OCCLUDER

    def _state(self) -> dict[str, Any]:
        objects = []
        hidden = range(*self.occluder)
        for x, y, vx, colour in zip(self._xs, self._lanes, self._vxs, PALETTE):
            visible = sum(column not in hidden for column in box_columns(x, self.size))
            objects.append({
                "position": [x, y], "velocity": [vx, 0.0], "colour": list(colour),
                "visible_fraction": visible / self.size, "occluded": visible == 0,
            })
        return {"objects": objects, "occluder": list(self.occluder), "size": self.size}


# ---------------------------------------------------------------- Body


class BodyEnv(PhysicsEnv):
    """A square body the agent moves ``speed`` pixels per action; walls stop it.

    Actions none/left/right/up/down. A move that would take the body through a wall ends
    with the body touching the wall (a partial or zero move; ``blocked`` is set). The body
    starts at a random place on the lattice of ``speed``-pixel steps from the top-left
    corner of the room.

    ``info``: ``position`` ``[x, y]`` (centre), ``moved`` ``[dx, dy]`` (the move actually
    made this step), ``blocked`` (a wall cut the requested move short), ``bounds``
    (``[x_min, y_min, x_max, y_max]`` of the centre), ``size``, ``speed`` and ``colour``.

    Args:
        frame_size: observation size, an int or ``(H, W)``.
        max_steps: steps after which an episode is truncated.
        size: side of the body in pixels.
        speed: pixels moved per action.
        render_mode: None or ``"rgb_array"``.
    """

    ACTION_NAMES = ("none", "left", "right", "up", "down")
    description = "a body moved a fixed number of pixels per action; walls stop it"
    _MOVES = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))  # (dx, dy) per action

    def __init__(
        self,
        *,
        frame_size: int | str | tuple[int, int] = DEFAULT_FRAME_SIZE,
        max_steps: int = 1000,
        size: int = 6,
        speed: int = 4,
        render_mode: str | None = None,
    ) -> None:
        name = "physics/Body"
        self.size = positive_int(size, "size", name)
        self.speed = positive_int(speed, "speed", name)
        side = 2 * WALL_THICKNESS + self.size + self.speed
        super().__init__(name, frame_size, max_steps, render_mode, (side, side))
        self._bounds = self.bounds(self.size / 2, self.size / 2)
        self._position = (self._bounds[0], self._bounds[1])
        self._moved = (0.0, 0.0)
        self._blocked = False
        self._frame = self._draw()

    def _new_episode(self) -> None:
        x_min, y_min, x_max, y_max = self._bounds
        columns = int((x_max - x_min) // self.speed) + 1
        rows = int((y_max - y_min) // self.speed) + 1
        self._position = (x_min + self.speed * int(self.np_random.integers(columns)),
                          y_min + self.speed * int(self.np_random.integers(rows)))
        self._moved = (0.0, 0.0)
        self._blocked = False

    def _advance(self, action: int) -> None:
        dx, dy = self._MOVES[action]
        x_min, y_min, x_max, y_max = self._bounds
        x, y = self._position
        new_x = min(max(x + dx * self.speed, x_min), x_max)
        new_y = min(max(y + dy * self.speed, y_min), y_max)
        self._moved = (new_x - x, new_y - y)
        self._blocked = self._moved != (dx * self.speed, dy * self.speed)
        self._position = (new_x, new_y)

    def _draw_objects(self, frame: np.ndarray) -> None:
        fill_box(frame, *self._position, self.size, BODY)

    def _state(self) -> dict[str, Any]:
        return {
            "position": list(self._position), "moved": list(self._moved),
            "blocked": self._blocked, "bounds": list(self._bounds), "size": self.size,
            "speed": self.speed, "colour": list(BODY),
        }


# ---------------------------------------------------------------- Spawn


class SpawnEnv(PhysicsEnv):
    """Objects appear at random times and places and never vanish.

    The room is cut into cells ``size + 2`` pixels apart, so objects never touch. An
    episode starts with one object. Each step, a new object appears in a random free cell,
    with a random palette colour, when the action is ``spawn`` or otherwise with probability
    ``spawn_prob``, until there are ``max_objects``; the count never decreases.

    ``info``: ``count``, ``positions`` (``[x, y]`` centres in order of appearance),
    ``colours``, ``spawned`` (an object appeared this step), ``max_objects`` and ``size``.

    Args:
        frame_size: observation size, an int or ``(H, W)``; the room must hold
            ``max_objects`` cells.
        max_steps: steps after which an episode is truncated.
        max_objects: the most objects there can be.
        spawn_prob: chance per step that an object appears by itself, in [0, 1].
        size: side of each object in pixels.
        render_mode: None or ``"rgb_array"``.
    """

    ACTION_NAMES = ("none", "spawn")
    description = "objects appear at random times and places and never vanish"

    def __init__(
        self,
        *,
        frame_size: int | str | tuple[int, int] = DEFAULT_FRAME_SIZE,
        max_steps: int = 1000,
        max_objects: int = 12,
        spawn_prob: float = 0.1,
        size: int = 6,
        render_mode: str | None = None,
    ) -> None:
        name = "physics/Spawn"
        self.max_objects = positive_int(max_objects, "max_objects", name)
        self.spawn_prob = _positive_number(spawn_prob, "spawn_prob", name, zero_ok=True,
                                           at_most=1.0)
        self.size = positive_int(size, "size", name)
        pitch = self.size + 2
        side = 2 * WALL_THICKNESS + pitch
        super().__init__(name, frame_size, max_steps, render_mode, (side, side))
        height, width = self.frame_size
        rows = (height - 2 * WALL_THICKNESS) // pitch
        columns = (width - 2 * WALL_THICKNESS) // pitch
        # Cell centres, each cell `pitch` wide with the object in its middle.
        self._cells = [(WALL_THICKNESS + pitch * (col + 0.5), WALL_THICKNESS + pitch * (row + 0.5))
                       for row in range(rows) for col in range(columns)]
        if len(self._cells) < self.max_objects:
            raise ConfigError(
                f"{name}: a {height}x{width} frame holds {len(self._cells)} cells of {pitch} "
                f"pixels, fewer than max_objects={self.max_objects}; pass a larger frame_size, "
                "a smaller size or fewer max_objects"
            )
        self._occupied: list[int] = []
        self._colours: list[int] = []
        self._spawned = False
        self._frame = self._draw()

    def _new_episode(self) -> None:
        self._occupied, self._colours = [], []
        self._spawn()
        self._spawned = False

    def _spawn(self) -> None:
        free = [cell for cell in range(len(self._cells)) if cell not in self._occupied]
        self._occupied.append(free[int(self.np_random.integers(len(free)))])
        self._colours.append(int(self.np_random.integers(len(PALETTE))))

    def _advance(self, action: int) -> None:
        chance = float(self.np_random.random())  # drawn every step: spawns stay seed-aligned
        wanted = self.ACTION_NAMES[action] == "spawn" or chance < self.spawn_prob
        self._spawned = wanted and len(self._occupied) < self.max_objects
        if self._spawned:
            self._spawn()

    def _draw_objects(self, frame: np.ndarray) -> None:
        for cell, colour in zip(self._occupied, self._colours):
            fill_box(frame, *self._cells[cell], self.size, PALETTE[colour])

    def _state(self) -> dict[str, Any]:
        return {
            "count": len(self._occupied),
            "positions": [list(self._cells[cell]) for cell in self._occupied],
            "colours": [list(PALETTE[colour]) for colour in self._colours],
            "spawned": self._spawned, "max_objects": self.max_objects, "size": self.size,
        }


WORLDS: dict[str, type[PhysicsEnv]] = {
    "Bounce": BounceEnv,
    "Occlusion": OcclusionEnv,
    "Body": BodyEnv,
    "Spawn": SpawnEnv,
}
"""The worlds by the name after ``physics/``."""
