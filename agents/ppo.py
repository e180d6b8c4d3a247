"""Training stable-baselines3 agents (PPO by default; A2C, DQN) in the batched dream.

The dream is :class:`envs.dream.DreamVecEnvSB3` (N dreams in one forward pass), wrapped in
``VecMonitor`` (episode returns and lengths: TensorBoard's ``rollout/ep_rew_mean`` and
``rollout/ep_len_mean``) and, for ``frame_stack > 1``, ``VecFrameStack`` (the previous
latent frame shows the agent which way fireballs move). Latent observations take SB3's
``MlpPolicy``; RGB ones its ``CnnPolicy``.

``real_game=True`` trains the same way on the real game instead (latents from the world
model's encoder, :class:`VecLatentEncoder`): the honest baseline for a dream-trained agent
with the same step budget.

Checkpoints hold no pickles: SB3's policy and optimiser state dicts go through
``torch.save`` and come back through ``torch.load(weights_only=True)``; the agent itself
is exported to plain torch layers (:mod:`agents.portable`). DQN's replay buffer is not
kept: a resumed DQN run refills it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import VecEnvWrapper
from torch import nn

from agents.portable import (
    Agent,
    FrameEncoder,
    ObservationSpec,
    PolicySpec,
    agent_for_world_model,
    build_layers,
    copy_layers,
    describe_layers,
)
from agents.training import EpisodeLog, RunFolder, load_world_model, termination_options
from worldsim.errors import ConfigError
from worldsim.utils import atomic_path, seed_everything

if TYPE_CHECKING:
    from envs.dream import Datasets

ALGOS = ("PPO", "A2C", "DQN")
# how an MLP policy reads its observation: "flat" (SB3's flatten), or "tokens" (the state of a
# model whose hold head reads every token: each token through one shared layer first, as
# the hold head reads them)
NETS = ("flat", "tokens")
TOKEN_PROJECTION = 32  # features per token in the "tokens" net, as in the hold head
CONTINUOUS_ONLY = ("SAC", "TD3", "DDPG")  # SB3 algorithms a Discrete action space rules out

# Defaults for the dream (SB3's own for anything not named). Short PPO rollouts per dream:
# with 16 dreams, 128 steps each is 2,048 transitions per update, as in SB3's defaults.
DEFAULT_KWARGS: dict[str, dict[str, Any]] = {
    "PPO": {"n_steps": 128, "batch_size": 256, "n_epochs": 4, "ent_coef": 0.01},
    "A2C": {"n_steps": 8, "ent_coef": 0.01},
    # a 1M-transition buffer of 1,024-float latents would take 8 GB
    "DQN": {"buffer_size": 100_000, "learning_starts": 1_000, "train_freq": 4,
            "target_update_interval": 2_000},
}


def algorithm_class(name: str) -> type:
    """The SB3 class for an algorithm name (case-insensitive)."""
    key = name.upper()
    if key in CONTINUOUS_ONLY:
        raise ConfigError(f"{key} needs a continuous action space; the dream's actions are "
                          f"discrete: use one of {', '.join(ALGOS)}")
    if key not in ALGOS:
        raise ConfigError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGOS)} "
                          "(or 'cmaes' for the linear controller)")
    import stable_baselines3

    return getattr(stable_baselines3, key)


def algorithm_kwargs(algo: str, total_timesteps: int, num_envs: int,
                     overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The algorithm's keyword arguments: dream defaults, then ``overrides``; rollouts are
    shortened when the (remaining) budget is smaller than one of them (smoke runs). SB3
    finishes every rollout it starts, so a run may end up to one rollout past its budget."""
    kwargs = {**DEFAULT_KWARGS.get(algo, {}), **(overrides or {})}
    if algo in ("PPO", "A2C"):
        steps = kwargs.get("n_steps", 2048 if algo == "PPO" else 5)
        kwargs["n_steps"] = max(2, min(steps, math.ceil(total_timesteps / num_envs)))
        if algo == "PPO":
            kwargs["batch_size"] = min(kwargs.get("batch_size", 64), kwargs["n_steps"] * num_envs)
    return kwargs


