"""Shared fixtures: every queue-level test runs on every engine."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .servers import ServerProcess

ENGINE_SUFFIXES = {"memory": None, "sqlite": ".sqlite", "lmdb": ".lmdb", "dbm": ".dbm",
                   "pickle": ".pickle"}
DISK_ENGINES = [name for name, suffix in ENGINE_SUFFIXES.items() if suffix]
SHARED_ENGINES = ["lmdb", "sqlite"]
"""Engines whose files several processes may open at once."""


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


@pytest.fixture(params=SHARED_ENGINES)
def shared_path(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A queue path for an engine that several processes may share."""
    return queue_path(tmp_path, str(request.param))


PathFactory = Callable[[str], str]


# ---- PostgreSQL -------------------------------------------------------------------------
# Tests of the postgres engine need a server. They are skipped when none is
# reachable, unless SPOOLQ_REQUIRE_POSTGRES is set: then they fail instead.

PG_URL = os.environ.get("SPOOLQ_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _postgres_problem() -> str | None:
    """Why the postgres tests cannot run here, or None when they can."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'spoolq[postgres]')"
    try:
        with psycopg.connect(PG_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"no PostgreSQL server at {PG_URL}: {str(exc).strip()}"


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The server's URL; skips (or fails, with SPOOLQ_REQUIRE_POSTGRES) when unreachable."""
    problem = _postgres_problem()
    if problem is not None:
        if os.environ.get("SPOOLQ_REQUIRE_POSTGRES"):
            pytest.fail(f"SPOOLQ_REQUIRE_POSTGRES is set but {problem}")
        pytest.skip(reason=problem)
    return PG_URL


def fresh_pg_schema(pg_url: str) -> Iterator[str]:
    """Yield a fresh schema name, then drop the schema: the body of a schema fixture."""
    import psycopg
    from psycopg import sql

    name = f"spoolq_test_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def pg_schema(pg_url: str) -> Iterator[str]:
    """A fresh schema name for one test; the schema is dropped afterwards."""
    yield from fresh_pg_schema(pg_url)


@pytest.fixture(scope="module")
def served_queues(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One ``python -m spoolq.server`` for a module; each test uses queues of its own."""
    from .servers import ServerProcess

    path = tmp_path_factory.mktemp("server") / "served.sqlite"
    with ServerProcess(os.fspath(path)) as proc:
        yield proc


_queue_names = iter(range(10**6))


@pytest.fixture(params=["memory", "sqlite", "lmdb", "remote"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A queue path: a local engine, or a fresh queue on the module's server."""
    if request.param == "remote":
        proc: ServerProcess = request.getfixturevalue("served_queues")
        return f"{proc.url}/q{next(_queue_names)}"
    return queue_path(tmp_path, str(request.param))
