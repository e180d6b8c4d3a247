"""Record play from a real environment into a worldsim dataset, in parallel and resumably.

Episode ``i`` of a dataset is played with seed ``seed + i`` (game and policy alike), so a
dataset is reproducible, and re-running ``collect`` on the same folder records only the
episodes that are missing.

**Branches** (``Branching``): a game that replays exactly from its seed (VizDoom) can also
show what *other* actions would have done. From every ``every``-th state of a recorded
episode, each action is held for ``steps`` steps (the game reset with the episode's seed
and its actions up to there replayed), and each branch is saved as a short episode: the
``context`` frames before the state, then the held steps. Behaviour data shows each state
once, under one action; branches show the same state under every action, the contrast a
world model needs to know which move survives (``benchmarks.dodge``). By default only
*decisive* states are kept (where some action ends the episode within the steps and
another does not). A branch shares its episode's index, so it falls on the same side of
the held-out split. The fates of *every* examined state, decisive or not (which held
actions ended the episode), are kept without frames in the episode's own metadata
(``branch_fates``): what fits a hold head whose risk is the chance of dying at any state,
not only a ranking at decisive ones (``worldsim train-foresight --hold --every-state``).
Where the game reports the player's health (VizDoom's ``HEALTH``), which held actions were
*hit* (lost health, or ended) is kept beside them (``branch_hits``, and ``hit`` in each
branch's metadata): in TakeCover most hits kill (100 health to below 0 in one fireball),
the rest are the near misses of a death.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.data import (
    DATASET_FORMAT,
    DATASET_VERSION,
    Episode,
    EpisodeDataset,
    EpisodeEntry,
    branch_filename,
    episode_filename,
    write_index,
)
from envs.workers import GameJob, run_episodes
from worldsim.errors import DatasetError
from worldsim.utils import write_json_atomic


@dataclass
class Branching:
    """Which branches to record (see the module doc)."""

    steps: int = 8  # steps each action is held from a branching state
    every: int = 8  # branch from every EVERY-th state of an episode
    context: int = 8  # frames before the state kept in each branch
    decisive_only: bool = True  # keep only states where the actions' fates differ

    def __post_init__(self) -> None:
        if min(self.steps, self.every) < 1 or self.context < 0:
            raise DatasetError(f"branches need steps and every >= 1 and context >= 0, got "
                               f"{self.steps}, {self.every} and {self.context}")


HEALTH = "health"  # the info key whose drop is a hit (VizDoom's HEALTH game variable)


def replay(game: Any, seed: int, actions: Any) -> dict[str, Any]:
    """Put ``game`` in the state that ``actions`` reach from ``game.reset(seed=seed)`` (a
    game that replays exactly from its seed, as VizDoom does; one with a ``replay`` method
    of its own, as ``VizDoomEnv`` has, does it without reading the frames on the way).
    Returns the info of the state reached."""
    if hasattr(game, "replay"):
        return dict(game.replay(seed, actions)[1])
    _, info = game.reset(seed=seed)
    for taken in actions:
        info = game.step(int(taken))[4]
    return dict(info)


def hold(game: Any, action: int, steps: int
         ) -> tuple[list[tuple[np.ndarray, float, bool, bool]], dict[str, Any]]:
    """Step ``game`` with ``action`` up to ``steps`` times, stopping where the episode ends:
    ``(frame, reward, terminated, truncated)`` of each step taken, and the last step's info."""
    taken, info = [], {}
    for _ in range(steps):
        frame, reward, terminated, truncated, info = game.step(action)
        taken.append((frame, reward, terminated, truncated))
        if terminated or truncated:
            break
    return taken, dict(info)


