"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import write_dataset


@pytest.fixture

def small_dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data", [10, 25, 7, 40])


@pytest.fixture(scope="session")
def tiny_takecover_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six episodes of sticky-random VizDoom TakeCover (a few seconds to record)."""
    from envs.collect import collect

    root = tmp_path_factory.mktemp("shared-data") / "takecover"
    collect("vizdoom/TakeCover", episodes=6, out=root, policy="sticky", seed=0, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_world_model(tiny_takecover_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A world model trained on ``tiny_takecover_data`` with the tiny preset: the run folder
    (load it with ``WorldModel.load(run)``). Trained once per test session."""
    from worldsim.train import train_world_model

    run = tmp_path_factory.mktemp("shared-runs") / "tiny"
    train_world_model(tiny_takecover_data, run, preset_name="tiny", progress=False)
    return run
