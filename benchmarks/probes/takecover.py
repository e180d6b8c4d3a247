"""Probes of VizDoom TakeCover: does a dream obey the laws of the game it imitates?

Each probe dreams from real starts (seeded TakeCover episodes, a few frames of real play as
context), measures the decoded frames and compares them with the real game replayed from
the same start under the same actions (``TrueSimulator``):

========================  ===================================================================
probe                     law
========================  ===================================================================
``action_following``      the view slides sideways as the actions (and the momentum) say
``wall_stop``             held against a side wall, the view stops moving when the real one
                          does
``monster_count``         monsters never vanish: in a still view their count never drops
``fireball_persistence``  a fireball in flight keeps flying to where the real one goes
========================  ===================================================================

The truth. VizDoom is deterministic given ``reset(seed=...)`` and the actions, so a
``Start`` (seed and every action since the reset) replays exactly: ``TrueSimulator`` works
unchanged. Starts are cut from long real plays (``draw_takecover_clips``) where the law
shows (the player reaches a wall, an imp appears, a fireball crosses the view) and the
player survives the whole dream.

Measures. The player only strafes, so the view's motion is a horizontal slide of the whole
picture: ``view_shifts`` finds it between consecutive frames by matching their column
profiles (mean grey level per column) at sub-pixel shifts. Monsters and fireballs are found
by ``TakeCoverDetector``, a tiny convolutional net trained on real frames labelled by the
engine (``make_env("vizdoom/TakeCover", labels=True)`` gives the box of every visible
object) in about a minute on one CPU core, and cached as a 30 kB safetensors file outside
the repository (``load_detector``).

Fairness. Imps fire at moments a world model cannot know from frames, the view shows only
part of the room and a 64x64 imp is a few dark pixels that the detector counts right in
about 70% of frames, so every probe compares the dream with what the *same measure* finds
in the real frames of the same start: the detector's misses and a slide the estimator
misreads count the same in reality and in the dream, and the true simulator scores 1 by
construction. Where copying the last frame obeys the law (it never loses a monster), the
probe also asks for what reality does next (the new monsters).

Distances are given in pixels of a 64-pixel-wide frame and scale with the frame width.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from benchmarks.probes.core import (Clip, ProbeResult, SimulateFunction, Simulator, Start,
                                    as_simulator, dream, with_context)
from benchmarks.probes.measure import Blobs, find_blobs
from benchmarks.probes.motion import _mean_or_none
from envs.frames import DEFAULT_FRAME_SIZE, frame_skip, parse_frame_size
from envs.registry import make_env
from envs.vizdoom_env import SCENARIOS
from worldsim.errors import CheckpointError, ConfigError
from worldsim.utils import atomic_path

WORLD = "vizdoom/TakeCover"
MONSTERS = ("DoomImp",)
"""Engine object names that count as monsters."""
FIREBALLS = ("DoomImpBall",)
"""Engine object names that count as fireballs."""
NONE, LEFT, RIGHT = 0, 1, 2
"""TakeCover's actions."""
REFERENCE_WIDTH = 64
"""Frame width at which pixel distances are given."""
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "worldsim" / "probes"
"""Where ``load_detector`` keeps trained detectors (outside the repository)."""
DETECTOR_FORMAT = "worldsim-takecover-detector"


# ---------------------------------------------------------------------------------------
# The view's horizontal slide


def view_shifts(frames: np.ndarray, max_shift: float | None = None,
                resolution: float = 0.05) -> np.ndarray:
    """How far the picture slid sideways between consecutive frames.

    Each frame becomes its column profile (mean grey level per column, mean removed); the
    shift ``d`` of frame ``k`` is the one that minimises the mean squared difference between
    its profile and the previous profile moved by ``d`` (linear interpolation), over the
    columns that stay inside the frame for every candidate.

    Args:
        frames: ``(N, H, W, 3)`` frames.
        max_shift: the largest shift tried, in pixels (default ``W / 8``).
        resolution: the step between tried shifts, in pixels.

    Returns:
        ``(N - 1,)`` shifts in pixels; positive when the content moved right.
    """
    grey = frames.astype(np.float64).mean(axis=-1)  # (N, H, W)
    profiles = grey.mean(axis=1)  # (N, W)
    profiles -= profiles.mean(axis=1, keepdims=True)
    width = profiles.shape[1]
    max_shift = width / 8 if max_shift is None else max_shift
    margin = int(math.ceil(max_shift)) + 1
    if width <= 2 * margin + 2:
        raise ConfigError(f"frames {width} pixels wide are too narrow to measure shifts of up "
                          f"to {max_shift} pixels")
    # Rounded, so that "no shift" is exactly 0 (a frozen dream must read as still).
    candidates = np.round(np.arange(-max_shift, max_shift + resolution / 2, resolution), 9)
    columns = np.arange(margin, width - margin)
    source = columns[None, :] - candidates[:, None]  # (D, w): where each column came from
    left = np.floor(source).astype(np.int64)
    weight = source - left
    previous, current = profiles[:-1], profiles[1:]  # (N-1, W)
    moved = previous[:, left] * (1 - weight) + previous[:, left + 1] * weight  # (N-1, D, w)
    error = ((moved - current[:, None, columns]) ** 2).mean(axis=-1)  # (N-1, D)
    return candidates[error.argmin(axis=1)]


