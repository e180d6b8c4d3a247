"""`worldsim run takecover`: a tiny-preset run end to end on the real TakeCover, killed with
SIGKILL during the agent stage and resumed; its report, results and videos; resuming,
redoing and refusing."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import imageio.v2 as imageio
import pytest
from PIL import Image

from agents.pipeline import Pipeline, StageOutputMissing, run, run_config
from worldsim.cli import main as cli_main
from worldsim.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
STAGES = ("collect", "world_model", "branches", "hold", "agent-ppo", "agent-cmaes",
          "agent-dqn-hold", "eval-real", "eval-dream", "fidelity", "videos")
METHODS = {"agent-ppo", "agent-cmaes", "agent-dqn-hold", "plan-hold", "random", "always-left"}
# Rewritten by every run: the report itself, and the lock.
REPORT_FILES = ("report.md", "results.json", ".lock")


@dataclass
class KilledRun:
    out: Path
    before_resume: dict[str, float]  # mtimes of every file when the killed run was stopped
    log: list[str]  # what the resumed run printed


def mtimes(root: Path) -> dict[str, float]:
    """Modification times of the run's files, except the report (rewritten each time)."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in REPORT_FILES and "plots" not in p.parts}


def quiet_run(out: Path, **overrides: object) -> list[str]:
    log: list[str] = []
    run("takecover", out, preset="tiny", progress=False, log=log.append, **overrides)
    return log


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory: pytest.TempPathFactory) -> KilledRun:
    """A tiny `worldsim run takecover` killed with SIGKILL in its agent stage, then resumed."""
    out = tmp_path_factory.mktemp("pipeline") / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with open(out.parent / "killed.log", "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "worldsim.cli", "run", "takecover", "--preset", "tiny",
             "--out", str(out), "--quiet"], env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True)
        started = out / "agents" / "ppo" / "train_agent.json"  # the agent stage is under way
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None and not started.is_file():
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert started.is_file(), (out.parent / "killed.log").read_text()[-3000:]
    assert not (out / "stages" / "agent-ppo.json").is_file(), \
        "the agent stage finished before the run could be killed; lengthen it"
    before = mtimes(out)
    return KilledRun(out, before, quiet_run(out))


def test_killed_run_resumes_and_skips_finished_stages(killed_run: KilledRun) -> None:
    out, before = killed_run.out, killed_run.before_resume
    finished = [k for k in before if k.startswith(("data/", "world_model/"))
                or k in ("stages/collect.json", "stages/world_model.json")]
    assert "world_model/world_model/model.safetensors" in finished
    assert "data/index.json" in finished
    after = mtimes(out)
    touched = [k for k in finished if after.get(k) != before[k]]
    assert touched == [], f"finished stages were redone: {touched}"
    assert any("collect" in line and "done, skipped" in line for line in killed_run.log)
    assert any("world_model" in line and "done, skipped" in line for line in killed_run.log)
    markers = {s: json.loads((out / "stages" / f"{s}.json").read_text()) for s in STAGES}
    assert markers["agent-ppo"]["attempts"] == 2  # the killed attempt, then the resumed one
    assert markers["collect"]["attempts"] == 1
    assert not list((out / "stages").glob("*.started"))


def test_report_has_the_score_table_and_every_link_exists(killed_run: KilledRun) -> None:
    out = killed_run.out
    report = (out / "report.md").read_text()
    assert "| World Models (Ha & Schmidhuber 2018) | dream | 1092 ± 556 |" in report
    assert "published, not measured here" in report
    for method in sorted(METHODS):
        row = next(line for line in report.splitlines() if line.startswith(f"| {method} ("))
        assert "measured here" in row and "±" in row
    for heading in ("## Score on the real game", "## The exploit gap", "## Learning",
                    "## The world model", "## Videos", "## Stages"):
        assert heading in report
    links = re.findall(r"\]\(([^)]+)\)", report)
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    assert {"plots/scores.png", "plots/learning_curves.png",
            "plots/fidelity_psnr.png"} <= set(images)
    assert {"videos/dream_vs_real.mp4", "videos/agent_in_dream.mp4",
            "eval/videos/agent-ppo/best.mp4", "eval/videos/agent-ppo/worst.mp4",
            "eval/videos/plan-hold/best.mp4"} <= set(links)
    for link in links:
        assert (out / link).is_file(), f"report links to a missing file: {link}"
    for image in images:
        with Image.open(out / image) as picture:
            assert picture.size[0] > 200 and picture.size[1] > 100


