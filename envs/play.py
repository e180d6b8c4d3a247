"""Play a dream with the keyboard (pygame), optionally beside the real game, and film it.

Keys: the arrows and space act, bound to the actions whose names fit (left: ``left``,
``turn_left`` or ``move_left``; up: ``up``, ``forward`` or ``move_forward``; space:
``attack``, ``do``, ...); digits pick an action by its index; R restarts; Esc or Q quits.
With no key held the idle action (``none``/``noop``) is taken: like the real game, the
dream runs on in real time (the game's rate, e.g. 35 steps/s for VizDoom at frame_skip 1)
unless ``fast`` asks for as fast as it goes.

Headless (tests, servers): set ``SDL_VIDEODRIVER=dummy`` and give a ``script`` of key
presses such as ``"right*10,left*5,r,none*3"``: each item holds a key for ``*N`` ticks (one
tick = one dream step) through the same pygame event queue the keyboard uses.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.errors import ConfigError
from worldsim.world_model import WorldModel

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

# pygame key name -> action names it stands for, first match wins
KEY_ACTIONS: dict[str, tuple[str, ...]] = {
    "left": ("left", "turn_left", "move_left"),
    "right": ("right", "turn_right", "move_right"),
    "up": ("up", "forward", "move_forward", "move_up"),
    "down": ("down", "backward", "move_backward", "move_down"),
    "space": ("attack", "shoot", "fire", "do", "use", "jump"),
}
IDLE_ACTIONS = ("none", "noop")
RESTART_KEY = "r"
QUIT_KEYS = ("escape", "q")
HUD_HEIGHT = 40
MIN_WIDTH = 320  # room for the HUD text
BACKGROUND = (16, 16, 20)


def key_bindings(action_names: Sequence[str]) -> dict[str, int]:
    """Keys -> action indices: arrows and space by action name, digits by index."""
    bindings: dict[str, int] = {}
    for key, candidates in KEY_ACTIONS.items():
        for name in candidates:
            if name in action_names:
                bindings[key] = list(action_names).index(name)
                break
    for index in range(min(10, len(action_names))):
        bindings[str(index)] = index
    return bindings


def idle_action(action_names: Sequence[str]) -> int:
    """The action taken while no key is held."""
    for name in IDLE_ACTIONS:
        if name in action_names:
            return list(action_names).index(name)
    return 0


def describe_bindings(action_names: Sequence[str]) -> str:
    """One line per key, for the terminal."""
    bindings = key_bindings(action_names)
    lines = [f"  {key:<6} {action_names[index]}" for key, index in bindings.items()
             if not key.isdigit()]
    lines.append(f"  0-{min(10, len(action_names)) - 1:<4} action by index "
                 f"({', '.join(f'{i}: {n}' for i, n in enumerate(action_names[:10]))})")
    lines.append(f"  (none) {action_names[idle_action(action_names)]}")
    lines.append("  r      restart        esc/q  quit")
    return "\n".join(lines)


# ---- scripted key presses ----------------------------------------------------------------

def parse_script(text: str) -> list[tuple[str | None, int]]:
    """``"right*10,left*5,r,none*3"`` -> ``[("right", 10), ("left", 5), ("r", 1), (None, 3)]``.

    Each item holds a key (a pygame key name; ``none`` for no key) for ``*N`` ticks.
    """
    steps: list[tuple[str | None, int]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, _, count = item.partition("*")
        try:
            ticks = int(count) if count else 1
        except ValueError:
            ticks = 0
        if ticks < 1 or not key:
            raise ConfigError(f"script item {item!r} is not KEY or KEY*N with N >= 1 "
                              "(e.g. 'right*10,left*5,r,none*3')")
        steps.append((None if key.lower() == "none" else key.lower(), ticks))
    if not steps:
        raise ConfigError("the key script is empty; e.g. 'right*10,left*5,r,none*3'")
    return steps


class ScriptedKeys:
    """Posts a script's key presses into pygame's event queue, one tick at a time."""

    def __init__(self, steps: Sequence[tuple[str | None, int]]) -> None:
        self.ticks = [(key, i == 0, i == count - 1) for key, count in steps
                      for i in range(count)]
        self.position = 0
        self._release: int | None = None  # key to let go of at the start of the next tick

    def post(self) -> bool:
        """Post this tick's events; False once the script is over."""
        import pygame

        if self._release is not None:
            pygame.event.post(pygame.event.Event(pygame.KEYUP, key=self._release))
            self._release = None
        if self.position >= len(self.ticks):
            return False
        key, first, last = self.ticks[self.position]
        self.position += 1
        if key is not None:
            try:
                code = pygame.key.key_code(key)
            except ValueError as error:
                raise ConfigError(f"script key {key!r} is not a pygame key name") from error
            if first:
                pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=code))
            if last:  # held through this tick, let go before the next
                self._release = code
        return True


