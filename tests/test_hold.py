"""The hold head: from the real state, which held action ends the episode within its steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from worldsim.errors import ConfigError
from worldsim.metrics import dodge_figures
from worldsim.models.dit import HoldHead
from worldsim.world_model import WorldModel


def test_fit_hold_head_learns_which_action_survives() -> None:
    """Feature 0's sign says whether left or right dies; holding still always survives."""
    from worldsim.foresight import BranchStates, fit_hold_head

    generator = torch.Generator().manual_seed(0)

    def states(rows: int) -> BranchStates:
        features = torch.randn(rows, 16, generator=generator) * 3 + 5  # far from standard
        left_dies = (features[:, 0] > 5).float()
        ends = torch.stack([torch.zeros(rows), left_dies, 1 - left_dies], dim=1)
        return BranchStates(features, ends, torch.arange(rows))

    head = HoldHead(16, 3)
    figures = fit_hold_head(head, states(3000), states(600), epochs=30, progress=False)
    assert figures["accuracy"] > 0.95 and figures["contrast_auc"] > 0.95
    assert figures["decisive_states"] == figures["held_out_states"] == 600
    assert figures["fixed_action_accuracy"][0] == 1.0
    assert head.mean[0] == pytest.approx(5, abs=0.3)  # its input standardised by the fit
    with torch.no_grad():  # the same state otherwise: feature 0 decides which move dies
        risk = torch.sigmoid(head.read(torch.tensor([[9.0] + [5.0] * 15,
                                                     [1.0] + [5.0] * 15])))
    assert risk[0, 1] > 0.8 and risk[0, 2] < 0.2 and risk[1, 2] > 0.8 and risk[1, 1] < 0.2
    with pytest.raises(ConfigError, match="both sides"):
        fit_hold_head(HoldHead(16, 3), states(10), BranchStates(
            torch.zeros(0, 16), torch.zeros(0, 3), torch.zeros(0)), progress=False)


def test_hold_head_members_read_their_mean_chance() -> None:
    """An ensemble head's logit is that of its members' mean chance, finite where a member
    is sure; one member reads as the plain head, with the plain head's weights."""
    torch.manual_seed(0)
    head = HoldHead(8, 3, members=3)
    assert len(head.members) == 3 and isinstance(head.mlp, torch.nn.ModuleList)
    head.eval()
    states = torch.randn(5, 8)
    with torch.no_grad():
        chances = torch.stack([torch.sigmoid(m(head.standardise(states)))
                               for m in head.members])
        assert torch.allclose(torch.sigmoid(head.read(states)), chances.mean(0), atol=1e-6)
        head.members[0][-1].bias.fill_(1e4)  # sure to die, the other two are not
        risk = torch.sigmoid(head.read(states))
    assert torch.isfinite(head.read(states)).all()
    assert ((risk > 1 / 3) & (risk < 1)).all()
    plain = HoldHead(8, 3)
    assert plain.members == [plain.mlp] and set(plain.state_dict()) == {
        "mean", "std", *(f"mlp.{k}" for k in ("0.weight", "0.bias", "3.weight", "3.bias"))}


def test_fit_hold_head_fits_each_member_from_its_own_seed() -> None:
    from worldsim.foresight import BranchStates, fit_hold_head

    generator = torch.Generator().manual_seed(1)

    def states(rows: int) -> BranchStates:
        features = torch.randn(rows, 16, generator=generator)
        left_dies = (features[:, 0] + 0.5 * torch.randn(rows, generator=generator) > 0).float()
        ends = torch.stack([torch.zeros(rows), left_dies, 1 - left_dies], dim=1)
        return BranchStates(features, ends, torch.arange(rows))

    fitted, held = states(800), states(300)
    torch.manual_seed(0)
    head = HoldHead(16, 3, members=2)
    figures = fit_hold_head(head, fitted, held, epochs=5, progress=False)
    assert len(figures["member_figures"]) == 2
    first, second = figures["member_figures"]
    assert first["accuracy"] > 0.7 and second["accuracy"] > 0.7
    assert first["held_out_loss"] != second["held_out_loss"]  # their own seeds
    assert figures["accuracy"] > 0.7 and "best_epoch" not in figures
    # the loss is convex in the chance: the mean chance's is at most the members' mean loss
    assert figures["held_out_loss"] <= (first["held_out_loss"] + second["held_out_loss"]) / 2


