"""Counterfactual dodging: which held action survives, in the real game and in the dream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.dodge import describe, evaluate, real_outcomes, score
from worldsim.errors import ConfigError


def test_score_counts_only_decisive_states() -> None:
    outcomes = [np.array([2, 0, 0]), np.array([0, 0, 0]), np.array([0, 3, 1])]
    right = [np.array([[0.9, 2.0], [0.1, 7.9], [0.2, 7.5]]), np.zeros((3, 2)),
             np.array([[0.1, 7.9], [0.5, 6.0], [0.8, 3.0]])]
    figures = score(outcomes, right)
    assert figures["decisive_states"] == 2  # the state where every action survives is left out
    assert figures["accuracy"] == 1.0 and figures["contrast_auc"] == 1.0
    assert figures["chance"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert figures["fixed_action_accuracy"] == [0.5, 0.5, 0.5]
    wrong = [r[:, ::-1] * np.array([1.0, 0.1]) for r in right]  # risk and survival swapped
    assert score(outcomes, wrong)["contrast_auc"] == 0.0
    flat = [np.ones((3, 2)) for _ in right]  # no contrast at all: ties count half
    assert score(outcomes, flat)["contrast_auc"] == 0.5
    assert score([np.zeros(3, dtype=int)], [np.zeros((3, 2))])["accuracy"] is None


def test_real_outcomes_replay_the_game_exactly() -> None:
    """Replayed from its seed, the episode's own last action dies at the step it died."""
    from envs import make_env
    from envs.collect import play_episode
    from envs.policies import make_policy

    env = make_env("vizdoom/TakeCover")
    try:
        played = play_episode(env, make_policy("sticky:4", 3), 11)
        assert played.terminated[-1]
        last = len(played.actions) - 1
        ends = real_outcomes(env, 11, played.actions, last, 3, 3)
        assert ends[played.actions[last]] == 1
        # earlier on, the episode's own actions were survived for a while
        assert real_outcomes(env, 11, played.actions, 0, 2, 3).tolist() == [0, 0, 0]
    finally:
        env.close()


def test_dodge_runs_on_a_tiny_model(tiny_world_model: Path) -> None:
    results = evaluate(str(tiny_world_model), ["default"], episodes=1, horizon=4, samples=2,
                       stride=3, progress=False)
    assert results["states"] >= 1 and 0.0 <= results["decisive_share"] <= 1.0
    assert list(results["dreams"]) == ["default, frame"]
    row = results["dreams"]["default, frame"]
    assert row["decisive_states"] == round(results["decisive_share"] * results["states"])
    assert "| default, frame |" in describe(results)
    with pytest.raises(ConfigError, match=">= 1"):
        evaluate(str(tiny_world_model), ["default"], episodes=1, horizon=0, progress=False)


def test_the_games_own_foresight_plays_a_whole_episode_deterministically() -> None:
    from benchmarks.dodge import oracle_episode, summary
    from envs import make_env

    env = make_env("vizdoom/TakeCover", frame_skip=4, max_frames=120)
    try:
        first = oracle_episode(env, 3, horizon=4)
        assert first == oracle_episode(env, 3, horizon=4)
        assert 0 < first["steps"] <= 30 and first["frames"] <= 120
    finally:
        env.close()
    assert summary([100, 200, 300]) == {"mean": 200.0, "std": 81.6, "median": 200.0,
                                        "min": 100.0, "max": 300.0}
