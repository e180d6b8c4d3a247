"""Dreams on film: render a dream, or the real game beside the dream with a PSNR strip.

- :func:`dream_clip` plays a policy inside a :class:`~envs.dream.DreamEnv` and keeps the
  frames (a dream that ends restarts, so a clip always has the steps asked for).
- :func:`compare` plays the real game with a policy, prompts the dream with the real
  game's first ``context_frames`` frames and replays the same actions in the dream
  (open loop: the dream never sees the real frames after the prompt).
- :func:`comparison_video` lays real | dream side by side, upscaled, with a strip below
  that plots the PSNR of every frame and marks the current one.
- :class:`VideoRecorder` writes frames as they come (mp4 streamed, GIF buffered),
  atomically: a crash leaves no half-written file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from worldsim.errors import ConfigError
from worldsim.world_model import WorldModel

PSNR_RANGE = (10.0, 40.0)  # dB shown from the bottom to the top of the strip
POLICY_CHOICES = "'random', 'sticky[:K]', or a trained agent's PATH (or agent:PATH)"


# ---- policies ----------------------------------------------------------------------------

def load_policy(spec: str, num_actions: int) -> Any:
    """A behaviour policy from its spec: random, sticky[:K], or a trained agent's path.

    Returns:
        An object with ``reset(seed)`` and ``act(frame) -> int`` (see ``envs.policies``).
    """
    from envs.policies import make_policy

    kind = spec.partition(":")[0]
    if kind in ("random", "sticky"):
        return make_policy(spec, num_actions)
    path = spec[len("agent:"):] if kind == "agent" else spec
    try:
        from agents import load as load_agent  # type: ignore[attr-defined]
    except ImportError as error:
        raise ConfigError(
            f"policy {spec!r}: loading trained agents (agents.load) is not available in this "
            f"worldsim yet; use 'random' or 'sticky'") from error
    return load_agent(path)


# ---- clips -------------------------------------------------------------------------------

@dataclass
class DreamClip:
    """A filmed dream: the first frame, then one frame per step."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    actions: np.ndarray  # (S,) the action of each step
    rewards: np.ndarray  # (S,) predicted rewards
    termination_prob: np.ndarray  # (S,) predicted episode-end probabilities
    episode_starts: list[int]  # frame indices where a dream (re)started; 0 first


def dream_clip(model: WorldModel, steps: int, policy: str = "random", seed: int = 0,
               **dream_options: Any) -> DreamClip:
    """Play ``policy`` for ``steps`` steps in a dream; a dream that ends starts again.

    Args:
        model: the world model.
        steps: dream steps; the clip has ``1 + steps + restarts`` frames (a restarted
            dream's first frame follows the last frame of the one that ended).
        policy: see :func:`load_policy`; it acts on the dream's frames.
        seed: seeds the dream (and the policy).
        **dream_options: DreamEnv options (``temperature``, ``dataset``, ``termination``...).
    """
    from envs.dream import DreamEnv

    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    env = DreamEnv(model=model, obs_mode="rgb", **dream_options)
    actor = load_policy(policy, model.num_actions)
    actor.reset(seed)
    observation, _ = env.reset(seed=seed)
    frames, actions, rewards, ends, starts = [observation], [], [], [], [0]
    for _ in range(steps):
        action = int(actor.act(observation))
        observation, reward, terminated, truncated, info = env.step(action)
        frames.append(observation)
        actions.append(action)
        rewards.append(float(reward))
        ends.append(info["termination_prob"])
        if terminated or truncated:
            observation, _ = env.reset()
            actor.reset(seed + len(starts))
            starts.append(len(frames))
            frames.append(observation)
    env.close()
    return DreamClip(np.stack(frames), np.array(actions), np.array(rewards, np.float32),
                     np.array(ends, np.float32), starts)