def test_results_json_holds_every_stage_and_figure(killed_run: KilledRun) -> None:
    results = json.loads((killed_run.out / "results.json").read_text())
    config = run_config("tiny")
    assert [s["stage"] for s in results["stages"]] == list(STAGES)
    assert all(s["status"] == "done" and s["wall_seconds"] >= 0 for s in results["stages"])
    scores = {s["method"]: s for s in results["scores"]}
    assert set(scores) == METHODS
    assert scores["plan-hold"]["kind"] == "planner"
    for score in scores.values():  # the same episodes and cap for every method
        assert score["episodes"] == config.eval_episodes == len(score["per_episode_frames"])
        assert score["seed"] == config.eval_seed and score["max_frames"] == 2100
        assert 0 < score["min"] <= score["median"] <= score["max"] <= 2100
    dream = {(d["method"], d["temperature"]) for d in results["dream_scores"]}
    assert dream == {(f"agent-{k}", t) for k in config.agents for t in config.dream_temperatures}
    assert results["published"][0]["mean"] == 1092 and results["published"][0]["std"] == 556
    stages = {s["stage"]: s for s in results["stages"]}
    dataset = json.loads((killed_run.out / "data" / "index.json").read_text())
    assert stages["collect"]["real_frames_training"] == dataset["num_frames"] > 0
    assert stages["agent-ppo"]["real_frames_training"] == 0
    evaluated = sum(s["real_frames_used"] for s in results["scores"])
    assert stages["eval-real"]["real_frames_evaluation"] >= evaluated > 0
    assert results["fidelity"]["open_loop"]["by_horizon"]["1"]["psnr"] > 0
    assert results["learning_curves"]["agent-ppo"]["episodes"] > 0
    # the hold head: fitted on the replayed episodes' branches, scored at held-out states
    branches = json.loads((killed_run.out / "branches" / "index.json").read_text())
    assert stages["branches"]["real_frames_training"] == branches["num_frames"]
    assert stages["branches"]["figures"]["episodes"] == config.branch_episodes
    assert stages["branches"]["figures"]["branches"] > 0
    assert stages["hold"]["figures"]["decisive_states"] > 0
    assert 0 <= stages["hold"]["figures"]["accuracy"] <= 1
    assert results["totals"]["real_frames_training"] == (dataset["num_frames"]
                                                        + branches["num_frames"])
    from worldsim.world_model import WorldModel

    assert WorldModel.load(killed_run.out / "hold").hold_steps == config.branch_steps
    for kind in ("ppo", "cmaes"):  # dream agents train at the run's temperature
        trained = json.loads((killed_run.out / "agents" / kind / "agent.json").read_text())
        assert trained["info"]["trained"]["temperature"] == config.agent_temperature == 1.5
    assert results["machine"]["cpu_count"] >= 1


