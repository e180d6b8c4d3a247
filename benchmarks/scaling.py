"""Quality against training compute: world models of several sizes and budgets trained on
the same physics world, each scored by fidelity and by the physics probes of that world.

Sora's central finding is that sample quality rises with training compute. Here each
*size* is a preset with a share of its training steps (``PRESET[:FRACTION]``, e.g.
``small:0.25``); all sizes train on one dataset recorded once. Training FLOPs are counted by
``torch.utils.flop_counter`` on one optimiser step of each stage (``train.json``:
``flops_per_step`` x steps; matrix products, convolutions and attention).

    python -m benchmarks.scaling --world physics/Bounce                # tiny, small:0.25, small
    python -m benchmarks.scaling --world physics/Body --sizes tiny small:0.1 --quick

Writes ``benchmarks/results/scaling-<world>[-<options>][-<sizes>][-<sampler>]-<date>.json``
(with the machine; the sizes are named when they are not the default), a markdown
table and a plot (probe scores and open-loop PSNR against training FLOPs). Training runs
live in ``--work-dir`` and resume: re-running skips every finished size.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from worldsim.errors import ConfigError

DEFAULT_SIZES = ("tiny", "small:0.25", "small")


@dataclasses.dataclass(frozen=True)
class Size:
    """A preset and the share of its training steps."""

    preset: str
    fraction: float = 1.0

    @property
    def name(self) -> str:
        return self.preset if self.fraction == 1.0 else f"{self.preset}:{self.fraction:g}"


def parse_size(spec: str) -> Size:
    """``PRESET`` or ``PRESET:FRACTION`` -> :class:`Size`."""
    from worldsim.config import PRESETS

    preset, _, fraction = spec.partition(":")
    if preset not in PRESETS:
        raise ConfigError(f"size {spec!r}: unknown preset {preset!r}; choose from "
                          f"{', '.join(PRESETS)}, optionally with :FRACTION (e.g. small:0.25)")
    try:
        share = float(fraction) if fraction else 1.0
    except ValueError:
        raise ConfigError(f"size {spec!r}: {fraction!r} is not a number") from None
    if not 0 < share <= 1:
        raise ConfigError(f"size {spec!r}: the fraction of steps must be in (0, 1]")
    return Size(preset, share)


def size_config(size: Size, num_actions: int, residual: bool = False,
                change_weight: float = 0.0) -> Any:
    """The world-model config of a size: its preset with both stages' steps scaled (and the
    denoiser diffusing frame-to-frame changes when ``residual``; the loss weighted towards
    changing cells with ``change_weight``)."""
    from worldsim.config import preset

    config = preset(size.preset, num_actions=num_actions)
    config.denoiser.residual = residual
    config.objective = dataclasses.replace(config.objective, change_weight=change_weight)
    for stage in (config.autoencoder_training, config.dynamics_training):
        stage.steps = max(1, round(stage.steps * size.fraction))
        stage.warmup_steps = min(stage.warmup_steps, max(1, stage.steps // 10))
        stage.checkpoint_every = min(stage.checkpoint_every, stage.steps)
        stage.media_every = 0
    return config


def measure_size(size: Size, data: Path, run: Path, *, probe_quick: bool, horizon: int,
                 clips: int, seed: int, progress: bool, residual: bool = False,
                 change_weight: float = 0.0, sampler: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """Train (or resume) one size, then score it: FLOPs, wall time, fidelity, probes
    (dreamt with the model's sampler, changed by the ``sampler`` settings if given)."""
    from benchmarks.fidelity import evaluate
    from benchmarks.probes.simulators import world_model_simulator
    from benchmarks.probes.suite import run_probes
    from worldsim.data import EpisodeDataset
    from worldsim.diffusion.edm import sampler_settings, with_sampler_settings
    from worldsim.train import train_world_model
    from worldsim.world_model import WorldModel

    dataset = EpisodeDataset(data)
    config = size_config(size, dataset.num_actions, residual, change_weight)
    train_world_model(data, run, config, seed=seed, progress=progress)
    report = json.loads((run / "train.json").read_text())
    model = WorldModel.load(run)
    model.sampler = with_sampler_settings(model.sampler, sampler or {})
    stages = {name: report[name] for name in ("autoencoder", "dynamics")}
    fidelity = evaluate(model, data, horizon=horizon, clips=clips, seed=seed)
    probes = run_probes(world_model_simulator(model, seed=seed), quick=probe_quick, seed=seed)
    return {
        "size": size.name, "preset": size.preset, "fraction": size.fraction,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_flops": sum(float(s.get("train_flops", 0.0)) for s in stages.values()),
        "train_seconds": sum(float(s["seconds"]) for s in stages.values()),
        "stages": {name: {k: s.get(k) for k in ("steps", "seconds", "train_flops",
                                                 "peak_memory_gib")}
                   for name, s in stages.items()},
        "fidelity": {"reconstruction_psnr": fidelity["reconstruction_psnr"],
                     "open_loop": {k: v for k, v in fidelity["open_loop"].items()
                                   if k != "curves"}},
        "sampler": sampler_settings(model.sampler),
        "probes": {name: result["score"] for name, result in probes["probes"].items()},
        "probe_details": probes["probes"],
        "mean_probe_score": probes["mean_score"],
    }


def plot(results: dict[str, Any], path: Path) -> Path:
    """Probe scores (left) and open-loop PSNR (right) against training FLOPs."""
    from worldsim.media import pyplot, save_figure

    plt = pyplot()
    rows = sorted(results["sizes"], key=lambda row: row["train_flops"])
    flops = [row["train_flops"] for row in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name in rows[0]["probes"]:
        left.plot(flops, [row["probes"][name] for row in rows], marker="o", label=name)
    left.plot(flops, [row["mean_probe_score"] for row in rows], marker="s", color="black",
              linewidth=2.5, label="mean")
    left.set(xscale="log", xlabel="training FLOPs", ylabel="probe score", ylim=(-0.02, 1.02),
             title=f"physics probes, {results['world']}")
    left.legend(fontsize=7)
    for h in rows[0]["fidelity"]["open_loop"]["by_horizon"]:
        figures = [row["fidelity"]["open_loop"]["by_horizon"][h] for row in rows]
        line, = right.plot(flops, [f["psnr"] for f in figures], marker="o",
                           label=f"model, h={h}")
        right.plot(flops, [f["copy_psnr"] for f in figures], linestyle=":",
                   color=line.get_color(), label=f"copy-last, h={h}")
    right.set(xscale="log", xlabel="training FLOPs", ylabel="open-loop PSNR (dB)",
              title="fidelity on held-out episodes")
    right.legend(fontsize=7)
    for row in rows:
        left.annotate(row["size"], (row["train_flops"], row["mean_probe_score"]), fontsize=7,
                      textcoords="offset points", xytext=(4, -10))
    return save_figure(figure, path)


def markdown_table(results: dict[str, Any]) -> str:
    rows = sorted(results["sizes"], key=lambda row: row["train_flops"])
    probes = list(rows[0]["probes"])
    horizons = list(rows[0]["fidelity"]["open_loop"]["by_horizon"])
    head = (["size", "parameters", "training FLOPs", "train time"]
            + [f"PSNR h={h}" for h in horizons] + probes + ["mean"])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        by_horizon = row["fidelity"]["open_loop"]["by_horizon"]
        cells = ([row["size"], f"{row['parameters'] / 1e6:.2f} M", f"{row['train_flops']:.2e}",
                  f"{row['train_seconds'] / 60:.1f} min"]
                 + [f"{by_horizon[h]['psnr']:.1f}" for h in horizons]
                 + [f"{row['probes'][name]:.2f}" for name in probes]
                 + [f"{row['mean_probe_score']:.2f}"])
        lines.append("| " + " | ".join(cells) + " |")
    changed = results.get("sampler") or {}
    sampler = (" Sampler changed: " + ", ".join(f"{k}={v:g}" for k, v in changed.items())
               + ".") if changed else ""
    return (f"World {results['world']}, {results['episodes']} recorded episodes of "
            f"{results['episode_steps']} steps; open-loop PSNR in dB on held-out episodes; "
            f"probe scores in [0, 1].{sampler}\n\n" + "\n".join(lines) + "\n")


DEFAULT_RECORDING = (400, 200)
"""Episodes and steps per episode recorded for training and fidelity."""
RECORDING: dict[str, tuple[int, int]] = {"physics/Spawn": (2000, 40)}
"""Worlds whose recordings need other lengths, with the same 80,000 frames: random play
fills physics/Spawn's room (12 objects) within about 25 steps, after which a 200-step
episode shows no new object, while the probe dreams from rooms of one or two objects."""


def _recording_help() -> str:
    return ", ".join(f"{world}: {episodes} x {steps} steps"
                     for world, (episodes, steps) in RECORDING.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default="physics/Bounce",
                        help="physics world to train on (default: physics/Bounce)")
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES),
                        help="PRESET or PRESET:FRACTION of its training steps, smallest to "
                             f"largest (default: {' '.join(DEFAULT_SIZES)})")
    parser.add_argument("--episodes", type=int, default=None,
                        help="episodes recorded with the sticky random policy (default: "
                             f"{DEFAULT_RECORDING[0]}; {_recording_help()})")
    parser.add_argument("--episode-steps", type=int, default=None,
                        help="steps per recorded episode (default: "
                             f"{DEFAULT_RECORDING[1]}; see --episodes)")
    parser.add_argument("--horizon", type=int, default=16,
                        help="open-loop horizon for fidelity (default: 16)")
    parser.add_argument("--clips", type=int, default=64,
                        help="held-out clips for fidelity (default: 64)")
    parser.add_argument("--quick", action="store_true",
                        help="quick probe settings (fewer starts, shorter long dreams)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, training, probes")
    parser.add_argument("--work-dir", default="runs/scaling",
                        help="dataset and training runs, resumable (default: runs/scaling)")
    parser.add_argument("--out-dir", default=None,
                        help="results folder (default: benchmarks/results)")
    parser.add_argument("--world-options", default="", metavar="KEY=VALUE,...",
                        help="options of the world, e.g. radius=6 for physics/Bounce (see its "
                             "docstring in envs/physics.py); the data, runs and results get a "
                             "suffix naming them, and the probes use the same world")
    parser.add_argument("--residual", action="store_true",
                        help="train the denoiser on frame-to-frame changes (DenoiserConfig."
                             "residual); runs and results get a '-residual' suffix")
    parser.add_argument("--change-weight", type=float, default=0.0, metavar="W",
                        help="weight the denoising loss towards changing latent cells "
                             "(EDMObjective.change_weight); runs and results get a "
                             "'-changeW' suffix (default: 0)")
    parser.add_argument("--sampler", default="", metavar="KEY=VALUE,...",
                        help="change the models' sampler for fidelity and probes (training "
                             "is not affected, finished sizes are re-measured), e.g. "
                             "denoise_steps=16,sigma_max=20,temperature=1.3; results get a "
                             "suffix naming the settings")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    from worldsim.diffusion import EDMObjective
    from worldsim.diffusion.edm import parse_sampler_settings

    sampler = parse_sampler_settings(args.sampler)
    EDMObjective(change_weight=args.change_weight)  # refused before any work

    from benchmarks.common import write_result
    from envs.collect import collect
    from envs.commands import parse_env_options
    from envs.registry import make_env

    episodes, episode_steps = RECORDING.get(args.world, DEFAULT_RECORDING)
    args.episodes = episodes if args.episodes is None else args.episodes
    args.episode_steps = episode_steps if args.episode_steps is None else args.episode_steps
    sizes = [parse_size(spec) for spec in args.sizes]
    if len({size.name for size in sizes}) != len(sizes):
        raise ConfigError(f"a size is given twice in {' '.join(args.sizes)}")
    if args.episodes < 2:
        raise ConfigError("--episodes must be >= 2: one is held out for fidelity")
    world_options = parse_env_options(
        [item.strip() for item in args.world_options.split(",") if item.strip()], None,
        flag="--world-options")
    if {"max_steps", "render_mode"} & world_options.keys():
        raise ConfigError("--world-options: max_steps and render_mode are set by the benchmark "
                          "(see --episode-steps)")
    options_suffix = "".join(f"-{key}{value}" for key, value in world_options.items())
    make_env(args.world, **world_options).close()  # bad options are refused before any work
    work = Path(args.work_dir) / args.world.replace("/", "-")
    data = work / f"data{options_suffix}"
    collect(args.world, episodes=args.episodes, out=data, policy="sticky", seed=args.seed,
            env_options={**world_options, "max_steps": args.episode_steps},
            progress=not args.quiet)
    results: dict[str, Any] = {"world": args.world, "world_options": world_options,
                               "episodes": args.episodes,
                               "episode_steps": args.episode_steps, "quick_probes": args.quick,
                               "residual": args.residual,
                               "change_weight": args.change_weight, "sampler": sampler,
                               "sizes": []}
    suffix = options_suffix + ("-residual" if args.residual else "") + (
        f"-change{args.change_weight:g}" if args.change_weight else "")
    for size in sizes:
        row = measure_size(size, data, work / (size.name.replace(":", "-") + suffix),
                           probe_quick=args.quick, horizon=args.horizon, clips=args.clips,
                           seed=args.seed, progress=not args.quiet, residual=args.residual,
                           change_weight=args.change_weight, sampler=sampler)
        results["sizes"].append(row)
        print(f"{size.name}: {row['train_flops']:.2e} FLOPs, {row['train_seconds'] / 60:.1f} "
              f"min, mean probe score {row['mean_probe_score']:.2f}", flush=True)
    settings = "".join(f"-{key}{value:g}" for key, value in sampler.items())
    # other sizes than the default get their own result files instead of overwriting them
    sized = ("" if [size.name for size in sizes] == list(DEFAULT_SIZES) else
             "-" + "_".join(size.name.replace(":", "") for size in sizes))
    name = f"scaling-{args.world.replace('/', '-').lower()}{suffix}{sized}{settings}"
    path = write_result(name, results, args.out_dir)
    path.with_suffix(".md").write_text(markdown_table(results))
    plot(results, path.with_name(f"{path.stem}.png"))
    print(markdown_table(results))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
