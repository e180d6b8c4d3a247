"""Spacetime patches and 3D rotary position embedding.

A latent video ``(B, T, c, h, w)`` is cut into patches of ``pt x ph x pw`` latent cells; each
patch is one token. Positions enter attention only through axial rotary embeddings (RoPE) on
the queries and keys, never as an added table, so one set of weights accepts any frame size,
aspect ratio and context length: the attention score between two tokens depends only on
their offset in time, row and column.

Axis names beyond the package's letters: ``pt ph pw`` are the patch extents in time, rows
and columns; ``heads`` counts attention heads and ``Dh`` is the width of one head
(``D = heads * Dh``).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from worldsim.errors import ConfigError


def patchify(latents: Tensor, patch: tuple[int, int, int]) -> Tensor:
    """Cut a latent video into spacetime patches.

    Args:
        latents: ``(B, T, c, h, w)``; ``T``, ``h`` and ``w`` divisible by the patch extents.
        patch: ``(pt, ph, pw)``.

    Returns:
        Tokens ``(B, T / pt, N, c * pt * ph * pw)`` with ``N = (h / ph) * (w / pw)`` tokens per
        group of ``pt`` frames, row-major over the patch grid.
    """
    pt, ph, pw = patch
    _, frames, _, height, width = latents.shape
    if frames % pt or height % ph or width % pw:
        raise ConfigError(
            f"latent video of {frames} frames and {height}x{width} cells cannot be cut into "
            f"{pt}x{ph}x{pw} patches; use a frame count and latent size divisible by the patch"
        )
    return rearrange(
        latents, "B (T pt) c (h ph) (w pw) -> B T (h w) (c pt ph pw)", pt=pt, ph=ph, pw=pw
    )


def unpatchify(tokens: Tensor, patch: tuple[int, int, int], grid: tuple[int, int]) -> Tensor:
    """Inverse of :func:`patchify`.

    Args:
        tokens: ``(B, T / pt, N, c * pt * ph * pw)``.
        patch: ``(pt, ph, pw)``.
        grid: the patch grid ``(h / ph, w / pw)`` (``N`` alone does not fix the aspect ratio).

    Returns:
        Latents ``(B, T, c, h, w)``.
    """
    pt, ph, pw = patch
    return rearrange(
        tokens, "B T (h w) (c pt ph pw) -> B (T pt) c (h ph) (w pw)", h=grid[0], w=grid[1],
        pt=pt, ph=ph, pw=pw,
    )


def token_positions(frame_positions: Tensor, grid: tuple[int, int]) -> Tensor:
    """(time, row, column) of every token of some frames.

    Args:
        frame_positions: ``(B, T)`` time position of each frame (any real numbers).
        grid: the patch grid ``(rows, columns)`` of one frame.

    Returns:
        ``(B, T, N, 3)`` float positions, tokens row-major as in :func:`patchify`.
    """
    rows = torch.arange(grid[0], device=frame_positions.device, dtype=torch.float32)
    cols = torch.arange(grid[1], device=frame_positions.device, dtype=torch.float32)
    row_col = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1)  # (h, w, 2)
    row_col = rearrange(row_col, "h w two -> (h w) two")  # (N, 2)
    batch, frames = frame_positions.shape
    time = frame_positions.float()[:, :, None, None].expand(batch, frames, row_col.shape[0], 1)
    space = row_col.expand(batch, frames, *row_col.shape)  # (B, T, N, 2)
    return torch.cat([time, space], dim=-1)  # (B, T, N, 3)


class RotaryEmbedding3D(nn.Module):
    """Axial rotary position embedding over (time, row, column).

    The head width ``Dh`` is split into three even parts, one per axis; each part rotates
    pairs of channels by angles ``position * frequency``. Rows and columns get
    ``2 * (Dh // 6)`` channels each, time the rest (time offsets matter most for dynamics).
    The frequencies follow from ``(Dh, theta)`` alone, so they are kept outside the state
    dict, in float64: angles of far-apart positions stay exact, and ``model.to(bfloat16)``
    cannot coarsen them.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        if head_dim % 2 or head_dim < 6:
            raise ConfigError(
                f"head width {head_dim} cannot carry a 3D rotary embedding; choose width and "
                "heads so that width / heads is even and at least 6"
            )
        space = 2 * (head_dim // 6)
        parts = (head_dim - 2 * space, space, space)  # channels for time, row, column
        frequencies, axes = [], []
        for axis, channels in enumerate(parts):
            pairs = channels // 2
            frequencies.append(theta ** (-torch.arange(pairs, dtype=torch.float64) / pairs))
            axes.append(torch.full((pairs,), axis))
        self.head_dim = head_dim
        self.frequencies = torch.cat(frequencies)  # (Dh / 2,) radians per unit of position
        self.axes = torch.cat(axes)  # (Dh / 2,) which of (time, row, column) each pair follows

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Cosines and sines for tokens at ``positions``.

        Args:
            positions: ``(..., 3)`` (time, row, column) per token.

        Returns:
            ``(cos, sin)``, each ``(..., Dh)`` float32, to pass to :func:`apply_rope`.
        """
        if self.frequencies.device != positions.device:
            self.frequencies = self.frequencies.to(positions.device)
            self.axes = self.axes.to(positions.device)
        angles = positions.double()[..., self.axes] * self.frequencies  # (..., Dh / 2)
        angles = torch.cat([angles, angles], dim=-1)  # (..., Dh)
        return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs ``(j, j + Dh/2)`` of ``x`` by the angles behind ``cos``/``sin``.

    Computed in ``x``'s dtype (under bfloat16 autocast the rotation is bfloat16 too, like
    every other activation; in float32 it is exact to float32).

    Args:
        x: ``(..., Dh)`` queries or keys, for example ``(B, heads, N, Dh)``.
        cos: broadcastable to ``x``.
        sin: broadcastable to ``x``.

    Returns:
        Rotated ``x``, same shape and dtype.
    """
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def check_divisible(height: int, width: int, factor: int, what: str, fix: str) -> None:
    """Raise :class:`ConfigError` unless ``height`` and ``width`` are multiples of ``factor``."""
    if height % factor or width % factor or height <= 0 or width <= 0:
        raise ConfigError(f"{what} of {height}x{width} is not divisible by {factor}; {fix}")


def is_power_of_two(value: int) -> bool:
    """True for 1, 2, 4, 8, ..."""
    return value >= 1 and value & (value - 1) == 0