def test_dodge_figures_count_only_decisive_states() -> None:
    survives = np.array([[True, False, True], [True, True, True], [False, False, True]])
    risk = np.array([[0.1, 0.9, 0.3], [0.5, 0.5, 0.5], [0.2, 0.6, 0.4]])
    figures = dodge_figures(survives, risk)
    assert figures["decisive_states"] == 2
    assert figures["accuracy"] == 0.5  # right in the first state, wrong in the last
    # dying-above-surviving pairs: 0.9 > 0.1, 0.9 > 0.3; 0.2 < 0.4 (wrong), 0.6 > 0.4
    assert figures["contrast_auc"] == pytest.approx(3 / 4)
    assert figures["fixed_action_accuracy"] == [0.5, 0.0, 1.0]
    assert dodge_figures(survives, risk, choice=np.array([2, 0, 2]))["accuracy"] == 1.0


def test_branch_states_pair_each_state_with_every_actions_fate(
        tiny_world_model: Path, branch_data: Path) -> None:
    from worldsim.data import Episode, EpisodeDataset
    from worldsim.foresight import branch_fates, branch_states, teacher_forced_states

    model = WorldModel.load(tiny_world_model)
    dataset = EpisodeDataset(branch_data)
    fates = branch_fates(dataset)
    found = branch_states(model, dataset, progress=False)
    assert len(found.ends) == sum(len(states) for states in fates.values()) > 0
    assert (found.ends.sum(dim=1) % 3 != 0).all()  # decisive: some die, some survive
    # the state of the first branching state is the main episode's, real frames fed in
    index = int(found.episodes[0])
    t = min(fates[index])
    main = Episode.load(branch_data / f"episodes/ep_{index:06d}.safetensors")
    latents = model.encode_episode(main.frames)[None]
    states = teacher_forced_states(model, latents, torch.as_tensor(main.actions)[None].long())
    assert torch.allclose(found.states[0], states[0, t], atol=1e-5)
    assert found.ends[0].tolist() == [float(fates[index][t][a]) for a in range(3)]


def test_branch_states_add_the_states_dreams_reach_with_the_same_fates(
        tiny_world_model: Path, branch_data: Path) -> None:
    """--drawn-steps: each branching state also as a dream reaches it after drawing its last
    K frames itself; the same fates, noise per state (the batch does not change them)."""
    from collections import Counter

    from worldsim.data import EpisodeDataset
    from worldsim.foresight import branch_fates, branch_states

    model = WorldModel.load(tiny_world_model)
    dataset = EpisodeDataset(branch_data)
    real = branch_states(model, dataset, progress=False)
    found = branch_states(model, dataset, progress=False, drawn_steps=(1, 3), seed=5)
    assert torch.equal(found.states[found.drawn == 0], real.states)
    fates = branch_fates(dataset)
    for k in (1, 3):
        rows = found.rows(found.drawn == k)
        expected = Counter((index, tuple(float(by[a]) for a in range(3)))
                           for index, states in fates.items()
                           for t, by in states.items() if t >= k)
        assert Counter(zip(rows.episodes.tolist(), map(tuple, rows.ends.tolist()),
                           strict=True)) == expected
        assert len(rows.ends) > 0
    drawn = found.states[found.drawn > 0]
    assert not any(torch.allclose(row, other, atol=1e-4) for row in drawn[:4]
                   for other in real.states)  # a drawn frame moves the state
    one_by_one = branch_states(model, dataset, batch=1, progress=False, drawn_steps=(1, 3),
                               seed=5)
    assert torch.allclose(one_by_one.states, found.states, atol=1e-4)
    half = branch_states(model, dataset, progress=False, drawn_steps=(1, 3), seed=5,
                         drawn_share=0.5)
    assert 0 < (half.drawn > 0).sum() < (found.drawn > 0).sum()
    assert all(any(torch.equal(row, other) for other in drawn) for row in half.states[
        half.drawn > 0])  # the same draws, fewer of them
    other_seed = branch_states(model, dataset, progress=False, drawn_steps=(1,), seed=6)
    assert not torch.allclose(other_seed.states[other_seed.drawn == 1],
                              found.states[found.drawn == 1])


