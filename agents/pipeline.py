"""``worldsim run takecover``: the whole job, resumable at every stage.

collect (sticky-random real play) -> train the world model -> [record branches -> fit the
hold head] -> train agents in the dream -> score them on the real game (beside the random
and always-left baselines, and the planner over the hold head) and in the dream at several
temperatures (the exploit gap) -> world-model fidelity -> videos -> report.

The bracketed stages run when ``branch_episodes`` > 0 (the small preset's 2,500): the
collection's episodes replayed with every action held ``branch_steps`` steps from their
decisive states (real-game frames, ``worldsim collect --branch-steps``), the hold head
fitted on them to the frozen world model (``worldsim train-foresight --hold``), and the
planner that holds, every ``plan_every`` steps, the action the head finds safest
(``plan:OUT/hold,search=head``) scored with the other methods as ``plan-hold``: no agent is
trained for it, and it dreams nothing.

Run layout (``OUT``)::

    OUT/run.json                  the RunConfig of this run; a re-run must use the same one
    OUT/stages/<stage>.json       done markers, written only once a stage's outputs are
                                  complete: wall time, real-game frames used, hardware
    OUT/data/                     recorded real play (envs.collect)
    OUT/world_model/              the world-model run (worldsim.train); the model is
                                  OUT/world_model/world_model/model.safetensors
    OUT/branches/                 the collection's episodes with their branches
    OUT/hold/                     the world model with a hold head (model.safetensors)
    OUT/agents/<agent>/           agent runs (agents.ppo, agents.cmaes): agent.safetensors,
                                  episodes.csv (learning curves), tb/
    OUT/eval/real/<method>.json   real-game scores; agents' best/worst episodes in
                                  OUT/eval/videos/<method>/
    OUT/eval/dream/<agent>-T<t>.json  each agent's score in the dream at temperature t
    OUT/fidelity/fidelity.json    world-model fidelity on held-out real episodes
    OUT/videos/                   real game | dream under the agent's actions; the agent
                                  playing inside the dream
    OUT/report.md, OUT/results.json, OUT/plots/   the report (agents.report)

Every stage function resumes itself (collection records only missing episodes, training
continues from its last checkpoint, evaluation keeps the methods already scored), so a run
killed at any point is finished by re-running the same command. A stage whose marker
exists is skipped as long as its outputs exist and what it read is unchanged.

Real-game frames are counted per stage: the world model's data (collection) is the only
real play used for training a dream agent; evaluation frames are counted apart.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worldsim.errors import ConfigError, WorldsimError
from worldsim.utils import write_json_atomic

JOBS = {"takecover": "vizdoom/TakeCover"}  # job name -> the real game it is about
PLANNER = "plan-hold"  # the method name of the planner over the run's hold head
# dream PPO, dream CMA-ES, real-game PPO baseline, and DQN on the world model's state in
# one-decision dreams ended by the hold head (needs the hold head: branch_episodes > 0)
AGENT_KINDS = ("ppo", "cmaes", "ppo-real", "dqn-hold")
# dqn-hold's DQN: one decision per dream (gamma 0: each held move is scored by the dream's
# reward weighted by the hold head's chance to survive it), eight updates per batch of
# decisions; measured on the shipped takecover-hold model (README, "One-decision dreams")
DQN_HOLD_KWARGS: dict[str, Any] = {
    "gamma": 0.0, "train_freq": 1, "gradient_steps": 8, "batch_size": 256,
    "learning_rate": 5e-4, "exploration_fraction": 0.5, "target_update_interval": 500,
    "learning_starts": 2048, "policy_kwargs": {"net_arch": [256, 256]}}
# Fields that may change between a run and its resumption: they move work, not results.
RESUMABLE_WITH_OTHER = ("device", "collect_workers", "eval_workers")


class StageOutputMissing(WorldsimError):
    """A stage is marked done but something it produced is gone."""


@dataclass
class RunConfig:
    """Everything that defines one ``worldsim run`` job: what each stage does and its budget."""

    preset: str = "small"  # world-model preset (worldsim.config) and the budgets below
    env: str = "vizdoom/TakeCover"  # the real game
    seed: int = 0  # seeds collection (episode i: seed + i), training and dreams
    # game tics per step, the action held throughout (world model, agents and evaluation):
    # at 4 an action visibly moves the view within one step, and a dream step covers 4 tics
    frame_skip: int = 4
    # ---- collect
    episodes: int = 2500  # real episodes recorded for the world model (its only real data)
    # behaviour policy of the recording (envs.policies): a random action held 1-4 steps
    collect_policy: str = "sticky:4"
    collect_workers: int = 2  # recording processes (results do not depend on it)
    # ---- the hold head and its planner (0 branch episodes: both left out)
    # the first N collected episodes replayed with every action held branch_steps steps from
    # every branch_every-th state where the actions' fates differ (real-game frames)
    branch_episodes: int = 0
    branch_steps: int = 8  # the hold head looks this many steps ahead
    branch_every: int = 8
    # True: the hold head reads every token of the frame, not their mean (0.905 against 0.874
    # held-out choice on the same branches), and the model's state, what dqn-hold observes, is
    # the flattened tokens (README, "A second round of branches, hits, and a hold head on
    # every token"); False (what runs made before the setting existed did): the mean
    hold_tokens: bool = False
    # the hold head is this many heads fitted from consecutive seeds on the same states, read
    # as their mean chance (0.923 against 0.909 held-out choice for one on average, 5 against
    # 1, the same branches: README, "A hold head of five"); 1 (what runs made before the
    # setting existed did): one head
    hold_members: int = 1
    plan_every: int = 2  # the planner (and the dqn-hold agent) pick the move every N steps
    # ---- agents in the dream
    agents: tuple[str, ...] = ("ppo",)  # trained in order, from AGENT_KINDS
    agent_steps: int = 500_000  # PPO agent steps, summed over the batch (ppo-real: the same)
    num_envs: int = 16  # dreams (or real games for ppo-real) stepped together by PPO
    cmaes_steps: int = 2_000_000  # CMA-ES dream steps (every dream of the batch counts)
    cmaes_population: int = 32  # CMA-ES candidates per generation
    cmaes_rollouts: int = 4  # dream episodes per CMA-ES candidate
    dqn_steps: int = 60_000  # dqn-hold: decisions (one-decision dreams), summed over dreams
    dqn_envs: int = 64  # dqn-hold: one-decision dreams stepped together
    dream_episode_steps: int | None = None  # dream episode cap in training (None: 2100, the game's)
    dream_precision: str = "bf16"  # dream precision while training agents: fp32 or bf16
    # dream sampling temperature while training agents (None: the checkpoint's). With
    # calibrated termination heads the dream at 1.0 launches too few fireballs to kill (1 %
    # die within 40 steps, real 20 %); at 1.5 it shows the game's fireball rate and PPO
    # trained there scored best (206 +- 83 real against 158 before the heads were calibrated)
    agent_temperature: float | None = 1.5
    agent_checkpoint_every: int = 20_000  # PPO steps between resumable checkpoints
    # ---- evaluation
    eval_episodes: int = 100  # real episodes per method, the same seeds for every method
    eval_seed: int = 1_000_000  # episode i uses eval_seed + i: never a collection seed
    max_frames: int = 2100  # real episode cap in game frames, every method (Ha & Schmidhuber)
    baselines: tuple[str, ...] = ("random", "always-left")  # measured beside the agents
    eval_workers: int = 2  # real-game scoring processes (results do not depend on it)
    dream_episodes: int = 32  # dreams per agent and temperature
    dream_temperatures: tuple[float, ...] = (0.5, 1.0, 1.5)  # the exploit gap is shown at each
    # ---- fidelity and videos
    fidelity_horizon: int = 32  # open-loop prediction steps
    fidelity_clips: int = 256  # held-out clips for open-loop fidelity
    video_steps: int = 300  # steps of the real-vs-dream video and the agent-in-dream video
    device: str = "auto"  # where models run: auto, cpu or cuda

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown run settings {sorted(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


# what every setting was before it existed (older run folders resume with these)
_FIELD_DEFAULTS = json.loads(json.dumps({
    f.name: f.default for f in dataclasses.fields(RunConfig)
    if f.default is not dataclasses.MISSING}))

RUN_PRESETS: dict[str, RunConfig] = {
    # tests and smoke runs: a real pipeline at toy scale, about 1-3 minutes on 2 CPU cores
    "tiny": RunConfig(
        preset="tiny", episodes=6, collect_workers=1, agents=("ppo", "cmaes", "dqn-hold"),
        dqn_steps=96, dqn_envs=8,
        branch_episodes=6, branch_steps=4, branch_every=4, hold_tokens=True, hold_members=2,
        agent_steps=768, num_envs=4, cmaes_steps=300, cmaes_population=4, cmaes_rollouts=1,
        dream_episode_steps=30, dream_precision="fp32", agent_checkpoint_every=128,
        eval_episodes=3, eval_workers=1, dream_episodes=4, dream_temperatures=(1.0, 1.5),
        fidelity_horizon=8, fidelity_clips=16, video_steps=40),
    # a 2-core CPU within 2 hours (see STAGE_SECONDS); CMA-ES left out for time: add it
    # with --agents ppo,dqn-hold,cmaes (about +40 min)
    "small": RunConfig(preset="small", branch_episodes=2500, hold_tokens=True, hold_members=5,
                       agents=("ppo", "dqn-hold")),
    # one GPU: World Models' 10,000 rollouts, both dream agents, and PPO on the real game
    # with the same step budget (the honest baseline)
    "base": RunConfig(
        preset="base", episodes=10_000, collect_workers=8,
        agents=("ppo", "cmaes", "ppo-real", "dqn-hold"), branch_episodes=10_000,
        hold_tokens=True, hold_members=5, dqn_steps=200_000,
        agent_steps=5_000_000, num_envs=64, cmaes_steps=20_000_000, cmaes_population=64,
        cmaes_rollouts=16, eval_workers=8, dream_episodes=100, fidelity_clips=1024,
        video_steps=600),
}

# Rough seconds per stage at each preset's own budgets, on the machine class it is made for
# (tiny and small: 2 CPU cores; base: one GPU). Where they come from:
# - collect: 2,500 sticky:4 episodes at frame_skip 4 (221,547 frames) took 38 s with 2
#   workers;
# - world model (small), measured on a quiet 2-core EPYC (`worldsim train`, 2026-11-22):
#   47 min: autoencoder 2,500 steps 12.5 min, encoding 2,250 episodes ~3 min, dynamics
#   3,000 bf16 steps 31.8 min (1.6 steps/s);
# - PPO: 500k steps at temperature 1.5 in the calibrated dream took 16.6 min alone and 21.3
#   min in the end-to-end run below (18.5 min before the heads were calibrated);
# - eval: ~1,000 real frames/s per worker with an agent's encoder, ~3,000 for baselines;
# - dream eval: ~1,000 dream steps/s batched, up to 2,100 steps per dream;
# - branches: 2,500 sticky episodes replayed with branches (8 steps from every 8th decisive
#   state): 3.8-4.2 min on 2 workers since replays skip the frames on the way (13.7 min before;
#   `python -m benchmarks.collect --branches 400`); the hold head on them 6.3 min; its
#   planner scored 100 real episodes in 215 s (eval-plan; longer episodes than the others').
# - dqn-hold, measured at the small preset's settings on the shipped hold model with 2,500
#   recorded episodes as prompts (run-stage-dqn-hold-small-2026-12-03): 24.1 min for 60,000
#   decisions, ~52/s once every episode's latents were encoded at its first draw; its real
#   scoring decides every 2 steps like the planner.
# - the whole small run end to end on a quiet 2-core Intel Xeon (run-takecover-small-2026-12-03):
#   1 h 39 min; world model 34.9 min (38.3 and 47 min in earlier runs: 40 min is taken),
#   branches 3.5, hold 5.3, PPO 21.3, dqn-hold 25.6, real and dream evaluations 6.3 min.
# The tiny figures were measured; the others are estimates and are printed as such.
STAGE_SECONDS: dict[str, dict[str, float]] = {
    "tiny": {"collect": 3, "world_model": 20, "branches": 5, "hold": 5, "agent-ppo": 5,
             "agent-cmaes": 3, "agent-ppo-real": 10, "agent-dqn-hold": 5, "eval-real": 8,
             "eval-plan": 4,
             "eval-dream": 2, "fidelity": 6, "videos": 4},
    "small": {"collect": 40, "world_model": 2400, "branches": 260, "hold": 380,
              "agent-ppo": 1280, "agent-cmaes": 2400, "agent-ppo-real": 900,
              "agent-dqn-hold": 1530, "eval-real": 240,
              "eval-plan": 240, "eval-dream": 300, "fidelity": 180, "videos": 40},
    "base": {"collect": 240, "world_model": 14_400, "branches": 550, "hold": 300,
             "agent-ppo": 3600, "agent-cmaes": 3600, "agent-ppo-real": 7200,
             "agent-dqn-hold": 900, "eval-real": 600,
             "eval-plan": 300, "eval-dream": 300, "fidelity": 120, "videos": 30},
}
MACHINE_CLASS = {"tiny": "a 2-core CPU", "small": "a 2-core CPU", "base": "one GPU"}


def run_config(preset: str = "small", **overrides: Any) -> RunConfig:
    """The run settings of a preset, with ``overrides`` (None values are ignored).

    Args:
        preset: ``tiny``, ``small`` or ``base``.
        **overrides: any :class:`RunConfig` field.
    """
    if preset not in RUN_PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(RUN_PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - {f.name for f in dataclasses.fields(RunConfig)}
    if unknown:
        raise ConfigError(f"unknown run settings {sorted(unknown)}")
    for key in ("agents", "baselines", "dream_temperatures"):
        if key in given:
            given[key] = tuple(given[key])
    config = dataclasses.replace(RUN_PRESETS[preset], **given)
    check_config(config)
    return config


def check_config(config: RunConfig) -> None:
    """Refuse settings that cannot work, before any stage runs."""
    unknown = [a for a in config.agents if a not in AGENT_KINDS]
    if unknown or not config.agents:
        raise ConfigError(f"agents must be a non-empty list from {', '.join(AGENT_KINDS)}; "
                          f"got {', '.join(config.agents) or 'none'}")
    if len(set(config.agents)) != len(config.agents):
        raise ConfigError(f"an agent is named twice in {', '.join(config.agents)}")
    if "dqn-hold" in config.agents and not config.branch_episodes:
        raise ConfigError("the dqn-hold agent learns from the world model's hold head, which "
                          "the branches stages fit: set branch_episodes above 0 "
                          "(--branch-episodes N) or leave dqn-hold out of the agents")
    if config.branch_episodes < 0:
        raise ConfigError(f"branch_episodes must be >= 0 (0 leaves the hold head out), got "
                          f"{config.branch_episodes}")
    for name in ("branch_steps", "branch_every", "plan_every", "hold_members", "frame_skip",
                 "episodes", "agent_steps", "num_envs", "cmaes_steps", "dqn_steps", "dqn_envs",
                 "cmaes_population", "cmaes_rollouts", "agent_checkpoint_every",
                 "eval_episodes", "max_frames", "eval_workers", "collect_workers",
                 "dream_episodes", "fidelity_horizon", "fidelity_clips", "video_steps"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.episodes < 2:
        raise ConfigError("episodes must be >= 2: the world model holds one out for fidelity")
    if config.agent_temperature is not None and config.agent_temperature < 0:
        raise ConfigError(f"agent_temperature must be >= 0, got {config.agent_temperature}")
    if not config.dream_temperatures or min(config.dream_temperatures) < 0:
        raise ConfigError("dream_temperatures must be one or more values >= 0")
    if config.dream_precision not in ("fp32", "bf16"):
        raise ConfigError(f"dream_precision must be fp32 or bf16, got {config.dream_precision!r}")


# ---- stages --------------------------------------------------------------------------------

@dataclass
class StageResult:
    """What a stage reports once its outputs are complete."""

    outputs: list[Path]  # files that must exist for the stage to count as done
    real_frames_training: int = 0  # real-game frames this stage's product learned from
    real_frames_evaluation: int = 0  # real-game frames played to score or film
    figures: dict[str, Any] = field(default_factory=dict)  # a short summary for the report


@dataclass(frozen=True)
class Stage:
    """One resumable step of the job."""

    name: str  # marker name, e.g. "agent-ppo"
    title: str  # what it does, for the plan
    work: Callable[[Pipeline], StageResult]
    inputs: Callable[[Pipeline], dict[str, str]]  # fingerprints of what it reads


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def format_seconds(seconds: float) -> str:
    """``75`` -> ``1 min 15 s``; ``5400`` -> ``1 h 30 min``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Pipeline:
    """The job in a run folder: its stages, their markers, and running them in order.

    Args:
        out: the run folder (created, or resumed with the same settings).
        config: the run settings.
        name: the job, a key of :data:`JOBS`.
        progress: progress bars.
        log: where stage headers and the plan are printed (None: nowhere).
    """

    def __init__(self, out: str | Path, config: RunConfig, name: str = "takecover",
                 progress: bool = True, log: Callable[[str], None] | None = print) -> None:
        if name not in JOBS:
            raise ConfigError(f"unknown job {name!r}; choose one of {', '.join(JOBS)}")
        check_config(config)
        self.name, self.config, self.progress = name, config, progress
        self.root = Path(out)
        self.say = log or (lambda _message: None)
        self.data = self.root / "data"
        self.world_model_run = self.root / "world_model"
        self.checkpoint = self.world_model_run / "world_model" / "model.safetensors"
        self.stages_dir = self.root / "stages"
        self.branches = self.root / "branches"
        self.hold_checkpoint = self.root / "hold" / "model.safetensors"

    # ---- layout ------------------------------------------------------------------------------
    def agent_dir(self, kind: str) -> Path:
        return self.root / "agents" / kind

    def agent_file(self, kind: str) -> Path:
        return self.agent_dir(kind) / "agent.safetensors"

    def marker(self, stage: str) -> Path:
        return self.stages_dir / f"{stage}.json"

    @property
    def stages(self) -> list[Stage]:
        agents = [Stage(f"agent-{kind}", _AGENT_TITLES[kind], _agent_stage(kind),
                        lambda p, kind=kind: {"world_model": p.agent_world_model_digest(kind)})
                  for kind in self.config.agents]
        c = self.config
        hold = [
            Stage("branches", f"record {c.branch_episodes} episodes again with every action "
                  f"held {c.branch_steps} steps from their decisive states", _branches,
                  lambda p: {}),
            Stage("hold", "fit the hold head (which held action survives) to the world model"
                  + (", reading every token" if c.hold_tokens else "")
                  + (f", {c.hold_members} members" if c.hold_members > 1 else ""),
                  _hold, lambda p: {"world_model": p.world_model_digest(),
                                    "branches": p.data_digest(p.branches)}),
        ] if c.branch_episodes else []
        return [
            Stage("collect", f"record {c.episodes} episodes of "
                  f"{c.collect_policy}-random {c.env}", _collect,
                  lambda p: {}),
            Stage("world_model", f"train the {c.preset} world model", _world_model,
                  lambda p: {"data": p.data_digest()}),
            *hold,
            *agents,
            Stage("eval-real", "score agents, baselines" + (" and the hold-head planner"
                                                            if hold else "")
                  + " on the real game", _eval_real,
                  lambda p: {**p.agent_digests(), **p.planner_digests()}),
            Stage("eval-dream", "score the agents in the dream at each temperature",
                  _eval_dream, lambda p: {"world_model": p.world_model_digest(),
                                          **p.agent_digests()}),
            Stage("fidelity", "measure the world model on held-out real episodes", _fidelity,
                  lambda p: {"world_model": p.world_model_digest()}),
            Stage("videos", "film real vs dream, and the agent in the dream", _videos,
                  lambda p: {"world_model": p.world_model_digest(), **p.agent_digests()}),
        ]

    # ---- fingerprints of stage outputs (what a later stage read) ------------------------------
    def data_digest(self, folder: Path | None = None) -> str:
        index = (folder or self.data) / "index.json"
        if not index.is_file():
            return "missing"
        info = json.loads(index.read_text())
        return f"{info['num_episodes']} episodes, {info['num_frames']} frames"

    def world_model_digest(self) -> str:
        from agents.portable import file_digest

        return file_digest(self.checkpoint) if self.checkpoint.is_file() else "missing"

    def agent_world_model(self, kind: str) -> Path:
        """The world model agent ``kind`` learns in: the hold model for dqn-hold."""
        return self.hold_checkpoint if kind == "dqn-hold" else self.checkpoint

    def agent_world_model_digest(self, kind: str) -> str:
        from agents.portable import file_digest

        path = self.agent_world_model(kind)
        return file_digest(path) if path.is_file() else "missing"

    def agent_decision_steps(self, kind: str) -> int | None:
        """Steps each real-game action of agent ``kind`` is held (None: as in its dream)."""
        return self.config.plan_every if kind == "dqn-hold" else None

    def agent_digests(self) -> dict[str, str]:
        from agents.portable import file_digest

        return {f"agent-{k}": file_digest(self.agent_file(k)) if self.agent_file(k).is_file()
                else "missing" for k in self.config.agents}

    def planner_digests(self) -> dict[str, str]:
        """The hold head's checkpoint, when the run has one (the planner's only input)."""
        from agents.portable import file_digest

        if not self.config.branch_episodes:
            return {}
        return {PLANNER: file_digest(self.hold_checkpoint) if self.hold_checkpoint.is_file()
                else "missing"}

    def planner_spec(self) -> str:
        """The planner over the run's hold head, as `worldsim eval --agent` takes it."""
        c = self.config
        return (f"plan:{self.hold_checkpoint},search=head,every={c.plan_every},"
                f"precision={c.dream_precision}")

    # ---- markers -----------------------------------------------------------------------------
    def read_marker(self, stage: str) -> dict[str, Any] | None:
        path = self.marker(stage)
        return json.loads(path.read_text()) if path.is_file() else None

    def check_markers(self) -> None:
        """Every stage marked done still has its outputs; else a clear error and the fix."""
        for stage in self.stages:
            marker = self.read_marker(stage.name)
            if marker is None:
                continue
            missing = [o for o in marker["outputs"] if not (self.root / o).exists()]
            if missing:
                raise StageOutputMissing(
                    f"stage {stage.name!r} is marked done in {self.marker(stage.name)} but its "
                    f"output {self.root / missing[0]} is missing. Restore it, or delete "
                    f"{self.marker(stage.name)} and re-run the same command to redo the stage "
                    "(later stages that used it are redone if its output changes)")

    def status(self) -> list[tuple[Stage, str]]:
        """Each stage with ``"done"`` or ``"to do"`` (done ones are not checked for staleness)."""
        return [(s, "done" if self.marker(s.name).is_file() else "to do") for s in self.stages]

    def estimate(self) -> dict[str, float]:
        """Rough seconds for each stage still to do (see :data:`STAGE_SECONDS`)."""
        return {stage.name: stage_estimate(self.config, stage.name)
                for stage, state in self.status() if state != "done"}

    def plan(self) -> str:
        """The stages, what is done, and the time estimate for the rest."""
        estimate = self.estimate()
        lines = [f"worldsim run {self.name}: preset {self.config.preset}, seed "
                 f"{self.config.seed}, out {self.root}"]
        for number, (stage, state) in enumerate(self.status(), 1):
            when = "done" if state == "done" else f"~{format_seconds(estimate[stage.name])}"
            lines.append(f"  {number}. {stage.name:<15} {stage.title}  [{when}]")
        total = sum(estimate.values())
        machine = MACHINE_CLASS[self.config.preset]
        lines.append(f"Estimated time for what is left: ~{format_seconds(total)} on {machine} "
                     "(an estimate from the preset's budgets, not a measurement)."
                     if total else "Every stage is done; writing the report.")
        return "\n".join(lines)

    # ---- running -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run (or resume) every stage, then write the report.

        Returns:
            The report's figures (also in ``OUT/results.json``).
        """
        from agents.report import write_report

        started = time.perf_counter()
        with self._lock():
            self._check_settings()
            self.check_markers()
            self.say(self.plan())
            estimate = sum(self.estimate().values())
            stages = self.stages
            for number, stage in enumerate(stages, 1):
                self._run_stage(stage, number, len(stages))
            self.say(f"[report] writing {self.root / 'report.md'}")
            results = write_report(self.root)
        self.say(f"done in {format_seconds(time.perf_counter() - started)} (estimate "
                 f"~{format_seconds(estimate)}): {self.root / 'report.md'}")
        return results

    def _run_stage(self, stage: Stage, number: int, count: int) -> None:
        inputs = stage.inputs(self)
        marker = self.read_marker(stage.name)
        header = f"[{number}/{count}] {stage.name}: {stage.title}"
        if marker is not None:
            if marker.get("inputs") == inputs:
                self.say(f"{header}: done, skipped")
                return
            changed = sorted(k for k in inputs if marker.get("inputs", {}).get(k) != inputs[k])
            self.say(f"{header}: redoing it, {', '.join(changed)} changed since it was done")
            self.marker(stage.name).unlink()
        self.say(f"{header} (estimate ~{format_seconds(stage_estimate(self.config, stage.name))})")
        attempts = self._count_attempt(stage.name)
        started = time.perf_counter()
        result = stage.work(self)
        wall = time.perf_counter() - started
        missing = [path for path in result.outputs if not path.exists()]
        if missing:
            raise WorldsimError(f"stage {stage.name!r} finished without writing {missing[0]}")
        from worldsim.utils import get_device, machine_info

        write_json_atomic(self.marker(stage.name), {
            "stage": stage.name, "title": stage.title, "finished": _now(),
            "wall_seconds": round(wall, 1), "attempts": attempts,
            "estimate_seconds": stage_estimate(self.config, stage.name),
            "real_frames_training": int(result.real_frames_training),
            "real_frames_evaluation": int(result.real_frames_evaluation),
            "outputs": [str(p.relative_to(self.root)) for p in result.outputs],
            "inputs": stage.inputs(self), "figures": result.figures,
            "device": str(get_device(self.config.device)), "machine": machine_info(),
        })
        (self.stages_dir / f"{stage.name}.started").unlink(missing_ok=True)
        self.say(f"{header}: done in {format_seconds(wall)}")

    def _count_attempt(self, stage: str) -> int:
        """Attempts at a stage, this one included (an earlier one was interrupted)."""
        path = self.stages_dir / f"{stage}.started"
        attempts = json.loads(path.read_text())["attempts"] + 1 if path.is_file() else 1
        write_json_atomic(path, {"attempts": attempts, "last_started": _now()})
        return attempts

    def _check_settings(self) -> None:
        """A run folder is resumed only with the settings it started with."""
        path = self.root / "run.json"
        wanted = {"job": self.name, "config": self.config.to_dict()}
        if path.is_file():
            before = json.loads(path.read_text())
            if "job" not in before:
                raise ConfigError(f"{self.root} is not a `worldsim run` folder (its run.json "
                                  "belongs to something else, e.g. a `worldsim train` run); "
                                  "use another --out")
            # a setting added since the folder was made ran as that setting's default there
            old = {**_FIELD_DEFAULTS, **before.get("config", {})}
            new = wanted["config"]
            differs = [k for k in sorted(set(old) | set(new))
                       if k not in RESUMABLE_WITH_OTHER and old.get(k) != new.get(k)]
            if before.get("job") != self.name:
                differs.insert(0, "job")
            if differs:
                details = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now"
                                    for k in differs if k != "job")
                raise ConfigError(f"{self.root} holds a run with other settings "
                                  f"({details or 'job'}); use another --out, or the same "
                                  "options to resume it")
        else:
            write_json_atomic(path, {**wanted, "created": _now()})
        self.stages_dir.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """One process per run folder (the OS drops the lock when a process dies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.root / ".lock", "w")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"another `worldsim run` is working in {self.root}; wait for "
                                  "it to finish or use another --out") from None
            yield
        finally:
            handle.close()

    def bar(self, total: int, description: str) -> Any:
        from tqdm import tqdm

        return tqdm(total=total, desc=description, unit="part", disable=not self.progress,
                    dynamic_ncols=True)


