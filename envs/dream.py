"""Dream environments: a trained world model as a Gymnasium env, batched, and for SB3.

- :class:`DreamEnv` (``gymnasium.make("worldsim/Dream-v0", checkpoint=...)`` after
  ``import envs``): one dream.
- :class:`DreamVectorEnv` (``gymnasium.make_vec("worldsim/Dream-v0", num_envs=N,
  vectorization_mode="vector_entry_point", checkpoint=...)``): N dreams in one batched
  forward pass, with same-step autoreset.
- :class:`DreamVecEnvSB3`: the vector env as a stable-baselines3 ``VecEnv``.

Decisions a user should know:

- **Observations.** ``obs_mode="rgb"``: the decoded frame, uint8 ``(H, W, 3)``, what a pixel
  agent sees on the real game. ``obs_mode="latent"``: the normalised latent grid, no
  decoding (far cheaper), as a flat float32 vector of ``c*h*w`` values: SB3's checker asks
  for 1-D non-image observations and its ``MlpPolicy`` takes them as they are (its
  ``CnnPolicy`` wants uint8 images of at least 36x36, which latents are not); a custom CNN
  extractor gets the grid back with ``obs.reshape(env.latent_shape)`` (``(c, h, w)``).
  Latents are clipped to ``+-LATENT_BOUND`` (20 standard deviations, never reached in
  practice) because a Box with infinite bounds fails ``check_env``. ``obs_mode="state"``:
  the world model's own state after the newest frame (``WorldModel.state_observation``:
  the pooled tokens its heads read, standardised by its hold head's statistics when it has
  one), ``D`` float32 values clipped to ``+-STATE_BOUND``: what World Models' controller
  gets from its RNN, a summary of the past as well as the frame. An agent trained on it
  carries the world model to rebuild that state from real frames
  (:mod:`agents.portable`).
- **Prompts.** A dream starts from real frames. ``reset(options={"prompt": p})`` takes one
  image ``(H, W, 3)`` uint8, or a clip with its actions ``(frames (T, H, W, 3), actions
  (T-1,))``; its last frame is the first observation (as given for ``"rgb"``, encoded for
  ``"latent"``; later observations are the dream's own). Otherwise prompts come from
  ``dataset=`` (a folder from ``worldsim collect``, or several: a random episode, from a
  random point, ``prompt_start="anywhere"``, the default, for varied starts as in DIAMOND;
  from its start, ``prompt_start="opening"``; or, in a dataset with branches, from a state
  where the moves' fates differ, ``prompt_start="decisive"``: where a move matters), else
  from the real opening clips stored in the checkpoint. A dataset prompt holds the
  episode's frames up to the dream's first frame, as many as shape the model's state
  (``WorldModel.history_frames``, the context window times the blocks, or all of them near
  the episode's start): the dream starts from the state an agent following the real
  episode has, not from a state made of the last window alone (which differs enough to
  change the hold head's safest move at a third of the states). A prompt of another frame
  size is **resized with a warning**, with the same antialiased filter the game adapters
  use to make frames, so a full-size screenshot works as a prompt.
- **Termination.** ``termination="sample"`` (default): the episode ends with the predicted
  probability, drawn from the dream's own generator (the dream keeps its surprises, which
  makes trained agents more robust); ``"threshold"``: ends when the probability reaches
  ``termination_threshold``; ``"expected"``: no dream ends by the head, each reward is
  weighted instead by the chance that the dream is still alive (the product of one minus
  the end probabilities so far, as Dreamer weights imagined returns by its predicted
  continuation): returns are expected returns, without the noise of sampled ends;
  ``"never"``: only truncation (videos, probes). The
  probability comes from ``ends``: ``"frame"``, the termination head reading the frame the
  step drew; ``"foresight"``, the foresight head reading the frame before the step and the
  action, before the new frame is drawn (it sees a death coming that drawn frames may lose;
  see `worldsim train-foresight`); ``"hold"``, the hold head's risk for the action taken,
  read before the step and spread over its ``H`` steps as a per-step chance (it ranks
  moves where their fates differ, which drawn frames blur; ``WorldModel.hold_hazard``);
  ``"auto"`` (default): foresight if the model has the head, else frame.
  ``truncated`` comes at ``max_episode_steps`` (default: the real game's cap, e.g.
  TakeCover's 2100 tics / ``frame_skip``).
- **Decisions.** ``decision_steps=K`` holds each action for K dream steps, one agent
  decision per ``step`` (an action repeat inside the dream): rewards are summed, the end is
  drawn once per decision from the chance that it ended the dream (with ``ends="hold"``
  and K the hold head's steps, the head's whole risk for the held action read before it:
  what the planner ``plan:...,search=head`` weighs), and ``max_episode_steps`` counts
  decisions.
- **Reward.** ``reward="model"`` (default): each step's reward is the model's reward head
  reading the frame it drew. ``reward="survival"``: each step earns what the real game
  gives for surviving it, the same for every action (:func:`survival_reward`: TakeCover's
  one per tic, so ``frame_skip`` per step, and a dream's return counts frames survived as
  the real score does); the objective of World Models' TakeCover dreams, where only the
  end was predicted. Use it where the game's reward is survival: the reward head, read
  off drawn frames, gives moving and standing different rewards the game does not (about
  1 in 30 per held decision on TakeCover, enough to turn near ties toward standing).
- **Randomness.** Each dream owns a NumPy generator (Gymnasium's ``np_random``, seeded in
  ``reset(seed=...)``) and a ``torch.Generator`` re-seeded from it at every reset; prompt
  choice, diffusion noise and sampled terminations all come from these. So the same seed
  gives the same dream, and dream ``i`` of a vector env reset with ``seed`` equals a
  single DreamEnv reset with ``seed + i`` (to float tolerance: batched matrix products
  round differently).
- **Autoreset.** :class:`DreamVectorEnv` uses ``AutoresetMode.SAME_STEP`` (what SB3 users
  expect): a finished dream's last observation and info are in ``infos["final_obs"]`` and
  ``infos["final_info"]`` (masks ``_final_obs``/``_final_info``) and the returned
  observation is already the next dream's first.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium
import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from stable_baselines3.common.vec_env import VecEnv
from torch import Tensor

from envs.frames import frame_skip
from worldsim.diffusion.edm import EDMSampler, with_sampler_settings
from worldsim.errors import ConfigError
from worldsim.noise import NoiseStreams
from worldsim.utils import get_device
from worldsim.world_model import STATE_BOUND, DreamState, StepResult, WorldModel

OBS_MODES = ("rgb", "latent", "state")
TERMINATION_MODES = ("sample", "threshold", "expected", "never")
PROMPT_STARTS = ("anywhere", "opening", "decisive")
REWARDS = ("model", "survival")
LATENT_BOUND = 20.0  # latents are normalised to unit std; the Box needs finite bounds
DEFAULT_MAX_EPISODE_STEPS = 1000  # when the game's own cap is unknown
VIZDOOM_FPS = 35  # VizDoom's tic rate
DEFAULT_CHECKPOINT = "takecover"  # the shipped model a bare gymnasium.make(...) dreams
PROMPT_CACHE_BYTES = 1 << 30  # latents of recorded frames kept for prompts (2 KB a frame)


# ---- prompts -----------------------------------------------------------------------------

Datasets = str | Path | Sequence[str | Path] | None  # one recorded folder, several, or none


def dataset_folders(dataset: Datasets) -> list[Path]:
    """The folders of ``dataset``: one path, several, or none (None)."""
    if dataset is None:
        return []
    if isinstance(dataset, (str, Path)):
        return [Path(dataset)]
    return [Path(folder) for folder in dataset]


def check_prompt_start(prompt_start: str, dataset: Datasets) -> None:
    """Refuse a ``prompt_start`` that is unknown, or that needs a dataset and has none."""
    if prompt_start not in PROMPT_STARTS:
        raise ConfigError(f"prompt_start must be one of {PROMPT_STARTS}, got {prompt_start!r}")
    if prompt_start == "decisive" and not dataset_folders(dataset):
        raise ConfigError("prompt_start='decisive' draws states from a dataset's branches: "
                          "give dataset=DIR (--dataset DIR), recorded with `worldsim collect "
                          "--branch-steps 8`")


def check_reward(reward: str) -> None:
    """Refuse a ``reward`` that is not one of :data:`REWARDS`."""
    if reward not in REWARDS:
        raise ConfigError(f"reward must be one of {REWARDS} (the reward head's, or the "
                          f"game's reward for surviving each step), got {reward!r}")


def dataset_setting(dataset: Datasets) -> str | list[str] | None:
    """``dataset`` as a run records it: None, one folder's name, or a list of them."""
    folders = dataset_folders(dataset)
    if not folders:
        return None
    return str(folders[0]) if isinstance(dataset, (str, Path)) else [str(f) for f in folders]