def make_dream_vec_env(model: Any, num_envs: int, obs_mode: str, frame_stack: int,
                       temperature: float | None, denoise_steps: int | None,
                       dataset: Datasets, precision: str,
                       max_episode_steps: int | None = None,
                       termination_threshold: float | None = None,
                       sampler: dict[str, Any] | None = None, ends: str = "auto",
                       decision_steps: int = 1, expected_ends: bool = False,
                       prompt_start: str = "anywhere", reward: str = "model") -> Any:
    """The batched dream as an SB3 VecEnv: VecMonitor, then VecFrameStack if K > 1.
    Dreams end by sampling the termination head, or where its probability reaches
    ``termination_threshold`` when one is given; ``ends`` picks the head; each action is
    held ``decision_steps`` dream steps; ``expected_ends`` weighs rewards by the chance the
    dream is alive instead of ending it; ``prompt_start`` says where dataset prompts end;
    ``reward`` which reward each dream step earns."""
    from stable_baselines3.common.vec_env import VecFrameStack, VecMonitor

    from envs.dream import DreamVecEnvSB3

    venv: Any = DreamVecEnvSB3(model=model, num_envs=num_envs, obs_mode=obs_mode,
                               temperature=temperature, denoise_steps=denoise_steps,
                               sampler=sampler, dataset=dataset, precision=precision,
                               max_episode_steps=max_episode_steps,
                               decision_steps=decision_steps, prompt_start=prompt_start,
                               reward=reward,
                               **termination_options(termination_threshold, ends,
                                                     expected_ends))
    venv = VecMonitor(venv)
    if frame_stack > 1:
        venv = VecFrameStack(venv, n_stack=frame_stack)
    return venv


class VecLatentEncoder(VecEnvWrapper):
    """Real-game frames -> the latent observations of the dream, a whole batch at a time.

    Uses the agent's own :class:`agents.portable.FrameEncoder`, so an agent trained on the
    real game sees what a dream-trained one sees (and exports the same way).
    """

    def __init__(self, venv: Any, encoder: FrameEncoder) -> None:
        self.encoder = encoder.eval()
        size = int(encoder(torch.zeros(1, *venv.observation_space.shape,
                                       dtype=torch.uint8)).shape[1])
        space = gymnasium.spaces.Box(-encoder.bound, encoder.bound, (size,), np.float32)
        super().__init__(venv, observation_space=space)

    @torch.no_grad()
    def _encode(self, frames: np.ndarray) -> np.ndarray:
        return self.encoder(torch.from_numpy(np.ascontiguousarray(frames))).numpy()

    def reset(self) -> np.ndarray:
        return self._encode(self.venv.reset())

    def step_wait(self) -> Any:
        observations, rewards, dones, infos = self.venv.step_wait()
        for info in infos:
            if "terminal_observation" in info:
                info["terminal_observation"] = self._encode(info["terminal_observation"][None])[0]
        return self._encode(observations), rewards, dones, infos


def make_real_vec_env(model: Any, num_envs: int, obs_mode: str, frame_stack: int) -> Any:
    """The real game the world model was trained on, as an SB3 VecEnv with the dream's
    observations: VecMonitor, latent encoding (or raw frames), then VecFrameStack."""
    from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack, VecMonitor

    import envs

    options = {k: v for k, v in model.info.env_options.items()
               if k not in ("max_frames", "max_steps")}  # the game's own episode cap
    options["frame_size"] = list(model.info.frame_size)
    venv: Any = DummyVecEnv([lambda: envs.make_env(model.info.env, **options)] * num_envs)
    venv = VecMonitor(venv)
    if obs_mode == "latent":
        venv = VecLatentEncoder(venv, FrameEncoder.from_autoencoder(model.autoencoder).cpu())
    if frame_stack > 1:
        venv = VecFrameStack(venv, n_stack=frame_stack)
    return venv


