"""Recording play: round trips, resume after a kill, corrupt files, the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from envs.collect import collect
from worldsim.cli import main as cli_main
from worldsim.data import EpisodeDataset
from envs.policies import make_policy
from worldsim.errors import ConfigError, DatasetError

REPO = Path(__file__).resolve().parents[1]


def test_collect_round_trip_fake_env(tmp_path: Path) -> None:
    result = collect("fake", episodes=3, out=tmp_path / "d", policy="sticky:4",
                     env_options={"frame_size": [24, 32], "max_steps": 30}, seed=5,
                     progress=False)
    dataset = result.dataset
    assert len(dataset) == 3 and result.recorded == 3
    assert dataset.frame_size == (24, 32) and dataset.num_actions == 5
    episode = dataset.episode(0)
    assert episode.frames.shape == (episode.length + 1, 24, 32, 3)
    assert episode.metadata["seed"] == 5 and episode.metadata["policy"] == "sticky:4"
    assert episode.terminated[-1] or episode.truncated[-1]
    assert not (episode.terminated[:-1].any() or episode.truncated[:-1].any())


def test_mixture_policy_plays_each_episode_with_one_listed_policy(tmp_path: Path) -> None:
    options = {"frame_size": [16, 16], "max_steps": 12}
    first = collect("fake", episodes=12, out=tmp_path / "a", policy="mix:random+sticky:3",
                    env_options=options, progress=False).dataset
    played = [first.episode(i).metadata["policy"] for i in range(12)]
    assert set(played) == {"random", "sticky:3"}  # both, and nothing else
    again = collect("fake", episodes=12, out=tmp_path / "b", policy="mix:random+sticky:3",
                    env_options=options, progress=False).dataset
    for i in range(12):  # an episode's seed fixes its policy and its actions
        assert again.episode(i).metadata["policy"] == played[i]
        assert np.array_equal(again.episode(i).actions, first.episode(i).actions)
    for bad in ("mix:random", "mix:random+", "mix:random+mix:sticky+random", "mix:random+nope"):
        with pytest.raises(ConfigError, match="policy"):
            make_policy(bad, 3)


def test_collect_takecover_with_two_workers(tmp_path: Path) -> None:
    result = collect("vizdoom/TakeCover", episodes=4, out=tmp_path / "tc", policy="random",
                     workers=2, seed=0, progress=False)
    dataset = result.dataset
    assert len(dataset) == 4 and dataset.env == "vizdoom/TakeCover"
    assert dataset.frame_size == (64, 64) and dataset.num_actions == 3
    for position in range(4):
        episode = dataset.episode(position)
        # TakeCover pays +1 per tic and random play dies well before the 2100-tic cap
        assert episode.total_reward == episode.length
        assert episode.terminated[-1] and not episode.truncated.any()
    # the same seed replays the same episode, whichever worker recorded it
    again = collect("vizdoom/TakeCover", episodes=1, out=tmp_path / "again", policy="random",
                    workers=1, seed=0, progress=False).dataset
    first = [e for e in range(4) if dataset.entries[e].index == 0][0]
    np.testing.assert_array_equal(again.episode(0).frames, dataset.episode(first).frames)


def test_resume_records_only_missing_episodes(tmp_path: Path) -> None:
    root = tmp_path / "d"
    options = {"max_steps": 20}
    collect("fake", episodes=3, out=root, env_options=options, progress=False)
    files = sorted((root / "episodes").glob("*.safetensors"))
    stamps = {f.name: f.stat().st_mtime_ns for f in files}
    (root / "episodes" / ".ep_000003.safetensors.abc.tmp").write_bytes(b"half")  # killed writer
    result = collect("fake", episodes=5, out=root, env_options=options, progress=False)
    assert result.recorded == 2 and len(result.dataset) == 5
    for f in files:
        assert f.stat().st_mtime_ns == stamps[f.name], f"{f.name} was recorded again"
    assert not list((root / "episodes").glob("*.tmp"))
    fresh = collect("fake", episodes=5, out=tmp_path / "fresh", env_options=options,
                    progress=False).dataset
    for position in range(5):
        np.testing.assert_array_equal(result.dataset.episode(position).frames,
                                      fresh.episode(position).frames)


def test_corrupt_episode_is_recorded_again_on_resume(tmp_path: Path) -> None:
    root = tmp_path / "d"
    collect("fake", episodes=3, out=root, env_options={"max_steps": 20}, progress=False)
    victim = root / "episodes" / "ep_000001.safetensors"
    good = victim.read_bytes()
    victim.write_bytes(good[:100])
    with pytest.warns(UserWarning, match="ep_000001"):
        result = collect("fake", episodes=3, out=root, env_options={"max_steps": 20},
                         progress=False)
    assert result.recorded == 1 and len(result.dataset) == 3
    assert victim.read_bytes() == good


def test_resume_refuses_a_different_recording(tmp_path: Path) -> None:
    root = tmp_path / "d"
    collect("fake", episodes=1, out=root, env_options={"max_steps": 10}, progress=False)
    with pytest.raises(DatasetError, match="policy: 'random' there, 'sticky' now"):
        collect("fake", episodes=2, out=root, policy="sticky", env_options={"max_steps": 10},
                progress=False)


def test_kill_during_collection_then_resume(tmp_path: Path) -> None:
    root = tmp_path / "d"
    command = [sys.executable, "-m", "worldsim.cli", "collect", "--env", "vizdoom/TakeCover",
               "--episodes", "400", "--workers", "2", "--out", str(root), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, env=env, cwd=tmp_path, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((root / "episodes").glob("ep_*"))) < 3:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the collector and its workers, mid-write
    process.wait()
    survivors = len(list((root / "episodes").glob("ep_*.safetensors")))
    assert 3 <= survivors < 400
    dataset = EpisodeDataset(root)  # every file that exists is whole: writes are atomic
    assert len(dataset.skipped) == 0 and len(dataset) == survivors
    resumed = collect("vizdoom/TakeCover", episodes=survivors + 2, out=root, workers=2,
                      progress=False)
    # the workers may have finished episode i + 1 before episode i: a resume records every
    # index of range(episodes) that is not on disk, the gaps and the 2 new ones alike
    assert resumed.recorded == sum(1 for i in range(survivors + 2) if i not in
                                   {e.index for e in dataset.entries})
    assert len(resumed.dataset) == survivors + 2


def test_cli_envs_and_collect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["envs"]) == 0
    listing = capsys.readouterr().out
    assert "vizdoom/TakeCover" in listing and "none, left, right" in listing
    assert "crafter" in listing
    code = cli_main(["collect", "--env", "fake", "--episodes", "2", "--out", str(tmp_path / "d"),
                     "--env-option", "max_steps=12", "--frame-size", "32x48", "--quiet"])
    assert code == 0
    assert "2 episodes" in capsys.readouterr().out
    assert EpisodeDataset(tmp_path / "d").frame_size == (32, 48)


def test_cli_reports_user_errors_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["collect", "--env", "vizdoom/TakeCovr", "--episodes", "1",
                     "--out", str(tmp_path / "d")]) == 2
    error = capsys.readouterr().err
    assert "vizdoom/TakeCover" in error and "Traceback" not in error
    assert cli_main(["collect", "--env", "fake", "--episodes", "1", "--out", str(tmp_path / "e"),
                     "--env-option", "oops"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_branches_show_every_action_from_the_same_recorded_state(tmp_path: Path) -> None:
    from envs.collect import Branching
    from worldsim.data import Episode

    plain = collect("vizdoom/TakeCover", episodes=3, out=tmp_path / "plain", policy="sticky",
                    seed=0, progress=False).dataset
    branching = Branching(steps=4, every=4, context=3)
    branched = collect("vizdoom/TakeCover", episodes=3, out=tmp_path / "branched",
                       policy="sticky", seed=0, branching=branching, progress=False).dataset
    mains = {e.file: e for e in branched.entries if "branch" not in e.file}
    assert sorted(mains) == sorted(e.file for e in plain.entries)  # the same episodes
    branches = [e for e in branched.entries if "branch" in e.file]
    assert branches, "three TakeCover episodes have some decisive state"
    states: dict[tuple[int, int], list[Episode]] = {}
    for entry in branches:
        branch = Episode.load(branched.root / entry.file)
        meta = branch.metadata
        main = Episode.load(branched.root / f"episodes/ep_{entry.index:06d}.safetensors")
        t, start = meta["branch_at"], meta["start"]
        assert start == max(0, t - 3) and meta["branch_of"] == entry.index
        assert np.array_equal(branch.frames[:t - start + 1], main.frames[start:t + 1])
        assert (branch.actions[t - start:] == meta["held_action"]).all()
        assert branch.terminated[-1] or (branch.truncated[-1] and branch.length == t - start + 4)
        assert meta["hit"] is True if branch.terminated[-1] else isinstance(meta["hit"], bool)
        states.setdefault((entry.index, t), []).append(branch)
    for fates in states.values():  # decisive only: the actions' fates differ
        assert len(fates) == 3 and len({bool(b.terminated[-1]) for b in fates}) == 2
    # every examined state's fates, decisive or not, kept in the episode's metadata
    for index in range(3):
        main = Episode.load(branched.root / f"episodes/ep_{index:06d}.safetensors")
        kept = main.metadata["branch_fates"]
        assert sorted(map(int, kept)) == list(range(4, main.length, 4))
        for t, ended in kept.items():
            decisive = len(set(ended)) == 2
            assert decisive == ((index, int(t)) in states)
            if decisive:
                assert ended == [bool(b.terminated[-1]) for b in sorted(
                    states[index, int(t)], key=lambda b: b.metadata["held_action"])]
        # which held actions were hit (lost health or ended): every end is a hit
        hits = main.metadata["branch_hits"]
        assert sorted(hits) == sorted(kept)
        assert all(hit or not end for t in kept for end, hit in zip(kept[t], hits[t],
                                                                    strict=True))
    assert any(len(set(ended)) == 1 for index in range(3) for ended in Episode.load(
        branched.root / f"episodes/ep_{index:06d}.safetensors").metadata["branch_fates"].values())
    train, held = branched.split(0.34)  # one whole episode held out, its branches with it
    assert {e.index for e in held.entries} == {2}
    assert not {e.index for e in train.entries} & {2}
    # resuming records nothing new; another branching is refused
    again = collect("vizdoom/TakeCover", episodes=3, out=tmp_path / "branched", policy="sticky",
                    seed=0, branching=branching, progress=False)
    assert again.recorded == 0 and len(again.dataset) == len(branched)
    with pytest.raises(DatasetError, match="branching"):
        collect("vizdoom/TakeCover", episodes=3, out=tmp_path / "branched", policy="sticky",
                seed=0, progress=False)
    with pytest.raises(DatasetError, match="branches need"):
        Branching(steps=0)


def test_branch_recording_benchmark_times_what_the_pipeline_records(tmp_path: Path) -> None:
    import json

    from benchmarks.collect import main as collect_benchmark

    assert collect_benchmark(["--branches", "3", "--workers", "1", "--out-dir",
                              str(tmp_path)]) == 0
    (written,) = tmp_path.glob("collect-branches-*.json")
    (row,) = json.loads(written.read_text())["results"]["takecover"]
    assert row["workers"] == 1 and row["episodes"] == 3
    # three episodes' frames at least, and the branches' beside them where any was decisive
    assert row["frames"] > 3 and row["seconds"] > 0
    assert row["small_preset_episodes"] == 2500
    # the minutes are rounded to 0.1, the seconds per episode to 1e-4 (2500 episodes: 0.004 min)
    assert row["minutes_for_small_preset"] == pytest.approx(
        2500 * row["seconds_per_episode"] / 60, abs=0.06)
