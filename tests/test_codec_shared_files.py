"""Records, serializers, compressors and trained zstd dictionaries, on real queue files
shared by several handles and processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from spoolq import SyncQueue
from spoolq.codec import record_dictionary
from spoolq.engines import open_engine
from spoolq.zdict import DICTIONARY_QUEUE, SAMPLE_COUNT

from .conftest import SHARED_ENGINES, queue_path
from .test_zstd_dict import damage_first_dictionary


def _event(who: str, i: int) -> dict[str, object]:
    return {"who": who, "n": i, "event": ("view", "click", "buy")[i % 3],
            "path": f"/products/{i % 41}"}


# Opens the queue, puts some records, says so, waits for a line on stdin, then puts
# enough more to make its own samples due for training.
LATE_PRODUCER = textwrap.dedent("""
    import sys, spoolq
    path, first, more = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    def event(i):
        return {"who": "late", "n": i, "event": ("view", "click", "buy")[i % 3],
                "path": f"/products/{i % 41}"}
    with spoolq.SyncQueue.create(path, compressor="zstd-dict") as q:
        q.put_many([event(i) for i in range(first)])
        print("ready", flush=True)
        sys.stdin.readline()
        for i in range(first, first + more):
            q.put(event(i))
""")


@pytest.mark.parametrize("engine", SHARED_ENGINES)
def test_a_queue_dictionary_another_process_trained_is_used_not_trained_again(
        tmp_path: Path, engine: str) -> None:
    path = queue_path(tmp_path, engine)
    SyncQueue.create(path, compressor="zstd-dict").close()
    first, more = SAMPLE_COUNT // 2, SAMPLE_COUNT // 2 + 100
    with subprocess.Popen([sys.executable, "-c", LATE_PRODUCER, path, str(first), str(more)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as late:
        try:
            assert late.stdout is not None and late.stdin is not None
            assert late.stdout.readline().strip() == "ready"
            # The other process samples from its first record on; this one trains first.
            with SyncQueue.create(path, compressor="zstd-dict") as q:
                q.put_many([_event("early", i) for i in range(SAMPLE_COUNT + 10)])
            late.stdin.write("go\n")
            late.stdin.flush()
            assert late.wait(60) == 0
        finally:
            if late.poll() is None:
                late.kill()
    eng = open_engine(path, read_only=True)
    try:
        assert len(eng.peek(DICTIONARY_QUEUE, 255)) == 1  # trained once, for the queue
        assert eng.get_meta("queue/default/zstd-dict") == b"1"
        records = eng.peek("default", 3 * SAMPLE_COUNT)
        assert record_dictionary(records[-1].data) == 1  # the late process uses it
    finally:
        eng.close()
    with SyncQueue.create(path) as q:
        items = q.get_many(None)
    assert sorted(item["n"] for item in items if item["who"] == "late") == list(
        range(first + more))
    assert q.stats["dead"] == 0


# A serializer that files large attachments in a queue of their own, encoded by the same
# object, and puts only their ids in the item itself.
CLAIM_CHECK = textwrap.dedent("""
    import json, sys, spoolq

    class ClaimCheck:
        name = "claim-check"
        blobs = None

        def dumps(self, item):
            if isinstance(item, dict) and "attachment" in item:
                self.blobs.put({"blob": item["attachment"]})
                item = {k: v for k, v in item.items() if k != "attachment"}
            return json.dumps(item).encode()

        def loads(self, data):
            return json.loads(data)

    codec = ClaimCheck()
    with spoolq.SyncQueue.create(sys.argv[1], name="blobs", serializer=codec) as blobs, \\
            spoolq.SyncQueue.create(sys.argv[1], name="mails", serializer=codec) as mails:
        codec.blobs = blobs
        mails.put({"to": "a@example.org", "attachment": "x" * 300})
        print(mails.get(timeout=5), blobs.get(timeout=5)["blob"] == "x" * 300, flush=True)
""")


@pytest.mark.parametrize("engine", SHARED_ENGINES)
def test_a_custom_serializer_may_put_into_a_queue_that_uses_it_too(
        tmp_path: Path, engine: str) -> None:
    done = subprocess.run([sys.executable, "-c", CLAIM_CHECK, queue_path(tmp_path, engine)],
                          capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["{'to': 'a@example.org'} True"]


def test_a_queue_whose_dictionary_is_damaged_trains_another_and_says_so_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = queue_path(tmp_path, "sqlite")
    with SyncQueue.create(path, compressor="zstd-dict") as q:
        q.put_many([_event("first", i) for i in range(SAMPLE_COUNT + 10)])
    damage_first_dictionary(path)
    with SyncQueue.create(path, compressor="zstd-dict") as q:
        q.put_many([_event("second", i) for i in range(SAMPLE_COUNT + 10)])
        q.put(_event("third", 0))
        assert len(q.get_many(None)) == 2 * (SAMPLE_COUNT + 10) + 1
    eng = open_engine(path, read_only=True)
    try:
        assert len(eng.peek(DICTIONARY_QUEUE, 255)) == 2
        assert eng.get_meta("queue/default/zstd-dict") == b"2"
    finally:
        eng.close()
    assert caplog.text.count("zstd dictionary 1 of the file is damaged") == 1
