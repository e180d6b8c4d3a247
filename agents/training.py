"""What every dream-training run shares: its folder, its settings check, its logs.

Run layout (``--out DIR``)::

    DIR/agent.safetensors   the portable agent (+ agent.json, its header): rewritten at
                            each checkpoint, so an interrupted run still has one
    DIR/train_agent.json    settings, progress and final figures of the run
    DIR/episodes.csv        finished dream episodes of the policy being trained: agent
                            step, return, length (SB3: every episode; CMA-ES: the rollouts
                            of the CMA-ES mean, the policy that gets exported)
    DIR/generations.csv     CMA-ES only: population figures per generation
    DIR/tb/                 TensorBoard logs
    DIR/resume/             internal resume state (weights and optimiser / CMA-ES state)

Re-running the same command resumes from ``resume/``; a finished run is not redone (a
larger step budget continues it). Other settings than the ones in ``train_agent.json``
are refused, so two different runs never mix in one folder.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path
from typing import Any

from worldsim.errors import ConfigError
from worldsim.utils import atomic_path, write_json_atomic

RUN_FILE = "train_agent.json"
EPISODES_FILE = "episodes.csv"


def load_world_model(checkpoint: str | Path, device: str = "auto",
                     compile: bool = False) -> tuple[Any, dict[str, Any]]:
    """The world model to dream in, and facts that identify it (path, sha256, env).

    Args:
        checkpoint: a run folder, a model.safetensors file or a shipped name.
        device: where the dream runs.
        compile: compile its transformer blocks (``WorldModel.compile_blocks``).
    """
    from agents.portable import file_digest
    from worldsim.utils import get_device
    from worldsim.world_model import WorldModel, resolve_checkpoint

    file = resolve_checkpoint(checkpoint)
    model = WorldModel.load(file, get_device(device))
    if compile:
        model.compile_blocks()
    facts = {"checkpoint": str(checkpoint), "file": str(file.resolve()),
             "sha256": file_digest(file), "env": model.info.env,
             "frame_size": list(model.info.frame_size)}
    return model, facts


class RunFolder:
    """The folder of one agent-training run (see the module docstring)."""

    def __init__(self, out: str | Path) -> None:
        self.root = Path(out)
        self.agent_file = self.root / "agent.safetensors"
        self.run_file = self.root / RUN_FILE
        self.episodes_file = self.root / EPISODES_FILE
        self.tensorboard = self.root / "tb"
        self.resume = self.root / "resume"

    def read(self) -> dict[str, Any] | None:
        if not self.run_file.is_file():
            return None
        return json.loads(self.run_file.read_text())

    def start(self, settings: dict[str, Any], budget: int) -> dict[str, Any]:
        """Check ``settings`` against an earlier run in this folder, or start a new one.

        Args:
            settings: everything that defines the run except its step budget (JSON values).
            budget: the step budget asked for now (it may grow between calls).

        Returns:
            The run record (``settings``, ``budget``, ``steps_done``, ``finished``, ...).
        """
        settings = json.loads(json.dumps(settings))  # tuples -> lists, as read back
        record = self.read()
        if record is not None:
            differs = sorted(k for k in set(settings) | set(record["settings"])
                             if settings.get(k) != record["settings"].get(k))
            if differs:
                details = "; ".join(f"{k}: {record['settings'].get(k)!r} there, "
                                    f"{settings.get(k)!r} now" for k in differs)
                raise ConfigError(f"{self.root} holds another training run ({details}); use "
                                  "another --out, or the same options to resume it")
        else:
            record = {"settings": settings, "steps_done": 0, "finished": False,
                      "started": _now()}
        record["budget"] = int(budget)
        if record["steps_done"] < budget:
            record["finished"] = False
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.run_file, record)
        return record

    def update(self, record: dict[str, Any], **changes: Any) -> None:
        record.update(changes, updated=_now())
        write_json_atomic(self.run_file, record)


class EpisodeLog:
    """``episodes.csv``: one row per finished dream episode (step, return, length)."""

    FIELDS = ("step", "return", "length")

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        rows = self.read(path)
        kept = [row for row in rows if row["step"] <= resume_step]  # drop rows past the resume
        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(self.FIELDS)
                writer.writerows([row[k] for k in self.FIELDS] for row in kept)
        self.count = len(kept)

    def add(self, rows: list[tuple[int, float, int]]) -> None:
        if not rows:
            return
        with open(self.path, "a", newline="") as handle:
            csv.writer(handle).writerows(rows)
        self.count += len(rows)

    @staticmethod
    def read(path: str | Path) -> list[dict[str, Any]]:
        """The rows of an ``episodes.csv`` (for learning curves)."""
        if not Path(path).is_file():
            return []
        with open(path, newline="") as handle:
            return [{"step": int(r["step"]), "return": float(r["return"]),
                     "length": int(r["length"])} for r in csv.DictReader(handle)]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def termination_options(threshold: float | None, ends: str = "auto",
                        expected: bool = False) -> dict[str, Any]:
    """The dream env's termination keywords: sampled from the head (None), or a threshold,
    or (``expected``) no ends, rewards weighted by the chance the dream is alive; ``ends``
    picks the head (see :meth:`worldsim.world_model.WorldModel.resolve_ends`)."""
    if expected:
        if threshold is not None:
            raise ConfigError("a dream either weighs rewards by the chance it is alive "
                              "(expected ends) or ends at a threshold, not both: drop one")
        return {"termination": "expected", "ends": ends}
    if threshold is None:
        return {"ends": ends}
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"termination threshold must be in (0, 1], got {threshold}")
    return {"termination": "threshold", "termination_threshold": threshold, "ends": ends}
