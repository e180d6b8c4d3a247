"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import write_dataset


@pytest.fixture

def small_dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data", [10, 25, 7, 40])
