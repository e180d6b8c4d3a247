"""Physics-consistency probes: each must pass the real world and fail the wrong ones."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from benchmarks.probes import (PROBES, CopyLastSimulator, NoiseSimulator, Simulator, Start,
                               TrueSimulator, count_monotonicity, object_permanence,
                               run_probes, static_stability, world_model_simulator)
from benchmarks.probes.core import constant_policy, draw_clips, dream
from benchmarks.probes.measure import count_objects, find_blobs, locate
from benchmarks.probes.objects import _reappearances
from envs import physics
from worldsim.errors import ConfigError

# Small enough for a few seconds in all, large enough that a lucky guess cannot pass.
# The physics probes; tests/test_takecover_probes.py validates those of TakeCover.
SETTINGS = {
    "gravity": {"starts": 3},
    "bounce": {"starts": 3},
    "solid_walls": {"starts": 3},
    "action_response": {"starts": 3},
    "object_permanence": {"starts": 3},
    "count_monotonicity": {"starts": 3},
    "static_stability": {"starts": 2, "steps": 40, "checkpoints": 4, "chunk": 15},
    "long_rollout": {"starts": 2, "steps": 120, "checkpoints": 6, "chunk": 50},
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_probe_scores_the_real_world_high_and_wrong_worlds_low(name: str) -> None:
    probe = PROBES[name][1]
    settings = SETTINGS[name]
    true = probe(TrueSimulator(), **settings)
    copy = probe(CopyLastSimulator(), **settings)
    noise = probe(NoiseSimulator(), **settings)
    assert true.score >= 0.9, true
    assert noise.score <= 0.5, noise
    if name == "static_stability":
        assert copy.score == 1.0  # nothing moves: copying is exact
    else:
        assert copy.score <= 0.5, copy
    assert true.name == name and true.world == PROBES[name][0]
    json.dumps(true.to_dict())  # details are plain data


@dataclass
class Altered:
    """A simulator whose dreamt frames ``(B, K, H, W, 3)`` go through ``alter`` first."""

    base: Simulator
    alter: Callable[[np.ndarray], np.ndarray]
    name: str = "altered"

    def simulate(self, context_frames: np.ndarray, context_actions: np.ndarray,
                 future_actions: np.ndarray, starts: Sequence[Start]) -> np.ndarray:
        return self.alter(self.base.simulate(context_frames, context_actions, future_actions,
                                             starts))


def brighten_slowly(frames: np.ndarray) -> np.ndarray:
    """A grey level brighter every 2 steps: a slowly drifting scene."""
    steps = np.arange(1, frames.shape[1] + 1)[None, :, None, None, None]
    return np.clip(frames.astype(np.int64) + (steps + 1) // 2, 0, 255).astype(np.uint8)


def erase_objects_after_4_steps(frames: np.ndarray) -> np.ndarray:
    later = frames[:, 4:]  # a view: painting it paints the frames
    for colour in physics.PALETTE:
        later[(later == colour).all(axis=-1)] = physics.BACKGROUND
    return frames


def blur_and_noise(frames: np.ndarray) -> np.ndarray:
    """Half a 3x3 box blur plus Gaussian noise of 6 grey levels: a decent but imperfect model."""
    pixels = frames.astype(np.float64)
    padded = np.pad(pixels, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    height, width = frames.shape[2:4]
    box = sum(padded[:, :, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
              for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    noise = np.random.default_rng(0).normal(0, 6, frames.shape)
    return np.clip(np.rint(0.5 * pixels + 0.5 * box + noise), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_probe_forgives_blur_and_pixel_noise(name: str) -> None:
    blurry = Altered(TrueSimulator(check_context=False), blur_and_noise)
    assert PROBES[name][1](blurry, **SETTINGS[name]).score >= 0.8


def test_static_stability_catches_drift() -> None:
    drifting = Altered(CopyLastSimulator(), brighten_slowly)
    result = static_stability(drifting, **SETTINGS["static_stability"])
    assert result.score <= 0.5
    assert result.details["drift"] > 5 and result.details["error"][-1] > 15


def test_vanishing_objects_fail_permanence_and_count() -> None:
    vanishing = Altered(TrueSimulator(), erase_objects_after_4_steps)
    assert object_permanence(vanishing, **SETTINGS["object_permanence"]).score == 0
    assert count_monotonicity(vanishing, **SETTINGS["count_monotonicity"]).score < 0.5


def test_permanence_events_need_the_object_seen_in_the_context() -> None:
    clips = draw_clips("physics/Occlusion", count=8, context=4, horizon=32, seed=3,
                       policy=constant_policy(0))
    events = [event for clip in clips for event in _reappearances(clip, 2)]
    assert events
    unseen = 0
    for clip in clips:
        for index, k, hidden in _reappearances(clip, 2):
            assert clip.true_infos[0]["objects"][index]["visible_fraction"] == 1.0
            assert 0 < hidden < k
        # Objects behind the bar when the dream starts come back too, but are no events.
        unseen += sum(obj["visible_fraction"] < 1.0 for obj in clip.true_infos[0]["objects"])
    assert unseen > 0


def test_find_blobs_labels_connected_pixels_only() -> None:
    masks = np.zeros((2, 9, 9), bool)
    masks[0, 1:7, 1] = masks[0, 6, 1:7] = masks[0, 1:7, 6] = True  # a U: one blob
    masks[0, 8, 8] = True  # a touching-diagonal pixel is another blob
    masks[0, 7, 7] = True
    masks[1, 2:4, 2:5] = True
    blobs = find_blobs(masks)
    assert blobs.frame.tolist() == [0, 0, 0, 1]
    assert sorted(blobs.area.tolist()) == [1, 1, 6, 16]
    np.testing.assert_allclose(blobs.centroid[blobs.frame == 1], [[3.5, 3.0]])  # (x, y)
    assert find_blobs(np.zeros((3, 4, 4), bool)).area.size == 0


def test_locate_and_count_by_colour_and_size() -> None:
    frames = np.zeros((3, 20, 20, 3), np.uint8)
    frames[0, 4:8, 10:14] = physics.BALL  # 16 pixels
    frames[0, 15, 15] = physics.BALL  # a speck, too small to be the object
    frames[1, 2:6, 2:6] = (200, 60, 30)  # within tolerance of the ball's colour
    frames[1, 10:14, 10:14] = physics.BODY
    found = locate(frames, physics.BALL, area=16)
    np.testing.assert_allclose(found[:2], [[12.0, 6.0], [4.0, 4.0]])
    assert np.isnan(found[2]).all()
    assert count_objects(frames, physics.PALETTE, area=16).tolist() == [1, 2, 0]


def test_chunked_dreams_equal_one_call_and_true_simulator_checks_its_start() -> None:
    clips = draw_clips("physics/Bounce", count=2, context=3, horizon=12, seed=1,
                       policy=constant_policy(3))
    whole = dream(TrueSimulator(), clips)
    np.testing.assert_array_equal(whole, np.stack([clip.true_frames for clip in clips]))
    np.testing.assert_array_equal(dream(TrueSimulator(), clips, chunk=5), whole)
    wrong = [clips[1].start, clips[0].start]
    with pytest.raises(ConfigError, match="not the real frame"):
        TrueSimulator().simulate(np.stack([c.context_frames for c in clips]),
                                 np.zeros((2, 2), np.int64), np.zeros((2, 1), np.int64), wrong)


def test_run_probes_gives_json_and_accepts_a_plain_function(tmp_path: Path) -> None:
    def copy_last(context_frames: np.ndarray, context_actions: np.ndarray,
                  future_actions: np.ndarray) -> np.ndarray:
        return np.repeat(context_frames[:, -1:], future_actions.shape[1], axis=1)

    report = run_probes(copy_last, ["gravity", "solid_walls"], quick=True)
    assert report["simulator"] == "copy_last" and set(report["probes"]) == {"gravity",
                                                                           "solid_walls"}
    assert report["mean_score"] == pytest.approx(0.0, abs=1e-9)
    json.dumps(report)
    with pytest.raises(ConfigError, match="gravty"):
        run_probes(copy_last, ["gravty"])

    from benchmarks.probes.__main__ import main

    assert main(["--simulator", "true", "--quick", "--probes", "bounce",
                 "--out-dir", str(tmp_path)]) == 0
    written = json.loads(next(tmp_path.glob("probes-*.json")).read_text())
    assert written["results"]["probes"]["bounce"]["score"] == 1.0


def test_world_model_simulator_dreams_frames_of_the_right_shape() -> None:
    import torch

    from worldsim.config import preset
    from worldsim.world_model import WorldModel, WorldModelInfo

    torch.manual_seed(0)
    info = WorldModelInfo(env="physics/Body", frame_size=(32, 32),
                          action_names=physics.BodyEnv.ACTION_NAMES)
    simulator = world_model_simulator(WorldModel(preset("tiny", num_actions=5), info).eval())
    clips = draw_clips("physics/Body", count=2, context=6, horizon=3, seed=0,
                       policy=constant_policy(2), options={"frame_size": 32})
    dreamt = dream(simulator, clips)
    assert dreamt.shape == (2, 3, 32, 32, 3) and dreamt.dtype == np.uint8
    with pytest.raises(ConfigError, match="trained on physics/Body"):
        run_probes(simulator, ["gravity"], quick=True)
    # with no options given, probes start from the world as the model knows it (32 x 32)
    report = run_probes(simulator, ["action_response"], quick=True)
    assert 0.0 <= report["probes"]["action_response"]["score"] <= 1.0


def test_run_probes_picks_the_probes_of_the_simulators_world() -> None:
    class SpawnOnly(CopyLastSimulator):
        world = "physics/Spawn"

    report = run_probes(SpawnOnly(), quick=True, world_options={"physics/Spawn": {"size": 4}})
    assert list(report["probes"]) == ["count_monotonicity"]
    assert report["probes"]["count_monotonicity"]["score"] == 0.0
