"""``worldsim bench``: how good is this world model, and where is it wrong?

One command runs, for a world model (and optionally an agent trained in its dream):

- **fidelity** (:mod:`benchmarks.fidelity`) on real episodes the model never saw, recorded
  for the benchmark with a seed far from any training seed: reconstruction PSNR, open-loop
  PSNR/SSIM by horizon beside copy-last-frame, termination precision/recall;
- **speed** (:mod:`benchmarks.speed`): dream steps/s by batch size, latent and RGB;
- **probes** (:mod:`benchmarks.probes`): the physics-consistency probes of the model's game;
- **transfer** (with ``--agent``): the agent's frames survived on the real game and in the
  dream (the exploit gap), with videos of its best and worst real episodes;
- a real-vs-dream comparison video.

It writes ``<out-dir>/<suite>-<date>.json`` (with the machine's description) and beside it
``.md`` (the report) and ``-fidelity.png``, ``-probes.png``, ``-speed.png`` plots.
``--quick`` finishes in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.frames import frame_skip
from worldsim.errors import ConfigError

PARTS = ("fidelity", "speed", "probes", "transfer", "video")
EVAL_SEED = 2_000_000  # benchmark episodes: never a collection (0..) or eval (1e6..) seed


@dataclass
class BenchSettings:
    """Budgets of one bench run (``FULL`` or ``QUICK``; each may be overridden)."""

    episodes: int = 100  # real episodes recorded for fidelity
    horizon: int = 32  # open-loop steps
    clips: int = 256  # open-loop clips
    speed_batches: tuple[int, ...] = (1, 16, 64, 256)  # dream batch sizes timed
    speed_seconds: float = 3.0  # timing budget per batch size and observation mode
    transfer_episodes: int = 100  # real and dream episodes of the agent
    dream_temperatures: tuple[float, ...] = (0.5, 1.0, 1.5)  # the exploit gap at each
    video_steps: int = 300  # real-vs-dream video length
    probes_quick: bool = False  # the probes' own quick settings


FULL = BenchSettings()
QUICK = BenchSettings(episodes=12, horizon=8, clips=32, speed_batches=(1, 64),
                      speed_seconds=0.5, transfer_episodes=5, dream_temperatures=(1.0,),
                      video_steps=60, probes_quick=True)


def record_unseen_episodes(model: Any, root: Path, episodes: int, seed: int = EVAL_SEED,
                           workers: int = 2, progress: bool = True) -> Path:
    """Sticky-random real play of the model's game, with the options it was trained with;
    resumed (or reused) when ``root`` already holds it."""
    from envs.collect import collect

    if not model.info.env:
        raise ConfigError("the checkpoint does not name the game it was trained on; pass "
                          "--data with recorded play of that game")
    options = dict(model.info.env_options)
    options.setdefault("frame_size", list(model.info.frame_size))
    collect(model.info.env, episodes=episodes, out=root, policy="sticky", env_options=options,
            workers=workers, seed=seed, progress=progress)
    return root


def run_bench(checkpoint: str, out_dir: str | Path | None = None, agent: str | None = None,
              quick: bool = False, data: str | None = None, parts: tuple[str, ...] = PARTS,
              suite: str = "bench", seed: int = 0, workers: int = 2, work_dir: str | Path = "runs/bench",
              settings: BenchSettings | None = None, progress: bool = True,
              sampler: dict[str, Any] | None = None) -> Path:
    """Run the benchmark suite on a world model; returns the JSON result's path.

    Args:
        checkpoint: the world model (run folder, model.safetensors or shipped name).
        out_dir: where results go (default ``benchmarks/results``).
        agent: an agent trained in this model's dream, for the transfer part.
        quick: the ``QUICK`` budgets.
        data: real play to measure fidelity on (default: recorded now into ``work_dir``);
            with ``data``, the held-out split of a training dataset is used.
        parts: which of ``PARTS`` to run.
        suite: the result's name (``<suite>-<date>.json``).
        seed: seed of clips, dreams and probe starts.
        workers: processes for recording and real-game scoring.
        work_dir: where recorded episodes and videos are kept between runs.
        settings: budgets (default ``QUICK`` or ``FULL``).
        progress: progress bars.
        sampler: settings that change the model's saved sampler for every dream (keys of
            ``worldsim.sampler_settings.SAMPLER_FIELDS``).
    """
    import torch

    from benchmarks.common import RESULTS_DIR, write_result
    from worldsim.diffusion.edm import sampler_settings, with_sampler_settings
    from worldsim.world_model import WorldModel

    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ConfigError(f"unknown bench part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", suite):
        raise ConfigError(f"suite name {suite!r} must be letters, digits, '.', '_' or '-'")
    settings = settings or (QUICK if quick else FULL)
    model = WorldModel.load(checkpoint).eval()
    model.sampler = with_sampler_settings(model.sampler, sampler or {})
    out = Path(out_dir or RESULTS_DIR)
    work = Path(work_dir) / re.sub(r"[^A-Za-z0-9_.-]+", "-", model.info.env or "model")
    results: dict[str, Any] = {"checkpoint": str(checkpoint), "env": model.info.env,
                               "quick": quick, "settings": dataclasses.asdict(settings),
                               "sampler": sampler_settings(model.sampler),
                               "seconds": {}}

    def timed(part: str, run: Any) -> None:
        if part not in parts:
            return
        started = time.perf_counter()
        if progress:
            print(f"bench: {part} ...", flush=True)
        results[part] = run()
        results["seconds"][part] = round(time.perf_counter() - started, 1)

    def fidelity() -> dict[str, Any]:
        from benchmarks.fidelity import evaluate

        skip = frame_skip(model.info.env_options)
        folder = f"episodes-{settings.episodes}" + (f"-skip{skip}" if skip > 1 else "")
        root = Path(data) if data else record_unseen_episodes(
            model, work / folder, settings.episodes, workers=workers, progress=progress)
        return evaluate(model, root, settings.horizon, settings.clips, seed, unseen=data is None)

    def speed() -> dict[str, Any]:
        from benchmarks.speed import steps_per_second

        rows = [steps_per_second(model, batch, rgb, "bf16", settings.speed_seconds)
                for rgb in (False, True) for batch in settings.speed_batches]
        return {"precision": "bf16", "threads": torch.get_num_threads(), "steps": rows}

    def probes() -> dict[str, Any]:
        from benchmarks.probes import run_probes, world_model_simulator

        return run_probes(world_model_simulator(model, seed=seed), quick=settings.probes_quick,
                          seed=seed)

    def transfer() -> dict[str, Any]:
        from agents.evaluate import evaluate, evaluate_in_dream

        real = evaluate(agent, model.info.env or None, settings.transfer_episodes,
                        seed=EVAL_SEED, workers=workers, video_dir=out / f"{suite}-videos" / "agent",
                        progress=progress)
        dream = {str(t): evaluate_in_dream(agent, model, settings.transfer_episodes, seed=seed,
                                           temperature=t, progress=progress).summary()
                 for t in settings.dream_temperatures}
        return {"agent": agent, "real": real.summary(), "real_videos": real.videos,
                "dream": dream, "wall_seconds": round(real.wall_seconds, 1)}

    def video() -> dict[str, Any]:
        from envs.video import compare, comparison_video
        from worldsim.media import write_video

        comparison = compare(model, settings.video_steps, policy="sticky", seed=EVAL_SEED)
        path = write_video(out / f"{suite}-videos" / "real_vs_dream.mp4",
                           comparison_video(comparison))
        return {"real_vs_dream": str(path), "mean_psnr": float(comparison.psnr.mean())}

    timed("fidelity", fidelity)
    timed("speed", speed)
    timed("probes", probes)
    if agent:
        timed("transfer", transfer)
    timed("video", video)
    path = write_result(suite, results, out)
    write_report(results, path)
    return path


# ---- the report ----------------------------------------------------------------------------

def write_report(results: dict[str, Any], path: Path) -> Path:
    """``<result>.md`` with tables and links to the plots and videos written beside it."""
    stem = path.with_suffix("")
    lines = [f"# worldsim bench: {results.get('env') or 'world model'}", "",
             f"Checkpoint `{results['checkpoint']}`{' (quick budgets)' if results['quick'] else ''}; "
             f"full figures in `{path.name}`.", ""]
    if results.get("sampler"):
        lines += ["Dream sampler: " + ", ".join(f"{key}={value:g}" for key, value
                                                  in results["sampler"].items()) + ".", ""]
    if "fidelity" in results:
        from benchmarks.fidelity import markdown, plot

        plot(results["fidelity"], Path(f"{stem}-fidelity.png"))
        lines += ["## Fidelity on unseen real episodes", "", markdown(results["fidelity"]), "",
                  f"![fidelity]({stem.name}-fidelity.png)", ""]
    if "speed" in results:
        lines += ["## Dream speed (bf16)", "", "| batch | latent steps/s | RGB steps/s |",
                  "| --- | --- | --- |"]
        by = {(r["batch"], r["obs"]): r["dream_steps_per_s"] for r in results["speed"]["steps"]}
        for batch in sorted({b for b, _ in by}):
            lines.append(f"| {batch} | {by.get((batch, 'latent'), '-')} | {by.get((batch, 'rgb'), '-')} |")
        _plot_speed(results["speed"], Path(f"{stem}-speed.png"))
        lines += ["", f"![speed]({stem.name}-speed.png)", ""]
    if "probes" in results:
        lines += ["## Physics-consistency probes", "", "| probe | score |", "| --- | --- |"]
        for name, probe in results["probes"]["probes"].items():
            lines.append(f"| {name} | {probe['score']:.3f} |")
        _plot_probes(results["probes"], Path(f"{stem}-probes.png"))
        lines += ["", f"![probes]({stem.name}-probes.png)", ""]
    if "transfer" in results:
        transfer = results["transfer"]
        lines += ["## Dream-to-real transfer (frames survived)", "", "| where | mean | std | median |",
                  "| --- | --- | --- | --- |",
                  _score_row("real game", transfer["real"])]
        lines += [_score_row(f"dream, temperature {t}", s) for t, s in transfer["dream"].items()]
        lines += [""] + [f"- [{k} real episode]({_relative(v, path)})"
                         for k, v in transfer["real_videos"].items()]
        lines.append("")
    if "video" in results:
        lines += ["## Real | dream", "",
                  f"[real vs dream video]({_relative(results['video']['real_vs_dream'], path)})"
                  " (mean PSNR "
                  f"{results['video']['mean_psnr']:.1f} dB)", ""]
    lines.append("Seconds per part: " + ", ".join(f"{k} {v}" for k, v in results["seconds"].items()))
    report = path.with_suffix(".md")
    report.write_text("\n".join(lines) + "\n")
    return report


def _relative(target: str, report: Path) -> str:
    """A link from the report's folder to ``target``."""
    import os

    return os.path.relpath(Path(target).resolve(), report.resolve().parent)


def _score_row(label: str, summary: dict[str, float]) -> str:
    return f"| {label} | {summary['mean']:.1f} | {summary['std']:.1f} | {summary['median']:.0f} |"


def _plot_speed(speed: dict[str, Any], path: Path) -> None:
    from worldsim.media import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for obs in ("latent", "rgb"):
        rows = [r for r in speed["steps"] if r["obs"] == obs]
        ax.plot([r["batch"] for r in rows], [r["dream_steps_per_s"] for r in rows], "o-", label=obs)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("dreams per batch")
    ax.set_ylabel("dream steps/s")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def _plot_probes(probes: dict[str, Any], path: Path) -> None:
    from worldsim.media import pyplot, save_figure

    plt = pyplot()
    names = list(probes["probes"])
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(names)), 3.2))
    ax.bar(names, [probes["probes"][n]["score"] for n in names])
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (1 = obeys the law)")
    ax.tick_params(axis="x", rotation=30)
    save_figure(fig, path)