def _moving(shifts: np.ndarray, tolerance: float) -> np.ndarray:
    """Steps whose shift, averaged with its neighbours (3 steps), exceeds ``tolerance``."""
    padded = np.pad(shifts, 1, mode="edge")
    return np.abs((padded[:-2] + padded[1:-1] + padded[2:]) / 3) > tolerance


def _stop_step(shifts: np.ndarray, tolerance: float) -> int:
    """The step (1-based) from which the view never moves again; 1 if it never moved."""
    moving = np.flatnonzero(_moving(shifts, tolerance))
    return int(moving[-1]) + 2 if len(moving) else 1


def _pixels(frames: np.ndarray, distance: float) -> float:
    """``distance`` (pixels of a 64-pixel-wide frame) in pixels of ``frames``."""
    return distance * frames.shape[-2] / REFERENCE_WIDTH


# ---------------------------------------------------------------------------------------
# The monster and fireball detector


class ObjectSegmenter(nn.Module):
    """Per pixel, the logits of (monster centre line, fireball): four 3x3 convolutions at
    full resolution (dilated to see a whole imp) and a 1x1 head.

    Args:
        width: channels of the hidden layers.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=4, dilation=4), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Conv2d(width, 2, 1)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # Objects cover ~1% of the pixels: start by predicting "nothing" almost everywhere.
        nn.init.constant_(self.head.bias, -4.0)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` frames in [0, 1] -> ``(B, 2, H, W)`` logits."""
        # Centred and scaled to about unit spread (TakeCover is a dim, brownish grey).
        return self.head(self.body((frames - 0.45) / 0.25))  # (B, 2, H, W)


@dataclass
class DetectorConfig:
    """How ``train_detector`` trains a detector (saved with it)."""

    width: int = 16  # hidden channels of the segmenter
    episodes: int = 8  # real episodes played for training frames (sticky random actions)
    frame_stride: int = 2  # keep every n-th frame of them
    max_frames: int = 2000  # at most this many training frames
    steps: int = 700  # optimiser steps
    batch_size: int = 16  # real frames per step
    noise_frames: int = 4  # uniform-noise frames per step, labelled "nothing there"
    # Half the real frames are blurred and noised at random, as decoded dreams are.
    lr: float = 5e-3  # peak learning rate (one-cycle schedule)
    monster_weight: float = 15.0  # weight of monster pixels in the loss (they are ~0.5%)
    fireball_weight: float = 10.0  # weight of fireball pixels in the loss
    seed: int = 0  # episode seeds and training noise


