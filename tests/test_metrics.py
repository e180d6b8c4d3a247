"""Fidelity metrics: PSNR, SSIM and event precision/recall behave as documented."""

from __future__ import annotations

import numpy as np
import torch

from worldsim.metrics import event_precision_recall, psnr, ssim


def test_psnr_and_ssim_order_by_damage() -> None:
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 256, (2, 3, 3, 32, 32), generator=generator, dtype=torch.uint8)
    noise = torch.randn(clean.shape, generator=generator)
    slight = (clean.float() + 5 * noise).clamp(0, 255).to(torch.uint8)
    heavy = (clean.float() + 60 * noise).clamp(0, 255).to(torch.uint8)
    assert psnr(clean, clean).shape == (6,)
    assert torch.all(psnr(clean, clean) > 90)
    assert torch.all(psnr(slight, clean) > psnr(heavy, clean) + 10)
    torch.testing.assert_close(ssim(clean, clean), torch.ones(6))
    assert torch.all(ssim(slight, clean) > ssim(heavy, clean) + 0.2)
    # PSNR of a uniform error of 16 grey levels: 20 log10(255/16)
    torch.testing.assert_close(psnr(clean.clamp(0, 200) + 16, clean.clamp(0, 200)),
                               torch.full((6,), 20 * np.log10(255 / 16)), rtol=1e-4, atol=1e-4)


def test_event_precision_recall_with_tolerance() -> None:
    actual = [np.array([0] * 20 + [1], bool), np.array([0] * 10 + [1], bool)]
    # episode 1: fires 3 steps early (a run of 2 steps = one event); episode 2: fires far off
    first = np.zeros(21, bool)
    first[17:19] = True
    second = np.zeros(11, bool)
    second[1] = True
    scores = event_precision_recall([first, second], actual, tolerance=5)
    assert scores["recall"] == 0.5 and scores["precision"] == 0.5
    assert scores["predicted_events"] == 2 and scores["real_events"] == 2
    strict = event_precision_recall([first, second], actual, tolerance=2)
    assert strict["recall"] == 0.0