def test_dqn_hold_agent_learns_on_the_hold_model_and_decides_like_the_planner(
        killed_run: KilledRun) -> None:
    from agents.portable import file_digest
    from worldsim.world_model import WorldModel

    out = killed_run.out
    config = run_config("tiny")
    record = json.loads((out / "agents" / "dqn-hold" / "train_agent.json").read_text())
    settings = record["settings"]
    assert settings["world_model"] == file_digest(out / "hold" / "model.safetensors")
    assert settings["world_model"] != file_digest(
        out / "world_model" / "world_model" / "model.safetensors")
    assert settings["algo"] == "DQN" and settings["max_episode_steps"] == 1
    hold = WorldModel.load(out / "hold")  # the head reads every token: the state is all of them
    assert config.hold_tokens and hold.config.dynamics.hold_tokens == hold.tokens_per_frame > 1
    assert hold.config.dynamics.hold_members == config.hold_members == 2
    assert len(hold.info.trained["hold"]["member_figures"]) == 2
    assert hold.state_size == hold.tokens_per_frame * hold.config.dynamics.width
    assert record["steps_done"] >= config.dqn_steps
    real = json.loads((out / "eval" / "real" / "agent-dqn-hold.json").read_text())
    assert real["key"]["decision_steps"] == config.plan_every
    assert real["real_frames_used"] > 0


def test_videos_decode(killed_run: KilledRun) -> None:
    out = killed_run.out
    info = json.loads((out / "videos" / "videos.json").read_text())
    expected = {"videos/dream_vs_real.mp4": info["compared_steps"]}
    real = json.loads((out / "eval" / "real" / "agent-ppo.json").read_text())
    for label in ("best", "worst"):
        steps = real[label]["steps"]
        expected[f"eval/videos/agent-ppo/{label}.mp4"] = steps + 1  # the first frame too
    for path, frames in expected.items():
        reader = imageio.get_reader(out / path)
        decoded = [frame for frame in reader]
        reader.close()
        assert len(decoded) == frames, path
        assert decoded[0].ndim == 3 and decoded[0].std() > 0, path
    reader = imageio.get_reader(out / "videos" / "agent_in_dream.mp4")
    assert sum(1 for _ in reader) > run_config("tiny").video_steps
    reader.close()