@dataclass
class Prompt:
    """Real frames a dream starts from."""

    frames: Tensor  # (T0, 3, H, W) uint8
    actions: Tensor  # (T0 - 1,) long: the actions taken between the frames
    latents: Tensor | None = None  # (T0, c, h, w) the frames encoded, when already known

    @property
    def length(self) -> int:
        return self.frames.shape[0]

    def last_frame(self) -> np.ndarray:
        """The first observation of a dream started from this prompt, ``(H, W, 3)`` uint8."""
        return self.frames[-1].permute(1, 2, 0).numpy().copy()


def make_prompt(value: Any, model: WorldModel) -> Prompt:
    """Turn a caller's prompt into a :class:`Prompt` for ``model``.

    Args:
        value: a :class:`Prompt`; one image ``(H, W, 3)``; or a pair ``(frames, actions)``
            with frames ``(T, H, W, 3)`` (or one image) and the ``T - 1`` actions taken
            between them. Frames are uint8, channels last (NumPy or torch). Frames of
            another size than the model's are resized with a warning.
        model: the world model the prompt is for.

    Returns:
        The prompt, frames ``(T, 3, H, W)`` at the model's frame size.
    """
    if isinstance(value, Prompt):
        return value
    actions: Any = None
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ConfigError(
                "a prompt is one image (H, W, 3) or a pair (frames (T, H, W, 3), actions "
                f"(T-1,)); got a sequence of {len(value)} items"
            )
        value, actions = value
    frames = np.asarray(value.cpu() if isinstance(value, Tensor) else value)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise ConfigError(
            f"prompt frames must be uint8 RGB, channels last: one image (H, W, 3) or a clip "
            f"(T, H, W, 3); got shape {frames.shape} dtype {frames.dtype}"
        )
    count = frames.shape[0]
    if actions is None:
        if count > 1:
            raise ConfigError(
                f"a prompt clip of {count} frames needs the {count - 1} actions taken between "
                "them: pass options={'prompt': (frames, actions)}"
            )
        actions = np.zeros(0, dtype=np.int64)
    actions = np.asarray(actions.cpu() if isinstance(actions, Tensor) else actions)
    if actions.shape != (count - 1,) or (actions.size and actions.dtype.kind not in "iu"):
        raise ConfigError(
            f"a prompt of {count} frames needs {count - 1} integer actions, got shape "
            f"{actions.shape} dtype {actions.dtype}"
        )
    if actions.size and (actions.min() < 0 or actions.max() >= model.num_actions):
        raise ConfigError(
            f"prompt actions must lie in 0..{model.num_actions - 1} "
            f"({', '.join(model.info.action_names)}); got {actions.tolist()}"
        )
    size = tuple(model.info.frame_size)
    if frames.shape[1:3] != size:
        from envs.frames import resize_frame

        warnings.warn(
            f"prompt frames are {frames.shape[1]}x{frames.shape[2]} but the world model was "
            f"trained on {size[0]}x{size[1]}; resizing them (antialiased bilinear, as the game "
            "adapters make frames)", UserWarning, stacklevel=3)
        frames = np.stack([resize_frame(frame, size) for frame in frames])
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (T, 3, H, W)
    return Prompt(pixels.contiguous(), torch.from_numpy(actions.astype(np.int64)))


