"""The copy of `spoolq migrate` from a served queue whose replies hold one record each,
while a consumer leases and gives back records between two of its reads.

A reply with room for the last record read only is followed by a read of the next page
without that record. A consumer that leases a record the copy has read and gives back
one it held since before the copy, further on, between those two reads, moves every later
record one place towards the head: the read passes over one record, and the count, the
head and the tail at the end can be as they were at the start (a retry given back with a
delay stays at the head).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from spoolq.cli._common import Refused
from spoolq.cli._copying import copy_queues
from spoolq.cli._output import CliState
from spoolq.engines import Engine, Lease, StoredRecord, open_engine
from spoolq.engines.remote import RemoteEngine
from spoolq.protocol import MIN_MAX_REPLY

from .servers import ServerProcess

CHUNK = 3
REPLY = 4 * MIN_MAX_REPLY


class _Between:
    """The source as the copy reads it, with another program's calls run before the
    third read of a page without the record before it, and before the last counts."""

    def __init__(self, engine: Engine, between: Any, at_end: Any) -> None:
        self._engine = engine
        self._between, self._at_end = between, at_end
        self.unanchored = 0
        self.counted = 0

    def peek(self, queue: str, n: int, offset: int = 0) -> list[StoredRecord]:
        if n == CHUNK and offset > 0:
            self.unanchored += 1
            if self.unanchored == 3:
                self._between()
        return self._engine.peek(queue, n, offset)

    def counts(self, queue: str) -> Any:
        self.counted += 1
        if self.counted == 2:
            self._at_end()
        return self._engine.counts(queue)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def test_a_record_passed_over_between_replies_of_one_record_is_not_copied_as_if_whole(
        tmp_path: Path) -> None:
    src, dst = str(tmp_path / "src.sqlite"), str(tmp_path / "dst.sqlite")
    other = open_engine(src)  # the consumer's handle
    now = time.time()
    size = REPLY * 6 // 10  # one record per reply, not two
    other.append("jobs", [b"r%03d" % n + b"." * size for n in range(1, 11)], [size] * 10,
                 now)
    # The consumer holds record 8 (it leased 1 to 8 and gave back all but it).
    held = other.take("jobs", 8, now, Lease("c", now + 600))
    other.release("jobs", [(r.id, r.attempts) for r in held[:7]], "c", not_before=0,
                  max_attempts=None)
    late = held[7]

    def between() -> None:  # it leases the head, then gives back record 8
        other.take("jobs", 1, now, Lease("c", now + 600))
        other.release("jobs", [(late.id, late.attempts)], "c", not_before=0,
                      max_attempts=None)

    def at_end() -> None:  # the head fails: retried in an hour; it takes the next
        head = other.peek_leased("jobs", 1)[0].record  # type: ignore[attr-defined]
        other.release("jobs", [(head.id, head.attempts)], "c", not_before=now + 3600,
                      max_attempts=None)
        other.take("jobs", 1, now, Lease("c", now + 600))

    target = open_engine(dst)
    try:
        with ServerProcess(src) as server:
            reader = RemoteEngine(server.url, max_reply=REPLY)
            try:
                source = _Between(reader, between, at_end)
                ready = reader.counts("jobs").ready
                assert len(reader.peek("jobs", 2)) == 1  # a reply holds one record
                try:
                    copy_queues(CliState(), source, target, ["jobs"],  # type: ignore[arg-type]
                                {"jobs": ready}, CHUNK, {})
                except Refused as exc:
                    assert "changed while they were copied" in str(exc)
                    assert source.unanchored >= 3  # the consumer did run in between
                    return
            finally:
                reader.close()
        # Record 4 was ready from start to end: a copy that ended must hold it.
        copied = [r.data[:4] for r in target.peek("jobs", 100)]
        assert b"r004" in copied, f"copied {copied}, record 4 not among them"
    finally:
        target.close()
        other.close()
