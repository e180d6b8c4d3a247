"""The portable trained agent: one safetensors file that plays the real game from raw frames.

``agent = agents.load(path_or_name)``, ``agent.reset(seed)``, ``action = agent.act(frame)``
with ``frame`` a uint8 ``(H, W, 3)`` real-game frame, as ``envs.make_env`` gives it. The
agent does its own encoding: the file bundles the world model's encoder half and latent
statistics (about 2 MB for the small preset, 50 KB for tiny), so it needs neither the world
model nor the dream to act.

File layout (no pickled code; loading never executes anything from the file)::

    agent.safetensors
      metadata["worldsim"]: JSON header  format, version, name, info (env, env options,
                                         frame size, action names, training facts),
                                         observation (kind, frame_stack, latent shape),
                                         policy (algo, layer list, output), autoencoder config
      encoder.*                          the frame encoder (latent observations only)
      world_model.*                      the world model (state observations only; its
                                         header is metadata["worldsim"]["world_model"])
      policy.<i>.*                       the policy network, an nn.Sequential of plain layers

Observations are what the agent saw in the dream, rebuilt from real frames:

- ``"latent"``: the frame encoded and normalised exactly as ``WorldModel.encode`` does,
  flattened to ``c*h*w`` values and clipped to ``+-LATENT_BOUND`` (the dream env's Box).
- ``"rgb"``: the frame itself, channels first, scaled to [0, 1] (what SB3's ``CnnPolicy``
  does to uint8 images).
- ``"state"``: the world model's state after the frames of the episode so far, each real
  frame fed in turn with the agent's own previous action (``WorldModel.observe``, teacher
  forcing), standardised as the dream gave it (``WorldModel.state_observation``), in the
  precision the agent was trained at. The file then carries the world model (stored in
  float16 when that loses nothing, as for a model loaded from a float16 checkpoint), so it
  is as large as the model; the agent must see every frame of an episode, in order.

With ``frame_stack = K > 1`` the last K observations are concatenated oldest first along
the last axis (channels for RGB), and the history is zero at the start of an episode:
the layout of SB3's ``VecFrameStack``, which the dream training uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

import worldsim
from worldsim.errors import CheckpointError, ConfigError
from worldsim.models.autoencoder import Autoencoder, AutoencoderConfig, Encoder
from worldsim.utils import atomic_path, read_worldsim_header

AGENT_FORMAT = "worldsim-agent"
AGENT_VERSION = 1
AGENT_FILE = "agent.safetensors"
SHIPPED_DIR = Path(__file__).resolve().parent / "checkpoints"
LATENT_BOUND = 20.0  # the dream env clips latent observations to this (envs.dream)
OBS_KINDS = ("latent", "rgb", "state")
OUTPUTS = ("logits", "q_values")


@dataclass
class AgentInfo:
    """What the agent was trained for: checked against the env it plays."""

    env: str  # env name for envs.make_env, e.g. "vizdoom/TakeCover"
    env_options: dict[str, Any] = field(default_factory=dict)  # make_env options of the data
    frame_size: tuple[int, int] = (64, 64)  # (H, W) of the frames it acts on
    action_names: tuple[str, ...] = ()  # names of the A actions, in order
    trained: dict[str, Any] = field(default_factory=dict)  # algo, steps, world model, wall time


@dataclass
class ObservationSpec:
    """How a real frame becomes the policy's input."""

    kind: str = "latent"  # "latent" (encoded frame) or "rgb" (the frame)
    frame_stack: int = 1  # K: observations concatenated, oldest first, zeros at reset
    latent_shape: tuple[int, int, int] | None = None  # (c, h, w) for "latent"
    latent_bound: float = LATENT_BOUND  # latents are clipped to +-this
    precision: str = "fp32"  # "state": the world model's precision while it follows frames