def real_opening(env: Any, seed: int, length: int, act: Callable[[np.ndarray], int]
                 ) -> tuple[np.ndarray, np.ndarray, bool]:
    """Play the first ``length`` frames of a real episode: a prompt for a dream.

    Returns:
        Frames ``(T0, H, W, 3)``, the ``T0 - 1`` actions between them (``T0 < length`` only
        if the episode ended first), and whether the episode ended.
    """
    observation, _ = env.reset(seed=seed)
    frames, actions = [observation], []
    while len(frames) < length:
        action = int(act(observation))
        observation, _, terminated, truncated, _ = env.step(action)
        frames.append(observation)
        actions.append(action)
        if terminated or truncated:
            return np.stack(frames), np.array(actions, np.int64), True
    return np.stack(frames), np.array(actions, np.int64), False


@dataclass
class Comparison:
    """The real game and the dream from the same prompt under the same actions."""

    real: np.ndarray  # (T, H, W, 3) uint8 real frames after the prompt
    dream: np.ndarray  # (T, H, W, 3) uint8 the dream's frames for the same steps
    psnr: np.ndarray  # (T,) dB, dream against real, per frame
    actions: np.ndarray  # (T,) the action that led into each frame
    prompt_frames: int  # real frames the dream was prompted with


def compare(model: WorldModel, steps: int, policy: str = "random", seed: int = 0,
            **dream_options: Any) -> Comparison:
    """Real game vs dream, open loop, from the same start frames and the same actions.

    The real game (``model.info.env`` with the checkpoint's env options) is reset with
    ``seed`` and played by ``policy`` for ``context_frames`` frames; those prompt the dream.
    Then ``steps`` more real steps are played (fewer if the real episode ends) and the dream
    is stepped with the same actions; the dream's termination head is ignored so both run
    the whole way.
    """
    import envs
    from envs.dream import DreamEnv
    from worldsim.metrics import psnr

    if not model.info.env:
        raise ConfigError("the checkpoint does not name the game it was trained on; cannot "
                          "play the real game beside the dream")
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    real_env = envs.make_env(model.info.env, **model.info.env_options)
    actor = load_policy(policy, model.num_actions)
    actor.reset(seed)
    try:
        context = model.config.dynamics.context_frames
        prompt, prompt_actions, ended = real_opening(real_env, seed, context, actor.act)
        if ended:
            raise ConfigError(f"the real episode (seed {seed}) ended within the {context} "
                              "prompt frames; try another seed")
        observation = prompt[-1]
        real, actions = [], []
        for _ in range(steps):
            action = int(actor.act(observation))
            observation, _, terminated, truncated, _ = real_env.step(action)
            real.append(observation)
            actions.append(action)
            if terminated or truncated:
                break
    finally:
        real_env.close()
    options = {"termination": "never", "max_episode_steps": len(actions) + 1, **dream_options}
    dream_env = DreamEnv(model=model, obs_mode="rgb", **options)
    dream_env.reset(seed=seed, options={"prompt": (prompt, prompt_actions)})
    dream = [dream_env.step(action)[0] for action in actions]
    real_frames, dream_frames = np.stack(real), np.stack(dream)
    scores = psnr(torch.from_numpy(dream_frames).permute(0, 3, 1, 2),
                  torch.from_numpy(real_frames).permute(0, 3, 1, 2)).numpy()
    return Comparison(real_frames, dream_frames, scores, np.array(actions), len(prompt))


# ---- drawing -----------------------------------------------------------------------------

