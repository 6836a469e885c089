"""Batcher: killed processes, failing and hanging sinks, stopping under load, settings."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import spoolq
from spoolq import Batcher, Queue

# Appends each batch the sink receives as one JSON line to LOG (written before the sink
# returns, so a batch in the log was received), adds N items one by one and prints each
# number once its add has returned.
LOGGING_ADDER = textwrap.dedent("""
    import asyncio, json, os, sys
    from spoolq import Batcher
    path, log, first, n, kill_before_ack, interval = (
        sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1",
        float(sys.argv[6]))
    async def sink(batch):
        with open(log, "a") as f:
            f.write(json.dumps(batch) + "\\n")
    async def main():
        b = Batcher(sink, queue=path, max_batch_size=7, flush_interval=interval)
        await b.start()
        if kill_before_ack:
            ack = b.queue.ack
            async def dying_ack(*msgs):
                os.kill(os.getpid(), 9)  # the sink has returned; the ack is not written
                await ack(*msgs)
            b.queue.ack = dying_ack
        for i in range(first, first + n):
            await b.add(i)
            print(i, flush=True)
        await asyncio.sleep(60)
    asyncio.run(main())
""")


def _log(path: Path) -> list[list[int]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _check_at_least_once_in_order(batches: list[list[int]], added: list[int]) -> None:
    """Every added item was received; the first receipt of each item comes in the order
    of the adds; a batch received again is received whole and before any later item."""
    received = [i for batch in batches for i in batch]
    assert set(added) <= set(received)
    firsts: list[int] = []
    seen: set[int] = set()
    for i in received:
        if i not in seen:
            seen.add(i)
            firsts.append(i)
    assert firsts == sorted(firsts)
    # A repeat only ever repeats items of the last new batch that was received before it.
    for k, batch in enumerate(batches):
        earlier = {i for b in batches[:k] for i in b}
        if set(batch) & earlier:
            assert batch[0] == min(batch)
            assert batch == sorted(batch)


async def _drain(path: str, log: Path) -> None:
    async def sink(batch: list[int]) -> None:
        with log.open("a") as f:
            f.write(json.dumps(batch) + "\n")

    async with Batcher(sink, queue=path, max_batch_size=7, flush_interval=0.01):
        pass


async def test_a_kill_after_the_sink_returned_before_the_ack_sends_the_batch_again_first(
        tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    log = tmp_path / "log"
    # Flushed when 7 items wait, not at an interval that a slow machine lets pass first.
    with subprocess.Popen([sys.executable, "-c", LOGGING_ADDER, path, str(log), "0", "20",
                           "1", "60"], stdout=subprocess.PIPE, text=True) as child:
        child.wait(30)
        assert child.returncode == -signal.SIGKILL
    first = _log(log)
    assert first == [list(range(7))]
    await _drain(path, log)
    batches = _log(log)
    # The batch whose ack was never written comes again, whole and first.
    assert batches[1] == list(range(7))
    _check_at_least_once_in_order(batches, list(range(7)))
    async with await Queue.create(path, name="batcher") as q:
        assert q.qsize() == 0 and q.stats["leased"] == 0


@pytest.mark.parametrize("seed", [1, 2])
async def test_kills_at_random_moments_lose_nothing_and_keep_the_order(
        tmp_path: Path, seed: int, disk_engine: str) -> None:
    from .conftest import queue_path

    rnd = random.Random(seed)
    path = queue_path(tmp_path, disk_engine)
    log = tmp_path / "log"
    added: list[int] = []
    for rounds in range(4):
        first = rounds * 1000
        with subprocess.Popen([sys.executable, "-c", LOGGING_ADDER, path, str(log),
                               str(first), "300", "0", "0.01"], stdout=subprocess.PIPE,
                              text=True) as child:
            assert child.stdout is not None
            stop_at = first + rnd.randrange(5, 200)
            for line in child.stdout:
                added.append(int(line))
                if int(line) >= stop_at:
                    break
            time.sleep(rnd.random() * 0.05)
            child.send_signal(signal.SIGKILL)
            # Items whose add returned after the last line read still count as added.
            rest = child.stdout.read()
            added.extend(int(x) for x in rest.split())
            child.wait(10)
    await _drain(path, log)
    _check_at_least_once_in_order(_log(log), added)


async def test_a_batch_that_fails_max_attempts_times_goes_to_the_dead_letters_whole(
        tmp_path: Path) -> None:
    calls: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        calls.append(batch)
        if 0 in batch:
            raise ConnectionError("refused")

    async with await Queue.create(str(tmp_path / "q.sqlite"), max_attempts=3) as q:
        async with Batcher(sink, queue=q, max_batch_size=4, flush_interval=0.01,
                           retry_delay=0.01, max_retry_delay=0.02) as b:
            await b.add_many(range(10))
            for _ in range(300):
                if b.stats["items"] == 6:
                    break
                await asyncio.sleep(0.01)
            assert b.stats["items"] == 6
        assert calls[:3] == [[0, 1, 2, 3]] * 3
        assert calls[3:] == [[4, 5, 6, 7], [8, 9]]
        assert await q.peek(10, dead=True) == [0, 1, 2, 3]
        assert q.qsize() == 0


async def test_stop_ends_while_another_handle_keeps_filling_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    received: list[int] = []

    async def sink(batch: list[int]) -> None:  # about 1,000 items a second
        await asyncio.sleep(0.005)
        received.extend(batch)

    async with await Queue.create(path, name="batcher") as other:
        b = Batcher(sink, queue=path, max_batch_size=5, flush_interval=0.01)
        await b.start()
        producing = True

        async def produce() -> None:
            n = 0
            until = time.monotonic() + 8
            while producing and time.monotonic() < until:
                await other.put_many(range(n, n + 20))  # about 2,000 a second
                n += 20
                await asyncio.sleep(0.01)

        producer = asyncio.create_task(produce())
        await asyncio.sleep(0.3)
        try:
            await asyncio.wait_for(asyncio.shield(b.stop()), 4)
        finally:
            producing = False
            await producer
            await b.stop()
        assert received == list(range(len(received)))


async def test_flush_on_interval_under_a_steady_trickle_of_adds(tmp_path: Path) -> None:
    times: list[float] = []

    async def sink(batch: list[int]) -> None:
        times.append(time.monotonic())

    async with Batcher(sink, queue=str(tmp_path / "q.sqlite"), max_batch_size=10_000,
                       flush_interval=0.2) as b:
        start = time.monotonic()
        i = 0
        while time.monotonic() - start < 1.5:
            await b.add(i)
            i += 1
            await asyncio.sleep(0.01)
    gaps = [b - a for a, b in itertools.pairwise(times[:-1])]  # the last: stop()'s
    assert len(times) >= 5
    assert max(gaps) < 0.5, gaps


@pytest.mark.parametrize(("kwargs", "word"), [
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"max_batch_size": -1}, "max_batch_size"),
    ({"max_batch_size": True}, "max_batch_size"),
    ({"flush_interval": -1.0}, "flush_interval"),
    ({"flush_interval": 0}, "flush_interval"),
    ({"flush_interval": math.nan}, "flush_interval"),
    ({"retry_delay": 2.0, "max_retry_delay": 1.0}, "retry_delay"),
    ({"lease_ttl": math.inf}, "lease_ttl"),
])
def test_bad_arguments_are_refused_naming_them(tmp_path: Path, kwargs: dict[str, object],
                                                word: str) -> None:
    async def sink(batch: list[int]) -> None:
        pass

    with pytest.raises(spoolq.ConfigurationError, match=word):
        Batcher(sink, queue=str(tmp_path / "q.sqlite"), **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "q.sqlite").exists()


@pytest.mark.parametrize("sink", [None, 3, "send", [print]])
def test_a_sink_that_is_not_callable_is_refused(sink: object) -> None:
    with pytest.raises(spoolq.ConfigurationError, match="on_flush"):
        Batcher(sink)  # type: ignore[arg-type]


async def test_a_passed_queue_closed_while_its_batch_is_in_flight_fails_stop_at_once(
        tmp_path: Path) -> None:
    q: Queue[int] = await Queue.create(str(tmp_path / "q.sqlite"))

    async def sink(batch: list[int]) -> None:
        await q.aclose()

    b = Batcher(sink, queue=q, max_batch_size=3, flush_interval=60)
    await b.start()
    await b.add_many(range(5))
    with pytest.raises(spoolq.ClosedError):
        await asyncio.wait_for(b.flush(), 5)
    with pytest.raises(spoolq.ClosedError):
        await asyncio.wait_for(b.stop(), 5)
    assert not b.stats["running"]
    async with await Queue.create(str(tmp_path / "q.sqlite")) as again:
        # The batch the sink had when its queue was closed is given back on close.
        assert await again.peek(5) == list(range(5))


async def test_flush_inside_the_sink_raises_instead_of_hanging(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    batches: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        try:
            await asyncio.wait_for(b.flush(), 5)
        except RuntimeError as exc:
            errors.append(exc)
        batches.append(batch)

    b = Batcher(sink, queue=str(tmp_path / "q.sqlite"), max_batch_size=2, flush_interval=60)
    await b.start()
    await b.add_many(range(4))
    await asyncio.wait_for(b.stop(), 5)
    assert batches == [[0, 1], [2, 3]]
    assert len(errors) == 2 and all("on_flush" in str(e) for e in errors)


@pytest.mark.parametrize("wrap", [False, True])
async def test_stop_inside_the_sink_stops_once_the_sink_returns(tmp_path: Path,
                                                               wrap: bool) -> None:
    batches: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        await (asyncio.wait_for(b.stop(), 5) if wrap else b.stop())
        batches.append(batch)

    path = str(tmp_path / "q.sqlite")
    b = Batcher(sink, queue=path, max_batch_size=2, flush_interval=60)
    await b.start()
    await b.add_many(range(4))
    for _ in range(500):
        if not b.stats["running"] and b.stats["items"] == 4:
            break
        await asyncio.sleep(0.01)
    await asyncio.wait_for(b.stop(), 5)
    # The stop asked for inside the sink flushes the rest, as a stop does, and closes.
    assert batches == [[0, 1], [2, 3]]
    with pytest.raises(RuntimeError):
        b.queue  # noqa: B018


# Adds its own numbers in add_many chunks, then stops; its sink logs what it got.
SHARING_ADDER = textwrap.dedent("""
    import asyncio, json, sys
    from spoolq import Batcher
    path, log, first = sys.argv[1], sys.argv[2], int(sys.argv[3])
    async def sink(batch):
        with open(log, "a") as f:
            f.write(json.dumps(batch) + "\\n")
    async def main():
        async with Batcher(sink, queue=path, max_batch_size=9, flush_interval=0.01) as b:
            for i in range(first, first + 600, 3):
                await b.add_many([i, i + 1, i + 2])
    asyncio.run(main())
