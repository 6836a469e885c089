"""A handle whose queue got its zstd dictionary from another handle as that dictionary
filled the file uses it, rather than stop at the full file and compress without one."""

from __future__ import annotations

import random
from pathlib import Path

from spoolq import SyncQueue
from spoolq.codec import record_dictionary
from spoolq.engines import open_engine
from spoolq.zdict import DICTIONARY_QUEUE, SAMPLE_COUNT


def _events(n: int, seed: int) -> list[dict[str, object]]:
    rnd = random.Random(seed)
    return [{"event": rnd.choice(["click", "view", "buy"]), "user": f"user-{rnd.randint(1, 90)}",
             "path": f"/products/{rnd.randint(1, 50)}", "n": i} for i in range(n)]


def test_the_dictionary_that_filled_the_file_is_used_by_the_queue_s_other_handles(
        tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    with SyncQueue.create(path, compressor="zstd-dict", name="other") as q:
        q.put_many(_events(SAMPLE_COUNT, 1))
    engine = open_engine(path)
    try:
        one = engine.peek(DICTIONARY_QUEUE, 1)[0].data
        engine.append(DICTIONARY_QUEUE, [one] * 253, [len(one)] * 253, 0.0)
    finally:
        engine.close()
    items = _events(SAMPLE_COUNT + 50, 2)
    with SyncQueue.create(path, compressor="zstd-dict") as a, \
            SyncQueue.create(path, compressor="zstd-dict") as b:
        a.put_many(items[:SAMPLE_COUNT])  # trains dictionary 255: the file is full
        b.put_many(items[:SAMPLE_COUNT])
        b.put_many(items[SAMPLE_COUNT:])
    engine = open_engine(path, read_only=True)
    try:
        tail = engine.peek("default", 50, offset=2 * SAMPLE_COUNT)
        assert {record_dictionary(rec.data) for rec in tail} == {255}
    finally:
        engine.close()
