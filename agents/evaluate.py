"""Scoring a policy on the real game: frames survived over seeded episodes.

Episode ``i`` is played with seed ``seed + i`` (the game through ``env.reset(seed=...)``,
the policy through ``policy.reset(seed)``), so the same seed gives the same numbers, in
one process or many. The score of an episode is ``info["frames"]`` at its end (game tics
survived, whatever the frame skip) where the env reports it, else the steps taken. Every
method is held to the same cap: the env's ``max_frames`` (TakeCover: 2100 tics).

The best and the worst episode are filmed by replaying their seeds after scoring (which
keeps memory flat and checks determinism on the way).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agents.planner import PLANNER_HELP, is_planner, load_planner
from envs.frames import frame_skip
from envs.workers import GameJob, run_episodes
from worldsim.errors import ConfigError

if TYPE_CHECKING:
    from envs.dream import Datasets

DEFAULT_ENV = "vizdoom/TakeCover"
# Agent env options that are not the agent's business: every method gets the same cap.
_NOT_INHERITED = ("max_frames", "max_steps", "render_mode", "labels")

AGENT_HELP = (
    "who plays: a trained agent (an agent.safetensors file, a `worldsim train-agent` folder "
    "or a shipped name such as 'takecover'), or a baseline: 'random', 'always-<action>' "
    "(e.g. always-left), 'sticky' or 'sticky:K' (hold a random action 1..K steps); or "
    "a planner: " + PLANNER_HELP
)


@dataclass
class EpisodeScore:
    """One scored episode."""

    seed: int  # the seed it was played with (game and policy)
    frames: int  # info["frames"] at the end (game tics survived), else steps taken
    steps: int  # agent decisions
    total_reward: float  # sum of rewards
    terminated: bool  # the game ended it (TakeCover: death)
    truncated: bool  # the cap ended it
    actions: list[int] = field(default_factory=list)  # times each action was taken


@dataclass
class EvalResult:
    """Scores of one policy on one env, and how they were obtained."""

    agent: str  # the spec or path that was evaluated
    agent_name: str  # the policy's own name
    env: str
    env_options: dict[str, Any]  # make_env options used (frame size, frame skip, cap)
    max_frames: int | None  # the episode cap, in game frames (None: the env has no cap)
    seed: int  # episode i used seed + i
    episodes: list[EpisodeScore]
    wall_seconds: float
    workers: int = 1
    deterministic: bool = True  # argmax actions (agents) or sampled
    videos: dict[str, str] = field(default_factory=dict)  # "best"/"worst" -> mp4 path
    action_names: tuple[str, ...] = ()  # the env's, for the action shares
    decision_steps: int | None = None  # a trained agent's steps per decision (None: baseline)
    keep_bonus: float | None = None  # a trained agent's keep bonus (None: baseline)

    @property
    def frames(self) -> np.ndarray:
        return np.array([episode.frames for episode in self.episodes], dtype=np.float64)

    def summary(self) -> dict[str, float]:
        """mean, std (population), median, min, max of frames survived."""
        frames = self.frames
        return {"mean": float(frames.mean()), "std": float(frames.std()),
                "median": float(np.median(frames)), "min": float(frames.min()),
                "max": float(frames.max())}

    def action_shares(self) -> dict[str, float]:
        """Share of all decisions given to each action (empty when not counted): a policy
        that holds one action, or never moves, shows here before it shows in the score."""
        counted = [e.actions for e in self.episodes if e.actions]
        if not counted:
            return {}
        counts = np.sum(counted, axis=0)
        names = self.action_names or tuple(str(i) for i in range(len(counts)))
        return {name: round(float(c / counts.sum()), 4)
                for name, c in zip(names, counts, strict=True)}

    def best(self) -> EpisodeScore:
        return self.episodes[int(np.argmax(self.frames))]

    def worst(self) -> EpisodeScore:
        return self.episodes[int(np.argmin(self.frames))]

    def to_dict(self) -> dict[str, Any]:
        from worldsim.utils import machine_info

        return {
            "agent": self.agent, "agent_name": self.agent_name, "env": self.env,
            "env_options": self.env_options, "max_frames": self.max_frames,
            "episodes": len(self.episodes), "seed": self.seed,
            "frames_survived": self.summary(),
            "action_shares": self.action_shares(),
            "real_frames_used": int(self.frames.sum()),
            "terminated": int(sum(e.terminated for e in self.episodes)),
            "truncated": int(sum(e.truncated for e in self.episodes)),
            "wall_seconds": round(self.wall_seconds, 3), "workers": self.workers,
            "deterministic": self.deterministic, "decision_steps": self.decision_steps,
            "keep_bonus": self.keep_bonus,
            "best": asdict(self.best()), "worst": asdict(self.worst()),
            "videos": self.videos,
            "per_episode": [asdict(e) for e in self.episodes],
            "machine": machine_info(),
        }

    def describe(self) -> str:
        s = self.summary()
        cap = f"cap {self.max_frames}" if self.max_frames else "no cap"
        shares = ", ".join(f"{name} {share:.2f}" for name, share in self.action_shares().items())
        return (f"{self.agent_name} on {self.env}: {len(self.episodes)} episodes, frames "
                f"survived {s['mean']:.1f} +- {s['std']:.1f} (median {s['median']:.0f}, min "
                f"{s['min']:.0f}, max {s['max']:.0f}; {cap}), {self.wall_seconds:.1f} s"
                + (f"; actions: {shares}" if shares else ""))


# ---- policies ------------------------------------------------------------------------------

class ConstantPolicy:
    """Always the same action (the always-left baseline)."""

    def __init__(self, action: int, action_name: str) -> None:
        self.action = action
        self.name = f"always-{action_name}"

    def reset(self, seed: int | None = None) -> None:
        pass

    def act(self, frame: np.ndarray) -> int:
        return self.action


def is_baseline(spec: str) -> bool:
    """Whether ``spec`` names a built-in baseline rather than a trained agent."""
    kind = spec.partition(":")[0]
    return spec == "random" or spec.startswith("always-") or kind == "sticky"


def make_baseline(spec: str, action_names: tuple[str, ...]) -> Any:
    """A baseline policy (see :data:`AGENT_HELP`) for an env with these actions."""
    if spec.startswith("always-"):
        wanted = spec[len("always-"):]
        if wanted in action_names:
            return ConstantPolicy(action_names.index(wanted), wanted)
        if wanted.isdigit() and int(wanted) < len(action_names):
            return ConstantPolicy(int(wanted), action_names[int(wanted)])
        raise ConfigError(f"{spec!r}: this env's actions are {', '.join(action_names)}; use "
                          f"always-<one of them>")
    from envs.policies import make_policy

    return make_policy(spec, len(action_names))


def load_policy(spec: str, action_names: tuple[str, ...], deterministic: bool = True,
                decision_steps: int | None = None, keep_bonus: float | None = None) -> Any:
    """The policy a spec names: a baseline, or a trained agent (``agent:PATH`` or ``PATH``;
    ``decision_steps`` overrides how long it holds each action, ``keep_bonus`` what it adds
    to the held move's score at each decision)."""
    if decision_steps is not None and (is_baseline(spec) or is_planner(spec)):
        raise ConfigError(f"decision steps apply to trained agents, not to {spec!r} (a "
                          "planner's own `every=K` sets how often it decides)")
    if keep_bonus is not None and (is_baseline(spec) or is_planner(spec)):
        raise ConfigError(f"a keep bonus applies to trained agents, not to {spec!r} (a "
                          "planner's own `keep_bonus=X` sets its)")
    if is_baseline(spec):
        return make_baseline(spec, action_names)
    if is_planner(spec):
        return load_planner(spec)
    import agents

    return agents.load(spec.removeprefix("agent:"), deterministic=deterministic,
                       decision_steps=decision_steps, keep_bonus=keep_bonus)


# ---- playing ---------------------------------------------------------------------------------

def play_episode(env: Any, policy: Any, seed: int, film: bool = False
                 ) -> tuple[EpisodeScore, np.ndarray | None]:
    """Play one episode from ``env.reset(seed=seed)``; with ``film``, also return its frames
    ``(T, H, W, 3)``."""
    frame, info = env.reset(seed=seed)
    policy.reset(seed)
    frames = [frame] if film else None
    steps, total, terminated, truncated = 0, 0.0, False, False
    counts = [0] * int(env.action_space.n)
    while not (terminated or truncated):
        action = policy.act(frame)
        counts[int(action)] += 1
        frame, reward, terminated, truncated, info = env.step(action)
        steps += 1
        total += float(reward)
        if frames is not None:
            frames.append(frame)
    score = EpisodeScore(seed, int(info.get("frames", steps)), steps, total,
                         bool(terminated), bool(truncated and not terminated), counts)
    return score, (np.stack(frames) if frames is not None else None)


@dataclass
class EvalJob(GameJob):
    """Plays evaluation episodes: an :class:`envs.workers.EpisodeJob` (picklable; each
    worker makes its own game and policy in :meth:`open`)."""

    agent: str
    env: str
    env_options: dict[str, Any]
    seed: int
    deterministic: bool
    decision_steps: int | None = None
    keep_bonus: float | None = None
    _game: Any = field(default=None, init=False, repr=False, compare=False)
    _policy: Any = field(default=None, init=False, repr=False, compare=False)

    def open(self) -> None:
        import envs

        self._game = envs.make_env(self.env, **self.env_options)
        names = tuple(str(n) for n in getattr(self._game.unwrapped, "action_names",
                                              range(self._game.action_space.n)))
        self._policy = load_policy(self.agent, names, self.deterministic, self.decision_steps,
                                   self.keep_bonus)

    def run(self, index: int) -> EpisodeScore:
        return play_episode(self._game, self._policy, self.seed + index)[0]


def evaluate(agent: str | Path | Any, env: str | None = None, episodes: int = 100, seed: int = 0,
             max_frames: int | None = None, env_options: dict[str, Any] | None = None,
             workers: int = 1, video_dir: str | Path | None = None, deterministic: bool = True,
             progress: bool = True, decision_steps: int | None = None,
             keep_bonus: float | None = None) -> EvalResult:
    """Score a policy on the real game.

    Args:
        agent: a spec (see :data:`AGENT_HELP`) or a policy object (``name``, ``reset``,
            ``act``; one process only).
        env: env name (default: the agent's own env; for baselines vizdoom/TakeCover).
        episodes: episodes to play; episode ``i`` uses seed ``seed + i``.
        seed: base seed.
        max_frames: episode cap in game frames, VizDoom only (default: the env's, 2100 for
            TakeCover).
        env_options: extra make_env options. An agent's own options (frame size, frame
            skip) are used unless given here; its data's cap is not.
        workers: processes playing episodes in parallel (results do not depend on it).
        video_dir: write ``best.mp4`` and ``worst.mp4`` there.
        deterministic: argmax actions for trained agents (False samples, seeded).
        progress: show a progress bar.
        decision_steps: steps a trained agent holds each action (default: as in its dream;
            1 decides at every step); a spec only.
        keep_bonus: added to the held move's logit or Q-value at each decision of a trained
            agent (default: the agent's own, 0 unless saved with one); a spec only.

    Returns:
        The scores, with the options actually used.
    """
    import envs

    if episodes < 1:
        raise ConfigError(f"episodes must be >= 1, got {episodes}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if isinstance(agent, Path):
        agent = str(agent)
    spec = agent if isinstance(agent, str) else None
    policy = None if spec is not None else agent
    if policy is not None and (decision_steps is not None or keep_bonus is not None):
        raise ConfigError("decision_steps and keep_bonus apply to an agent given by its path; "
                          "set agent.decision_steps or agent.keep_bonus on a loaded agent "
                          "instead")
    if policy is not None and workers > 1:
        raise ConfigError("a policy object can only be evaluated in one process; pass the "
                          "agent's path to use several workers")
    trained = None
    if spec is not None and not is_baseline(spec):
        if not is_planner(spec):
            spec = str(_agent_file(spec))
        trained = policy = load_policy(spec, (), deterministic, decision_steps, keep_bonus)
    elif hasattr(policy, "info") and hasattr(policy, "check_env"):
        trained = policy
    options = _env_options(trained, env_options, max_frames)
    env_name = env or (trained.info.env if trained is not None else DEFAULT_ENV)
    if max_frames is not None and not env_name.startswith("vizdoom/"):
        raise ConfigError(f"max_frames caps VizDoom episodes; {env_name} takes its own cap as "
                          "an env option, e.g. max_steps")
    game = envs.make_env(env_name, **options)
    try:
        action_names = tuple(str(n) for n in getattr(game.unwrapped, "action_names",
                                                     range(game.action_space.n)))
        if trained is not None:
            trained.check_env(env_name, tuple(game.observation_space.shape[:2]),
                              int(game.action_space.n))
        if policy is None:
            policy = load_policy(spec, action_names, deterministic,  # type: ignore[arg-type]
                                 decision_steps, keep_bonus)
        cap = getattr(game.unwrapped, "max_frames", None)
        job = EvalJob(spec or "", env_name, options, seed, deterministic, decision_steps,
                      keep_bonus)
        started = time.perf_counter()
        scores = _score(job, game, policy, episodes, workers, progress)
        wall = time.perf_counter() - started
        result = EvalResult(spec or getattr(policy, "name", "policy"),
                            str(getattr(policy, "name", spec)), env_name, options, cap, seed,
                            scores, wall, workers, deterministic, action_names=action_names,
                            decision_steps=getattr(policy, "decision_steps", None),
                            keep_bonus=getattr(policy, "keep_bonus", None))
        if video_dir is not None:
            result.videos = film_extremes(result, game, policy, Path(video_dir))
    finally:
        game.close()
    return result


def _agent_file(spec: str) -> Path:
    from agents.portable import resolve_agent

    return resolve_agent(spec.removeprefix("agent:")).resolve()


def _env_options(trained: Any, given: dict[str, Any] | None,
                 max_frames: int | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if trained is not None:
        options = {k: v for k, v in trained.info.env_options.items() if k not in _NOT_INHERITED}
        options["frame_size"] = list(trained.info.frame_size)
    for key, value in (given or {}).items():
        if key in options and key != "frame_size" and options[key] != value:
            warnings.warn(f"the agent was trained with {key}={options[key]!r}; evaluating it with "
                          f"{key}={value!r}", UserWarning, stacklevel=3)
        options[key] = value
    if max_frames is not None:
        options["max_frames"] = int(max_frames)
    return options


def _score(job: EvalJob, game: Any, policy: Any, episodes: int, workers: int,
           progress: bool) -> list[EpisodeScore]:
    import torch
    from tqdm import tqdm

    bar = tqdm(total=episodes, unit="ep", desc=f"eval {getattr(policy, 'name', 'policy')}",
               disable=not progress, dynamic_ncols=True)
    scores: list[EpisodeScore] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one frame at a time: threads only add noise (and workers use 1)
    try:
        if workers == 1:
            stream: Iterator[EpisodeScore] = (play_episode(game, policy, job.seed + i)[0]
                                              for i in range(episodes))
        else:
            stream = run_episodes(job, range(episodes), workers, what="evaluation")
        for score in stream:
            scores.append(score)
            bar.set_postfix(mean_frames=f"{np.mean([s.frames for s in scores]):.0f}",
                            refresh=False)
            bar.update(1)
    finally:
        torch.set_num_threads(threads)
        bar.close()
    return sorted(scores, key=lambda s: s.seed)


def film_extremes(result: EvalResult, game: Any, policy: Any, video_dir: Path) -> dict[str, str]:
    """Replay the best and worst episodes and write them as mp4; returns name -> path."""
    from worldsim.media import write_video

    fps = float(game.metadata.get("render_fps", 30)) / getattr(game.unwrapped, "frame_skip", 1)
    videos: dict[str, str] = {}
    for label, episode in (("best", result.best()), ("worst", result.worst())):
        replay, frames = play_episode(game, policy, episode.seed, film=True)
        if replay.frames != episode.frames:
            warnings.warn(f"replaying seed {episode.seed} gave {replay.frames} frames, not "
                          f"{episode.frames}: the policy or env is not deterministic",
                          UserWarning, stacklevel=2)
        assert frames is not None
        path = write_video(video_dir / f"{label}.mp4", frames, fps=max(1, round(fps)), scale=4)
        videos[label] = str(path)
    return videos


# ---- the same agent in the dream -------------------------------------------------------------

def evaluate_in_dream(agent: str | Any, checkpoint: str | Any, episodes: int = 16,
                      seed: int = 0, temperature: float | None = None,
                      denoise_steps: int | None = None, max_episode_steps: int | None = None,
                      dataset: Datasets = None, batch: int = 16,
                      termination: str = "sample", device: str = "auto",
                      precision: str = "fp32", progress: bool = True) -> EvalResult:
    """Score a trained agent in a world model's dream: beside its real score, the gap shows
    how much of its dream skill was an exploit of the dream.

    Dream ``i`` is seeded with ``seed + i`` and played until its first episode ends; the
    agent sees exactly what it saw in training (latents, or decoded frames for an RGB
    agent) and decides as often (each action held its ``decision_steps`` dream steps).
    Frames survived are dream steps times the agent's frame skip, so they compare with
    real-game frames.

    Args:
        agent: a trained agent (path, short name or :class:`agents.Agent`).
        checkpoint: the world model (path, short name or a loaded ``WorldModel``).
        episodes: dreams to play.
        seed: base seed.
        temperature: dream sampling temperature (default: the checkpoint's).
        denoise_steps: denoising steps per frame (default: the checkpoint's).
        max_episode_steps: dream episode cap in the agent's decisions (default: the real
            game's cap).
        dataset: recorded play to prompt dreams from, one folder or several (default: the
            checkpoint's clips).
        batch: dreams stepped together.
        termination: how the dream ends episodes (``"sample"``, as in training;
            ``"threshold"``; ``"never"``: only the cap).
        device: where the dream runs.
        precision: dream inference precision, ``"fp32"`` or ``"bf16"`` (use the one the
            agent was trained in).
        progress: show a progress bar.

    Returns:
        The scores; ``env`` reads ``dream:<checkpoint>@T<temperature>``.
    """
    from tqdm import tqdm

    from envs.dream import DreamVectorEnv
    from worldsim.world_model import WorldModel

    if episodes < 1 or batch < 1:
        raise ConfigError(f"episodes and batch must be >= 1, got {episodes} and {batch}")
    import agents

    policy = agents.load(str(agent).removeprefix("agent:")) if isinstance(agent, (str, Path)) \
        else agent
    model = checkpoint if isinstance(checkpoint, WorldModel) else None
    venv = DreamVectorEnv(None if model is not None else str(checkpoint), model=model,
                          num_envs=min(batch, episodes), obs_mode=policy.observation.kind,
                          temperature=temperature, denoise_steps=denoise_steps,
                          max_episode_steps=max_episode_steps, dataset=dataset,
                          termination=termination, device=device, precision=precision,
                          decision_steps=policy.decision_steps)
    policy.check_env(venv.model.info.env or None, tuple(venv.model.info.frame_size),
                     venv.model.num_actions)
    if policy.observation.kind == "state" and not same_weights(venv.model,
                                                               policy.world_model):
        venv.close()
        raise ConfigError(f"{policy.name} acts on the state of the world model it carries, "
                          f"and {checkpoint} is another model: score it in the dream of the "
                          "model it was trained in (its `train-agent --checkpoint`)")
    skip = frame_skip(policy.info.env_options) * policy.decision_steps  # frames per decision
    scores: list[EpisodeScore] = []
    bar = tqdm(total=episodes, unit="ep", desc=f"dream {policy.name}", disable=not progress,
               dynamic_ncols=True)
    started = time.perf_counter()
    try:
        for first in range(0, episodes, venv.num_envs):
            seeds = [seed + first + row for row in range(venv.num_envs)]
            for score in _play_dreams(venv, policy, seeds, skip):
                if score.seed < seed + episodes:
                    scores.append(score)
                    bar.update(1)
    finally:
        bar.close()
        venv.close()
    label = str(checkpoint) if isinstance(checkpoint, (str, Path)) else "model"
    used = venv.sampler.temperature
    return EvalResult(str(agent) if isinstance(agent, (str, Path)) else policy.name,
                      policy.name, f"dream:{label}@T{used:g}",
                      {"temperature": used, "denoise_steps": venv.sampler.denoise_steps},
                      venv.max_episode_steps * skip, seed, sorted(scores, key=lambda s: s.seed),
                      time.perf_counter() - started, 1, True)


def same_weights(model: Any, other: Any) -> bool:
    """Whether two world models hold the same weights (up to the precision they are kept
    in: a model saved in float16 and its float32 copy agree)."""
    import torch

    mine, theirs = model.state_dict(), other.state_dict()
    if mine.keys() != theirs.keys():
        return False
    return all(a.shape == b.shape and torch.allclose(a.float().cpu(), b.float().cpu(),
                                                      rtol=1e-3, atol=1e-3)
               for a, b in ((mine[k], theirs[k]) for k in mine))


def _play_dreams(venv: Any, policy: Any, seeds: list[int], skip: int) -> list[EpisodeScore]:
    """Each dream's first episode under the agent's argmax actions."""
    import torch

    rows = venv.num_envs
    observations, _ = venv.reset(seed=seeds)
    history = None
    returns, lengths = np.zeros(rows), np.zeros(rows, dtype=np.int64)
    alive = np.ones(rows, dtype=bool)
    ended = np.zeros(rows, dtype=bool)  # by the termination head, not the cap
    while alive.any():
        current = torch.from_numpy(observations)
        if policy.observation.kind == "rgb":
            current = current.float() / 255.0  # (N, H, W, 3), as Agent.observe gives
        if history is None:  # zeros before the first observation, as in training
            history = [torch.zeros_like(current)] * (policy.observation.frame_stack - 1)
        history = [*history, current][-policy.observation.frame_stack:]
        stacked = torch.cat(history, dim=-1)
        with torch.no_grad():
            actions = policy.network(policy.policy_input(stacked)).argmax(dim=-1).numpy()
        observations, rewards, terminated, truncated, _ = venv.step(actions)
        returns[alive] += rewards[alive]
        lengths[alive] += 1
        ended |= alive & terminated
        alive &= ~(terminated | truncated)
    return [EpisodeScore(seeds[row], int(lengths[row]) * skip, int(lengths[row]),
                         float(returns[row]), bool(ended[row]), not bool(ended[row]))
            for row in range(rows)]