def stage_estimate(config: RunConfig, stage: str) -> float:
    """Rough seconds for a stage: the preset's figure, scaled by how far the budget that
    drives it was changed from the preset's."""
    base = RUN_PRESETS[config.preset]
    seconds = STAGE_SECONDS[config.preset].get(stage, 0.0)
    ratio = {
        "collect": config.episodes / base.episodes,
        "agent-ppo": config.agent_steps / base.agent_steps,
        "agent-ppo-real": config.agent_steps / base.agent_steps,
        "agent-cmaes": config.cmaes_steps / base.cmaes_steps,
        "agent-dqn-hold": config.dqn_steps / base.dqn_steps,
        "collect-branches": config.branch_episodes / max(base.branch_episodes, 1),
        "eval-real": (config.eval_episodes * (len(config.agents) + len(config.baselines)))
        / (base.eval_episodes * (len(base.agents) + len(base.baselines))),
        "eval-dream": (config.dream_episodes * len(config.dream_temperatures)
                       * len(config.agents))
        / (base.dream_episodes * len(base.dream_temperatures) * len(base.agents)),
        "fidelity": config.fidelity_clips / base.fidelity_clips,
        "videos": config.video_steps / base.video_steps,
    }.get("collect-branches" if stage in ("branches", "hold") else stage, 1.0)
    estimate = seconds * ratio
    if stage == "eval-real" and config.branch_episodes:  # the planner lives longer
        estimate += (STAGE_SECONDS[config.preset]["eval-plan"] * config.eval_episodes
                     / base.eval_episodes)
    return estimate


