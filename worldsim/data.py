"""Recorded play: episodes on disk, a lazily loaded dataset, and a segment sampler.

Layout of a dataset folder::

    DIR/dataset.json                   what was recorded (env, options, policy, frame size)
    DIR/index.json                     one entry per finished episode (rebuilt if stale)
    DIR/episodes/ep_000000.safetensors one episode per file

An episode file is a safetensors file (no pickled code) with ``frames`` uint8
``(T+1, H, W, 3)``, ``actions`` int64 ``(T,)``, ``rewards`` float32 ``(T,)``,
``terminated`` and ``truncated`` bool ``(T,)``, and JSON metadata. Files are written to a
temporary name and renamed, so a killed collector never leaves a half-written episode.
Frames are read lazily through memory maps: a dataset of a million frames costs only the
pages a batch touches.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from worldsim.errors import DatasetError
from worldsim.utils import atomic_path, write_json_atomic

DATASET_FORMAT = "worldsim-episodes"
DATASET_VERSION = 1
EPISODE_KEYS = ("frames", "actions", "rewards", "terminated", "truncated")


@dataclass
class Episode:
    """One recorded episode: ``T`` steps, ``T + 1`` frames (see the package time convention)."""

    frames: np.ndarray  # (T+1, H, W, 3) uint8
    actions: np.ndarray  # (T,) int64, taken after seeing frames[t]
    rewards: np.ndarray  # (T,) float32, outcome of actions[t]
    terminated: np.ndarray  # (T,) bool, True at the step where the episode ended by the game's rules
    truncated: np.ndarray  # (T,) bool, True at the step where a time limit cut the episode
    metadata: dict[str, Any] = field(default_factory=dict)  # env, env_options, seed, policy, ...

    def __post_init__(self) -> None:
        self.frames = np.asarray(self.frames, dtype=np.uint8)
        self.actions = np.asarray(self.actions, dtype=np.int64)
        self.rewards = np.asarray(self.rewards, dtype=np.float32)
        self.terminated = np.asarray(self.terminated, dtype=bool)
        self.truncated = np.asarray(self.truncated, dtype=bool)
        steps = len(self.actions)
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3:
            raise DatasetError(f"episode frames must be (T+1, H, W, 3), got {self.frames.shape}")
        if len(self.frames) != steps + 1:
            raise DatasetError(
                f"an episode of {steps} steps needs {steps + 1} frames, got {len(self.frames)}"
            )
        for name in ("rewards", "terminated", "truncated"):
            if getattr(self, name).shape != (steps,):
                raise DatasetError(
                    f"episode {name} must have shape ({steps},), got {getattr(self, name).shape}"
                )

    @property
    def length(self) -> int:
        """Number of steps ``T``."""
        return len(self.actions)

    @property
    def total_reward(self) -> float:
        return float(self.rewards.sum())

    def save(self, path: str | Path) -> None:
        """Write the episode atomically as a safetensors file."""
        tensors = {name: np.ascontiguousarray(getattr(self, name)) for name in EPISODE_KEYS}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"worldsim": json.dumps(self.metadata)})

    @classmethod
    def load(cls, path: str | Path) -> Episode:
        """Read a whole episode into memory (use :class:`EpisodeDataset` for lazy access)."""
        reader = EpisodeFile(path)
        return cls(
            frames=reader.frames(0, reader.num_frames),
            **{name: reader.array(name) for name in EPISODE_KEYS[1:]},
            metadata=reader.metadata,
        )


class EpisodeFile:
    """Lazy, validated view of one episode file: headers now, frames on demand."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with safe_open(str(self.path), framework="np") as handle:
                keys = set(handle.keys())
                missing = [k for k in EPISODE_KEYS if k not in keys]
                if missing:
                    raise DatasetError(f"{self.path}: not a worldsim episode (missing {missing})")
                frame_shape = tuple(handle.get_slice("frames").get_shape())
                steps = handle.get_slice("actions").get_shape()
                dtype = handle.get_slice("frames").get_dtype()
                raw_meta = (handle.metadata() or {}).get("worldsim", "{}")
        except DatasetError:
            raise
        except Exception as error:  # safetensors raises its own error type for bad headers
            raise DatasetError(
                f"{self.path}: corrupt or truncated episode file ({error}); delete it and "
                "re-run `worldsim collect` with the same --out to record it again"
            ) from error
        if dtype != "U8" or len(frame_shape) != 4 or frame_shape[-1] != 3:
            raise DatasetError(f"{self.path}: frames must be uint8 (T+1, H, W, 3)")
        if len(steps) != 1 or frame_shape[0] != steps[0] + 1:
            raise DatasetError(f"{self.path}: {frame_shape[0]} frames for {steps} actions")
        self.num_frames = int(frame_shape[0])
        self.frame_size = (int(frame_shape[1]), int(frame_shape[2]))
        self.metadata: dict[str, Any] = json.loads(raw_meta)

    @property
    def length(self) -> int:
        return self.num_frames - 1

    def frames(self, start: int, stop: int) -> np.ndarray:
        """Frames ``[start, stop)`` as uint8 ``(stop - start, H, W, 3)`` (``stop`` is clipped
        to the episode's end)."""
        stop = min(stop, self.num_frames)
        with safe_open(str(self.path), framework="np") as handle:
            return handle.get_slice("frames")[start:stop]

    def array(self, name: str) -> np.ndarray:
        with safe_open(str(self.path), framework="np") as handle:
            return handle.get_tensor(name)