class PromptSource:
    """Where a dream's prompts come from when the caller gives none.

    Args:
        model: the world model (its stored opening clips are the fallback).
        dataset: a folder from ``worldsim collect`` recorded from the model's game, several
            (an episode is drawn from all of them alike), or None. Branch files (``worldsim
            collect --branch-steps``) are never drawn: their history is cut at the branch's
            context.
        prompt_start: for a dataset, ``"anywhere"`` (a random point of a random episode),
            ``"opening"`` (an episode's first frames) or ``"decisive"`` (a state where the
            moves' fates differ, as the dataset's branches recorded them: each such state is
            drawn alike, with the episode's history up to it, so the dream starts where the
            move matters).
        cache_bytes: memory for the dataset's episodes once encoded: an episode is encoded
            whole at its first draw and kept (short dreams restart often, and encoding the
            prompt was most of a restart's time), until this many bytes of latents are
            kept; prompts from later episodes are encoded at every draw.
        precision: the dreams' precision, which encodes the episodes as the dreams encode
            the prompts they are given (``"bf16"``: about twice as fast on a CPU).
    """

    def __init__(self, model: WorldModel, dataset: Datasets = None,
                 prompt_start: str = "anywhere", cache_bytes: int = PROMPT_CACHE_BYTES,
                 precision: str = "fp32") -> None:
        check_prompt_start(prompt_start, dataset)
        self.model = model
        self.prompt_start = prompt_start
        self.length = model.config.dynamics.context_frames  # frames of the shortest prompt
        self.history = model.history_frames  # frames of a dataset prompt, where it has them
        self.datasets: list[Any] = []
        # what a draw picks from: (dataset, episode position, the dream's first frame or -1
        # for a random one)
        self._starts: list[tuple[int, int, int]] = []
        self._stored: dict[int, Prompt] = {}  # encoded stored clips, made once (they repeat)
        # (dataset, episode position) -> its latents (T, c, h, w)
        self._encoded: dict[tuple[int, int], Tensor] = {}
        self._cache_left = int(cache_bytes)
        self.precision = precision
        folders = dataset_folders(dataset)
        for number, root in enumerate(folders):
            self.datasets.append(self._open(root))
            self._starts += self._starts_in(number, root)
        if folders and not self._starts:
            named = ", ".join(map(str, folders))
            raise ConfigError(
                f"no episode in {named} has the {self.length} frames a prompt needs"
                if prompt_start != "decisive" else
                f"{named} holds no decisive state a prompt of {self.length} frames can end "
                "at; prompt_start='decisive' needs branches: record them with `worldsim "
                "collect --branch-steps 8`")

    def _open(self, root: Path) -> Any:
        from worldsim.data import EpisodeDataset

        return EpisodeDataset(root, env=self.model.info.env or None,
                              frame_size=tuple(self.model.info.frame_size),
                              num_actions=self.model.num_actions)

    def _starts_in(self, number: int, root: Path) -> list[tuple[int, int, int]]:
        """The draws dataset ``number`` offers: its episodes (not their branches) long
        enough for a prompt, or, for ``"decisive"``, the states its branches examined whose
        moves' fates differ, in those episodes."""
        from worldsim.data import parse_branch_filename
        from worldsim.foresight import branch_fates, is_decisive

        data = self.datasets[number]
        mains = {entry.index: position for position, entry in enumerate(data.entries)
                 if parse_branch_filename(entry.file) is None}
        if self.prompt_start != "decisive":
            return [(number, position, -1) for position in mains.values()
                    if data.entries[position].length + 1 >= self.length]
        if not (data.info.get("branching") or {}).get("steps"):
            raise ConfigError(f"{root} has no branches, so no decisive states; "
                              "prompt_start='decisive' needs a dataset recorded with "
                              "`worldsim collect --branch-steps 8`")
        states = sorted((index, t) for index, at in branch_fates(data).items() if index in mains
                        for t, fates in at.items() if is_decisive(fates))
        # the dream's first frame is the branch's state t: frames 0..t are the prompt's
        return [(number, mains[index], t) for index, t in states
                if t + 1 >= self.length and t <= data.entries[mains[index]].length]

    def draw(self, rng: np.random.Generator) -> Prompt:
        """A prompt chosen with ``rng`` (the dream's generator)."""
        if self._starts:
            number, position, first = self._starts[int(rng.integers(len(self._starts)))]
            reader = self.datasets[number].file(position)
            end = self.length  # the dream's first frame is frame end - 1
            if first >= 0:
                end = first + 1
            elif self.prompt_start == "anywhere":
                end += int(rng.integers(reader.num_frames - self.length + 1))
            start = max(0, end - self.history)
            frames = torch.from_numpy(reader.frames(start, end))
            actions = torch.from_numpy(reader.array("actions")[start:end - 1])
            frames = frames.permute(0, 3, 1, 2).contiguous()
            return Prompt(frames, actions.long(),
                          self._cached_latents((number, position), reader, start, end))
        if self.model.prompt_frames is None or self.model.prompt_actions is None:
            raise ConfigError(
                "this checkpoint stores no opening clips to start dreams from: pass "
                "dataset=DIR (recorded play of its game) or reset(options={'prompt': image})"
            )
        index = int(rng.integers(self.model.prompt_frames.shape[0]))
        if index not in self._stored:
            frames = self.model.prompt_frames[index]
            with torch.no_grad():
                latents = self.model.encode(frames[None])[0]  # one clip at a time, always
            self._stored[index] = Prompt(frames, self.model.prompt_actions[index].long(),
                                         latents)
        return self._stored[index]

    def _cached_latents(self, key: tuple[int, int], reader: Any, start: int,
                        end: int) -> Tensor | None:
        """The latents ``(T0, c, h, w)`` of frames ``start:end`` of the episode ``key``
        (dataset, position), from the whole episode encoded at its first draw (``reader``
        reads it); None when the cache is full and the episode is not in it (the dream
        encodes them)."""
        if key not in self._encoded:
            size = reader.num_frames * math.prod(self.model.latent_shape) * 4  # float32
            if size > self._cache_left:
                return None
            self._cache_left -= size
            with self.model.autocast(self.precision):
                self._encoded[key] = self.model.encode_episode(
                    reader.frames(0, reader.num_frames)).float()
        return self._encoded[key][start:end]


# ---- stepping many dreams with one noise stream each --------------------------------------

