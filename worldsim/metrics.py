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


def dodge_figures(survives: np.ndarray, risk: np.ndarray,
                  choice: np.ndarray | None = None) -> dict[str, object]:
    """How well a risk per action picks a surviving move, over the *decisive* states (some
    action dies, another survives; the others are skipped).

    Args:
        survives: ``(N, A)`` bool, whether holding each action survived (the real game).
        risk: ``(N, A)`` the predicted risk of each action (higher: more likely to end).
        choice: ``(N,)`` the action chosen per state (default: the lowest risk).

    Returns ``decisive_states``; ``accuracy``, the share of them where the choice survives,
    beside ``chance`` (the share of surviving actions) and ``fixed_action_accuracy`` (each
    action always chosen); ``contrast_auc``: over pairs of a dying and a surviving action of
    one state, the chance the dying one has the higher risk (ties count half).
    """
    survives, risk = np.asarray(survives, dtype=bool), np.asarray(risk, dtype=np.float64)
    chosen = np.argmin(risk, axis=1) if choice is None else np.asarray(choice)
    decisive = survives.any(axis=1) & ~survives.all(axis=1)
    if not decisive.any():
        return {"decisive_states": 0, "accuracy": None, "chance": None,
                "contrast_auc": None, "fixed_action_accuracy": None}
    survives, risk, chosen = survives[decisive], risk[decisive], chosen[decisive]
    pairs = []
    for lives, row in zip(survives, risk, strict=True):
        gaps = row[~lives][:, None] - row[lives][None, :]  # dying minus surviving
        pairs.append(np.where(gaps > 0, 1.0, np.where(gaps == 0, 0.5, 0.0)).ravel())
    return {"decisive_states": int(decisive.sum()),
            "accuracy": round(float(survives[np.arange(len(chosen)), chosen].mean()), 4),
            "chance": round(float(survives.mean()), 4),
            "contrast_auc": round(float(np.concatenate(pairs).mean()), 4),
            "fixed_action_accuracy": [round(float(v), 4) for v in survives.mean(axis=0)]}