class TakeCoverDetector:
    """Finds monsters and fireballs in TakeCover frames with a trained ``ObjectSegmenter``.

    Monsters are counted as blobs of the predicted centre-line mask (a line down the middle
    of each labelled imp, so that imps standing side by side stay apart); fireballs are the
    blobs of the predicted fireball mask (the labelled boxes).

    Args:
        segmenter: the trained net.
        frame_size: ``(H, W)`` of the frames it was trained on.
        config: how it was trained.
        batch_size: frames per forward pass.
    """

    def __init__(self, segmenter: ObjectSegmenter, frame_size: tuple[int, int],
                 config: DetectorConfig, batch_size: int = 128) -> None:
        self.segmenter = segmenter.eval()
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self.config = config
        self.batch_size = batch_size

    @property
    def min_monster_area(self) -> int:
        """Pixels a centre-line blob needs to count as a monster (half a 64-high frame's
        imp)."""
        return max(2, round(3 * self.frame_size[0] / REFERENCE_WIDTH))

    def masks(self, frames: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 frames -> ``(N, 2, H, W)`` bool (monster line, fireball)."""
        if tuple(frames.shape[1:3]) != self.frame_size:
            raise ConfigError(f"this detector was trained on {self.frame_size[0]}x"
                              f"{self.frame_size[1]} frames, got {frames.shape[1]}x"
                              f"{frames.shape[2]}; use load_detector(frame_size=...)")
        parts = []
        with torch.no_grad():
            for begin in range(0, len(frames), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(rearrange(
                    frames[begin:begin + self.batch_size], "n h w c -> n c h w")))
                parts.append((self.segmenter(batch.float() / 255) > 0).numpy())
        return np.concatenate(parts) if parts else np.zeros((0, 2, *self.frame_size), bool)

    def count_monsters(self, frames: np.ndarray) -> np.ndarray:
        """``(N,)`` int: monsters seen in each of ``(N, H, W, 3)`` frames."""
        blobs = find_blobs(self.masks(frames)[:, 0])
        keep = blobs.area >= self.min_monster_area
        return np.bincount(blobs.frame[keep], minlength=len(frames))

    def fireballs(self, frames: np.ndarray) -> Blobs:
        """The fireball blobs of ``(N, H, W, 3)`` frames (frame index, centroid, area)."""
        return find_blobs(self.masks(frames)[:, 1])

    def save(self, path: str | Path) -> None:
        """Write the detector as one safetensors file (atomically)."""
        from safetensors.torch import save_file

        header = {"format": DETECTOR_FORMAT, "frame_size": list(self.frame_size),
                  "config": asdict(self.config)}
        tensors = {name: value.contiguous() for name, value in
                   self.segmenter.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"worldsim": json.dumps(header)})

    @classmethod
    def load(cls, path: str | Path) -> TakeCoverDetector:
        """Read a detector written by ``save``.

        Raises:
            CheckpointError: the file is missing or is not a TakeCover detector.
        """
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                header = json.loads((handle.metadata() or {}).get("worldsim", "{}"))
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        except Exception as error:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read a TakeCover detector from {path}: {error}; "
                                  "delete it to train a new one") from error
        if header.get("format") != DETECTOR_FORMAT:
            raise CheckpointError(f"{path} is not a TakeCover detector; delete it to train "
                                  "a new one")
        try:
            config = DetectorConfig(**header["config"])
            segmenter = ObjectSegmenter(config.width)
            segmenter.load_state_dict(tensors)
        except (KeyError, TypeError, RuntimeError) as error:  # another version's file
            raise CheckpointError(f"{path} holds a TakeCover detector of another version "
                                  f"({error}); delete it to train a new one") from error
        height, width = header["frame_size"]
        return cls(segmenter, (height, width), config)


def _detector_targets(objects: Sequence[Mapping[str, Any]], frame_size: tuple[int, int]
                      ) -> np.ndarray:
    """``(2, H, W)`` float targets of one frame: a one-pixel line down the middle of each
    monster's box, and every fireball's box."""
    height, width = frame_size
    target = np.zeros((2, height, width), np.float32)
    for item in objects:
        top = int(np.clip(math.floor(item["y"]), 0, height - 1))
        bottom = max(int(math.ceil(item["y"] + item["height"])), top + 1)
        left = int(np.clip(math.floor(item["x"]), 0, width - 1))
        if item["name"] in MONSTERS:
            middle = int(np.clip(item["x"] + item["width"] / 2, 0, width - 1))
            target[0, top:bottom, middle] = 1
        elif item["name"] in FIREBALLS:
            right = max(int(math.ceil(item["x"] + item["width"])), left + 1)
            target[1, top:bottom, left:right] = 1
    return target


def _training_frames(frame_size: tuple[int, int], config: DetectorConfig
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Real labelled frames ``(N, H, W, 3)`` uint8 and their targets ``(N, 2, H, W)``."""
    env = make_env(WORLD, frame_size=frame_size, labels=True, max_frames=0)
    frames, targets = [], []
    try:
        for episode in range(config.episodes):
            rng = np.random.default_rng([config.seed, episode])
            plan = sticky_actions(rng, 10_000)
            frame, info = env.reset(seed=int(rng.integers(2**31)))
            for step, action in enumerate(plan):
                if step % config.frame_stride == 0:
                    frames.append(frame)
                    targets.append(_detector_targets(info["objects"], frame_size))
                frame, _, terminated, truncated, info = env.step(action)
                if terminated or truncated or len(frames) >= config.max_frames:
                    break
    finally:
        env.close()
    return np.stack(frames), np.stack(targets)


def _degrade(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Blur and noise like a decoded dream's, at a random strength per frame: ``(B, 3, H, W)``
    in [0, 1], half of them left sharp."""
    count = len(images)
    blurred = F.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
    blur = torch.rand(count, 1, 1, 1, generator=generator)
    sigma = torch.rand(count, 1, 1, 1, generator=generator) * 8 / 255
    sharp = torch.rand(count, 1, 1, 1, generator=generator) < 0.5
    noisy = torch.lerp(images, blurred, blur) + sigma * torch.randn(images.shape,
                                                                    generator=generator)
    return torch.where(sharp, images, noisy.clamp(0, 1))


def train_detector(frame_size: int | str | tuple[int, int] = DEFAULT_FRAME_SIZE,
                   config: DetectorConfig | None = None) -> TakeCoverDetector:
    """Train a monster and fireball detector on freshly played, engine-labelled frames.

    The default config plays 8 episodes (about a thousand frames kept) and takes 700 steps:
    about a minute on one CPU core (30 s idle, 80 s next to a training job).

    Args:
        frame_size: ``(H, W)`` of the frames it will see (or as ``make_env`` takes it).
        config: training settings.

    Returns:
        The trained detector.
    """
    config = config or DetectorConfig()
    size = parse_frame_size(frame_size)
    frames, targets = _training_frames(size, config)  # (N, H, W, 3), (N, 2, H, W)
    images = torch.from_numpy(rearrange(frames, "n h w c -> n c h w")).float() / 255
    labels = torch.from_numpy(targets)
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        segmenter = ObjectSegmenter(config.width)
    optimizer = torch.optim.Adam(segmenter.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr,
                                                   total_steps=config.steps)
    positive_weight = torch.tensor([config.monster_weight, config.fireball_weight])
    positive_weight = rearrange(positive_weight, "c -> 1 c 1 1")
    for _ in range(config.steps):
        rows = torch.randint(len(images), (config.batch_size,), generator=generator)
        noise = torch.rand(config.noise_frames, *images.shape[1:], generator=generator)
        batch = torch.cat([_degrade(images[rows], generator), noise])  # (B, 3, H, W)
        target = torch.cat([labels[rows], labels.new_zeros(config.noise_frames,
                                                           *labels.shape[1:])])
        loss = F.binary_cross_entropy_with_logits(segmenter(batch), target,
                                                  pos_weight=positive_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return TakeCoverDetector(segmenter, size, config)


def load_detector(frame_size: int | str | tuple[int, int] = DEFAULT_FRAME_SIZE,
                  cache_dir: str | Path | None = None, config: DetectorConfig | None = None
                  ) -> TakeCoverDetector:
    """The cached detector for ``frame_size`` and ``config``, trained (and cached) first if
    there is none.

    Args:
        frame_size: ``(H, W)`` of the frames to measure (or as ``make_env`` takes it).
        cache_dir: where detectors are kept (default ``DEFAULT_CACHE_DIR``), one file per
            frame size and config.
        config: training settings (default ``DetectorConfig()``).

    Returns:
        The detector.
    """
    config = config or DetectorConfig()
    height, width = parse_frame_size(frame_size)
    digest = hashlib.sha1(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()
    path = (Path(cache_dir or DEFAULT_CACHE_DIR)
            / f"takecover-{height}x{width}-{digest[:10]}.safetensors")
    if path.exists():
        detector = TakeCoverDetector.load(path)
        if detector.config == config and detector.frame_size == (height, width):
            return detector
    detector = train_detector((height, width), config)
    detector.save(path)
    return detector


# ---------------------------------------------------------------------------------------
# Real starts


def sticky_actions(rng: np.random.Generator, length: int, longest: int = 12) -> np.ndarray:
    """``length`` actions in runs of 1 to ``longest`` steps of one random action."""
    actions: list[int] = []
    while len(actions) < length:
        actions += [int(rng.integers(3))] * int(rng.integers(1, longest + 1))
    return np.array(actions[:length], np.int64)


@dataclass
class Play:
    """A real TakeCover episode from a seeded reset, cut where the player could act no more."""

    seed: int
    """Its ``reset(seed=...)``."""
    actions: np.ndarray
    """(n,) int64 the actions taken."""
    frames: np.ndarray
    """(n + 1, H, W, 3) uint8 the frame after the reset and after each action."""
    infos: list[dict[str, Any]]
    """n + 1 env infos, labelled objects included."""
    warmup: int
    """Steps before the probe's own actions begin (the first step a dream may start at)."""


PlayPolicy = Callable[[np.random.Generator], tuple[np.ndarray, int]]
"""``policy(rng)`` -> (every action of a play, its warm-up length)."""
ChooseStart = Callable[[np.random.Generator, Play, int, int], int | None]
"""``choose(rng, play, first, last)`` -> the play's step of the last context frame, within
``[first, last]``, or None when no start of this play shows the law."""


def _default_detector(options: Mapping[str, Any] | None) -> TakeCoverDetector:
    """The cached detector for the frame size of ``options``."""
    return load_detector((options or {}).get("frame_size", DEFAULT_FRAME_SIZE))


def _steps(tics: int, options: Mapping[str, Any] | None) -> int:
    """A span of game time, given in tics, in steps of the env of ``options`` (each step
    holds its action ``frame_skip`` tics); at least 1."""
    return max(1, round(tics / frame_skip(options)))


def _with_labels(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` with the engine's labels turned on (they are free and some probes need
    them)."""
    return {**(options or {}), "labels": True}


def _play(env: Any, seed: int, actions: np.ndarray, warmup: int) -> Play:
    """Play ``actions`` from ``reset(seed)``, stopping before the step that ends the episode
    (after it the game cannot be stepped, so no dream may reach it)."""
    frame, info = env.reset(seed=seed)
    frames, infos = [frame], [info]
    for action in actions:
        frame, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
        frames.append(frame)
        infos.append(info)
    taken = len(frames) - 1
    return Play(seed, actions[:taken], np.stack(frames), infos, warmup)


def draw_takecover_clips(*, count: int, context: int, horizon: int, seed: int,
                         policy: PlayPolicy, choose: ChooseStart,
                         options: Mapping[str, Any] | None = None,
                         max_tries: int | None = None) -> list[Clip]:
    """Play real TakeCover episodes and cut ``count`` clips where the law under test shows.

    Try ``i`` seeds ``numpy.random.default_rng([seed, i])``, which gives the episode's reset
    seed, the policy's randomness and the choice of start: the clips depend on ``seed``
    alone. The dream's actions are the play's own actions after the start, and the player
    survives every step of them.

    Args:
        count: clips wanted.
        context: real frames ``T`` per clip (at least 1).
        horizon: future actions ``K`` per clip.
        seed: fixes everything.
        policy: the actions of a play and its warm-up length.
        choose: the start (step of the last context frame) of a play, or None.
        options: ``make_env`` options (``labels`` is turned on).
        max_tries: plays to try before giving up (default ``30 * count``).

    Returns:
        ``count`` clips.

    Raises:
        ConfigError: too few plays showed the law.
    """
    if context < 1 or horizon < 1 or count < 1:
        raise ConfigError(f"a probe needs context >= 1, horizon >= 1 and starts >= 1; got "
                          f"context={context}, horizon={horizon}, starts={count}")
    options = _with_labels(options)
    env = make_env(WORLD, **options)
    clips: list[Clip] = []
    tries = max_tries or 30 * count
    try:
        for attempt in range(tries):
            rng = np.random.default_rng([seed, attempt])
            episode_seed = int(rng.integers(2**31))
            actions, warmup = policy(rng)
            play = _play(env, episode_seed, np.asarray(actions, np.int64), warmup)
            first = max(context - 1, play.warmup)
            last = len(play.frames) - 1 - horizon
            step = choose(rng, play, first, last) if first <= last else None
            if step is None:
                continue
            start = Start(WORLD, options, episode_seed,
                          tuple(int(a) for a in play.actions[:step]))
            clips.append(Clip(start, play.frames[step - context + 1:step + 1],
                              play.actions[step - context + 1:step],
                              play.actions[step:step + horizon],
                              play.frames[step + 1:step + horizon + 1],
                              play.infos[step:step + horizon + 1]))
            if len(clips) == count:
                return clips
    finally:
        env.close()
    raise ConfigError(
        f"only {len(clips)} of {tries} {WORLD} plays (options {options}) showed what the "
        f"probe measures within a horizon of {horizon} steps; ask for fewer starts or a "
        "different horizon"
    )


def _draw_and_dream(simulator: Simulator | SimulateFunction, **draw: Any
                    ) -> tuple[list[Clip], np.ndarray]:
    """``draw_takecover_clips(**draw)`` and their dreams ``(B, K, H, W, 3)`` uint8."""
    clips = draw_takecover_clips(**draw)
    return clips, dream(as_simulator(simulator), clips)


# ---------------------------------------------------------------------------------------
# The probes


def _choose_by_shifts(accept: Callable[[np.ndarray, float], bool], horizon: int,
                      tolerance: float) -> ChooseStart:
    """Choose, in random order, a start whose ``horizon`` real shifts after it pass
    ``accept(shifts, tolerance in pixels of the play's frames)``."""
    def choose(rng: np.random.Generator, play: Play, first: int, last: int) -> int | None:
        shifts = view_shifts(play.frames[first:last + horizon + 1])
        limit = _pixels(play.frames, tolerance)
        for step in rng.permutation(np.arange(first, last + 1)):
            if accept(shifts[step - first:step - first + horizon], limit):
                return int(step)
        return None
    return choose


def _shifts(clip: Clip, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(K,)`` real and ``(K,)`` dreamt shifts of a clip's future (``frames`` dreamt)."""
    return (view_shifts(with_context(clip, clip.true_frames)),
            view_shifts(with_context(clip, frames)))


def action_following(simulator: Simulator | SimulateFunction, *, starts: int = 6,
                     horizon: int = 24, context: int = 4, seed: int = 0,
                     options: Mapping[str, Any] | None = None,
                     tolerance: float = 0.25) -> ProbeResult:
    """Does the view slide the way the actions make the real one slide?

    Runs of 1 to 12 steps of random actions after a warm-up of 8 to 40 real steps. With
    ``r[k]`` the real and ``s[k]`` the dreamt horizontal shift of the picture at step ``k``
    (``view_shifts``; the real one includes the player's momentum after a key is let go)
    and ``τ`` the ``tolerance``, a step is right when ``|s - r| <= max(τ, |r| / 2)`` (same
    direction, within half the real speed). A real step is *moving* when ``|r| > τ`` and
    *still* otherwise; each start has at least 5 moving and 2 still steps. With ``moving``
    and ``still`` the fractions of right steps among them, pooled over starts: score
    ``sqrt(moving × still)`` (a frozen view and one that keeps sliding both fail).

    Args:
        simulator, starts, horizon, context, seed, options: see ``benchmarks.probes.core``
            (``options``: ``make_env`` options of TakeCover, e.g. ``frame_skip``).
        tolerance: ``τ`` in pixels.

    Returns:
        The score; details: ``moving``, ``still``, accuracy per action name and ``steps``.
    """
    def policy(rng: np.random.Generator) -> tuple[np.ndarray, int]:
        warmup = int(rng.integers(8, 41))
        return sticky_actions(rng, warmup + context + horizon), warmup

    def accept(shifts: np.ndarray, limit: float) -> bool:
        moving = np.abs(shifts) > limit
        return bool(moving.sum() >= 5 and (~moving).sum() >= 2)

    clips, dreams = _draw_and_dream(simulator, count=starts, context=context, horizon=horizon,
                                    seed=seed, policy=policy, options=options,
                                    choose=_choose_by_shifts(accept, horizon, tolerance))
    right, moving, actions = [], [], []
    for clip, frames in zip(clips, dreams):
        limit = _pixels(frames, tolerance)
        real, dreamt = _shifts(clip, frames)
        right += list(np.abs(dreamt - real) <= np.maximum(limit, np.abs(real) / 2))
        moving += list(np.abs(real) > limit)
        actions += list(clip.future_actions)
    right_steps, moves = np.array(right), np.array(moving)
    accuracy = {"moving": float(right_steps[moves].mean()),
                "still": float(right_steps[~moves].mean())}
    per_action = {name: _mean_or_none(right_steps[np.array(actions) == index])
                  for index, name in enumerate(SCENARIOS["TakeCover"].action_names)}
    return ProbeResult("action_following", WORLD,
                       math.sqrt(accuracy["moving"] * accuracy["still"]),
                       {**accuracy, "per_action": per_action, "steps": len(right)})


def wall_stop(simulator: Simulator | SimulateFunction, *, starts: int = 6, horizon: int = 48,
              context: int = 4, seed: int = 0, options: Mapping[str, Any] | None = None,
              tolerance: float = 0.25, slack: int | None = None) -> ProbeResult:
    """Does the view stop sliding when the player, holding one direction, reaches the wall?

    After up to 40 steps of random actions the player holds ``left`` or ``right`` to the
    end of the dream; in reality the view slides for at least 5 steps and then stops
    against a side wall, with at least a third of the horizon left. With ``r[k]`` and
    ``s[k]`` the real and dreamt shifts (``view_shifts``), a step is moving when the mean
    of its shift and its neighbours' exceeds ``tolerance``, and a view stops at the step
    after its last moving step (``k_r`` real, ``k_s`` dreamt). Per start
    ``s = moved × clip(1 - |k_s - k_r| / slack, 0, 1)``, where ``moved`` is 1 when the
    dream slid at least half as far as the real view, in its direction, before ``k_r``
    (a frozen view has not stopped at a wall), else 0. Score: the mean of ``s`` over
    starts.

    Args:
        simulator, starts, horizon, context, seed, options: see ``benchmarks.probes.core``.
        tolerance: the shift in pixels below which a view is still.
        slack: steps off the real stop that score 0 (default ``max(2, horizon // 8)``).

    Returns:
        The score; details: real and dreamt stop steps, ``moved`` fraction, ``per_start``.
    """
    slack = slack or max(2, horizon // 8)

    def policy(rng: np.random.Generator) -> tuple[np.ndarray, int]:
        warmup = int(rng.integers(0, 41))
        hold = np.full(3 * horizon + context, int(rng.choice([LEFT, RIGHT])), np.int64)
        return np.concatenate([sticky_actions(rng, warmup), hold]), warmup

    def accept(shifts: np.ndarray, limit: float) -> bool:
        return 6 <= _stop_step(shifts, limit) <= horizon - horizon // 3

    clips, dreams = _draw_and_dream(simulator, count=starts, context=context, horizon=horizon,
                                    seed=seed, policy=policy, options=options,
                                    choose=_choose_by_shifts(accept, horizon, tolerance))
    real_stops, dream_stops, moved, scores = [], [], [], []
    for clip, frames in zip(clips, dreams):
        limit = _pixels(frames, tolerance)
        real, dreamt = _shifts(clip, frames)
        real_stop, dream_stop = _stop_step(real, limit), _stop_step(dreamt, limit)
        direction = np.sign(real[:real_stop - 1].sum())
        moved.append(bool(dreamt[:real_stop - 1].sum() * direction
                          >= 0.5 * real[:real_stop - 1].sum() * direction))
        real_stops.append(real_stop)
        dream_stops.append(dream_stop)
        scores.append(moved[-1] * float(np.clip(1 - abs(dream_stop - real_stop) / slack, 0, 1)))
    return ProbeResult("wall_stop", WORLD, float(np.mean(scores)), {
        "real_stop": real_stops, "dream_stop": dream_stops,
        "moved": float(np.mean(moved)), "per_start": scores,
    })


def _labelled(info: Mapping[str, Any], names: Sequence[str]) -> list[Mapping[str, Any]]:
    """The engine-labelled objects of a frame's info with one of ``names``."""
    return [item for item in info["objects"] if item["name"] in names]


def _running_median(values: np.ndarray, window: int) -> np.ndarray:
    """The median of each value and the ``window - 1`` before it (fewer at the start)."""
    return np.array([np.median(values[max(0, k - window + 1):k + 1])
                     for k in range(len(values))])


def _established(counts: np.ndarray, window: int) -> np.ndarray:
    """The largest count held for ``window`` steps in a row up to each step."""
    held = [counts[max(0, k - window + 1):k + 1].min() for k in range(len(counts))]
    return np.maximum.accumulate(held)


def monster_count(simulator: Simulator | SimulateFunction, *, starts: int = 6,
                  horizon: int | None = None, context: int = 4, seed: int = 0,
                  options: Mapping[str, Any] | None = None,
                  detector: TakeCoverDetector | None = None, window: int = 5) -> ProbeResult:
    """Do monsters stay once they are there, while new ones keep arriving?

    Monsters never leave TakeCover, but strafing moves them in and out of view, so the
    player stands still (``none``) through the dream after up to 150 tics of random
    actions. In reality an imp appears during the dream and the player survives it; the
    detector's count is never more than one off the engine's labels, and exact (no imp cut
    by the frame's edge) at the dream's end and in each of the ``window`` frames up to its
    start, where no imp appears.

    ``n[k]`` is the median, over step ``k`` and the ``window - 1`` steps before it, of the
    monsters the detector counts in dreamt frame ``k`` (0: the last real context frame;
    the real context frames before it count), so that a one-frame miss or false find is
    neither a vanished nor a new monster; ``E[k]`` is the largest ``n`` held for ``window``
    steps in a row up to step ``k``; ``N`` and ``E_N`` are the same in the real frames. A
    step is *checked* when the real count did not drop (``N[k] >= E_N[k-1]``: the detector
    misses imps too, e.g. behind a passing fireball, and that is not the dream's fault)
    and *kept* when ``n[k] >= E[k-1]`` as well; ``monotone`` = kept / checked. Copying the
    last frame is monotone (it never loses a monster), so ``recall = clip((n[K] - n[0]) /
    (N[K] - N[0]), 0, 1)`` asks for the new imp too. Per start ``s = monotone × recall``.
    Score: the mean of ``s`` over starts.

    Args:
        simulator, starts, horizon, context, seed, options: see ``benchmarks.probes.core``
            (default horizon: 64 tics of game time, in steps of ``options["frame_skip"]``).
        detector: counts monsters (default ``load_detector`` at the frame size).
        window: steps of the running median, and that a count must hold to be
            established.

    Returns:
        The score; details: mean ``monotone`` and ``recall``, and the mean absolute
        ``count_error`` against the real frames.
    """
    detector = detector or _default_detector(options)
    horizon = horizon or _steps(64, options)

    def counts(raw: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` and ``E`` from the raw counts of frames whose ``start`` is step 0."""
        found = _running_median(raw, window)
        return found[start:], _established(found, window)[start:]

    def policy(rng: np.random.Generator) -> tuple[np.ndarray, int]:
        warmup = int(rng.integers(0, _steps(150, options) + 1))
        return np.concatenate([sticky_actions(rng, warmup),
                               np.full(horizon + context + _steps(40, options), NONE,
                                       np.int64)]), warmup

    def choose(rng: np.random.Generator, play: Play, first: int, last: int) -> int | None:
        labelled = np.array([len(_labelled(info, MONSTERS)) for info in play.infos])
        width = play.frames.shape[2]
        inside = [all(1 <= item["x"] and item["x"] + item["width"] <= width - 1
                      for item in _labelled(info, MONSTERS)) for info in play.infos]
        steady = window - 1  # steps before the start with the start's labelled count
        candidates = [
            step for step in range(max(first, steady), last + 1)
            if (labelled[step - steady:step + 1] == labelled[step]).all()
            and labelled[step + horizon - steady:step + horizon + 1].min() > labelled[step]
            and inside[step] and inside[step + horizon]]
        for step in rng.permutation(np.array(candidates, np.int64))[:3]:
            begin = step - max(steady, context - 1)
            before = detector.count_monsters(play.frames[begin:step + 1])  # cheap test first
            if (before[len(before) - 1 - steady:] != labelled[step]).any():
                continue
            raw = np.concatenate([before, detector.count_monsters(
                play.frames[step + 1:step + horizon + 1])])
            real, _ = counts(raw[step - context + 1 - begin:], context - 1)  # (K + 1,)
            truth = labelled[step:step + horizon + 1]
            if real[-1] == truth[-1] and np.abs(real - truth).max() <= 1:
                return int(step)
        return None

    clips, dreams = _draw_and_dream(simulator, count=starts, context=context, horizon=horizon,
                                    seed=seed, policy=policy, choose=choose, options=options)
    monotone, recall, error, scores = [], [], [], []
    for clip, frames in zip(clips, dreams):
        dreamt, dreamt_established = counts(detector.count_monsters(  # (K + 1,) each
            np.concatenate([clip.context_frames, frames])), context - 1)
        real, real_established = counts(detector.count_monsters(
            np.concatenate([clip.context_frames, clip.true_frames])), context - 1)
        checked = real[1:] >= real_established[:-1]
        kept = dreamt[1:] >= dreamt_established[:-1]
        monotone.append(float(kept[checked].mean()) if checked.any() else 1.0)
        rise = (dreamt[-1] - dreamt[0]) / (real[-1] - real[0])
        recall.append(float(np.clip(rise, 0, 1)))
        error.append(float(np.abs(dreamt - real).mean()))
        scores.append(monotone[-1] * recall[-1])
    return ProbeResult("monster_count", WORLD, float(np.mean(scores)), {
        "monotone": float(np.mean(monotone)), "recall": float(np.mean(recall)),
        "count_error": float(np.mean(error)), "per_start": scores,
    })


def _near(blobs: Blobs, frame: int, position: np.ndarray, tolerance: float) -> bool:
    """Whether a blob of ``frame`` has its centroid within ``tolerance`` (in x and y) of
    ``position``."""
    centroids = blobs.centroid[blobs.frame == frame]
    return bool((np.abs(centroids - position) <= tolerance).all(axis=1).any())


def _fireball_tracks(infos: Sequence[Mapping[str, Any]]) -> dict[int, np.ndarray]:
    """Fireball id -> ``(len(infos), 2)`` centre of its box per frame, NaN where unseen."""
    tracks: dict[int, np.ndarray] = {}
    for index, info in enumerate(infos):
        for item in _labelled(info, FIREBALLS):
            track = tracks.setdefault(item["id"], np.full((len(infos), 2), np.nan))
            track[index] = (item["x"] + item["width"] / 2, item["y"] + item["height"] / 2)
    return tracks


def _is_event(track: np.ndarray, found: Blobs, quarter: int, tolerance: float) -> bool:
    """Whether a real fireball's ``(K + 1, 2)`` track makes an event: labelled and found by
    the detector (``found``: blobs of the same K + 1 real frames) at every step, and in each
    of the last ``quarter`` steps at least ``2 × tolerance`` away from every fireball found
    in the first frame (itself included), so that no frozen fireball can pass for it."""
    if not np.isfinite(track).all():
        return False
    if not all(_near(found, k, track[k], tolerance) for k in range(len(track))):
        return False
    at_start = found.centroid[found.frame == 0]  # (M, 2)
    apart = np.abs(track[-quarter:, None] - at_start[None]).max(axis=-1)  # (quarter, M)
    return bool((apart >= 2 * tolerance).all())


def fireball_persistence(simulator: Simulator | SimulateFunction, *, starts: int = 6,
                         horizon: int | None = None, context: int = 4, seed: int = 0,
                         options: Mapping[str, Any] | None = None,
                         detector: TakeCoverDetector | None = None,
                         tolerance: float = 3.0) -> ProbeResult:
    """Does a fireball in flight keep flying, to where the real one goes, without vanishing?

    Random runs of actions. An event is a real fireball already in flight in the last
    context frame (a dream cannot know when an imp will fire) that the engine labels and
    the detector finds in every real frame of the dream, and that is, through the last
    quarter of the horizon, at least ``2 × tolerance`` pixels (in x or y) away from every
    fireball found in the last context frame (so that a frozen fireball, its own or
    another, cannot pass for it). With ``hit[k]`` whether the dreamt frame ``k`` has a
    detected fireball within ``tolerance`` pixels (in x and y) of the real one, per event
    ``s = mean(hit[1..K]) × arrived``, ``arrived`` being whether some ``hit`` of the last
    quarter is true. Score: the mean of ``s`` over events.

    Args:
        simulator, starts, horizon, context, seed, options: see ``benchmarks.probes.core``
            (default horizon: 12 tics of game time, in steps of ``options["frame_skip"]``).
        detector: finds fireballs (default ``load_detector`` at the frame size).
        tolerance: pixels of slack for blur.

    Returns:
        The score; details: ``events``, ``arrived`` fraction and mean ``present`` (hits).
    """
    detector = detector or _default_detector(options)
    horizon = horizon or _steps(12, options)
    quarter = max(1, horizon // 4)

    def policy(rng: np.random.Generator) -> tuple[np.ndarray, int]:
        return sticky_actions(rng, 300), 0

    def choose(rng: np.random.Generator, play: Play, first: int, last: int) -> int | None:
        limit = _pixels(play.frames, tolerance)
        flying = sorted({int(step) for track in _fireball_tracks(play.infos).values()
                         for step in np.flatnonzero(np.isfinite(track[:, 0]))
                         if first <= step <= last})
        for step in rng.permutation(np.array(flying, np.int64)):
            window = slice(step, step + horizon + 1)
            found = detector.fireballs(play.frames[window])
            if any(_is_event(track, found, quarter, limit)
                   for track in _fireball_tracks(play.infos[window]).values()):
                return int(step)
        return None

    clips, dreams = _draw_and_dream(simulator, count=starts, context=context, horizon=horizon,
                                    seed=seed, policy=policy, choose=choose, options=options)
    present, arrived, scores = [], [], []
    for clip, frames in zip(clips, dreams):
        limit = _pixels(frames, tolerance)
        real_found = detector.fireballs(with_context(clip, clip.true_frames))
        dreamt = detector.fireballs(with_context(clip, frames))
        for track in _fireball_tracks(clip.true_infos).values():
            if not _is_event(track, real_found, quarter, limit):
                continue
            hit = np.array([_near(dreamt, k, track[k], limit) for k in range(1, horizon + 1)])
            present.append(float(hit.mean()))
            arrived.append(bool(hit[-quarter:].any()))
            scores.append(present[-1] * arrived[-1])
    return ProbeResult("fireball_persistence", WORLD, float(np.mean(scores)), {
        "events": len(scores), "arrived": float(np.mean(arrived)),
        "present": float(np.mean(present)),
    })

