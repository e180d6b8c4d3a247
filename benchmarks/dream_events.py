"""How often things happen in a TakeCover dream, against the real game: monsters and
fireballs per frame, and deaths, under one or more sampler settings.

An agent learns to dodge only if its dream throws fireballs at it as often as the real game
does. This measures that directly. Real: ``--episodes`` TakeCover episodes played from
seeded resets with sticky random actions (runs of 1 to 12 steps of one action). Dream: the
checkpoint's stored opening prompts, repeated to ``--dreams`` rows, driven by sticky random
actions of the same kind. Both are measured on the same steps after the prompt
(``context .. context + horizon``) by the probes' ``TakeCoverDetector`` (trained on
engine-labelled real frames), counting a frame only while its episode (or dream) is alive:
a dream dies at the first step whose predicted termination probability exceeds 0.5. The
"sampled" death share is what the dream env does by default: the chance that sampling each
step's end from the predicted hazard ends the dream within the horizon; "by threshold" is
the share a dream env with ``termination="threshold"`` ends, at each of ``THRESHOLDS``.
What an agent sees is compared too (:func:`observation_stats`): the spread of the latent
observations (the encoder's on real frames, the dream's own) and the frames' sharpness.

    python -m benchmarks.dream_events --checkpoint takecover
    python -m benchmarks.dream_events --checkpoint runs/tc --sampler default \\
        --sampler t1.5:temperature=1.5 --sampler s20:sigma_max=20,denoise_steps=4

Writes ``benchmarks/results/dream-events-<date>.json`` (with the machine) and prints a table.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

from benchmarks.common import write_result
from worldsim.diffusion.edm import (
    SAMPLER_FIELDS,
    parse_sampler_settings,
    sampler_settings,
    with_sampler_settings,
)
from worldsim.errors import ConfigError


def parse_sampler(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME[:KEY=VALUE,...]`` -> (name, settings); ``default`` alone is the model's own."""
    name, _, rest = spec.partition(":")
    if not name:
        raise ConfigError(f"--sampler {spec!r} needs a name before the colon")
    return name, parse_sampler_settings(rest)


def event_rates(counts: np.ndarray, alive: np.ndarray) -> dict[str, float]:
    """Mean count per live frame, over all steps and over the first and last 10 steps.

    Args:
        counts: ``(N, H)`` objects found per episode and step.
        alive: ``(N, H)`` bool, whether the episode was still going at that step.
    """
    def rate(window: slice) -> float:
        live = alive[:, window]
        return round(float(counts[:, window][live].sum() / max(live.sum(), 1)), 3)

    return {"all": rate(slice(None)), "first_10": rate(slice(0, 10)), "last_10": rate(slice(-10, None))}


def measure(detector: Any, frames: np.ndarray, alive: np.ndarray) -> dict[str, Any]:
    """Monsters and fireballs per live frame of ``frames`` ``(N, H, h, w, 3)`` uint8."""
    episodes, horizon = alive.shape
    flat = frames.reshape(-1, *frames.shape[2:])
    fireballs = np.bincount(detector.fireballs(flat).frame, minlength=len(flat))
    monsters = detector.count_monsters(flat)
    return {"monsters": event_rates(monsters.reshape(episodes, horizon), alive),
            "fireballs": event_rates(fireballs.reshape(episodes, horizon), alive),
            "died_within_horizon": round(float(1 - alive[:, -1].mean()), 3),
            "episodes": episodes}


def observation_stats(frames: np.ndarray, alive: np.ndarray, latents: torch.Tensor,
                      ) -> dict[str, float]:
    """What an agent sees on the live steps: the spread of its latent observations and the
    sharpness of its frames. A dream blurrier than the game (lower spread, lower
    sharpness) trains an agent on inputs it will not meet in the real game.

    Args:
        frames: ``(N, H, h, w, 3)`` uint8.
        alive: ``(N, H)`` bool, which steps count.
        latents: ``(N, H, c, h', w')`` the normalised latents of those frames (the encoder's
            for real frames, the dream's own for dreamt ones).

    Returns:
        ``latent_std`` (standard deviation over every latent value) and ``sharpness`` (mean
        absolute difference between neighbouring pixels, 0-255).
    """
    values = latents[torch.from_numpy(alive)].float()
    return {"latent_std": round(float(values.std()), 4) if values.numel() > 1 else 0.0,
            "sharpness": sharpness(frames, alive)}


