"""Small helpers shared across worldsim: seeding, devices, atomic writes, machine facts."""

from __future__ import annotations

import json
import os
import platform
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed Python, NumPy and torch; distributed ranks get ``seed + rank``.

    Args:
        seed: the run's base seed.
        rank: the process rank, so that ranks draw different data and noise.

    Returns:
        The seed actually used by this process.
    """
    effective = int(seed) + int(rank)
    random.seed(effective)
    np.random.seed(effective % 2**32)
    torch.manual_seed(effective)
    return effective


def get_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto"`` to CUDA when available, else CPU; pass others through."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        from worldsim.errors import ConfigError

        raise ConfigError(
            f"device {device!r} was asked for but no CUDA GPU is visible; "
            "use --device cpu or --device auto"
        )
    return resolved


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    A crash or kill while writing leaves at most a temporary file (its name starts with
    ``.`` and ends with ``suffix``), never a half-written ``path``. Writers that pick a
    format by extension (ffmpeg) need ``suffix`` to end in it, e.g. ``".tmp.mp4"``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def machine_info() -> dict[str, Any]:
    """Describe the machine a measurement ran on, for benchmark JSON files."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        info["memory_gib"] = None
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def read_worldsim_header(file: str | Path, expected_format: str, version: int, kind: str,
                         wrong_format_hint: str = "", old_version_hint: str = "") -> dict[str, Any]:
    """Read and check the JSON header a worldsim safetensors file keeps in its metadata,
    without loading any tensor (nothing in the file is executed).

    Args:
        file: the safetensors file.
        expected_format: the header's ``format`` this reader takes.
        version: the ``version`` this reader takes.
        kind: what the file should be, for messages ("world model", "agent").
        wrong_format_hint: appended to the message for a file of another format.
        old_version_hint: appended to the message for a file of another version.

    Raises:
        CheckpointError: unreadable, not worldsim's, another format or another version.
    """
    from safetensors import safe_open

    from worldsim.errors import CheckpointError

    try:
        with safe_open(str(file), framework="pt") as handle:
            raw = (handle.metadata() or {}).get("worldsim")
    except Exception as error:
        raise CheckpointError(f"{file} is not a readable safetensors file ({error})") from error
    if raw is None:
        raise CheckpointError(f"{file} is a safetensors file but not a worldsim {kind}")
    header: dict[str, Any] = json.loads(raw)
    if header.get("format") != expected_format:
        raise CheckpointError(f"{file} holds a {header.get('format', 'unknown')!r} file, not a "
                              f"worldsim {kind}{wrong_format_hint}")
    if header.get("version") != version:
        raise CheckpointError(f"{file} is {kind} version {header.get('version')}; this worldsim "
                              f"reads version {version}{old_version_hint}")
    return header
