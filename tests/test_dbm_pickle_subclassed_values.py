"""Values of a subclass of str, bytes, int or float (an enum of names, numpy's float64, a
bytes subclass) given to the dbm and pickle engines are stored as the plain value: the file
opens again. A pickle file that named such a class could never be read back, since the
engine refuses every class a file names."""

from __future__ import annotations

import enum
import time
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq import open_engine
from spoolq.engines import Lease, StoredRecord

from .conftest import queue_path

SINGLE_PROCESS = ["dbm", "pickle"]


class Name(str, enum.Enum):
    JOBS = "jobs"


class Seconds(float):
    """Like numpy.float64: a float subclass whose arithmetic keeps the subclass."""

    def __add__(self, other: Any) -> Seconds:
        return Seconds(float(self) + other)

    __radd__ = __add__


class Blob(bytes):
    pass


class Count(int):
    pass


@pytest.mark.parametrize("engine", SINGLE_PROCESS)
def test_a_queue_named_by_a_str_enum_opens_again(tmp_path: Path, engine: str) -> None:
    path = queue_path(tmp_path, engine)
    with spoolq.SyncQueue.create(path, name=Name.JOBS) as q:
        q.put("a")
        q.put("b")
        assert q.get(timeout=1) == "a"
    with spoolq.SyncQueue.create(path, name="jobs") as q:
        assert q.qsize() == 1
        assert q.get(timeout=1) == "b"


@pytest.mark.parametrize("engine", SINGLE_PROCESS)
def test_a_nack_delayed_by_a_float_subclass_opens_again(tmp_path: Path, engine: str) -> None:
    path = queue_path(tmp_path, engine)
    with spoolq.SyncQueue.create(path) as q:
        q.put("a")
        msg = q.lease(ttl=Seconds(30))
        q.nack(msg, delay=Seconds(0.05))
    with spoolq.SyncQueue.create(path) as q:
        msg = q.lease(timeout=5)
        assert (msg.item, msg.attempts) == ("a", 2)
        q.ack(msg)


@pytest.mark.parametrize("engine", SINGLE_PROCESS)
def test_every_value_an_engine_stores_may_be_of_a_subclass(tmp_path: Path,
                                                           engine: str) -> None:
    path = queue_path(tmp_path, engine)
    eng = open_engine(path)
    try:
        eng.append(Name.JOBS, [Blob(b"a"), Blob(b"b")], [Count(1), Count(1)], Seconds(1.0))
        eng.set_meta(Name.JOBS, Blob(b"v"))
        [a] = eng.take("jobs", 1, 2.0, Lease(Name.JOBS, Seconds(50.0)))
        eng.release("jobs", [(a.id, 1)], "jobs", not_before=Seconds(3.0), max_attempts=None,
                    reason=Name.JOBS)
        [b] = eng.take("jobs", 1, 2.0, None)
        assert b.data == b"b"
        eng.restore(Name.JOBS, [StoredRecord(Count(b.id), Blob(b"b"), Count(1), Count(0),
                                             Seconds(1.0), Name.JOBS)])
        assert eng.move("jobs", Name.JOBS, [Count(b.id)]) == 1
    finally:
        eng.close()
    eng = open_engine(path)
    try:
        assert eng.queues() == ["jobs"]
        assert eng.get_meta("jobs") == b"v"
        got = eng.take("jobs", 5, time.time(), None)
        assert [(r.data, type(r.data)) for r in got] == [(b"a", bytes), (b"b", bytes)]
    finally:
        eng.close()
