"""Planning in the dream: an agent that asks the world model before every move.

No policy is learnt. At each real step the planner prompts a batch of dreams with the
frames it has seen so far, plays every candidate plan (a short sequence of actions) in
several dreams at once, and takes the first action of the plan whose dreams survive
longest: model-predictive control with the world model as the simulator (PlaNet plans in
its learnt model the same way, with a smarter search). The world model is the only thing
that ever saw the real game (through its training data); the planner never learns.

A plan's score is the expected number of steps its dreams survive within the horizon,
``sum_t prod_{k<=t} (1 - p_k)`` with ``p_k`` the end probability of dream step ``k`` (the
foresight head's, read before the step is drawn, when the model has one; else the
termination head's on the drawn frame), averaged over the dreams that play it: survival is
what TakeCover pays for (predicted rewards are not scored). Dreams differ only in their
sampling noise, so several samples per plan stand for the game's randomness (a fireball
launched or not), and every plan sees the same samples' noise.

With ``search="head"`` no dream is drawn: a world model with a hold head (fitted on branch
data, `worldsim train-foresight --hold`) says from the real frames seen, for every action,
the chance that holding it for the head's steps ends the episode, and the planner holds the
safest one. The model's state follows the real frames one at a time (as the head was
fitted), so a decision costs one model pass instead of ``plans * samples * horizon`` dream
steps.

``planner = Planner(WorldModel.load("takecover"), PlannerConfig(horizon=8))``;
``planner.reset(seed)``; ``action = planner.act(frame)`` with ``frame`` a uint8
``(H, W, 3)`` real-game frame, the same interface as :class:`agents.portable.Agent`, so
``worldsim eval --agent plan:takecover`` scores it like any agent.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from worldsim.errors import ConfigError
from worldsim.sampler_settings import SAMPLER_FIELDS, SAMPLER_KEYS, parse_sampler_settings

if TYPE_CHECKING:  # torch is imported when a planner is built: `worldsim --help` stays fast
    from torch import Tensor

PLAN_KINDS = ("hold", "switch")
SEARCHES = ("dream", "head")
PLANNER_PREFIX = "plan:"
PLANNER_HELP = (
    "'plan:CHECKPOINT[,KEY=VALUE,...]' plans every move in that world model's dream (no "
    "learning); keys: search (dream|head: dream the plans, or read the model's hold head), "
    "every (decide every N steps), horizon, samples, plans (hold|switch), keep_bonus, "
    "context, precision, ends (auto|frame|foresight), "
    f"and the sampler's ({SAMPLER_KEYS}), e.g. plan:takecover,horizon=8,samples=4"
)


@dataclass
class PlannerConfig:
    """How the planner searches.

    Args:
        horizon: dream steps each plan is played for.
        samples: dreams per plan (different noise): more sees more of the game's chance.
        plans: ``"hold"``: hold each action for the whole horizon (A plans); ``"switch"``:
            also every action held for half the horizon, then another one (A * A plans).
        sampler: dream sampler settings, ``KEY=VALUE,...`` (default: the checkpoint's).
        context: real frames the dreams are prompted with (default: the model's context).
        keep_bonus: score added to the plan that starts with the previous action (steadier
            play when plans tie, e.g. when nothing threatens): in expected steps when
            dreaming, in probability with search=head.
        precision: dream inference precision, ``"fp32"`` or ``"bf16"``.
        ends: which head gives each dream step's end probability: ``"auto"`` (the
            foresight head if the model has one), ``"frame"`` or ``"foresight"`` (see
            :meth:`worldsim.world_model.WorldModel.resolve_ends`).
        search: ``"dream"``: score plans by dreaming them; ``"head"``: hold the action the
            model's hold head deems safest (no dreams; ``horizon``, ``samples``, ``plans``,
            ``context``, ``ends`` and the sampler do not apply).
        every: decide every this many steps; the chosen action is kept in between.
    """

    horizon: int = 8
    samples: int = 4
    plans: str = "hold"
    sampler: str = ""
    context: int | None = None
    keep_bonus: float = 0.05
    precision: str = "fp32"
    ends: str = "auto"
    search: str = "dream"
    every: int = 1

    def __post_init__(self) -> None:
        if self.horizon < 1 or self.samples < 1:
            raise ConfigError(f"planner horizon and samples must be >= 1, got {self.horizon} "
                              f"and {self.samples}")
        if self.search not in SEARCHES:
            raise ConfigError(f"planner search must be one of {', '.join(SEARCHES)}, got "
                              f"{self.search!r}")
        if self.every < 1:
            raise ConfigError(f"planner every must be >= 1 step, got {self.every}")
        if self.plans not in PLAN_KINDS:
            raise ConfigError(f"planner plans must be one of {', '.join(PLAN_KINDS)}, got "
                              f"{self.plans!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"planner precision must be fp32 or bf16, got {self.precision!r}")
        if self.ends not in ("auto", "frame", "foresight"):
            raise ConfigError(f"planner ends must be auto, frame or foresight, got "
                              f"{self.ends!r}")
        if self.context is not None and self.context < 1:
            raise ConfigError(f"planner context must be >= 1 frame, got {self.context}")
        parse_sampler_settings(self.sampler)  # a clear error now rather than at the first step


def is_planner(spec: str) -> bool:
    """Whether an agent spec names a planner (``plan:CHECKPOINT[,KEY=VALUE,...]``)."""
    return spec.startswith(PLANNER_PREFIX)


def parse_planner_spec(spec: str) -> tuple[str, PlannerConfig]:
    """``plan:CHECKPOINT[,KEY=VALUE,...]`` -> (checkpoint, config); see :data:`PLANNER_HELP`."""
    checkpoint, *items = spec.removeprefix(PLANNER_PREFIX).split(",")
    if not checkpoint or "=" in checkpoint:
        raise ConfigError(f"{spec!r} names no world model: write {PLANNER_HELP}")
    keys = {f.name for f in dataclasses.fields(PlannerConfig)} - {"sampler"}
    casts = {"horizon": int, "samples": int, "context": int, "keep_bonus": float,
             "every": int}
    settings: dict[str, Any] = {}
    sampler: list[str] = []
    for item in items:
        key, sep, value = item.strip().partition("=")
        if not sep or not value or (key not in keys and key not in SAMPLER_FIELDS):
            raise ConfigError(f"planner option {item!r} in {spec!r}: {PLANNER_HELP}")
        if key in SAMPLER_FIELDS:
            sampler.append(item.strip())
            continue
        try:
            settings[key] = casts.get(key, str)(value)
        except ValueError:
            raise ConfigError(f"planner option {item!r}: {key} needs a number") from None
    return checkpoint, PlannerConfig(**settings, sampler=",".join(sampler))


def load_planner(spec: str, device: str = "cpu") -> Planner:
    """A :class:`Planner` from its spec (``plan:CHECKPOINT[,KEY=VALUE,...]``)."""
    from worldsim.world_model import WorldModel

    checkpoint, config = parse_planner_spec(spec)
    return Planner(WorldModel.load(checkpoint, device=device), config, name=spec)


def candidate_plans(num_actions: int, horizon: int, kind: str) -> Tensor:
    """The plans to try, ``(P, horizon)`` actions."""
    import torch

    plans = [[a] * horizon for a in range(num_actions)]
    if kind == "switch" and horizon > 1:
        half = horizon // 2
        plans += [[a] * half + [b] * (horizon - half)
                  for a, b in itertools.permutations(range(num_actions), 2)]
    return torch.tensor(plans, dtype=torch.long)


class Planner:
    """Model-predictive control in a world model's dream (see the module docstring).

    Args:
        model: a loaded :class:`worldsim.world_model.WorldModel`.
        config: search settings.
        name: how reports call it.
    """

    def __init__(self, model: Any, config: PlannerConfig | None = None,
                 name: str = "planner") -> None:
        self.model = model.eval()
        self.config = config or PlannerConfig()
        self.name = name
        self.sampler = dataclasses.replace(model.sampler,
                                           **parse_sampler_settings(self.config.sampler))
        self.context = min(self.config.context or model.config.dynamics.context_frames,
                           model.config.dynamics.context_frames)
        if self.config.search == "head":
            if not model.hold_steps:
                raise ConfigError(
                    f"{name}: search=head reads the world model's hold head and this model "
                    "has none; fit one with `worldsim train-foresight --hold --checkpoint "
                    "MODEL --data DATASET_WITH_BRANCHES --out NEW`, or plan by dreaming "
                    "(search=dream)")
            self.ends = "hold"
            self.plans = candidate_plans(model.num_actions, model.hold_steps, "hold")
        else:
            self.ends = model.resolve_ends(self.config.ends)
            self.plans = candidate_plans(model.num_actions, self.config.horizon,
                                         self.config.plans)
        self.info = model.info
        self._state: Any = None  # search=head: the model's state over the real frames seen
        self._latents: list[Tensor] = []  # (c, h, w) of the frames seen, newest last
        self._actions: list[int] = []  # the actions between them
        self._seed = 0
        self._step = 0
        self.last_scores: np.ndarray | None = None  # (P,) scores of the last decision

    @property
    def num_actions(self) -> int:
        return int(self.model.num_actions)

    def reset(self, seed: int | None = None) -> None:
        """Forget the episode; ``seed`` fixes the dreams' noise (same seed, same play)."""
        self._latents, self._actions = [], []
        self._seed = int(seed or 0)
        self._step = 0
        self._state = None

    def check_env(self, env_name: str | None, frame_size: tuple[int, int] | None = None,
                  num_actions: int | None = None) -> None:
        """Refuse an env the world model was not trained on (what :func:`evaluate` asks)."""
        from agents.portable import check_env_fits

        check_env_fits("the planner's world model", self.info, self.num_actions, env_name,
                       frame_size, num_actions)

    def act(self, frame: np.ndarray) -> int:
        """The first action of the best plan from this real frame ``(H, W, 3)`` uint8."""
        import torch

        frames = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None, None]
        with torch.no_grad():
            latent = self.model.encode(frames)[0, 0]
            if self.config.search == "head":
                self._follow(latent)
        self._latents.append(latent)
        self._latents = self._latents[-self.context:]
        self._actions = self._actions[-(len(self._latents) - 1):] if len(self._latents) > 1 \
            else []
        if self._step % self.config.every == 0 or not self._actions:
            with torch.no_grad():
                scores = self.scores()
            self.last_scores = scores
            action = int(self.plans[int(np.argmax(scores)), 0])
        else:
            action = self._actions[-1]
        self._actions.append(action)
        self._step += 1
        return action

    def _follow(self, latent: Tensor) -> None:
        """Feed the newest real frame's latent ``(c, h, w)`` to the model's running state
        (search=head)."""
        import torch

        with self.model.autocast(self.config.precision):
            if self._state is None:
                self._state = self.model.start(latent[None, None],
                                               torch.zeros(1, 0, dtype=torch.long),
                                               latents=True)
            else:
                self.model.observe(self._state, latent[None],
                                   torch.tensor([self._actions[-1]]), latents=True)

    def _keep_bonus(self, scores: np.ndarray) -> np.ndarray:
        """``scores`` with the keep bonus added to the plan that starts with the previous
        action."""
        if not self._actions:
            return scores
        return scores + self.config.keep_bonus * (self.plans[:, 0].numpy() == self._actions[-1])

    def scores(self) -> np.ndarray:
        """Each plan's score from the frames seen (``(P,)``, higher is better): its expected
        dream steps survived, or with search=head minus the hold head's risk."""
        import torch

        if self.config.search == "head":
            risk = self.model.hold_risk(self._state)[0].float().cpu().numpy()
            return self._keep_bonus(-risk.astype(np.float64))

        from worldsim.noise import NoiseStreams

        plans, samples, model = self.plans, self.config.samples, self.model
        rows = len(plans) * samples
        context = torch.stack(self._latents)[None].expand(rows, -1, -1, -1, -1)
        actions = torch.tensor(self._actions, dtype=torch.long)[None].expand(rows, -1)
        # every plan sees the same samples' noise: plans differ by their actions alone
        first = (self._seed * 1_000_003 + self._step) * samples
        noise = NoiseStreams.seeded(list(range(first, first + samples)) * len(plans),
                                    model.device)
        alive = torch.ones(rows, device=model.device)
        expected = torch.zeros(rows, device=model.device)
        with model.autocast(self.config.precision):
            state = model.start(context, actions, latents=True)
            for t in range(plans.shape[1]):
                step_actions = plans[:, t].repeat_interleave(samples)
                result = model.step(state, step_actions, noise, self.sampler)
                alive = alive * (1 - result.end_probability(self.ends).float())
                expected = expected + alive
        per_plan = expected.view(len(plans), samples).mean(dim=1).cpu().numpy()
        return self._keep_bonus(per_plan.astype(np.float64))
