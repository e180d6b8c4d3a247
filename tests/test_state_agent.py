"""Agents on the world model's own state, in dreams the hold head ends (obs_mode="state",
ends="hold"), and the portable agent that carries the model to follow real frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import agents
import envs
from agents.evaluate import evaluate_in_dream
from envs.dream import DreamVectorEnv
from envs.frames import frame_skip
from worldsim.cli import main
from worldsim.errors import ConfigError
from worldsim.world_model import WorldModel


@pytest.fixture(scope="module")
def state_agent(hold_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PPO agent trained for a few steps on the tiny model's state, dreams ended by its
    hold head (the CLI, fp32)."""
    out = tmp_path_factory.mktemp("state-agent") / "ppo"
    assert main(["train-agent", "--checkpoint", str(hold_model), "--obs-mode", "state",
                 "--ends", "hold", "--steps", "64", "--num-envs", "4",
                 "--max-episode-steps", "20", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def episode() -> tuple[np.ndarray, list[int]]:
    """Nine real TakeCover frames and the actions between them."""
    env = envs.make_env("vizdoom/TakeCover")
    frame, _ = env.reset(seed=5)
    frames, actions = [frame], [1, 1, 2, 2, 2, 0, 1, 2]
    for action in actions:
        frame, *_ = env.step(action)
        frames.append(frame)
    env.close()
    return np.stack(frames), actions


def test_hold_hazard_spreads_the_risk_over_the_held_steps(hold_model: Path) -> None:
    model = WorldModel.load(hold_model)
    env = DreamVectorEnv(model=model, num_envs=3, obs_mode="state", ends="hold",
                         termination="never")
    prompt = model.prompt_frames[0].permute(0, 2, 3, 1).numpy()  # (T0, H, W, 3)
    clip = (prompt, model.prompt_actions[0].numpy())
    observations, _ = env.reset(seed=0, options={"prompt": clip})

    state = model.start(torch.from_numpy(prompt).permute(0, 3, 1, 2)[None],
                        model.prompt_actions[:1])
    head = model.denoiser.model.hold_head
    expected = (model.features(state) - head.mean) / head.std  # standardised as the head does
    assert observations.shape == (3, model.config.dynamics.width)
    assert env.single_observation_space.contains(observations[0])
    for row in observations:
        torch.testing.assert_close(torch.from_numpy(row), expected[0], atol=1e-4, rtol=1e-4)

    risk = model.hold_risk(state)[0]  # (A,) the risk of holding each action
    actions = np.arange(3) % model.num_actions
    _, _, _, _, infos = env.step(actions)
    hazard = torch.from_numpy(infos["termination_prob"]).float()
    # one step's chance, compounded over the head's H steps, is the head's risk
    torch.testing.assert_close(1 - (1 - hazard) ** model.hold_steps, risk[actions],
                               atol=1e-4, rtol=1e-4)
    assert (hazard <= risk[actions] + 1e-6).all()


def test_a_decision_holds_its_action_and_ends_by_the_whole_risk(hold_model: Path) -> None:
    """One decision of H held steps draws what H single steps draw, sums their rewards, and
    ends the dream with the hold head's whole risk for the held action."""
    model = WorldModel.load(hold_model)
    held = model.hold_steps
    clip = (model.prompt_frames[0].permute(0, 2, 3, 1).numpy(), model.prompt_actions[0].numpy())
    options = {"num_envs": 3, "obs_mode": "state", "ends": "hold", "termination": "never"}
    decisions = DreamVectorEnv(model=model, decision_steps=held, **options)
    single = DreamVectorEnv(model=model, **options)
    assert decisions.max_episode_steps == -(-single.max_episode_steps // held)
    decisions.reset(seed=3, options={"prompt": clip})
    single.reset(seed=3, options={"prompt": clip})
    risk = model.hold_risk(model.start(model.prompt_frames[:1], model.prompt_actions[:1]))[0]
    actions = np.arange(3) % model.num_actions
    observation, reward, _, _, infos = decisions.step(actions)
    steps = [single.step(actions) for _ in range(held)]
    np.testing.assert_allclose(observation, steps[-1][0], atol=1e-4)
    np.testing.assert_allclose(reward, sum(step[1] for step in steps), atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(infos["termination_prob"]).float(),
                               risk[actions], atol=1e-4, rtol=1e-4)
    assert (infos["dream_step"] == 1).all()
    with pytest.raises(ConfigError, match="decision_steps must be >= 1"):
        DreamVectorEnv(model=model, decision_steps=0, **options)


def test_agent_trained_on_decisions_holds_its_actions(hold_model: Path, state_agent: Path,
                                                      tiny_world_model: Path,
                                                      branch_data: Path,
                                                      tiny_takecover_data: Path,
                                                      episode: tuple[np.ndarray, list[int]],
                                                      tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`train-agent --decision-steps K` makes an agent that holds each action K frames on
    the real game (its world model still follows every frame); load and eval override K.
    Its dreams start at the decisive states of a dataset with branches (--prompt-start)."""
    out = tmp_path / "decisions"
    assert main(["train-agent", "--checkpoint", str(hold_model), "--obs-mode", "state",
                 "--ends", "hold", "--decision-steps", "2", "--steps", "16", "--num-envs", "4",
                 "--max-episode-steps", "3", "--dataset", str(branch_data), "--prompt-start",
                 "decisive", "--reward", "survival", "--out", str(out), "--quiet"]) == 0
    agent = agents.load(out)
    assert agent.decision_steps == 2 and agent.info.trained["decision_steps"] == 2
    trained = agent.info.trained
    assert (trained["dataset"], trained["prompt_start"]) == (str(branch_data), "decisive")
    assert trained["reward"] == "survival"
    assert json.loads((out / "train_agent.json").read_text())["settings"]["reward"] == "survival"
    # every decision earned the game's reward for its 2 held steps: returns count them
    returns = np.atleast_2d(np.loadtxt(out / "episodes.csv", delimiter=",", skiprows=1))[:, 1]
    held = 2 * frame_skip(agent.info.env_options)
    assert len(returns) and set(returns / held) <= {1.0, 2.0, 3.0}
    # a decisive start needs branches to find it in
    assert main(["train-agent", "--checkpoint", str(hold_model), "--obs-mode", "state",
                 "--steps", "8", "--prompt-start", "decisive", "--out",
                 str(tmp_path / "refused"), "--quiet"]) != 0
    assert "draws states from a dataset's branches" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()  # refused before any folder is made
    assert main(["train-agent", "--checkpoint", str(hold_model), "--obs-mode", "state",
                 "--steps", "8", "--dataset", str(branch_data), str(tiny_takecover_data),
                 "--prompt-start", "decisive", "--out", str(tmp_path / "plain"),
                 "--quiet"]) != 0
    assert "has no branches, so no decisive states" in capsys.readouterr().err
    dreamt = evaluate_in_dream(agent, hold_model, episodes=2, max_episode_steps=3,
                               termination="never", progress=False)
    skip = frame_skip(agent.info.env_options)  # game frames per dream step
    assert [e.frames for e in dreamt.episodes] == [3 * 2 * skip] * 2  # 3 held decisions
    # its observations are its own model's state: another model's dream is refused
    with pytest.raises(ConfigError, match="another model: score it in the dream of the model"):
        evaluate_in_dream(agent, tiny_world_model, episodes=1, progress=False)
    frames, _ = episode
    for steps in (1, 3):
        agent = agents.load(state_agent, decision_steps=steps)
        every = agents.load(state_agent)  # decides at every frame
        agent.reset(seed=0)
        every.reset(seed=0)
        played = [agent.act(frame) for frame in frames]
        for index, frame in enumerate(frames):
            every._last_action = played[index - 1] if index else None  # fed with the frame
            scores = every.scores(frame)  # the state after every frame, as the agent's
            if index % steps:  # a held step: the last decision again
                assert played[index] == played[index - 1]
            else:  # a decision: what the policy picks from that state
                assert int(scores.argmax()) == played[index]
    # a keep bonus adds to the held action's score at each new decision: saved with the agent
    kept = agents.load(state_agent, keep_bonus=0.25, decision_steps=1)
    kept.save(tmp_path / "kept.safetensors")
    saved = agents.load(tmp_path / "kept.safetensors")
    assert saved.keep_bonus == 0.25 and saved.decision_steps == 1
    assert agents.load(state_agent).keep_bonus == 0.0
    every = agents.load(state_agent, decision_steps=1)
    kept.reset(seed=0)
    every.reset(seed=0)
    played = [kept.act(frame) for frame in frames]
    for index, frame in enumerate(frames):
        every._last_action = played[index - 1] if index else None
        scores = every.scores(frame)
        if index:
            scores[played[index - 1]] += 0.25
        assert int(scores.argmax()) == played[index]
    stuck = agents.load(state_agent, keep_bonus=1e6, decision_steps=1)  # keeps its first move
    stuck.reset(seed=0)
    assert len({stuck.act(frame) for frame in frames}) == 1
    assert main(["train-agent", "--checkpoint", str(hold_model), "--real-game",
                 "--decision-steps", "2", "--steps", "16", "--out", str(tmp_path / "real")]) != 0
    assert "shape the dream; on the real game" in capsys.readouterr().err
    assert main(["eval", "--agent", "random", "--decision-steps", "2", "--episodes", "1"]) != 0
    assert "decision steps apply to trained agents" in capsys.readouterr().err
    assert main(["eval", "--agent", "random", "--keep-bonus", "1", "--episodes", "1"]) != 0
    assert "keep bonus applies to trained agents" in capsys.readouterr().err
    from agents.evaluate import evaluate

    scored = evaluate(str(tmp_path / "kept.safetensors"), episodes=1, keep_bonus=0.5,
                      progress=False)
    assert scored.to_dict()["keep_bonus"] == 0.5 and scored.to_dict()["decision_steps"] == 1


def test_hold_ends_need_a_hold_head(tiny_world_model: Path) -> None:
    with pytest.raises(ConfigError, match="hold head"):
        DreamVectorEnv(tiny_world_model, num_envs=1, obs_mode="state", ends="hold")


def test_state_agent_reads_the_models_state_over_real_frames(
        state_agent: Path, hold_model: Path, episode: tuple[np.ndarray, list[int]]) -> None:
    """The saved agent follows real frames with its own actions, teacher-forced, as the
    world model does; its policy reads the same standardised state the dream gave."""
    frames, _ = episode
    agent = agents.load(state_agent)
    assert agent.observation.kind == "state" and agent.observation.frame_stack == 1
    agent.reset(seed=0)
    played = [agent.act(frame) for frame in frames]

    model = WorldModel.load(hold_model)
    head = model.denoiser.model.hold_head
    pixels = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, 3, H, W)
    state = model.start(pixels[:1][None], torch.zeros(1, 0, dtype=torch.long))
    for index in range(len(frames)):
        if index:
            model.observe(state, pixels[index:index + 1], torch.tensor([played[index - 1]]))
        observation = (model.features(state) - head.mean) / head.std
        scores = agent.network(observation)[0]
        assert int(scores.argmax()) == played[index]

    agent.reset(seed=0)  # a new episode forgets the old one's state
    assert [agent.act(frame) for frame in frames] == played
    with pytest.raises(ConfigError, match="one episode's frames in order"):
        agent.observe(torch.from_numpy(frames[:2]))
    agent.reset(seed=0)
    agent.scores(frames[0])  # no action taken: the model cannot be fed the next frame
    with pytest.raises(ConfigError, match="call act"):
        agent.scores(frames[1])


def test_state_agent_file_carries_its_world_model(state_agent: Path, hold_model: Path,
                                                  tmp_path: Path) -> None:
    file = state_agent / "agent.safetensors"
    with safe_open(str(file), framework="pt") as handle:
        names = list(handle.keys())
        dtypes = {handle.get_tensor(name).dtype for name in names
                  if name.startswith("world_model.") and "weight" in name}
    assert any(name.startswith("world_model.denoiser.") for name in names)
    assert not any(name.startswith(("encoder.", "world_model.prompts")) for name in names)
    assert dtypes == {torch.float32}  # trained weights that float16 would round stay float32

    agent = agents.load(state_agent)
    rounded = agents.load(agent.save(tmp_path / "rounded", float16=True))  # asked to: rounds
    assert agent.save(tmp_path / "as-is").stat().st_size == file.stat().st_size  # unchanged
    for (name, before), after in zip(agent.world_model.state_dict().items(),
                                     rounded.world_model.state_dict().values()):
        expected = before.half().float() if before.is_floating_point() else before
        assert torch.equal(expected, after), name
    assert (tmp_path / "rounded" / "agent.safetensors").stat().st_size < 0.6 * file.stat().st_size
    with torch.no_grad():  # weights float16 holds exactly are stored in float16, losslessly
        for value in agent.world_model.state_dict().values():
            if value.is_floating_point():
                value.copy_(value.half().float())
    half = agent.save(tmp_path / "half")
    assert half.stat().st_size < 0.6 * file.stat().st_size
    reloaded = agents.load(half)
    for (name, before), after in zip(agent.world_model.state_dict().items(),
                                     reloaded.world_model.state_dict().values()):
        assert torch.equal(before, after), name


def test_state_observations_are_dream_only(hold_model: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train-agent", "--checkpoint", str(hold_model), "--obs-mode", "state",
                 "--real-game", "--steps", "8", "--out", str(tmp_path / "real"),
                 "--quiet"]) != 0
    assert "state observations come from the world model" in capsys.readouterr().err
    assert main(["train-agent", "--checkpoint", str(hold_model), "--obs-mode", "state",
                 "--algo", "cmaes", "--steps", "8", "--out", str(tmp_path / "cma"),
                 "--quiet"]) != 0
    assert "drop --obs-mode state" in capsys.readouterr().err
    assert main(["train-agent", "--checkpoint", str(hold_model), "--algo", "cmaes",
                 "--reward", "survival", "--steps", "8", "--out", str(tmp_path / "cma"),
                 "--quiet"]) != 0
    assert "--reward" in capsys.readouterr().err
    assert main(["train-agent", "--checkpoint", str(hold_model), "--real-game", "--reward",
                 "survival", "--steps", "8", "--out", str(tmp_path / "real"), "--quiet"]) != 0
    assert "on the real game the game gives its own" in capsys.readouterr().err


def test_dodge_scores_a_state_agents_choice_at_real_states(state_agent: Path,
                                                           hold_model: Path) -> None:
    from benchmarks.dodge import evaluate

    results = evaluate(str(hold_model), ["default"], episodes=2, horizon=4, samples=1,
                       stride=2, agents=[str(state_agent)], drawn_steps=(1, 3),
                       progress=False)
    rows = results["dreams"]
    row = rows[f"agent {state_agent}"]
    decisive = rows["hold head (no dream)"]["decisive_states"]
    assert row["decisive_states"] == decisive > 0
    assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["contrast_auc"] <= 1.0
    # the head read after drawn frames: only states late enough to draw them
    assert decisive >= rows["hold head after 1 drawn steps"]["decisive_states"] >= \
        rows["hold head after 3 drawn steps"]["decisive_states"] > 0


def test_drawn_steps_need_a_hold_head(tiny_world_model: Path) -> None:
    from benchmarks.dodge import evaluate

    with pytest.raises(ConfigError, match="--drawn-steps reads the hold head"):
        evaluate(str(tiny_world_model), ["default"], episodes=1, horizon=4,
                 drawn_steps=(1,), progress=False)


def test_dodge_refuses_an_agent_without_state(tiny_world_model: Path, hold_model: Path,
                                              tmp_path: Path) -> None:
    from benchmarks.dodge import evaluate

    out = tmp_path / "latent"
    assert main(["train-agent", "--checkpoint", str(tiny_world_model), "--steps", "16",
                 "--num-envs", "2", "--max-episode-steps", "8", "--out", str(out),
                 "--quiet"]) == 0
    with pytest.raises(ConfigError, match="acts on latent observations"):
        evaluate(str(hold_model), ["default"], episodes=1, horizon=4, agents=[str(out)],
                 progress=False)