def episode_filename(index: int) -> str:
    return f"episodes/ep_{index:06d}.safetensors"


def branch_filename(index: int, t: int, action: int) -> str:
    """``episodes/ep_<index>_branch_<t>_<action>.safetensors``: episode ``index``'s branch
    that holds ``action`` from its state ``t`` (``worldsim collect --branch-steps``)."""
    return episode_filename(index).replace(".safetensors", f"_branch_{t:05d}_{action}.safetensors")


def parse_branch_filename(name: str) -> tuple[int, int, int] | None:
    """``(index, t, action)`` of a :func:`branch_filename`, or None for any other file."""
    found = re.fullmatch(r"episodes/ep_(\d+)_branch_(\d+)_(\d+)\.safetensors", name)
    return None if found is None else (int(found[1]), int(found[2]), int(found[3]))


@dataclass(frozen=True)
class EpisodeEntry:
    """An index row: where an episode lives and what is known without reading it."""

    index: int  # episode number within the dataset (its seed is the dataset seed + index)
    file: str  # path relative to the dataset folder
    length: int  # steps T
    total_reward: float
    terminated: bool
    truncated: bool


class EpisodeDataset:
    """A folder of recorded episodes, loaded lazily.

    Corrupt or truncated episode files are skipped with a warning and counted in
    :attr:`skipped`; they never stop the other episodes from loading.

    Args:
        root: the dataset folder written by ``worldsim collect``.
        env: if given, the env name the dataset must have been recorded from.
        frame_size: if given, the ``(H, W)`` the frames must have.
        num_actions: if given, the action count the dataset's env must have.
    """

    def __init__(
        self,
        root: str | Path,
        env: str | None = None,
        frame_size: tuple[int, int] | None = None,
        num_actions: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.info = read_dataset_info(self.root)
        self._check_expectations(env, frame_size, num_actions)
        self.skipped: list[tuple[Path, str]] = []
        self.entries: list[EpisodeEntry] = self._load_entries()
        self._files: OrderedDict[int, EpisodeFile] = OrderedDict()

    # ---- what the dataset is -------------------------------------------------------------
    @property
    def env(self) -> str:
        return str(self.info["env"])

    @property
    def frame_size(self) -> tuple[int, int]:
        height, width = self.info["frame_size"]
        return int(height), int(width)

    @property
    def num_actions(self) -> int:
        return int(self.info["num_actions"])

    @property
    def num_frames(self) -> int:
        return sum(entry.length + 1 for entry in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return (
            f"EpisodeDataset({str(self.root)!r}, env={self.env!r}, episodes={len(self)}, "
            f"frames={self.num_frames}, skipped={len(self.skipped)})"
        )

    # ---- access --------------------------------------------------------------------------
    def file(self, position: int) -> EpisodeFile:
        """The lazy file of the episode at ``position`` (a small cache keeps recent ones)."""
        if position in self._files:
            self._files.move_to_end(position)
            return self._files[position]
        reader = EpisodeFile(self.root / self.entries[position].file)
        self._files[position] = reader
        if len(self._files) > 256:
            self._files.popitem(last=False)
        return reader

    def episode(self, position: int) -> Episode:
        return Episode.load(self.root / self.entries[position].file)

    def subset(self, positions: Sequence[int]) -> EpisodeDataset:
        """A view over some episodes (shares the folder, reads nothing new)."""
        view = object.__new__(EpisodeDataset)
        view.root, view.info, view.skipped = self.root, self.info, self.skipped
        view.entries = [self.entries[p] for p in positions]
        view._files = OrderedDict()
        return view

    def split(self, holdout_fraction: float) -> tuple[EpisodeDataset, EpisodeDataset]:
        """Split into (train, held-out) by episode number: the last episodes are held out.

        The split depends only on episode numbers, so it is the same on every machine and
        stays stable when a resumed collection adds episodes at the end. Files that share an
        episode number (an episode and its branches) fall on the same side.
        """
        if not 0.0 < holdout_fraction < 1.0:
            raise DatasetError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
        indices = sorted({entry.index for entry in self.entries})
        if len(indices) < 2:
            raise DatasetError(
                f"{self.root} has {len(indices)} episode(s); at least 2 are needed to hold one "
                "out")
        held = set(indices[-max(1, int(round(len(indices) * holdout_fraction))):])
        order = sorted(range(len(self)), key=lambda p: self.entries[p].index)
        return (self.subset([p for p in order if self.entries[p].index not in held]),
                self.subset([p for p in order if self.entries[p].index in held]))

    def shard(self, rank: int, world_size: int) -> EpisodeDataset:
        """The episodes this rank reads in a distributed run (round-robin by position)."""
        if world_size > len(self):
            raise DatasetError(
                f"{world_size} processes but only {len(self)} episodes in {self.root}; "
                "collect more episodes or use fewer processes"
            )
        return self.subset(range(rank, len(self), world_size))

    # ---- loading -------------------------------------------------------------------------
    def _check_expectations(
        self, env: str | None, frame_size: tuple[int, int] | None, num_actions: int | None
    ) -> None:
        if env is not None and env != self.env:
            raise DatasetError(
                f"{self.root} was recorded from {self.env!r}, not {env!r}; point --data at a "
                f"dataset of {env!r} (record one with `worldsim collect --env {env}`)"
            )
        if frame_size is not None and tuple(frame_size) != self.frame_size:
            raise DatasetError(
                f"{self.root} has {self.frame_size[0]}x{self.frame_size[1]} frames but "
                f"{frame_size[0]}x{frame_size[1]} were expected; record the dataset at that "
                "size (`worldsim collect --frame-size HxW`) or change the model's frame size"
            )
        if num_actions is not None and num_actions != self.num_actions:
            raise DatasetError(
                f"{self.root} has {self.num_actions} actions but {num_actions} were expected"
            )

    def _load_entries(self) -> list[EpisodeEntry]:
        indexed = {entry.file: entry for entry in read_index(self.root)}
        entries = []
        for path in sorted((self.root / "episodes").glob("ep_*.safetensors")):
            relative = f"episodes/{path.name}"
            try:
                reader = EpisodeFile(path)
            except DatasetError as error:
                self.skipped.append((path, str(error)))
                warnings.warn(f"skipping episode: {error}", stacklevel=3)
                continue
            if reader.frame_size != self.frame_size:
                reason = (
                    f"{path}: frames are {reader.frame_size}, dataset is {self.frame_size}; "
                    "this file belongs to another dataset, move it out"
                )
                self.skipped.append((path, reason))
                warnings.warn(f"skipping episode: {reason}", stacklevel=3)
                continue
            entry = indexed.get(relative)
            if entry is None or entry.length != reader.length:
                entry = entry_from_file(reader, relative)
            entries.append(entry)
        return entries


def entry_from_file(reader: EpisodeFile, relative: str) -> EpisodeEntry:
    terminated = reader.array("terminated")
    truncated = reader.array("truncated")
    return EpisodeEntry(
        index=int(Path(relative).stem.split("_")[1]),
        file=relative,
        length=reader.length,
        total_reward=float(reader.array("rewards").sum()),
        terminated=bool(terminated[-1]) if len(terminated) else False,
        truncated=bool(truncated[-1]) if len(truncated) else False,
    )


def read_dataset_info(root: Path) -> dict[str, Any]:
    """Read and check ``dataset.json``."""
    path = root / "dataset.json"
    if not path.is_file():
        raise DatasetError(
            f"{root} is not a worldsim dataset (no dataset.json); record one with "
            f"`worldsim collect --env ENV --episodes N --out {root}`"
        )
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path} is not valid JSON ({error}); delete it and re-collect") from error
    if info.get("format") != DATASET_FORMAT:
        raise DatasetError(f"{path} is not a worldsim dataset description")
    if info.get("version") != DATASET_VERSION:
        raise DatasetError(
            f"{path} has dataset format version {info.get('version')}, this worldsim reads "
            f"version {DATASET_VERSION}; re-collect the dataset with this version"
        )
    return info


def read_index(root: Path) -> list[EpisodeEntry]:
    """Read ``index.json``; a missing or damaged index is rebuilt from the files instead."""
    path = root / "index.json"
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text())["episodes"]
        return [EpisodeEntry(**row) for row in rows]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        warnings.warn(f"{path} is damaged ({error}); rebuilding it from the episode files",
                      stacklevel=3)
        return []