def held_branch(game: Any, episode: Episode, seed: int, t: int, action: int, steps: int,
                context: int) -> Episode:
    """The branch of ``episode`` (played from ``game.reset(seed=seed)``) that holds
    ``action`` for up to ``steps`` steps from its state ``t``: its ``context`` frames before
    ``t``, then the held steps (cut short by the episode's end, marked truncated where the
    steps ran out first). Its metadata's ``hit`` says whether it lost health or ended (None
    when the game reports no health)."""
    before = replay(game, seed, episode.actions[:t])
    held, after = hold(game, action, steps)
    frames, rewards, ends, cuts = zip(*held, strict=True)
    hit = (bool(ends[-1]) or float(after[HEALTH]) < float(before[HEALTH])) \
        if HEALTH in before and HEALTH in after else None
    # a branch that ran out of steps alive is cut (truncated), not ended
    cuts = [*cuts[:-1], cuts[-1] or (len(held) == steps and not ends[-1])]
    start = max(0, t - context)
    return Episode(
        frames=np.concatenate([episode.frames[start:t + 1], np.stack(frames)]),
        actions=np.concatenate([episode.actions[start:t], np.full(len(held), action)]),
        rewards=np.concatenate([episode.rewards[start:t], rewards]),
        terminated=np.concatenate([np.zeros(t - start, dtype=bool), ends]),
        truncated=np.concatenate([np.zeros(t - start, dtype=bool), cuts]),
        metadata={"seed": seed, "branch_of": episode.metadata.get("index"), "branch_at": t,
                  "held_action": action, "start": start, "hit": hit})


def branch_episodes(game: Any, episode: Episode, seed: int, branching: Branching
                    ) -> tuple[list[tuple[int, int, Episode]], dict[int, list[bool]],
                               dict[int, list[bool]] | None]:
    """``(t, action, branch)`` for every action at every ``branching.every``-th state of
    ``episode`` (only the decisive states unless ``branching.decisive_only`` is off), then
    for every one of those states, decisive or not, ``{t: [ended, per action]}`` and
    ``{t: [hit, per action]}`` (None when the game reports no health)."""
    found, ends, hits = [], {}, {}
    for t in range(branching.every, episode.length, branching.every):
        branches = [held_branch(game, episode, seed, t, action, branching.steps,
                                branching.context)
                    for action in range(int(game.action_space.n))]
        ends[t] = [bool(branch.terminated[-1]) for branch in branches]
        hit = [branch.metadata["hit"] for branch in branches]
        if hits is not None and None not in hit:
            hits[t] = [bool(h) for h in hit]
        else:
            hits = None
        if len(set(ends[t])) > 1 or not branching.decisive_only:
            found += [(t, action, branch) for action, branch in enumerate(branches)]
    return found, ends, hits


@dataclass
class CollectJob(GameJob):
    """Records episodes into a dataset: an :class:`envs.workers.EpisodeJob` (picklable; the
    game and policy are made in each worker by :meth:`open`)."""

    env: str  # env name for envs.make_env, e.g. "vizdoom/TakeCover"
    env_options: dict[str, Any]  # keyword options for make_env (frame_size, max_frames, ...)
    policy: str  # policy spec, see envs.policies.POLICY_HELP
    seed: int  # episode i is played with seed + i
    root: str  # dataset folder
    max_steps: int | None = None  # extra cap on steps per episode (None: the env's own)
    branching: Branching | None = None  # also record branches (see the module doc)
    _game: Any = field(default=None, init=False, repr=False, compare=False)
    _policy: Any = field(default=None, init=False, repr=False, compare=False)

    def open(self) -> None:
        import envs
        from envs.policies import make_policy

        self._game = envs.make_env(self.env, **self.env_options)
        self._policy = make_policy(self.policy, int(self._game.action_space.n))

    def run(self, index: int) -> list[EpisodeEntry]:
        """Record episode ``index`` (and its branches): the episode's own file is written
        last, so a killed run records the episode again, branches included."""
        episode = play_episode(self._game, self._policy, self.seed + index, self.max_steps)
        episode.metadata.update(env=self.env, env_options=self.env_options, index=index)
        recorded = []
        if self.branching is not None:
            found, fates, hits = branch_episodes(self._game, episode, self.seed + index,
                                                 self.branching)
            for t, action, branch in found:
                branch.metadata.update(env=self.env, env_options=self.env_options)
                relative = branch_filename(index, t, action)
                recorded.append(self._save(branch, index, relative))
            # every examined state's fates, decisive or not (JSON keys are strings)
            episode.metadata["branch_fates"] = {str(t): ended for t, ended in fates.items()}
            if hits is not None:  # and which were hit (lost health or ended)
                episode.metadata["branch_hits"] = {str(t): hit for t, hit in hits.items()}
        recorded.append(self._save(episode, index, episode_filename(index)))
        return recorded

    def _save(self, episode: Episode, index: int, relative: str) -> EpisodeEntry:
        episode.save(Path(self.root) / relative)
        return EpisodeEntry(index, relative, episode.length, episode.total_reward,
                            bool(episode.terminated[-1]), bool(episode.truncated[-1]))