# ---- a window that shows frames (DreamEnv's render_mode="human") -------------------------

class FrameWindow:
    """A pygame window showing upscaled ``(H, W, 3)`` frames at ``fps``."""

    def __init__(self, title: str, scale: int = 4, fps: float = 35.0) -> None:
        import pygame

        pygame.display.init()
        self.title, self.scale, self.fps = title, scale, fps
        self._screen: Any = None
        self._clock = pygame.time.Clock()

    def show(self, frame: np.ndarray) -> None:
        import pygame

        height, width = frame.shape[:2]
        size = (width * self.scale, height * self.scale)
        if self._screen is None:
            self._screen = pygame.display.set_mode(size)
            pygame.display.set_caption(self.title)
        pygame.event.pump()  # keeps the window responsive
        surface = pygame.surfarray.make_surface(np.ascontiguousarray(frame.transpose(1, 0, 2)))
        self._screen.blit(pygame.transform.scale(surface, size), (0, 0))
        pygame.display.flip()
        self._clock.tick(self.fps)

    def close(self) -> None:
        import pygame

        if self._screen is not None:
            pygame.display.quit()
            self._screen = None


# ---- playing -----------------------------------------------------------------------------

@dataclass
class PlayResult:
    """What a play session did."""

    steps: int  # dream steps taken
    actions: list[int]  # the action of each dream step
    restarts: int  # R presses
    frames: int  # frames shown (and recorded): the first, then one per tick
    record: Path | None  # the video written, if any


@dataclass
class _Pane:
    label: str
    frame: np.ndarray
    over: str | None = None  # why this side's episode ended