class DreamBatch:
    """N dreams stepped together: the engine under DreamEnv (N = 1) and DreamVectorEnv.

    Owns the world model's dream state and one noise stream per dream (drawn for all dreams
    in one batched operation); the NumPy generators belong to the envs (Gymnasium's
    ``np_random``) and are passed in.
    """

    def __init__(self, model: WorldModel, sampler: EDMSampler, precision: str,
                 num_dreams: int) -> None:
        model.autocast(precision)  # fails early on a bad precision
        self.model, self.sampler, self.precision = model, sampler, precision
        self.num_dreams = num_dreams
        self.noise = NoiseStreams.seeded([0] * num_dreams, model.device)
        self.state: DreamState | None = None

    @torch.no_grad()
    def start(self, rows: Sequence[int], prompts: Sequence[Prompt],
              rngs: Sequence[np.random.Generator]) -> None:
        """(Re)start dreams ``rows`` from ``prompts``; their noise streams are re-seeded
        from ``rngs`` (one per row)."""
        self.noise.reseed(rows, [int(rng.integers(2**63)) for rng in rngs])
        order = np.argsort(np.asarray(rows))  # the model takes prompts in row order
        prompts = [prompts[i] for i in order]
        with self.model.autocast(self.precision):
            latents, actions, lengths = self._padded(prompts)
            if self.state is None or len(rows) == self.num_dreams:  # a fresh batch
                if sorted(rows) != list(range(self.num_dreams)):
                    raise ConfigError("the first start of a dream batch needs one prompt per "
                                      "dream")
                self.state = self.model.start(latents, actions, latents=True, lengths=lengths)
                return
            mask = torch.zeros(self.num_dreams, dtype=torch.bool, device=self.model.device)
            mask[list(rows)] = True
            self.model.restart(self.state, mask, latents, actions, latents=True,
                               lengths=lengths)

    def _padded(self, prompts: Sequence[Prompt]) -> tuple[Tensor, Tensor, Tensor | None]:
        """The prompts as one batch: latents ``(R, T, c, h, w)`` and actions ``(R, T - 1)``
        padded at the end to the longest, and their lengths ``(R,)`` (None when all equal)."""
        latents = self._latents(prompts)
        longest = max(prompt.length for prompt in prompts)
        if all(prompt.length == longest for prompt in prompts):
            return torch.stack(latents), self._actions(prompts), None
        padded = latents[0].new_zeros((len(prompts), longest, *latents[0].shape[1:]))
        actions = torch.zeros(len(prompts), longest - 1, dtype=torch.long,
                              device=self.model.device)
        for row, (prompt, latent) in enumerate(zip(prompts, latents)):
            padded[row, :prompt.length] = latent
            actions[row, :prompt.length - 1] = prompt.actions.to(self.model.device)
        lengths = torch.tensor([prompt.length for prompt in prompts], device=self.model.device)
        return padded, actions, lengths

    def _latents(self, prompts: Sequence[Prompt]) -> list[Tensor]:
        """Each prompt's latents ``(T0, c, h, w)``; the ones not known yet are encoded."""
        device = self.model.device
        missing = [i for i, p in enumerate(prompts) if p.latents is None]
        encoded: dict[int, Tensor] = {}
        for length in sorted({prompts[i].length for i in missing}):
            group = [i for i in missing if prompts[i].length == length]
            frames = torch.stack([prompts[i].frames for i in group]).to(device)
            encoded.update(zip(group, self.model.encode(frames)))  # (R, T0, c, h, w)
        return [encoded[i] if i in encoded else p.latents.to(device)  # type: ignore[union-attr]
                for i, p in enumerate(prompts)]

    def _actions(self, prompts: Sequence[Prompt]) -> Tensor:
        return torch.stack([p.actions for p in prompts]).to(self.model.device)  # (B, T0 - 1)

    @torch.no_grad()
    def step(self, actions: np.ndarray) -> StepResult:
        """One step of every dream; ``actions`` ``(N,)`` already checked."""
        assert self.state is not None
        incoming = torch.as_tensor(actions, dtype=torch.long, device=self.model.device)
        with self.model.autocast(self.precision):
            return self.model.step(self.state, incoming, self.noise, sampler=self.sampler)

    def state_observations(self) -> np.ndarray:
        """``(N, D)`` float32 the model's state after each dream's newest frame,
        standardised (``WorldModel.state_observation``) and clipped into the Box."""
        assert self.state is not None
        return self.model.state_observation(self.state).cpu().numpy()

    def latent_observations(self) -> np.ndarray:
        """``(N, c*h*w)`` float32 current latents, flattened and clipped into the Box."""
        assert self.state is not None
        latents = self.state.latents.float().clamp(-LATENT_BOUND, LATENT_BOUND)
        return latents.flatten(1).cpu().numpy()

    @torch.no_grad()
    def frames(self) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 decoded current frames."""
        assert self.state is not None
        with self.model.autocast(self.precision):
            pixels = self.model.decode(self.state.latents[:, None].float())[:, 0]  # (N, 3, H, W)
        return pixels.permute(0, 2, 3, 1).cpu().numpy()


# ---- settings shared by the single and the vector env -------------------------------------

def load_world_model(checkpoint: str | Path | None, model: WorldModel | None,
                     device: str | torch.device = "auto") -> WorldModel:
    """The world model a dream env runs: loaded from ``checkpoint`` (default: the shipped
    TakeCover model) or given as ``model``."""
    if checkpoint is not None and model is not None:
        raise ConfigError("give a dream env either checkpoint= (a run folder, a "
                          "model.safetensors file or a shipped name such as 'takecover') or "
                          "model= (a loaded WorldModel), not both")
    if model is not None:
        return model.eval()
    return WorldModel.load(checkpoint or DEFAULT_CHECKPOINT, get_device(device))


def game_timing(model: WorldModel) -> tuple[float, int]:
    """The real game's steps per second and step cap, from the checkpoint's env options."""
    name, options = model.info.env, model.info.env_options
    if name.startswith("vizdoom/"):
        from envs.vizdoom_env import SCENARIOS

        skip = frame_skip(options)
        scenario = SCENARIOS.get(name.split("/", 1)[1])
        max_frames = options.get("max_frames", scenario.max_frames if scenario else None)
        steps = math.ceil(max_frames / skip) if max_frames else DEFAULT_MAX_EPISODE_STEPS
        return VIZDOOM_FPS / skip, steps
    if name in ("crafter", "fake"):
        import inspect

        from envs import crafter_env, fake

        env_class = crafter_env.CrafterEnv if name == "crafter" else fake.FakeImageEnv
        default = inspect.signature(env_class).parameters["max_steps"].default
        return float(env_class.metadata["render_fps"]), int(options.get("max_steps", default))
    return 30.0, DEFAULT_MAX_EPISODE_STEPS


def survival_reward(model: WorldModel) -> float:
    """What the real game gives for surviving one step, the same for every action:
    VizDoom's living reward, one per tic, times the checkpoint's frame skip; one per step
    for other games (where the return then counts the steps survived)."""
    if model.info.env.startswith("vizdoom/"):
        return float(frame_skip(model.info.env_options))
    return 1.0


def check_game(model: WorldModel, env: str | None, num_actions: int | None) -> None:
    """Fail early when the caller wants a dream of another game than the checkpoint's."""
    if num_actions is not None and num_actions != model.num_actions:
        raise ConfigError(
            f"checkpoint was trained for {model.num_actions} actions "
            f"({', '.join(model.info.action_names)}), the requested env has {num_actions}")
    if env is None:
        return
    if model.info.env and env != model.info.env:
        raise ConfigError(f"checkpoint was trained on {model.info.env}, not {env}; use a "
                          f"world model trained on {env}")
    from envs.registry import list_envs

    known = {info.name: info for info in list_envs()}
    if env in known and len(known[env].action_names) != model.num_actions:
        raise ConfigError(
            f"checkpoint was trained for {model.num_actions} actions, {env} has "
            f"{len(known[env].action_names)}")


