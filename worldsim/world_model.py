"""The world model: compression network + action-conditioned diffusion dynamics + sampler.

One object to save, load, encode, decode, imagine and step. A checkpoint is a single
safetensors file whose metadata holds the JSON config (and a readable ``config.json`` is
written beside it); loading never executes code from the file.

Stepping API used by the dream env::

    state = model.start(context_frames, context_actions)        # prompt with real frames
    step = model.step(state, actions, generator=g)              # one new frame per dream
    step.latents, step.reward, step.termination_prob            # (B, c, h, w), (B,), (B,)
    step.foresight_prob            # (B,) with a foresight head: the end read before the step
    model.hold_risk(state)         # (B, A) with a hold head: holding each action ends it
    step.hold_prob                 # (B,) with a hold head: that risk as a per-step end
    model.state_observation(state) # (B, D) the model's state, standardised (agents' input)
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from worldsim.config import WorldModelConfig
from worldsim.diffusion.edm import Denoiser, EDMSampler
from worldsim.errors import CheckpointError, ConfigError
from worldsim.models.autoencoder import Autoencoder, to_uint8
from worldsim.models.dit import DynamicsModel, KVCache
from worldsim.noise import NoiseStreams
from worldsim.utils import atomic_path, read_worldsim_header

CHECKPOINT_FORMAT = "worldsim-world-model"
CHECKPOINT_VERSION = 1
CHECKPOINT_FILE = "model.safetensors"
SHIPPED_DIR = Path(__file__).resolve().parent / "checkpoints"
# which head says a dream step ended the episode (see WorldModel.resolve_ends)
END_SOURCES = ("auto", "frame", "foresight", "hold")
STATE_BOUND = 100.0  # state observations are standardised; clipped (a Box needs bounds)


@dataclass
class WorldModelInfo:
    """What the model was trained on: checked against the env it is used with."""

    env: str = ""  # env name, e.g. "vizdoom/TakeCover"
    env_options: dict[str, Any] = field(default_factory=dict)  # make_env options of the data
    frame_size: tuple[int, int] = (64, 64)  # (H, W) of the frames it was trained on
    action_names: tuple[str, ...] = ()  # names of the A actions, in order
    trained: dict[str, Any] = field(default_factory=dict)  # steps, wall time, hardware, data


@dataclass
class DreamState:
    """A batch of dreams in progress: the cached past and the current frame."""

    cache: KVCache  # per-layer keys/values of the committed frames
    latents: Tensor  # (B, c, h, w) the newest frame of each dream
    steps: Tensor  # (B,) steps taken since each dream's prompt


@dataclass
class StepResult:
    """One dream step for every dream in the batch."""

    latents: Tensor  # (B, c, h, w) the new frame
    reward: Tensor  # (B,) predicted reward of the step
    termination_prob: Tensor  # (B,) predicted probability that the step ended the episode
    # (B,) the foresight head's probability that the step ends the episode, read from the
    # frame before it and the action, before the new frame was drawn (None without one)
    foresight_prob: Tensor | None = None
    # (B,) the hold head's risk for the action taken, read before the step, as the chance
    # that this one step ends the episode (see WorldModel.hold_hazard; None without one)
    hold_prob: Tensor | None = None

    def end_probability(self, ends: str) -> Tensor:
        """``(B,)`` the end probability by ``ends`` ("frame", "foresight" or "hold",
        resolved by :meth:`WorldModel.resolve_ends`)."""
        if ends == "foresight" and self.foresight_prob is not None:
            return self.foresight_prob
        if ends == "hold" and self.hold_prob is not None:
            return self.hold_prob
        return self.termination_prob


class WorldModel(nn.Module):
    """A trained (or untrained) world model.

    Args:
        config: the full configuration (model shapes, diffusion, training).
        info: what it was trained on.
    """

    def __init__(self, config: WorldModelConfig, info: WorldModelInfo | None = None) -> None:
        super().__init__()
        if config.autoencoder.latent_channels != config.dynamics.latent_channels:
            raise ConfigError(
                f"autoencoder makes {config.autoencoder.latent_channels} latent channels but "
                f"the dynamics model expects {config.dynamics.latent_channels}; set both equal"
            )
        self.config = config
        self.info = info or WorldModelInfo()
        self.autoencoder = Autoencoder(config.autoencoder)
        self.denoiser = Denoiser(DynamicsModel(config.dynamics), config.denoiser)
        self.sampler: EDMSampler = dataclasses.replace(config.sampler)
        # Real opening clips to start dreams from when no dataset is at hand; saved with
        # the weights. (N, T0, 3, H, W) uint8 and (N, T0 - 1) actions between the frames.
        self.prompt_frames: Tensor | None = None
        self.prompt_actions: Tensor | None = None

    def set_prompts(self, frames: Tensor, actions: Tensor) -> None:
        """Store real clips ``(N, T0, 3, H, W)`` uint8 + actions ``(N, T0 - 1)`` to prompt
        dreams with (they are saved in the checkpoint)."""
        if frames.dtype != torch.uint8 or frames.ndim != 5 or actions.shape != (
                frames.shape[0], frames.shape[1] - 1):
            raise ConfigError("prompts must be uint8 (N, T0, 3, H, W) frames and (N, T0 - 1) "
                              "actions")
        self.prompt_frames, self.prompt_actions = frames.cpu(), actions.cpu().long()

    def compile_blocks(self) -> WorldModel:
        """Compile the transformer blocks with ``torch.compile`` (in place; returns self).

        Dream steps then run faster (fused element-wise work around the matrix products;
        see ``benchmarks/speed.py --compile``), after a one-off compile of tens of seconds
        per new input shape on the first calls. Worth it for long jobs (agent training),
        not for a few steps. Needs a C++ compiler on CPU. Weights and checkpoints are
        unchanged.
        """
        for block in self.denoiser.model.blocks:
            block.compile()
        return self

    @property
    def has_foresight(self) -> bool:
        """Whether the model has a foresight head (see :meth:`foresight`)."""
        return self.denoiser.model.foresight_head is not None

    @staticmethod
    def features(state: DreamState) -> Tensor:
        """The model's state after each dream's newest frame, ``(B, S)`` float32: the mean of
        that frame's last-layer tokens (``S = D``; what the reward, termination and foresight
        heads read; the frame attending to its past), or with a hold head on every token
        (``hold_tokens``) those tokens flattened (``S = hold_tokens * D``; :meth:`pool`
        gives the mean)."""
        assert state.cache.state is not None  # set by every start, step and observe
        return state.cache.state

    @property
    def state_size(self) -> int:
        """``S``, the size of :meth:`features` (what state agents observe)."""
        dynamics = self.config.dynamics
        return dynamics.width * max(dynamics.hold_tokens, 1)

    def pool(self, features: Tensor) -> Tensor:
        """States ``(..., S)`` from :meth:`features` -> the mean of the frame's tokens
        ``(..., D)`` (unchanged when the state is that mean already)."""
        tokens, width = self.config.dynamics.hold_tokens, self.config.dynamics.width
        if not tokens:
            return features
        return features.reshape(*features.shape[:-1], tokens, width).mean(dim=-2)

    @property
    def tokens_per_frame(self) -> int:
        """Tokens each frame is cut into (its latent grid over the patch size)."""
        _, height, width = self.latent_shape
        dynamics = self.config.dynamics
        return (height // dynamics.patch_height) * (width // dynamics.patch_width)

    def foresight(self, state: DreamState, actions: Tensor | None = None) -> Tensor:
        """The foresight head's probability that the next step ends each dream: ``(B,)`` for
        ``actions`` ``(B,)``, or ``(B, A)`` for every action when ``actions`` is None. Read
        from the newest frame; costs nothing (computed when the frame was committed)."""
        logits = state.cache.foresight_logits
        if logits is None:
            raise ConfigError(
                "this world model has no foresight head; add one with `worldsim "
                "train-foresight --checkpoint MODEL --data DATASET --out NEW` or end dreams "
                "by the termination head (ends='frame')")
        if actions is None:
            return torch.sigmoid(logits)
        actions = actions.to(self.device).long()
        return torch.sigmoid(logits.gather(1, actions[:, None])[:, 0])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(c, h, w)`` of one encoded frame at the model's frame size."""
        height, width = self.autoencoder.latent_size(*self.info.frame_size)
        return (self.config.dynamics.latent_channels, height, width)

    @property
    def history_frames(self) -> int:
        """Frames of history that shape the model's state after a frame: each block attends
        ``context_frames`` back, so the stacked blocks reach ``context_frames * depth``
        frames back, plus the frame itself, plus one more when frames are embedded with
        the one before them (``previous_frame``). A dream prompted with this many real
        frames has the state a model following the whole episode has (what an agent
        playing the real game reads); a shorter prompt gives another state."""
        dynamics = self.config.dynamics
        return dynamics.context_frames * dynamics.depth + 1 + int(dynamics.previous_frame)

    @property
    def hold_steps(self) -> int:
        """Steps the hold head looks ahead (0: the model has no hold head)."""
        return self.config.dynamics.hold_steps if self.denoiser.model.hold_head is not None \
            else 0

    @torch.no_grad()
    def hold_risk(self, state: DreamState | Tensor) -> Tensor:
        """The hold head's probability, per dream and action ``(B, A)``, that holding the
        action for the next :attr:`hold_steps` steps ends the episode within them, read from
        the newest frame (real frames fed by :meth:`observe` are what it was fitted on), or
        from states ``(..., D)`` as :meth:`features` gives them.
        Fitted on states where the actions' fates differ, so it ranks the actions there
        rather than giving the chance that anything ends."""
        head = self.denoiser.model.hold_head
        if head is None:
            raise ConfigError(
                "this world model has no hold head; fit one on a dataset with branches "
                "(`worldsim collect --branch-steps 8`) with `worldsim train-foresight --hold "
                "--checkpoint MODEL --data DATASET --out NEW`")
        features = state if isinstance(state, Tensor) else self.features(state)
        return torch.sigmoid(head.read(features.to(self.device)))

    @torch.no_grad()
    def hold_hazard(self, state: DreamState, actions: Tensor) -> Tensor:
        """The hold head's risk for ``actions`` ``(B,)`` spread evenly over its steps: the
        chance ``1 - (1 - p) ** (1 / H)`` that the next step ends each dream, where ``p`` is
        the risk that holding the action for ``H`` = :attr:`hold_steps` steps ends it within
        them (a constant per-step hazard over those steps). ``(B,)`` float32."""
        risk = self.hold_risk(state).float().gather(1, actions.to(self.device).long()[:, None])
        return 1 - (1 - risk[:, 0]).clamp(min=0) ** (1 / self.hold_steps)

    @torch.no_grad()
    def state_observation(self, state: DreamState | Tensor) -> Tensor:
        """The model's state after each dream's newest frame as an agent's observation,
        ``(B, S)`` float32: :meth:`features` (or given states ``(..., S)``) standardised by
        the hold head's statistics (mean and spread of the state over real play) when the
        model has that head, else as they are, clipped to ``+-STATE_BOUND``. What
        ``obs_mode="state"`` dreams and state agents see."""
        features = (state if isinstance(state, Tensor) else self.features(state)).float()
        features = features.to(self.device)
        head = self.denoiser.model.hold_head
        if head is not None:
            features = head.standardise(features)
        return features.clamp(-STATE_BOUND, STATE_BOUND)

    def resolve_ends(self, ends: str) -> str:
        """Which head ends dreams: ``"frame"``, the termination head reading the frame a step
        drew, or ``"foresight"``, the foresight head reading the frame before it and the
        action; ``"auto"``: foresight if the model has the head, else frame."""
        if ends not in END_SOURCES:
            raise ConfigError(f"ends must be one of {END_SOURCES}, got {ends!r}")
        if ends == "auto":
            return "foresight" if self.has_foresight else "frame"
        if ends == "hold" and not self.hold_steps:
            raise ConfigError(
                "ends='hold' needs a world model with a hold head; fit one with `worldsim "
                "train-foresight --hold --checkpoint MODEL --data DATASET_WITH_BRANCHES --out "
                "NEW`, or end dreams by another head (ends='auto')")
        if ends == "foresight" and not self.has_foresight:
            raise ConfigError(
                "ends='foresight' needs a world model with a foresight head; add one with "
                "`worldsim train-foresight --checkpoint MODEL --data DATASET --out NEW`, or "
                "end dreams by the drawn frame (ends='frame')")
        return ends

    @property
    def num_actions(self) -> int:
        return self.config.dynamics.num_actions

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- saving and loading --------------------------------------------------------------
    def save(self, path: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write ``path`` (a ``.safetensors`` file, or a folder that gets ``model.safetensors``)
        atomically, with ``config.json`` beside it for people to read.

        Args:
            path: where to write.
            dtype: store floating-point weights in this type (e.g. ``torch.float16`` halves
                a shipped checkpoint); loading casts them back to the model's type.
        """
        target = checkpoint_file(Path(path), must_exist=False)
        header = self.header()
        tensors = {name: value.detach().cpu().contiguous()
                   for name, value in self.state_dict().items()}
        if dtype is not None:
            tensors = {name: value.to(dtype) if value.is_floating_point() else value
                       for name, value in tensors.items()}
        if self.prompt_frames is not None and self.prompt_actions is not None:
            tensors["prompts.frames"] = self.prompt_frames.contiguous()
            tensors["prompts.actions"] = self.prompt_actions.contiguous()
        with atomic_path(target) as tmp:
            save_file(tensors, str(tmp), metadata={"worldsim": json.dumps(header)})
        with atomic_path(target.with_name("config.json")) as tmp:
            tmp.write_text(json.dumps(header, indent=2) + "\n")
        return target

    def header(self) -> dict[str, Any]:
        """The JSON header a checkpoint stores: format, version, config, info."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "info": dataclasses.asdict(self.info),
        }

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> WorldModel:
        """Load a checkpoint: a file, a run folder, or a shipped model's short name.

        Args:
            path: ``.../model.safetensors``, a folder holding one (a training run's
                ``world_model/`` or the run itself), or a short name such as ``"takecover"``.
            device: where to put the weights.
        """
        file = resolve_checkpoint(path)
        header = read_checkpoint_header(file)
        with safe_open(str(file), framework="pt") as handle:
            state = {name: handle.get_tensor(name) for name in handle.keys()}
        return cls.from_tensors(header, state, str(file)).to(device).eval()

    @classmethod
    def from_tensors(cls, header: dict[str, Any], state: dict[str, Tensor],
                     source: str) -> WorldModel:
        """A model from a checkpoint's JSON header and its tensors (what :meth:`save`
        writes; an agent file embeds the same two). ``source`` names them in errors."""
        config = WorldModelConfig.from_dict(header["config"])
        info_data = dict(header.get("info", {}))
        info_data["frame_size"] = tuple(info_data.get("frame_size", (64, 64)))
        info_data["action_names"] = tuple(info_data.get("action_names", ()))
        model = cls(config, WorldModelInfo(**info_data))
        state = dict(state)
        if "prompts.frames" in state:
            model.set_prompts(state.pop("prompts.frames"), state.pop("prompts.actions"))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{source} does not match this worldsim version's model (missing "
                f"{missing[:3]}, unexpected {unexpected[:3]}); retrain it with `worldsim train`"
            )
        return model.eval()

    # ---- frames <-> latents --------------------------------------------------------------
    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        """uint8 frames ``(B, T, 3, H, W)`` -> normalised latents ``(B, T, c, h, w)``."""
        self._check_frames(frames)
        return self.autoencoder.encode(frames.to(self.device))

    @torch.no_grad()
    def encode_episode(self, frames: np.ndarray, chunk: int = 512) -> Tensor:
        """A whole recorded episode ``(T, H, W, 3)`` uint8 -> latents ``(T, c, h, w)`` on the
        model's device, encoded ``chunk`` frames at a time (memory stays bounded)."""
        pieces = []
        for start in range(0, len(frames), chunk):
            batch = torch.from_numpy(np.ascontiguousarray(frames[start:start + chunk]))
            pieces.append(self.encode(batch.permute(0, 3, 1, 2)[None])[0])  # (t, c, h, w)
        return torch.cat(pieces)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents ``(B, T, c, h, w)`` -> uint8 frames ``(B, T, 3, H, W)``."""
        return to_uint8(self.autoencoder.decode(latents))

    def _check_frames(self, frames: Tensor) -> None:
        expected = tuple(self.info.frame_size)
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ConfigError(f"frames must be (B, T, 3, H, W), got {tuple(frames.shape)}")
        if tuple(frames.shape[-2:]) != expected and self.info.env:
            raise ConfigError(
                f"frames are {frames.shape[-2]}x{frames.shape[-1]} but this world model was "
                f"trained on {expected[0]}x{expected[1]} frames of {self.info.env}; make the env "
                f"with frame_size={expected}"
            )

    # ---- dreaming ------------------------------------------------------------------------
    def _incoming(self, context_actions: Tensor, frames: int) -> Tensor:
        """Actions between context frames ``(B, T0-1)`` -> incoming actions ``(B, T0)``."""
        batch = context_actions.shape[0]
        if context_actions.shape[1] != frames - 1:
            raise ConfigError(
                f"{frames} context frames need {frames - 1} context actions (one between each "
                f"pair), got {context_actions.shape[1]}"
            )
        self._check_actions(context_actions, allow_unknown=True)
        unknown = torch.full((batch, 1), self.num_actions, dtype=torch.long,
                             device=context_actions.device)
        return torch.cat([unknown, context_actions.long()], dim=1)

    def _check_actions(self, actions: Tensor, allow_unknown: bool = False) -> None:
        """Actions must be in 0..A-1; prompts may also use A, "unknown" (the model learnt it
        through action dropout), for clips whose actions were not recorded."""
        highest = self.num_actions if allow_unknown else self.num_actions - 1
        if actions.numel() and (int(actions.min()) < 0 or int(actions.max()) > highest):
            raise ConfigError(
                f"actions must lie in 0..{self.num_actions - 1}"
                f"{f' (or {self.num_actions} for unknown)' if allow_unknown else ''}: this "
                f"world model was trained for {self.num_actions} actions "
                f"({', '.join(self.info.action_names)})"
            )

    @staticmethod
    def _check_batch(state: DreamState, actions: Tensor) -> None:
        if actions.shape != (state.cache.batch_size,):
            raise ConfigError(
                f"{state.cache.batch_size} dreams need one action each, shape "
                f"({state.cache.batch_size},); got shape {tuple(actions.shape)}"
            )

    def autocast(self, precision: str = "fp32") -> Any:
        """Context manager for inference precision: "fp32" or "bf16"."""
        if precision == "fp32":
            return nullcontext()
        if precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        raise ConfigError(f"precision must be 'fp32' or 'bf16', got {precision!r}")

    @torch.no_grad()
    def start(self, context_frames: Tensor, context_actions: Tensor,
              latents: bool = False, lengths: Tensor | None = None) -> DreamState:
        """Prompt a batch of dreams with real frames.

        Args:
            context_frames: ``(B, T0, 3, H, W)`` uint8 frames (or latents ``(B, T0, c, h, w)``
                when ``latents=True``); one frame is a valid prompt.
            context_actions: ``(B, T0 - 1)`` the actions taken between them.
            latents: whether ``context_frames`` are already latents.
            lengths: ``(B,)`` prompts of several lengths in one batch: row ``i`` is its first
                ``lengths[i]`` frames (and ``lengths[i] - 1`` actions); the rest is padding.
        """
        context, incoming, last, lengths = self._prompt(context_frames, context_actions,
                                                        latents, lengths)
        cache, _, _ = self.denoiser.start(context, incoming, lengths=lengths)
        steps = torch.zeros(context.shape[0], dtype=torch.long, device=self.device)
        return DreamState(cache, last, steps)

    @torch.no_grad()
    def restart(self, state: DreamState, rows: Tensor, context_frames: Tensor,
                context_actions: Tensor, latents: bool = False,
                lengths: Tensor | None = None) -> None:
        """Restart the dreams of ``rows`` ((B,) bool) from new prompts, in place (one per
        restarted row, in row order; ``lengths`` as in :meth:`start`)."""
        context, incoming, last, lengths = self._prompt(context_frames, context_actions,
                                                        latents, lengths)
        self.denoiser.restart_rows(state.cache, rows, context, incoming, lengths)
        state.latents[rows] = last
        state.steps[rows] = 0

    def _prompt(self, context_frames: Tensor, context_actions: Tensor, latents: bool,
                lengths: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """A prompt's latents ``(B, T0, c, h, w)``, incoming actions ``(B, T0)``, each
        row's last latent ``(B, c, h, w)`` and its lengths on the model's device."""
        context = context_frames.to(self.device)
        if not latents:
            context = self.encode(context)
        incoming = self._incoming(context_actions.to(self.device), context.shape[1])
        if lengths is None:
            return context, incoming, context[:, -1], None
        lengths = lengths.to(self.device)
        rows = torch.arange(context.shape[0], device=self.device)
        return context, incoming, context[rows, lengths.clamp(1, context.shape[1]) - 1], lengths

    @torch.no_grad()
    def step(self, state: DreamState, actions: Tensor,
             generator: torch.Generator | Sequence[torch.Generator] | NoiseStreams | None = None,
             sampler: EDMSampler | None = None) -> StepResult:
        """Advance every dream by one step with ``actions`` ``(B,)``; updates ``state``.

        Args:
            state: from :meth:`start`.
            actions: ``(B,)`` one action per dream.
            generator: sampling noise: one generator, or one stream per dream (then each
                dream's frames are independent of the batch it runs in):
                :class:`~worldsim.noise.NoiseStreams`, drawn for all dreams at once (fast on
                a GPU), or a sequence of generators.
            sampler: sampler settings for this call (temperature, denoise steps); default
                :attr:`sampler`.
        """
        actions = self._step_actions(state, actions)
        before = self._ends_before(state, actions)
        latents = (sampler or self.sampler).sample(self.denoiser, state.cache, actions, generator)
        if self.denoiser.cfg.residual:  # the sample is the change from the current frame
            latents = state.latents[:, None] + latents
        return self._commit(state, latents, actions, before)

    @torch.no_grad()
    def observe(self, state: DreamState, frames: Tensor, actions: Tensor,
                latents: bool = False) -> StepResult:
        """Advance every dream with a *real* next frame instead of a generated one (teacher
        forcing): what the model predicts for reward and episode end on real observations.

        Args:
            state: from :meth:`start`; updated in place.
            frames: ``(B, 3, H, W)`` uint8 real frames (or latents ``(B, c, h, w)``).
            actions: ``(B,)`` the actions that led to them.
            latents: whether ``frames`` are already latents.
        """
        actions = self._step_actions(state, actions)
        before = self._ends_before(state, actions)
        new = frames.to(self.device)[:, None]
        if not latents:
            new = self.encode(new)
        return self._commit(state, new, actions, before)

    def _ends_before(self, state: DreamState, actions: Tensor) -> dict[str, Tensor | None]:
        """The end probabilities read from the state before a step: foresight and hold
        (None for a head the model lacks)."""
        return {"foresight_prob": self.foresight(state, actions) if self.has_foresight
                else None,
                "hold_prob": self.hold_hazard(state, actions) if self.hold_steps else None}

    def _step_actions(self, state: DreamState, actions: Tensor) -> Tensor:
        """One checked action per dream, ``(B,)`` long on the model's device."""
        actions = actions.to(self.device).long()
        self._check_batch(state, actions)
        self._check_actions(actions)
        return actions

    def _commit(self, state: DreamState, new: Tensor, actions: Tensor,
                before: dict[str, Tensor | None]) -> StepResult:
        """Append the next latent frame ``(B, 1, c, h, w)`` of every dream to ``state``."""
        reward, logit = self.denoiser.commit(state.cache, new, actions)
        state.latents = new[:, 0]
        state.steps += 1
        return StepResult(new[:, 0], reward, torch.sigmoid(logit), **before)

    @torch.no_grad()
    def imagine(self, context_frames: Tensor, context_actions: Tensor, future_actions: Tensor,
                generator: torch.Generator | None = None, decode: bool = True
                ) -> tuple[Tensor, Tensor, Tensor]:
        """Roll the model forward open-loop from real frames under given actions.

        Args:
            context_frames: ``(B, T0, 3, H, W)`` uint8 prompt frames.
            context_actions: ``(B, T0 - 1)`` actions between the prompt frames.
            future_actions: ``(B, K)`` actions to take after the last prompt frame.
            generator: source of all sampling noise.
            decode: return uint8 frames (True) or latents (False).

        Returns:
            Predicted frames ``(B, K, 3, H, W)`` uint8 (or latents ``(B, K, c, h, w)``),
            rewards ``(B, K)`` and termination probabilities ``(B, K)``.
        """
        state = self.start(context_frames, context_actions)
        outputs, rewards, ends = [], [], []
        for k in range(future_actions.shape[1]):
            result = self.step(state, future_actions[:, k], generator)
            outputs.append(result.latents)
            rewards.append(result.reward)
            ends.append(result.termination_prob)
        latents = torch.stack(outputs, dim=1)  # (B, K, c, h, w)
        frames = self.decode(latents) if decode else latents
        return frames, torch.stack(rewards, dim=1), torch.stack(ends, dim=1)


def checkpoint_file(path: Path, must_exist: bool = True) -> Path:
    """The ``.safetensors`` file a path names (a folder means its ``model.safetensors``)."""
    if path.suffix == ".safetensors":
        return path
    if path.is_dir() and (path / "world_model" / CHECKPOINT_FILE).is_file():
        return path / "world_model" / CHECKPOINT_FILE
    if path.is_dir() or not must_exist:
        return path / CHECKPOINT_FILE
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """Turn a path or a shipped model's short name into an existing checkpoint file."""
    name = str(path)
    candidate = Path(name)
    if not candidate.exists() and "/" not in name and (SHIPPED_DIR / name).is_dir():
        candidate = SHIPPED_DIR / name
    file = checkpoint_file(candidate)
    if not file.is_file():
        shipped = sorted(p.name for p in SHIPPED_DIR.iterdir()) if SHIPPED_DIR.is_dir() else []
        raise CheckpointError(
            f"no world-model checkpoint at {name!r}; pass a run folder from `worldsim train`, a "
            f"model.safetensors file, or a shipped model name ({', '.join(shipped) or 'none'})"
        )
    return file


def read_checkpoint_header(file: Path) -> dict[str, Any]:
    """Read and check a checkpoint's JSON header without loading any weights."""
    return read_worldsim_header(
        file, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "world model",
        old_version_hint=": retrain with `worldsim train` or use a matching worldsim")
