"""The foresight head: the chance that the next step ends the episode, read before it is drawn."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from worldsim.diffusion import Denoiser, DenoiserConfig, EDMObjective
from worldsim.diffusion.edm import foresight_loss
from worldsim.errors import ConfigError
from worldsim.metrics import roc_auc
from worldsim.models.dit import DYNAMICS_PRESETS, DynamicsModel, ForesightHead
from worldsim.world_model import WorldModel

TINY = dataclasses.replace(DYNAMICS_PRESETS["tiny"], foresight_head=True)


@pytest.fixture(scope="module")
def foresight_model(tiny_world_model: Path, tiny_takecover_data: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny TakeCover model given a foresight head by the CLI."""
    from worldsim.cli import main

    out = tmp_path_factory.mktemp("foresight") / "model"
    assert main(["train-foresight", "--checkpoint", str(tiny_world_model), "--data",
                 str(tiny_takecover_data), "--out", str(out), "--epochs", "3", "--quiet"]) == 0
    return out


def set_hazards(model: WorldModel, probabilities: list[float]) -> None:
    """Make the foresight head say ``probabilities[a]`` for action ``a``, whatever it sees."""
    last = model.denoiser.model.foresight_head.mlp[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.logit(torch.tensor(probabilities), eps=1e-9))


def test_cached_foresight_equals_the_training_pass() -> None:
    torch.manual_seed(0)
    model = DynamicsModel(TINY).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.15)
    frames, channels = 6, TINY.latent_channels
    context = torch.randn(2, frames, channels, 8, 8)
    noise = torch.full((2, frames), -1.2)
    actions = torch.randint(0, TINY.num_actions, (2, frames))
    full = model(torch.randn_like(context), noise, context, noise, actions)
    assert full.foresight_logits.shape == (2, frames, TINY.num_actions)
    cache, _, _ = model.start(context[:, :2], noise[:, :2], actions[:, :2])
    assert torch.allclose(cache.foresight_logits, full.foresight_logits[:, 1], atol=1e-4)
    for t in range(2, frames):
        model.commit(cache, context[:, t:t + 1], noise[:, t:t + 1], actions[:, t])
        assert torch.allclose(cache.foresight_logits, full.foresight_logits[:, t], atol=1e-4)
    # a restarted row takes its new prompt's logits, the other keeps its own
    kept = cache.foresight_logits[1].clone()
    model.restart_rows(cache, torch.tensor([True, False]), context[:1, :1], noise[:1, :1],
                       actions[:1, :1])
    assert torch.allclose(cache.foresight_logits[0], full.foresight_logits[0, 0], atol=1e-4)
    assert torch.equal(cache.foresight_logits[1], kept)


def test_objective_scores_the_head_on_the_next_steps_end_for_the_action_taken() -> None:
    torch.manual_seed(0)
    denoiser = Denoiser(DynamicsModel(TINY), DenoiserConfig())
    latents = torch.randn(2, 5, TINY.latent_channels, 8, 8)
    actions = torch.randint(0, TINY.num_actions, (2, 5))
    ends = torch.zeros(2, 5)
    ends[0, 4] = 1
    loss, metrics = EDMObjective().loss(denoiser, latents, actions, torch.zeros(2, 5), ends)
    assert "loss_foresight" in metrics
    loss.backward()
    assert denoiser.model.foresight_head.mlp[-1].weight.grad.abs().sum() > 0
    # frame t's logit for the action taken next, against that step's end
    logits = torch.zeros(2, 5, TINY.num_actions)
    logits[0, 3, actions[0, 4]] = 8.0  # sure of the end that came: nearly no loss there
    weight = torch.ones(2, 5)
    sure = foresight_loss(logits, actions, ends, weight, TINY.num_actions)
    logits[0, 3, actions[0, 4]] = -8.0  # sure it would not: a large loss
    wrong = foresight_loss(logits, actions, ends, weight, TINY.num_actions)
    assert wrong > sure + 7
    # steps whose action is unknown are not scored
    unknown = torch.full_like(actions, TINY.num_actions)
    assert foresight_loss(logits, unknown, ends, weight, TINY.num_actions) == 0


def test_fit_head_learns_a_hazard_of_the_state_and_the_action() -> None:
    """The end comes where feature 0 is high *and* action 2 is taken; calibrated fit."""
    from worldsim.foresight import FrameStates, fit_head

    generator = torch.Generator().manual_seed(0)

    def states(rows: int) -> FrameStates:
        features = torch.randn(rows, 16, generator=generator)
        actions = torch.randint(0, 3, (rows,), generator=generator)
        ends = ((features[:, 0] > 1.0) & (actions == 2)).float()
        return FrameStates(features, actions, ends)

    head = ForesightHead(16, 3)
    figures = fit_head(head, states(6000), states(2000), epochs=30, progress=False)
    assert figures["held_out_auc"] > 0.95
    assert figures["mean_probability"] == pytest.approx(figures["end_rate"], rel=0.3)
    with torch.no_grad():  # the same state: the action decides
        logits = head.read(torch.tensor([[2.5] + [0.0] * 15]))[0]
    assert logits[2] > logits[0] + 3 and logits[2] > logits[1] + 3
    no_ends = states(100)
    no_ends.ends.zero_()
    with pytest.raises(ConfigError, match="episodes that end"):
        fit_head(ForesightHead(16, 3), no_ends, states(100), progress=False)


