"""Contracts of the real-game adapters (VizDoom, Crafter, gym:<id>) and the fake env."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gymnasium
import numpy as np
import pytest

import envs
from envs import crafter_env, vizdoom_env
from envs.frames import parse_frame_size, resize_frame
from worldsim.errors import ConfigError, WorldsimError

REPO = Path(__file__).resolve().parents[1]
CONTRACT_ENVS = ["vizdoom/TakeCover", "crafter", "gym:CartPole-v1", "fake"]
NONE, LEFT, RIGHT = 0, 1, 2  # TakeCover's actions


@pytest.fixture
def make() -> Iterator:
    """``make(name, **options)`` that closes every env it made at teardown."""
    made: list[gymnasium.Env] = []

    def _make(name: str, **options: object) -> gymnasium.Env:
        env = envs.make_env(name, **options)
        made.append(env)
        return env

    yield _make
    for env in made:
        env.close()


def rollout(env: gymnasium.Env, seed: int | None, actions: list[int]) -> dict[str, list]:
    """Reset with ``seed`` and play ``actions`` until the list or the episode ends."""
    return rollout_from(env, *env.reset(seed=seed), actions)


def rollout_from(env: gymnasium.Env, frame: np.ndarray, info: dict, actions: list[int]
                 ) -> dict[str, list]:
    """``rollout`` from the env's current state, whose ``frame`` and ``info`` come first."""
    out: dict[str, list] = {"frames": [frame], "rewards": [], "ends": [], "infos": [info]}
    for action in actions:
        frame, reward, terminated, truncated, info = env.step(action)
        out["frames"].append(frame)
        out["rewards"].append(reward)
        out["ends"].append((terminated, truncated))
        out["infos"].append(info)
        if terminated or truncated:
            break
    return out


# ---------------------------------------------------------------- registry and package


def test_import_does_not_load_games_or_torch() -> None:
    code = (
        "import sys, envs\n"
        "loaded = [m for m in ('vizdoom', 'crafter', 'torch') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr


def test_list_envs_describes_every_name() -> None:
    infos = {info.name: info for info in envs.list_envs()}
    assert infos["vizdoom/TakeCover"].action_names == ("none", "left", "right")
    assert infos["fake"].action_names == ("none", "left", "right", "up", "down")
    assert len(infos["crafter"].action_names) == 17
    assert {"vizdoom/Basic", "vizdoom/DefendTheCenter", "vizdoom/HealthGatheringSupreme",
            "vizdoom/Deathmatch"} <= set(infos)
    assert all(info.frame_size == (64, 64) for info in infos.values())
    with pytest.raises(AttributeError):
        infos["fake"].name = "other"  # type: ignore[misc]


def test_every_shipped_single_player_scenario_is_offered_or_skipped_on_purpose() -> None:
    import vizdoom

    shipped = {name for name in os.listdir(vizdoom.scenarios_path) if name.endswith(".cfg")}
    offered = {scenario.config for scenario in vizdoom_env.SCENARIOS.values()}
    assert offered <= shipped, offered - shipped
    assert shipped - offered == vizdoom_env.SKIPPED_CONFIGS


def test_crafter_names_match_the_installed_crafter() -> None:
    import crafter.constants

    assert crafter_env.ACTION_NAMES == tuple(crafter.constants.actions)
    assert set(crafter_env.ACHIEVEMENTS) == set(crafter.constants.achievements)
    assert len(crafter_env.ACHIEVEMENTS) == 22


def test_unknown_env_name_lists_known_names_and_gym_prefix() -> None:
    with pytest.raises(ConfigError) as error:
        envs.make_env("vizdoom/TakeCovr")
    message = str(error.value)
    assert "vizdoom/TakeCover" in message and "crafter" in message and "fake" in message
    assert "gym:<id>" in message
    assert "Did you mean 'vizdoom/TakeCover'" in message


def test_unknown_option_is_named() -> None:
    with pytest.raises(ConfigError, match="frame_skp.*frame_skip"):
        envs.make_env("vizdoom/TakeCover", frame_skp=4)


def test_gym_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="NoSuchEnv-v0"):
        envs.make_env("gym:NoSuchEnv-v0")
    with pytest.raises(ConfigError, match="Box.*Discrete"):
        envs.make_env("gym:Pendulum-v1")
    with pytest.raises(ConfigError, match="gym:CartPole-v1"):
        envs.make_env("gym:")


