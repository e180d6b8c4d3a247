"""The procedural physics worlds: contract, determinism, laws, and state that matches frames."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

import envs
from benchmarks.probes.core import play_episode
from envs import physics
from envs.frames import parse_frame_size
from worldsim.errors import ConfigError

WORLDS = [f"physics/{name}" for name in physics.WORLDS]


def run(env: gymnasium.Env, seed: int, actions: list[int]) -> tuple[np.ndarray, list[dict]]:
    """Reset with ``seed``, take ``actions``: every frame ``(len + 1, H, W, 3)`` and info."""
    return play_episode(env, seed, np.array(actions, np.int64))


def pixels(frame: np.ndarray, colour: tuple[int, ...] | list[int]) -> np.ndarray:
    """(N, 2) ``[x, y]`` centres of the pixels of exactly ``colour``."""
    rows, columns = np.nonzero((frame == np.asarray(colour, np.uint8)).all(axis=-1))
    return np.stack([columns + 0.5, rows + 0.5], axis=1)


@pytest.mark.parametrize("size", [64, (48, 80)])
@pytest.mark.parametrize("name", WORLDS)
def test_world_contract(name: str, size: object) -> None:
    env = envs.make_env(name, frame_size=size, render_mode="rgb_array")
    height, width = parse_frame_size(size)  # type: ignore[arg-type]
    assert env.observation_space == gymnasium.spaces.Box(0, 255, (height, width, 3), np.uint8)
    assert env.unwrapped.action_names == physics.WORLDS[name.split("/")[1]].ACTION_NAMES
    assert len(env.unwrapped.action_names) == env.action_space.n
    frame, info = env.reset(seed=3)
    assert env.observation_space.contains(frame) and info["frames"] == 0
    for step in range(1, 4):
        frame, reward, terminated, truncated, info = env.step(step % env.action_space.n)
        assert env.observation_space.contains(frame)
        assert (reward, terminated, truncated, info["frames"]) == (0.0, False, False, step)
    np.testing.assert_array_equal(env.render(), frame)
    with pytest.raises(ConfigError, match="action"):
        env.step(env.action_space.n)


@pytest.mark.parametrize("name", WORLDS)
def test_world_passes_gymnasium_check_env(name: str) -> None:
    from gymnasium.utils.env_checker import check_env

    check_env(envs.make_env(name).unwrapped, skip_render_check=True)


@pytest.mark.parametrize("name", WORLDS)
def test_same_seed_same_actions_same_episode(name: str) -> None:
    env = envs.make_env(name, max_steps=50)
    actions = [int(a) for a in np.random.default_rng(0).integers(env.action_space.n, size=50)]
    first = run(env, 11, actions)
    other = run(env, 12, actions)  # in between, so the seed must really reset the state
    second = run(env, 11, actions)
    for a, b in zip(first[0], second[0]):
        np.testing.assert_array_equal(a, b)
    assert first[1] == second[1]
    assert any(not np.array_equal(a, b) for a, b in zip(first[0], other[0]))
    assert second[1][-1]["frames"] == 50 and env.step(0)[3]  # truncated at max_steps


@pytest.mark.parametrize("name", WORLDS)
def test_world_list_entry(name: str) -> None:
    info = {i.name: i for i in envs.list_envs()}[name]
    assert info.description.startswith("physics probe world: ")
    assert info.action_names == envs.make_env(name).unwrapped.action_names
    assert info.frame_size == (64, 64)


def test_bounce_ball_is_drawn_where_info_says_and_obeys_gravity_and_walls() -> None:
    env = envs.make_env("physics/Bounce", frame_size=(48, 80))
    actions = [int(a) for a in np.random.default_rng(1).choice(4, 400, p=[0.85, 0.05, 0.05, 0.05])]
    frames, infos = run(env, 0, actions)
    x_min, y_min, x_max, y_max = infos[0]["bounds"]
    contacts = {wall: 0 for wall in infos[0]["contacts"]}
    for frame, info in zip(frames, infos):
        ball = pixels(frame, info["colour"])
        assert abs(len(ball) - np.pi * info["radius"] ** 2) < 6
        np.testing.assert_allclose(ball.mean(axis=0), info["position"], atol=0.5)
        x, y = info["position"]
        assert x_min <= x <= x_max and y_min <= y <= y_max
        for wall, touched in info["contacts"].items():
            contacts[wall] += touched
    assert all(count > 0 for count in contacts.values()), contacts
    # In free flight without kicks the height's second difference is exactly gravity.
    y = np.array([info["position"][1] for info in infos])
    for t in range(2, len(infos)):
        flight = not any(infos[s]["contacts"][w] for s in (t - 1, t) for w in ("top", "bottom"))
        if flight and actions[t - 1] in (0, 1, 2) and actions[t - 2] in (0, 1, 2):
            assert y[t] - 2 * y[t - 1] + y[t - 2] == pytest.approx(0.25)
        if infos[t]["contacts"]["bottom"]:  # the floor reverses the fall
            assert infos[t]["velocity"][1] < 0 < infos[t - 1]["velocity"][1] + 0.25


def test_bounce_restitution_scales_the_rebound_and_kicks_push() -> None:
    env = envs.make_env("physics/Bounce", restitution=0.5, gravity=0.0)
    _, infos = run(env, 5, [0] * 300)
    rebounds = 0
    for before, after in zip(infos, infos[1:]):
        if after["contacts"]["left"] or after["contacts"]["right"]:
            assert after["velocity"][0] == pytest.approx(-0.5 * before["velocity"][0])
            rebounds += 1
        else:
            assert after["velocity"][0] == before["velocity"][0]
    assert rebounds > 0
    _, infos = run(env, 5, [2, 1, 3])  # kick right, left, up
    assert infos[1]["velocity"][0] == pytest.approx(infos[0]["velocity"][0] + 1.5)
    assert infos[2]["velocity"][0] == pytest.approx(infos[0]["velocity"][0])
    assert infos[3]["velocity"][1] == pytest.approx(infos[0]["velocity"][1] - 1.5)


def test_bounce_kicks_speed_the_ball_up_only_to_kick_speed() -> None:
    env = envs.make_env("physics/Bounce", gravity=0.0, kick_speed=2.5)
    _, infos = run(env, 3, [2] * 20)  # kick right every step
    speeds = [abs(info["velocity"][0]) for info in infos]
    assert max(speeds) == pytest.approx(2.5)
    assert speeds[0] < 2.5
    # A kick against the motion brakes, however fast the ball is.
    fast = envs.make_env("physics/Bounce", gravity=0.0, kick_speed=1e6)
    _, infos = run(fast, 3, [2] * 10)
    assert abs(infos[-1]["velocity"][0]) > 10
    assert env.unwrapped._kicked(12.0, -1.5) == pytest.approx(10.5)
    assert env.unwrapped._kicked(12.0, 1.5) == pytest.approx(12.0)
    assert env.unwrapped._kicked(-2.0, -1.5) == pytest.approx(-2.5)


def test_occlusion_objects_are_drawn_unless_behind_the_bar() -> None:
    env = envs.make_env("physics/Occlusion", objects=4)
    frames, infos = run(env, 2, [0] * 200)
    hidden_seen = 0
    for frame, info in zip(frames, infos):
        left, right = info["occluder"]
        assert (frame[2:-2, left:right] == physics.OCCLUDER).all()
        colours = [tuple(obj["colour"]) for obj in info["objects"]]
        assert len(set(colours)) == 4
        for obj in info["objects"]:
            seen = pixels(frame, obj["colour"])
            assert len(seen) == round(obj["visible_fraction"] * 36)
            assert obj["occluded"] == (len(seen) == 0)
            hidden_seen += obj["occluded"]
            if obj["visible_fraction"] == 1.0:
                np.testing.assert_allclose(seen.mean(axis=0), obj["position"], atol=0.5)
            assert obj["velocity"][1] == 0.0
    assert hidden_seen > 0  # objects really do pass behind the bar


def test_body_moves_by_speed_and_stops_at_walls() -> None:
    env = envs.make_env("physics/Body", speed=4)
    frame, info = env.reset(seed=0)
    x_min, y_min, x_max, y_max = info["bounds"]
    for _ in range(30):  # far more than the room is wide
        frame, _, _, _, info = env.step(1)  # left
    assert info["position"][0] == x_min and info["blocked"] and info["moved"] == [0.0, 0.0]
    np.testing.assert_allclose(pixels(frame, info["colour"]).mean(axis=0), info["position"])
    frame, _, _, _, info = env.step(2)  # right: free again
    assert info["moved"] == [4.0, 0.0] and not info["blocked"]
    for _ in range(30):
        frame, _, _, _, info = env.step(4)  # down
    assert info["position"][1] == y_max
    assert len(pixels(frame, info["colour"])) == 36  # never drawn into the wall
    frame, _, _, _, info = env.step(0)
    assert info["moved"] == [0.0, 0.0] and not info["blocked"]


def test_spawn_count_is_monotone_capped_and_drawn() -> None:
    env = envs.make_env("physics/Spawn", max_objects=5, spawn_prob=0.05)
    frames, infos = run(env, 4, [0] * 20 + [1] * 10)
    counts = [info["count"] for info in infos]
    assert counts[0] == 1 and counts[-1] == 5
    assert all(b in (a, a + 1) for a, b in zip(counts, counts[1:]))
    assert [info["spawned"] for info in infos[1:]] == [b > a for a, b in zip(counts, counts[1:])]
    for frame, info in zip(frames, infos):
        drawn = sum(len(pixels(frame, colour)) for colour in physics.PALETTE)
        assert drawn == info["count"] * 36
        assert len({tuple(p) for p in info["positions"]}) == info["count"]  # no stacking
    _, infos = run(env, 4, [1] * 3)  # the spawn action always spawns below the cap
    assert [info["count"] for info in infos] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [("physics/Bounce", {"restitution": 1.5}, "restitution"),
     ("physics/Bounce", {"gravity": -1}, "gravity"),
     ("physics/Bounce", {"gravity": "strong"}, "gravity"),
     ("physics/Bounce", {"frame_size": 8}, "frame"),
     ("physics/Occlusion", {"objects": 7}, "objects"),
     ("physics/Occlusion", {"occluder_width": 6}, "occluder_width"),
     ("physics/Body", {"speed": 0}, "speed"),
     ("physics/Spawn", {"max_objects": 50, "frame_size": 32}, "max_objects"),
     ("physics/Spawn", {"spawn_prob": 2.0}, "spawn_prob"),
     ("physics/Body", {"grid": 8}, "grid.*size, speed"),
     ("physics/Body", {"render_mode": "human"}, "render_mode")],
)
def test_bad_options_are_refused_by_name(name: str, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        envs.make_env(name, **options)