def test_every_state_fits_the_fates_of_states_where_all_moves_agree(
        tiny_world_model: Path, branch_data: Path, tmp_path: Path) -> None:
    """--every-state: the fates every episode keeps, decisive or not; calibration figures."""
    import shutil

    from worldsim.data import Episode, EpisodeDataset
    from worldsim.foresight import branch_states, train_foresight

    model = WorldModel.load(tiny_world_model)
    dataset = EpisodeDataset(branch_data)
    decisive = branch_states(model, dataset, progress=False)
    every = branch_states(model, dataset, progress=False, every_state=True)
    kept = [Episode.load(branch_data / f"episodes/ep_{i:06d}.safetensors").metadata[
        "branch_fates"] for i in range(4)]
    assert len(every.ends) == sum(len(k) for k in kept) > len(decisive.ends)
    agree = (every.ends.sum(dim=1) % 3 == 0)
    assert agree.any() and (~agree).sum() == len(decisive.ends)
    record = train_foresight(tiny_world_model, branch_data, tmp_path / "m", hold=True,
                             holdout=0.25, epochs=2, every_state=True, progress=False)
    assert record["every_state"] and record["held_out_states"] > record["decisive_states"]
    assert 0 < record["mean_risk"] < 1 and 0 <= record["end_share"] <= 1
    # data recorded before the fates were kept: a clear error, nothing written
    old = tmp_path / "old"
    shutil.copytree(branch_data, old)
    first = old / "episodes/ep_000000.safetensors"
    episode = Episode.load(first)
    del episode.metadata["branch_fates"]
    episode.save(first)
    with pytest.raises(ConfigError, match="keeps no fates"):
        train_foresight(tiny_world_model, old, tmp_path / "x", hold=True, every_state=True,
                        progress=False)
    assert not (tmp_path / "x").exists()