# ---- the stage functions -------------------------------------------------------------------

def _collect(p: Pipeline) -> StageResult:
    from envs.collect import collect

    c = p.config
    result = collect(c.env, episodes=c.episodes, out=p.data, policy=c.collect_policy,
                     env_options={"frame_skip": c.frame_skip}, workers=c.collect_workers,
                     seed=c.seed, progress=p.progress)
    dataset = result.dataset
    if len(dataset) < c.episodes:
        raise WorldsimError(f"{p.data} holds {len(dataset)} readable episodes of "
                            f"{c.episodes} (skipped: {len(dataset.skipped)}); re-run to record "
                            "the missing ones")
    return StageResult([p.data / "dataset.json", p.data / "index.json"],
                       real_frames_training=dataset.num_frames,
                       figures={"episodes": len(dataset), "frames": dataset.num_frames,
                                "policy": c.collect_policy,
                                "seeds": [c.seed, c.seed + c.episodes - 1]})


def _world_model(p: Pipeline) -> StageResult:
    from worldsim.train import train_world_model

    c = p.config
    report_file = p.world_model_run / "train.json"
    if _world_model_complete(p):
        # Only the marker was lost (a kill right after training, or a deleted marker):
        # training again would re-save the same weights under a new digest and make every
        # later stage look stale.
        p.say(f"  {p.checkpoint} is complete (train.json lists every step); keeping it")
    else:
        train_world_model(p.data, p.world_model_run, preset_name=c.preset, seed=c.seed,
                          device=c.device, progress=p.progress)
    report = json.loads(report_file.read_text())
    figures = {stage: {k: report[stage].get(k) for k in ("steps", "seconds", "heldout_psnr",
                                                        "peak_memory_gib", "final")}
               for stage in ("autoencoder", "dynamics") if stage in report}
    return StageResult([p.checkpoint, p.world_model_run / "train.json"], figures=figures)


