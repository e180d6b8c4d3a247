"""Reference simulators that bracket every probe, and the adapter for a world model.

``TrueSimulator`` replays the real world and should score about 1 on every probe;
``CopyLastSimulator`` (the last context frame forever) and ``NoiseSimulator`` (random
frames) should score low, except where standing still *is* the law (``static_stability``).
A probe that cannot tell them apart measures nothing. ``world_model_simulator`` turns a
``worldsim.world_model.WorldModel`` into a simulator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from benchmarks.probes.core import Replayer, Start
from worldsim.errors import ConfigError

if TYPE_CHECKING:
    from worldsim.world_model import WorldModel


class TrueSimulator:
    """The real world as a simulator: replays each row's ``Start`` with the future actions.

    It needs the ``starts`` argument (probes always pass it).

    Args:
        check_context: fail when the last context frame is not the real frame of its start
            (replaying the wrong episode); turn off to wrap it in a simulator that alters
            its frames, whose long dreams are then prompted with altered frames.
    """

    name = "true"

    def __init__(self, check_context: bool = True) -> None:
        self.check_context = check_context
        self._replayer = Replayer()

    def simulate(self, context_frames: np.ndarray, context_actions: np.ndarray,
                 future_actions: np.ndarray, starts: Sequence[Start] | None = None
                 ) -> np.ndarray:
        """Replay the real frames after ``future_actions`` ``(B, K)``: ``(B, K, H, W, 3)``."""
        if starts is None or len(starts) != len(context_frames):
            raise ConfigError("TrueSimulator replays real episodes: pass one Start per context "
                              "(probes from benchmarks.probes do)")
        rows = []
        for start, context, actions in zip(starts, context_frames, future_actions):
            real = self._replayer.position(start)
            if self.check_context and not np.array_equal(real, context[-1]):
                raise ConfigError(f"the last context frame is not the real frame of {start.world} "
                                  f"seed {start.seed} after {len(start.actions)} actions")
            rows.append(self._replayer.play(start, actions)[0])
        return np.stack(rows)


class CopyLastSimulator:
    """Predicts that nothing ever changes: the last context frame, ``K`` times."""

    name = "copy_last"

    def simulate(self, context_frames: np.ndarray, context_actions: np.ndarray,
                 future_actions: np.ndarray, starts: Sequence[Start] | None = None
                 ) -> np.ndarray:
        """``(B, K, H, W, 3)``: each row's last context frame repeated."""
        last = context_frames[:, -1:]  # (B, 1, H, W, 3)
        return np.repeat(last, future_actions.shape[1], axis=1)


class NoiseSimulator:
    """Predicts uniformly random frames (a model that has collapsed to noise).

    Args:
        seed: seeds the frames; successive calls continue the stream.
    """

    name = "noise"

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def simulate(self, context_frames: np.ndarray, context_actions: np.ndarray,
                 future_actions: np.ndarray, starts: Sequence[Start] | None = None
                 ) -> np.ndarray:
        """``(B, K, H, W, 3)`` uniform random uint8 frames."""
        shape = (*future_actions.shape, *context_frames.shape[2:])
        return self._rng.integers(0, 256, shape, dtype=np.uint8)


class WorldModelSimulator:
    """A world model as a simulator (make it with ``world_model_simulator``).

    Each call prompts the model with the last ``context_frames`` (its window) of the real
    or dreamt context and rolls it open-loop with ``WorldModel.imagine``.
    """

    def __init__(self, model: WorldModel, seed: int = 0, precision: str = "fp32") -> None:
        import torch

        self.model = model
        self.precision = precision
        self.world = model.info.env  # what it was trained on ("" if unknown)
        # the options of the world it was trained on: probes dream from starts made with them
        self.options = {**model.info.env_options, "frame_size": tuple(model.info.frame_size)}
        self.name = f"world_model:{model.info.env or 'unknown'}"
        self._generator = torch.Generator(device=model.device).manual_seed(seed)

    def simulate(self, context_frames: np.ndarray, context_actions: np.ndarray,
                 future_actions: np.ndarray, starts: Sequence[Start] | None = None
                 ) -> np.ndarray:
        """Dream ``(B, K, H, W, 3)`` uint8 frames with the model."""
        import torch
        from einops import rearrange

        worlds = {start.world for start in starts or ()}
        if self.world and worlds - {self.world}:
            raise ConfigError(f"this world model was trained on {self.world}, not "
                              f"{', '.join(sorted(worlds))}; probe it on {self.world}")
        window = min(self.model.config.dynamics.context_frames, context_frames.shape[1])
        frames = torch.from_numpy(np.ascontiguousarray(
            rearrange(context_frames[:, -window:], "b t h w c -> b t c h w")))
        actions = torch.from_numpy(context_actions[:, context_actions.shape[1] - (window - 1):])
        with torch.no_grad(), self.model.autocast(self.precision):
            dreamt, _, _ = self.model.imagine(frames, actions.long(),
                                              torch.from_numpy(future_actions).long(),
                                              self._generator)  # (B, K, 3, H, W)
        return rearrange(dreamt.cpu().numpy(), "b k c h w -> b k h w c")


def world_model_simulator(model: WorldModel, seed: int = 0,
                          precision: str = "fp32") -> WorldModelSimulator:
    """Wrap a world model so that probes can run it.

    Args:
        model: a loaded ``WorldModel`` (``WorldModel.load(run)``), trained on a physics world
            at the frame size the probes use.
        seed: seeds the sampling noise; successive calls continue the stream.
        precision: ``"fp32"`` or ``"bf16"``.

    Returns:
        The simulator; its ``world`` is the env the model was trained on.
    """
    return WorldModelSimulator(model, seed, precision)
