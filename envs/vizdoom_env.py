"""VizDoom scenarios as Gymnasium envs, straight over ``vizdoom.DoomGame``.

We skip vizdoom's own Gymnasium wrapper to control frames (one resize to ``frame_size``
from the smallest screen resolution that covers it), seeding (``game.set_seed`` before each
seeded ``new_episode``) and actions (a short list of named button combinations per scenario).

Conventions every scenario follows:

- One ``step`` is ``frame_skip`` game tics with the action held; ``info["frames"]`` counts
  real tics since the episode started, so scores stay in tics whatever the skip. vizdoom
  stops mid-skip when the player dies, so the count is exact.
- When the episode ends vizdoom has no screen left (``get_state()`` is None): the final
  observation is the last frame that was rendered, i.e. the one of the previous step (and
  ``info["objects"]`` its objects); game variables such as ``health`` are read afresh.
- ``terminated`` means the game ended the episode (death, or a goal such as Basic's kill);
  ``truncated`` means a time limit: ``max_frames`` or the scenario's own ``episode_timeout``.
- vizdoom is imported inside ``VizDoomEnv.__init__``, so importing this module is cheap; each
  env owns its game (no module state), so envs can live in separate processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, SupportsFloat

import gymnasium
import numpy as np

from envs.base import FrameEnv
from envs.frames import DEFAULT_FRAME_SIZE, parse_frame_size, positive_int, resize_frame
from worldsim.errors import ConfigError, WorldsimError


@dataclass(frozen=True)
class Scenario:
    """One vizdoom scenario and the discrete action set we give it."""

    config: str
    """The ``.cfg`` file in ``vizdoom.scenarios_path``."""
    description: str
    """One line for ``list_envs``."""
    buttons: tuple[str, ...]
    """``vizdoom.Button`` names made available, in order; they replace the cfg's buttons."""
    actions: tuple[tuple[str, tuple[str, ...]], ...]
    """``(action name, buttons held)`` per discrete action, in action-index order."""
    max_frames: int | None = None
    """Default tic cap (truncation); None keeps the cfg's ``episode_timeout``."""

    @property
    def action_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.actions)


_NONE: tuple[str, ...] = ()
_MOVE_LR = ("MOVE_LEFT", "MOVE_RIGHT", "ATTACK")
_TURN_SHOOT = ("TURN_LEFT", "TURN_RIGHT", "ATTACK")
_TURN_SHOOT_ACTIONS = (
    ("none", _NONE), ("turn_left", ("TURN_LEFT",)), ("turn_right", ("TURN_RIGHT",)),
    ("attack", ("ATTACK",)),
)
_STRAFE_SHOOT_ACTIONS = (
    ("none", _NONE), ("left", ("MOVE_LEFT",)), ("right", ("MOVE_RIGHT",)),
    ("attack", ("ATTACK",)),
)
_GATHER = ("TURN_LEFT", "TURN_RIGHT", "MOVE_FORWARD")
_GATHER_ACTIONS = (
    ("none", _NONE), ("forward", ("MOVE_FORWARD",)), ("turn_left", ("TURN_LEFT",)),
    ("turn_right", ("TURN_RIGHT",)), ("forward_left", ("MOVE_FORWARD", "TURN_LEFT")),
    ("forward_right", ("MOVE_FORWARD", "TURN_RIGHT")),
)
_WALK = ("MOVE_FORWARD", "MOVE_BACKWARD", "MOVE_LEFT", "MOVE_RIGHT", "TURN_LEFT", "TURN_RIGHT")

