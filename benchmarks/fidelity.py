"""World-model fidelity on held-out real episodes.

Measures, on the episodes the model never trained on (the dataset's held-out split):

- reconstruction PSNR of the compression network;
- open-loop prediction PSNR and SSIM at every horizon up to ``--horizon`` (reported at 1, 8
  and 32) given the real actions, beside the copy-last-frame baseline;
- termination prediction: the termination head run over whole real episodes (teacher
  forced); a death counts as found when the head fires within 5 game tics of it (within
  ``floor(5 / frame_skip)`` steps, at least 1).

    python -m benchmarks.fidelity --checkpoint runs/takecover --data data/takecover
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.frames import frame_skip
from worldsim.data import EpisodeDataset, SegmentSampler
from worldsim.metrics import event_precision_recall, psnr, ssim
from worldsim.train import heldout_reconstruction_psnr
from worldsim.world_model import WorldModel

REPORTED_HORIZONS = (1, 8, 32)


@torch.no_grad()
def open_loop(model: WorldModel, held_out: EpisodeDataset, horizon: int, clips: int,
              batch_size: int = 32, seed: int = 0, precision: str = "fp32") -> dict[str, Any]:
    """PSNR/SSIM per horizon of open-loop dreams vs the real clip and vs copying the last
    context frame."""
    context = model.config.dynamics.context_frames
    sampler = SegmentSampler(held_out, context + horizon, batch_size, seed=seed)
    curves: dict[str, list[torch.Tensor]] = {k: [] for k in
                                             ("psnr", "ssim", "copy_psnr", "copy_ssim")}
    generator = torch.Generator(device=model.device).manual_seed(seed)
    for step in range((clips + batch_size - 1) // batch_size):
        batch = sampler.batch(step)
        real = batch.frames[:, context:]  # (B, K, 3, H, W)
        with model.autocast(precision):
            predicted, _, _ = model.imagine(batch.frames[:, :context],
                                            batch.actions[:, :context - 1],
                                            batch.actions[:, context - 1:-1], generator)
        predicted = predicted.cpu()
        copy = batch.frames[:, context - 1:context].expand_as(real)
        for name, guess in (("", predicted), ("copy_", copy)):
            curves[f"{name}psnr"].append(psnr(guess, real).view(real.shape[:2]))
            curves[f"{name}ssim"].append(ssim(guess, real).view(real.shape[:2]))
    means = {k: torch.cat(v).mean(dim=0).tolist() for k, v in curves.items()}  # per horizon
    table = {}
    for h in (h for h in REPORTED_HORIZONS if h <= horizon):
        table[str(h)] = {k: round(v[h - 1], 3) for k, v in means.items()}
        table[str(h)]["psnr_gain_over_copy"] = round(means["psnr"][h - 1] - means["copy_psnr"][h - 1], 3)
    return {"clips": clips, "context_frames": context, "by_horizon": table,
            "curves": {k: [round(x, 3) for x in v] for k, v in means.items()}}


@torch.no_grad()
def termination(model: WorldModel, held_out: EpisodeDataset, tolerance_tics: int = 5,
                threshold: float = 0.5, batch_size: int = 64,
                sweep: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7)) -> dict[str, Any]:
    """Termination head over whole real episodes (real frames in, one step at a time).

    The headline precision/recall use ``threshold``; ``by_threshold`` gives them at each
    threshold of ``sweep``, and ``probability`` the head's mean output at real ends and
    elsewhere (a calibrated head on a partly observable end can sit well below 0.5).
    A predicted end counts when it comes within ``tolerance_tics`` game tics of the real one:
    ``floor(tolerance_tics / frame_skip)`` steps of the model's data (at least one).
    """
    skip = frame_skip(model.info.env_options)
    tolerance = max(1, tolerance_tics // skip)
    probabilities, actual = [], []
    for first in range(0, len(held_out), batch_size):
        episodes = [held_out.episode(p) for p in range(first, min(first + batch_size, len(held_out)))]
        longest = max(e.length for e in episodes)
        latents = torch.stack([  # (B, T+1, c, h, w), padded by repeating the last frame
            torch.cat([z, z[-1:].expand(longest - e.length, *z.shape[1:])])
            for e, z in ((e, model.encode_episode(e.frames)) for e in episodes)])
        actions = np.stack([np.concatenate([e.actions, np.zeros(longest - e.length, np.int64)])
                            for e in episodes])
        state = model.start(latents[:, :1], torch.zeros(len(episodes), 0, dtype=torch.long),
                            latents=True)
        probs = []
        for t in range(longest):
            result = model.observe(state, latents[:, t + 1], torch.from_numpy(actions[:, t]),
                                   latents=True)
            probs.append(result.termination_prob.cpu())
        probs_np = torch.stack(probs, dim=1).numpy()  # (B, T)
        for row, episode in enumerate(episodes):
            probabilities.append(probs_np[row, :episode.length])
            actual.append(episode.terminated)
    scores = event_precision_recall([p > threshold for p in probabilities], actual, tolerance)
    scores.update(tolerance=tolerance, tolerance_tics=tolerance_tics, frame_skip=skip,
                  threshold=threshold, episodes=len(held_out))
    scores["by_threshold"] = {
        str(t): {k: v for k, v in event_precision_recall(
            [p > t for p in probabilities], actual, tolerance).items()
            if k in ("recall", "precision")} for t in sweep}
    flat, ends = np.concatenate(probabilities), np.concatenate(actual).astype(bool)
    scores["probability"] = {"at_real_ends": float(flat[ends].mean()) if ends.any() else None,
                             "elsewhere": float(flat[~ends].mean())}
    # a calibrated hazard predicts as many ends as there are (1.0); a dream env samples
    # episode ends from it, so this ratio is how much too often (or too rarely) dreams die
    scores["expected_over_real_ends"] = (float(flat.sum() / ends.sum()) if ends.any() else None)
    return scores


def evaluate(checkpoint: str | WorldModel, data: str | Path, horizon: int = 32, clips: int = 256,
             seed: int = 0, precision: str = "fp32", unseen: bool = False) -> dict[str, Any]:
    """All fidelity figures of a world model on real episodes.

    Args:
        checkpoint: the world model (path, shipped name or a loaded model).
        data: recorded real play of the model's game.
        horizon: open-loop steps.
        clips: open-loop clips.
        seed: clip and noise seed.
        precision: inference precision.
        unseen: every episode of ``data`` is new to the model (e.g. recorded for the
            benchmark), so all are used; else only the held-out split of the training data.
    """
    model = checkpoint if isinstance(checkpoint, WorldModel) else WorldModel.load(checkpoint)
    dataset = EpisodeDataset(data, env=model.info.env or None, frame_size=model.info.frame_size)
    held_out = dataset if unseen else dataset.split(model.config.holdout_fraction)[1]
    started = time.perf_counter()
    results = {
        "checkpoint": str(checkpoint) if not isinstance(checkpoint, WorldModel) else None,
        "data": str(data), "env": dataset.env, "unseen_data": unseen,
        "held_out_episodes": len(held_out), "denoise_steps": model.sampler.denoise_steps,
        "reconstruction_psnr": round(heldout_reconstruction_psnr(model, held_out), 3),
        "open_loop": open_loop(model, held_out, horizon, clips, seed=seed, precision=precision),
        "termination": termination(model, held_out),
        "trained": model.info.trained,
    }
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def plot(results: dict[str, Any], path: Path) -> Path:
    """PSNR vs horizon, model against copy-last-frame."""
    from worldsim.media import pyplot, save_figure

    plt = pyplot()
    curves = results["open_loop"]["curves"]
    horizons = np.arange(1, len(curves["psnr"]) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, metric in zip(axes, ("psnr", "ssim")):
        ax.plot(horizons, curves[metric], label="worldsim dream")
        ax.plot(horizons, curves[f"copy_{metric}"], "--", label="copy last frame")
        ax.set_xlabel("horizon (steps)")
        ax.set_ylabel(metric.upper() + (" (dB)" if metric == "psnr" else ""))
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"open-loop fidelity on held-out {results['env']} episodes")
    return save_figure(fig, path)


def markdown(results: dict[str, Any]) -> str:
    rows = ["| horizon | PSNR dream | PSNR copy-last | gain | SSIM dream | SSIM copy-last |",
            "| --- | --- | --- | --- | --- | --- |"]
    for h, r in results["open_loop"]["by_horizon"].items():
        rows.append(f"| {h} | {r['psnr']:.2f} | {r['copy_psnr']:.2f} | "
                    f"{r['psnr_gain_over_copy']:+.2f} | {r['ssim']:.3f} | {r['copy_ssim']:.3f} |")
    term = results["termination"]
    rows.append("")
    rows.append(f"Reconstruction PSNR: {results['reconstruction_psnr']:.2f} dB. Termination "
                f"within {term.get('tolerance_tics', term['tolerance'])} tics "
                f"({term['tolerance']} steps): recall {term['recall']:.3f}, precision "
                f"{term['precision']:.3f} ({term['real_events']} deaths).")
    sweep = ", ".join(f"{t}: {v['recall']:.2f} / {v['precision']:.2f}"
                      for t, v in term.get("by_threshold", {}).items())
    if sweep:
        rows.append(f"Recall / precision by threshold: {sweep}.")
    if term.get("expected_over_real_ends") is not None:
        rows.append(f"Ends the hazard predicts per real end (calibration, 1 is right): "
                    f"{term['expected_over_real_ends']:.2f}.")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="world model: run folder, model.safetensors, or shipped name")
    parser.add_argument("--data", required=True,
                        help="the dataset the model was trained on (its held-out split is used)")
    parser.add_argument("--horizon", type=int, default=32, help="open-loop steps (default: 32)")
    parser.add_argument("--clips", type=int, default=256, help="open-loop clips (default: 256)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="inference precision (default: fp32)")
    parser.add_argument("--seed", type=int, default=0, help="clip and noise seed (default: 0)")
    parser.add_argument("--out-dir", default=None, help="results folder (default: benchmarks/results)")
    args = parser.parse_args(argv)

    from benchmarks.common import RESULTS_DIR, write_result

    results = evaluate(args.checkpoint, args.data, args.horizon, args.clips, args.seed,
                       args.precision)
    out_dir = Path(args.out_dir or RESULTS_DIR)
    path = write_result("fidelity", results, out_dir)
    plot(results, path.with_suffix(".png"))
    path.with_suffix(".md").write_text(markdown(results) + "\n")
    print(markdown(results))
    print(f"wrote {path} (+ .png, .md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
