"""Several processes producing and consuming on one file: every item delivered exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import queue_path

PRODUCERS = CONSUMERS = 3
PER_PRODUCER = 10_000

PRODUCER = textwrap.dedent("""
    import sys, spoolq
    path, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with spoolq.SyncQueue.create(path) as q:
        for start in range(first, first + count, 250):
            q.put_many(range(start, min(start + 250, first + count)))
""")

CONSUMER = textwrap.dedent("""
    import json, os, sys, time, spoolq
    path, done = sys.argv[1], sys.argv[2]
    got = []
    with spoolq.SyncQueue.create(path) as q:
        while True:
            try:
                got += q.get_many(200, timeout=0.3)
            except spoolq.Empty:
                if not os.path.exists(done):
                    continue
                # Every producer has finished: wait out the poll interval so the next call
                # re-reads the file, then drain what is left.
                time.sleep(0.1)
                try:
                    got += q.get_many(None, block=False)
                except spoolq.Empty:
                    break
    print(json.dumps(got))
""")


@pytest.mark.parametrize("engine", ["lmdb", "sqlite"])
def test_producers_and_consumers_in_separate_processes(tmp_path: Path, engine: str) -> None:
    path = queue_path(tmp_path, engine)
    done = tmp_path / "producers-done"
    consumers = [subprocess.Popen([sys.executable, "-c", CONSUMER, path, str(done)],
                                  stdout=subprocess.PIPE, text=True)
                 for _ in range(CONSUMERS)]
    producers = [subprocess.Popen([sys.executable, "-c", PRODUCER, path,
                                   str(p * PER_PRODUCER), str(PER_PRODUCER)])
                 for p in range(PRODUCERS)]
    try:
        for proc in producers:
            assert proc.wait(60) == 0
        done.touch()
        outputs = [proc.communicate(timeout=60)[0] for proc in consumers]
    finally:
        for proc in producers + consumers:
            proc.kill()
            proc.wait()
    assert all(proc.returncode == 0 for proc in consumers)
    delivered = [item for out in outputs for item in json.loads(out)]
    assert len(delivered) == PRODUCERS * PER_PRODUCER, "an item was lost or delivered twice"
    assert sorted(delivered) == list(range(PRODUCERS * PER_PRODUCER))
    assert sum(1 for out in outputs if json.loads(out)) >= 2, "one consumer took everything"


@pytest.mark.parametrize("use_async", [False, True], ids=["SyncQueue", "Queue"])
def test_a_consumer_marks_task_done_for_items_another_process_put(
        tmp_path: Path, use_async: bool) -> None:
    """The get / task_done loop of a consumer whose items come from another process
    (put after the consumer opened the queue): each task_done is accepted, join() waits
    for the taken items' task_done, and one more task_done raises ValueError."""
    import asyncio
    import threading

    import spoolq

    path = str(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create(path) as q:
        q.put("before")  # present when the consumer opens

        def produce() -> None:
            subprocess.run([sys.executable, "-c", PRODUCER, path, "0", "3"], check=True)

        if not use_async:
            with spoolq.SyncQueue.create(path) as consumer:
                produce()
                got = [consumer.get(timeout=10) for _ in range(4)]
                joined = threading.Event()
                waiter = threading.Thread(target=lambda: (consumer.join(), joined.set()))
                waiter.start()
                for _ in got:
                    assert not joined.wait(0.05)  # an item is still being processed
                    consumer.task_done()
                waiter.join(5)
                assert joined.is_set()
                with pytest.raises(ValueError, match="too many times"):
                    consumer.task_done()
        else:
            async def main() -> list[object]:
                async with await spoolq.Queue.create(path) as consumer:
                    await asyncio.to_thread(produce)
                    got = [await consumer.get() for _ in range(4)]
                    join = asyncio.ensure_future(consumer.join())
                    for _ in got:
                        await asyncio.sleep(0.05)
                        assert not join.done()
                        consumer.task_done()
                    await asyncio.wait_for(join, 5)
                    with pytest.raises(ValueError, match="too many times"):
                        consumer.task_done()
                    return got

            got = asyncio.run(main())
        assert got == ["before", 0, 1, 2]
