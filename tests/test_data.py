"""Episodes on disk, lazy datasets, corrupt-file handling and the segment sampler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import make_episode, write_dataset
from worldsim.data import Episode, EpisodeDataset, EpisodeFile, SegmentSampler, dataset_stats
from worldsim.errors import DatasetError


def test_episode_round_trip(tmp_path: Path) -> None:
    episode = make_episode(12, frame_size=(8, 12), seed=3)
    episode.metadata["policy"] = "random"
    episode.save(tmp_path / "ep.safetensors")
    loaded = Episode.load(tmp_path / "ep.safetensors")
    np.testing.assert_array_equal(loaded.frames, episode.frames)
    np.testing.assert_array_equal(loaded.actions, episode.actions)
    assert loaded.terminated[-1] and not loaded.truncated.any()
    assert loaded.metadata == {"seed": 3, "policy": "random"}
    assert not list(tmp_path.glob("*.tmp")), "atomic write left a temporary file"


def test_episode_rejects_inconsistent_arrays() -> None:
    episode = make_episode(5)
    with pytest.raises(DatasetError, match="needs 6 frames"):
        Episode(episode.frames[:-1], episode.actions, episode.rewards, episode.terminated,
                episode.truncated)


def test_dataset_loads_lazily_and_reads_slices(small_dataset: Path) -> None:
    dataset = EpisodeDataset(small_dataset)
    assert len(dataset) == 4
    assert dataset.num_frames == sum(n + 1 for n in [10, 25, 7, 40])
    frames = dataset.file(1).frames(5, 9)
    assert frames.shape == (4, 16, 16, 3)
    assert list(frames[:, 0, 0, 0]) == [5, 6, 7, 8]
    assert dataset_stats(dataset)["terminated"] == 4


def test_dataset_checks_env_and_frame_size(small_dataset: Path) -> None:
    with pytest.raises(DatasetError, match="recorded from 'fake', not 'vizdoom/TakeCover'"):
        EpisodeDataset(small_dataset, env="vizdoom/TakeCover")
    with pytest.raises(DatasetError, match="16x16 frames but 64x64"):
        EpisodeDataset(small_dataset, frame_size=(64, 64))
    with pytest.raises(DatasetError, match="no dataset.json"):
        EpisodeDataset(small_dataset / "episodes")


def test_corrupt_and_truncated_files_are_skipped_and_counted(small_dataset: Path) -> None:
    victim = small_dataset / "episodes" / "ep_000001.safetensors"
    victim.write_bytes(victim.read_bytes()[:500])  # a collector killed mid-copy
    (small_dataset / "episodes" / "ep_000002.safetensors").write_bytes(b"not a file" * 10)
    with pytest.warns(UserWarning, match="corrupt or truncated"):
        dataset = EpisodeDataset(small_dataset)
    assert len(dataset) == 2
    assert len(dataset.skipped) == 2
    assert {p.name for p, _ in dataset.skipped} == {"ep_000001.safetensors",
                                                    "ep_000002.safetensors"}
    with pytest.raises(DatasetError, match="ep_000001.safetensors: corrupt"):
        EpisodeFile(victim)


def test_stale_index_is_rebuilt_from_files(small_dataset: Path) -> None:
    (small_dataset / "index.json").write_text("{broken")
    with pytest.warns(UserWarning, match="rebuilding"):
        dataset = EpisodeDataset(small_dataset)
    assert [e.length for e in dataset.entries] == [10, 25, 7, 40]


def test_segment_sampler_shapes_alignment_and_reproducibility(small_dataset: Path) -> None:
    dataset = EpisodeDataset(small_dataset)
    sampler = SegmentSampler(dataset, segment_length=8, batch_size=32, seed=1)
    batch = sampler.batch(0)
    assert batch.frames.shape == (32, 8, 3, 16, 16) and batch.frames.dtype == torch.uint8
    assert batch.actions.shape == (32, 8) and batch.valid.shape == (32, 8)
    # frame t of an episode holds the value t: segments are consecutive frames
    values = batch.frames[:, :, 0, 0, 0].long()
    assert torch.all(values[:, 1:] - values[:, :-1] == 1)
    # episode 2 has only 8 frames (7 steps): a segment there covers its whole length
    torch.testing.assert_close(sampler.batch(0).frames, batch.frames)
    assert not torch.equal(sampler.batch(1).frames, batch.frames)
    # the last frame of an episode has no action: valid is False exactly there
    for row in range(32):
        start = int(values[row, 0])
        prev = int(batch.prev_actions[row])
        assert (prev == -1) == (start == 0)
    incoming = batch.incoming_actions(unknown=3)
    assert torch.equal(incoming[:, 1:], batch.actions[:, :-1])
    assert torch.all((incoming[:, 0] == 3) == (batch.prev_actions == -1))


def test_segment_sampler_marks_terminal_frame(tmp_path: Path) -> None:
    dataset = EpisodeDataset(write_dataset(tmp_path / "d", [5]))
    batch = SegmentSampler(dataset, segment_length=6, batch_size=4).batch(0)
    # the only possible segment is the whole episode: 6 frames, 5 actions
    assert batch.valid[0].tolist() == [True] * 5 + [False]
    assert batch.terminated[0].tolist() == [False] * 4 + [True, False]


def test_end_oversampling_draws_episode_ends_with_unbiasing_weights(small_dataset: Path) -> None:
    dataset = EpisodeDataset(small_dataset)
    plain = SegmentSampler(dataset, segment_length=4, batch_size=64, seed=3)
    assert torch.all(plain.batch(0).weights == 1)
    sampler = SegmentSampler(dataset, segment_length=4, batch_size=64, seed=3, end_fraction=0.5)
    batches = [sampler.batch(step) for step in range(40)]
    ends = torch.cat([b.terminated[:, 2] & ~b.valid[:, 3] for b in batches])  # death, last slot
    weights = torch.cat([b.weights for b in batches])
    uniform_share = 4 / sum(length + 1 - 4 + 1 for length in (10, 25, 7, 40))  # 4 end segments
    assert 0.4 < ends.float().mean() < 0.65  # ~ 0.5 + 0.5 * uniform_share, not ~ 0.05
    assert torch.all(weights[ends] < 1) and torch.all(weights[~ends] > 1)
    assert abs(float(weights.mean()) - 1.0) < 0.1  # unbiased: E[weight] = 1
    assert abs(float(weights[ends].sum()) / len(weights) - uniform_share) < 0.02
    again = SegmentSampler(dataset, segment_length=4, batch_size=64, seed=3, end_fraction=0.5)
    assert torch.equal(again.batch(7).frames, batches[7].frames)
    with pytest.raises(DatasetError, match="end_fraction"):
        SegmentSampler(dataset, segment_length=4, batch_size=8, end_fraction=1.0)


def test_segment_sampler_rejects_too_long_segments(small_dataset: Path) -> None:
    with pytest.raises(DatasetError, match="longest: 41"):
        SegmentSampler(EpisodeDataset(small_dataset), segment_length=64, batch_size=2)


def test_split_and_shard_are_disjoint(small_dataset: Path) -> None:
    dataset = EpisodeDataset(small_dataset)
    train, held = dataset.split(0.25)
    assert [e.index for e in held.entries] == [3]
    assert {e.index for e in train.entries} == {0, 1, 2}
    shards = [dataset.shard(rank, 2) for rank in range(2)]
    assert sorted(e.index for s in shards for e in s.entries) == [0, 1, 2, 3]


def _rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_large_dataset_opens_without_loading_frames(tmp_path: Path) -> None:
    # 48 episodes x 1,001 frames of 64x64x3 = 590 MB of frames on disk
    root = tmp_path / "big"
    write_dataset(root, [1000] * 48, frame_size=(64, 64))
    before = _rss_bytes()
    dataset = EpisodeDataset(root)
    sampler = SegmentSampler(dataset, segment_length=16, batch_size=8)
    for step in range(4):
        sampler.batch(step)
    grown = _rss_bytes() - before
    assert dataset.num_frames == 48 * 1001
    assert grown < 100 * 2**20, f"opening and sampling grew memory by {grown / 2**20:.0f} MB"
    info = json.loads((root / "index.json").read_text())
    assert info["num_frames"] == 48 * 1001


def test_batch_rows_are_slices_of_the_global_batch(small_dataset: Path) -> None:
    sampler = SegmentSampler(EpisodeDataset(small_dataset), segment_length=4, batch_size=6, seed=2)
    whole = sampler.batch(7)
    parts = [sampler.batch(7, rows=slice(0, 3)), sampler.batch(7, rows=slice(3, 6))]
    assert torch.equal(torch.cat([p.frames for p in parts]), whole.frames)
    assert torch.equal(torch.cat([p.actions for p in parts]), whole.actions)


def test_segment_sampler_over_latent_arrays(small_dataset: Path) -> None:
    dataset = EpisodeDataset(small_dataset)
    latents = [np.full((e.length + 1, 2, 3, 3), e.index, np.float32) for e in dataset.entries]
    batch = SegmentSampler(dataset, 5, 8, frame_arrays=latents).batch(0)
    assert batch.frames.shape == (8, 5, 2, 3, 3) and batch.frames.dtype == torch.float32
    single = SegmentSampler(dataset, 1, 4).batch(0)
    assert single.frames.shape == (4, 1, 3, 16, 16)
