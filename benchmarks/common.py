"""Writing benchmark results: JSON that names the machine, the time and the command."""

from __future__ import annotations

import copy
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from worldsim.errors import ConfigError
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


SAMPLER_FIELDS = {"denoise_steps": int, "sigma_min": float, "sigma_max": float, "rho": float,
                  "order": int, "s_churn": float, "temperature": float}
"""Sampler settings a benchmark's ``--sampler`` may change, with their types."""


def parse_sampler_settings(text: str) -> dict[str, Any]:
    """``"KEY=VALUE,KEY=VALUE"`` (keys from ``SAMPLER_FIELDS``) -> typed settings."""
    settings: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in SAMPLER_FIELDS:
            raise ConfigError(f"sampler setting {item!r}: each is KEY=VALUE with KEY one of "
                              f"{', '.join(SAMPLER_FIELDS)}")
        try:
            settings[key] = SAMPLER_FIELDS[key](value)
        except ValueError:
            raise ConfigError(f"sampler setting {item!r}: {key} needs a number") from None
    return settings


def sampler_settings(sampler: Any) -> dict[str, Any]:
    """The ``SAMPLER_FIELDS`` of ``sampler`` (an ``EDMSampler``), for a results file."""
    return {key: getattr(sampler, key) for key in SAMPLER_FIELDS}


def with_sampler_settings(sampler: Any, settings: dict[str, Any]) -> Any:
    """A copy of ``sampler`` (an ``EDMSampler``) with ``settings`` applied and checked."""
    sampler = copy.copy(sampler)
    for key, value in settings.items():
        setattr(sampler, key, value)
    sampler.sigmas()  # raises ConfigError on settings it cannot use
    return sampler
