"""Shared fixtures: every queue-level test runs on every engine."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

ENGINE_SUFFIXES = {"memory": None, "sqlite": ".sqlite", "lmdb": ".lmdb", "dbm": ".dbm",
                   "pickle": ".pickle"}
DISK_ENGINES = [name for name, suffix in ENGINE_SUFFIXES.items() if suffix]


def queue_path(tmp_path: Path, engine: str) -> str:
    suffix = ENGINE_SUFFIXES[engine]
    return ":memory:" if suffix is None else os.fspath(tmp_path / f"queue{suffix}")


@pytest.fixture(params=sorted(ENGINE_SUFFIXES))
def engine_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=DISK_ENGINES)
def disk_engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def path(tmp_path: Path, engine_name: str) -> str:
    """A queue path for the engine under test."""
    return queue_path(tmp_path, engine_name)


@pytest.fixture
def disk_path(tmp_path: Path, disk_engine: str) -> str:
    return queue_path(tmp_path, disk_engine)


PathFactory = Callable[[str], str]