@dataclass
class CollectResult:
    """What one call of :func:`collect` did."""

    dataset: EpisodeDataset
    recorded: int  # episodes recorded by this call
    frames: int  # frames recorded by this call
    seconds: float
    startup_seconds: float = 0.0  # until the first episode arrived: worker start-up + one episode
    startup_frames: int = 0  # frames of that first episode

    @property
    def steady_frames_per_second(self) -> float:
        """Throughput once the workers are up (what a long collection runs at)."""
        span = self.seconds - self.startup_seconds
        return (self.frames - self.startup_frames) / span if span > 0 else 0.0

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def collect(
    env: str,
    episodes: int,
    out: str | Path,
    policy: str = "random",
    env_options: dict[str, Any] | None = None,
    workers: int = 1,
    seed: int = 0,
    max_steps: int | None = None,
    branching: Branching | None = None,
    progress: bool = True,
) -> CollectResult:
    """Record ``episodes`` episodes of ``env`` into ``out`` (resuming if it exists).

    Args:
        env: env name (see ``worldsim envs``).
        episodes: the number of episodes the dataset should hold when done.
        out: dataset folder; created if missing, resumed if it holds the same recording.
        policy: behaviour policy spec ('random', 'sticky[:K]', 'agent:PATH').
        env_options: options for ``envs.make_env`` (``frame_size``, ``max_frames``, ...).
        workers: worker processes; 1 records in this process.
        seed: base seed; episode ``i`` uses ``seed + i``.
        max_steps: optional cap on steps per episode (ends it as truncated).
        branching: also record each episode's branches (see the module doc; the game must
            replay exactly from its seed, as VizDoom does).
        progress: show a progress bar.

    Returns:
        The dataset and what this call added.
    """
    from tqdm import tqdm

    root = Path(out)
    job = CollectJob(env, dict(env_options or {}), policy, seed, str(root), max_steps,
                     branching)
    if episodes < 1:
        raise DatasetError(f"--episodes must be >= 1, got {episodes}")
    if workers < 1:
        raise DatasetError(f"--workers must be >= 1, got {workers}")
    _prepare_dataset(job)
    existing = EpisodeDataset(root)
    entries = {entry.file: entry for entry in existing.entries}
    missing = [i for i in range(episodes) if episode_filename(i) not in entries]
    started = time.perf_counter()
    recorded_frames = 0
    last_index_write = 0.0
    startup_seconds, startup_frames = 0.0, 0
    bar = tqdm(total=episodes, initial=episodes - len(missing), unit="ep",
               desc=f"collect {env}", disable=not progress, dynamic_ncols=True)
    try:
        for recorded in run_episodes(job, missing, workers, what="collection"):
            for entry in recorded:
                entries[entry.file] = entry
                recorded_frames += entry.length + 1
            elapsed = time.perf_counter() - started
            if not startup_frames:
                startup_seconds, startup_frames = elapsed, recorded_frames
            bar.set_postfix(frames_per_s=f"{recorded_frames / max(elapsed, 1e-9):.0f}",
                            refresh=False)
            bar.update(1)
            if elapsed - last_index_write > 2.0:  # the index is a cache: files are the truth
                write_index(root, list(entries.values()))
                last_index_write = elapsed
    finally:
        bar.close()
        write_index(root, list(entries.values()))
    seconds = time.perf_counter() - started
    return CollectResult(EpisodeDataset(root), len(missing), recorded_frames, seconds,
                         startup_seconds, startup_frames)


