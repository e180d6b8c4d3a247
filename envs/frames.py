"""Frame-size parsing, frame resizing and option checks shared by every env adapter.

Frame sizes are always ``(H, W)`` (height first, like array shapes), whatever form the user
typed them in. Resizing is antialiased bilinear (PIL's ``BILINEAR`` filter, run by torch's
uint8 kernel): when shrinking it averages over the whole footprint of each output pixel, so
thin fireballs and sprites do not alias away. Measured inside a VizDoom loop on the 2-core
dev box (160x120 -> 64x64): about 70 µs per frame, against about 130 µs for PIL's ``BOX``
filter, with visually identical frames (within 1 grey level of PIL ``BILINEAR``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from worldsim.errors import ConfigError

DEFAULT_FRAME_SIZE: tuple[int, int] = (64, 64)

_SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*(?:[xX,]\s*(\d+)\s*)?$")


def parse_frame_size(value: int | str | Sequence[int]) -> tuple[int, int]:
    """Read a frame size given as ``64``, ``"64"``, ``"64x96"`` or ``(64, 96)``.

    Args:
        value: one int (a square frame), a string ``"N"`` or ``"HxW"``, or an ``(H, W)`` pair.

    Returns:
        ``(H, W)``, both positive ints.

    Raises:
        ConfigError: the value is not one of the accepted forms or a side is not positive.
    """
    height: object
    width: object
    if isinstance(value, bool):
        raise ConfigError(f"frame size {value!r} is not a size; give e.g. 64, '64x96' or (64, 96)")
    if isinstance(value, (int, np.integer)):
        height = width = int(value)
    elif isinstance(value, str):
        match = _SIZE_PATTERN.match(value)
        if match is None:
            raise ConfigError(
                f"frame size {value!r} is not understood; give one number for a square frame "
                "('64') or height x width ('64x96')"
            )
        height = int(match.group(1))
        width = int(match.group(2)) if match.group(2) is not None else height
    elif isinstance(value, Sequence) and len(value) == 2:
        height, width = value
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                   for v in (height, width)):
            raise ConfigError(f"frame size {value!r} must be two ints (H, W), e.g. (64, 96)")
        height, width = int(height), int(width)  # type: ignore[arg-type]
    else:
        raise ConfigError(
            f"frame size {value!r} is not understood; give an int (64), a string ('64x96', "
            "height x width) or a pair (64, 96)"
        )
    assert isinstance(height, int) and isinstance(width, int)
    if height <= 0 or width <= 0:
        raise ConfigError(
            f"frame size {value!r} has a side <= 0; both height and width must be >= 1"
        )
    return height, width


def check_frame_size(
    size: tuple[int, int],
    env_name: str,
    *,
    minimum: tuple[int, int] = (1, 1),
    maximum: tuple[int, int] | None = None,
) -> tuple[int, int]:
    """Check that an adapter can produce frames of ``size``.

    Args:
        size: the requested ``(H, W)``.
        env_name: the env's name, for the message.
        minimum: the smallest ``(H, W)`` the adapter can draw.
        maximum: the largest native ``(H, W)`` it can render, or None for no limit.

    Returns:
        ``size``, unchanged.

    Raises:
        ConfigError: the size is outside what the adapter can produce.
    """
    height, width = size
    if height < minimum[0] or width < minimum[1]:
        raise ConfigError(
            f"{env_name} cannot produce {height}x{width} frames (HxW): the smallest it can draw "
            f"is {minimum[0]}x{minimum[1]}; pass a larger frame_size"
        )
    if maximum is not None and (height > maximum[0] or width > maximum[1]):
        raise ConfigError(
            f"{env_name} cannot produce {height}x{width} frames (HxW): its largest native "
            f"render is {maximum[0]}x{maximum[1]} and frames are never upscaled; pass a "
            "smaller frame_size"
        )
    return size


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB frame with antialiased bilinear resampling.

    Args:
        frame: ``(H, W, 3)`` uint8.
        size: the target ``(H, W)``.

    Returns:
        A new C-contiguous ``(size[0], size[1], 3)`` uint8 array (a copy even when no resize
        is needed, so the caller may keep it while the game overwrites its buffer).
    """
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(
            f"resize_frame wants an (H, W, 3) uint8 frame, got {frame.shape} {frame.dtype}"
        )
    height, width = size
    if frame.shape[0] == height and frame.shape[1] == width:
        return np.array(frame, copy=True, order="C")
    # torch is imported here, not at module level, so `import envs` stays cheap.
    import torch
    import torch.nn.functional as F

    if not frame.flags.c_contiguous or not frame.flags.writeable:
        frame = np.array(frame, copy=True, order="C")  # torch.from_numpy wants these
    pixels = torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0)  # (1, C, H, W), channels-last
    resized = F.interpolate(pixels, size=(height, width), mode="bilinear", antialias=True)
    planes = resized[0].numpy()  # (C, H, W): torch returns channels-first here
    # Per-channel copies: ~5 µs, against ~25 µs for one strided (C, H, W) -> (H, W, C) copy.
    out = np.empty((height, width, 3), np.uint8)
    for channel in range(3):
        out[..., channel] = planes[channel]
    return out


def frame_skip(options: Mapping[str, Any] | None) -> int:
    """Game tics per step in an env's ``make_env`` options (1 when not set)."""
    return int((options or {}).get("frame_skip", 1))


def positive_int(value: object, option: str, env_name: str) -> int:
    """Check an integer option that must be >= 1.

    Args:
        value: the value given.
        option: the option's name, for the message.
        env_name: the env's name, for the message.

    Returns:
        ``value`` as an int.

    Raises:
        ConfigError: ``value`` is not an int >= 1.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{env_name}: {option} must be an int >= 1, got {value!r}")
    return int(value)
