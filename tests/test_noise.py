"""Counter-based noise streams: standard statistics, rows independent of their batch-mates,
reproducible and re-seedable per row."""

import math

import torch

from worldsim.noise import NoiseStreams, mix64


def test_normal_and_uniform_have_their_moments():
    streams = NoiseStreams.seeded(range(64))
    normal = streams.normal(4096).double()
    assert abs(normal.mean().item()) < 0.01
    assert abs(normal.std().item() - 1) < 0.01
    assert abs((normal**4).mean().item() - 3) < 0.05  # Gaussian tails, not uniform's 1.8
    inside = (normal.abs() < 1).double().mean().item()
    assert abs(inside - math.erf(1 / math.sqrt(2))) < 0.005
    uniform = streams.uniform(4096).double()
    assert 0 < uniform.min() and uniform.max() < 1
    assert abs(uniform.mean().item() - 0.5) < 0.005
    assert abs(uniform.var().item() - 1 / 12) < 0.002


def test_rows_and_draws_are_uncorrelated():
    streams = NoiseStreams.seeded([0, 1])
    first, second = streams.normal(20_000), streams.normal(20_000)
    for a, b in ((first[0], first[1]), (first[0], second[0])):
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 0.03
    # neighbouring elements of one row are not correlated either
    row = first[0]
    assert abs(torch.corrcoef(torch.stack([row[:-1], row[1:]]))[0, 1].item()) < 0.03


def test_a_row_does_not_depend_on_its_batch_mates():
    alone = NoiseStreams.seeded([7])
    crowd = NoiseStreams.seeded([3, 7, 11, 13])
    for _ in range(3):
        torch.testing.assert_close(alone.normal(2, 3)[0], crowd.normal(2, 3)[1], rtol=0, atol=0)


def test_same_seed_same_values_and_reseed_restarts_a_row():
    a, b = NoiseStreams.seeded([5, 6]), NoiseStreams.seeded([5, 6])
    first = a.normal(8)
    assert torch.equal(first, b.normal(8))
    assert not torch.equal(first, a.normal(8))  # the next draw moves on
    a.reseed([1], [5])
    again = a.normal(8)
    assert torch.equal(again[1], first[0])  # row 1 now replays seed 5 from its start
    assert not torch.equal(again[0], first[0])


def test_mix64_is_a_bijection_on_a_sample_and_wraps():
    keys = torch.arange(-50_000, 50_000, dtype=torch.long)
    assert torch.unique(mix64(keys)).numel() == keys.numel()
    big = torch.tensor([2**63 - 1, -(2**63)], dtype=torch.long)
    assert mix64(big).dtype == torch.long