def sharpness(frames: np.ndarray, alive: np.ndarray) -> float:
    """Mean absolute difference between neighbouring pixels (0-255) over the live frames of
    ``frames`` ``(N, H, h, w, 3)`` uint8."""
    pixels = torch.from_numpy(frames[alive]).float()  # (M, h, w, 3)
    if not len(pixels):
        return 0.0
    return round(float(((pixels[:, 1:] - pixels[:, :-1]).abs().mean()
                        + (pixels[:, :, 1:] - pixels[:, :, :-1]).abs().mean()) / 2), 3)


def sticky_batch(rng: np.random.Generator, rows: int, length: int) -> np.ndarray:
    """``(rows, length)`` sticky random actions (the probes' ``sticky_actions``)."""
    from benchmarks.probes.takecover import sticky_actions

    return np.stack([sticky_actions(rng, length) for _ in range(rows)])


def real_events(model: Any, detector: Any, episodes: int, context: int, horizon: int,
                seed: int) -> dict[str, Any]:
    """Play real episodes with sticky random actions and measure steps after ``context``."""
    from envs import make_env

    env = make_env(model.info.env, **dict(model.info.env_options))
    height, width = model.info.frame_size
    frames = np.zeros((episodes, horizon, height, width, 3), np.uint8)
    alive = np.zeros((episodes, horizon), bool)
    actions = sticky_batch(np.random.default_rng(seed), episodes, context + horizon - 1)
    try:
        for episode in range(episodes):
            frame, _ = env.reset(seed=seed + episode)
            for step, action in enumerate(actions[episode]):
                frame, _, terminated, truncated, _ = env.step(int(action))
                if terminated or truncated:
                    break
                if step + 1 >= context:
                    frames[episode, step + 1 - context] = frame
                    alive[episode, step + 1 - context] = True
    finally:
        env.close()
    row = measure(detector, frames, alive)
    encoded, decoded = [], []
    with torch.no_grad():
        for chunk in np.array_split(frames, max(1, episodes // 16)):
            encoded.append(model.encode(torch.from_numpy(chunk).permute(0, 1, 4, 2, 3)))
            # the autoencoder's own round trip: as sharp as a dream's frames can be
            decoded.append(model.decode(encoded[-1]).permute(0, 1, 3, 4, 2).numpy())
    latents = torch.cat(encoded)
    row["observations"] = observation_stats(frames, alive, latents)
    row["observations"]["sharpness_reconstructed"] = sharpness(np.concatenate(decoded), alive)
    return row


THRESHOLDS = (0.02, 0.05, 0.1, 0.2, 0.5)
"""Termination thresholds at which the deaths of a dream env with ``termination="threshold"``
are reported."""


@torch.no_grad()
def dream_events(model: Any, detector: Any, sampler: Any, dreams: int, horizon: int,
                 seed: int, precision: str) -> dict[str, Any]:
    """Dream from the checkpoint's openings (it must store some) with sticky random actions
    and measure."""
    repeats = -(-dreams // len(model.prompt_frames))
    prompts = model.prompt_frames.repeat(repeats, 1, 1, 1, 1)[:dreams]
    prompt_actions = model.prompt_actions.repeat(repeats, 1)[:dreams]
    actions = torch.from_numpy(sticky_batch(np.random.default_rng(seed), dreams, horizon))
    generator = torch.Generator().manual_seed(seed)
    latents, hazards = [], []
    with model.autocast(precision):
        state = model.start(prompts, prompt_actions)
        for step in range(horizon):
            result = model.step(state, actions[:, step], generator, sampler=sampler)
            latents.append(result.latents)
            hazards.append(result.termination_prob.float())
        frames = model.decode(torch.stack(latents, 1))  # (B, H, 3, h, w) uint8
    hazard = torch.stack(hazards, 1)  # (B, H)
    ended_by = (hazard > 0.5).cumsum(1) > 0  # (B, H): died at or before the step
    alive = torch.cat([torch.ones(dreams, 1, dtype=torch.bool), ~ended_by[:, :-1]], 1)
    frames_last = frames.permute(0, 1, 3, 4, 2).numpy()
    row = measure(detector, frames_last, alive.numpy())
    row["observations"] = observation_stats(frames_last, alive.numpy(),
                                            torch.stack(latents, 1).float())
    # what the dream env does by default: sample each step's end from the hazard
    row["died_within_horizon_sampled"] = float(1 - torch.prod(1 - hazard, dim=1).mean())
    # what the dream env's termination="threshold" does, at a few thresholds
    peak = hazard.max(dim=1).values
    row["died_within_horizon_by_threshold"] = {
        str(threshold): float((peak >= threshold).float().mean()) for threshold in THRESHOLDS}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="takecover",
                        help="a TakeCover world model: run folder, file or shipped name "
                             "(default: takecover)")
    parser.add_argument("--sampler", action="append", default=None, metavar="NAME[:K=V,...]",
                        help="a sampler setting to measure, repeatable; keys: "
                             f"{', '.join(SAMPLER_FIELDS)} (default: 'default' and "
                             "'t1.5:temperature=1.5')")
    parser.add_argument("--episodes", type=int, default=200,
                        help="real episodes played (default: 200)")
    parser.add_argument("--dreams", type=int, default=64,
                        help="dreams per sampler setting, stepped as one batch (default: 64)")
    parser.add_argument("--horizon", type=int, default=40,
                        help="steps measured after the prompt (default: 40)")
    parser.add_argument("--seed", type=int, default=0, help="seed of actions and noise")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16",
                        help="dream precision (default: bf16)")
    parser.add_argument("--out-dir", default=None,
                        help="results folder (default: benchmarks/results)")
    args = parser.parse_args(argv)
    if min(args.episodes, args.dreams, args.horizon) < 1:
        parser.error("--episodes, --dreams and --horizon must be at least 1")
    try:
        samplers = [parse_sampler(spec)
                    for spec in args.sampler or ["default", "t1.5:temperature=1.5"]]
    except ConfigError as error:
        parser.error(str(error))

    from benchmarks.probes.takecover import load_detector
    from worldsim.world_model import WorldModel

    model = WorldModel.load(args.checkpoint)
    if not model.info.env.startswith("vizdoom/TakeCover"):
        parser.error(f"{args.checkpoint} models {model.info.env or 'an unknown env'}; "
                     "this benchmark needs a vizdoom/TakeCover world model")
    if model.prompt_frames is None:  # checked before the real game is played
        parser.error(f"{args.checkpoint} stores no opening prompts; train it with "
                     "`worldsim train` (which stores them) to use this benchmark")
    detector = load_detector(model.info.frame_size)
    context = model.prompt_frames.shape[1]
    results: dict[str, Any] = {
        "checkpoint": args.checkpoint, "horizon": args.horizon, "context": context,
        "real": real_events(model, detector, args.episodes, context, args.horizon, args.seed),
        "dreams": {}}
    print(f"{'':16s} monsters/frame (first 10, last 10)  fireballs/frame (first 10, last 10)  "
          "died within horizon (hazard > 0.5 / sampled)  latent std  sharpness")

    def show(name: str, row: dict[str, Any]) -> None:
        monsters, fireballs = row["monsters"], row["fireballs"]
        print(f"{name:16s} {monsters['all']:5.2f} ({monsters['first_10']:.2f}, "
              f"{monsters['last_10']:.2f})            {fireballs['all']:5.2f} "
              f"({fireballs['first_10']:.2f}, {fireballs['last_10']:.2f})             "
              f"{row['died_within_horizon']:.2f} / "
              f"{row.get('died_within_horizon_sampled', row['died_within_horizon']):.2f}"
              f"                   {row['observations']['latent_std']:.3f}       "
              f"{row['observations']['sharpness']:.2f}", flush=True)

    show("real game", results["real"])
    print(f"{'':16s} (the real frames through the autoencoder alone: sharpness "
          f"{results['real']['observations']['sharpness_reconstructed']:.2f})", flush=True)
    for name, settings in samplers:
        try:
            sampler = with_sampler_settings(model.sampler, settings)
        except ConfigError as error:
            parser.error(f"--sampler {name}: {error}")
        row = dream_events(model, detector, sampler, args.dreams, args.horizon, args.seed,
                           args.precision)
        results["dreams"][name] = {"sampler": sampler_settings(sampler), **row}
        show(name, row)
    print(f"wrote {write_result('dream-events', results, args.out_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
