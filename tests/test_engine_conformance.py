"""The engine contract (spoolq.testing) run on every built-in engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from spoolq.engines import (
    DBMEngine,
    Engine,
    LMDBEngine,
    MemoryEngine,
    PickleEngine,
    SQLiteEngine,
)
from spoolq.testing import EngineConformance


class TestMemoryEngine(EngineConformance):
    persistent = False

    @pytest.fixture
    def open_engine(self) -> Callable[[], Engine]:
        return MemoryEngine


class TestSQLiteEngine(EngineConformance):
    @pytest.fixture
    def open_engine(self, tmp_path: Path) -> Callable[[], Engine]:
        return lambda: SQLiteEngine(tmp_path / "q.sqlite")


class TestSQLiteEngineFsync(EngineConformance):
    @pytest.fixture
    def open_engine(self, tmp_path: Path) -> Callable[[], Engine]:
        return lambda: SQLiteEngine(tmp_path / "q.sqlite", synchronous="FULL")


class TestLMDBEngine(EngineConformance):
    @pytest.fixture
    def open_engine(self, tmp_path: Path) -> Callable[[], Engine]:
        return lambda: LMDBEngine(tmp_path / "q.lmdb")


class TestLMDBEngineFsync(EngineConformance):
    @pytest.fixture
    def open_engine(self, tmp_path: Path) -> Callable[[], Engine]:
        return lambda: LMDBEngine(tmp_path / "q.lmdb", metasync=True)


class TestLMDBEngineNoSync(EngineConformance):
    @pytest.fixture
    def open_engine(self, tmp_path: Path) -> Callable[[], Engine]:
        return lambda: LMDBEngine(tmp_path / "q.lmdb", sync=False)


class TestDBMEngine(EngineConformance):
    @pytest.fixture
    def open_engine(self, tmp_path: Path) -> Callable[[], Engine]:
        return lambda: DBMEngine(tmp_path / "q.dbm")


class TestDBMEngineFsync(EngineConformance):
    @pytest.fixture
    def open_engine(self, tmp_path: Path) -> Callable[[], Engine]:
        return lambda: DBMEngine(tmp_path / "q.dbm", fsync=True)


class TestPickleEngine(EngineConformance):
    @pytest.fixture
    def open_engine(self, tmp_path: Path) -> Callable[[], Engine]:
        return lambda: PickleEngine(tmp_path / "q.pickle")


class TestPickleEngineFsync(EngineConformance):
    @pytest.fixture
    def open_engine(self, tmp_path: Path) -> Callable[[], Engine]:
        return lambda: PickleEngine(tmp_path / "q.pickle", fsync=True)