@dataclass
class PolicySpec:
    """The policy network: plain layers in order, and what its output means."""

    algo: str  # "PPO", "A2C", "DQN", "CMA-ES", ...
    layers: list[dict[str, Any]]  # see build_layers
    output: str = "logits"  # "logits" (sampling allowed) or "q_values" (argmax only)
    decision_steps: int = 1  # steps each chosen action is held, as in its dream's decisions
    # added to the held action's score (logit or Q-value) when the agent decides again: it
    # keeps its move on near ties instead of dithering (what the planner's keep_bonus does)
    keep_bonus: float = 0.0


# ---- plain layers, described in JSON -------------------------------------------------------

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU, "elu": nn.ELU, "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
}


def build_layers(specs: list[dict[str, Any]]) -> nn.Sequential:
    """An ``nn.Sequential`` from layer descriptions (see :func:`describe_layers`)."""
    layers: list[nn.Module] = []
    for spec in specs:
        kind = spec.get("type")
        if kind == "linear":
            layers.append(nn.Linear(spec["in"], spec["out"], bias=spec.get("bias", True)))
        elif kind == "conv2d":
            layers.append(nn.Conv2d(spec["in"], spec["out"], tuple(spec["kernel"]),
                                    stride=tuple(spec["stride"]), padding=tuple(spec["padding"]),
                                    bias=spec.get("bias", True)))
        elif kind == "flatten":
            layers.append(nn.Flatten(spec.get("start_dim", 1), spec.get("end_dim", -1)))
        elif kind == "unflatten":
            layers.append(nn.Unflatten(spec["dim"], tuple(spec["sizes"])))
        elif kind == "leaky_relu":
            layers.append(nn.LeakyReLU(spec.get("negative_slope", 0.01)))
        elif kind in _ACTIVATIONS:
            layers.append(_ACTIVATIONS[kind]())
        else:
            raise CheckpointError(f"unknown layer type {kind!r} in an agent file; it was written "
                                  "by a newer worldsim")
    return nn.Sequential(*layers)


def describe_layers(modules: list[nn.Module]) -> list[dict[str, Any]]:
    """JSON descriptions of plain layers (Linear, Conv2d, Flatten, Unflatten, activations),
    in order.

    Raises:
        ConfigError: a layer the portable agent cannot rebuild.
    """
    names = {cls: name for name, cls in _ACTIVATIONS.items()}
    specs: list[dict[str, Any]] = []
    for module in modules:
        if isinstance(module, nn.Linear):
            specs.append({"type": "linear", "in": module.in_features, "out": module.out_features,
                          "bias": module.bias is not None})
        elif isinstance(module, nn.Conv2d):
            if module.groups != 1 or module.dilation != (1, 1) or isinstance(module.padding, str):
                raise ConfigError(f"cannot export {module}: only plain convolutions (no groups, "
                                  "dilation or string padding) are portable")
            specs.append({"type": "conv2d", "in": module.in_channels,
                          "out": module.out_channels, "kernel": list(module.kernel_size),
                          "stride": list(module.stride), "padding": list(module.padding),
                          "bias": module.bias is not None})
        elif isinstance(module, nn.Flatten):
            specs.append({"type": "flatten", "start_dim": module.start_dim,
                          "end_dim": module.end_dim})
        elif isinstance(module, nn.Unflatten):
            specs.append({"type": "unflatten", "dim": module.dim,
                          "sizes": list(module.unflattened_size)})
        elif isinstance(module, nn.LeakyReLU):
            specs.append({"type": "leaky_relu", "negative_slope": module.negative_slope})
        elif type(module) in names:
            specs.append({"type": names[type(module)]})
        elif not isinstance(module, nn.Identity):
            raise ConfigError(
                f"cannot export layer {type(module).__name__}: a portable agent is built from "
                f"Linear, Conv2d, Flatten, Unflatten and {', '.join(sorted(names))} layers")
    return specs


def copy_layers(sources: list[nn.Module], target: nn.Sequential) -> None:
    """Copy the weights of ``sources`` (the modules :func:`describe_layers` described) into
    the layers :func:`build_layers` made from their description."""
    kept = [module for module in sources if not isinstance(module, nn.Identity)]
    for source, layer in zip(kept, target, strict=True):
        layer.load_state_dict(source.state_dict())