def test_hit_fates_make_the_states_where_the_moves_hits_differ_decisive(
        tiny_world_model: Path, branch_data: Path, tmp_path: Path) -> None:
    """--fate hit: the hits every episode keeps (lost health, or ended) instead of the ends."""
    import shutil

    from worldsim.data import Episode, EpisodeDataset
    from worldsim.foresight import branch_states, train_foresight

    model = WorldModel.load(tiny_world_model)
    dataset = EpisodeDataset(branch_data)
    kept = [Episode.load(branch_data / f"episodes/ep_{i:06d}.safetensors").metadata
            for i in range(4)]
    hits = branch_states(model, dataset, progress=False, fate="hit")
    decisive = [(i, t) for i, meta in enumerate(kept)
                for t, hit in meta["branch_hits"].items() if len(set(hit)) > 1]
    assert len(hits.ends) == len(decisive) > 0
    assert ((hits.ends.sum(dim=1) > 0) & (hits.ends.sum(dim=1) < 3)).all()
    every_end = branch_states(model, dataset, progress=False, every_state=True)
    every_hit = branch_states(model, dataset, progress=False, every_state=True, fate="hit")
    assert torch.equal(every_end.states, every_hit.states)  # the same states, other fates
    assert (every_hit.ends >= every_end.ends).all()  # every end is a hit
    record = train_foresight(tiny_world_model, branch_data, tmp_path / "m", hold=True,
                             holdout=0.25, epochs=2, fate="hit", progress=False)
    assert record["fate"] == "hit" and record["held_out_states"] > 0
    # data kept without hits (a game that reports no health): a clear error, nothing written
    old = tmp_path / "old"
    shutil.copytree(branch_data, old)
    for i in range(4):
        first = old / f"episodes/ep_{i:06d}.safetensors"
        episode = Episode.load(first)
        del episode.metadata["branch_hits"]
        episode.save(first)
    with pytest.raises(ConfigError, match="keeps no hits"):
        train_foresight(tiny_world_model, old, tmp_path / "x", hold=True, fate="hit",
                        progress=False)
    for wrong, message in (({"fate": "hit"}, "add --hold"),
                           ({"fate": "miss", "hold": True}, "must be one of")):
        with pytest.raises(ConfigError, match=message):
            train_foresight(tiny_world_model, branch_data, tmp_path / "x", progress=False,
                            **wrong)
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def token_model(tiny_world_model: Path, branch_data: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model given a hold head on every token by the CLI."""
    from worldsim.cli import main

    out = tmp_path_factory.mktemp("token-model") / "tokens"
    assert main(["train-foresight", "--hold", "--tokens", "--checkpoint", str(tiny_world_model),
                 "--data", str(branch_data), "--out", str(out), "--holdout", "0.25",
                 "--epochs", "2", "--quiet"]) == 0
    return out


def test_hold_head_on_every_token(tiny_world_model: Path, branch_data: Path,
                                  token_model: Path) -> None:
    """--tokens: the head reads the frame's tokens, flattened; the state agents observe is
    those tokens, the foresight head still reads their mean."""
    from envs.dream import DreamVectorEnv
    from worldsim.data import EpisodeDataset
    from worldsim.foresight import branch_states

    model, pooled = WorldModel.load(token_model), WorldModel.load(tiny_world_model)
    tokens, width = model.tokens_per_frame, model.config.dynamics.width
    assert tokens > 1 and model.config.dynamics.hold_tokens == tokens
    assert model.info.trained["hold"]["tokens"] == tokens
    assert model.state_size == tokens * width and pooled.state_size == width
    head = model.denoiser.model.hold_head
    assert head is not None and head.mean.shape == (tokens * width,)
    # the same frames: the state is the tokens, whose mean is the pooled model's state
    found = branch_states(model, EpisodeDataset(branch_data), progress=False)
    plain = branch_states(pooled, EpisodeDataset(branch_data), progress=False)
    assert found.states.shape == (len(plain.states), tokens * width)
    assert torch.allclose(model.pool(found.states), plain.states, atol=1e-4)
    assert torch.equal(found.ends, plain.ends)
    risk = model.hold_risk(found.states)
    assert risk.shape == (len(found.states), model.num_actions)
    assert ((risk > 0) & (risk < 1)).all()
    dreams = DreamVectorEnv(model=model, num_envs=2, obs_mode="state", ends="hold")
    observation, _ = dreams.reset(seed=0)
    assert observation.shape == (2, tokens * width) and dreams.observation_space.shape[1:] == (
        tokens * width,)
    dreams.close()


def test_token_net_reads_each_token_through_one_layer_and_exports_exactly(
        token_model: Path, hold_model: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """--net tokens: a DQN whose Q-network reads the token state as the hold head does
    (one shared layer per token, then the MLP); the portable agent gives the same Q-values
    as the SB3 network it was exported from, and plays real frames."""
    import gymnasium
    from stable_baselines3 import DQN

    import agents
    import envs
    from agents.portable import ObservationSpec
    from agents.ppo import TOKEN_PROJECTION, TokenFeatures, export_agent, net_features
    from worldsim.cli import main

    model = WorldModel.load(token_model)
    tokens, width = model.tokens_per_frame, model.config.dynamics.width
    space = gymnasium.spaces.Box(-10, 10, (tokens * width,), np.float32)

    class Still(gymnasium.Env):  # only its spaces matter: the network is built, not trained
        observation_space, action_space = space, gymnasium.spaces.Discrete(model.num_actions)

    dqn = DQN("MlpPolicy", Still(), seed=0, policy_kwargs={
        "net_arch": [16], **net_features("tokens", model, "state", 1)})
    assert isinstance(dqn.q_net.features_extractor, TokenFeatures)
    agent = export_agent(dqn, model, ObservationSpec(kind="state"), {"net": "tokens"},
                         decision_steps=2)
    kinds = [spec["type"] for spec in agent.policy.layers]
    assert kinds == ["flatten", "unflatten", "linear", "silu", "flatten", "linear", "relu",
                     "linear"]
    assert agent.policy.layers[2]["in"] == width  # one layer, shared by every token
    states = torch.randn(5, tokens * width)
    with torch.no_grad():
        assert torch.allclose(agent.network(states), dqn.q_net(states), atol=1e-5)
        # a token's features depend on that token alone
        moved = states.clone()
        moved[:, :width] += 1
        features = dqn.q_net.features_extractor(moved) - dqn.q_net.features_extractor(states)
        assert features[:, TOKEN_PROJECTION:].abs().max() == 0
    reloaded = agents.load(agent.save(tmp_path / "saved"))
    with torch.no_grad():
        assert torch.equal(reloaded.network(states), agent.network(states))

    out = tmp_path / "dqn"  # the CLI trains one in the dream and it plays the real game
    assert main(["train-agent", "--checkpoint", str(token_model), "--algo", "dqn", "--net",
                 "tokens", "--obs-mode", "state", "--ends", "hold", "--steps", "32",
                 "--num-envs", "4", "--max-episode-steps", "4", "--algo-kwarg",
                 "learning_starts=8", "--out", str(out), "--quiet"]) == 0
    played = agents.load(out)
    assert played.info.trained["net"] == "tokens"
    env = envs.make_env("vizdoom/TakeCover")
    frame, _ = env.reset(seed=3)
    played.reset(seed=0)
    for _ in range(3):
        frame, *_ = env.step(played.act(frame))
    env.close()

    for wrong in (["--checkpoint", str(hold_model), "--obs-mode", "state"],  # pooled state
                  ["--checkpoint", str(token_model), "--obs-mode", "latent"]):
        assert main(["train-agent", *wrong, "--algo", "dqn", "--net", "tokens", "--steps",
                     "8", "--out", str(tmp_path / "refused"), "--quiet"]) != 0
        assert "--net tokens reads one frame's token state" in capsys.readouterr().err
        assert not (tmp_path / "refused").exists()


def test_train_foresight_hold_members_are_saved_and_read_back(
        tiny_world_model: Path, branch_data: Path, tmp_path: Path) -> None:
    from worldsim.cli import main
    from worldsim.foresight import train_foresight

    out = tmp_path / "members"
    assert main(["train-foresight", "--hold", "--tokens", "--members", "3", "--checkpoint",
                 str(tiny_world_model), "--data", str(branch_data), "--out", str(out),
                 "--holdout", "0.25", "--epochs", "2", "--quiet"]) == 0
    model = WorldModel.load(out)
    head = model.denoiser.model.hold_head
    assert model.config.dynamics.hold_members == 3 and head is not None
    assert len(head.members) == 3 and model.info.trained["hold"]["members"] == 3
    assert len(model.info.trained["hold"]["member_figures"]) == 3
    states = torch.randn(4, model.state_size)
    with torch.no_grad():
        chances = torch.stack([torch.sigmoid(m(head.standardise(states)))
                               for m in head.members]).mean(0)
    assert torch.allclose(model.hold_risk(states), chances, atol=1e-6)
    assert not torch.equal(head.members[0][1].weight, head.members[1][1].weight)
    with pytest.raises(ConfigError, match="members must be at least 1"):
        train_foresight(tiny_world_model, branch_data, tmp_path / "none", hold=True,
                        members=0, progress=False)
    with pytest.raises(ConfigError, match="add --hold"):
        train_foresight(tiny_world_model, branch_data, tmp_path / "none", members=2,
                        progress=False)


def test_train_foresight_hold_fits_drawn_states_and_scores_them(
        tiny_world_model: Path, branch_data: Path, tmp_path: Path) -> None:
    from worldsim.foresight import train_foresight

    record = train_foresight(tiny_world_model, branch_data, tmp_path / "m", hold=True,
                             holdout=0.25, epochs=2, drawn_steps=(2, 1, 2), progress=False)
    plain = train_foresight(tiny_world_model, branch_data, tmp_path / "p", hold=True,
                            holdout=0.25, epochs=2, progress=False)
    assert record["drawn_steps"] == [1, 2] and record["drawn_states_fitted"] > 0
    assert record["states_fitted"] == plain["states_fitted"]  # the real states, as before
    assert set(record["drawn"]) == {"1", "2"} and "drawn" not in plain
    assert record["held_out_states"] == plain["held_out_states"]
    assert record["drawn"]["1"]["decisive_states"] > 0
    # the input standardised by the real states only, as without drawn states
    assert torch.equal(WorldModel.load(tmp_path / "m").denoiser.model.hold_head.mean,
                       WorldModel.load(tmp_path / "p").denoiser.model.hold_head.mean)
    for wrong, message in (({"drawn_steps": (1,)}, "add --hold"),
                           ({"every_state": True}, "add --hold"),
                           ({"drawn_steps": (1,), "hold": True, "drawn_share": 0}, "share"),
                           ({"drawn_steps": (0,), "hold": True}, "at least 1")):
        with pytest.raises(ConfigError, match=message):
            train_foresight(tiny_world_model, branch_data, tmp_path / "x", progress=False,
                            **wrong)
    assert not (tmp_path / "x").exists()


def test_train_foresight_hold_adds_a_hold_head_and_changes_nothing_else(
        hold_model: Path, tiny_world_model: Path) -> None:
    before, after = WorldModel.load(tiny_world_model), WorldModel.load(hold_model)
    assert before.hold_steps == 0 and after.hold_steps == 4
    theirs = after.state_dict()
    for name, value in before.state_dict().items():
        assert torch.equal(value, theirs[name]), name
    assert {n.split(".")[3] for n in theirs if n not in before.state_dict()} == {"mean", "std",
                                                                               "mlp"}
    record = after.info.trained["hold"]
    assert record["hold_steps"] == 4 and record["states_fitted"] >= 1
    assert record["episodes_fitted"] + record["episodes_held_out"] == 4
    state = after.start(torch.zeros(2, 1, 3, 64, 64, dtype=torch.uint8),
                        torch.zeros(2, 0, dtype=torch.long))
    risk = after.hold_risk(state)
    assert risk.shape == (2, 3) and ((risk > 0) & (risk < 1)).all()
    assert torch.allclose(risk, after.hold_risk(after.features(state)))
    with pytest.raises(ConfigError, match="no hold head"):
        before.hold_risk(before.start(torch.zeros(1, 1, 3, 64, 64, dtype=torch.uint8),
                                      torch.zeros(1, 0, dtype=torch.long)))


def test_hold_head_needs_datasets_with_branches(tiny_world_model: Path,
                                                tiny_takecover_data: Path, branch_data: Path,
                                                tmp_path: Path) -> None:
    from worldsim.foresight import train_foresight

    for data in (tiny_takecover_data, [branch_data, tiny_takecover_data]):
        with pytest.raises(ConfigError, match="no branches"):
            train_foresight(tiny_world_model, data, tmp_path / "m", hold=True, progress=False)
    assert not (tmp_path / "m").exists()
    # several datasets pool their states, each split on its own
    one = train_foresight(tiny_world_model, branch_data, tmp_path / "one", hold=True,
                          holdout=0.25, epochs=1, progress=False)
    two = train_foresight(tiny_world_model, [branch_data, branch_data], tmp_path / "two",
                          hold=True, holdout=0.25, epochs=1, progress=False)
    assert two["states_fitted"] == 2 * one["states_fitted"]
    assert two["episodes_held_out"] == 2 * one["episodes_held_out"] == 2
    assert two["data"] == [str(branch_data)] * 2 and one["data"] == str(branch_data)


def test_planner_holds_the_action_the_hold_head_deems_safest(hold_model: Path,
                                                             tiny_world_model: Path) -> None:
    from agents.planner import Planner, PlannerConfig, load_planner

    model = WorldModel.load(hold_model)
    last = model.denoiser.model.hold_head.mlp[-1]
    with torch.no_grad():  # whatever it sees: holding left is the safe move
        last.weight.zero_()
        last.bias.copy_(torch.tensor([2.0, -3.0, 1.0]))
    planner = Planner(model, PlannerConfig(search="head", every=3))
    planner.reset(0)
    frame = np.zeros((64, 64, 3), dtype=np.uint8)
    assert [planner.act(frame) for _ in range(5)] == [1] * 5
    assert planner.plans.shape == (3, 4)  # hold plans of the head's steps
    assert planner.last_scores.tolist() == pytest.approx(
        (-torch.sigmoid(torch.tensor([2.0, -3.0, 1.0]))).tolist() + np.array([0, 0.05, 0]))
    # decisions every 3 steps: the head's change shows at step 6, not at step 5
    with torch.no_grad():
        last.bias.copy_(torch.tensor([-3.0, 2.0, 1.0]))
    assert [planner.act(frame) for _ in range(2)] == [1, 0]
    with pytest.raises(ConfigError, match="has none"):
        load_planner(f"plan:{tiny_world_model},search=head")
    from envs.policies import make_policy  # a planner records play too

    assert isinstance(make_policy(f"agent:plan:{hold_model},search=head", 3), Planner)
    with pytest.raises(ConfigError, match="search must be"):
        PlannerConfig(search="tree")
    with pytest.raises(ConfigError, match="every must be"):
        PlannerConfig(every=0)


def test_dodge_scores_the_hold_head_at_the_real_state(hold_model: Path) -> None:
    from benchmarks.dodge import describe, evaluate

    results = evaluate(str(hold_model), ["default"], episodes=1, horizon=4, samples=1,
                       stride=3, progress=False)
    assert "hold head (no dream)" in results["dreams"]
    row = results["dreams"]["hold head (no dream)"]
    assert row["decisive_states"] == results["dreams"]["default, frame"]["decisive_states"]
    assert "| hold head (no dream) |" in describe(results)
    other = evaluate(str(hold_model), ["default"], episodes=1, horizon=3, samples=1, stride=3,
                     progress=False)
    assert "hold head (no dream)" not in other["dreams"]  # its steps are not the horizon


def test_shipped_takecover_hold_is_the_shipped_model_with_its_heads() -> None:
    from agents.evaluate import evaluate
    from agents.planner import load_planner

    base, model = WorldModel.load("takecover"), WorldModel.load("takecover-hold")
    assert model.hold_steps == 8 and model.has_foresight and not base.has_foresight
    theirs = model.state_dict()
    for name, value in base.state_dict().items():
        assert torch.equal(value, theirs[name]), name
    assert model.info.trained["hold"]["accuracy"] > 0.8  # recorded by its fit
    planner = load_planner("plan:takecover-hold,search=head,every=2,precision=bf16")
    result = evaluate(planner, env="vizdoom/TakeCover", episodes=1, seed=1_000_000,
                      max_frames=200, progress=False)
    assert 0 < result.frames[0] <= 200


def test_dream_reward_benchmark_pairs_every_move_at_the_same_states(
        hold_model: Path, branch_data: Path) -> None:
    """benchmarks.dream_reward holds each action at the same decisive states with the same
    noise: every move's risk is the hold head's at the real state, and with the head's own
    reward each move's expected reward is its reward times its chance to survive."""
    from benchmarks.dream_reward import measure
    from envs.dream import DreamVectorEnv

    results = measure(str(hold_model), str(branch_data), "decisive", decision_steps=2,
                      num_envs=3, batches=2, precision="fp32", progress=False)
    actions = len(results["action_names"])
    assert results["states"] == 6 and results["ends"] == "hold"
    assert sum(results["least_risk_counts"]) == sum(results["most_expected_reward_counts"]) == 6
    assert len(results["risk_per_action"]) == actions
    assert 0.0 <= results["agreement"] <= 1.0 and results["risk_given_up"] >= 0.0
    # the pairing: a second env drawing the same states gives each move the same risk
    env = DreamVectorEnv(str(hold_model), num_envs=3, obs_mode="latent",
                         dataset=str(branch_data), prompt_start="decisive",
                         termination="expected", ends="hold", decision_steps=2,
                         max_episode_steps=1)
    risks = []
    for batch in range(2):
        row = []
        for action in range(actions):
            env.reset(seed=1000 * batch)
            row.append(env.step(np.full(3, action))[4]["termination_prob"])
        risks.append(np.stack(row, 1))
    np.testing.assert_allclose(np.concatenate(risks).mean(0), results["risk_per_action"],
                               atol=1e-3)
    with pytest.raises(ConfigError, match="--batches and --num-envs must be >= 1"):
        measure(str(hold_model), str(branch_data), batches=0, progress=False)