def _world_model_complete(p: Pipeline) -> bool:
    """Whether the world-model run finished both stages with the preset's step counts
    (train.json is written after the model, so it lists them only once the model is saved)."""
    from worldsim.config import preset

    report_file = p.world_model_run / "train.json"
    if not (p.checkpoint.is_file() and report_file.is_file()):
        return False
    report = json.loads(report_file.read_text())
    config = preset(p.config.preset)
    return (report.get("autoencoder", {}).get("steps") == config.autoencoder_training.steps
            and report.get("dynamics", {}).get("steps") == config.dynamics_training.steps)


def _branches(p: Pipeline) -> StageResult:
    from envs.collect import Branching, collect
    from worldsim.data import parse_branch_filename

    c = p.config
    # the collection's seeds and policy: its first episodes again, now with their branches
    result = collect(c.env, episodes=c.branch_episodes, out=p.branches, policy=c.collect_policy,
                     env_options={"frame_skip": c.frame_skip}, workers=c.collect_workers,
                     seed=c.seed, branching=Branching(steps=c.branch_steps,
                                                      every=c.branch_every),
                     progress=p.progress)
    dataset = result.dataset
    mains = [e for e in dataset.entries if parse_branch_filename(e.file) is None]
    if len(mains) < c.branch_episodes:
        raise WorldsimError(f"{p.branches} holds {len(mains)} readable episodes of "
                            f"{c.branch_episodes} (skipped: {len(dataset.skipped)}); re-run to "
                            "record the missing ones")
    main_frames = sum(e.length + 1 for e in mains)
    return StageResult([p.branches / "dataset.json", p.branches / "index.json"],
                       # every frame played counts, the replayed episodes' too
                       real_frames_training=dataset.num_frames,
                       figures={"episodes": len(mains), "branches": len(dataset) - len(mains),
                                "frames": dataset.num_frames,
                                "branch_frames": dataset.num_frames - main_frames,
                                "steps_held": c.branch_steps,
                                "seeds": [c.seed, c.seed + c.branch_episodes - 1]})


