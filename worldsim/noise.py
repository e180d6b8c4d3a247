"""Many reproducible noise streams, drawn for a whole batch in one operation.

A training batch and a batch of dreams both need noise per row that does not depend on the
other rows (so N processes reach the weights of one, and a dream is the same alone or among
thousands). One ``torch.Generator`` per row gives that, but costs one small draw per row:
on a GPU, thousands of kernel launches per step, which took most of a 4,096-dream step.

Here the noise is a pure function of (row seed, draw number, element index): a counter-based
generator (the SplitMix64 mixer on int64 tensors, then Box-Muller), so every row of a draw
comes out of a few element-wise kernels, on any device, with the same values on CPU and GPU
(up to float rounding of the Box-Muller step). Uniforms have 24 bits, so normal draws stop
at about 5.9 standard deviations (a Gaussian passes that once in 3e8 draws).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def _signed(value: int) -> int:
    """A 64-bit constant as the int64 it is stored as."""
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)
_BITS = 24  # uniform resolution: float32 holds 24 bits exactly


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 values (``>>`` on int64 keeps the sign)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: Tensor) -> Tensor:
    """SplitMix64's finaliser on int64 tensors (multiplications wrap modulo 2**64)."""
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def _uniform(keys: Tensor) -> Tensor:
    """Floats in (0, 1), one per int64 key: the top 24 bits of its mix, centred."""
    return (_shift_right(mix64(keys), 64 - _BITS).float() + 0.5) / (1 << _BITS)


class NoiseStreams:
    """One noise stream per row; every draw gives each row its next values.

    Row ``i`` of draw ``k`` depends only on ``seeds[i]`` and on how many draws row ``i`` has
    made since it was seeded, so rows can be re-seeded one at a time (a dream restarting)
    and a row's values never depend on its batch-mates.

    Args:
        seeds: ``(B,)`` integer seeds, one per row; the device of the draws.
    """

    def __init__(self, seeds: Tensor) -> None:
        self.seeds = seeds.to(torch.long)
        self.counters = torch.zeros_like(self.seeds)

    @classmethod
    def seeded(cls, seeds: Sequence[int], device: torch.device | str = "cpu") -> NoiseStreams:
        return cls(_seed_tensor(seeds, device))

    @property
    def device(self) -> torch.device:
        return self.seeds.device

    def __len__(self) -> int:
        return self.seeds.shape[0]

    def reseed(self, rows: Sequence[int], seeds: Sequence[int]) -> None:
        """Restart rows ``rows`` from ``seeds`` (their draw counts back to 0)."""
        index = torch.tensor(list(rows), dtype=torch.long, device=self.device)
        self.seeds[index] = _seed_tensor(seeds, self.device)
        self.counters[index] = 0

    def _keys(self, count: int) -> Tensor:
        """``(B, count)`` int64 keys of this draw (then the counters move on)."""
        row = mix64(self.seeds ^ mix64(self.counters * _GOLDEN + _GOLDEN))
        self.counters += 1
        index = torch.arange(1, count + 1, dtype=torch.long, device=self.device)
        return row[:, None] + index[None] * _GOLDEN

    def uniform(self, *row_shape: int) -> Tensor:
        """``(B, *row_shape)`` float32 uniform in (0, 1)."""
        count = math.prod(row_shape)
        return _uniform(self._keys(count)).reshape(len(self), *row_shape)

    def normal(self, *row_shape: int) -> Tensor:
        """``(B, *row_shape)`` float32 standard normal (Box-Muller on two uniforms)."""
        count = math.prod(row_shape)
        keys = self._keys(2 * count)
        u1, u2 = _uniform(keys[:, :count]), _uniform(keys[:, count:])
        radius = torch.sqrt(-2 * torch.log(u1))
        return (radius * torch.cos(2 * torch.pi * u2)).reshape(len(self), *row_shape)


def _seed_tensor(seeds: Sequence[int], device: torch.device | str) -> Tensor:
    """Python ints of any size -> ``(len(seeds),)`` int64 seeds in [0, 2**63)."""
    return torch.tensor([s % (1 << 63) for s in seeds], dtype=torch.long, device=device)
