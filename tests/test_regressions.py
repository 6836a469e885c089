"""Regressions: maxsize under concurrent puts, join and dead letters, purge, calls after
close, argument checks and read-only opens."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

import spoolq
from spoolq import SyncQueue
from spoolq.engines import SQLiteEngine


@pytest.mark.parametrize("many", [False, True])
def test_concurrent_puts_never_exceed_maxsize(path: str, many: bool) -> None:
    with SyncQueue.create(path, maxsize=3) as q:
        barrier = threading.Barrier(12)

        def put(i: int) -> None:
            barrier.wait()
            try:
                if many:
                    q.put_many([i], timeout=0.3)
                else:
                    q.put(i, timeout=0.3)
            except spoolq.Full:
                pass

        threads = [threading.Thread(target=put, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert q.qsize() == 3
        assert len(q.peek(100)) == 3


def test_put_nowait_succeeds_when_room_remains_during_concurrent_puts(path: str) -> None:
    with SyncQueue.create(path, maxsize=50) as q:
        barrier = threading.Barrier(8)
        fulls: list[int] = []

        def put(i: int) -> None:
            barrier.wait()
            for j in range(5):
                try:
                    q.put_nowait((i, j))
                except spoolq.Full:
                    fulls.append(i)

        threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert fulls == [] and q.qsize() == 40


# ---- join and dead letters ----------------------------------------------------------------

def _join_returns(q: SyncQueue[object], seconds: float = 5.0) -> bool:
    joiner = threading.Thread(target=q.join, daemon=True)
    joiner.start()
    joiner.join(seconds)
    return not joiner.is_alive()


def test_nacked_into_dead_letters_is_finished_for_join(path: str) -> None:
    with SyncQueue.create(path, max_attempts=1) as q:
        q.put("x")
        q.nack(q.lease())
        assert q.stats["dead"] == 1 and q.stats["unfinished"] == 0
        assert _join_returns(q)
        assert q.requeue_dead() == 1
        assert q.stats["unfinished"] == 1
        q.ack(q.lease())
        assert q.stats["unfinished"] == 0
        assert _join_returns(q)


def test_expired_into_dead_letters_is_finished_for_join(path: str) -> None:
    with SyncQueue.create(path, max_attempts=1, poll_interval=0.01) as q:
        q.put_many(["x", "y"])
        q.lease(ttl=0.05)
        assert q.get() == "y"
        q.task_done()
        time.sleep(0.1)
        with pytest.raises(spoolq.Empty):
            q.get(timeout=0.3)  # the wait reaps the lease: "x" goes to the dead letters
        assert q.stats["dead"] == 1 and q.stats["unfinished"] == 0
        assert _join_returns(q)


@pytest.mark.parametrize("lease", [False, True])
def test_undecodable_record_is_finished_for_join(disk_path: str, lease: bool) -> None:
    with SyncQueue.create(disk_path) as q:
        q._core.engine.append(q._core.name, [b"\xffnot a record"], [12], time.time())
    with SyncQueue.create(disk_path) as q:
        assert q.stats["unfinished"] == 1
        with pytest.raises(spoolq.Empty):
            if lease:
                q.lease(timeout=0.2)
            else:
                q.get(timeout=0.2)
        assert q.stats["dead"] == 1 and q.stats["unfinished"] == 0
        assert _join_returns(q)


def test_async_nack_into_dead_letters_is_finished_for_join(path: str) -> None:
    async def main() -> None:
        async with await spoolq.Queue.create(path, max_attempts=1) as q:
            await q.put("x")
            await q.nack(await q.lease())
            assert q.stats["unfinished"] == 0
            await asyncio.wait_for(q.join(), 5)
            assert await q.requeue_dead() == 1
            await q.ack(await q.lease())
            await asyncio.wait_for(q.join(), 5)
            assert q.stats["unfinished"] == 0

    asyncio.run(main())


# ---- purge ----------------------------------------------------------------------------------

def test_purge_keeps_items_taken_but_not_done_unfinished(path: str) -> None:
    with SyncQueue.create(path) as q:
        q.put_many([1, 2, 3])
        assert q.get() == 1
        assert q.purge() == 2
        assert q.stats["unfinished"] == 1
        q.task_done()
        assert q.stats["unfinished"] == 0
        assert _join_returns(q)
        with pytest.raises(ValueError):
            q.task_done()


def test_purge_of_dead_letters_leaves_unfinished_alone(path: str) -> None:
    with SyncQueue.create(path, max_attempts=1) as q:
        q.put_many([1, 2])
        q.nack(q.lease())
        assert q.get() == 2
        assert q.purge(dead=True) == 1
        assert q.stats["unfinished"] == 1
        q.task_done()
        assert _join_returns(q)


def test_async_purge_keeps_items_taken_but_not_done_unfinished(path: str) -> None:
    async def main() -> None:
        async with await spoolq.Queue.create(path) as q:
            await q.put_many([1, 2, 3])
            assert await q.get() == 1
            assert await q.purge() == 2
            assert q.stats["unfinished"] == 1
            q.task_done()
            await asyncio.wait_for(q.join(), 5)

    asyncio.run(main())


# ---- calls after close ------------------------------------------------------------------------

def test_sync_calls_after_close_raise_closed_error(path: str) -> None:
    q = SyncQueue.create(path)
    q.put_many([1, 2])
    msg = q.lease()
    q.close()
    q.close()  # harmless
    calls = {
        "put": lambda: q.put(3), "put_nowait": lambda: q.put_nowait(3),
        "put_many": lambda: q.put_many([3]), "put_many_empty": lambda: q.put_many([]),
        "get": q.get, "get_nowait": q.get_nowait, "get_timeout": lambda: q.get(timeout=0.1),
        "get_many": lambda: q.get_many(2), "lease": q.lease,
        "lease_many": lambda: q.lease_many(2), "peek": q.peek, "ack": lambda: q.ack(msg),
        "nack": lambda: q.nack(msg), "requeue_dead": q.requeue_dead, "purge": q.purge,
        "flush": q.flush,
    }
    for name, call in calls.items():
        with pytest.raises(spoolq.ClosedError):
            call()
            pytest.fail(f"{name} did not raise")


def test_sync_close_with_maxsize_then_put_raises_closed_error(path: str) -> None:
    q = SyncQueue.create(path, maxsize=1)
    q.close()
    with pytest.raises(spoolq.ClosedError):
        q.put(1)


# ---- argument checks ----------------------------------------------------------------------

NAN = float("nan")
INF = float("inf")


def test_sync_bad_numbers_are_refused_before_the_queue_is_touched(path: str) -> None:
    with SyncQueue.create(path, maxsize=10) as q:
        q.put_many([1, 2, 3])
        msg = q.lease()
        bad: list[tuple[type[Exception], object]] = [
            (TypeError, lambda: q.get_many(1.5)), (TypeError, lambda: q.get_many(True)),
            (ValueError, lambda: q.get_many(0)), (TypeError, lambda: q.peek(1.5)),
            (TypeError, lambda: q.peek(1, offset=0.5)), (TypeError, lambda: q.peek(True)),
            (TypeError, lambda: q.lease_many(2.0)),
            (ValueError, lambda: q.lease(ttl=NAN)), (ValueError, lambda: q.lease(ttl=INF)),
            (ValueError, lambda: q.lease(ttl=0)), (TypeError, lambda: q.lease(ttl="5")),
            (ValueError, lambda: q.nack(msg, delay=NAN)),
            (ValueError, lambda: q.nack(msg, delay=INF)),
            (ValueError, lambda: q.nack(msg, delay=-1)),
            (ValueError, lambda: q.get(timeout=NAN)), (ValueError, lambda: q.get(timeout=INF)),
            (TypeError, lambda: q.get(timeout="1")),
            (ValueError, lambda: q.get_many(2, timeout=NAN)),
            (ValueError, lambda: q.put(4, timeout=NAN)),
            (ValueError, lambda: q.put_many([4], timeout=-1)),
        ]
        for error, call in bad:
            with pytest.raises(error):
                call()  # type: ignore[operator]
        assert q.qsize() == 2 and q.stats["leased"] == 1
        q.ack(msg)  # the lease is still held: nothing touched it
        assert q.get_many(2) == [2, 3]


def test_async_bad_numbers_are_refused_before_the_queue_is_touched(path: str) -> None:
    async def main() -> None:
        async with await spoolq.Queue.create(path) as q:
            await q.put_many([1, 2, 3])
            msg = await q.lease()
            bad: list[tuple[type[Exception], object]] = [
                (TypeError, lambda: q.get_many(1.5)), (TypeError, lambda: q.peek(1.5)),
                (TypeError, lambda: q.peek(True)), (TypeError, lambda: q.lease_many(2.0)),
                (ValueError, lambda: q.lease(ttl=NAN)),
                (ValueError, lambda: q.nack(msg, delay=NAN)),
                (ValueError, lambda: q.get_many(2, timeout=NAN)),
                (ValueError, lambda: q.lease(timeout=INF)),
            ]
            for error, call in bad:
                with pytest.raises(error):
                    await call()  # type: ignore[operator]
            assert q.qsize() == 2 and q.stats["leased"] == 1
            await q.ack(msg)

    asyncio.run(main())


def test_unknown_engine_option_is_a_configuration_error(disk_path: str) -> None:
    with pytest.raises(spoolq.ConfigurationError, match="bogus") as info:
        SyncQueue.create(disk_path, engine_options={"bogus": 1})
    assert "options are" in str(info.value)
    with pytest.raises(spoolq.ConfigurationError, match="durability"):
        SyncQueue.create(disk_path, engine_options={"durability": "fsync"})
    with pytest.raises(spoolq.ConfigurationError, match="read_only"):
        SyncQueue.create(disk_path, engine_options={"read_only": "yes"})


def test_read_only_engine_option_is_honoured(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    with SyncQueue.create(path) as q:
        q.put_many([1, 2])
    with SyncQueue.create(path, engine_options={"read_only": True}) as q:
        assert q._core.engine.read_only  # type: ignore[attr-defined]
        assert q.peek(5) == [1, 2] and q.qsize() == 2
        with pytest.raises(spoolq.SpoolqError):
            q.put(3)
    with SyncQueue.create(path) as q:
        assert q.get_many(5, timeout=0) == [1, 2]


# ---- read-only opens ------------------------------------------------------------------------

def _file_bytes(path: str) -> dict[str, bytes]:
    """The bytes of a queue file, or of each file in a queue directory."""
    root = Path(path)
    files = sorted(root.rglob("*")) if root.is_dir() else [root]
    return {str(f): f.read_bytes() for f in files if f.is_file()}


def test_read_only_open_writes_nothing(disk_path: str) -> None:
    with SyncQueue.create(disk_path) as q:
        q.put_many([1, 2, 3])
    before = _file_bytes(disk_path)
    with SyncQueue.create(disk_path, compressor="zlib", max_attempts=2,
                          engine_options={"read_only": True}) as q:
        assert q.peek(5) == [1, 2, 3]
        assert q.qsize() == 3 and q.stats["unfinished"] == 3
        assert q.stats["compressor"] == "zlib"
        with pytest.raises(spoolq.SpoolqError):
            q.put(4)
    assert _file_bytes(disk_path) == before
    with SyncQueue.create(disk_path) as q:
        assert q.stats["compressor"] == "zstd"  # the read-only open stored nothing
        assert q.get_many(3) == [1, 2, 3]


@pytest.mark.parametrize("suffix", [".sqlite", ".lmdb"])
def test_read_only_open_beside_a_writer_with_leases(tmp_path: Path, suffix: str) -> None:
    path = str(tmp_path / f"q{suffix}")
    with SyncQueue.create(path, poll_interval=0.01) as writer:
        writer.put_many([1, 2])
        msg = writer.lease(ttl=0.05)
        time.sleep(0.1)  # the lease ran out; a read-only handle must not reap it
        with SyncQueue.create(path, poll_interval=0.01,
                              engine_options={"read_only": True}) as reader:
            assert reader.stats["leased"] == 1
            reader._core.refresh()
            assert reader.peek(5) == [2]
        assert writer.stats["leased"] == 1
        writer.ack(msg)


class _SlowDisk(SQLiteEngine):
    """The SQLite engine on a disk that takes 20 ms per write."""

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        time.sleep(0.02)
        return super().append(queue, records, raw_sizes, now)


def test_async_puts_arriving_while_others_are_written_never_exceed_maxsize(
        tmp_path: Path) -> None:
    """Items a flush is writing still take room: a put arriving meanwhile waits."""

    async def main() -> tuple[int, int]:
        engine = _SlowDisk(tmp_path / "q.sqlite")
        async with await spoolq.Queue.create(tmp_path / "q.sqlite", engine=engine,
                                             maxsize=2) as q:
            async def put(i: int) -> None:
                await asyncio.sleep(i * 0.005)  # they arrive while earlier ones are written
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(q.put(i), 0.2)

            await asyncio.gather(*(put(i) for i in range(20)))
            return q.qsize(), len(await q.peek(100))

    assert asyncio.run(main()) == (2, 2)


def test_queue_names_take_up_to_255_bytes_of_utf8_on_every_engine(path: str) -> None:
    longest = "é" * 127 + "x"  # 255 bytes
    with SyncQueue.create(path, name=longest) as q:
        q.put("kept")
        q.nack(q.lease(), delay=0)  # its leased and dead-letter bookkeeping too
        assert q.get_nowait() == "kept"
    for bad, why in (("x" * 256, "at most 255"), ("é" * 128, "at most 255"),
                     ("a\ud800b", "UTF-8"), ("", "non-empty"), ("a\x00b", "NUL")):
        with pytest.raises(spoolq.ConfigurationError, match=why):
            SyncQueue.create(path, name=bad)


def test_spoolqs_own_queues_cannot_be_opened_so_their_dictionaries_stay(
        tmp_path: Path) -> None:
    from tests.cli_support import run

    path = str(tmp_path / "q.sqlite")
    jobs = [{"job": i, "resize": f"photos/{i:05}.jpg"} for i in range(1500)]
    with SyncQueue.create(path, compressor="zstd-dict") as q:
        q.put_many(jobs[:1000])  # enough samples: a dictionary is trained and stored
        q.put_many(jobs[1000:])  # compressed with it
    engine = SQLiteEngine(path)
    try:
        assert len(engine.peek("__spoolq_dictionaries__", 10)) == 1
    finally:
        engine.close()
    for name in ("__spoolq_dictionaries__", "__spoolq_anything"):
        with pytest.raises(spoolq.ConfigurationError, match="reserved"):
            SyncQueue.create(path, name=name)
    result = run("purge", path, "-q", "__spoolq_dictionaries__", "--yes")
    assert result.exit_code == 2 and "reserved" in result.output
    with SyncQueue.create(path) as q:
        assert q.get_many(1500) == jobs
        assert q.qsize() == 0 and q.peek(1, dead=True) == []