def _prepare_dataset(job: CollectJob) -> None:
    """Create ``dataset.json``, or check that the folder holds this same recording."""
    import envs

    root = Path(job.root)
    probe = envs.make_env(job.env, **job.env_options)
    try:
        frame_size = list(probe.observation_space.shape[:2])
        num_actions = int(probe.action_space.n)
        action_names = list(getattr(probe.unwrapped, "action_names", range(num_actions)))
    finally:
        probe.close()
    info = {
        "format": DATASET_FORMAT,
        "version": DATASET_VERSION,
        "env": job.env,
        "env_options": job.env_options,
        "frame_size": frame_size,
        "num_actions": num_actions,
        "action_names": [str(name) for name in action_names],
        "policy": job.policy,
        "seed": job.seed,
        "max_steps": job.max_steps,
    }
    if job.branching is not None:  # absent otherwise: older datasets still resume
        info["branching"] = dataclasses.asdict(job.branching)
    path = root / "dataset.json"
    if path.is_file():
        from worldsim.data import read_dataset_info

        old = read_dataset_info(root)
        differs = [k for k in ("env", "env_options", "frame_size", "policy", "seed", "max_steps",
                               "branching")
                   if _jsonable(old.get(k)) != _jsonable(info.get(k))]
        if differs:
            details = ", ".join(f"{k}: {old.get(k)!r} there, {info.get(k)!r} now"
                                for k in differs)
            raise DatasetError(
                f"{root} already holds a different recording ({details}); use another --out, "
                "or the same options to resume it"
            )
        for stale in (root / "episodes").glob(".*.tmp"):  # left by a killed writer
            stale.unlink()
        return
    root.mkdir(parents=True, exist_ok=True)
    (root / "episodes").mkdir(exist_ok=True)
    write_json_atomic(path, info)


def _jsonable(value: Any) -> Any:
    """Normalise tuples to lists so a value compares equal to its JSON round trip."""
    import json

    return json.loads(json.dumps(value))


def play_episode(env: Any, policy: Any, seed: int, max_steps: int | None = None) -> Episode:
    """Play one episode with ``policy`` from ``env.reset(seed=seed)``."""
    frame, info = env.reset(seed=seed)
    policy.reset(seed)
    frames, actions, rewards, terminated, truncated = [frame], [], [], [], []
    done = False
    while not done:
        action = policy.act(frame)
        frame, reward, term, trunc, info = env.step(action)
        if max_steps is not None and len(actions) + 1 >= max_steps:
            trunc = True
        frames.append(frame)
        actions.append(action)
        rewards.append(reward)
        terminated.append(term)
        truncated.append(trunc and not term)
        done = term or trunc
    return Episode(
        frames=np.stack(frames), actions=np.array(actions), rewards=np.array(rewards),
        terminated=np.array(terminated), truncated=np.array(truncated),
        metadata={"seed": seed, "policy": policy.name, "final_info": _plain(info)},
    )


def _plain(info: dict[str, Any]) -> dict[str, Any]:
    """The JSON-friendly part of a final ``info`` dict (numbers, strings, small dicts)."""
    plain: dict[str, Any] = {}
    for key, value in info.items():
        if isinstance(value, (bool, int, float, str)):
            plain[key] = value
        elif isinstance(value, np.generic):
            plain[key] = value.item()
        elif isinstance(value, dict) and all(isinstance(v, (bool, int, float, np.generic))
                                             for v in value.values()):
            plain[key] = {k: (v.item() if isinstance(v, np.generic) else v)
                          for k, v in value.items()}
    return plain