# ---------------------------------------------------------------- frames


@pytest.mark.parametrize(
    ("value", "expected"),
    [(64, (64, 64)), ("64", (64, 64)), ("64x96", (64, 96)), (" 48X80 ", (48, 80)),
     ((48, 80), (48, 80)), ([32, 16], (32, 16)), (np.int64(8), (8, 8))],
)
def test_parse_frame_size_accepts(value: object, expected: tuple[int, int]) -> None:
    assert parse_frame_size(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, -3, "0x64", "abc", "64x", (64,), (64, 0), (64.0, 64), True,
                                   64.5, None])
def test_parse_frame_size_rejects(value: object) -> None:
    with pytest.raises(ConfigError):
        parse_frame_size(value)  # type: ignore[arg-type]


def test_resize_frame_keeps_flat_colours_and_copies() -> None:
    frame = np.empty((120, 160, 3), np.uint8)
    frame[:] = (10, 200, 77)
    small = resize_frame(frame, (48, 80))
    assert small.shape == (48, 80, 3) and small.dtype == np.uint8 and small.flags.c_contiguous
    assert (small == (10, 200, 77)).all()  # weights sum to one: no drift, no channel mix-up
    same = resize_frame(frame, (120, 160))
    same[0, 0] = 0
    assert frame[0, 0, 0] == 10