def write_index(root: Path, entries: Sequence[EpisodeEntry]) -> None:
    rows = [entry.__dict__ for entry in sorted(entries, key=lambda e: e.index)]
    write_json_atomic(root / "index.json", {
        "episodes": rows,
        "num_episodes": len(rows),
        "num_frames": sum(row["length"] + 1 for row in rows),
    })


# ---- segments for training -----------------------------------------------------------------
@dataclass
class Batch:
    """A batch of equal-length segments cut from episodes.

    ``actions[:, t]`` is the action taken after ``frames[:, t]``; ``rewards`` and
    ``terminated`` are its outcome, seen in ``frames[:, t + 1]``. When a segment ends on an
    episode's last frame, that frame has no action: ``valid[:, t]`` is False there and the
    action is 0. ``prev_actions`` is the action that led to ``frames[:, 0]``, or -1 when
    ``frames[:, 0]`` is the first frame of its episode.
    """

    frames: torch.Tensor  # (B, T, 3, H, W) uint8; or (B, T, c, h, w) latents, see SegmentSampler
    actions: torch.Tensor  # (B, T) int64
    rewards: torch.Tensor  # (B, T) float32
    terminated: torch.Tensor  # (B, T) bool
    valid: torch.Tensor  # (B, T) bool
    prev_actions: torch.Tensor  # (B,) int64
    weights: torch.Tensor  # (B,) float32 importance weights (all 1 without oversampling)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(**{
            name: value.to(device, non_blocking=non_blocking)
            for name, value in self.__dict__.items()
        })

    def pin_memory(self) -> Batch:
        return Batch(**{name: value.pin_memory() for name, value in self.__dict__.items()})

    def incoming_actions(self, unknown: int) -> torch.Tensor:
        """``(B, T)``: the action that led to each frame; ``unknown`` where none is known.

        This is the view a dynamics model conditions on: frame t is generated from the
        frames before it and the action that produced it.
        """
        previous = torch.where(self.prev_actions >= 0, self.prev_actions,
                               torch.full_like(self.prev_actions, unknown))
        return torch.cat([previous[:, None], self.actions[:, :-1]], dim=1)