""")


async def test_several_batcher_processes_on_one_file_send_each_item_once(
        shared_path: str, tmp_path: Path) -> None:
    logs = [tmp_path / f"log{k}" for k in range(3)]
    children = [subprocess.Popen([sys.executable, "-c", SHARING_ADDER, shared_path, str(log),
                                  str(k * 10_000)]) for k, log in enumerate(logs)]
    try:
        codes = [await asyncio.to_thread(child.wait, 60) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert codes == [0, 0, 0]
    everything: list[int] = []
    for log in logs:
        got = [i for batch in _log(log) for i in batch]
        everything.extend(got)
        # Each process sends the items it received of each producer in that one's order.
        for k in range(3):
            mine = [i for i in got if k * 10_000 <= i < (k + 1) * 10_000]
            assert mine == sorted(mine)
    assert sorted(everything) == sorted(k * 10_000 + i for k in range(3) for i in range(600))


async def test_the_retry_delay_doubles_up_to_its_cap_while_adds_keep_filling_batches(
        tmp_path: Path) -> None:
    calls: list[tuple[float, list[int]]] = []

    async def sink(batch: list[int]) -> None:
        calls.append((time.monotonic(), batch))
        if len(calls) <= 5:
            raise ConnectionError("down")

    async with Batcher(sink, queue=str(tmp_path / "q.sqlite"), max_batch_size=3,
                       flush_interval=60, retry_delay=0.1, max_retry_delay=0.4) as b:
        await b.add_many(range(3))
        n = 3
        while len(calls) < 6:
            await b.add_many(range(n, n + 3))  # a full batch each time: wakes the flusher
            n += 3
            await asyncio.sleep(0.01)
        for _ in range(300):
            if b.stats["items"] == n:
                break
            await asyncio.sleep(0.01)
        assert b.stats["failures"] == 5
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(calls[:6])]
    for gap, want in zip(gaps, [0.1, 0.2, 0.4, 0.4, 0.4], strict=True):
        assert want * 0.9 <= gap < want + 0.3, gaps
    assert all(batch == [0, 1, 2] for _, batch in calls[:6])
    sent = [i for _, batch in calls[5:] for i in batch]
    assert sent == list(range(n))


def test_an_empty_queue_path_is_refused() -> None:
    # SQLite takes "" for a temporary database, deleted on close: every item would be
    # lost with the process instead of waiting in a file for the next start.
    async def sink(batch: list[int]) -> None:
        pass

    with pytest.raises(spoolq.ConfigurationError, match="queue"):
        Batcher(sink, queue="")


async def test_stop_after_the_flusher_task_was_cancelled_still_flushes_and_returns(
        tmp_path: Path) -> None:
    # As a server's shutdown does when it cancels every task it finds before cleaning up.
    batches: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        batches.append(batch)

    b = Batcher(sink, queue=str(tmp_path / "q.sqlite"), max_batch_size=100, flush_interval=60)
    await b.start()
    await b.add_many(range(5))
    flusher = next(t for t in asyncio.all_tasks() if t.get_name().startswith("spoolq-batcher"))
    flusher.cancel()
    await asyncio.wait((flusher,))
    await asyncio.wait_for(b.stop(), 5)  # neither CancelledError nor a skipped flush
    assert batches == [list(range(5))]
    assert b.stats["queued"] == 0


def test_a_generator_function_sink_is_refused() -> None:
    # Calling it runs none of its body: every batch would be acked unsent.
    async def agen(batch: list[int]):  # type: ignore[no-untyped-def]
        yield batch

    def gen(batch: list[int]):  # type: ignore[no-untyped-def]
        yield batch

    for sink in (agen, gen):
        with pytest.raises(spoolq.ConfigurationError, match="on_flush"):
            Batcher(sink)


async def test_a_sink_returning_a_generator_fails_its_flush_and_keeps_the_batch(
        tmp_path: Path) -> None:
    ran: list[list[int]] = []

    async def agen(batch: list[int]):  # type: ignore[no-untyped-def]
        ran.append(batch)
        yield

    def sink(batch: list[int]) -> object:  # a plain function handing on to the generator
        return agen(batch)

    b = Batcher(sink, queue=str(tmp_path / "q.sqlite"), flush_interval=60)
    await b.start()
    await b.add_many(range(3))
    assert await b.flush() is False
    assert b.stats["failures"] == 1 and b.stats["items"] == 0
    assert await b.queue.peek(5) == [0, 1, 2]
    await b.stop()


async def test_stop_while_start_opens_the_queue_stops_what_start_started(
        tmp_path: Path) -> None:
    batches: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        batches.append(batch)

    b = Batcher(sink, queue=str(tmp_path / "q.sqlite"), flush_interval=60)
    starting = asyncio.create_task(b.start())
    await asyncio.sleep(0)  # start() is opening the queue
    await b.stop()
    await starting
    # The stop came after the start: the Batcher is stopped and its queue closed.
    assert not b.stats["running"]
    with pytest.raises(RuntimeError):
        b.queue  # noqa: B018
    with pytest.raises(RuntimeError):
        await b.add(1)


async def test_stats_count_the_items_sent_when_the_sink_empties_its_list(
        tmp_path: Path) -> None:
    sent: list[int] = []

    async def sink(batch: list[int]) -> None:
        while batch:
            sent.append(batch.pop(0))

    async with Batcher(sink, queue=str(tmp_path / "q.sqlite"), max_batch_size=2,
                       flush_interval=60) as b:
        await b.add_many(range(5))
        await b.flush()
        assert b.stats["items"] == 5 and b.stats["flushes"] == 3
    assert sent == list(range(5))