def play(model: WorldModel, *, seed: int = 0, fast: bool = False, fps: float | None = None,
         scale: int = 4, side_by_side: bool = False, record: str | Path | None = None,
         script: str | None = None, max_steps: int | None = None,
         **dream_options: Any) -> PlayResult:
    """Play the dream of ``model`` in a pygame window.

    Args:
        model: the world model.
        seed: seeds the first dream (and real game); each restart adds 1.
        fast: step as fast as possible instead of at the game's rate.
        fps: steps per second (default: the real game's).
        scale: pixel upscaling of the frames.
        side_by_side: run the real game with the same key presses left of the dream; the
            dream is then prompted with the real game's first frames.
        record: an .mp4 or .gif path to film the window to.
        script: scripted key presses (see :func:`parse_script`) instead of the keyboard;
            the session ends when the script does.
        max_steps: end after this many dream steps.
        **dream_options: DreamEnv options (``temperature``, ``termination``, ``dataset``...).
    """
    import pygame

    import envs
    from envs.dream import DreamEnv, check_game
    from envs.video import VideoRecorder, real_opening

    dream = DreamEnv(model=model, obs_mode="rgb", **dream_options)
    names = dream.action_names
    bindings, idle = key_bindings(names), idle_action(names)
    real = None
    if side_by_side:
        if not model.info.env:
            raise ConfigError("the checkpoint does not name its game; --side-by-side needs it")
        real = envs.make_env(model.info.env, **model.info.env_options)
        check_game(model, None, int(real.action_space.n))
    rate = float(fps or dream.metadata["render_fps"])
    scripted = ScriptedKeys(parse_script(script)) if script is not None else None
    print(f"worldsim play: {model.info.env or 'dream'}, {rate:.0f} steps/s"
          f"{' (fast)' if fast else ''}; keys:\n{describe_bindings(names)}", flush=True)

    pygame.display.init()
    pygame.font.init()
    height, width = model.info.frame_size
    panes_count = 2 if real is not None else 1
    size = (max(MIN_WIDTH, panes_count * width * scale), height * scale + HUD_HEIGHT)
    screen = pygame.display.set_mode(size)
    pygame.display.set_caption("worldsim play" + (": real | dream" if real else ""))
    font = pygame.font.Font(None, 18)
    clock = pygame.time.Clock()
    recorder = VideoRecorder(record, rate) if record is not None else None

    episode, steps, restarts, shown = 0, 0, 0, 0
    taken: list[int] = []
    dream_step, probability, action = 0, 0.0, idle
    panes: list[_Pane] = []

    def start() -> None:
        nonlocal panes, dream_step, probability
        if real is not None:
            context = model.config.dynamics.context_frames
            frames, actions, ended = real_opening(real, seed + episode, context, lambda _: idle)
            first, _ = dream.reset(seed=seed + episode, options={"prompt": (frames, actions)})
            panes = [_Pane("real", frames[-1], "ended" if ended else None), _Pane("dream", first)]
        else:
            first, _ = dream.reset(seed=seed + episode)
            panes = [_Pane("dream", first)]
        dream_step, probability = 0, 0.0

    def draw() -> None:
        nonlocal shown
        screen.fill(BACKGROUND)
        for index, pane in enumerate(panes):
            surface = pygame.surfarray.make_surface(
                np.ascontiguousarray(pane.frame.transpose(1, 0, 2)))
            left = index * width * scale
            screen.blit(pygame.transform.scale(surface, (width * scale, height * scale)),
                        (left, 0))
            if panes_count > 1:
                screen.blit(font.render(pane.label, True, (255, 255, 255)), (left + 4, 4))
            if pane.over:
                note = font.render(f"{pane.over}: R restarts", True, (255, 220, 90))
                screen.blit(note, (left + 4, height * scale - 18))
        speed = "fast" if fast else f"{rate:.0f} steps/s"
        status = (f"step {dream_step}   P(end) {probability:.2f}   "
                  f"action {names[action]}   {speed}")
        legend = "  ".join(f"{key}:{names[i]}" for key, i in bindings.items()
                           if not key.isdigit()) + "  r:restart  esc:quit"
        screen.blit(font.render(status, True, (235, 235, 235)), (4, height * scale + 4))
        screen.blit(font.render(legend, True, (150, 150, 160)), (4, height * scale + 22))
        pygame.display.flip()
        shown += 1
        if recorder is not None:
            recorder.add(pygame.surfarray.array3d(screen).transpose(1, 0, 2))

    held: list[str] = []
    try:
        start()
        draw()
        running = True
        while running:
            if scripted is not None and not scripted.post():
                break
            restart = False
            for event in pygame.event.get():
                if event.type == pygame.QUIT:
                    running = False
                elif event.type == pygame.KEYDOWN:
                    key = pygame.key.name(event.key)
                    if key in QUIT_KEYS:
                        running = False
                    elif key == RESTART_KEY:
                        restart = True
                    elif key not in held:
                        held.append(key)
                elif event.type == pygame.KEYUP:
                    key = pygame.key.name(event.key)
                    if key in held:
                        held.remove(key)
            if not running:
                break
            bound = [bindings[key] for key in held if key in bindings]
            action = bound[-1] if bound else idle  # the latest key pressed wins
            if restart:
                episode, restarts = episode + 1, restarts + 1
                start()
            elif panes[-1].over is None:
                frame, _, terminated, truncated, info = dream.step(action)
                steps, dream_step = steps + 1, info["dream_step"]
                taken.append(action)
                probability = info["termination_prob"]
                panes[-1].frame = frame
                if terminated or truncated:
                    panes[-1].over = "terminated" if terminated else "truncated"
                if real is not None and panes[0].over is None:
                    frame, _, terminated, truncated, _ = real.step(action)
                    panes[0].frame = frame
                    if terminated or truncated:
                        panes[0].over = "game over" if terminated else "time up"
            draw()
            if max_steps is not None and steps >= max_steps:
                break
            if not fast:
                clock.tick(rate)
    except BaseException:
        if recorder is not None:
            recorder.abort()
        raise
    finally:
        dream.close()
        if real is not None:
            real.close()
        pygame.display.quit()
    path = recorder.close() if recorder is not None else None
    return PlayResult(steps, taken, restarts, shown, path)
