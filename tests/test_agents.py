"""Agents: the portable agent (round trip, observations, errors), SB3 export, dream training
smoke runs (PPO, A2C, DQN, CMA-ES, resume), and scoring on the real TakeCover."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

import agents
import envs
from agents.cmaes import CMAES, LinearController, dream_fitness, export_controller, train_cmaes
from agents.evaluate import evaluate, evaluate_in_dream
from agents.portable import (
    AGENT_FILE,
    ObservationSpec,
    PolicySpec,
    agent_for_world_model,
    build_layers,
)
from agents.ppo import export_agent, make_dream_vec_env, train_ppo
from agents.training import EpisodeLog
from worldsim.cli import main as cli_main
from worldsim.errors import CheckpointError, ConfigError
from worldsim.world_model import WorldModel

DREAM_STEPS = 20  # dream episode cap in the smoke runs


@pytest.fixture(scope="module")
def model(tiny_world_model: Path) -> WorldModel:
    return WorldModel.load(tiny_world_model)


@pytest.fixture(scope="module")
def real_frames() -> np.ndarray:
    """Twelve consecutive real TakeCover frames, the player strafing left then right."""
    env = envs.make_env("vizdoom/TakeCover")
    frame, _ = env.reset(seed=3)
    frames = [frame]
    for action in [1] * 6 + [2] * 5:
        frame, *_ = env.step(action)
        frames.append(frame)
    env.close()
    return np.stack(frames)


def random_agent(model: WorldModel, frame_stack: int = 2, scale: float = 1.0,
                 seed: int = 0) -> agents.Agent:
    """A latent MLP agent with random weights (scaled so that its actions vary)."""
    c, h, w = model.config.autoencoder.latent_channels, 8, 8
    layers = [{"type": "linear", "in": frame_stack * c * h * w, "out": 32, "bias": True},
              {"type": "tanh"}, {"type": "linear", "in": 32, "out": model.num_actions,
                                 "bias": True}]
    network = build_layers(layers)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return agent_for_world_model(model, ObservationSpec("latent", frame_stack),
                                 PolicySpec("PPO", layers), network, {"note": "test"})


def play(agent: agents.Agent, frames: np.ndarray, seed: int = 0) -> tuple[list[int], torch.Tensor]:
    agent.reset(seed)
    actions, scores = [], []
    for frame in frames:
        scores.append(agent.scores(frame))
        actions.append(int(scores[-1].argmax()))
    return actions, torch.stack(scores)


# ---- the portable agent ----------------------------------------------------------------------

def test_frame_encoder_matches_the_world_models_encoder(model: WorldModel,
                                                        real_frames: np.ndarray) -> None:
    agent = random_agent(model)
    pixels = torch.from_numpy(real_frames).permute(0, 3, 1, 2)[None]  # (1, T, 3, H, W)
    expected = model.encode(pixels)[0].flatten(1)  # (T, c*h*w)
    observed = agent.observe(torch.from_numpy(real_frames))
    assert observed.shape == expected.shape
    torch.testing.assert_close(observed, expected, rtol=0, atol=1e-5)
    from agents.portable import LATENT_BOUND
    from envs.dream import LATENT_BOUND as DREAM_LATENT_BOUND

    assert LATENT_BOUND == DREAM_LATENT_BOUND  # the agent clips latents as the dream does


def test_save_load_act_round_trip(model: WorldModel, real_frames: np.ndarray,
                                  tmp_path: Path) -> None:
    agent = random_agent(model, scale=2.0)
    before, scores_before = play(agent, real_frames)
    assert len(set(before)) > 1, "the test agent should not always pick one action"
    path = agent.save(tmp_path / "run")
    assert path == tmp_path / "run" / AGENT_FILE
    assert path.stat().st_size < 1_000_000  # self-contained and small
    header = json.loads(path.with_suffix(".json").read_text())
    assert header["info"]["env"] == "vizdoom/TakeCover"
    assert header["info"]["action_names"] == ["none", "left", "right"]
    assert header["info"]["trained"] == {"note": "test"}
    loaded = agents.load(tmp_path / "run")
    after, scores_after = play(loaded, real_frames)
    assert after == before
    torch.testing.assert_close(scores_after, scores_before, rtol=0, atol=0)
    assert loaded.name == agent.name == "ppo-takecover"
    # the agent satisfies the collector's Policy protocol through make_policy
    from envs.policies import make_policy

    policy = make_policy(f"agent:{path}", 3)
    assert play(policy, real_frames)[0] == before  # type: ignore[arg-type]


def test_observation_history_is_zero_then_previous_frame(model: WorldModel,
                                                         real_frames: np.ndarray) -> None:
    agent = random_agent(model, frame_stack=2)
    latents = agent.observe(torch.from_numpy(real_frames[:2]))  # (2, D)
    agent.reset(0)
    first = agent.scores(real_frames[0])
    second = agent.scores(real_frames[1])
    with torch.no_grad():
        expect_first = agent.network(torch.cat([torch.zeros_like(latents[0]), latents[0]])[None])
        expect_second = agent.network(torch.cat([latents[0], latents[1]])[None])
    torch.testing.assert_close(first, expect_first[0])
    torch.testing.assert_close(second, expect_second[0])
    agent.reset(0)  # reset clears the history
    torch.testing.assert_close(agent.scores(real_frames[0]), first)


def test_sampled_actions_follow_the_seed(model: WorldModel, real_frames: np.ndarray) -> None:
    agent = random_agent(model, scale=0.01)  # nearly uniform action probabilities
    agent.set_deterministic(False)

    def actions(seed: int) -> list[int]:
        agent.reset(seed)
        return [agent.act(frame) for frame in np.concatenate([real_frames] * 3)]

    assert actions(1) == actions(1)
    assert actions(1) != actions(2)


def test_shipped_takecover_agent_plays_the_real_game() -> None:
    agent = agents.load("takecover")
    assert agent.info.env == "vizdoom/TakeCover" and agent.info.env_options["frame_skip"] == 4
    result = evaluate("takecover", episodes=1, seed=0, max_frames=200, progress=False)
    assert result.env_options["frame_skip"] == 4  # the agent acts once per 4 tics
    episode = result.episodes[0]
    assert 0 < episode.frames <= 200 and episode.steps == pytest.approx(episode.frames / 4, abs=1)


def test_load_errors(model: WorldModel, tiny_world_model: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no agent at 'nobody'.*shipped agent name.*"
                                              "takecover"):
        agents.load("nobody")
    with pytest.raises(CheckpointError, match="no agent at"):
        agents.load(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="not a worldsim agent"):
        agents.load(tiny_world_model / "world_model" / "model.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        agents.load(broken)


def test_wrong_frames_env_or_actions_are_refused(model: WorldModel) -> None:
    agent = random_agent(model)
    agent.reset(0)
    with pytest.raises(ConfigError, match="agent was trained on vizdoom/TakeCover 64x64 frames; "
                                          "this env gives 48x48"):
        agent.act(np.zeros((48, 48, 3), np.uint8))
    with pytest.raises(ConfigError, match="uint8 RGB frames"):
        agent.act(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ConfigError, match="on vizdoom/TakeCover; this env is vizdoom/Basic"):
        agent.check_env("vizdoom/Basic")
    with pytest.raises(ConfigError, match="trained for 3 actions.*this env has 4"):
        agent.check_env("vizdoom/TakeCover", (64, 64), 4)
    agent.check_env("vizdoom/TakeCover", (64, 64), 3)  # the right env passes


# ---- SB3 export -------------------------------------------------------------------------------

@pytest.mark.parametrize("algo, obs_mode", [("PPO", "latent"), ("DQN", "latent"),
                                            ("PPO", "rgb")])
def test_exported_sb3_policy_acts_like_sb3(model: WorldModel, real_frames: np.ndarray,
                                           algo: str, obs_mode: str) -> None:
    import stable_baselines3

    venv = make_dream_vec_env(model, 2, obs_mode, 2, None, None, None, "fp32")
    algorithm = getattr(stable_baselines3, algo)(
        "CnnPolicy" if obs_mode == "rgb" else "MlpPolicy", venv, seed=0, device="cpu",
        **({"buffer_size": 100} if algo == "DQN" else {}))
    agent = export_agent(algorithm, model, ObservationSpec(obs_mode, 2), {})
    agent.reset(0)
    previous = np.zeros_like(real_frames[0]) if obs_mode == "rgb" else None
    for index, frame in enumerate(real_frames[:4]):
        ours = agent.scores(frame)
        # the observation SB3 would get from VecFrameStack (+ VecTransposeImage for pixels)
        if obs_mode == "rgb":
            stacked = np.concatenate([previous, frame], axis=-1).transpose(2, 0, 1)
            previous = frame
        else:
            latents = agent.observe(torch.from_numpy(real_frames[max(index - 1, 0):index + 1]))
            if index == 0:
                latents = torch.cat([torch.zeros_like(latents), latents])
            stacked = latents.flatten().numpy()
        obs = torch.as_tensor(stacked[None]).float()
        with torch.no_grad():
            if algo == "DQN":
                theirs = algorithm.policy.q_net(obs)[0]
            else:
                theirs = algorithm.policy.get_distribution(obs).distribution.logits[0]
                ours = torch.log_softmax(ours, dim=-1)  # torch's Categorical normalises logits
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    venv.close()
    if algo == "DQN":
        with pytest.raises(ConfigError, match="Q-values"):
            agent.set_deterministic(False)


def test_unsupported_algorithms_are_refused(tiny_world_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SAC needs a continuous action space"):
        train_ppo(tiny_world_model, tmp_path / "sac", 8, algo="SAC", progress=False)
    with pytest.raises(ConfigError, match="unknown algorithm 'XYZ'"):
        train_ppo(tiny_world_model, tmp_path / "xyz", 8, algo="XYZ", progress=False)


# ---- training in the dream ---------------------------------------------------------------------

@pytest.mark.parametrize("algo", ["PPO", "A2C", "DQN"])
def test_sb3_smoke_run_gives_a_loadable_agent(tiny_world_model: Path, tmp_path: Path,
                                              real_frames: np.ndarray, algo: str) -> None:
    out = tmp_path / algo
    path = train_ppo(tiny_world_model, out, 32, num_envs=4, algo=algo,
                     max_episode_steps=DREAM_STEPS, progress=False)
    agent = agents.load(path)
    assert agent.policy.algo == algo
    assert agent.info.trained["timesteps"] == 32
    assert agent.info.trained["world_model"]["env"] == "vizdoom/TakeCover"
    agent.reset(0)
    assert agent.act(real_frames[0]) in (0, 1, 2)
    record = json.loads((out / "train_agent.json").read_text())
    assert record["finished"] and record["steps_done"] == 32
    assert list((out / "tb").glob("events.out.tfevents.*"))
    episodes = EpisodeLog.read(out / "episodes.csv")
    assert episodes and all(1 <= e["length"] <= DREAM_STEPS for e in episodes)


def test_ppo_on_the_real_game_sees_what_the_dream_agent_sees(tiny_world_model: Path,
                                                             model: WorldModel,
                                                             tmp_path: Path) -> None:
    from agents.ppo import make_real_vec_env

    venv = make_real_vec_env(model, 2, "latent", 2)
    venv.seed(3)
    stacked = venv.reset()  # (2, 2 * c*h*w): zeros, then the encoded first frame
    game = envs.make_env("vizdoom/TakeCover")
    frame, _ = game.reset(seed=3)
    game.close()
    agent = random_agent(model)
    latent = agent.observe(torch.from_numpy(frame[None]))[0].numpy()
    size = latent.size
    np.testing.assert_array_equal(stacked[0, :size], 0)
    np.testing.assert_allclose(stacked[0, size:], latent, atol=1e-5)
    venv.close()
    path = train_ppo(tiny_world_model, tmp_path / "real", 16, num_envs=2, real_game=True,
                     progress=False)
    trained = agents.load(path).info.trained
    assert trained["trained_in"] == "real game" and trained["real_game_steps"] == 16


def test_ppo_resumes_and_refuses_another_run_in_its_folder(tiny_world_model: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "ppo"
    train_ppo(tiny_world_model, out, 32, num_envs=4, max_episode_steps=DREAM_STEPS,
              progress=False)
    first = EpisodeLog.read(out / "episodes.csv")
    assert (out / "resume" / "sb3_state.pt").is_file()
    train_ppo(tiny_world_model, out, 64, num_envs=4, max_episode_steps=DREAM_STEPS,
              progress=False)
    record = json.loads((out / "train_agent.json").read_text())
    assert record["steps_done"] == 64 and record["finished"]
    both = EpisodeLog.read(out / "episodes.csv")
    assert both[:len(first)] == first  # the first part is kept ...
    assert all(e["step"] > 32 for e in both[len(first):])  # ... and continued, not redone
    assert len(both) > len(first)
    with pytest.raises(ConfigError, match="holds another training run.*seed"):
        train_ppo(tiny_world_model, out, 64, num_envs=4, max_episode_steps=DREAM_STEPS,
                  seed=1, progress=False)


def test_termination_threshold_decides_where_dreams_end(tiny_world_model: Path,
                                                       tmp_path: Path) -> None:
    lengths = {}
    for threshold in (1e-9, 1.0):  # every head probability reaches 1e-9; none reaches 1
        out = tmp_path / f"t{threshold}"
        path = train_ppo(tiny_world_model, out, 4 * DREAM_STEPS, num_envs=4,
                         max_episode_steps=DREAM_STEPS, termination_threshold=threshold,
                         progress=False)
        assert agents.load(path).info.trained["termination_threshold"] == threshold
        lengths[threshold] = {e["length"] for e in EpisodeLog.read(out / "episodes.csv")}
    assert lengths[1e-9] == {1}
    assert lengths[1.0] == {DREAM_STEPS}
    with pytest.raises(ConfigError, match="termination threshold must be in"):
        train_ppo(tiny_world_model, tmp_path / "bad", 8, termination_threshold=0.0,
                  progress=False)


def test_cmaes_finds_a_better_quadratic_optimum() -> None:
    target = np.linspace(-1, 1, 12)
    for covariance in ("full", "diagonal"):
        es = CMAES(np.zeros(12), 0.5, 16, seed=0, covariance=covariance)
        start = -np.sum(target**2)
        for _ in range(150):
            candidates = es.ask()
            es.tell(candidates, -np.sum((candidates - target) ** 2, axis=1))
        assert -np.sum((es.mean - target) ** 2) > start / 1000, covariance


def test_cmaes_smoke_run_resumes_exactly(tiny_world_model: Path, tmp_path: Path,
                                         real_frames: np.ndarray) -> None:
    options = {"population": 4, "rollouts": 2, "max_episode_steps": DREAM_STEPS,
               "progress": False}
    path = train_cmaes(tiny_world_model, tmp_path / "split", 1, **options)  # one generation
    one = json.loads((tmp_path / "split" / "train_agent.json").read_text())
    assert one["generations"] == 1
    agents.load(path)
    train_cmaes(tiny_world_model, tmp_path / "split", one["steps_done"] + 1, **options)
    whole = train_cmaes(tiny_world_model, tmp_path / "whole", one["steps_done"] + 1, **options)
    split_agent, whole_agent = agents.load(tmp_path / "split"), agents.load(whole)
    assert whole_agent.info.trained["generations"] == 2
    assert split_agent.info.trained["generations"] == 2
    for a, b in zip(split_agent.network.parameters(), whole_agent.network.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert whole_agent.policy.algo == "CMA-ES"
    assert split_agent.network[0].weight.abs().sum() > 0  # CMA-ES moved the mean
    assert play(whole_agent, real_frames)[0] == play(split_agent, real_frames)[0]


def test_dream_score_replays_the_cmaes_rollouts(model: WorldModel) -> None:
    from envs.dream import DreamVectorEnv

    controller = LinearController(2 * int(np.prod(DreamVectorEnv(model=model).latent_shape)),
                                  model.num_actions)
    params = np.random.default_rng(0).normal(size=controller.num_params)
    agent = export_controller(model, controller, params, ObservationSpec("latent", 2), {})
    venv = DreamVectorEnv(model=model, num_envs=4, obs_mode="latent", termination="never",
                          max_episode_steps=DREAM_STEPS)
    returns, lengths, _ = dream_fitness(venv, controller, params[None], 4, [5, 6, 7, 8], 2)
    result = evaluate_in_dream(agent, model, episodes=4, seed=5, batch=4, termination="never",
                               max_episode_steps=DREAM_STEPS, progress=False)
    assert [e.seed for e in result.episodes] == [5, 6, 7, 8]
    assert [e.steps for e in result.episodes] == lengths[0].tolist() == [DREAM_STEPS] * 4
    np.testing.assert_allclose([e.total_reward for e in result.episodes], returns[0],
                               rtol=1e-5)
    assert result.env.startswith("dream:model@T") and result.max_frames == DREAM_STEPS
    other = evaluate_in_dream(agent, model, episodes=4, seed=9, batch=4, termination="never",
                              max_episode_steps=DREAM_STEPS, progress=False)
    assert [e.total_reward for e in other.episodes] != [e.total_reward for e in result.episodes]


# ---- the real game -------------------------------------------------------------------------------

def test_eval_is_deterministic_and_follows_the_seed(model: WorldModel, tmp_path: Path) -> None:
    path = random_agent(model, scale=2.0).save(tmp_path / "agent")
    first = evaluate(str(path), episodes=3, seed=11, max_frames=100, progress=False)
    again = evaluate(str(path), episodes=3, seed=11, max_frames=100, workers=2, progress=False)
    assert first.episodes == again.episodes
    assert [e.seed for e in first.episodes] == [11, 12, 13]
    assert first.max_frames == 100 and first.summary()["max"] <= 100
    assert first.env_options["frame_size"] == [64, 64]
    random_a = evaluate("random", episodes=3, seed=0, max_frames=300, progress=False)
    random_b = evaluate("random", episodes=3, seed=1, max_frames=300, progress=False)
    assert random_a.episodes != random_b.episodes


def test_baselines(tmp_path: Path) -> None:
    left = evaluate("always-left", episodes=2, seed=0, max_frames=400, progress=False)
    rand = evaluate("random", episodes=2, seed=0, max_frames=400, progress=False)
    assert left.agent_name == "always-left" and rand.agent_name == "random"
    assert left.action_shares() == {"none": 0.0, "left": 1.0, "right": 0.0}
    assert left.to_dict()["action_shares"]["left"] == 1.0
    assert "actions: none 0.00, left 1.00, right 0.00" in left.describe()
    assert sum(rand.action_shares().values()) == pytest.approx(1.0)
    assert min(rand.action_shares().values()) > 0.1
    assert left.env == "vizdoom/TakeCover"
    assert all(0 < e.frames <= 400 for e in left.episodes + rand.episodes)
    assert [e.frames for e in left.episodes] != [e.frames for e in rand.episodes]
    summary = left.summary()
    assert summary["min"] <= summary["median"] <= summary["max"]
    assert summary["mean"] == pytest.approx(np.mean([e.frames for e in left.episodes]))
    with pytest.raises(ConfigError, match="actions are none, left, right"):
        evaluate("always-up", episodes=1, progress=False)


def test_eval_refuses_an_agent_for_other_frames_or_games(model: WorldModel,
                                                         tmp_path: Path) -> None:
    path = random_agent(model).save(tmp_path / "agent")
    with pytest.raises(ConfigError, match="agent was trained on vizdoom/TakeCover 64x64 frames; "
                                          "this env gives 48x48"):
        evaluate(str(path), episodes=1, env_options={"frame_size": [48, 48]}, progress=False)
    with pytest.raises(ConfigError, match="agent was trained on vizdoom/TakeCover; this env is "
                                          "vizdoom/Basic"):
        evaluate(str(path), env="vizdoom/Basic", episodes=1, progress=False)


def test_eval_plays_with_the_agents_frame_skip_and_the_common_cap(model: WorldModel,
                                                                   tmp_path: Path) -> None:
    agent = random_agent(model)
    agent.info.env_options = {"frame_skip": 2, "max_frames": 50}  # as recorded with its data
    path = agent.save(tmp_path / "agent")
    result = evaluate(f"agent:{path}", episodes=1, seed=0, max_frames=80, progress=False)
    assert result.env_options == {"frame_skip": 2, "frame_size": [64, 64], "max_frames": 80}
    episode = result.episodes[0]
    assert episode.frames <= 80 and episode.steps == pytest.approx(episode.frames / 2, abs=1)
    with pytest.warns(UserWarning, match="trained with frame_skip=2; evaluating it with "
                                         "frame_skip=1"):
        evaluate(str(path), episodes=1, max_frames=20, env_options={"frame_skip": 1},
                 progress=False)


def test_cli_train_agent_then_eval(tiny_world_model: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    runs = {}
    for algo in ("ppo", "cmaes"):
        out = tmp_path / algo
        code = cli_main(["train-agent", "--checkpoint", str(tiny_world_model), "--algo", algo,
                         "--steps", "24", "--out", str(out), "--num-envs", "4",
                         "--population", "4", "--rollouts", "2", "--max-episode-steps",
                         str(DREAM_STEPS), "--temperature", "0.9",
                         "--sampler", "sigma_max=10,denoise_steps=3", "--quiet"])
        assert code == 0
        runs[algo] = out
        trained = agents.load(out).info.trained
        assert trained["temperature"] == 0.9
        assert trained["sampler"] == {"sigma_max": 10.0, "denoise_steps": 3}
    assert cli_main(["train-agent", "--checkpoint", str(tiny_world_model), "--steps", "8",
                     "--out", str(tmp_path / "bad"), "--sampler", "steps=3", "--quiet"]) == 2
    assert "sampler setting 'steps=3'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert cli_main(["train-agent", "--checkpoint", str(tiny_world_model), "--steps", "8",
                     "--out", str(tmp_path / "bad"), "--algo-kwarg", "n_steps", "--quiet"]) == 2
    assert "--algo-kwarg expects KEY=VALUE, got 'n_steps'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    for train in (train_ppo, train_cmaes):  # settings the sampler cannot use: no run folder
        for bad in ({"sampler": {"temperature": -1.0}}, {"temperature": -1.0}):
            with pytest.raises(ConfigError, match="temperature"):
                train(tiny_world_model, tmp_path / "bad", 8, progress=False, **bad)
            assert not (tmp_path / "bad").exists()
    code = cli_main(["eval", "--agent", str(runs["cmaes"]), "--episodes", "2", "--seed", "4",
                     "--max-frames", "60", "--json", str(tmp_path / "eval.json"),
                     "--video-dir", str(tmp_path / "videos"), "--quiet"])
    assert code == 0
    figures = json.loads((tmp_path / "eval.json").read_text())
    assert figures["episodes"] == 2 and figures["max_frames"] == 60
    assert set(figures["frames_survived"]) == {"mean", "std", "median", "min", "max"}
    assert [e["seed"] for e in figures["per_episode"]] == [4, 5]
    assert figures["machine"]["cpu_count"]
    best = figures["best"]
    frames = imageio.mimread(figures["videos"]["best"], memtest=False)
    assert len(frames) == best["steps"] + 1
    assert Path(figures["videos"]["worst"]).is_file()
    assert "frames survived" in capsys.readouterr().out
    # the same agent in the dream, at another temperature
    code = cli_main(["eval", "--agent", str(runs["ppo"]), "--dream", str(tiny_world_model),
                     "--temperature", "0.5", "--episodes", "2", "--json",
                     str(tmp_path / "dream.json"), "--quiet"])
    assert code == 0
    dream = json.loads((tmp_path / "dream.json").read_text())
    assert dream["env"].startswith("dream:") and dream["env_options"]["temperature"] == 0.5
    assert dream["episodes"] == 2 and dream["max_frames"] == 2100  # the real game's cap
    assert cli_main(["eval", "--agent", str(runs["ppo"]), "--dream", str(tiny_world_model),
                     "--video-dir", str(tmp_path)]) == 2
    assert "--video-dir apply to the real game" in capsys.readouterr().err
    # a bad agent path is one clean error line, exit code 2
    assert cli_main(["eval", "--agent", str(tmp_path / "nothing"), "--episodes", "1"]) == 2
    assert "no agent at" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train-agent", "eval"])
def test_cli_help_explains_every_option(command: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from worldsim.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        cli_main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    sub = build_parser()._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    flags = [flag for action in sub._actions for flag in action.option_strings]
    for option in ("--checkpoint", "--algo", "--steps", "--out", "--temperature", "--num-envs",
                   "--seed") if command == "train-agent" else (
                       "--agent", "--env", "--episodes", "--seed", "--json", "--video-dir",
                       "--workers", "--max-frames", "--dream"):
        assert option in flags
    for action in sub._actions:
        assert action.help, f"option {action.option_strings} of {command} has no help"
        for flag in action.option_strings:
            assert flag in text


def test_score_table_benchmark_holds_every_method_to_the_same_rules(
        model: WorldModel, tiny_world_model: Path, tmp_path: Path) -> None:
    from benchmarks.takecover_scores import main as scores_main

    agent = random_agent(model, scale=2.0)
    agent.info.env_options = {"frame_skip": 2}
    path = agent.save(tmp_path / "agent")
    assert scores_main(["--agent", f"mlp={path}", "--baselines", "always-left", "--checkpoint",
                        str(tiny_world_model), "--temperatures", "1.0", "--dream-episodes", "2",
                        "--episodes", "2", "--max-frames", "60", "--workers", "1",
                        "--out-dir", str(tmp_path / "results"), "--quiet"]) == 0
    written = sorted((tmp_path / "results").glob("takecover-scores-*.json"))
    figures = json.loads(written[0].read_text())["results"]
    assert figures["frame_skip"] == 2  # the agent's, given to the baselines too
    for name in ("always-left", "mlp"):
        row = figures["real"][name]
        assert row["env_options"]["frame_skip"] == 2 and row["max_frames"] == 60
        assert [e["seed"] for e in row["per_episode"]] == [1_000_000, 1_000_001]
    assert figures["real"]["mlp"]["training"] == {"note": "test"}
    (dream,) = figures["dream"]
    assert dream["agent"] == "mlp" and dream["temperature"] == 1.0 and dream["episodes"] == 2
    table = written[0].with_suffix(".md").read_text()
    assert "| always-left |" in table and "World Models (Ha & Schmidhuber 2018)" in table
    with pytest.raises(ConfigError, match="--agent takes NAME=PATH"):
        scores_main(["--agent", str(path)])


# ---- planning in the dream -------------------------------------------------------------------

def test_planner_specs_build_plans_and_refuse_bad_options() -> None:
    from agents.planner import PlannerConfig, candidate_plans, parse_planner_spec

    checkpoint, config = parse_planner_spec(
        "plan:runs/tc,horizon=6,samples=3,plans=switch,denoise_steps=16,sigma_max=20")
    assert checkpoint == "runs/tc" and (config.horizon, config.samples) == (6, 3)
    assert config.plans == "switch" and config.sampler == "denoise_steps=16,sigma_max=20"
    hold = candidate_plans(3, 4, "hold")
    assert hold.tolist() == [[0] * 4, [1] * 4, [2] * 4]
    switch = candidate_plans(3, 4, "switch")
    assert switch.shape == (9, 4) and [1, 1, 2, 2] in switch.tolist()
    for spec, message in [("plan:", "names no world model"),
                          ("plan:tc,depth=3", "planner option 'depth=3'"),
                          ("plan:tc,horizon=x", "needs a number"),
                          ("plan:tc,horizon=0", "horizon and samples must be >= 1"),
                          ("plan:tc,plans=zigzag", "plans must be one of hold, switch"),
                          ("plan:tc,precision=fp16", "precision must be fp32 or bf16"),
                          ("plan:tc,sigma_max=x", "needs a number")]:
        with pytest.raises(ConfigError, match=message):
            parse_planner_spec(spec)
    with pytest.raises(ConfigError, match="context must be >= 1"):
        PlannerConfig(context=0)


def test_planner_takes_the_plan_whose_dreams_survive(model: WorldModel, real_frames: np.ndarray,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """With a termination head that reads the action (none: 0.5 per step, left: 0, right:
    0.2), the planner's expected survival must rank left first, then right, then none."""
    from agents.planner import Planner, PlannerConfig
    from worldsim.world_model import StepResult

    real_step = WorldModel.step
    hazard = torch.tensor([0.5, 0.0, 0.2])

    def step(self: WorldModel, state, actions, generator=None, sampler=None) -> StepResult:
        result = real_step(self, state, actions, generator, sampler)
        return StepResult(result.latents, result.reward, hazard[actions.long()])

    monkeypatch.setattr(WorldModel, "step", step)
    planner = Planner(model, PlannerConfig(horizon=3, samples=2, keep_bonus=0.0))
    planner.reset(0)
    assert [planner.act(frame) for frame in real_frames[:3]] == [1, 1, 1]
    # expected steps survived within 3: sum of (1 - p)^k for k = 1..3
    np.testing.assert_allclose(planner.last_scores, [0.875, 3.0, 0.8 + 0.64 + 0.512],
                               rtol=1e-6)


def test_planner_plays_the_real_game_deterministically(tiny_world_model: Path) -> None:
    spec = f"plan:{tiny_world_model},horizon=2,samples=2"
    first = evaluate(spec, episodes=2, seed=5, max_frames=120, progress=False)
    again = evaluate(spec, episodes=2, seed=5, max_frames=120, progress=False)
    assert first.episodes == again.episodes and first.agent_name == spec
    assert first.env == "vizdoom/TakeCover" and first.env_options["frame_size"] == [64, 64]
    assert all(0 < e.frames <= 120 for e in first.episodes)
    assert sum(first.episodes[0].actions) == first.episodes[0].steps
    with pytest.raises(ConfigError, match="planner's world model was trained on vizdoom/TakeCover"):
        evaluate(spec, env="vizdoom/Basic", episodes=1, progress=False)