def test_resize_frame_averages_rather_than_samples() -> None:
    stripes = np.zeros((120, 160, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: point sampling would give pure 0 or 255
    small = resize_frame(stripes, (64, 64))
    assert 100 < small.mean() < 155 and small.std() < 40


@pytest.mark.parametrize(
    ("name", "size"),
    [("vizdoom/TakeCover", 0), ("vizdoom/TakeCover", (1100, 1900)), ("vizdoom/TakeCover", 4000),
     ("fake", 4), ("crafter", (8, 64)), ("gym:CartPole-v1", (401, 64))],
)
def test_frame_size_the_adapter_cannot_produce_is_refused(name: str, size: object) -> None:
    with pytest.raises(ConfigError, match="frame|size"):
        envs.make_env(name, frame_size=size)


@pytest.mark.parametrize(
    ("size", "resolution"),
    [((64, 64), "RES_160X120"), ((120, 160), "RES_160X120"), ((48, 80), "RES_160X120"),
     ((121, 160), "RES_200X125"), ((64, 300), "RES_320X180"), ((1080, 1920), "RES_1920X1080")],
)
def test_vizdoom_renders_at_smallest_covering_resolution(size: tuple[int, int],
                                                         resolution: str) -> None:
    assert vizdoom_env.pick_resolution(size)[0] == resolution


# ---------------------------------------------------------------- contract of every env


@pytest.mark.parametrize("size", [64, (48, 80)])
@pytest.mark.parametrize("name", CONTRACT_ENVS)
def test_env_contract(make, name: str, size: object) -> None:
    env = make(name, frame_size=size, render_mode="rgb_array")
    height, width = parse_frame_size(size)  # type: ignore[arg-type]
    assert env.observation_space == gymnasium.spaces.Box(0, 255, (height, width, 3), np.uint8)
    assert isinstance(env.action_space, gymnasium.spaces.Discrete)
    names = env.unwrapped.action_names
    assert isinstance(names, tuple) and len(names) == env.action_space.n
    assert all(isinstance(n, str) for n in names)
    frame, info = env.reset(seed=3)
    assert frame.shape == (height, width, 3) and frame.dtype == np.uint8
    assert env.observation_space.contains(frame)
    assert info["frames"] == 0
    for step in range(1, 4):
        frame, reward, terminated, truncated, info = env.step(step % env.action_space.n)
        assert frame.shape == (height, width, 3) and frame.dtype == np.uint8
        assert isinstance(reward, float)
        assert isinstance(terminated, bool) and isinstance(truncated, bool)
        assert info["frames"] == step
    np.testing.assert_array_equal(env.render(), frame)
    with pytest.raises(ConfigError, match="action"):
        env.step(env.action_space.n)


@pytest.mark.parametrize("name", CONTRACT_ENVS)
def test_same_seed_same_actions_same_frames(make, name: str) -> None:
    env = make(name)
    actions = [int(a) for a in np.random.default_rng(0).integers(env.action_space.n, size=40)]
    first = rollout(env, 11, actions)
    other = rollout(env, 12, actions)  # in between, so the seed must really reset state
    second = rollout(env, 11, actions)
    assert len(first["frames"]) == len(second["frames"])
    for a, b in zip(first["frames"], second["frames"]):
        np.testing.assert_array_equal(a, b)
    assert first["rewards"] == second["rewards"] and first["ends"] == second["ends"]
    if name != "gym:CartPole-v1":  # CartPole's start states differ by 0.05 at most
        assert any(not np.array_equal(a, b) for a, b in zip(first["frames"], other["frames"]))


@pytest.mark.parametrize("name", ["vizdoom/TakeCover", "crafter"])
def test_seeded_reset_fixes_later_unseeded_episodes(make, name: str) -> None:
    env = make(name)
    env.reset(seed=5)
    first = [env.reset()[0] for _ in range(2)]
    env.reset(seed=5)
    again = [env.reset()[0] for _ in range(2)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_fake_env_passes_gymnasium_check_env() -> None:
    from gymnasium.utils.env_checker import check_env

    check_env(envs.FakeImageEnv(frame_size=(24, 40)), skip_render_check=True)


def test_takecover_passes_gymnasium_check_env(make) -> None:
    from gymnasium.utils.env_checker import check_env

    check_env(make("vizdoom/TakeCover").unwrapped, skip_render_check=True)


def test_closed_env_refuses_steps(make) -> None:
    env = make("vizdoom/TakeCover")
    env.reset(seed=0)
    env.close()
    env.close()  # twice is fine
    with pytest.raises(WorldsimError, match="closed"):
        env.step(NONE)


# ---------------------------------------------------------------- VizDoom TakeCover


def test_takecover_monsters_differ_between_seeds(make) -> None:
    env = make("vizdoom/TakeCover")
    runs = [rollout(env, seed, [NONE] * 100)["frames"] for seed in (0, 1)]
    differing = sum(not np.array_equal(a, b) for a, b in zip(*runs))
    assert differing > 30


def test_takecover_truncates_at_max_frames(make) -> None:
    env = make("vizdoom/TakeCover", max_frames=30)
    run = rollout(env, 0, [LEFT, RIGHT] * 50)
    assert len(run["ends"]) == 30
    assert run["ends"][-1] == (False, True)
    assert not any(terminated or truncated for terminated, truncated in run["ends"][:-1])
    assert run["infos"][-1]["frames"] == 30
    assert sum(run["rewards"]) == 30  # +1 per tic survived
    with pytest.raises(WorldsimError, match="reset"):
        env.step(NONE)


def test_takecover_frame_skip_caps_exactly_at_max_frames(make) -> None:
    env = make("vizdoom/TakeCover", max_frames=30, frame_skip=4)
    run = rollout(env, 0, [NONE] * 20)
    assert [info["frames"] for info in run["infos"]] == [0, 4, 8, 12, 16, 20, 24, 28, 30]
    assert run["ends"][-1] == (False, True)


def test_takecover_default_cap_is_2100(make) -> None:
    assert make("vizdoom/TakeCover").unwrapped.max_frames == 2100
    assert make("vizdoom/TakeCover", max_frames=0).unwrapped.max_frames is None


def test_takecover_death_terminates_and_frame_skip_counts_real_tics(make) -> None:
    # Standing still gets the player killed; the death tic must not depend on the skip.
    plain = rollout(make("vizdoom/TakeCover"), 4, [NONE] * 3000)
    assert plain["ends"][-1] == (True, False)
    death_tic = plain["infos"][-1]["frames"]
    assert 30 < death_tic < 2100 and len(plain["ends"]) == death_tic
    assert plain["infos"][-1]["health"] <= 0 < plain["infos"][0]["health"]
    assert sum(plain["rewards"]) == death_tic
    np.testing.assert_array_equal(plain["frames"][-1], plain["frames"][-2])  # last frame kept

    skipped = rollout(make("vizdoom/TakeCover", frame_skip=4), 4, [NONE] * 3000)
    tics = [info["frames"] for info in skipped["infos"]]
    assert tics[-1] == death_tic
    assert all(b - a == 4 for a, b in zip(tics[:-2], tics[1:-1]))
    assert skipped["ends"][-1] == (True, False)
    assert sum(skipped["rewards"]) == death_tic
    assert len(skipped["ends"]) == math.ceil(death_tic / 4)


def test_takecover_replay_reaches_the_state_that_stepping_reaches(make) -> None:
    """``replay`` skips the frames on the way, not the game: the same frame, info and
    future as ``reset`` and ``step``, and a clear error where the actions die first."""
    env = make("vizdoom/TakeCover", frame_skip=4, labels=True)
    actions = np.random.default_rng(3).integers(0, 3, 12).tolist()
    stepped = rollout(env, 9, actions + [RIGHT] * 6)
    later = rollout_from(env, *env.unwrapped.replay(9, actions), [RIGHT] * 6)
    np.testing.assert_array_equal(np.stack(later["frames"]),
                                  np.stack(stepped["frames"][len(actions):]))
    assert later["infos"] == stepped["infos"][len(actions):]
    assert later["rewards"] == stepped["rewards"][len(actions):]
    frame, info = env.unwrapped.replay(9, [])  # nothing to replay: the reset state
    np.testing.assert_array_equal(frame, stepped["frames"][0])
    assert info == stepped["infos"][0]

    death = rollout(env, 4, [NONE] * 3000)
    with pytest.raises(WorldsimError, match="ends after"):
        env.unwrapped.replay(4, [NONE] * (len(death["ends"]) + 1))


def test_takecover_labels_give_boxes_in_frame_pixels(make) -> None:
    def objects_after(frame_size: object) -> list[dict]:
        env = make("vizdoom/TakeCover", labels=True, frame_size=frame_size)
        run = rollout(env, 2, [NONE] * 40)
        return run["infos"][-1]["objects"]

    square = objects_after(64)
    wide = objects_after((48, 80))
    assert square, "monsters should be visible after 40 tics"
    assert {"name", "id", "x", "y", "width", "height"} <= set(square[0])
    assert any("Imp" in obj["name"] for obj in square)
    for obj in square:
        assert 0 <= obj["x"] and obj["x"] + obj["width"] <= 64
        assert 0 <= obj["y"] and obj["y"] + obj["height"] <= 64
    # Same episode, other frame size: the same boxes, rescaled per axis.
    assert [o["name"] for o in wide] == [o["name"] for o in square]
    for a, b in zip(square, wide):
        assert b["x"] == pytest.approx(a["x"] * 80 / 64)
        assert b["height"] == pytest.approx(a["height"] * 48 / 64)


def test_labels_are_off_by_default(make) -> None:
    _, info = make("vizdoom/TakeCover").reset(seed=0)
    assert "objects" not in info and info["health"] == 100


@pytest.mark.parametrize("scenario", sorted(vizdoom_env.SCENARIOS))
def test_every_vizdoom_scenario_runs(make, scenario: str) -> None:
    env = make(f"vizdoom/{scenario}", frame_size=(48, 80))
    frame, _ = env.reset(seed=0)
    assert frame.shape == (48, 80, 3) and frame.std() > 0  # a real picture, not a blank
    for action in range(env.action_space.n):
        frame, _, terminated, truncated, info = env.step(action)
        assert frame.shape == (48, 80, 3)
        if terminated or truncated:
            break
    assert info["frames"] >= 1


def test_vizdoom_game_variables_are_in_info(make) -> None:
    _, info = make("vizdoom/DefendTheCenter").reset(seed=0)
    assert {"ammo2", "health"} <= set(info)


# ---------------------------------------------------------------- Crafter


def test_crafter_info_and_truncation_at_max_steps(make) -> None:
    env = make("crafter", max_steps=5)
    _, info = env.reset(seed=0)
    assert set(info["achievements"]) == set(crafter_env.ACHIEVEMENTS)
    run = rollout(env, 0, [0] * 10)
    assert len(run["ends"]) == 5 and run["ends"][-1] == (False, True)
    last = run["infos"][-1]
    assert set(last["achievements"]) == set(crafter_env.ACHIEVEMENTS)
    assert last["discount"] == 1.0 and "inventory" in last


def test_crafter_death_is_terminated(make) -> None:
    env = make("crafter")
    env.reset(seed=0)
    env.unwrapped._env._player.health = 0  # crafter checks health after each step
    _, _, terminated, truncated, info = env.step(0)
    assert (terminated, truncated) == (True, False) and info["discount"] == 0


def test_crafter_score_known_values() -> None:
    names = crafter_env.ACHIEVEMENTS
    assert envs.crafter_score([0.0] * 22) == 0.0
    assert envs.crafter_score({name: 100.0 for name in names}) == pytest.approx(100.0)
    one = {name: 0.0 for name in names} | {"collect_wood": 100.0}
    assert envs.crafter_score(one) == pytest.approx(math.exp(math.log(101) / 22) - 1)
    prefixed = {f"achievement_{name}": 10.0 for name in names}
    assert envs.crafter_score(prefixed) == pytest.approx(10.0)
    mixed = np.array([50.0] * 11 + [0.0] * 11)
    assert envs.crafter_score(mixed) == pytest.approx(math.sqrt(51) - 1)


@pytest.mark.parametrize(
    "rates",
    [[0.5] * 21, {"collect_wood": 1.0}, [101.0] * 22, [-1.0] * 22,
     {**{name: 0.0 for name in crafter_env.ACHIEVEMENTS}, "fly": 1.0}],
)
def test_crafter_score_rejects_bad_input(rates: object) -> None:
    with pytest.raises(ConfigError):
        envs.crafter_score(rates)  # type: ignore[arg-type]


def test_crafter_success_rates_from_episodes() -> None:
    base = {name: 0 for name in crafter_env.ACHIEVEMENTS}
    episodes = [base | {"collect_wood": 3}, base | {"collect_wood": 1, "wake_up": 1},
                base, base | {"wake_up": 2}]
    rates = envs.crafter_success_rates(episodes)
    assert rates["collect_wood"] == 50.0 and rates["wake_up"] == 50.0
    assert rates["collect_diamond"] == 0.0 and len(rates) == 22
    with pytest.raises(ConfigError):
        envs.crafter_success_rates([])


# ---------------------------------------------------------------- fake


def test_fake_block_falls_and_kills_on_contact() -> None:
    env = envs.FakeImageEnv(max_steps=100)
    _, info = env.reset(seed=0)
    row, col = info["obstacle"]
    assert row == 0 and info["player"] == (7, 4)
    _, _, _, _, info = env.step(0)
    assert info["obstacle"] == (1, col)  # one row per step, same column
    # Walk under the block and wait: it must land on the player.
    target = env.reset(seed=0)[1]["obstacle"][1]
    terminated = False
    for _ in range(20):
        player_col = env.unwrapped._player[1]
        action = 0 if player_col == target else (1 if player_col > target else 2)
        _, reward, terminated, truncated, info = env.step(action)
        assert reward == 1.0
        if terminated:
            break
    assert terminated and info["player"] == info["obstacle"]


def test_fake_truncates_at_max_steps_when_dodging() -> None:
    env = envs.FakeImageEnv(max_steps=12)
    env.reset(seed=1)
    for step in range(12):
        player_row, player_col = env.unwrapped._player
        block_row, block_col = env.unwrapped._obstacle
        # Step sideways whenever the block is in our column.
        action = 0
        if block_col == player_col:
            action = 1 if player_col > 0 else 2
        _, _, terminated, truncated, _ = env.step(action)
        assert not terminated
    assert truncated
