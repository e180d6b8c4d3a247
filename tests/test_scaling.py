"""The compute-scaling benchmark: sizes, FLOP counts, and a toy run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.scaling import Size, main, parse_size, size_config
from worldsim.errors import ConfigError


def test_sizes_are_a_preset_and_a_share_of_its_steps() -> None:
    assert parse_size("small") == Size("small", 1.0) and parse_size("small").name == "small"
    quarter = parse_size("small:0.25")
    assert quarter.name == "small:0.25"
    full, part = size_config(Size("small"), 3), size_config(quarter, 3)
    assert part.dynamics_training.steps == round(full.dynamics_training.steps / 4)
    assert part.autoencoder_training.steps == round(full.autoencoder_training.steps / 4)
    assert part.dynamics == full.dynamics  # the same network, less training
    for bad, message in (("huge", "unknown preset 'huge'"), ("small:2", r"in \(0, 1\]"),
                         ("small:x", "'x' is not a number")):
        with pytest.raises(ConfigError, match=message):
            parse_size(bad)


def test_scaling_run_counts_flops_and_scores_every_size(tmp_path: Path) -> None:
    args = ["--world", "physics/Body", "--sizes", "tiny:0.5", "tiny", "--episodes", "4",
            "--episode-steps", "24", "--horizon", "8", "--clips", "4", "--quick",
            "--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path / "results"),
            "--quiet"]
    with pytest.raises(ConfigError, match="sampler setting 'steps=3'"):
        main([*args, "--sampler", "steps=3"])  # refused before any work
    with pytest.raises(ConfigError, match="does not take option"):
        main([*args, "--world-options", "colour=3"])
    assert not (tmp_path / "work").exists()
    assert main(args) == 0
    (written,) = (tmp_path / "results").glob("scaling-physics-body-tiny0.5_tiny-*.json")
    results = json.loads(written.read_text())["results"]
    half, full = results["sizes"]
    assert (half["size"], full["size"]) == ("tiny:0.5", "tiny")
    assert 0 < half["train_flops"] < full["train_flops"]
    assert full["train_flops"] == pytest.approx(2 * half["train_flops"], rel=0.1)
    assert set(full["probes"]) == {"solid_walls", "action_response", "static_stability"}
    assert all(0.0 <= score <= 1.0 for score in full["probes"].values())
    assert "8" in full["fidelity"]["open_loop"]["by_horizon"]
    assert (tmp_path / "results" / f"{written.stem}.png").stat().st_size > 1000
    assert "| tiny |" in written.with_suffix(".md").read_text()
    # Another sampler re-measures the finished sizes without training them again.
    assert main([*args, "--sizes", "tiny", "--sampler", "denoise_steps=1"]) == 0
    (again,) = (tmp_path / "results").glob("scaling-physics-body-tiny-denoise_steps1-*.json")
    row = json.loads(again.read_text())["results"]["sizes"][0]
    assert row["sampler"]["denoise_steps"] == 1
    assert row["train_seconds"] == full["train_seconds"]
    assert "Sampler changed: denoise_steps=1" in again.with_suffix(".md").read_text()
    # A world with other options gets its own data, runs and results, and is probed as such.
    assert main([*args, "--sizes", "tiny:0.5", "--world-options", "size=8"]) == 0
    (other,) = (tmp_path / "results").glob("scaling-physics-body-size8-tiny0.5-*.json")
    assert json.loads(other.read_text())["results"]["world_options"] == {"size": 8}
    info = json.loads((tmp_path / "work" / "physics-Body" / "data-size8" / "dataset.json")
                      .read_text())
    assert info["env_options"]["size"] == 8
    assert (tmp_path / "work" / "physics-Body" / "tiny-0.5-size8").is_dir()