# TakeCover first: it is the benchmark. The Ha & Schmidhuber protocol caps episodes at 2100.
SCENARIOS: dict[str, Scenario] = {
    "TakeCover": Scenario(
        "take_cover.cfg",
        "dodge fireballs from monsters across the room; score = tics survived",
        ("MOVE_LEFT", "MOVE_RIGHT"),
        (("none", _NONE), ("left", ("MOVE_LEFT",)), ("right", ("MOVE_RIGHT",))),
        max_frames=2100,
    ),
    "Basic": Scenario(
        "basic.cfg", "strafe and shoot the single monster in a square room",
        _MOVE_LR, _STRAFE_SHOOT_ACTIONS,
    ),
    "SimplerBasic": Scenario(
        "simpler_basic.cfg", "Basic with a simpler room texture",
        _MOVE_LR, _STRAFE_SHOOT_ACTIONS,
    ),
    "RocketBasic": Scenario(
        "rocket_basic.cfg", "Basic with a rocket launcher (slow projectile, no autoaim)",
        _MOVE_LR, _STRAFE_SHOOT_ACTIONS,
    ),
    "DeadlyCorridor": Scenario(
        "deadly_corridor.cfg", "reach the vest at the end of a corridor lined with shooters",
        _WALK + ("ATTACK",),
        (
            ("none", _NONE), ("forward", ("MOVE_FORWARD",)), ("backward", ("MOVE_BACKWARD",)),
            ("strafe_left", ("MOVE_LEFT",)), ("strafe_right", ("MOVE_RIGHT",)),
            ("turn_left", ("TURN_LEFT",)), ("turn_right", ("TURN_RIGHT",)),
            ("attack", ("ATTACK",)),
        ),
    ),
    "DefendTheCenter": Scenario(
        "defend_the_center.cfg", "turn and shoot melee monsters closing in on the centre",
        _TURN_SHOOT, _TURN_SHOOT_ACTIONS,
    ),
    "DefendTheLine": Scenario(
        "defend_the_line.cfg", "turn and shoot monsters approaching a line",
        _TURN_SHOOT, _TURN_SHOOT_ACTIONS,
    ),
    "HealthGathering": Scenario(
        "health_gathering.cfg", "collect medkits on an acid floor to stay alive",
        _GATHER, _GATHER_ACTIONS,
    ),
    "HealthGatheringSupreme": Scenario(
        "health_gathering_supreme.cfg", "HealthGathering in a maze with poison vials",
        _GATHER, _GATHER_ACTIONS,
    ),
    "MyWayHome": Scenario(
        "my_way_home.cfg", "find the vest in a maze of coloured rooms (sparse reward)",
        ("MOVE_FORWARD", "MOVE_LEFT", "MOVE_RIGHT", "TURN_LEFT", "TURN_RIGHT"),
        (
            ("none", _NONE), ("forward", ("MOVE_FORWARD",)), ("turn_left", ("TURN_LEFT",)),
            ("turn_right", ("TURN_RIGHT",)), ("strafe_left", ("MOVE_LEFT",)),
            ("strafe_right", ("MOVE_RIGHT",)),
        ),
    ),
    "PredictPosition": Scenario(
        "predict_position.cfg", "lead a moving monster with a slow rocket",
        _TURN_SHOOT, _TURN_SHOOT_ACTIONS,
    ),
    "Deathmatch": Scenario(
        "deathmatch.cfg", "fight waves of monsters in an arena with weapons to pick up",
        _WALK + ("ATTACK", "SELECT_NEXT_WEAPON"),
        (
            ("none", _NONE), ("forward", ("MOVE_FORWARD",)), ("backward", ("MOVE_BACKWARD",)),
            ("strafe_left", ("MOVE_LEFT",)), ("strafe_right", ("MOVE_RIGHT",)),
            ("turn_left", ("TURN_LEFT",)), ("turn_right", ("TURN_RIGHT",)),
            ("attack", ("ATTACK",)), ("forward_attack", ("MOVE_FORWARD", "ATTACK")),
            ("next_weapon", ("SELECT_NEXT_WEAPON",)),
        ),
    ),
}

# Shipped .cfg files we deliberately do not offer (multiplayer, audio/notification variants,
# raw IWAD configs, the CIG competition map, a learning demo). A test checks that every
# shipped .cfg is either offered or listed here, so a vizdoom upgrade cannot add one silently.
SKIPPED_CONFIGS: frozenset[str] = frozenset({
    "basic_audio.cfg", "basic_notifications.cfg", "cig.cfg", "doom.cfg", "doom2.cfg",
    "freedoom1.cfg", "freedoom2.cfg", "learning.cfg", "multi.cfg", "multi_duel.cfg",
    "oblige.cfg",
})


def pick_resolution(frame_size: tuple[int, int]) -> tuple[str, tuple[int, int]]:
    """Choose the smallest vizdoom screen resolution at least ``frame_size`` in both sides.

    Args:
        frame_size: the wanted ``(H, W)``.

    Returns:
        ``(name of the vizdoom.ScreenResolution member, (H, W) of that resolution)``.

    Raises:
        ConfigError: no vizdoom resolution is that large.
    """
    import vizdoom

    height, width = frame_size
    candidates = []
    for name in vizdoom.ScreenResolution.__members__:
        res_w, res_h = (int(v) for v in name.removeprefix("RES_").split("X"))
        candidates.append((res_w * res_h, name, (res_h, res_w)))
    fitting = [c for c in candidates if c[2][0] >= height and c[2][1] >= width]
    if not fitting:
        tallest = max(candidates, key=lambda c: c[2])[2]
        widest = max(candidates, key=lambda c: (c[2][1], c[2][0]))[2]
        raise ConfigError(
            f"vizdoom cannot render {height}x{width} (HxW) frames: no screen resolution is at "
            f"least that large (the largest are {tallest[0]}x{tallest[1]} and "
            f"{widest[0]}x{widest[1]}); frames are never upscaled, pass a smaller frame_size"
        )
    _, name, size = min(fitting)
    return name, size