# ---- observations ----------------------------------------------------------------------------

class FrameEncoder(nn.Module):
    """The world model's encoder half and latent statistics: real frames -> the latent
    observations the agent saw in the dream.

    Args:
        config: the world model's autoencoder config.
        bound: latents are clipped to ``+-bound``, as the dream env clips its observations.
    """

    def __init__(self, config: AutoencoderConfig, bound: float = LATENT_BOUND) -> None:
        super().__init__()
        self.config = config
        self.bound = bound
        self.encoder = Encoder(config)
        self.register_buffer("latent_shift", torch.zeros(config.latent_channels))
        self.register_buffer("latent_scale", torch.ones(config.latent_channels))

    @classmethod
    def from_autoencoder(cls, autoencoder: Autoencoder, bound: float = LATENT_BOUND
                         ) -> FrameEncoder:
        """A copy of a trained autoencoder's encoder and statistics."""
        encoder = cls(dataclasses.replace(autoencoder.cfg), bound)
        encoder.encoder.load_state_dict(autoencoder.encoder.state_dict())
        encoder.latent_shift.copy_(autoencoder.latent_shift)
        encoder.latent_scale.copy_(autoencoder.latent_scale)
        return encoder.eval()

    def forward(self, frames: Tensor) -> Tensor:
        """uint8 frames ``(B, H, W, 3)`` -> flat latents ``(B, c*h*w)``, as the dream gives."""
        # the same arithmetic and memory layout as Autoencoder.encode, so values match
        pixels = rearrange(frames, "B H W C -> B C H W").float() / 127.5 - 1  # (B, 3, H, W)
        raw = self.encoder(pixels.contiguous(memory_format=torch.channels_last)).float()
        latents = (raw - self.latent_shift[:, None, None]) / self.latent_scale[:, None, None]
        return latents.clamp(-self.bound, self.bound).flatten(1)  # (B, c*h*w)


class ObservationHistory:
    """The last K observations of one episode, concatenated oldest first (zeros at reset)."""

    def __init__(self, frame_stack: int) -> None:
        self.frame_stack = frame_stack
        self._items: list[Tensor] = []

    def reset(self) -> None:
        self._items = []

    def push(self, observation: Tensor) -> Tensor:
        """Add ``(..., D)`` and return ``(..., K*D)`` (concatenated on the last axis)."""
        if not self._items:
            self._items = [torch.zeros_like(observation)] * (self.frame_stack - 1)
        else:
            self._items = self._items[1:]
        self._items = [*self._items, observation]
        return torch.cat(self._items, dim=-1)


# ---- the agent ----------------------------------------------------------------------------

