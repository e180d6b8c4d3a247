"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

# The suite runs in parallel worker processes (pyproject: `-n 2`): one thread of torch (and of
# the processes the tests start) per worker, so that the workers share the cores rather than
# fight over them (2 cores: 6.4 min instead of 9.6 for one process with two threads).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

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


@pytest.fixture(scope="session")
def branch_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four sticky-random TakeCover episodes with every action held 4 steps from every 4th
    decisive state (real VizDoom, replayed from the seeds)."""
    from envs.collect import Branching, collect

    root = tmp_path_factory.mktemp("hold") / "branches"
    collect("vizdoom/TakeCover", episodes=4, out=root, policy="sticky", seed=0,
            branching=Branching(steps=4, every=4, context=3), progress=False)
    return root


@pytest.fixture(scope="session")
def hold_model(tiny_world_model: Path, branch_data: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny TakeCover model given a hold head by the CLI."""
    from worldsim.cli import main

    out = tmp_path_factory.mktemp("hold-model") / "model"
    assert main(["train-foresight", "--hold", "--checkpoint", str(tiny_world_model), "--data",
                 str(branch_data), "--out", str(out), "--holdout", "0.25", "--epochs", "3",
                 "--quiet"]) == 0
    return out