class VizDoomEnv(FrameEnv):
    """A vizdoom scenario with RGB frames of ``frame_size`` and a named discrete action set.

    Args:
        scenario: a key of ``SCENARIOS``, e.g. ``"TakeCover"``.
        frame_size: observation size, an int or ``(H, W)`` (also ``"HxW"``); default 64x64.
        frame_skip: game tics per step, the action held throughout (default 1).
        max_frames: tic cap that ends an episode as truncated. None: the scenario default
            (2100 for TakeCover, the cfg's ``episode_timeout`` elsewhere); 0: no cap at all.
        labels: put ``info["objects"]``: one dict per visible object (``name``, ``id``, and
            its bounding box ``x``, ``y``, ``width``, ``height`` in frame_size pixels).
        render_mode: None or ``"rgb_array"`` (``render()`` returns the current observation).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 35}

    def __init__(
        self,
        scenario: str = "TakeCover",
        *,
        frame_size: int | str | tuple[int, int] = DEFAULT_FRAME_SIZE,
        frame_skip: int = 1,
        max_frames: int | None = None,
        labels: bool = False,
        render_mode: str | None = None,
    ) -> None:
        if scenario not in SCENARIOS:
            raise ConfigError(
                f"unknown vizdoom scenario {scenario!r}; known: {', '.join(SCENARIOS)}"
            )
        self.scenario = SCENARIOS[scenario]
        self.env_name = f"vizdoom/{scenario}"
        self.frame_size = parse_frame_size(frame_size)
        self.frame_skip = positive_int(frame_skip, "frame_skip", self.env_name)
        if max_frames is None:
            max_frames = self.scenario.max_frames
        elif max_frames != 0:
            max_frames = positive_int(max_frames, "max_frames", self.env_name)
        self.max_frames = max_frames or None
        self.labels = bool(labels)
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(
                f"{self.env_name}: render_mode {render_mode!r} is not supported; use "
                "'rgb_array' or leave it unset"
            )
        self.render_mode = render_mode
        resolution, self._screen_size = pick_resolution(self.frame_size)

        self._game = self._make_game(resolution)
        self._action_vectors = [
            [1.0 if button in held else 0.0 for button in self.scenario.buttons]
            for _, held in self.scenario.actions
        ]
        self._variables = list(self._game.get_available_game_variables())
        self._variable_names = [variable.name.lower() for variable in self._variables]
        self._box_scale = (
            self.frame_size[1] / self._screen_size[1],
            self.frame_size[0] / self._screen_size[0],
        )

        self.observation_space = gymnasium.spaces.Box(
            0, 255, (*self.frame_size, 3), np.uint8
        )
        self.action_space = gymnasium.spaces.Discrete(len(self.scenario.actions))
        self._frame = np.zeros((*self.frame_size, 3), np.uint8)
        self._objects: list[dict[str, Any]] = []
        self._values: dict[str, float] = {}
        self._start_time = 0
        self._frames = 0
        self._episode_over = True

    @property
    def action_names(self) -> tuple[str, ...]:
        """Names of the discrete actions, in action-index order."""
        return self.scenario.action_names

    def _make_game(self, resolution: str) -> Any:
        import vizdoom

        game = vizdoom.DoomGame()
        game.load_config(os.path.join(vizdoom.scenarios_path, self.scenario.config))
        game.set_screen_resolution(vizdoom.ScreenResolution.__members__[resolution])
        game.set_screen_format(vizdoom.ScreenFormat.RGB24)
        game.set_window_visible(False)
        game.set_sound_enabled(False)
        game.set_mode(vizdoom.Mode.PLAYER)
        game.set_depth_buffer_enabled(False)
        game.set_automap_buffer_enabled(False)
        game.set_labels_buffer_enabled(self.labels)
        game.set_available_buttons([vizdoom.Button.__members__[b] for b in self.scenario.buttons])
        if self.max_frames is not None:
            # We cap episodes ourselves (as truncation); vizdoom's own timeout must not fire first.
            game.set_episode_timeout(0)
        try:
            game.init()
        except Exception as error:  # vizdoom raises its own exception types
            raise WorldsimError(
                f"{self.env_name}: vizdoom failed to start ({error}); check that the vizdoom "
                "package is installed with its scenarios and that no display is required"
            ) from error
        return game

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode; a seed fixes every later episode too until the next seed."""
        super().reset(seed=seed)
        game = self._require_game()
        if seed is not None:
            game.set_seed(int(seed) % 2**32)
        game.new_episode()
        self._start_time = game.get_episode_time()
        self._frames = 0
        self._episode_over = False
        self._read_state(game.get_state())
        return self._frame, self._info()

    def step(
        self, action: int | np.integer
    ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Hold ``action`` for ``frame_skip`` tics (fewer when ``max_frames`` is reached)."""
        game = self._require_game()
        reward = self._advance(action, render=True)
        terminated = truncated = False
        if game.is_episode_finished():
            # Death or a scenario goal ends the game; its own timeout is a time limit.
            truncated = not game.is_player_dead() and game.is_episode_timeout_reached()
            terminated = not truncated
            self._values = {
                name: float(game.get_game_variable(variable))
                for name, variable in zip(self._variable_names, self._variables)
            }
            self._frame = self._frame.copy()  # never hand out the same array twice
        else:
            self._read_state(game.get_state())
            truncated = self.max_frames is not None and self._frames >= self.max_frames
        self._episode_over = terminated or truncated
        return self._frame, float(reward), terminated, truncated, self._info()

    def replay(self, seed: int, actions: Any) -> tuple[np.ndarray, dict[str, Any]]:
        """Put the game in the state that ``actions`` reach from ``reset(seed=seed)``, as
        ``reset`` and ``step`` would, without rendering or reading the frames on the way
        (only the last step's): what branching and counterfactual checks do thousands of
        times, about twice as fast.

        Returns:
            The frame and info of the state reached, as ``reset`` returns them.

        Raises:
            WorldsimError: the actions end the episode before their last one.
        """
        frame, info = self.reset(seed=seed)
        actions = [int(taken) for taken in actions]
        game = self._require_game()
        for count, taken in enumerate(actions[:-1], start=1):
            self._advance(taken, render=False)
            if game.is_episode_finished() or (self.max_frames is not None
                                              and self._frames >= self.max_frames):
                raise WorldsimError(
                    f"{self.env_name}: the episode from seed {seed} ends after {count} of the "
                    f"{len(actions)} actions replayed; replay only actions that it survives"
                )
        if actions:
            frame, _, _, _, info = self.step(actions[-1])
        return frame, info

    def _advance(self, action: int | np.integer, render: bool) -> float:
        """Hold ``action`` for one step's tics; the new state is read (and the frame
        rendered) only with ``render``. Returns the reward."""
        game = self._require_game()
        if self._episode_over:
            raise WorldsimError(
                f"{self.env_name}: step() after the episode ended; call reset() first"
            )
        index = int(action)
        if not 0 <= index < len(self._action_vectors):
            raise ConfigError(
                f"action {action!r} is not one of the {len(self._action_vectors)} actions of "
                f"{self.env_name} {self.action_names}; was the agent made for another env?"
            )
        tics = self.frame_skip
        if self.max_frames is not None:
            tics = min(tics, self.max_frames - self._frames)
        game.set_action(self._action_vectors[index])
        game.advance_action(tics, render)
        self._frames = game.get_episode_time() - self._start_time
        return float(game.get_last_reward())

    def _read_state(self, state: Any) -> None:
        self._frame = resize_frame(state.screen_buffer, self.frame_size)
        variables = state.game_variables  # None when the scenario declares none
        if variables is not None:
            self._values = dict(zip(self._variable_names, map(float, variables)))
        if self.labels:
            scale_x, scale_y = self._box_scale
            self._objects = [
                {
                    "name": label.object_name,
                    "id": int(label.object_id),
                    "x": label.x * scale_x,
                    "y": label.y * scale_y,
                    "width": label.width * scale_x,
                    "height": label.height * scale_y,
                }
                for label in state.labels
            ]

    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"frames": self._frames, **self._values}
        if self.labels:
            info["objects"] = list(self._objects)
        return info

    def _require_game(self) -> Any:
        if self._game is None:
            raise WorldsimError(f"{self.env_name}: the env was closed; make a new one")
        return self._game

    def close(self) -> None:
        """Shut the game down; safe to call twice."""
        if getattr(self, "_game", None) is not None:
            self._game.close()
            self._game = None

