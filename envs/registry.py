"""The env registry: ``make_env(name, **options)`` and ``list_envs()``.

Names: ``vizdoom/<Scenario>`` (e.g. ``vizdoom/TakeCover``), ``physics/<World>`` (the
procedural worlds of ``envs.physics``, e.g. ``physics/Bounce``), ``crafter``, ``fake`` and
``gym:<id>`` for any registered Gymnasium env. Every env made here observes
``Box(0, 255, (H, W, 3), uint8)`` frames, acts in ``Discrete(A)``, takes ``frame_size`` and
``render_mode`` options, is seeded by ``reset(seed=...)`` and names its actions in
``env.unwrapped.action_names``. Games are imported only when an env is made.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium

from envs import crafter_env, fake, physics, vizdoom_env
from envs.frames import DEFAULT_FRAME_SIZE
from worldsim.errors import ConfigError

GYM_PREFIX = "gym:"


@dataclass(frozen=True)
class EnvInfo:
    """What ``list_envs`` tells about one env name."""

    name: str
    """The name to pass to ``make_env``."""
    description: str
    """One line on what the game is."""
    frame_size: tuple[int, int]
    """Default observation ``(H, W)``."""
    action_names: tuple[str, ...]
    """Discrete action names, in action-index order."""


@dataclass(frozen=True)
class _Entry:
    info: EnvInfo
    env_class: type[gymnasium.Env]
    args: tuple[str, ...] = ()  # positional arguments before the options


def _entries() -> dict[str, _Entry]:
    entries: dict[str, _Entry] = {}
    for scenario_name, scenario in vizdoom_env.SCENARIOS.items():
        name = f"vizdoom/{scenario_name}"
        info = EnvInfo(
            name, f"VizDoom: {scenario.description}", DEFAULT_FRAME_SIZE, scenario.action_names
        )
        entries[name] = _Entry(info, vizdoom_env.VizDoomEnv, (scenario_name,))
    for world_name, world in physics.WORLDS.items():
        name = f"physics/{world_name}"
        info = EnvInfo(name, f"physics probe world: {world.description}", DEFAULT_FRAME_SIZE,
                       world.ACTION_NAMES)
        entries[name] = _Entry(info, world)
    entries["crafter"] = _Entry(
        EnvInfo(
            "crafter",
            "Crafter: open-world survival with 22 achievements; score = geometric mean of "
            "success rates",
            DEFAULT_FRAME_SIZE,
            crafter_env.ACTION_NAMES,
        ),
        crafter_env.CrafterEnv,
    )
    entries["fake"] = _Entry(
        EnvInfo(
            "fake",
            "test world: dodge a falling block on a grid (fast, deterministic, known physics)",
            DEFAULT_FRAME_SIZE,
            fake.ACTION_NAMES,
        ),
        fake.FakeImageEnv,
    )
    return entries


_ENTRIES = _entries()


def list_envs() -> list[EnvInfo]:
    """Describe every named env (``gym:<id>`` envs are open-ended and not listed).

    Returns:
        One ``EnvInfo`` per name accepted by ``make_env``, VizDoom first.
    """
    return [entry.info for entry in _ENTRIES.values()]


def make_env(name: str, **options: object) -> gymnasium.Env:
    """Make a real (or fake) game as a frame-observing Gymnasium env.

    Args:
        name: ``vizdoom/<Scenario>``, ``physics/<World>``, ``crafter``, ``fake`` or
            ``gym:<id>``.
        **options: the env's options; every env takes ``frame_size`` (int, ``"HxW"`` or
            ``(H, W)``, default 64x64) and ``render_mode`` (None or ``"rgb_array"``).
            VizDoom: ``frame_skip``, ``max_frames``, ``labels``. Crafter: ``max_steps``.
            fake: ``max_steps``, ``grid``. gym: ``env_kwargs``. physics: ``max_steps`` and
            per world: Bounce ``gravity``, ``restitution``, ``kick``, ``kick_speed``,
            ``radius``; Occlusion ``objects``, ``size``, ``occluder_width``; Body ``size``,
            ``speed``; Spawn ``max_objects``, ``spawn_prob``, ``size``.

    Returns:
        The env, not yet reset.

    Raises:
        ConfigError: an unknown name or option, or an option value the env cannot use.
    """
    if name.startswith(GYM_PREFIX):
        from envs.gym_image import GymImageEnv

        env_id = name[len(GYM_PREFIX):]
        if not env_id:
            raise ConfigError("'gym:' needs a Gymnasium id after it, e.g. gym:CartPole-v1")
        _check_options(name, GymImageEnv, options)
        return GymImageEnv(env_id, **options)  # type: ignore[arg-type]
    entry = _ENTRIES.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, _ENTRIES, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown env {name!r}.{hint} Known envs: {', '.join(_ENTRIES)}; any Gymnasium "
            "env with discrete actions is available as gym:<id> (e.g. gym:CartPole-v1)"
        )
    _check_options(name, entry.env_class, options)
    return entry.env_class(*entry.args, **options)


def _check_options(name: str, env_class: Callable[..., object], options: dict[str, object]) -> None:
    parameters = inspect.signature(env_class).parameters.values()
    accepted = [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{name} does not take option(s) {', '.join(unknown)}; it takes: "
            f"{', '.join(accepted)}"
        )
