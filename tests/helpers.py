"""Test helpers: synthetic episodes and datasets that need no game."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from worldsim.data import DATASET_FORMAT, DATASET_VERSION, Episode, episode_filename, write_index
from worldsim.utils import write_json_atomic


def make_episode(length: int, frame_size: tuple[int, int] = (16, 16), seed: int = 0,
                 terminated: bool = True, num_actions: int = 3) -> Episode:
    """A synthetic episode whose frame t is filled with the value t (easy to check slices)."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((length + 1, *frame_size, 3), dtype=np.uint8)
    frames[:] = (np.arange(length + 1) % 256)[:, None, None, None]
    ends = np.zeros(length, dtype=bool)
    ends[-1] = True
    return Episode(
        frames=frames,
        actions=rng.integers(0, num_actions, size=length),
        rewards=np.ones(length, dtype=np.float32),
        terminated=ends if terminated else np.zeros(length, dtype=bool),
        truncated=np.zeros(length, dtype=bool) if terminated else ends,
        metadata={"seed": seed},
    )


def write_dataset(root: Path, lengths: list[int], frame_size: tuple[int, int] = (16, 16),
                  env: str = "fake", num_actions: int = 3) -> Path:
    """Write a dataset folder of synthetic episodes, as `worldsim collect` would."""
    from worldsim.data import EpisodeEntry

    write_json_atomic(root / "dataset.json", {
        "format": DATASET_FORMAT, "version": DATASET_VERSION, "env": env, "env_options": {},
        "frame_size": list(frame_size), "num_actions": num_actions,
        "action_names": [str(i) for i in range(num_actions)], "policy": "random", "seed": 0,
        "max_steps": None,
    })
    entries = []
    for index, length in enumerate(lengths):
        episode = make_episode(length, frame_size, seed=index, num_actions=num_actions)
        episode.save(root / episode_filename(index))
        entries.append(EpisodeEntry(index, episode_filename(index), length,
                                    episode.total_reward, True, False))
    write_index(root, entries)
    return root


