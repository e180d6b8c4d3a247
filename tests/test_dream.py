"""Dream environments on a tiny trained world model: the Gymnasium contract, seeding,
batched == single, autoreset, SB3, prompts, bad input, and the play and dream commands."""

from __future__ import annotations

import warnings
from pathlib import Path

import gymnasium
import imageio.v2 as imageio
import numpy as np
import pytest
import torch

import envs
from envs.dream import (
    DreamEnv,
    DreamVecEnvSB3,
    DreamVectorEnv,
    Prompt,
    PromptSource,
    make_prompt,
    survival_reward,
)
from envs.frames import frame_skip
from tests.helpers import write_dataset
from worldsim.cli import main as cli_main
from worldsim.data import EpisodeDataset, parse_branch_filename
from worldsim.errors import CheckpointError, ConfigError
from worldsim.world_model import WorldModel

STEPS = 12


@pytest.fixture(autouse=True)
def headless(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")


@pytest.fixture(scope="module")
def model(tiny_world_model: Path) -> WorldModel:
    return WorldModel.load(tiny_world_model)


def rollout(env: DreamEnv, seed: int, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                     np.ndarray]:
    """Observations (with a reset after each end), rewards and ends of a fixed action list."""
    observation, _ = env.reset(seed=seed)
    observations, rewards, ends = [observation], [], []
    for action in actions:
        observation, reward, terminated, truncated, _ = env.step(int(action))
        rewards.append(reward)
        ends.append(terminated or truncated)
        if terminated or truncated:
            observation, _ = env.reset()
        observations.append(observation)
    return np.stack(observations), np.array(rewards), np.array(ends)


# ---- the Gymnasium contract ----------------------------------------------------------------

@pytest.mark.parametrize("obs_mode", ["rgb", "latent"])
def test_check_env_passes_without_warnings(tiny_world_model: Path, obs_mode: str) -> None:
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gymnasium.make(envs.DREAM_ENV_ID, checkpoint=str(tiny_world_model), obs_mode=obs_mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)  # also remakes it in both render modes (pygame, headless)
        sb3_check_env(env.unwrapped)
    env.close()


def test_registration_makes_single_and_vector_envs(tiny_world_model: Path) -> None:
    env = gymnasium.make(envs.DREAM_ENV_ID, checkpoint=str(tiny_world_model), obs_mode="latent")
    assert isinstance(env.unwrapped, DreamEnv)
    assert env.observation_space.shape == (4 * 8 * 8,) and env.action_space.n == 3
    vector = gymnasium.make_vec(envs.DREAM_ENV_ID, num_envs=3,
                                vectorization_mode="vector_entry_point",
                                checkpoint=str(tiny_world_model))
    assert isinstance(vector.unwrapped, DreamVectorEnv) and vector.num_envs == 3
    assert vector.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.SAME_STEP
    observations, _ = vector.reset(seed=0)
    assert observations.shape == (3, 64, 64, 3) and observations.dtype == np.uint8


def test_same_seed_same_dream(model: WorldModel) -> None:
    actions = np.random.default_rng(0).integers(3, size=STEPS)
    first = rollout(DreamEnv(model=model, obs_mode="latent"), 7, actions)
    again = rollout(DreamEnv(model=model, obs_mode="latent"), 7, actions)
    other = rollout(DreamEnv(model=model, obs_mode="latent"), 8, actions)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert first[2].any(), "no dream ended: the reset path was not exercised"
    assert not np.allclose(first[0][1:], other[0][1:]), "another seed gave the same dream"


@pytest.mark.parametrize("obs_mode", ["latent", "rgb"])
def test_batched_dreams_equal_single_dreams(model: WorldModel, obs_mode: str) -> None:
    dreams = 4
    actions = np.random.default_rng(1).integers(3, size=(STEPS, dreams))
    vector = DreamVectorEnv(model=model, num_envs=dreams, obs_mode=obs_mode)
    observation, _ = vector.reset(seed=10)
    observations, rewards, ends = [observation], [], []
    for step_actions in actions:
        observation, reward, terminated, truncated, _ = vector.step(step_actions)
        observations.append(observation)
        rewards.append(reward)
        ends.append(terminated | truncated)
    batched, ends = np.stack(observations), np.stack(ends)
    assert 0 < ends.sum() < ends.size, "want some dreams to restart while others run on"
    tolerance = 1e-4 if obs_mode == "latent" else 2  # uint8 rounding of nearly equal floats
    for row in range(dreams):
        single = rollout(DreamEnv(model=model, obs_mode=obs_mode), 10 + row, actions[:, row])
        np.testing.assert_allclose(single[0].astype(np.float64),
                                   batched[:, row].astype(np.float64), atol=tolerance)
        np.testing.assert_allclose(single[1], np.stack(rewards)[:, row], atol=1e-4)
        np.testing.assert_array_equal(single[2], ends[:, row])


# ---- autoreset and terminal observations ----------------------------------------------------

def test_vector_env_autoresets_finished_dreams_only(model: WorldModel) -> None:
    vector = DreamVectorEnv(model=model, num_envs=6, obs_mode="latent")
    observations, infos = vector.reset(seed=3)
    prompt = observations[0]  # the checkpoint stores one opening clip: every dream starts here
    np.testing.assert_allclose(observations, np.broadcast_to(prompt, observations.shape),
                               atol=1e-5)
    assert (infos["dream_step"] == 0).all() and (infos["prompt_length"] == 4).all()
    for _ in range(STEPS):
        before = vector._steps.copy()
        observations, _, terminated, truncated, infos = vector.step(np.ones(6, dtype=np.int64))
        done = terminated | truncated
        if done.any() and not done.all():
            break
    else:
        pytest.fail("no step ended some dreams but not others")
    assert not truncated.any()
    np.testing.assert_array_equal(infos["_final_obs"], done)
    for row in np.flatnonzero(done):
        np.testing.assert_allclose(observations[row], prompt, atol=1e-5)  # restarted at once
        assert infos["final_obs"][row].shape == (256,)
        assert not np.allclose(infos["final_obs"][row], prompt, atol=1e-3)
        assert infos["final_info"]["dream_step"][row] == before[row] + 1
        assert infos["dream_step"][row] == 0 and infos["_prompt_length"][row]
        assert not infos["_termination_prob"][row]
    for row in np.flatnonzero(~done):
        assert infos["final_obs"][row] is None
        assert infos["dream_step"][row] == before[row] + 1 and infos["_termination_prob"][row]
    running = np.flatnonzero(~done)[0]
    _, _, terminated, truncated, infos = vector.step(np.ones(6, dtype=np.int64))
    restarted = np.flatnonzero(done)[0]
    assert infos["dream_step"][restarted] in (0, 1)  # 0 only if it ended again at once
    assert infos["dream_step"][running] in (0, before[running] + 2)


def test_truncation_at_max_episode_steps(model: WorldModel) -> None:
    vector = DreamVectorEnv(model=model, num_envs=2, obs_mode="latent", termination="never",
                            max_episode_steps=3)
    vector.reset(seed=0)
    for step in range(1, 4):
        _, _, terminated, truncated, infos = vector.step(np.zeros(2, dtype=np.int64))
        assert not terminated.any() and truncated.all() == (step == 3)
    assert infos["final_obs"][0].shape == (256,)
    np.testing.assert_array_equal(infos["final_info"]["dream_step"], [3, 3])


def test_sb3_adapter_terminal_observations_and_seeding(model: WorldModel) -> None:
    venv = DreamVecEnvSB3(model=model, num_envs=3, obs_mode="latent", termination="never",
                          max_episode_steps=2)
    venv.seed(5)
    first = venv.reset()
    assert first.shape == (3, 256) and venv.reset_infos[0]["prompt_length"] == 4
    stepped, _, dones, infos = venv.step(np.array([0, 1, 2]))
    assert not dones.any() and "terminal_observation" not in infos[0]
    observations, rewards, dones, infos = venv.step(np.array([0, 1, 2]))
    assert dones.all() and rewards.dtype == np.float32
    for row, info in enumerate(infos):
        assert info["TimeLimit.truncated"] is True and info["dream_step"] == 2
        assert info["terminal_observation"].shape == (256,)
        assert not np.allclose(info["terminal_observation"], observations[row])
    np.testing.assert_allclose(observations, first, atol=1e-5)  # all restarted from the prompt
    ended = DreamVecEnvSB3(model=model, num_envs=2, obs_mode="latent", termination="threshold",
                           termination_threshold=0.0)
    ended.reset()
    _, _, dones, infos = ended.step(np.array([0, 0]))
    assert dones.all() and not any(info["TimeLimit.truncated"] for info in infos)
    again = DreamVecEnvSB3(model=model, num_envs=3, obs_mode="latent", termination="never",
                           max_episode_steps=2)
    again.seed(5)
    again.reset()
    np.testing.assert_allclose(again.step(np.array([0, 1, 2]))[0], stepped, atol=1e-5)


def test_ppo_learns_for_a_few_steps_in_the_dream(model: WorldModel) -> None:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor

    venv = VecMonitor(DreamVecEnvSB3(model=model, num_envs=4, obs_mode="latent"))
    agent = PPO("MlpPolicy", venv, n_steps=16, batch_size=32, n_epochs=1, seed=0, device="cpu")
    agent.learn(total_timesteps=64)
    assert agent.num_timesteps == 64
    assert len(agent.ep_info_buffer) > 0, "no dream episode ended and was counted"
    action, _ = agent.predict(venv.reset(), deterministic=True)
    assert action.shape == (4,)


# ---- prompts -------------------------------------------------------------------------------

def test_prompt_with_an_image_and_with_a_clip(model: WorldModel,
                                              tiny_takecover_data: Path) -> None:
    episode = EpisodeDataset(tiny_takecover_data).episode(0)
    env = DreamEnv(model=model, obs_mode="rgb", termination="never")
    image = episode.frames[20]
    observation, info = env.reset(seed=0, options={"prompt": image})
    np.testing.assert_array_equal(observation, image)
    assert info["prompt_length"] == 1
    from_image = env.step(0)[0]
    clip = (episode.frames[10:16], episode.actions[10:15])
    observation, info = env.reset(seed=0, options={"prompt": clip})
    np.testing.assert_array_equal(observation, episode.frames[15])
    assert info["prompt_length"] == 6
    assert not np.array_equal(env.step(0)[0], from_image), "the prompt changed nothing"
    # a bigger screenshot is resized (with a warning), not refused
    big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    with pytest.warns(UserWarning, match="resizing"):
        observation, _ = env.reset(seed=0, options={"prompt": big})
    assert observation.shape == (64, 64, 3)
    assert np.abs(observation.astype(int) - image.astype(int)).mean() < 2
    with pytest.raises(ConfigError, match="needs the 5 actions"):
        env.reset(options={"prompt": episode.frames[10:16]})
    with pytest.raises(ConfigError, match="uint8"):
        env.reset(options={"prompt": image.astype(np.float32)})
    with pytest.raises(ConfigError, match="actions must lie in 0..2"):
        make_prompt((episode.frames[:2], np.array([7])), model)


@pytest.mark.parametrize("start", ["opening", "anywhere"])
def test_prompts_from_a_dataset(model: WorldModel, tiny_takecover_data: Path,
                                start: str) -> None:
    dataset = EpisodeDataset(tiny_takecover_data)
    episodes = [dataset.episode(p) for p in range(len(dataset))]
    env = DreamEnv(model=model, dataset=tiny_takecover_data, prompt_start=start)
    at_opening = []
    for seed in range(6):
        observation, _ = env.reset(seed=seed)
        assert any(np.array_equal(frame, observation) for episode in episodes
                   for frame in episode.frames), "the first observation is no real frame"
        # a 4-frame prompt taken from an episode's start ends on its frame 3
        at_opening.append(any(np.array_equal(episode.frames[3], observation)
                              for episode in episodes))
    assert all(at_opening) == (start == "opening")


def test_expected_ends_weigh_rewards_by_the_chance_of_being_alive(model: WorldModel) -> None:
    """termination="expected": no dream ends; each reward is the plain dream's reward times
    the chance that the dream is still alive (one minus each end probability, multiplied)."""
    envs_ = [DreamVectorEnv(model=model, num_envs=2, obs_mode="latent", termination=mode,
                            max_episode_steps=4) for mode in ("expected", "never")]
    for env in envs_:
        env.reset(seed=7)
    alive = np.ones(2)
    for _ in range(4):
        actions = np.array([0, 2])
        (_, expected, ended, truncated, infos), (_, plain, *_) = (env.step(actions)
                                                                   for env in envs_)
        alive = alive * (1 - infos["termination_prob"])
        np.testing.assert_allclose(expected, plain * alive, rtol=1e-5, atol=1e-6)
        assert not ended.any()
    assert truncated.all()  # only the cap ends them


def test_survival_reward_is_the_games_reward_for_each_step(model: WorldModel) -> None:
    """reward="survival": each held step earns what the game gives for surviving it (one per
    tic on TakeCover, whatever the action), weighed by the chance of being alive under
    expected ends; the reward head plays no part. A reward of another kind is refused."""
    skip = frame_skip(model.info.env_options)
    assert survival_reward(model) == skip
    env = DreamVectorEnv(model=model, num_envs=3, obs_mode="latent", reward="survival",
                         decision_steps=2, termination="expected", max_episode_steps=3)
    plain = DreamVectorEnv(model=model, num_envs=3, obs_mode="latent", decision_steps=2,
                           termination="never", max_episode_steps=3)
    env.reset(seed=3)
    plain.reset(seed=3)
    alive = np.ones(3)
    for _ in range(3):
        _, rewards, _, _, infos = env.step(np.array([0, 1, 2]))
        _, head_rewards, *_ = plain.step(np.array([0, 1, 2]))
        alive = alive * (1 - infos["termination_prob"])
        np.testing.assert_allclose(rewards, 2 * skip * alive, rtol=1e-6)
        assert not np.allclose(head_rewards, 2 * skip)  # the head's own rewards differ
    single = DreamEnv(model=model, obs_mode="latent", reward="survival", termination="never")
    single.reset(seed=0)
    assert single.step(1)[1] == skip
    with pytest.raises(ConfigError, match="reward must be one of"):
        DreamEnv(model=model, reward="head")


def test_dataset_prompts_carry_the_history_that_shapes_the_state(
        model: WorldModel, tiny_takecover_data: Path) -> None:
    """A dataset prompt holds the frames that shape the model's state (its history, or the
    episode from its start): the dream starts where a model following the real episode is,
    which the last context window alone does not give."""
    episode = EpisodeDataset(tiny_takecover_data).episode(0)
    frames = torch.from_numpy(episode.frames).permute(0, 3, 1, 2)  # (T, 3, H, W)
    actions = torch.from_numpy(episode.actions).long()
    history, window = model.history_frames, model.config.dynamics.context_frames
    end = history + 3  # the state after frame end - 1
    assert len(frames) > end and history > window
    following = model.start(frames[:1][None], torch.zeros(1, 0, dtype=torch.long))
    for t in range(1, end):
        model.observe(following, frames[t:t + 1], actions[t - 1:t])
    expected = model.state_observation(following)

    def prompted(length: int) -> torch.Tensor:
        state = model.start(frames[end - length:end][None], actions[end - length:end - 1][None])
        return model.state_observation(state)

    torch.testing.assert_close(prompted(history), expected, atol=1e-4, rtol=1e-4)
    assert (prompted(window) - expected).abs().max() > 1e-3
    source = PromptSource(model, tiny_takecover_data)
    rng = np.random.default_rng(0)
    lengths = set()
    for _ in range(20):
        prompt = source.draw(rng)
        lengths.add(prompt.length)
        assert window <= prompt.length <= history
        if prompt.length < history:  # near the start: the episode from its first frame
            assert any(torch.equal(prompt.frames[0], torch.from_numpy(e.frames[0]).permute(
                2, 0, 1)) for e in map(EpisodeDataset(tiny_takecover_data).episode,
                                        range(len(EpisodeDataset(tiny_takecover_data)))))
    assert history in lengths and len(lengths) > 1  # full histories and episode openings


def test_prompts_from_several_datasets_and_from_decisive_states(
        model: WorldModel, tiny_takecover_data: Path, branch_data: Path, tmp_path: Path) -> None:
    """Prompts come from every dataset given, never from a branch file (whose history is
    cut); ``prompt_start="decisive"`` ends them at the states the branches examined where
    the moves' fates differ, with the episode's history before it."""
    history = model.history_frames
    synthetic = write_dataset(tmp_path / "synthetic", [30, 40], env=model.info.env,
                              frame_size=tuple(model.info.frame_size))  # other frames
    folders = [synthetic, branch_data]
    mains = [[(e.index, d.episode(p)) for p, e in enumerate(d.entries)
              if parse_branch_filename(e.file) is None] for d in map(EpisodeDataset, folders)]

    def found_in(prompt: Prompt) -> tuple[int, int, int]:
        """(dataset, episode, end) of the main episode slice the prompt's frames are."""
        frames = prompt.frames.permute(0, 2, 3, 1).numpy()
        for number, episodes in enumerate(mains):
            for index, episode in episodes:
                for end in range(prompt.length, len(episode.frames) + 1):
                    if np.array_equal(episode.frames[end - prompt.length:end], frames):
                        assert prompt.length == min(history, end)  # its whole history
                        return number, index, end
        raise AssertionError("a prompt that is no main episode's frames")

    rng = np.random.default_rng(0)
    drawn = {found_in(PromptSource(model, folders).draw(rng))[0] for _ in range(40)}
    assert drawn == {0, 1}  # both datasets, main episodes only

    decisive = {found[:2] for found in map(parse_branch_filename,
                                           (e.file for e in EpisodeDataset(branch_data).entries))
                if found is not None}
    assert len(decisive) > 1
    source = PromptSource(model, branch_data, prompt_start="decisive")
    ends = {found_in(source.draw(rng))[1:] for _ in range(40)}
    assert ends <= {(index, t + 1) for index, t in decisive} and len(ends) > 1
    with pytest.raises(ConfigError, match="has no branches, so no decisive states"):
        PromptSource(model, [branch_data, tiny_takecover_data], prompt_start="decisive")
    with pytest.raises(ConfigError, match="needs a dataset|draws states from a dataset"):
        DreamEnv(model=model, prompt_start="decisive")


def test_dataset_prompts_are_encoded_once_and_dream_alike(model: WorldModel,
                                                         tiny_takecover_data: Path) -> None:
    """Prompts reuse their episode's latents, encoded at its first draw; the dreams equal
    those of prompts encoded afresh at every start (no cache)."""
    cached = DreamVectorEnv(model=model, num_envs=3, obs_mode="latent",
                            dataset=tiny_takecover_data, max_episode_steps=2)
    fresh = DreamVectorEnv(model=model, num_envs=3, obs_mode="latent",
                           dataset=tiny_takecover_data, max_episode_steps=2)
    fresh.prompts._cache_left = 0  # nothing fits: every prompt is encoded by its dream
    for env in (cached, fresh):
        env.reset(seed=4)
    for _ in range(5):  # restarts every 2 steps draw more prompts
        steps = [env.step(np.array([0, 1, 2])) for env in (cached, fresh)]
        np.testing.assert_allclose(steps[0][0], steps[1][0], atol=1e-4)
    assert cached.prompts._encoded and not fresh.prompts._encoded
    source = cached.prompts
    prompt = source.draw(np.random.default_rng(1))
    assert prompt.latents is not None and prompt.latents.shape == (prompt.length,
                                                                  *model.latent_shape)
    torch.testing.assert_close(prompt.latents, model.encode(prompt.frames[None])[0],
                               atol=1e-4, rtol=1e-4)
    # bf16 dreams keep the latents their own encoding gives (bf16), not the fp32 ones
    prompt = PromptSource(model, tiny_takecover_data, precision="bf16").draw(
        np.random.default_rng(1))
    with model.autocast("bf16"):
        own = model.encode(prompt.frames[None])[0].float()
    fp32 = model.encode(prompt.frames[None])[0]
    assert prompt.latents is not None and prompt.latents.dtype == torch.float32
    assert (prompt.latents - own).abs().max() < (prompt.latents - fp32).abs().max()


# ---- bad input -----------------------------------------------------------------------------

def test_bad_input_is_a_clear_error(model: WorldModel, tiny_world_model: Path) -> None:
    env = DreamEnv(model=model, termination="threshold", termination_threshold=0.0)
    with pytest.raises(ConfigError, match="call reset"):
        env.step(0)
    env.reset(seed=0)
    for bad in (3, -1, 1.5, "left", np.array([0, 1])):
        with pytest.raises(ConfigError, match=r"outside the action space Discrete\(3\)"):
            env.step(bad)
    _, _, terminated, _, _ = env.step(np.int64(1))
    assert terminated
    with pytest.raises(ConfigError, match="dream is over .*call reset"):
        env.step(0)
    with pytest.raises(ConfigError, match="trained for 3 actions .* has 17"):
        DreamEnv(model=model, num_actions=17)
    with pytest.raises(ConfigError, match="trained on vizdoom/TakeCover, not crafter"):
        DreamEnv(model=model, env="crafter")
    with pytest.raises(ConfigError, match="unknown reset option"):
        env.reset(options={"promt": None})
    with pytest.raises(ConfigError, match="obs_mode"):
        DreamEnv(model=model, obs_mode="pixels")
    with pytest.raises(ConfigError, match="not both"):
        DreamEnv(str(tiny_world_model), model=model)
    from worldsim.world_model import SHIPPED_DIR

    if (SHIPPED_DIR / "takecover").is_dir():  # a bare env dreams the shipped TakeCover model
        assert DreamEnv().model.info.env == "vizdoom/TakeCover"
    else:
        with pytest.raises(CheckpointError, match="no world-model checkpoint at 'takecover'"):
            DreamEnv()
    vector = DreamVectorEnv(model=model, num_envs=2)
    vector.reset(seed=0)
    with pytest.raises(ConfigError, match="2 integer actions"):
        vector.step(np.array([0, 1, 2]))
    with pytest.raises(ConfigError, match=r"actions \[5\] \(dreams \[1\]\)"):
        vector.step(np.array([0, 5]))


def test_temperature_and_denoise_steps_change_the_dream(model: WorldModel) -> None:
    actions = np.zeros(3, dtype=np.int64)
    base = rollout(DreamEnv(model=model, obs_mode="latent", termination="never"), 0, actions)[0]
    for option in ({"temperature": 0.0}, {"denoise_steps": 4},
                   {"sampler": {"sigma_max": 20.0, "denoise_steps": 3}}):
        env = DreamEnv(model=model, obs_mode="latent", termination="never", **option)
        assert not np.allclose(rollout(env, 0, actions)[0][1:], base[1:]), option
    assert model.sampler.temperature == 1.0  # the shared model was not changed
    # sampler settings apply over the checkpoint's; temperature and denoise_steps win
    env = DreamEnv(model=model, termination="never", denoise_steps=5,
                   sampler={"sigma_max": 20.0, "denoise_steps": 3})
    assert (env.sampler.sigma_max, env.sampler.denoise_steps) == (20.0, 5)
    with pytest.raises(ConfigError, match="temperature"):
        DreamEnv(model=model, sampler={"temperature": -1.0})


# ---- the commands --------------------------------------------------------------------------

def test_play_headless_with_scripted_keys_side_by_side(model: WorldModel, tmp_path: Path) -> None:
    from envs.play import key_bindings, play

    assert key_bindings(("none", "left", "right"))["left"] == 1
    crafter = next(info for info in envs.list_envs() if info.name == "crafter")
    crafter_keys = key_bindings(crafter.action_names)
    assert crafter_keys["up"] == 3 and crafter_keys["space"] == 5
    result = play(model, script="right*3,left*2,none,r,left", side_by_side=True, fast=True,
                  record=tmp_path / "play.mp4", termination="never")
    assert result.actions == [2, 2, 2, 1, 1, 0, 1] and result.restarts == 1
    assert result.frames == 1 + 8  # the first frame, then one per tick
    video = imageio.mimread(tmp_path / "play.mp4")
    assert len(video) == result.frames
    assert video[0].shape[1] == 2 * 64 * 4  # real | dream


def test_play_and_dream_commands_write_videos(tiny_world_model: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = str(tiny_world_model)
    assert cli_main(["play", "--checkpoint", checkpoint, "--script", "right*4,space",
                     "--record", str(tmp_path / "p.mp4"), "--fast", "--scale", "2",
                     "--termination", "never"]) == 0
    assert len(imageio.mimread(tmp_path / "p.mp4")) == 6
    assert cli_main(["dream", "--checkpoint", checkpoint, "--steps", "10", "--out",
                     str(tmp_path / "d.mp4"), "--termination", "never", "--scale", "2"]) == 0
    frames = imageio.mimread(tmp_path / "d.mp4")
    assert len(frames) == 11 and frames[0].shape == (128, 128, 3)
    assert cli_main(["dream", "--checkpoint", checkpoint, "--steps", "8", "--compare",
                     "--policy", "sticky", "--out", str(tmp_path / "c.gif")]) == 0
    gif = imageio.mimread(tmp_path / "c.gif")
    assert len(gif) == 8 and gif[0].shape[1] == 2 * 64 * 4 and gif[0].shape[0] > 64 * 4
    assert "PSNR mean" in capsys.readouterr().out
    assert cli_main(["dream", "--checkpoint", checkpoint, "--policy",
                     str(tmp_path / "agent.zip"), "--out", str(tmp_path / "x.mp4")]) == 2
    error = capsys.readouterr().err  # a clear one-line error, with or without agents.load
    assert "agent" in error and "Traceback" not in error
    assert not (tmp_path / "x.mp4").exists()


def test_compare_replays_the_real_game(model: WorldModel) -> None:
    from envs.policies import make_policy
    from envs.video import compare, real_opening

    comparison = compare(model, 6, policy="sticky", seed=4)
    real = envs.make_env(model.info.env, **model.info.env_options)
    policy = make_policy("sticky", 3)
    policy.reset(4)
    frames, _, _ = real_opening(real, 4, 4, policy.act)
    expected = []
    observation = frames[-1]
    for _ in range(6):
        observation = real.step(policy.act(observation))[0]
        expected.append(observation)
    real.close()
    np.testing.assert_array_equal(comparison.real, np.stack(expected))
    assert comparison.psnr.shape == (6,) and np.isfinite(comparison.psnr).all()
    assert comparison.prompt_frames == 4
    assert not np.array_equal(comparison.dream, comparison.real)
