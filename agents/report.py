"""The report of a ``worldsim run``, rebuilt from the run folder alone.

``write_report(OUT)`` reads what the stages left in ``OUT`` (see :mod:`agents.pipeline`)
and writes

- ``OUT/report.md``: the score table (World Models' published row beside measured ones),
  the exploit gap (each agent in its dream vs the real game, per temperature), learning
  curves, world-model fidelity, links to the videos, and a table of stages (wall time,
  real-game frames used, hardware);
- ``OUT/results.json``: every figure of the report;
- ``OUT/plots/*.png``: scores, learning curves, PSNR vs horizon.

Stages that have not run yet are reported as such, so a report can be written at any point.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from worldsim.errors import ConfigError
from worldsim.utils import write_json_atomic

# Ha & Schmidhuber (2018), "World Models", VizDoom TakeCover: the controller trained only
# in the dream (temperature 1.15), scored over 100 real episodes.
PUBLISHED = [{
    "method": "World Models (Ha & Schmidhuber 2018)", "trained_in": "dream",
    "mean": 1092.0, "std": 556.0, "episodes": 100,
    "note": "published, not measured here", "source": "https://arxiv.org/abs/1803.10122",
}]
_TRAINED_IN = {"agent-ppo": "dream (PPO)", "agent-cmaes": "dream (CMA-ES linear)",
               "agent-ppo-real": "real game (PPO)",
               "agent-dqn-hold": "dream (DQN on the model's state; one-decision dreams ended "
                                 "by the hold head)",
               "plan-hold": "- (planner: holds the move the world model's hold head finds "
                            "safest; no agent trained, no dream)"}


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def collect_results(out: str | Path) -> dict[str, Any]:
    """Every figure of a run folder, as one JSON-ready dict (what ``results.json`` holds)."""
    from agents.pipeline import JOBS, PLANNER, Pipeline, RunConfig, stage_estimate

    root = Path(out)
    run = _read(root / "run.json")
    if run is None:
        raise ConfigError(f"{root} is not a `worldsim run` folder (no run.json); run "
                          "`worldsim run takecover --out DIR` first")
    config = RunConfig.from_dict(run["config"])
    pipeline = Pipeline(root, config, run.get("job", "takecover"), progress=False, log=None)
    stages = []
    for stage in pipeline.stages:
        marker = pipeline.read_marker(stage.name)
        started = _read(root / "stages" / f"{stage.name}.started")
        state = "done" if marker else ("interrupted" if started else "to do")
        row = {"stage": stage.name, "title": stage.title, "status": state,
               "estimate_seconds": stage_estimate(config, stage.name)}
        if marker:
            row.update({k: marker.get(k) for k in (
                "wall_seconds", "attempts", "real_frames_training", "real_frames_evaluation",
                "device", "finished", "figures")})
            row["machine"] = marker.get("machine")
        stages.append(row)
    done = [s for s in stages if s["status"] == "done"]
    planner = [PLANNER] if config.branch_episodes else []
    methods = [f"agent-{k}" for k in config.agents] + planner + list(config.baselines)
    scores = [_score_row(root, m) for m in methods]
    dream = [_dream_row(root, kind, t, scores)
             for kind in config.agents for t in config.dream_temperatures]
    return {
        "job": run.get("job"), "env": JOBS.get(run.get("job", ""), config.env),
        "config": config.to_dict(), "command": reproduce_command(config, root),
        "published": PUBLISHED,
        "scores": [s for s in scores if s is not None],
        "dream_scores": [d for d in dream if d is not None],
        "learning_curves": {f"agent-{k}": _learning(root / "agents" / k) for k in config.agents},
        "world_model": _world_model(root),
        "fidelity": _read(root / "fidelity" / "fidelity.json"),
        "videos": _videos(root, methods),
        "stages": stages,
        "totals": {
            "wall_seconds": round(sum(s["wall_seconds"] for s in done), 1),
            "estimate_seconds": round(sum(s["estimate_seconds"] for s in stages), 1),
            "real_frames_training": sum(s["real_frames_training"] for s in done),
            "real_frames_evaluation": sum(s["real_frames_evaluation"] for s in done),
            "stages_done": len(done), "stages": len(stages),
        },
        "machine": next((s["machine"] for s in done if s.get("machine")), None),
    }


def _score_row(root: Path, method: str) -> dict[str, Any] | None:
    saved = _read(root / "eval" / "real" / f"{method}.json")
    if saved is None:
        return None
    return {"method": method, "kind": saved["kind"],
            "trained_in": _TRAINED_IN.get(method, "- (baseline)"),
            "agent_name": saved["agent_name"], **saved["frames_survived"],
            "episodes": saved["episodes"], "seed": saved["seed"],
            "max_frames": saved["max_frames"], "wall_seconds": saved["wall_seconds"],
            "real_frames_used": saved["real_frames_used"],
            "per_episode_frames": [e["frames"] for e in saved["per_episode"]],
            "videos": saved.get("videos", {})}


def _dream_row(root: Path, kind: str, temperature: float,
               scores: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    saved = _read(root / "eval" / "dream" / f"agent-{kind}-T{temperature:g}.json")
    if saved is None:
        return None
    real = next((s for s in scores if s is not None and s["method"] == f"agent-{kind}"), None)
    dream = saved["frames_survived"]
    return {"method": f"agent-{kind}", "temperature": temperature, **dream,
            "episodes": saved["episodes"], "cap_frames": saved["max_frames"],
            "ended_by_model": saved["terminated"],
            "real_mean": real["mean"] if real else None,
            "real_std": real["std"] if real else None,
            "gap": dream["mean"] - real["mean"] if real else None}


def _learning(folder: Path) -> dict[str, Any] | None:
    from agents.training import EpisodeLog

    record = _read(folder / "train_agent.json")
    if record is None:
        return None
    rows = EpisodeLog.read(folder / "episodes.csv")
    last = rows[-100:]
    return {"algo": record["settings"].get("algo"),
            "trained_in": "real game" if record["settings"].get("real_game") else "dream",
            "steps_done": record.get("steps_done"), "budget": record.get("budget"),
            "finished": record.get("finished"), "wall_seconds": record.get("wall_seconds"),
            "episodes": len(rows),
            "return_mean_last_100": (sum(r["return"] for r in last) / len(last)
                                     if last else None),
            "length_mean_last_100": (sum(r["length"] for r in last) / len(last)
                                     if last else None),
            "episodes_file": str((folder / "episodes.csv").relative_to(folder.parents[1]))}


def _world_model(root: Path) -> dict[str, Any] | None:
    report = _read(root / "world_model" / "train.json")
    if report is None:
        return None
    keep = ("steps", "seconds", "heldout_psnr", "peak_memory_gib", "final")
    return {"dataset": report.get("dataset"), "device": report.get("device"),
            **{stage: {k: report[stage].get(k) for k in keep}
               for stage in ("autoencoder", "dynamics") if stage in report}}


def _videos(root: Path, methods: list[str]) -> dict[str, Any]:
    videos: dict[str, Any] = {}
    for name in ("dream_vs_real", "agent_in_dream"):
        if (root / "videos" / f"{name}.mp4").is_file():
            videos[name] = f"videos/{name}.mp4"
    info = _read(root / "videos" / "videos.json")
    if info:
        videos["info"] = info
    for method in methods:
        for label in ("best", "worst"):
            path = root / "eval" / "videos" / method / f"{label}.mp4"
            if path.is_file():
                videos.setdefault("real_episodes", {}).setdefault(method, {})[label] = \
                    str(path.relative_to(root))
    return videos


def reproduce_command(config: Any, root: Path) -> str:
    """The ``worldsim run`` command that makes this run (flags for changed settings)."""
    from agents.pipeline import RUN_PRESETS

    base = RUN_PRESETS[config.preset]
    parts = ["worldsim run takecover", f"--preset {config.preset}", f"--seed {config.seed}",
             f"--out {root}"]
    flags = {"episodes": "--episodes", "branch_episodes": "--branch-episodes",
             "agent_steps": "--agent-steps", "dqn_steps": "--dqn-steps",
             "eval_episodes": "--eval-episodes"}
    for name, flag in flags.items():
        if getattr(config, name) != getattr(base, name):
            parts.append(f"{flag} {getattr(config, name)}")
    if config.agents != base.agents:
        parts.append(f"--agents {','.join(config.agents)}")
    others = [k for k in config.to_dict() if k not in (*flags, "agents", "preset", "seed",
                                                        "device", "collect_workers",
                                                        "eval_workers")
              and getattr(config, k) != getattr(base, k)]
    command = " ".join(parts)
    if others:
        command += f"  (with other settings from run.json: {', '.join(others)})"
    return command


# ---- plots -----------------------------------------------------------------------------------

def plot_scores(results: dict[str, Any], path: Path) -> Path | None:
    """Horizontal bars: frames survived, mean ± std, published reference hatched."""
    rows = [(f"{p['method']} (published)", p["mean"], p["std"], True)
            for p in results["published"]]
    rows += [(s["method"], s["mean"], s["std"], False) for s in results["scores"]]
    if len(rows) == len(results["published"]):
        return None
    from worldsim.media import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(rows) + 1.2))
    for y, (label, mean, std, published) in enumerate(reversed(rows)):
        ax.barh(y, mean, xerr=std, color="white" if published else "tab:blue",
                edgecolor="tab:gray" if published else "tab:blue",
                hatch="//" if published else None, capsize=3)
        ax.text(mean + std + 20, y, f"{mean:.0f}", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r[0] for r in reversed(rows)], fontsize=8)
    cap = results["config"]["max_frames"]
    ax.axvline(cap, color="tab:red", linestyle=":", linewidth=1, label=f"cap {cap}")
    ax.set_xlabel("real-game frames survived (mean ± std)")
    ax.set_title(f"{results['env']}: {results['config']['eval_episodes']} real episodes per "
                 "measured method", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path, dpi=110)


def plot_learning_curves(root: Path, results: dict[str, Any], path: Path) -> Path | None:
    """Episode return and length against agent steps (rolling mean), one row of panels per
    agent: each on its own scale, since a one-decision dream's return (tens) would vanish
    beside a full dream's (thousands)."""
    import numpy as np

    from agents.training import EpisodeLog
    from worldsim.media import pyplot, save_figure

    curves = {m: EpisodeLog.read(root / c["episodes_file"])
              for m, c in results["learning_curves"].items() if c is not None}
    curves = {m: rows for m, rows in curves.items() if rows}
    if not curves:
        return None
    plt = pyplot()
    fig, grid = plt.subplots(len(curves), 2, figsize=(10, 0.4 + 2.9 * len(curves)),
                             squeeze=False)
    for row, (axes, (method, rows)) in enumerate(zip(grid, curves.items())):
        steps = np.array([r["step"] for r in rows])
        where = results["learning_curves"][method]["trained_in"]
        for ax, key, label in zip(axes, ("return", "length"),
                                  ("episode return", "episode length (steps)")):
            values = np.array([r[key] for r in rows], dtype=float)
            # 100 episodes, or a fiftieth of them when there are many (one-decision dreams)
            window = max(1, min(len(values) // 10, max(100, len(values) // 50)))
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], smooth, color=f"C{row}")
            dots = slice(None, None, -(-len(values) // 5000))  # at most 5,000 dots
            ax.scatter(steps[dots], values[dots], s=3, alpha=0.15, color=f"C{row}")
            ax.set_title(f"{method} ({where})", fontsize=9)
            ax.set_xlabel("agent steps")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
    fig.suptitle("learning curves (dots: episodes; lines: rolling mean)", fontsize=9)
    return save_figure(fig, path, dpi=110)


# ---- markdown --------------------------------------------------------------------------------

def _seconds(value: float | None) -> str:
    from agents.pipeline import format_seconds

    return "-" if value is None else format_seconds(value)


def _decibels(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} dB"


def _frames(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _training_frames_source(config: dict[str, Any]) -> str:
    data = "the world model's data" + (" and its branches (the hold head's)"
                                       if config.get("branch_episodes") else "")
    if "ppo-real" in config["agents"]:
        return f"{data}, and the real-game PPO baseline's own steps"
    return f"{data} only: the agents trained in the dream"


def render_markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    c = results["config"]
    totals = results["totals"]
    lines = [f"# worldsim run {results['job']}: {c['preset']} preset, seed {c['seed']}", ""]
    lines += [f"Real game: `{results['env']}`. Reproduce with `{results['command']}`.",
              f"Stages done: {totals['stages_done']} of {totals['stages']}; wall time "
              f"{_seconds(totals['wall_seconds'])} (estimate for the whole run: "
              f"~{_seconds(totals['estimate_seconds'])}); real-game frames used for training: "
              f"{_frames(totals['real_frames_training'])} ({_training_frames_source(c)}); "
              f"for evaluation: {_frames(totals['real_frames_evaluation'])}.", ""]

    lines += ["## Score on the real game", "",
              f"Frames survived (game tics) in the real game, capped at {c['max_frames']}; "
              f"every measured method plays the same {c['eval_episodes']} seeded episodes "
              f"(seeds {c['eval_seed']}..{c['eval_seed'] + c['eval_episodes'] - 1}, none of them "
              "used to record the world model's data). Std is the population std over "
              "episodes.", "",
              "| method | trained in | frames survived, mean ± std | median | min - max | "
              "episodes | source |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in results["published"]:
        lines.append(f"| {p['method']} | {p['trained_in']} | {p['mean']:.0f} ± {p['std']:.0f} | "
                     f"- | - | {p['episodes']} | {p['note']} |")
    for s in results["scores"]:
        lines.append(f"| {s['method']} ({s['agent_name']}) | {s['trained_in']} | "
                     f"{s['mean']:.1f} ± {s['std']:.1f} | {s['median']:.0f} | {s['min']:.0f} - "
                     f"{s['max']:.0f} | {s['episodes']} | measured here |")
    if not results["scores"]:
        lines.append("| (not scored yet: stage eval-real) | | | | | | |")
    if "scores" in plots:
        lines += ["", f"![scores]({plots['scores']})"]

    lines += ["", "## The exploit gap: each agent in its dream vs the real game", "",
              "The same agent scored in the world model's dream (dream frames survived, "
              "episodes ended by the model's termination head or the cap) beside its real "
              "score. A dream score far above the real one means the agent learned to exploit "
              "the dream; a higher temperature makes the dream harder to exploit.", "",
              "| agent | temperature | dream: mean ± std | dream median | dreams (ended by "
              "model) | dream cap | real: mean ± std | dream - real |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for d in results["dream_scores"]:
        real = "-" if d["real_mean"] is None else f"{d['real_mean']:.1f} ± {d['real_std']:.1f}"
        gap = "-" if d["gap"] is None else f"{d['gap']:+.1f}"
        lines.append(f"| {d['method']} | {d['temperature']:g} | {d['mean']:.1f} ± {d['std']:.1f} "
                     f"| {d['median']:.0f} | {d['episodes']} ({d['ended_by_model']}) | "
                     f"{d['cap_frames']} | {real} | {gap} |")
    if not results["dream_scores"]:
        lines.append("| (not scored yet: stage eval-dream) | | | | | | | |")

    lines += ["", "## Learning", "",
              "| agent | trained in | steps | episodes | return, last 100 episodes | "
              "length, last 100 | wall time |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for method, curve in results["learning_curves"].items():
        if curve is None:
            lines.append(f"| {method} | (not trained yet) | | | | | |")
            continue
        ret, length = curve["return_mean_last_100"], curve["length_mean_last_100"]
        lines.append(f"| {method} ({curve['algo']}) | {curve['trained_in']} | "
                     f"{_frames(curve['steps_done'])} | {curve['episodes']} | "
                     f"{'-' if ret is None else f'{ret:.1f}'} | "
                     f"{'-' if length is None else f'{length:.1f}'} | "
                     f"{_seconds(curve['wall_seconds'])} |")
    if "learning_curves" in plots:
        lines += ["", f"![learning curves]({plots['learning_curves']})"]

    lines += ["", "## The world model", ""]
    world = results["world_model"]
    if world:
        data = world.get("dataset") or {}
        ae, dyn = world.get("autoencoder", {}), world.get("dynamics", {})
        lines.append(f"Trained on {_frames(data.get('episodes'))} episodes "
                     f"({_frames(data.get('frames'))} frames) of {c['collect_policy']}-random "
                     f"play on {world.get('device')}: autoencoder {ae.get('steps')} steps in "
                     f"{_seconds(ae.get('seconds'))} (held-out reconstruction PSNR "
                     f"{ae.get('heldout_psnr', float('nan')):.2f} dB), dynamics "
                     f"{dyn.get('steps')} steps in {_seconds(dyn.get('seconds'))}; peak memory "
                     f"{dyn.get('peak_memory_gib', ae.get('peak_memory_gib'))} GiB.")
    else:
        lines.append("(not trained yet: stage world_model)")
    if results["fidelity"]:
        from benchmarks.fidelity import markdown

        f = results["fidelity"]
        lines += ["", f"Fidelity on {f['held_out_episodes']} held-out real episodes "
                  f"({f['open_loop']['clips']} open-loop clips, {f['denoise_steps']} denoising "
                  "steps; dream against the real frames under the real actions, beside copying "
                  "the last context frame):", "", markdown(f)]
        if "fidelity" in plots:
            lines += ["", f"![PSNR vs horizon]({plots['fidelity']})"]
    else:
        lines += ["", "(fidelity not measured yet: stage fidelity)"]

    lines += ["", "## Videos", ""]
    first_video = len(lines)
    videos = results["videos"]
    info = videos.get("info", {})
    if "dream_vs_real" in videos:
        lines.append(f"- [real game | dream]({videos['dream_vs_real']}): agent-{info.get('agent')} "
                     f"plays the real game; the dream, prompted with the first "
                     f"{info.get('prompt_frames')} real frames, replays its actions open loop "
                     f"({info.get('compared_steps')} steps, mean PSNR "
                     f"{_decibels(info.get('mean_psnr'))}).")
    if "agent_in_dream" in videos:
        lines.append(f"- [agent-{info.get('agent')} inside the dream]({videos['agent_in_dream']}) "
                     f"({info.get('dream_restarts')} dream episode(s) ended and restarted).")
    for method, films in videos.get("real_episodes", {}).items():
        links = ", ".join(f"[{label}]({path})" for label, path in films.items())
        lines.append(f"- {method} on the real game, best and worst episode: {links}.")
    if len(lines) == first_video:
        lines.append("(no videos yet: stages eval-real and videos)")

    lines += ["", "## Stages", "",
              "| stage | status | wall time | estimate | attempts | real frames: training | "
              "real frames: evaluation | device |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in results["stages"]:
        lines.append(f"| {s['stage']} | {s['status']} | {_seconds(s.get('wall_seconds'))} | "
                     f"~{_seconds(s['estimate_seconds'])} | {s.get('attempts', '-')} | "
                     f"{_frames(s.get('real_frames_training'))} | "
                     f"{_frames(s.get('real_frames_evaluation'))} | {s.get('device', '-')} |")
    lines.append(f"| total | | {_seconds(totals['wall_seconds'])} | "
                 f"~{_seconds(totals['estimate_seconds'])} | | "
                 f"{_frames(totals['real_frames_training'])} | "
                 f"{_frames(totals['real_frames_evaluation'])} | |")
    machine = results["machine"]
    if machine:
        lines += ["", f"Hardware: {machine.get('processor')}, {machine.get('cpu_count')} CPU "
                  f"cores, {machine.get('torch_threads')} torch threads, "
                  f"{machine.get('memory_gib')} GiB memory, GPU: {machine.get('cuda') or 'none'}; "
                  f"torch {machine.get('torch')}, Python {machine.get('python')}."]
    lines += ["", "Wall time is that of the attempt that finished each stage (an interrupted "
              "attempt's time is not included; `attempts` counts them). Real frames for "
              "training are the recorded data (and, for a real-game PPO baseline, its own "
              "steps); the dream-trained agents used none. All figures: `results.json`.", ""]
    return "\n".join(lines)


def write_report(out: str | Path) -> dict[str, Any]:
    """Write ``report.md``, ``results.json`` and the plots of a run folder.

    Args:
        out: a ``worldsim run`` folder (finished or not).

    Returns:
        The figures written to ``results.json``.
    """
    from benchmarks.fidelity import plot as plot_fidelity

    root = Path(out)
    results = collect_results(root)
    plots: dict[str, str] = {}
    folder = root / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    if plot_scores(results, folder / "scores.png"):
        plots["scores"] = "plots/scores.png"
    if plot_learning_curves(root, results, folder / "learning_curves.png"):
        plots["learning_curves"] = "plots/learning_curves.png"
    if results["fidelity"]:
        plot_fidelity(results["fidelity"], folder / "fidelity_psnr.png")
        plots["fidelity"] = "plots/fidelity_psnr.png"
    results["plots"] = plots
    write_json_atomic(root / "results.json", results)
    from worldsim.utils import atomic_path

    with atomic_path(root / "report.md") as tmp:
        tmp.write_text(render_markdown(results, plots))
    return results
