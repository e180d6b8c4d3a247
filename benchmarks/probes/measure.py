"""Finding objects in frames by colour: masks, blobs, centroids and counts.

Probes measure dreams from decoded frames only. The physics worlds draw every object with a
known flat colour (``envs.physics.PALETTE``), so an object is a 4-connected blob of pixels
within ``COLOUR_TOLERANCE`` of its colour (in every channel), and its position is the
blob's centroid. A blob counts as the object only when its area is between
``MIN_AREA_FRACTION`` and ``MAX_AREA_FRACTION`` of the drawn object's area: a blurry model
still passes, speckles of noise and smears across the frame do not.

Positions are ``(x, y)`` in pixels with pixel centres at ``+0.5``, as in ``envs.physics``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

COLOUR_TOLERANCE = 48
"""Largest per-channel difference from an object's colour for a pixel to belong to it."""
MIN_AREA_FRACTION = 0.3
MAX_AREA_FRACTION = 3.0


@dataclass(frozen=True)
class Blobs:
    """The 4-connected blobs of a stack of masks, one row per blob."""

    frame: np.ndarray
    """(M,) index of the frame (mask) each blob is in."""
    centroid: np.ndarray
    """(M, 2) ``(x, y)`` centroid in pixels."""
    area: np.ndarray
    """(M,) pixels in the blob."""


def colour_mask(frames: np.ndarray, colour: Sequence[int],
                tolerance: int = COLOUR_TOLERANCE) -> np.ndarray:
    """Pixels of a colour.

    Args:
        frames: ``(..., H, W, 3)`` uint8 frames.
        colour: ``(r, g, b)``.
        tolerance: largest per-channel difference that still matches.

    Returns:
        ``(..., H, W)`` bool.
    """
    difference = np.abs(frames.astype(np.int16) - np.asarray(colour, np.int16))
    return difference.max(axis=-1) <= tolerance


def find_blobs(masks: np.ndarray) -> Blobs:
    """Label the 4-connected blobs of every mask of a stack.

    Min-label propagation with pointer jumping, vectorised over the whole stack: each pixel
    takes the smallest label among itself and its neighbours, then follows its label (the
    flat index of a pixel of the same blob) to that pixel's label; a few rounds per doubling
    of the blob diameter.

    Args:
        masks: ``(N, H, W)`` bool.

    Returns:
        The blobs, ordered by frame.
    """
    count, height, width = masks.shape
    outside = masks.size  # larger than every flat index
    labels = np.where(masks, np.arange(masks.size).reshape(masks.shape), outside)
    while True:
        smallest = labels.copy()
        np.minimum(smallest[:, 1:], labels[:, :-1], out=smallest[:, 1:])
        np.minimum(smallest[:, :-1], labels[:, 1:], out=smallest[:, :-1])
        np.minimum(smallest[:, :, 1:], labels[:, :, :-1], out=smallest[:, :, 1:])
        np.minimum(smallest[:, :, :-1], labels[:, :, 1:], out=smallest[:, :, :-1])
        smallest = np.where(masks, smallest, outside).ravel()
        inside = smallest < outside
        smallest[inside] = smallest[smallest[inside]]
        smallest = smallest.reshape(masks.shape)
        if np.array_equal(smallest, labels):
            break
        labels = smallest
    frame_index, rows, columns = np.nonzero(masks)
    blob_labels, blob_of_pixel, area = np.unique(labels[frame_index, rows, columns],
                                                 return_inverse=True, return_counts=True)
    x = np.bincount(blob_of_pixel, weights=columns + 0.5) / area
    y = np.bincount(blob_of_pixel, weights=rows + 0.5) / area
    return Blobs(blob_labels // (height * width), np.stack([x, y], axis=-1).reshape(-1, 2), area)


def _object_blobs(frames: np.ndarray, colour: Sequence[int], area: float) -> Blobs:
    """Blobs of ``colour`` whose area fits an object of ``area`` pixels."""
    blobs = find_blobs(colour_mask(frames, colour))
    keep = (blobs.area >= MIN_AREA_FRACTION * area) & (blobs.area <= MAX_AREA_FRACTION * area)
    return Blobs(blobs.frame[keep], blobs.centroid[keep], blobs.area[keep])


def locate(frames: np.ndarray, colour: Sequence[int], area: float) -> np.ndarray:
    """Where one object of a known colour is in each frame.

    Args:
        frames: ``(N, H, W, 3)`` uint8.
        colour: the object's ``(r, g, b)``.
        area: its drawn area in pixels.

    Returns:
        ``(N, 2)`` ``(x, y)`` centroid of the largest fitting blob, NaN where there is none.
    """
    blobs = _object_blobs(frames, colour, area)
    positions = np.full((len(frames), 2), np.nan)
    for index in np.argsort(blobs.area, kind="stable"):  # larger blobs overwrite smaller
        positions[blobs.frame[index]] = blobs.centroid[index]
    return positions


def count_objects(frames: np.ndarray, colours: Sequence[Sequence[int]], area: float) -> np.ndarray:
    """How many objects of the given colours each frame shows.

    Args:
        frames: ``(N, H, W, 3)`` uint8.
        colours: the colours objects may have.
        area: the drawn area of one object in pixels.

    Returns:
        ``(N,)`` int: fitting blobs of any of the colours.
    """
    counts = np.zeros(len(frames), np.int64)
    for colour in colours:
        counts += np.bincount(_object_blobs(frames, colour, area).frame, minlength=len(frames))
    return counts


def block_means(frames: np.ndarray, block: int = 8) -> np.ndarray:
    """Mean colour of each ``block`` x ``block`` tile, ignoring the ragged right and bottom.

    Args:
        frames: ``(N, H, W, 3)``.
        block: tile side in pixels.

    Returns:
        ``(N, H // block, W // block, 3)`` float64.
    """
    count, height, width, channels = frames.shape
    rows, columns = height // block, width // block
    tiles = frames[:, :rows * block, :columns * block].astype(np.float64)
    return tiles.reshape(count, rows, block, columns, block, channels).mean(axis=(2, 4))
