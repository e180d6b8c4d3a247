"""``worldsim bench`` on the tiny TakeCover world model: every part runs and reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench import BenchSettings, run_bench
from worldsim.cli import main as cli_main
from worldsim.errors import ConfigError

TINY = BenchSettings(episodes=3, horizon=2, clips=4, speed_batches=(2,), speed_seconds=0.05,
                     transfer_episodes=2, dream_temperatures=(1.0,), video_steps=6,
                     probes_quick=True)


def test_bench_writes_json_report_plots_and_video(tiny_world_model: Path, tmp_path: Path) -> None:
    path = run_bench(str(tiny_world_model), tmp_path / "results", suite="tinybench",
                     parts=("fidelity", "speed", "video"), work_dir=tmp_path / "work",
                     workers=1, settings=TINY, progress=False)
    payload = json.loads(path.read_text())
    assert path.name.startswith("tinybench-") and payload["machine"]["cpu_count"] >= 1
    results = payload["results"]
    fidelity = results["fidelity"]
    assert fidelity["unseen_data"] and fidelity["held_out_episodes"] == 3
    assert 0 < fidelity["reconstruction_psnr"] < 100
    assert set(fidelity["open_loop"]["by_horizon"]) == {"1"}
    term = fidelity["termination"]  # TakeCover episodes end by death: the ratio is defined
    assert term["real_events"] > 0 and term["expected_over_real_ends"] > 0
    assert results["speed"]["steps"][0]["dream_steps_per_s"] > 0
    assert Path(results["video"]["real_vs_dream"]).stat().st_size > 1000
    report = path.with_suffix(".md").read_text()
    assert "## Fidelity" in report and "## Dream speed" in report
    for plot in ("fidelity", "speed"):
        assert (path.parent / f"{path.stem}-{plot}.png").stat().st_size > 1000
    # recorded episodes are kept and reused: a second run records nothing new
    episodes = sorted((tmp_path / "work").rglob("*.safetensors"))
    again = run_bench(str(tiny_world_model), tmp_path / "results", suite="tinybench2",
                      parts=("fidelity",), work_dir=tmp_path / "work", workers=1, settings=TINY,
                      progress=False, sampler={"denoise_steps": 3})
    assert sorted((tmp_path / "work").rglob("*.safetensors")) == episodes
    # the sampler dreams used is in the results and the report; --sampler changes it
    assert results["sampler"]["denoise_steps"] == 2  # the tiny preset's
    assert json.loads(again.read_text())["results"]["sampler"]["denoise_steps"] == 3
    assert "denoise_steps=3" in again.with_suffix(".md").read_text()


def test_bench_rejects_unknown_parts_and_bad_suite_names(tiny_world_model: Path,
                                                         tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown bench part"):
        run_bench(str(tiny_world_model), tmp_path, parts=("fidelity", "vibes"), settings=TINY)
    with pytest.raises(ConfigError, match="suite name"):
        run_bench(str(tiny_world_model), tmp_path, suite="../escape", settings=TINY)
    assert cli_main(["bench", "--checkpoint", str(tmp_path / "nothing"), "--quick"]) == 2
    assert cli_main(["bench", "--checkpoint", str(tiny_world_model), "--quick",
                     "--sampler", "steps=3"]) == 2


def test_dream_events_parses_sampler_settings_and_rejects_bad_ones() -> None:
    from benchmarks.dream_events import parse_sampler

    assert parse_sampler("default") == ("default", {})
    assert parse_sampler("s20:sigma_max=20,denoise_steps=4") == (
        "s20", {"sigma_max": 20.0, "denoise_steps": 4})
    for bad in ("x:colour=3", "x:temperature", "x:temperature=hot", ":temperature=1"):
        with pytest.raises(ConfigError):
            parse_sampler(bad)


def test_dream_events_counts_only_live_frames() -> None:
    import numpy as np

    from benchmarks.dream_events import event_rates

    counts = np.array([[2] * 12, [4] * 12])
    alive = np.ones((2, 12), bool)
    alive[1, 3:] = False  # the second episode ends after 3 steps: its later 4s never count
    rates = event_rates(counts, alive)
    assert rates["all"] == round((2 * 12 + 4 * 3) / 15, 3)
    assert rates["last_10"] == round((2 * 10 + 4 * 1) / 11, 3)  # steps 2..11
    assert rates["first_10"] == round((2 * 10 + 4 * 3) / 13, 3)


def test_dream_events_observation_stats_rank_a_blurred_dream_below_the_game() -> None:
    import numpy as np
    import torch

    from benchmarks.dream_events import observation_stats

    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (2, 5, 16, 16, 3)).astype(np.uint8)
    # a 2x2 box blur: what a dream that regresses to the mean looks like
    padded = np.pad(sharp.astype(float), ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")
    blurred = ((padded[:, :, :-1, :-1] + padded[:, :, 1:, :-1] + padded[:, :, :-1, 1:]
                + padded[:, :, 1:, 1:]) / 4).astype(np.uint8)
    latents = torch.from_numpy(rng.normal(size=(2, 5, 4, 2, 2)))
    alive = np.ones((2, 5), bool)
    game = observation_stats(sharp, alive, latents)
    dream = observation_stats(blurred, alive, latents / 2)
    assert dream["sharpness"] < 0.7 * game["sharpness"]
    assert dream["latent_std"] == pytest.approx(game["latent_std"] / 2, rel=1e-3)
    # dead steps do not count: a wild frame after the end changes nothing
    alive[1, 3:] = False
    wild = sharp.copy()
    wild[1, 3:] = 0
    wild_latents = latents.clone()
    wild_latents[1, 3:] = 100.0
    assert (observation_stats(wild, alive, wild_latents)
            == observation_stats(sharp, alive, latents))


def test_roc_auc_matches_counting_pairs_and_handles_ties_and_one_class() -> None:
    import numpy as np

    from benchmarks.foresight import roc_auc

    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(np.array([0, 1, 0, 1]), np.full(4, 0.3)) == 0.5  # ties count half
    assert roc_auc(np.zeros(5), np.arange(5.0)) is None
    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.3
    scores = np.round(rng.random(200) + 0.3 * labels, 1)  # coarse: many ties
    pairs = [(p > n) + 0.5 * (p == n) for p in scores[labels] for n in scores[~labels]]
    assert abs(roc_auc(labels, scores) - float(np.mean(pairs))) < 1e-12


def test_foresight_scores_every_horizon_for_each_dream_and_the_real_frames(
        tiny_world_model: Path) -> None:
    from benchmarks.foresight import describe, evaluate

    results = evaluate(str(tiny_world_model), ["default", "s3:denoise_steps=3"], episodes=1,
                       horizon=2, samples=2, stride=1, probe_episodes=4, progress=False)
    assert set(results["auc"]) == {"default", "s3", "teacher_forced",
                                   "default, next-step read-out", "s3, next-step read-out"}
    assert results["samplers"]["s3"] == {"denoise_steps": 3}
    for table in results["auc"].values():
        assert list(table) == ["1", "2"]
        for row in table.values():
            # the episode ends by a death (TakeCover), so its last steps have one coming
            assert row["deaths_coming"] >= 1 and row["scored_steps"] > row["deaths_coming"]
            assert 0.0 <= row["auc"] <= 1.0
            assert 0.0 <= row["mean_risk_death_coming"] <= 1.0
    # a death within 1 step is also within 2: one more step counts as coming at horizon 2
    default = results["auc"]["default"]
    assert default["2"]["deaths_coming"] == default["1"]["deaths_coming"] + 1
    read_out = results["read_out"]
    assert read_out["train_episodes"] == 3 and list(read_out["auc"]) == ["1", "2"]
    for row in read_out["auc"].values():  # the held-out episode ends by a death too
        assert row["deaths_coming_held_out"] >= 1
        assert 0.0 <= row["latent"] <= 1.0 and 0.0 <= row["state"] <= 1.0
    assert "| s3 |" in describe(results) and "read-out of the real state" in describe(results)
    with pytest.raises(ConfigError, match="probe episodes"):
        evaluate(str(tiny_world_model), ["default"], episodes=1, probe_episodes=2,
                 progress=False)
    with pytest.raises(ConfigError, match=">= 1"):
        evaluate(str(tiny_world_model), ["default"], episodes=1, horizon=0, progress=False)


def test_probe_reads_out_a_feature_that_carries_the_label_and_not_noise() -> None:
    import numpy as np
    import torch

    from benchmarks.foresight import fit_probe

    rng = np.random.default_rng(0)
    labels = rng.random(400) < 0.1
    train = np.arange(400) < 300
    noise = torch.from_numpy(rng.normal(size=(400, 6))).float()
    telling = noise.clone()
    telling[:, 2] += torch.from_numpy(labels * 3.0).float()  # one column carries the label
    assert fit_probe(telling, labels, train) > 0.95
    assert 0.3 < fit_probe(noise, labels, train) < 0.7
    assert fit_probe(noise, np.zeros(400, dtype=bool), train) is None
    # the calibrated next-step read-out gives probabilities that follow the telling column
    from benchmarks.foresight import NextStepReadout

    actions = torch.zeros(400, dtype=torch.long)
    assert NextStepReadout.features(telling, actions, 3).shape == (400, 9)
    readout = NextStepReadout.fit(telling, actions, labels, 3)
    probs = readout(telling, actions)
    assert probs.shape == (400,) and float(probs[labels].mean()) > 0.5
    assert float(probs[~labels].mean()) < 0.1
    assert abs(float(probs.mean()) - labels.mean()) < 0.03  # calibrated: about the base rate