def test_rerun_skips_every_stage_and_touches_nothing(killed_run: KilledRun,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(killed_run.out, out)
    before = mtimes(out)
    log = quiet_run(out, device="cpu")  # where it runs may change between attempts
    assert sum("done, skipped" in line for line in log) == len(STAGES)
    assert mtimes(out) == before
    assert (out / "report.md").is_file()


@pytest.mark.parametrize("stage, redone", [
    ("fidelity", {"fidelity/fidelity.json", "fidelity/psnr_vs_horizon.png"}),
    ("world_model", set()),  # a complete world model is kept: nothing after it goes stale
])
def test_a_deleted_marker_redoes_only_that_stage(killed_run: KilledRun, tmp_path: Path,
                                                 stage: str, redone: set[str]) -> None:
    out = tmp_path / "run"
    shutil.copytree(killed_run.out, out)
    (out / "stages" / f"{stage}.json").unlink()
    before = mtimes(out)
    log = quiet_run(out)
    after = mtimes(out)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {f"stages/{stage}.json", *redone}
    assert sum("done, skipped" in line for line in log) == len(STAGES) - 1


def test_an_agent_of_another_world_model_is_moved_aside(killed_run: KilledRun,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(killed_run.out, out)
    record_file = out / "agents" / "ppo" / "train_agent.json"
    record = json.loads(record_file.read_text())
    record["settings"]["world_model"] = "0" * 64  # as if trained before the model was redone
    record_file.write_text(json.dumps(record))
    (out / "stages" / "agent-ppo.json").unlink()
    before = mtimes(out)
    quiet_run(out)
    aside = out / "agents" / "ppo.world-model-000000000000"
    assert (aside / "agent.safetensors").is_file()  # nothing lost
    assert json.loads((aside / "train_agent.json").read_text()) == record
    retrained = json.loads((out / "agents" / "ppo" / "train_agent.json").read_text())
    assert retrained["finished"] and retrained["settings"]["world_model"] != "0" * 64
    after = mtimes(out)
    assert after["eval/real/agent-ppo.json"] != before["eval/real/agent-ppo.json"]
    assert after["eval/real/random.json"] == before["eval/real/random.json"]


def test_a_changed_agent_redoes_only_what_used_it(killed_run: KilledRun, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(killed_run.out, out)
    (out / "agents" / "cmaes" / "agent.safetensors").unlink()  # re-exported, new digest
    (out / "stages" / "agent-cmaes.json").unlink()
    before = mtimes(out)
    log = quiet_run(out)
    after = mtimes(out)
    assert any("eval-real" in line and "redoing it, agent-cmaes changed" in line
               for line in log)
    assert after["eval/real/agent-cmaes.json"] != before["eval/real/agent-cmaes.json"]
    for kept in ("eval/real/agent-ppo.json", "eval/real/random.json",
                 "eval/dream/agent-ppo-T1.json", "world_model/world_model/model.safetensors",
                 "agents/ppo/agent.safetensors", "stages/fidelity.json"):
        assert after[kept] == before[kept], kept


def test_missing_stage_output_is_a_clear_error(killed_run: KilledRun, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(killed_run.out, out)
    model = out / "world_model" / "world_model" / "model.safetensors"
    model.unlink()
    before = mtimes(out)
    with pytest.raises(StageOutputMissing) as error:
        quiet_run(out)
    message = str(error.value)
    assert "'world_model'" in message and str(model) in message
    assert f"delete {out / 'stages' / 'world_model.json'}" in message
    assert mtimes(out) == before  # refused before any stage ran


def test_other_settings_are_refused(killed_run: KilledRun, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(killed_run.out, out)
    with pytest.raises(ConfigError, match="seed: 0 there, 1 now"):
        quiet_run(out, seed=1)
    with pytest.raises(ConfigError, match="agents"):
        quiet_run(out, agents=("ppo",))
    with pytest.raises(ConfigError, match="unknown preset"):
        run("takecover", out, preset="huge", log=None)
    with pytest.raises(ConfigError, match="ppo, cmaes, ppo-real, dqn-hold"):
        run_config("tiny", agents=("sac",))
    with pytest.raises(ConfigError, match="hold head.*--branch-episodes N"):
        run_config("tiny", branch_episodes=0)
    # a folder made before a setting existed ran with its default: its hold head read the mean
    settings = json.loads((out / "run.json").read_text())
    del settings["config"]["hold_tokens"]
    del settings["config"]["hold_members"]
    (out / "run.json").write_text(json.dumps(settings))
    with pytest.raises(ConfigError, match="hold_members: 1 there, 2 now; hold_tokens: False "
                                          "there, True now"):
        quiet_run(out)
    with pytest.raises(ConfigError, match="hold_members must be >= 1"):
        run_config("tiny", hold_members=0)


def test_plan_prints_an_estimate_for_what_is_left(killed_run: KilledRun, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    plan = Pipeline(tmp_path / "new", run_config("small")).plan()
    assert "Estimated time for what is left: ~1 h" in plan and "an estimate" in plan
    assert not (tmp_path / "new").exists()  # planning writes nothing
    assert cli_main(["run", "takecover", "--preset", "tiny", "--out", str(killed_run.out),
                     "--plan"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("[done]") == len(STAGES) and "Every stage is done" in printed


def test_report_is_regenerated_from_the_run_folder(killed_run: KilledRun, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(killed_run.out, out)
    for name in ("report.md", "results.json"):
        (out / name).unlink()
    shutil.rmtree(out / "plots")
    assert cli_main(["run", "takecover", "--out", str(out), "--report-only"]) == 0
    original = (killed_run.out / "report.md").read_text().replace(str(killed_run.out), str(out))
    assert (out / "report.md").read_text() == original
    assert (out / "plots" / "scores.png").is_file()


def test_run_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["run", "--help"])
    text = capsys.readouterr().out
    for flag in ("--preset", "--out", "--seed", "--episodes", "--agent-steps", "--dqn-steps",
                 "--agents",
                 "--agent-temperature", "--branch-episodes", "--hold-head",
                 "--eval-episodes", "--device", "--plan", "--report-only", "--quiet"):
        assert flag in text
    assert "resum" in text.lower() and "estimate" in text
