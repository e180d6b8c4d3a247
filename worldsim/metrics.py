"""Image-quality and event-detection metrics for world-model fidelity."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def psnr(prediction: Tensor, target: Tensor) -> Tensor:
    """PSNR in dB of uint8 frames ``(..., 3, H, W)``, one value per frame (flattened)."""
    error = (prediction.float() - target.float()).pow(2).mean(dim=(-3, -2, -1))
    return (10 * torch.log10(255.0**2 / error.clamp_min(1e-10))).flatten()


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    return kernel[:, None] * kernel[None, :]  # (size, size)


def ssim(prediction: Tensor, target: Tensor) -> Tensor:
    """SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5) of uint8 frames
    ``(..., 3, H, W)``, averaged over channels, one value per frame (flattened)."""
    x = prediction.float().flatten(0, -4) / 255.0  # (F, 3, H, W)
    y = target.float().flatten(0, -4) / 255.0
    channels = x.shape[1]
    window = _gaussian_window().to(x.device)[None, None].repeat(channels, 1, 1, 1)

    def blur(image: Tensor) -> Tensor:
        return F.conv2d(image, window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.mean(dim=(1, 2, 3))


def event_precision_recall(predicted: list[np.ndarray], actual: list[np.ndarray],
                           tolerance: int) -> dict[str, float]:
    """Precision and recall of predicted events (e.g. deaths) against real ones.

    A real event counts as found if some predicted event lies within ``tolerance`` steps of
    it; a predicted event counts as correct if some real event lies within ``tolerance``.
    Runs of consecutive predicted steps count as one event (at the run's first step).

    Args:
        predicted: per episode, bool array ``(T,)``: the detector fired at step t.
        actual: per episode, bool array ``(T,)``: the event happened at step t.
        tolerance: allowed distance in steps.
    """
    found = real = correct = fired = 0
    for guess, truth in zip(predicted, actual):
        onsets = np.flatnonzero(guess & ~np.concatenate([[False], guess[:-1]]))
        events = np.flatnonzero(truth)
        real += len(events)
        fired += len(onsets)
        found += sum(bool(np.any(np.abs(onsets - e) <= tolerance)) for e in events)
        correct += sum(bool(np.any(np.abs(events - o) <= tolerance)) for o in onsets)
    return {
        "recall": found / real if real else float("nan"),
        "precision": correct / fired if fired else float("nan"),
        "real_events": real,
        "predicted_events": fired,
    }


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve: the chance that a random positive scores above a random
    negative (ties count half). ``None`` when either class is missing."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average rank (1-based) within each run of tied scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2
    return float((ranks[labels].sum() - positives * (positives + 1) / 2)
                 / (positives * negatives))