def dream_sampler(base: EDMSampler, temperature: float | None = None,
                  denoise_steps: int | None = None,
                  sampler: dict[str, Any] | None = None) -> EDMSampler:
    """The sampler a dream runs with: a copy of ``base`` (the checkpoint's, so envs sharing
    one loaded model keep their own settings) with the ``sampler`` settings applied, then
    ``temperature`` and ``denoise_steps`` (which win). Raises ``ConfigError`` on settings
    it cannot use, so callers can check them before any work."""
    changes: dict[str, Any] = {}
    if temperature is not None:
        if temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {temperature}")
        changes["temperature"] = float(temperature)
    if denoise_steps is not None:
        if denoise_steps < 1:
            raise ConfigError(f"denoise_steps must be >= 1, got {denoise_steps}")
        changes["denoise_steps"] = int(denoise_steps)
    settled = with_sampler_settings(base, sampler) if sampler else base
    return dataclasses.replace(settled, **changes)


class _DreamSetup:
    """What DreamEnv and DreamVectorEnv share: model, sampler, prompts, spaces, ends."""

    def _setup(self, checkpoint: str | Path | None, model: WorldModel | None, *,
               obs_mode: str, dataset: Datasets, prompt_start: str,
               termination: str, termination_threshold: float, ends: str,
               max_episode_steps: int | None, decision_steps: int, temperature: float | None,
               denoise_steps: int | None, sampler: dict[str, Any] | None, precision: str,
               device: str | torch.device, env: str | None, num_actions: int | None,
               render_mode: str | None, reward: str) -> None:
        if obs_mode not in OBS_MODES:
            raise ConfigError(f"obs_mode must be one of {OBS_MODES}, got {obs_mode!r}")
        if termination not in TERMINATION_MODES:
            raise ConfigError(
                f"termination must be one of {TERMINATION_MODES}, got {termination!r}")
        if not 0.0 <= termination_threshold <= 1.0:
            raise ConfigError(
                f"termination_threshold must be in [0, 1], got {termination_threshold}")
        if render_mode not in (None, "rgb_array", "human"):
            raise ConfigError(
                f"render_mode must be None, 'rgb_array' or 'human', got {render_mode!r}")
        check_reward(reward)
        self.model = load_world_model(checkpoint, model, device)
        check_game(self.model, env, num_actions)
        self.sampler = dream_sampler(self.model.sampler, temperature, denoise_steps, sampler)
        self.obs_mode, self.precision = obs_mode, precision
        self.termination, self.termination_threshold = termination, float(termination_threshold)
        self.ends = self.model.resolve_ends(ends)
        self.reward = reward
        # the reward of each dream step under reward="survival" (None: the reward head's)
        self._survival = survival_reward(self.model) if reward == "survival" else None
        if decision_steps < 1:
            raise ConfigError(f"decision_steps must be >= 1, got {decision_steps}")
        self.decision_steps = int(decision_steps)
        fps, game_steps = game_timing(self.model)
        self.max_episode_steps = int(max_episode_steps or -(-game_steps // decision_steps))
        if self.max_episode_steps < 1:
            raise ConfigError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        self.prompts = PromptSource(self.model, dataset, prompt_start, precision=precision)
        self.render_mode = render_mode
        self.action_names: tuple[str, ...] = tuple(self.model.info.action_names) or tuple(
            str(i) for i in range(self.model.num_actions))
        self.metadata = {**self.metadata, "render_fps": fps}
        # (c, h, w) of one latent frame; latent observations are this grid, flattened
        self.latent_shape = self.model.latent_shape

    def _single_observation_space(self) -> gymnasium.spaces.Box:
        if self.obs_mode == "rgb":
            return gymnasium.spaces.Box(0, 255, (*self.model.info.frame_size, 3), np.uint8)
        if self.obs_mode == "state":
            return gymnasium.spaces.Box(-STATE_BOUND, STATE_BOUND,
                                        (self.model.state_size,), np.float32)
        return gymnasium.spaces.Box(-LATENT_BOUND, LATENT_BOUND,
                                    (int(np.prod(self.latent_shape)),), np.float32)

    def _describe_actions(self) -> str:
        names = ", ".join(f"{i}: {name}" for i, name in enumerate(self.action_names))
        return f"Discrete({self.model.num_actions}) ({names})"

    def _decide(self, dreams: DreamBatch, actions: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """Hold ``actions`` ``(N,)`` for :attr:`decision_steps` dream steps (one decision).

        Returns the rewards summed over the held steps and the probability that the decision
        ended each dream, both ``(N,)`` float64: with ``ends="hold"``, the hold head's
        per-step chance read before the decision, over all its steps (with ``decision_steps``
        equal to the head's steps: its whole risk for the held action, what the planner
        weighs); otherwise the chance that any held step ended it.
        """
        rewards = np.zeros(len(actions), dtype=np.float64)
        chances = []  # (N,) per held step: the chance that it ends each dream
        for held in range(self.decision_steps):
            result = dreams.step(actions)
            rewards += (self._survival if self._survival is not None
                        else result.reward.float().cpu().numpy())
            if self.ends != "hold" or held == 0:  # the hold head reads the decision's state
                chances.append(result.end_probability(self.ends).float().cpu().numpy()
                               .astype(np.float64))
        if self.decision_steps == 1:
            return rewards, chances[0]
        if self.ends == "hold":
            return rewards, 1.0 - (1.0 - chances[0]) ** self.decision_steps
        return rewards, 1.0 - np.prod(1.0 - np.stack(chances), axis=0)

    def _ends(self, probability: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
        """Which dreams the termination head ends, ``(N,)`` bool."""
        if self.termination == "sample":
            return np.array([rng.random() < p for rng, p in zip(rngs, probability)], dtype=bool)
        if self.termination == "threshold":
            return probability >= self.termination_threshold
        return np.zeros(len(probability), dtype=bool)

    def _prompt_for(self, rng: np.random.Generator, options: dict[str, Any] | None) -> Prompt:
        unknown = sorted(set(options or {}) - {"prompt"})
        if unknown:
            raise ConfigError(f"unknown reset option(s) {', '.join(unknown)}; a dream env "
                              "takes options={'prompt': image or (frames, actions)}")
        if options and options.get("prompt") is not None:
            return make_prompt(options["prompt"], self.model)
        return self.prompts.draw(rng)


# ---- one dream ---------------------------------------------------------------------------

class DreamEnv(_DreamSetup, gymnasium.Env[np.ndarray, np.int64]):
    """A trained world model as a Gymnasium env: one dream.

    Args:
        checkpoint: a training run folder, a ``model.safetensors`` file or a shipped model's
            short name (default ``"takecover"``); or pass ``model``.
        model: an already loaded :class:`WorldModel`; envs can share one (each keeps its
            own sampler settings; the model is only put in eval mode).
        obs_mode: ``"rgb"`` (uint8 ``(H, W, 3)``), ``"latent"`` (float32 ``(c*h*w,)``,
            the latent grid ``latent_shape`` flattened) or ``"state"`` (float32 ``(D,)``,
            the model's standardised state).
        dataset: recorded play to draw prompts from, one folder or several (default: the
            checkpoint's clips).
        prompt_start: ``"anywhere"``, ``"opening"`` or ``"decisive"``: where dataset
            prompts end (:class:`PromptSource`).
        termination: ``"sample"`` (default), ``"threshold"``, ``"expected"`` (rewards
            weighted by the chance the dream is alive; module docstring) or ``"never"``.
        termination_threshold: for ``termination="threshold"``.
        ends: which head gives the end probability: ``"auto"`` (default; the foresight
            head if the model has one), ``"frame"``, ``"foresight"`` or ``"hold"`` (module
            docstring).
        max_episode_steps: truncation cap in decisions (default: the real game's cap).
        decision_steps: dream steps each action is held for, one decision per ``step``
            (rewards summed, ``dream_step`` counts decisions; module docstring).
        temperature: sampling temperature (default: the checkpoint's; higher = wilder).
        denoise_steps: network passes per frame (default: the checkpoint's).
        sampler: other sampler settings over the checkpoint's, e.g.
            ``{"denoise_steps": 16, "sigma_max": 20.0}`` (``temperature`` and
            ``denoise_steps`` above win over it).
        precision: ``"fp32"`` or ``"bf16"`` (autocast).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``; ignored when ``model`` is given.
        env: the real env this dream stands for; checked against the checkpoint.
        num_actions: the action count the caller expects; checked against the checkpoint.
        render_mode: None, ``"rgb_array"`` or ``"human"`` (a pygame window).
        reward: ``"model"`` (default: the reward head's) or ``"survival"`` (the game's
            reward for surviving each step, the same for every action; module docstring).
        render_scale: upscaling of the ``"human"`` window.

    ``info`` carries ``termination_prob`` (the head's probability for this step) and
    ``dream_step`` (steps since the prompt); reset's info has ``prompt_length``.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array", "human"], "render_fps": 35}

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        *,
        model: WorldModel | None = None,
        obs_mode: str = "rgb",
        dataset: Datasets = None,
        prompt_start: str = "anywhere",
        termination: str = "sample",
        termination_threshold: float = 0.5,
        ends: str = "auto",
        max_episode_steps: int | None = None,
        decision_steps: int = 1,
        temperature: float | None = None,
        denoise_steps: int | None = None,
        sampler: dict[str, Any] | None = None,
        precision: str = "fp32",
        device: str | torch.device = "auto",
        env: str | None = None,
        num_actions: int | None = None,
        render_mode: str | None = None,
        reward: str = "model",
        render_scale: int = 4,
    ) -> None:
        self._setup(checkpoint, model, obs_mode=obs_mode, dataset=dataset,
                    prompt_start=prompt_start, termination=termination,
                    termination_threshold=termination_threshold, ends=ends,
                    max_episode_steps=max_episode_steps, decision_steps=decision_steps,
                    temperature=temperature,
                    denoise_steps=denoise_steps, sampler=sampler, precision=precision,
                    device=device, env=env, num_actions=num_actions,
                    render_mode=render_mode, reward=reward)
        self.observation_space = self._single_observation_space()
        self.action_space = gymnasium.spaces.Discrete(self.model.num_actions)
        self.render_scale = render_scale
        self._dreams = DreamBatch(self.model, self.sampler, precision, 1)
        self._frame: np.ndarray | None = None  # current RGB frame, decoded lazily
        self._step = 0
        self._alive = 1.0  # termination="expected": the chance the dream is still alive
        self._ended: str | None = None  # why the dream is over, None while it runs
        self._window: Any = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new dream from a prompt (see the module docstring for sources).

        Args:
            seed: seeds the dream's noise stream; same seed, same dream.
            options: ``{"prompt": image or (frames, actions)}`` to prompt it yourself.
        """
        super().reset(seed=seed)
        prompt = self._prompt_for(self.np_random, options)
        self._dreams.start([0], [prompt], [self.np_random])
        self._step, self._ended, self._alive = 0, None, 1.0
        self._frame = prompt.last_frame()
        if self.render_mode == "human":
            self.render()
        return self._observation(), {"dream_step": 0, "prompt_length": prompt.length}

    def step(self, action: int | np.integer) -> tuple[np.ndarray, SupportsFloat, bool, bool,
                                                      dict[str, Any]]:
        """Dream one step further with ``action``; see the class docstring for ``info``."""
        index = self._check_action(action)
        if self._ended is not None:
            raise ConfigError(
                f"this dream is over ({self._ended} at dream step {self._step}); call reset() "
                "before step()")
        rewards, probabilities = self._decide(self._dreams, np.array([index]))
        self._step += 1
        probability = float(probabilities[0])
        if self.termination == "expected":
            self._alive *= 1.0 - probability
            rewards = rewards * self._alive
        terminated = bool(self._ends(np.array([probability]), [self.np_random])[0])
        truncated = not terminated and self._step >= self.max_episode_steps
        if terminated or truncated:
            self._ended = "terminated" if terminated else "truncated"
        self._frame = None
        observation = self._observation()
        if self.render_mode == "human":
            self.render()
        info = {"termination_prob": probability, "dream_step": self._step}
        return observation, float(rewards[0]), terminated, truncated, info

    def _check_action(self, action: Any) -> int:
        if self._dreams.state is None:
            raise ConfigError("call reset() before step(): the dream has not started")
        array = np.asarray(action)
        if array.ndim == 0 and array.dtype.kind in "iu":
            if 0 <= int(array) < self.model.num_actions:
                return int(array)
        raise ConfigError(
            f"action {action!r} is outside the action space {self._describe_actions()}")

    def _observation(self) -> np.ndarray:
        if self.obs_mode == "latent":
            return self._dreams.latent_observations()[0]
        if self.obs_mode == "state":
            return self._dreams.state_observations()[0]
        return self._current_frame().copy()

    def _current_frame(self) -> np.ndarray:
        if self._frame is None:
            self._frame = self._dreams.frames()[0]
        return self._frame

    def render(self) -> np.ndarray | None:  # type: ignore[override]
        """The current dream frame ``(H, W, 3)`` (``"rgb_array"``), or show it (``"human"``)."""
        if self.render_mode is None:
            gymnasium.logger.warn("DreamEnv.render() needs render_mode='rgb_array' or 'human'")
            return None
        if self._dreams.state is None:
            raise ConfigError("call reset() before render(): the dream has not started")
        frame = self._current_frame()
        if self.render_mode == "rgb_array":
            return frame.copy()
        if self._window is None:
            from envs.play import FrameWindow

            self._window = FrameWindow("worldsim dream", self.render_scale,
                                       fps=float(self.metadata["render_fps"]))
        self._window.show(frame)
        return None

    def close(self) -> None:
        if self._window is not None:
            self._window.close()
            self._window = None


# ---- many dreams in one batch ------------------------------------------------------------

class DreamVectorEnv(_DreamSetup, VectorEnv):
    """N dreams of one world model stepped in one batched forward pass, with autoreset.

    Takes the arguments of :class:`DreamEnv` plus ``num_envs``. Observations are stacked
    ``(N, ...)``, actions are ``(N,)`` ints. Autoreset is ``SAME_STEP`` (see the module
    docstring); finished dreams restart from new prompts in place (``WorldModel.restart``),
    the others run on. ``infos`` holds ``termination_prob`` and ``dream_step`` for every
    dream (``prompt_length`` for the ones that just started), Gymnasium-style with
    ``_key`` masks. Dream ``i`` reset with ``seed`` equals ``DreamEnv`` reset with
    ``seed + i``.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 35,
                                "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        *,
        num_envs: int = 1,
        model: WorldModel | None = None,
        obs_mode: str = "rgb",
        dataset: Datasets = None,
        prompt_start: str = "anywhere",
        termination: str = "sample",
        termination_threshold: float = 0.5,
        ends: str = "auto",
        max_episode_steps: int | None = None,
        decision_steps: int = 1,
        temperature: float | None = None,
        denoise_steps: int | None = None,
        sampler: dict[str, Any] | None = None,
        precision: str = "fp32",
        device: str | torch.device = "auto",
        env: str | None = None,
        num_actions: int | None = None,
        render_mode: str | None = None,
        reward: str = "model",
    ) -> None:
        if num_envs < 1:
            raise ConfigError(f"num_envs must be >= 1, got {num_envs}")
        if render_mode == "human":
            raise ConfigError("DreamVectorEnv renders 'rgb_array' only (one frame per dream); "
                              "use DreamEnv(render_mode='human') or `worldsim play` to watch")
        self._setup(checkpoint, model, obs_mode=obs_mode, dataset=dataset,
                    prompt_start=prompt_start, termination=termination,
                    termination_threshold=termination_threshold, ends=ends,
                    max_episode_steps=max_episode_steps, decision_steps=decision_steps,
                    temperature=temperature,
                    denoise_steps=denoise_steps, sampler=sampler, precision=precision,
                    device=device, env=env, num_actions=num_actions,
                    render_mode=render_mode, reward=reward)
        self.num_envs = num_envs
        self.single_observation_space = self._single_observation_space()
        self.single_action_space = gymnasium.spaces.Discrete(self.model.num_actions)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._dreams = DreamBatch(self.model, self.sampler, precision, num_envs)
        self._rngs = [seeding.np_random()[0] for _ in range(num_envs)]
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._alive = np.ones(num_envs)  # termination="expected": the chance each is alive
        self._frames: np.ndarray | None = None  # (N, H, W, 3) current frames, lazily decoded

    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Start every dream afresh.

        Args:
            seed: an int (dream ``i`` gets ``seed + i``), one seed per dream, or None.
            options: ``{"prompt": ...}`` to start every dream from the same prompt.
        """
        seeds = self._row_seeds(seed)
        if isinstance(seed, (int, np.integer)):
            super().reset(seed=int(seed))
        for row, row_seed in enumerate(seeds):
            if row_seed is not None or self._dreams.state is None:
                self._rngs[row] = seeding.np_random(row_seed)[0]
        rows = list(range(self.num_envs))
        prompts = [self._prompt_for(self._rngs[row], options) for row in rows]
        self._dreams.state = None  # a full restart
        self._dreams.start(rows, prompts, self._rngs)
        self._steps[:] = 0
        self._alive[:] = 1.0
        self._frames = None
        if self.obs_mode == "rgb":
            self._frames = np.stack([prompt.last_frame() for prompt in prompts])
        infos = self._reset_infos(np.ones(self.num_envs, dtype=bool), prompts, {})
        return self._observations(), infos

    def _row_seeds(self, seed: int | Sequence[int | None] | None) -> list[int | None]:
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, (int, np.integer)):
            return [int(seed) + row for row in range(self.num_envs)]
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ConfigError(f"{len(seeds)} seeds for {self.num_envs} dreams; give one per "
                              "dream, an int, or None")
        return seeds

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                          dict[str, Any]]:
        """Step every dream; finished ones restart in the same step (SAME_STEP)."""
        actions = self._check_actions(actions)
        rewards, probability = self._decide(self._dreams, actions)
        self._steps += 1
        if self.termination == "expected":
            self._alive *= 1.0 - probability
            rewards = rewards * self._alive
        terminated = self._ends(probability, self._rngs)
        truncated = ~terminated & (self._steps >= self.max_episode_steps)
        self._frames = self._dreams.frames() if self.obs_mode == "rgb" else None
        observations = self._observations()
        every = np.ones(self.num_envs, dtype=bool)
        infos: dict[str, Any] = {"termination_prob": probability, "_termination_prob": every,
                                 "dream_step": self._steps.copy(), "_dream_step": every.copy()}
        done = terminated | truncated
        if done.any():
            rows = np.flatnonzero(done).tolist()
            final_obs = np.full(self.num_envs, None, dtype=object)
            for row in rows:
                final_obs[row] = observations[row].copy()
            infos["final_obs"], infos["_final_obs"] = final_obs, done.copy()
            infos["final_info"] = {"termination_prob": probability.copy(),
                                   "_termination_prob": done.copy(),
                                   "dream_step": self._steps.copy(), "_dream_step": done.copy()}
            infos["_final_info"] = done.copy()
            prompts = [self.prompts.draw(self._rngs[row]) for row in rows]
            self._dreams.start(rows, prompts, [self._rngs[row] for row in rows])
            self._steps[rows] = 0
            self._alive[rows] = 1.0
            if self._frames is not None:
                for row, prompt in zip(rows, prompts):
                    self._frames[row] = prompt.last_frame()
            observations = self._observations()
            infos["_termination_prob"][rows] = False  # a new dream has no step info yet
            infos = self._reset_infos(done, prompts, infos)
        return observations, rewards, terminated, truncated, infos

    def _reset_infos(self, started: np.ndarray, prompts: Sequence[Prompt],
                     infos: dict[str, Any]) -> dict[str, Any]:
        """``infos`` with the reset info of the dreams ``started`` ((N,) bool; ``prompts``
        in row order): dream_step 0 and their prompt_length."""
        lengths = np.zeros(self.num_envs, dtype=np.int64)
        lengths[started] = [p.length for p in prompts]
        steps = infos.get("dream_step", np.zeros(self.num_envs, dtype=np.int64))
        steps[started] = 0
        mask = infos.get("_dream_step", np.zeros(self.num_envs, dtype=bool))
        mask[started] = True
        return {**infos, "dream_step": steps, "_dream_step": mask,
                "prompt_length": lengths, "_prompt_length": started.copy()}

    def _check_actions(self, actions: Any) -> np.ndarray:
        if self._dreams.state is None:
            raise ConfigError("call reset() before step(): the dreams have not started")
        array = np.asarray(actions)
        if array.shape != (self.num_envs,) or array.dtype.kind not in "iu":
            raise ConfigError(
                f"{self.num_envs} dreams need {self.num_envs} integer actions, shape "
                f"({self.num_envs},); got shape {array.shape} dtype {array.dtype}")
        bad = (array < 0) | (array >= self.model.num_actions)
        if bad.any():
            raise ConfigError(
                f"actions {array[bad].tolist()} (dreams {np.flatnonzero(bad).tolist()}) are "
                f"outside each dream's action space {self._describe_actions()}")
        return array.astype(np.int64)

    def _observations(self) -> np.ndarray:
        if self.obs_mode == "latent":
            return self._dreams.latent_observations()
        if self.obs_mode == "state":
            return self._dreams.state_observations()
        if self._frames is None:
            self._frames = self._dreams.frames()
        return self._frames.copy()

    def render(self) -> tuple[np.ndarray, ...] | None:
        """One ``(H, W, 3)`` frame per dream (``render_mode="rgb_array"``)."""
        if self.render_mode is None:
            gymnasium.logger.warn("DreamVectorEnv.render() needs render_mode='rgb_array'")
            return None
        if self._dreams.state is None:
            raise ConfigError("call reset() before render(): the dreams have not started")
        if self._frames is None:
            self._frames = self._dreams.frames()
        return tuple(frame.copy() for frame in self._frames)


# ---- stable-baselines3 ---------------------------------------------------------------------

class DreamVecEnvSB3(VecEnv):
    """A :class:`DreamVectorEnv` as a stable-baselines3 ``VecEnv``.

    Finished dreams restart at once; their last observation is in
    ``infos[i]["terminal_observation"]`` and ``infos[i]["TimeLimit.truncated"]`` says whether
    the step cap (not the termination head) ended them, so SB3 bootstraps correctly. Seeds
    set with ``seed(s)`` apply at the next ``reset()`` (dream ``i`` gets ``s + i``), as in
    SB3's own VecEnvs; wrap it in ``VecMonitor`` for episode statistics.

    Args:
        venv: the vector env; or pass DreamVectorEnv's arguments as keywords instead.
    """

    def __init__(self, venv: DreamVectorEnv | None = None, **kwargs: Any) -> None:
        if venv is None:
            venv = DreamVectorEnv(**kwargs)
        elif kwargs:
            raise ConfigError("give DreamVecEnvSB3 a DreamVectorEnv or its arguments, not both")
        self.venv = venv
        super().__init__(venv.num_envs, venv.single_observation_space,
                         venv.single_action_space)
        self._actions: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        options = self._options[0] if self._options else {}
        if any(option != options for option in self._options):
            raise ConfigError("DreamVecEnvSB3 takes one set of reset options for all dreams")
        observations, infos = self.venv.reset(seed=list(self._seeds), options=options or None)
        self.reset_infos = [self._row_info(infos, row) for row in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        return observations

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        observations, rewards, terminated, truncated, infos = self.venv.step(self._actions)
        dones = terminated | truncated
        rows: list[dict[str, Any]] = []
        for row in range(self.num_envs):
            if dones[row]:
                info = self._row_info(infos["final_info"], row)
                info["terminal_observation"] = infos["final_obs"][row]
                info["TimeLimit.truncated"] = bool(truncated[row] and not terminated[row])
                self.reset_infos[row] = self._row_info(infos, row)
            else:
                info = self._row_info(infos, row)
            rows.append(info)
        return observations, rewards.astype(np.float32), dones, rows

    @staticmethod
    def _row_info(infos: dict[str, Any], row: int) -> dict[str, Any]:
        """Dream ``row``'s entries of a Gymnasium vector info dict (masked keys left out)."""
        info: dict[str, Any] = {}
        for key, value in infos.items():
            if key.startswith("_") or key in ("final_obs", "final_info"):
                continue
            mask = infos.get(f"_{key}")
            if mask is not None and not mask[row]:
                continue
            item = value[row]
            info[key] = item.item() if isinstance(item, np.generic) else item
        return info

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        """The dreams share one env: its attribute, once per index."""
        value = getattr(self.venv, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: Any = None,
                   **method_kwargs: Any) -> list[Any]:
        """Calls the method of the one shared vector env, once."""
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        frames = self.venv.render()
        return list(frames) if frames is not None else [None] * self.num_envs