def comparison_video(comparison: Comparison, scale: int = 4) -> np.ndarray:
    """Real | dream side by side, upscaled, over a strip plotting PSNR per frame.

    Returns:
        ``(T, H', W', 3)`` uint8 frames.
    """
    from PIL import Image, ImageDraw, ImageFont

    from worldsim.media import upscale

    pair = np.concatenate([comparison.real, comparison.dream], axis=2)  # (T, H, 2W, 3)
    pair = upscale(pair, scale)
    steps, _, width, _ = pair.shape
    text_height = max(12, 4 * scale)
    height = text_height + max(24, 12 * scale)
    font = ImageFont.load_default(size=max(10, 3 * scale))
    low, high = PSNR_RANGE
    values = np.clip(np.nan_to_num(comparison.psnr, posinf=high), low, high)
    xs = (np.arange(steps) + 0.5) * width / steps
    ys = height - 2 - (values - low) / (high - low) * (height - text_height - 4)
    points = list(zip(xs.tolist(), ys.tolist()))
    strip_frames = []
    for t in range(steps):
        strip = Image.new("RGB", (width, height), (24, 24, 28))
        draw = ImageDraw.Draw(strip)
        if steps > 1:
            draw.line(points, fill=(90, 90, 100), width=1)  # the whole run, dim
        if t > 0:
            draw.line(points[:t + 1], fill=(90, 200, 255), width=2)  # up to now, bright
        draw.line([(xs[t], text_height), (xs[t], height)], fill=(255, 210, 80), width=1)
        label = (f"real | dream   step {t + 1}/{steps}   PSNR {comparison.psnr[t]:.1f} dB   "
                 f"mean {float(np.mean(comparison.psnr[:t + 1])):.1f}   "
                 f"(plot {low:.0f}-{high:.0f} dB)")
        draw.text((4, 1), label, fill=(235, 235, 235), font=font)
        strip_frames.append(np.asarray(strip))
    return np.concatenate([pair, np.stack(strip_frames)], axis=1)


# ---- writing -----------------------------------------------------------------------------

class VideoRecorder:
    """Write ``(H, W, 3)`` uint8 frames to an .mp4 (streamed) or .gif (buffered) file,
    atomically: the file appears only when :meth:`close` succeeds.

    Args:
        path: the target ``.mp4`` or ``.gif``.
        fps: playback rate.
    """

    def __init__(self, path: str | Path, fps: float) -> None:
        self.path = Path(path)
        self.fps = fps
        self.frames = 0
        suffix = self.path.suffix.lower()
        if suffix not in (".mp4", ".gif"):
            raise ConfigError(f"video path must end in .mp4 or .gif, got {self.path.name}")
        self._buffer: list[np.ndarray] | None = [] if suffix == ".gif" else None
        self._writer: Any = None
        self._tmp: Path | None = None

    def add(self, frame: np.ndarray) -> None:
        """Append one frame; all frames must have the size of the first."""
        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        self.frames += 1
        if self._buffer is not None:
            self._buffer.append(frame)
            return
        if self._writer is None:
            import imageio.v2 as imageio

            self.path.parent.mkdir(parents=True, exist_ok=True)
            # FFMPEG refuses paths without a video extension: the temp name ends in .mp4
            handle, name = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp.mp4",
                                            prefix=f".{self.path.stem}.")
            os.close(handle)
            self._tmp = Path(name)
            self._writer = imageio.get_writer(
                self._tmp, format="FFMPEG", fps=self.fps, codec="libx264", quality=8,
                macro_block_size=1, ffmpeg_log_level="error")
        height, width = frame.shape[:2]
        if height % 2 or width % 2:  # H.264 needs even sizes
            frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)))
        self._writer.append_data(frame)

    def close(self) -> Path:
        """Finish the file and return its path."""
        if self.frames == 0:
            raise ConfigError(f"no frames were recorded for {self.path}")
        if self._buffer is not None:
            from worldsim.media import write_video

            write_video(self.path, np.stack(self._buffer), fps=max(1, round(self.fps)))
            self._buffer = []
            return self.path
        self._writer.close()
        assert self._tmp is not None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self._tmp, 0o666 & ~umask)  # mkstemp makes it private; a video is not
        os.replace(self._tmp, self.path)
        self._writer, self._tmp = None, None
        return self.path

    def abort(self) -> None:
        """Drop what was written; no file appears."""
        if self._writer is not None:
            self._writer.close()
        if self._tmp is not None and self._tmp.exists():
            self._tmp.unlink()
        self._writer, self._tmp, self._buffer = None, None, None

    def __enter__(self) -> VideoRecorder:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()