class Agent:
    """A trained policy that plays from raw real-game frames.

    Satisfies ``envs.policies.Policy`` (``name``, ``reset(seed)``, ``act(frame)``), so it can
    also collect data (``worldsim collect --policy agent:PATH``).

    Args:
        info: what it was trained for.
        observation: how frames become policy inputs.
        policy: the policy network's description.
        network: the policy network (built from ``policy.layers``).
        encoder: the frame encoder (``observation.kind == "latent"`` only).
        world_model: the world model whose state the policy reads (``"state"`` only).
        name: a short name for reports.
        deterministic: argmax actions (default); False samples from the policy's softmax
            with a generator seeded in :meth:`reset`.
    """

    def __init__(self, info: AgentInfo, observation: ObservationSpec, policy: PolicySpec,
                 network: nn.Sequential, encoder: FrameEncoder | None = None,
                 name: str = "agent", deterministic: bool = True,
                 world_model: Any = None) -> None:
        if observation.kind not in OBS_KINDS:
            raise ConfigError(f"observation kind must be one of {OBS_KINDS}, "
                              f"got {observation.kind!r}")
        if observation.kind == "latent" and encoder is None:
            raise ConfigError("an agent on latent observations needs the frame encoder")
        if observation.kind == "state" and world_model is None:
            raise ConfigError("an agent on state observations needs its world model")
        if policy.output not in OUTPUTS:
            raise ConfigError(f"policy output must be one of {OUTPUTS}, got {policy.output!r}")
        if observation.frame_stack < 1:
            raise ConfigError(f"frame_stack must be >= 1, got {observation.frame_stack}")
        self.info, self.observation, self.policy = info, observation, policy
        self.network = network.eval()
        self.encoder = encoder.eval() if encoder is not None else None
        self.world_model = world_model.eval() if world_model is not None else None
        self.name = name
        self.deterministic = True
        self.set_deterministic(deterministic)
        self._history = ObservationHistory(observation.frame_stack)
        self._rng = np.random.default_rng(0)
        self._state: Any = None  # "state": the world model's state over this episode's frames
        self._last_action: int | None = None
        if policy.decision_steps < 1:
            raise ConfigError(f"decision_steps must be >= 1, got {policy.decision_steps}")
        # steps each chosen action is held (the policy's own; set 1 to decide every step)
        self.decision_steps = policy.decision_steps
        self.keep_bonus = float(policy.keep_bonus)  # see PolicySpec.keep_bonus
        self._held: int | None = None  # the action being held, and the steps it has left
        self._held_left = 0

    # ---- the Policy protocol -------------------------------------------------------------
    @property
    def num_actions(self) -> int:
        return len(self.info.action_names)

    def set_deterministic(self, deterministic: bool) -> None:
        """Argmax actions (True) or sampled ones (False; policies with logits only)."""
        if not deterministic and self.policy.output != "logits":
            raise ConfigError(f"a {self.policy.algo} agent outputs Q-values, which give no "
                              "action probabilities: use deterministic actions")
        self.deterministic = deterministic

    def reset(self, seed: int | None = None) -> None:
        """Start an episode: clear the observation history, seed action sampling."""
        self._history.reset()
        self._rng = np.random.default_rng(None if seed is None else [seed, 0xA6E7])
        self._state, self._last_action = None, None
        self._held, self._held_left = None, 0

    @torch.no_grad()
    def act(self, frame: np.ndarray) -> int:
        """The action for a real-game frame, uint8 ``(H, W, 3)``: a new decision every
        :attr:`decision_steps` frames, the decision held in between (a state agent's world
        model still follows every frame)."""
        if self._held is not None and self._held_left > 0:
            self.check_frame(frame)
            if self.observation.kind == "state":
                self._follow(torch.from_numpy(np.ascontiguousarray(frame))[None])
            self._held_left -= 1
            self._last_action = self._held
            return self._held
        scores = self.scores(frame)
        if self.keep_bonus and self._held is not None:  # the move held until now
            scores[self._held] += self.keep_bonus
        if self.deterministic:
            action = int(scores.argmax())
        else:
            probs = torch.softmax(scores.double(), dim=-1).numpy()
            action = int(self._rng.choice(len(probs), p=probs / probs.sum()))
        self._last_action = action
        self._held, self._held_left = action, self.decision_steps - 1
        return action

    @torch.no_grad()
    def scores(self, frame: np.ndarray) -> Tensor:
        """The policy's output for a frame, ``(A,)``: logits or Q-values. Advances the
        observation history like :meth:`act` does (a state agent also needs :meth:`act`'s
        action before its next frame)."""
        self.check_frame(frame)
        pixels = torch.from_numpy(np.ascontiguousarray(frame))[None]
        observation = (self._follow(pixels) if self.observation.kind == "state"
                       else self.observe(pixels))
        return self.network(self.policy_input(self._history.push(observation)))[0].float()

    @torch.no_grad()
    def _follow(self, frame: Tensor) -> Tensor:
        """Feed one real frame ``(1, H, W, 3)`` uint8 to the world model's running state
        (with the action the agent took before it) and return the state observation
        ``(1, D)``."""
        model = self.world_model
        pixels = rearrange(frame, "B H W C -> B C H W").to(model.device)
        with model.autocast(self.observation.precision):
            if self._state is None:
                self._state = model.start(pixels[:, None], torch.zeros(1, 0, dtype=torch.long))
            elif self._last_action is None:
                raise ConfigError("a state agent feeds its world model the action it took "
                                  "before each frame: call act(frame) every step (scores() "
                                  "alone takes no action)")
            else:
                model.observe(self._state, pixels, torch.tensor([self._last_action]))
            self._last_action = None  # act() sets the next one
            return model.state_observation(self._state)

    @torch.no_grad()
    def observe(self, frames: Tensor) -> Tensor:
        """uint8 frames ``(B, H, W, 3)`` -> one observation each, stackable on the last axis:
        latents ``(B, c*h*w)`` or pixels ``(B, H, W, 3)`` in [0, 1]. (A state agent's
        observation depends on the episode so far: it comes from :meth:`act` alone.)"""
        if self.observation.kind == "state":
            raise ConfigError("a state agent observes one episode's frames in order; call "
                              "reset() then act(frame) for each frame")
        frames = frames.to(self.device)
        if self.observation.kind == "latent":
            assert self.encoder is not None
            return self.encoder(frames)  # (B, c*h*w)
        return frames.float() / 255.0  # (B, H, W, 3)

    def policy_input(self, stacked: Tensor) -> Tensor:
        """Stacked observations -> the network's input (pixels go channels first)."""
        if self.observation.kind == "rgb":
            return rearrange(stacked, "B H W C -> B C H W")  # (B, 3K, H, W)
        return stacked  # (B, K*c*h*w)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    # ---- checks ---------------------------------------------------------------------------
    def describe(self) -> str:
        height, width = self.info.frame_size
        return f"{self.info.env} {height}x{width} frames"

    def check_frame(self, frame: Any) -> None:
        """Raise ConfigError unless ``frame`` is a uint8 ``(H, W, 3)`` frame of the right size."""
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 \
                or frame.shape[-1] != 3:
            shape = getattr(frame, "shape", None)
            dtype = getattr(frame, "dtype", type(frame).__name__)
            raise ConfigError(f"an agent acts on uint8 RGB frames (H, W, 3), channels last; got "
                              f"shape {shape} dtype {dtype}")
        if tuple(frame.shape[:2]) != tuple(self.info.frame_size):
            raise ConfigError(f"agent was trained on {self.describe()}; this env gives "
                              f"{frame.shape[0]}x{frame.shape[1]}: make the env with "
                              f"frame_size={tuple(self.info.frame_size)}")

    def check_env(self, env_name: str | None, frame_size: tuple[int, int] | None = None,
                  num_actions: int | None = None) -> None:
        """Fail early when the agent cannot play ``env_name`` with these frames and actions."""
        check_env_fits("agent", self.info, self.num_actions, env_name, frame_size, num_actions)

    # ---- saving -----------------------------------------------------------------------------
    def header(self) -> dict[str, Any]:
        return {
            "format": AGENT_FORMAT,
            "version": AGENT_VERSION,
            "worldsim": worldsim.__version__,
            "name": self.name,
            "info": dataclasses.asdict(self.info),
            "observation": dataclasses.asdict(self.observation),
            "policy": dataclasses.asdict(dataclasses.replace(
                self.policy, decision_steps=self.decision_steps, keep_bonus=self.keep_bonus)),
            "autoencoder": (dataclasses.asdict(self.encoder.config)
                            if self.encoder is not None else None),
            "world_model": (self.world_model.header() if self.world_model is not None
                            else None),
        }

    def save(self, path: str | Path, float16: bool = False) -> Path:
        """Write the agent atomically to ``path`` (a ``.safetensors`` file, or a folder that
        gets ``agent.safetensors``), with a readable ``<name>.json`` header beside it.

        The bundled world model is stored in float16 when that loses nothing; ``float16``
        stores it so even where it rounds (a smaller file whose observations differ by the
        rounding, which can flip near-tie decisions: score the saved file itself)."""
        target = Path(path)
        if target.suffix != ".safetensors":
            target = target / AGENT_FILE
        tensors = {f"policy.{name}": value for name, value in self.network.state_dict().items()}
        if self.encoder is not None:
            tensors.update({f"encoder.{name}": value
                            for name, value in self.encoder.state_dict().items()})
        if self.world_model is not None:
            state = self.world_model.state_dict()
            state = ({name: value.half() if value.is_floating_point() else value
                      for name, value in state.items()} if float16 else _compact(state))
            tensors.update({f"world_model.{name}": value for name, value in state.items()})
        tensors = {name: value.detach().cpu().contiguous() for name, value in tensors.items()}
        header = json.loads(json.dumps(self.header(), default=_plain))
        with atomic_path(target) as tmp:
            save_file(tensors, str(tmp), metadata={"worldsim": json.dumps(header)})
        with atomic_path(target.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps(header, indent=2) + "\n")
        return target


