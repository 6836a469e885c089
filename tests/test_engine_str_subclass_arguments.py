"""A queue name or a lease owner given to an engine as a str subclass (a str enum) is its
text: every engine finds, leases, settles and counts by it what it does by the plain
str, and a file written so opens again with the same contents."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spoolq.engines import Engine, Lease

from .conftest import fresh_pg_schema
from .test_engines_limits import _open


class Name(str, enum.Enum):
    JOBS = "jobs"
    WORKER = "worker-1"


def _session(eng: Engine, queue: str, owner: str) -> list[object]:
    """Calls by ``queue`` and ``owner`` and what each answered, the counts after each."""
    seen: list[object] = []
    seen.append(eng.append(queue, [b"a", b"b", b"c", b"d"], [1, 1, 1, 1], 1.0))
    seen.append([r.id for r in eng.peek(queue, 10)])
    seen.append([r.id for r in eng.take(queue, 3, 2.0, Lease(owner, 90.0))])
    seen.append({str.__str__(o): k for o, k in eng.owners(queue).items()})
    seen.append(eng.ack(queue, [(1, 1)], owner))
    seen.append(eng.release(queue, [(2, 1)], owner, not_before=0.0, max_attempts=None))
    seen.append(eng.counts(queue))
    seen.append(eng.expire(queue, 5.0, owners=[owner]))
    seen.append(eng.counts(queue))
    seen.append([r.id for r in eng.take(queue, 1, 3.0, None)])
    seen.append(eng.counts(queue))
    return seen


@pytest.fixture
def opened(tmp_path: Path,
           request: pytest.FixtureRequest) -> Iterator[Callable[[str, str], Engine]]:
    """Opens an engine of a kind in a file (or PostgreSQL schema) named by ``label``."""
    engines: list[Engine] = []

    def open_kind(kind: str, label: str) -> Engine:
        if kind == "postgres":
            url = request.getfixturevalue("pg_url")
            from spoolq.engines.postgres import PostgresEngine  # psycopg: pg_url skips without

            schemas = fresh_pg_schema(url)
            schema = next(schemas)
            request.addfinalizer(lambda: next(schemas, None))
            eng: Engine = PostgresEngine(url, schema=schema)
        else:
            folder = tmp_path / label
            folder.mkdir()
            eng = _open(kind, folder)
        engines.append(eng)
        return eng

    yield open_kind
    for eng in engines:
        eng.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite", "lmdb", "dbm", "pickle", "postgres"])
def test_str_subclass_name_and_owner_act_as_their_text(
        kind: str, opened: Callable[[str, str], Engine]) -> None:
    plain = _session(opened(kind, "plain"), "jobs", "worker-1")
    subclassed = _session(opened(kind, "enum"), Name.JOBS, Name.WORKER)
    assert subclassed == plain
    assert plain[6].leased == 1  # the session settled what it should: the check is real


@pytest.mark.parametrize("kind", ["sqlite", "lmdb", "dbm", "pickle"])
def test_file_written_by_str_subclass_name_reopens_by_plain_name(
        kind: str, tmp_path: Path) -> None:
    eng = _open(kind, tmp_path)
    eng.append(Name.JOBS, [b"a", b"b"], [1, 1], 1.0)
    eng.take(Name.JOBS, 1, 2.0, Lease(Name.WORKER, 90.0))
    eng.close()
    eng = _open(kind, tmp_path)
    try:
        assert [type(q) for q in eng.queues()] == [str]
        assert eng.queues() == ["jobs"]
        assert [r.data for r in eng.peek("jobs", 5)] == [b"b"]
        assert eng.ack("jobs", [(1, 1)], "worker-1") == [1]
    finally:
        eng.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite", "lmdb", "dbm", "pickle", "postgres"])
def test_dead_letters_of_a_str_subclass_name_are_those_of_its_text(
        kind: str, opened: Callable[[str, str], Engine]) -> None:
    eng = opened(kind, "dead")
    eng.append(Name.JOBS, [b"a", b"b"], [1, 1], 1.0)
    eng.take(Name.JOBS, 2, 2.0, Lease("w", 90.0))
    assert eng.release(Name.JOBS, [(1, 1)], "w", not_before=0.0, max_attempts=1,
                       reason="bad") == [1]
    assert eng.expire(Name.JOBS, 100.0, max_attempts=1) == 1
    assert [(r.data, r.reason) for r in eng.peek("jobs.dead", 5)] == [
        (b"a", "bad"), (b"b", "lease expired")]
    assert sorted(eng.queues()) == ["jobs", "jobs.dead"]