def _hold(p: Pipeline) -> StageResult:
    from worldsim.foresight import train_foresight

    c = p.config
    record = train_foresight(p.checkpoint, p.branches, p.hold_checkpoint.parent, hold=True,
                             seed=c.seed, precision=c.dream_precision,
                             tokens=c.hold_tokens, members=c.hold_members,
                             progress=p.progress)
    figures = {k: record.get(k) for k in ("states_fitted", "decisive_states", "accuracy",
                                           "chance", "contrast_auc", "fixed_action_accuracy",
                                           "wall_seconds")}
    return StageResult([p.hold_checkpoint], figures=figures)


_AGENT_TITLES = {"ppo": "train PPO in the dream", "cmaes": "train the CMA-ES linear controller "
                 "in the dream", "ppo-real": "train PPO on the real game (honest baseline)",
                 "dqn-hold": "train DQN on the world model's state in one-decision dreams "
                             "ended by the hold head"}


def _agent_stage(kind: str) -> Callable[[Pipeline], StageResult]:
    def work(p: Pipeline) -> StageResult:
        from agents.training import RunFolder

        c = p.config
        folder = p.agent_dir(kind)
        _check_agent_world_model(p, kind)
        if kind == "dqn-hold":
            from agents.ppo import train_ppo

            # every decision is a fresh dream from a real prompt (the recorded play with
            # its history): held branch_steps steps, scored by the hold head's risk
            kwargs = {**DQN_HOLD_KWARGS,
                      "learning_starts": min(DQN_HOLD_KWARGS["learning_starts"],
                                             c.dqn_steps // 2)}
            train_ppo(p.hold_checkpoint, folder, c.dqn_steps, num_envs=c.dqn_envs,
                      obs_mode="state", algo="DQN", frame_stack=1, dataset=p.data,
                      max_episode_steps=1, algo_kwargs=kwargs, ends="hold",
                      decision_steps=c.branch_steps, expected_ends=True, seed=c.seed,
                      checkpoint_every=c.agent_checkpoint_every, precision=c.dream_precision,
                      device=c.device, progress=p.progress)
        elif kind == "cmaes":
            from agents.cmaes import train_cmaes

            train_cmaes(p.world_model_run, folder, c.cmaes_steps, population=c.cmaes_population,
                        rollouts=c.cmaes_rollouts, max_episode_steps=c.dream_episode_steps,
                        temperature=c.agent_temperature,
                        seed=c.seed, precision=c.dream_precision, device=c.device,
                        progress=p.progress)
        else:
            from agents.ppo import train_ppo

            train_ppo(p.world_model_run, folder, c.agent_steps, num_envs=c.num_envs,
                      seed=c.seed, max_episode_steps=c.dream_episode_steps,
                      temperature=None if kind == "ppo-real" else c.agent_temperature,
                      checkpoint_every=c.agent_checkpoint_every, precision=c.dream_precision,
                      device=c.device, real_game=kind == "ppo-real", progress=p.progress)
        record = RunFolder(folder).read() or {}
        steps = int(record.get("steps_done", 0))
        figures = {k: record.get(k) for k in ("steps_done", "wall_seconds", "dream_episodes",
                                               "dream_return_mean_last_100", "generations",
                                               "mean_controller_return") if k in record}
        return StageResult([folder / "agent.safetensors", folder / "train_agent.json"],
                           # game tics: each agent step holds its action frame_skip tics
                           real_frames_training=steps * c.frame_skip if kind == "ppo-real"
                           else 0,
                           figures=figures)

    return work


def _check_agent_world_model(p: Pipeline, kind: str) -> None:
    """An agent run started on another world model cannot be resumed on this one: it is
    moved aside (never deleted) and the agent is trained afresh."""
    folder = p.agent_dir(kind)
    record_file = folder / "train_agent.json"
    if not record_file.is_file():
        return
    trained_on = json.loads(record_file.read_text())["settings"].get("world_model", "")
    if trained_on != p.agent_world_model_digest(kind):
        aside = folder.with_name(f"{folder.name}.world-model-{trained_on[:12]}")
        if aside.exists():
            raise WorldsimError(f"{folder} was trained on another world model than "
                                f"{p.agent_world_model(kind)}, and {aside} is taken; move one "
                                "of them away")
        folder.rename(aside)
        p.say(f"  {folder} was trained on another world model than "
              f"{p.agent_world_model(kind)}; moved it to {aside} and "
              "training afresh")


def _methods(p: Pipeline) -> list[tuple[str, str, str | None]]:
    """(method, spec, digest) for every method scored on the real game; ``digest``: of the
    file it plays by (None for a baseline, which is not filmed)."""
    from agents.portable import file_digest

    planner = [(PLANNER, p.planner_spec(), file_digest(p.hold_checkpoint))] \
        if p.config.branch_episodes else []
    return ([(f"agent-{k}", str(p.agent_file(k)), file_digest(p.agent_file(k)))
             for k in p.config.agents] + planner
            + [(b, b, None) for b in p.config.baselines])


def _eval_real(p: Pipeline) -> StageResult:
    from agents.evaluate import evaluate

    c = p.config
    outputs, frames = [], 0
    methods = _methods(p)
    bar = p.bar(len(methods), "eval on the real game")
    for method, spec, digest in methods:
        is_agent = digest is not None
        path = p.root / "eval" / "real" / f"{method}.json"
        key = {"agent": digest or spec, "episodes": c.eval_episodes,
               "seed": c.eval_seed, "max_frames": c.max_frames, "env": c.env,
               "frame_skip": c.frame_skip}
        saved = json.loads(path.read_text()) if path.is_file() else None
        filmed_ok = saved is not None and all((p.root / v).is_file()
                                              for v in saved.get("videos", {}).values())
        decide = p.agent_decision_steps(method.removeprefix("agent-"))
        if decide is not None:
            key["decision_steps"] = decide
        if saved is None or saved.get("key") != key or not filmed_ok:  # kept on resume
            video_dir = p.root / "eval" / "videos" / method if is_agent else None
            # baselines act at the agents' rate too: one action per frame_skip tics
            result = evaluate(spec, env=c.env, episodes=c.eval_episodes, seed=c.eval_seed,
                              max_frames=c.max_frames, env_options={"frame_skip": c.frame_skip},
                              workers=c.eval_workers, decision_steps=decide,
                              video_dir=video_dir, progress=p.progress)
            filmed = result.best().frames + result.worst().frames if video_dir else 0
            kind = "planner" if method == PLANNER else "agent" if is_agent else "baseline"
            saved = {"key": key, "method": method, "kind": kind,
                     "filmed_frames": int(filmed), **result.to_dict()}
            if method == PLANNER:  # its name, with the checkpoint relative to the run folder
                saved["agent_name"] = spec.replace(str(p.hold_checkpoint.parent), "hold")
            if video_dir is not None:
                saved["videos"] = {k: str(Path(v).relative_to(p.root))
                                   for k, v in result.videos.items()}
            write_json_atomic(path, saved)
        frames += int(saved["real_frames_used"]) + int(saved.get("filmed_frames", 0))
        outputs.append(path)
        outputs.extend(p.root / v for v in saved.get("videos", {}).values())
        bar.update(1)
    bar.close()
    summary = {json.loads(o.read_text())["method"]: json.loads(o.read_text())["frames_survived"]
               for o in outputs if o.suffix == ".json"}
    return StageResult(outputs, real_frames_evaluation=frames, figures=summary)


def _eval_dream(p: Pipeline) -> StageResult:
    from agents.evaluate import evaluate_in_dream
    from agents.portable import file_digest

    c = p.config
    outputs, figures = [], {}
    bar = p.bar(len(c.agents) * len(c.dream_temperatures), "eval in the dream")
    for kind in c.agents:
        for temperature in c.dream_temperatures:
            path = p.root / "eval" / "dream" / f"agent-{kind}-T{temperature:g}.json"
            world = p.agent_world_model_digest(kind)
            key = {"agent": file_digest(p.agent_file(kind)), "world_model": world,
                   "episodes": c.dream_episodes, "seed": c.seed, "temperature": temperature,
                   "max_episode_steps": c.dream_episode_steps}
            saved = json.loads(path.read_text()) if path.is_file() else None
            if saved is None or saved.get("key") != key:
                dream = p.hold_checkpoint if kind == "dqn-hold" else p.world_model_run
                result = evaluate_in_dream(p.agent_file(kind), str(dream),
                                           episodes=c.dream_episodes, seed=c.seed,
                                           temperature=temperature,
                                           max_episode_steps=c.dream_episode_steps,
                                           batch=min(c.dream_episodes, 32), device=c.device,
                                           precision=c.dream_precision, progress=p.progress)
                saved = {"key": key, "method": f"agent-{kind}", "temperature": temperature,
                         **result.to_dict()}
                saved["real_frames_used"] = 0  # dream frames, not real ones
                write_json_atomic(path, saved)
            figures[f"agent-{kind}@T{temperature:g}"] = saved["frames_survived"]
            outputs.append(path)
            bar.update(1)
    bar.close()
    return StageResult(outputs, figures=figures)


def _fidelity(p: Pipeline) -> StageResult:
    from benchmarks import fidelity

    c = p.config
    bar = p.bar(2, "fidelity")
    results = fidelity.evaluate(str(p.checkpoint), str(p.data), horizon=c.fidelity_horizon,
                                clips=c.fidelity_clips, seed=c.seed)
    bar.update(1)
    folder = p.root / "fidelity"
    folder.mkdir(parents=True, exist_ok=True)
    fidelity.plot(results, folder / "psnr_vs_horizon.png")
    write_json_atomic(folder / "fidelity.json", results)
    bar.update(1)
    bar.close()
    figures = {"reconstruction_psnr": results["reconstruction_psnr"],
               "by_horizon": results["open_loop"]["by_horizon"]}
    return StageResult([folder / "fidelity.json", folder / "psnr_vs_horizon.png"],
                       figures=figures)


def _videos(p: Pipeline) -> StageResult:
    """Real | dream under the first agent's real actions, and that agent inside the dream."""
    import numpy as np

    from envs.video import compare, comparison_video, dream_clip
    from worldsim.media import write_video
    from worldsim.world_model import WorldModel

    c = p.config
    agent = f"agent:{p.agent_file(c.agents[0])}"
    folder = p.root / "videos"
    model = WorldModel.load(p.agent_world_model(c.agents[0]))
    bar = p.bar(2, "videos")
    # the prompt: a real opening from an evaluation seed, never a training one
    comparison = compare(model, c.video_steps, policy=agent, seed=c.eval_seed)
    fps = 35  # VizDoom's tic rate: the videos play in real time
    write_video(folder / "dream_vs_real.mp4", comparison_video(comparison), fps=fps)
    bar.update(1)
    clip = dream_clip(model, c.video_steps, policy=agent, seed=c.seed,
                      max_episode_steps=c.dream_episode_steps)
    write_video(folder / "agent_in_dream.mp4", clip.frames, fps=fps, scale=4)
    bar.update(1)
    bar.close()
    psnr = comparison.psnr[np.isfinite(comparison.psnr)]
    figures = {"agent": c.agents[0], "compared_steps": len(comparison.actions),
               "prompt_frames": comparison.prompt_frames,
               "mean_psnr": round(float(psnr.mean()), 3) if len(psnr) else None,
               "dream_restarts": len(clip.episode_starts) - 1, "fps": fps}
    write_json_atomic(folder / "videos.json", figures)
    real_frames = comparison.prompt_frames + len(comparison.actions)
    return StageResult([folder / "dream_vs_real.mp4", folder / "agent_in_dream.mp4",
                        folder / "videos.json"], real_frames_evaluation=real_frames,
                       figures=figures)


# ---- the public entry point ----------------------------------------------------------------

def run(name: str = "takecover", out: str | Path = "runs/takecover", preset: str = "small",
        seed: int = 0, progress: bool = True, log: Callable[[str], None] | None = print,
        **overrides: Any) -> dict[str, Any]:
    """Run (or resume) the whole job: collect, world model, agents, evaluation, report.

    Args:
        name: the job; ``"takecover"`` (VizDoom TakeCover).
        out: the run folder; re-running with the same folder and settings resumes it.
        preset: ``tiny`` (tests, ~1-3 min), ``small`` (a 2-core CPU, <= 2 h) or ``base``
            (one GPU); sets the world model and every stage's budget.
        seed: seeds collection, training and dreams (evaluation seeds are fixed, see
            :attr:`RunConfig.eval_seed`, so runs are scored on the same episodes).
        progress: progress bars.
        log: where the plan and stage headers go (None: nowhere).
        **overrides: :class:`RunConfig` fields, e.g. ``episodes=200, agent_steps=100_000,
            eval_episodes=20, agents=("ppo", "cmaes"), device="cpu"``.

    Returns:
        The report's figures (``OUT/results.json``); the report is ``OUT/report.md``.
    """
    config = run_config(preset, seed=seed, env=JOBS.get(name), **overrides)
    return Pipeline(out, config, name, progress=progress, log=log).run()


__all__ = ["AGENT_KINDS", "DQN_HOLD_KWARGS", "JOBS", "PLANNER", "RUN_PRESETS", "STAGE_SECONDS", "Pipeline", "RunConfig",
           "Stage", "StageOutputMissing", "StageResult", "run", "run_config"]
