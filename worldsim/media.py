"""Pictures and videos of frames: grids, side-by-side clips, mp4/GIF files, TensorBoard.

Frames here are uint8 tensors or arrays ``(..., 3, H, W)`` (channels first, as models use
them) unless a function says otherwise.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange

from worldsim.utils import atomic_path


def _numpy(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    return np.asarray(frames, dtype=np.uint8)


def frame_grid(frames: torch.Tensor | np.ndarray, gap: int = 2) -> np.ndarray:
    """Rows x columns of frames ``(R, K, 3, H, W)`` -> one image ``(H', W', 3)`` uint8."""
    array = _numpy(frames)
    rows, cols, _, height, width = array.shape
    padded = np.full((rows, cols, 3, height + gap, width + gap), 255, dtype=np.uint8)
    padded[..., :height, :width] = array
    return rearrange(padded, "R K C H W -> (R H) (K W) C")[:-gap, :-gap]


def side_by_side(left: torch.Tensor | np.ndarray, right: torch.Tensor | np.ndarray) -> np.ndarray:
    """Two batches of clips ``(B, T, 3, H, W)`` -> one clip ``(T, H*B, 2*W, 3)``: real | dream,
    one pair of rows per batch element."""
    a, b = _numpy(left), _numpy(right)
    steps = min(a.shape[1], b.shape[1])
    pair = np.concatenate([a[:, :steps], b[:, :steps]], axis=-1)  # (B, T, 3, H, 2W)
    return rearrange(pair, "B T C H W -> T (B H) W C")


def upscale(clip: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of ``(T, H, W, 3)`` frames (crisp pixels for viewing)."""
    return clip.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else clip


def write_video(path: str | Path, clip: np.ndarray, fps: int = 35, scale: int = 1) -> Path:
    """Write ``(T, H, W, 3)`` uint8 frames as .mp4 (H.264) or .gif, atomically."""
    import imageio.v2 as imageio

    target = Path(path)
    frames = upscale(_numpy(clip), scale)
    suffix = target.suffix.lower()
    with atomic_path(target, suffix=".tmp" + suffix) as tmp:
        if suffix == ".gif":
            imageio.mimsave(tmp, list(frames), format="GIF", duration=1 / fps, loop=0)
        elif suffix == ".mp4":
            height, width = frames.shape[1:3]
            if height % 2 or width % 2:  # H.264 needs even sizes
                frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)))
            writer = imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264",
                                        quality=8, macro_block_size=1,
                                        ffmpeg_log_level="error")
            for frame in frames:
                writer.append_data(frame)
            writer.close()
        else:
            raise ValueError(f"video path must end in .mp4 or .gif, got {target.name}")
    return target


def gif_bytes(clip: np.ndarray, fps: int = 10) -> bytes:
    import imageio.v2 as imageio

    buffer = io.BytesIO()
    imageio.mimsave(buffer, list(_numpy(clip)), format="GIF", duration=1 / fps, loop=0)
    return buffer.getvalue()


def add_video_summary(writer: Any, tag: str, clip: np.ndarray, step: int, fps: int = 10) -> None:
    """Log ``(T, H, W, 3)`` frames to TensorBoard as an animated GIF image (what
    ``add_video`` produces, without its moviepy dependency)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    height, width = clip.shape[1:3]
    image = Summary.Image(height=height, width=width, colorspace=3,
                          encoded_image_string=gif_bytes(clip, fps))
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]),
                                          step)


def pyplot() -> Any:
    """matplotlib's pyplot on the headless Agg backend (plots go to files, never windows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Lay out ``fig``, write it to ``path`` atomically (format from the extension), close it."""
    fig.tight_layout()
    target = Path(path)
    with atomic_path(target, suffix=f".tmp{target.suffix}") as tmp:
        fig.savefig(tmp, dpi=dpi)
    pyplot().close(fig)
    return target
