"""zstd dictionaries of two queues of one PostgreSQL schema trained at once, by two
processes, get two numbers: each queue's records decode with its own dictionary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spoolq import SyncQueue
from spoolq.zdict import DICTIONARY_QUEUE, SAMPLE_COUNT

if not os.environ.get("SPOOLQ_REQUIRE_POSTGRES"):
    pytest.importorskip("psycopg", reason="psycopg is not installed (spoolq[postgres])")

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

# Puts all but the last sample, says so, waits for a line, then puts the item that makes
# the codec train (so the dictionary is appended within that put) and the rest.
_PRODUCER = textwrap.dedent("""
    import json, random, sys
    from spoolq import SyncQueue
    from spoolq.zdict import SAMPLE_COUNT

    url, schema, name, out = sys.argv[1:5]
    rnd = random.Random(name)
    kinds = [name + "-" + k for k in ("click", "view", "buy", "scroll", "search")]
    items = [{"event": rnd.choice(kinds), "user": f"user-{rnd.randint(1, 90)}",
              "path": f"/{name}/products/{rnd.randint(1, 50)}", "n": i}
             for i in range(SAMPLE_COUNT + 200)]
    with SyncQueue.create(url, engine="postgres", name=name, compressor="zstd-dict",
                          serializer="json",
                          engine_options={"schema": schema, "lock_timeout": 60}) as q:
        q.put_many(items[:SAMPLE_COUNT - 1])
        print("sampled", flush=True)
        sys.stdin.readline()
        q.put(items[SAMPLE_COUNT - 1])  # the last sample: trains and stores the dictionary
        q.put_many(items[SAMPLE_COUNT:])  # compressed with it
    with open(out, "w") as f:
        json.dump(items, f)
""")


class _Producer:
    """A process putting into queue ``name`` under its own application_name."""

    def __init__(self, url: str, schema: str, name: str, out: Path) -> None:
        self.app = f"spoolq-test-{name}-{uuid.uuid4().hex[:8]}"
        self.out = out
        conninfo = make_conninfo(url, application_name=self.app)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PRODUCER, conninfo, schema, name, str(out)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        assert self.proc.stdout.readline().strip() == "sampled"

    def train(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def items(self) -> list[Any]:
        self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0
        return list(json.loads(self.out.read_text()))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _wait_for(what: str, ready: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


@pytest.fixture
def producers() -> Iterator[list[_Producer]]:
    started: list[_Producer] = []
    yield started
    for producer in started:
        producer.kill()


def test_two_queues_training_at_once_get_dictionaries_of_their_own_numbers(
        pg_url: str, pg_schema: str, producers: list[_Producer], tmp_path: Path) -> None:
    # Both queues hold all but one sample: the next put of each trains a dictionary.
    a = _Producer(pg_url, pg_schema, "a", tmp_path / "a.json")
    producers.append(a)
    b = _Producer(pg_url, pg_schema, "b", tmp_path / "b.json")
    producers.append(b)
    seq = sql.SQL("pg_get_serial_sequence({}, 'id')").format(
        sql.Literal(f'"{pg_schema}".records'))
    with psycopg.connect(pg_url) as blocker, psycopg.connect(pg_url, autocommit=True) as look:
        # An uncommitted row of the dictionaries' queue under the ids A's next put and its
        # dictionary draw: A's dictionary append draws its id, then waits for this row.
        row = blocker.execute(sql.SQL("SELECT nextval({})").format(seq)).fetchone()
        assert row is not None
        for ident in (row[0] + 1, row[0] + 2):
            blocker.execute(sql.SQL(
                "INSERT INTO {}.records (id, queue, data, raw_size, enqueued_at) "
                "OVERRIDING SYSTEM VALUE VALUES (%s, %s, '', 0, 0)").format(
                    sql.Identifier(pg_schema)), (ident, DICTIONARY_QUEUE))

        def waiting(producer: _Producer) -> bool:
            found = look.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                "AND wait_event_type = 'Lock'", (producer.app,)).fetchone()
            return found is not None and found[0] > 0

        a.train()
        _wait_for("A's dictionary append waits", lambda: waiting(a))
        # B draws a later id; it stores its dictionary while A's is not yet visible, or
        # waits for A's to be.
        b.train()
        _wait_for("B is done or waits", lambda: b.proc.poll() is not None or waiting(b))
        blocker.rollback()
    a_items, b_items = a.items(), b.items()

    opts: dict[str, Any] = {"engine_options": {"schema": pg_schema}}
    with SyncQueue.create(pg_url, name="a", **opts) as qa, \
            SyncQueue.create(pg_url, name="b", **opts) as qb:
        engine = qa._core.engine
        numbers = {engine.get_meta("queue/a/zstd-dict"), engine.get_meta("queue/b/zstd-dict")}
        assert numbers == {b"1", b"2"}
        assert len(engine.peek(DICTIONARY_QUEUE, 10)) == 2
        assert qa.get_many(None) == a_items
        assert qb.get_many(None) == b_items
        assert len(a_items) == len(b_items) == SAMPLE_COUNT + 200