class SegmentSampler:
    """Draws batches of ``segment_length``-frame segments, reproducibly by step number.

    ``batch(step)`` depends only on (seed, step), so a training run resumed at step k sees
    exactly the batches an uninterrupted run would. Segments are drawn uniformly over all
    valid start frames of all episodes.

    Episode ends are rare (one transition in ~300 on TakeCover) yet they are what a
    termination head must learn, so ``end_fraction`` of the rows (on average) are instead
    segments that end on the last frame of an episode that ended by the game's rules. Each
    row carries the importance weight ``p_uniform / p_drawn`` of its segment in
    ``Batch.weights``: a loss weighted by it is an unbiased estimate of the loss under
    uniform sampling, so the frame predictor and the termination head stay calibrated,
    with less variance than uniform draws (the head sees many ends, each weighted down).

    Args:
        dataset: the episodes to draw from.
        segment_length: frames per segment ``T`` (1 for single frames).
        batch_size: segments per batch ``B`` (the global batch in a distributed run).
        seed: base seed.
        frame_arrays: per-episode arrays to cut segments from instead of the stored frames,
            e.g. pre-encoded latents ``(T+1, c, h, w)``; they are returned as they are.
        end_fraction: chance that a row is a segment ending at a terminal episode end.
    """

    def __init__(self, dataset: EpisodeDataset, segment_length: int, batch_size: int,
                 seed: int = 0, frame_arrays: Sequence[np.ndarray] | None = None,
                 end_fraction: float = 0.0) -> None:
        if segment_length < 1:
            raise DatasetError(f"segment_length must be >= 1 frame, got {segment_length}")
        if not 0.0 <= end_fraction < 1.0:
            raise DatasetError(f"end_fraction must be in [0, 1), got {end_fraction}")
        if frame_arrays is not None and len(frame_arrays) != len(dataset):
            raise DatasetError(
                f"{len(frame_arrays)} frame arrays for {len(dataset)} episodes; encode every "
                "episode of the dataset"
            )
        self.dataset = dataset
        self.segment_length = segment_length
        self.batch_size = batch_size
        self.seed = seed
        self.frame_arrays = frame_arrays
        starts = np.array([max(0, e.length + 1 - segment_length + 1) for e in dataset.entries])
        if starts.sum() == 0:
            longest = max((e.length + 1 for e in dataset.entries), default=0)
            raise DatasetError(
                f"no episode in {dataset.root} has {segment_length} frames (longest: {longest}); "
                "use a shorter segment length or collect longer episodes"
            )
        self._cumulative_starts = np.cumsum(starts)
        self._ends = np.array([p for p, e in enumerate(dataset.entries)
                               if e.terminated and e.length + 1 >= segment_length])
        self.end_fraction = end_fraction if len(self._ends) else 0.0
        # importance weights: uniform probability over the mixture's, for end / other segments
        share = self.end_fraction * self._cumulative_starts[-1] / max(len(self._ends), 1)
        self._end_weight = 1.0 / (1.0 - self.end_fraction + share)
        self._other_weight = 1.0 / (1.0 - self.end_fraction)

    def batch(self, step: int, rows: slice | None = None) -> Batch:
        """The batch of training step ``step``, or only its rows ``rows``.

        Each row is drawn from its own random stream, so a distributed rank that reads
        rows ``rank::world_size``-style slices gets exactly its part of the global batch.
        """
        rows = rows or slice(0, self.batch_size)
        segments = []
        for row in range(*rows.indices(self.batch_size)):
            rng = np.random.default_rng([self.seed, step, row])
            if self.end_fraction and rng.random() < self.end_fraction:
                position = int(self._ends[rng.integers(0, len(self._ends))])
                offset = self.dataset.entries[position].length + 1 - self.segment_length
            else:
                pick = rng.integers(0, self._cumulative_starts[-1])
                position = int(np.searchsorted(self._cumulative_starts, pick, side="right"))
                offset = int(pick - (self._cumulative_starts[position - 1] if position else 0))
            segments.append(self.segment(position, offset))
        return collate(segments, channels_last=self.frame_arrays is None)

    def _weight(self, position: int, start: int) -> float:
        """Importance weight of a segment: uniform probability over the mixture's."""
        if not self.end_fraction:
            return 1.0
        entry = self.dataset.entries[position]
        is_end = entry.terminated and start + self.segment_length == entry.length + 1
        return self._end_weight if is_end else self._other_weight

    def segment(self, position: int, start: int) -> dict[str, np.ndarray]:
        """One segment of episode ``position`` starting at frame ``start``."""
        reader = self.dataset.file(position)
        stop = start + self.segment_length
        if self.frame_arrays is None:
            frames = reader.frames(start, stop)
        else:
            frames = self.frame_arrays[position][start:stop]
        steps = reader.length
        action_stop = min(stop, steps)
        pad = stop - action_stop

        def padded(name: str, dtype: type) -> np.ndarray:
            values = reader.array(name)[start:action_stop].astype(dtype)
            return np.concatenate([values, np.zeros(pad, dtype=dtype)])

        return {
            "frames": frames,
            "actions": padded("actions", np.int64),
            "rewards": padded("rewards", np.float32),
            "terminated": padded("terminated", bool),
            "valid": np.arange(start, stop) < steps,
            "prev_actions": np.int64(reader.array("actions")[start - 1] if start > 0 else -1),
            "weight": np.float32(self._weight(position, start)),
        }

    def __iter__(self) -> Iterator[Batch]:
        step = 0
        while True:
            yield self.batch(step)
            step += 1


