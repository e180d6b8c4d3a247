"""Writing benchmark results: JSON that names the machine, the time and the command."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

from worldsim.utils import machine_info, write_json_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_result(name: str, results: dict[str, Any], out_dir: str | Path | None = None) -> Path:
    """Save ``results`` as ``<out_dir>/<name>-<date>.json`` with machine and command.

    Args:
        name: the benchmark's name, e.g. ``"collect"``.
        results: the measured figures.
        out_dir: where to write (default: ``benchmarks/results``).

    Returns:
        The path written.
    """
    now = dt.datetime.now(dt.timezone.utc)
    payload = {
        "benchmark": name,
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine_info(),
        "results": results,
    }
    path = Path(out_dir or RESULTS_DIR) / f"{name}-{now.date().isoformat()}.json"
    write_json_atomic(path, payload)
    return path