def test_train_foresight_adds_a_head_and_changes_nothing_else(
        foresight_model: Path, tiny_world_model: Path) -> None:
    before, after = WorldModel.load(tiny_world_model), WorldModel.load(foresight_model)
    assert not before.has_foresight and after.has_foresight
    theirs = after.state_dict()
    for name, value in before.state_dict().items():
        assert torch.equal(value, theirs[name]), name
    assert {n for n in theirs if n not in before.state_dict()} == {
        f"denoiser.model.foresight_head.{p}" for p in
        ("norm.weight", "norm.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias")}
    record = after.info.trained["foresight"]
    assert record["held_out_ends"] >= 1 and 0 < record["mean_probability"] < 1
    assert record["episodes_fitted"] + record["episodes_held_out"] == 6
    assert record["machine"]["cpu_count"] and record["wall_seconds"] > 0
    with pytest.raises(ConfigError, match="no foresight head"):
        before.foresight(before.start(torch.zeros(1, 1, 3, 64, 64, dtype=torch.uint8),
                                      torch.zeros(1, 0, dtype=torch.long)))


def test_steps_report_the_foresight_read_before_the_frame_is_drawn(foresight_model: Path
                                                                   ) -> None:
    model = WorldModel.load(foresight_model)
    set_hazards(model, [0.1, 0.5, 0.9])
    state = model.start(torch.zeros(3, 1, 3, 64, 64, dtype=torch.uint8),
                        torch.zeros(3, 0, dtype=torch.long))
    assert torch.allclose(model.foresight(state), torch.tensor([[0.1, 0.5, 0.9]] * 3))
    result = model.step(state, torch.tensor([2, 0, 1]), torch.Generator().manual_seed(0))
    assert torch.allclose(result.foresight_prob, torch.tensor([0.9, 0.1, 0.5]))
    assert torch.equal(result.end_probability("foresight"), result.foresight_prob)
    assert torch.equal(result.end_probability("frame"), result.termination_prob)
    assert model.resolve_ends("auto") == "foresight"
    with pytest.raises(ConfigError, match="ends must be one of"):
        model.resolve_ends("sometimes")


def test_dreams_end_by_the_foresight_head(foresight_model: Path, tiny_world_model: Path) -> None:
    from envs.dream import DreamEnv

    model = WorldModel.load(foresight_model)
    set_hazards(model, [0.0, 1.0, 0.0])  # only "left" ends the episode
    env = DreamEnv(model=model, obs_mode="latent", termination="threshold")
    assert env.ends == "foresight"
    env.reset(seed=0)
    for _ in range(5):
        _, _, terminated, _, info = env.step(0)
        assert not terminated and info["termination_prob"] < 1e-6
    _, _, terminated, _, info = env.step(1)
    assert terminated and info["termination_prob"] == pytest.approx(1.0)
    by_frame = DreamEnv(model=model, obs_mode="latent", termination="threshold", ends="frame")
    by_frame.reset(seed=0)
    _, _, _, _, info = by_frame.step(1)
    assert info["termination_prob"] < 1.0  # the termination head on the drawn frame
    with pytest.raises(ConfigError, match="train-foresight"):
        DreamEnv(tiny_world_model, ends="foresight")


def test_planner_weighs_plans_by_the_foresight_head(foresight_model: Path) -> None:
    from agents.planner import Planner, PlannerConfig

    model = WorldModel.load(foresight_model)
    set_hazards(model, [0.5, 0.0, 0.2])
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    planner = Planner(model, PlannerConfig(horizon=3, samples=2, keep_bonus=0.0))
    planner.reset(0)
    assert [planner.act(frame) for frame in frames] == [1, 1, 1]
    np.testing.assert_allclose(planner.last_scores, [0.875, 3.0, 0.8 + 0.64 + 0.512],
                               rtol=1e-5)
    by_frame = Planner(model, PlannerConfig(horizon=3, samples=2, keep_bonus=0.0, ends="frame"))
    by_frame.reset(0)
    by_frame.act(frames[0])
    assert not np.allclose(by_frame.last_scores, [0.875, 3.0, 0.8 + 0.64 + 0.512], rtol=1e-3)
    with pytest.raises(ConfigError, match="planner ends"):
        PlannerConfig(ends="never")


def test_foresight_benchmark_scores_the_head(foresight_model: Path) -> None:
    from benchmarks.foresight import evaluate

    results = evaluate(str(foresight_model), ["default"], episodes=1, horizon=2, samples=2,
                       stride=1, probe_episodes=0, progress=False)
    assert set(results["auc"]) == {"default", "teacher_forced", "default, foresight head",
                                   "teacher_forced, foresight head"}
    for name in ("default, foresight head", "teacher_forced, foresight head"):
        row = results["auc"][name]["1"]
        assert row["deaths_coming"] >= 1 and 0.0 <= row["auc"] <= 1.0


def test_roc_auc_of_a_perfect_and_a_reversed_ranking() -> None:
    labels = np.array([0, 0, 1, 1], dtype=bool)
    assert roc_auc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0


def test_train_with_a_foresight_head(tiny_takecover_data: Path, tmp_path: Path) -> None:
    from worldsim.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_takecover_data), "--out", str(run), "--preset",
                 "tiny", "--foresight-head", "--quiet"]) == 0
    model = WorldModel.load(run)
    assert model.has_foresight and model.config.dynamics.foresight_head
    state = model.start(torch.zeros(2, 1, 3, 64, 64, dtype=torch.uint8),
                        torch.zeros(2, 0, dtype=torch.long))
    probabilities = model.foresight(state)
    assert probabilities.shape == (2, model.num_actions)
    assert ((probabilities > 0) & (probabilities < 1)).all()
    import json

    report = json.loads((run / "train.json").read_text())
    assert "loss_foresight" in json.dumps(report["dynamics"])