def collate(segments: Sequence[dict[str, np.ndarray]], channels_last: bool = True) -> Batch:
    """Stack segments into a :class:`Batch`; pixel frames go from (H, W, 3) to (3, H, W)."""
    frames = torch.from_numpy(np.stack([s["frames"] for s in segments]))
    if channels_last:
        frames = frames.permute(0, 1, 4, 2, 3).contiguous()  # (B, T, 3, H, W)
    return Batch(
        frames=frames,  # (B, T, 3, H, W) pixels, or (B, T, c, h, w) given frame_arrays
        actions=torch.from_numpy(np.stack([s["actions"] for s in segments])),
        rewards=torch.from_numpy(np.stack([s["rewards"] for s in segments])),
        terminated=torch.from_numpy(np.stack([s["terminated"] for s in segments])),
        valid=torch.from_numpy(np.stack([s["valid"] for s in segments])),
        prev_actions=torch.from_numpy(np.array([s["prev_actions"] for s in segments])),
        weights=torch.tensor([float(s["weight"]) for s in segments]),
    )


def dataset_stats(dataset: EpisodeDataset) -> dict[str, Any]:
    """Summary figures of a dataset (episodes, frames, returns, lengths)."""
    lengths = np.array([e.length for e in dataset.entries], dtype=np.float64)
    returns = np.array([e.total_reward for e in dataset.entries], dtype=np.float64)
    def describe(values: np.ndarray) -> dict[str, float]:
        if len(values) == 0:
            return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
        return {"mean": float(values.mean()), "std": float(values.std()),
                "min": float(values.min()), "max": float(values.max())}
    return {
        "episodes": len(dataset), "frames": dataset.num_frames, "skipped": len(dataset.skipped),
        "length": describe(lengths), "return": describe(returns),
        "terminated": int(sum(e.terminated for e in dataset.entries)),
    }