def check_env_fits(who: str, info: Any, actions: int, env_name: str | None,
                   frame_size: tuple[int, int] | None = None,
                   num_actions: int | None = None) -> None:
    """Refuse an env that ``who`` cannot play: ``info`` (an :class:`AgentInfo` or a world
    model's info) names the env and frame size it was trained on, ``actions`` its action
    count."""
    height, width = info.frame_size
    if env_name is not None and info.env and env_name != info.env:
        raise ConfigError(f"{who} was trained on {info.env}; this env is {env_name}: "
                          f"evaluate it on {info.env}")
    if frame_size is not None and tuple(frame_size) != tuple(info.frame_size):
        raise ConfigError(f"{who} was trained on {info.env} {height}x{width} frames; this env "
                          f"gives {frame_size[0]}x{frame_size[1]}: make the env with "
                          f"frame_size={tuple(info.frame_size)}")
    if num_actions is not None and num_actions != actions:
        raise ConfigError(f"{who} was trained for {actions} actions "
                          f"({', '.join(info.action_names)}); this env has {num_actions}")


def _compact(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """``tensors`` with floating-point ones in float16 if every one of them survives the
    round trip exactly (a model loaded from a float16 checkpoint), else unchanged."""
    floats = [value for value in tensors.values() if value.is_floating_point()]
    if not all(torch.equal(value.half().to(value.dtype), value) for value in floats):
        return tensors
    return {name: value.half() if value.is_floating_point() else value
            for name, value in tensors.items()}


def _plain(value: Any) -> Any:
    """JSON for the NumPy scalars and arrays and paths that training facts may hold."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in an agent header")


def agent_for_world_model(model: Any, observation: ObservationSpec, policy: PolicySpec,
                          network: nn.Sequential, trained: dict[str, Any] | None = None,
                          name: str | None = None) -> Agent:
    """A portable agent for the real game a world model dreams of.

    Args:
        model: the ``WorldModel`` the agent was trained in; its env, frame size and action
            names go into the agent, and (latent observations) a copy of its encoder, or
            (state observations) the model itself.
        observation: the observations the agent saw in the dream.
        policy: description of ``network``.
        network: the policy network (its weights are copied to the CPU).
        trained: training facts to record (algo, steps, wall time, ...).
        name: a short name (default: ``"<algo>-<game>"``).
    """
    info = AgentInfo(env=model.info.env, env_options=dict(model.info.env_options),
                     frame_size=tuple(model.info.frame_size),
                     action_names=tuple(model.info.action_names)
                     or tuple(str(i) for i in range(model.num_actions)),
                     trained=dict(trained or {}))
    encoder = None
    if observation.kind == "latent":
        encoder = FrameEncoder.from_autoencoder(model.autoencoder, observation.latent_bound).cpu()
        if observation.latent_shape is None:
            observation = dataclasses.replace(observation, latent_shape=model.latent_shape)
    game = (info.env.split("/")[-1] or "dream").lower()
    return Agent(info, observation, policy, network.cpu(), encoder,
                 name=name or f"{policy.algo.lower()}-{game}",
                 world_model=model if observation.kind == "state" else None)


# ---- loading ------------------------------------------------------------------------------

def shipped_agents() -> list[str]:
    """Short names of the agents shipped in ``agents/checkpoints``."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / AGENT_FILE).is_file())


def resolve_agent(path: str | Path) -> Path:
    """A path, a folder holding ``agent.safetensors`` or a shipped short name -> the file."""
    name = str(path)
    candidate = Path(name)
    if candidate.is_dir():
        candidate = candidate / AGENT_FILE
    elif not candidate.exists() and "/" not in name and candidate.suffix != ".safetensors":
        candidate = SHIPPED_DIR / name / AGENT_FILE
    if not candidate.is_file():
        shipped = shipped_agents()
        raise CheckpointError(
            f"no agent at {name!r}; pass an agent.safetensors file, a folder from `worldsim "
            f"train-agent`, or a shipped agent name "
            f"({', '.join(shipped) if shipped else 'none shipped yet'})")
    return candidate


def read_agent_header(file: str | Path) -> dict[str, Any]:
    """Read and check an agent file's JSON header without loading weights."""
    return read_worldsim_header(file, AGENT_FORMAT, AGENT_VERSION, "agent",
                                " (world models load with WorldModel.load)")


def load(path: str | Path, deterministic: bool = True,
         device: str | torch.device = "cpu", decision_steps: int | None = None,
         keep_bonus: float | None = None) -> Agent:
    """Load a portable agent.

    Args:
        path: an ``agent.safetensors`` file, a folder holding one (``worldsim train-agent
            --out``), or a shipped agent's short name (``"takecover"``).
        deterministic: argmax actions (default) or sampled ones.
        device: where to run it (CPU is plenty for one frame at a time).
        decision_steps: steps each chosen action is held (default: as in its dream; 1
            decides at every frame).
        keep_bonus: added to the held action's logit or Q-value at each new decision
            (default: the file's, 0 unless it was saved with one).

    Returns:
        The agent; ``reset(seed)`` it before each episode.
    """
    file = resolve_agent(path)
    header = read_agent_header(file)
    try:
        info_data = dict(header["info"])
        info_data["frame_size"] = tuple(info_data["frame_size"])
        info_data["action_names"] = tuple(info_data["action_names"])
        info = AgentInfo(**info_data)
        observation_data = dict(header["observation"])
        if observation_data.get("latent_shape") is not None:
            observation_data["latent_shape"] = tuple(observation_data["latent_shape"])
        observation = ObservationSpec(**observation_data)
        policy = PolicySpec(**header["policy"])
        if decision_steps is not None:
            policy = dataclasses.replace(policy, decision_steps=int(decision_steps))
        if keep_bonus is not None:
            policy = dataclasses.replace(policy, keep_bonus=float(keep_bonus))
        encoder = None
        if header.get("autoencoder") is not None:
            encoder = FrameEncoder(AutoencoderConfig(**header["autoencoder"]),
                                   observation.latent_bound)
        world_header = header.get("world_model")
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{file} has a malformed agent header ({error})") from error
    network = build_layers(policy.layers)
    with safe_open(str(file), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    _load_part(network, tensors, "policy.", file)
    if encoder is not None:
        _load_part(encoder, tensors, "encoder.", file)
    world_model = None
    if world_header is not None:
        from worldsim.world_model import WorldModel

        prefix = "world_model."
        world_model = WorldModel.from_tensors(
            world_header, {name[len(prefix):]: value for name, value in tensors.items()
                           if name.startswith(prefix)}, f"{file} (its world model)").to(device)
    return Agent(info, observation, policy, network.to(device),
                 encoder.to(device) if encoder is not None else None,
                 name=str(header.get("name", file.parent.name)), deterministic=deterministic,
                 world_model=world_model)


def _load_part(module: nn.Module, tensors: dict[str, Tensor], prefix: str, file: Path) -> None:
    state = {name[len(prefix):]: value for name, value in tensors.items()
             if name.startswith(prefix)}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{file}: the {prefix.rstrip('.')} weights do not match the "
                              f"header ({str(error).splitlines()[0]})") from error


def file_digest(path: str | Path) -> str:
    """sha256 of a file: how an agent names the world model it was trained in."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
