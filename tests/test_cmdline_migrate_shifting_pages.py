"""The copy of `spoolq migrate` while a consumer leases and gives back records between
two of its pages.

Pages are read at offsets. A consumer that leases a record the copy has read moves every
later record one place towards the head, so the next page passes over one record; giving
back (nack) a record it held since before the copy, further on, keeps the count, and a
retry given back with a delay stays at the head: the head, the tail and the count were
the same at the end as at the start, the ids read rose, and the migrate ended with status
0 while the destination lacked a record that was ready all along.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from spoolq.cli._common import Refused
from spoolq.cli._copying import copy_queues
from spoolq.cli._output import CliState
from spoolq.engines import Engine, Lease, StoredRecord, open_engine

CHUNK = 10


class _Between:
    """The source as the copy reads it, with another program's calls run once the first
    page has been read and once the last one has."""

    def __init__(self, engine: Engine, after_first: Any, after_last: Any) -> None:
        self._engine = engine
        self._hooks = [after_first, after_last]
        self.pages = 0

    def peek(self, queue: str, n: int, offset: int = 0) -> list[StoredRecord]:
        page = self._engine.peek(queue, n, offset)
        if n >= CHUNK:  # a page (the head and the tail are read one record at a time)
            self.pages += 1
            if self.pages == 1 or (len(page) < n and len(self._hooks) == 1):
                self._hooks.pop(0)()
        return page

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def test_a_record_passed_over_while_pages_shift_is_not_copied_as_if_whole(
        tmp_path: Path) -> None:
    src, dst = str(tmp_path / "src.sqlite"), str(tmp_path / "dst.sqlite")
    other = open_engine(src)  # the consumer's handle
    now = time.time()
    other.append("jobs", [b"r%03d" % n for n in range(1, 101)], [4] * 100, now)
    # The consumer holds record 80 (it leased 1 to 80 and gave back all but it).
    held = other.take("jobs", 80, now, Lease("c", now + 600))
    other.release("jobs", [(r.id, r.attempts) for r in held[:79]], "c", not_before=0,
                  max_attempts=None)
    late = held[79]

    def after_first() -> None:  # it leases the head, then gives back record 80
        other.take("jobs", 1, now, Lease("c", now + 600))
        other.release("jobs", [(late.id, late.attempts)], "c", not_before=0,
                      max_attempts=None)

    def after_last() -> None:  # the head fails: retried in an hour; it takes the next
        head = other.peek_leased("jobs", 1)[0].record  # type: ignore[attr-defined]
        other.release("jobs", [(head.id, head.attempts)], "c", not_before=now + 3600,
                      max_attempts=None)
        other.take("jobs", 1, now, Lease("c", now + 600))

    reader = open_engine(src, read_only=True)
    source = _Between(reader, after_first, after_last)
    target = open_engine(dst)
    try:
        ready = reader.counts("jobs").ready
        try:
            copy_queues(CliState(), source, target, ["jobs"],  # type: ignore[arg-type]
                        {"jobs": ready}, CHUNK, {})
        except Refused as exc:
            assert "changed while they were copied" in str(exc)
            return
        # Record 11 was ready from start to end: a copy that ended must hold it.
        copied = [r.data for r in target.peek("jobs", 1000)]
        assert b"r011" in copied, f"{len(copied)} records copied, record 11 not among them"
    finally:
        target.close()
        reader.close()
        other.close()