class TokenFeatures(BaseFeaturesExtractor):
    """Features of a flattened token state ``(B, tokens * width)``: each token through one
    shared Linear layer and SiLU, then all of them side by side ``(B, tokens * projection)``;
    the layout of a token hold head's first layers (``worldsim.models.dit.HoldHead``), so
    the policy knows which token saw what with few weights. Plain layers: it exports to a
    portable agent."""

    def __init__(self, observation_space: gymnasium.spaces.Box, tokens: int,
                 projection: int = TOKEN_PROJECTION) -> None:
        size = int(np.prod(observation_space.shape))
        if tokens < 1 or size % tokens:
            raise ConfigError(f"a token net needs observations of whole tokens: {size} values "
                              f"do not split into {tokens} tokens")
        super().__init__(observation_space, tokens * projection)
        self.layers = nn.Sequential(nn.Flatten(), nn.Unflatten(-1, (tokens, size // tokens)),
                                    nn.Linear(size // tokens, projection), nn.SiLU(),
                                    nn.Flatten(-2))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.layers(observations)


def net_features(net: str, model: Any, obs_mode: str, frame_stack: int) -> dict[str, Any]:
    """The ``policy_kwargs`` that give a policy the features extractor of ``net`` (see
    :data:`NETS`; none for ``"flat"``).

    Raises:
        ConfigError: an unknown net, or ``"tokens"`` where the observation is not one
            frame's token state.
    """
    if net not in NETS:
        raise ConfigError(f"net must be one of {NETS}, got {net!r}")
    if net == "flat":
        return {}
    tokens = model.config.dynamics.hold_tokens
    if obs_mode != "state" or frame_stack != 1 or not tokens:
        raise ConfigError(
            "--net tokens reads one frame's token state: use --obs-mode state, --frame-stack "
            "1 and a world model whose hold head reads every token (`worldsim train-foresight "
            "--hold --tokens`); this run has "
            f"--obs-mode {obs_mode}, --frame-stack {frame_stack}, hold tokens {tokens}")
    return {"features_extractor_class": TokenFeatures,
            "features_extractor_kwargs": {"tokens": tokens}}


# ---- export to a portable agent --------------------------------------------------------------

def _extractor_layers(extractor: nn.Module) -> list[nn.Module]:
    from stable_baselines3.common.torch_layers import FlattenExtractor, NatureCNN

    if isinstance(extractor, FlattenExtractor):
        return [extractor.flatten]
    if isinstance(extractor, NatureCNN):
        return [*extractor.cnn, *extractor.linear]
    if isinstance(extractor, TokenFeatures):
        return list(extractor.layers)
    raise ConfigError(f"cannot export the features extractor {type(extractor).__name__}: "
                      "portable agents support SB3's FlattenExtractor (MlpPolicy), NatureCNN "
                      "(CnnPolicy) and TokenFeatures (--net tokens)")


def policy_layers(algorithm: Any) -> tuple[list[nn.Module], str]:
    """The SB3 modules that map an observation to action scores, in order, and whether the
    scores are ``"logits"`` or ``"q_values"``."""
    from stable_baselines3.common.policies import ActorCriticPolicy

    policy = algorithm.policy
    if isinstance(policy, ActorCriticPolicy):
        extractor = (policy.features_extractor if policy.share_features_extractor
                     else policy.pi_features_extractor)
        return [*_extractor_layers(extractor), *policy.mlp_extractor.policy_net,
                policy.action_net], "logits"
    q_net = getattr(policy, "q_net", None)
    if q_net is not None and hasattr(q_net, "q_net"):  # DQN
        return [*_extractor_layers(q_net.features_extractor), *q_net.q_net], "q_values"
    raise ConfigError(f"cannot export a {type(policy).__name__}: portable agents support "
                      "actor-critic policies (PPO, A2C) and DQN")


def export_agent(algorithm: Any, model: Any, observation: ObservationSpec,
                 trained: dict[str, Any], decision_steps: int = 1) -> Agent:
    """Copy an SB3 policy's acting network into a portable :class:`Agent` that holds each
    action ``decision_steps`` steps, as its dream did."""
    if observation.kind == "rgb" and not algorithm.policy.normalize_images:
        raise ConfigError("an RGB agent must be trained with normalize_images=True (the "
                          "portable agent scales pixels to [0, 1] as SB3 does by default)")
    modules, output = policy_layers(algorithm)
    specs = describe_layers(modules)
    network = build_layers(specs)
    copy_layers(modules, network)
    policy = PolicySpec(algo=type(algorithm).__name__, layers=specs, output=output,
                        decision_steps=decision_steps)
    return agent_for_world_model(model, observation, policy, network.cpu(), trained)


# ---- training ------------------------------------------------------------------------------

def train_ppo(
    checkpoint: str | Path,
    out: str | Path,
    total_timesteps: int,
    num_envs: int = 16,
    obs_mode: str = "latent",
    temperature: float | None = None,
    seed: int = 0,
    algo: str = "PPO",
    frame_stack: int = 2,
    denoise_steps: int | None = None,
    dataset: Datasets = None,
    max_episode_steps: int | None = None,
    algo_kwargs: dict[str, Any] | None = None,
    checkpoint_every: int = 20_000,
    precision: str = "fp32",
    device: str = "auto",
    real_game: bool = False,
    compile: bool = False,
    termination_threshold: float | None = None,
    sampler: dict[str, Any] | None = None,
    ends: str = "auto",
    decision_steps: int = 1,
    expected_ends: bool = False,
    net: str = "flat",
    prompt_start: str = "anywhere",
    reward: str = "model",
    progress: bool = True,
) -> Path:
    """Train an SB3 agent in the dream of a world model and export a portable agent.

    Args:
        checkpoint: the world model (run folder, model.safetensors or shipped name).
        out: run folder (created, or resumed when it holds the same run).
        total_timesteps: agent steps in the dream, summed over all dreams.
        num_envs: dreams stepped together in one batch.
        obs_mode: ``"latent"`` (MlpPolicy on the latent grid), ``"rgb"`` (CnnPolicy on
            decoded frames, far slower) or ``"state"`` (MlpPolicy on the world model's state;
            the exported agent carries the world model to follow real frames).
        temperature: dream sampling temperature (default: the checkpoint's); higher makes
            the dream harder to exploit.
        seed: seeds SB3, torch and the dreams.
        algo: ``"PPO"``, ``"A2C"`` or ``"DQN"``.
        frame_stack: observations stacked (2: the current and the previous frame).
        denoise_steps: dream denoising steps per frame (default: the checkpoint's).
        dataset: recorded play to prompt dreams from, one folder or several (default: the
            checkpoint's clips).
        max_episode_steps: dream episode cap (default: the real game's).
        algo_kwargs: keyword arguments for the SB3 algorithm (over :data:`DEFAULT_KWARGS`).
        checkpoint_every: agent steps between resumable checkpoints.
        precision: dream precision, ``"fp32"`` or ``"bf16"``.
        device: where the dream runs (the small policy always trains on the CPU for
            latent observations).
        real_game: train on the real game instead of the dream, with the same observations
            (the world model's encoder) and step budget: the honest baseline a dream-trained
            agent is compared with. Dream options (temperature, ...) are then unused.
        compile: compile the world model's blocks (``WorldModel.compile_blocks``): faster
            dream steps after a compile of about a minute.
        termination_threshold: end a dream where the termination head's probability
            reaches this (default: sample each step's end from it, as the dream env does).
        sampler: other dream sampler settings over the checkpoint's (see
            :func:`worldsim.sampler_settings.parse_sampler_settings`), e.g.
            ``{"denoise_steps": 16, "sigma_max": 20.0}``.
        ends: which head ends dreams: ``"auto"`` (the foresight head if the model has
            one), ``"frame"``, ``"foresight"`` or ``"hold"`` (the hold head's risk for the
            action taken, per step; see :meth:`WorldModel.hold_hazard`).
        decision_steps: dream steps each action is held for, one agent step per decision
            (``max_episode_steps`` and ``total_timesteps`` count decisions); the exported
            agent holds its actions as long on the real game.
        expected_ends: no dream ends by the head; each reward is weighted by the chance that
            the dream is still alive (``termination="expected"`` in :mod:`envs.dream`).
        net: how the policy reads its observation (:data:`NETS`): ``"flat"`` (SB3's
            MlpPolicy) or ``"tokens"`` (:class:`TokenFeatures` before the MLP; the state of
            a model whose hold head reads every token).
        prompt_start: where dataset prompts end (:class:`envs.dream.PromptSource`):
            ``"anywhere"``, ``"opening"`` or ``"decisive"`` (states where the moves' fates
            differ, from a dataset with branches).
        reward: ``"model"`` (the reward head's) or ``"survival"`` (what the real game gives
            for surviving each dream step, the same for every action; see
            :mod:`envs.dream`).
        progress: show a progress bar.

    Returns:
        The portable agent file, ``out/agent.safetensors``.
    """
    algo = algo.upper()
    algorithm_cls = algorithm_class(algo)
    if obs_mode == "state" and real_game:
        raise ConfigError("state observations come from the world model following the "
                          "dream; on the real game train on latent or rgb observations")
    if reward != "model" and real_game:
        raise ConfigError("--reward picks the dream's reward; on the real game the game "
                          "gives its own")
    if prompt_start != "anywhere" and real_game:
        raise ConfigError("--prompt-start picks where dreams start; the real game starts "
                          "every episode at its own opening")
    if (decision_steps != 1 or expected_ends) and real_game:
        raise ConfigError("--decision-steps and --expected-ends shape the dream; on the real "
                          "game the env's own frame skip sets how often the agent decides and "
                          "its episodes end where the game ends them")
    if decision_steps < 1:
        raise ConfigError(f"decision_steps must be >= 1, got {decision_steps}")
    if total_timesteps < 1 or num_envs < 1 or frame_stack < 1 or checkpoint_every < 1:
        raise ConfigError("total_timesteps, num_envs, frame_stack and checkpoint_every must "
                          "all be >= 1")
    run = RunFolder(out)
    model, world = load_world_model(checkpoint, device, compile)
    from envs.dream import check_prompt_start, check_reward, dataset_setting, dream_sampler

    if not real_game:  # dream options it cannot use are refused before the run folder is made
        dream_sampler(model.sampler, temperature, denoise_steps, sampler)
        check_prompt_start(prompt_start, dataset)
        check_reward(reward)
    features = net_features(net, model, obs_mode, frame_stack)  # refused before the folder
    settings = {"algo": algo, "world_model": world["sha256"], "num_envs": num_envs,
                "obs_mode": obs_mode, "frame_stack": frame_stack, "temperature": temperature,
                "denoise_steps": denoise_steps, "seed": seed, "algo_kwargs": algo_kwargs or {},
                "max_episode_steps": max_episode_steps, "real_game": real_game,
                "dataset": dataset_setting(dataset)}
    if termination_threshold is not None:  # absent otherwise: older runs still resume
        settings["termination_threshold"] = termination_threshold
    if sampler:  # absent otherwise, as above
        settings["sampler"] = sampler
    if decision_steps != 1:  # as above
        settings["decision_steps"] = decision_steps
    if expected_ends:  # as above
        settings["expected_ends"] = True
    if net != "flat":  # as above
        settings["net"] = net
    if prompt_start != "anywhere":  # as above
        settings["prompt_start"] = prompt_start
    if reward != "model":  # as above
        settings["reward"] = reward
    if not real_game:
        ends = model.resolve_ends(ends)
        if model.has_foresight or model.hold_steps:  # as above: older runs still resume
            settings["ends"] = ends
    record = run.start(settings, total_timesteps)
    if record["finished"] and run.agent_file.is_file():
        return run.agent_file

    done = int(record["steps_done"])
    kwargs = algorithm_kwargs(algo, total_timesteps - done, num_envs, algo_kwargs)
    seed_everything(seed + done)  # a resumed run does not replay the start's randomness
    if real_game:
        venv = make_real_vec_env(model, num_envs, obs_mode, frame_stack)
    else:
        venv = make_dream_vec_env(model, num_envs, obs_mode, frame_stack, temperature,
                                  denoise_steps, dataset, precision, max_episode_steps,
                                  termination_threshold, sampler, ends, decision_steps,
                                  expected_ends, prompt_start, reward)
    policy_name = "CnnPolicy" if obs_mode == "rgb" else "MlpPolicy"
    sb3_device = "cpu" if obs_mode != "rgb" else device
    policy_kwargs = {**(kwargs.get("policy_kwargs") or {}), **features}
    algorithm = algorithm_cls(policy_name, venv, seed=seed + done, device=sb3_device,
                              verbose=0, **{**kwargs, "policy_kwargs": policy_kwargs})
    from stable_baselines3.common.logger import configure

    algorithm.set_logger(configure(str(run.tensorboard), ["tensorboard"]))
    state_file = run.resume / "sb3_state.pt"
    if done and state_file.is_file():
        state = torch.load(state_file, weights_only=True)
        algorithm.set_parameters(state["params"], exact_match=True)
        done = algorithm.num_timesteps = int(state["num_timesteps"])  # the state is the truth
    else:
        done = 0
    observation = ObservationSpec(kind=obs_mode, frame_stack=frame_stack, precision=precision)
    facts = {"algo": algo, "world_model": world, "num_envs": num_envs,
             "temperature": temperature, "denoise_steps": denoise_steps, "seed": seed,
             "frame_stack": frame_stack, "obs_mode": obs_mode, "algo_kwargs": kwargs,
             "trained_in": "real game" if real_game else "dream",
             "termination_threshold": termination_threshold, "sampler": sampler or {},
             "ends": None if real_game else ends, "decision_steps": decision_steps,
             "expected_ends": expected_ends, "net": net,
             "dataset": dataset_setting(dataset), "prompt_start": prompt_start,
             "reward": reward}
    wall_before = float(record.get("wall_seconds", 0.0))
    started = time.perf_counter()

    def save(finished: bool) -> None:
        steps = int(algorithm.num_timesteps)
        wall = wall_before + time.perf_counter() - started
        returns = [float(info["r"]) for info in algorithm.ep_info_buffer or []]
        trained = {**facts, "timesteps": steps, "wall_seconds": round(wall, 1),
                   "real_game_steps": steps if real_game else 0,
                   "dream_return_mean_last_100": (sum(returns) / len(returns)
                                                  if returns else None),
                   "dream_episodes": log.count}
        with atomic_path(state_file) as tmp:
            torch.save({"params": algorithm.get_parameters(), "num_timesteps": steps}, tmp)
        export_agent(algorithm, model, observation, trained,
                     decision_steps).save(run.agent_file)
        run.update(record, steps_done=steps, wall_seconds=round(wall, 1), finished=finished,
                   dream_episodes=log.count, dream_return_mean_last_100=trained[
                       "dream_return_mean_last_100"])

    log = EpisodeLog(run.episodes_file, done)
    callback = _DreamCallback(log, save, checkpoint_every, total_timesteps, done, progress,
                              f"train {algo} in the {facts['trained_in']}")
    try:
        algorithm.learn(total_timesteps=max(total_timesteps - done, 1), callback=callback,
                        reset_num_timesteps=done == 0, log_interval=1)
    except KeyboardInterrupt:
        save(finished=False)
        raise
    finally:
        callback.close()
        venv.close()
    save(finished=True)
    return run.agent_file


class _DreamCallback(BaseCallback):
    """Logs finished dream episodes, saves checkpoints, drives the progress bar."""

    def __init__(self, log: EpisodeLog, save: Any, every: int, total: int, done: int,
                 progress: bool, description: str) -> None:
        super().__init__()
        from tqdm import tqdm

        self.log, self.save, self.every = log, save, every
        self.last_save = done
        self.recent: deque[float] = deque(maxlen=100)  # returns of the last dream episodes
        self.bar = tqdm(total=total, initial=done, unit="step", desc=description,
                        disable=not progress, dynamic_ncols=True)

    def _on_step(self) -> bool:
        rows = []
        for info in self.locals.get("infos", []):
            episode = info.get("episode")
            if episode is not None:
                rows.append((int(self.num_timesteps), float(episode["r"]), int(episode["l"])))
                self.logger.record_mean("dream/episode_return", float(episode["r"]))
                self.logger.record_mean("dream/episode_length", float(episode["l"]))
        self.log.add(rows)
        self.bar.update(self.num_timesteps - self.bar.n)
        if rows:
            self.recent.extend(row[1] for row in rows)
            self.bar.set_postfix(dream_return=f"{sum(self.recent) / len(self.recent):.1f}",
                                 refresh=False)
        if self.num_timesteps - self.last_save >= self.every:
            self.save(finished=False)
            self.last_save = self.num_timesteps
        return True

    def close(self) -> None:
        self.bar.close()
