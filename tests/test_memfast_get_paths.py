"""SyncQueue's get of one ready item on the memory engine: what it hands out, what it sets
aside, what it counts, and the bytes a put stores."""

from __future__ import annotations

import logging
import struct
import zlib
from typing import Any

import cbor2
import pytest

import spoolq
from spoolq.engines import StoredRecord


def _engine_queue(q: spoolq.SyncQueue[Any]) -> Any:
    return q._core.engine._queues["default"]  # type: ignore[attr-defined]


def test_items_that_compare_false_come_back_as_put() -> None:
    with spoolq.SyncQueue.create(":memory:") as q:
        items: list[Any] = [None, 0, "", [], {}, False, {"id": 1, "payload": "x" * 90}]
        for item in items:
            q.put(item)
        assert [q.get(timeout=1) for _ in items] == items
        with pytest.raises(spoolq.Empty):
            q.get_nowait()


def test_a_damaged_record_goes_to_the_dead_letters_and_the_get_hands_out_the_next(
        caplog: pytest.LogCaptureFixture) -> None:
    with spoolq.SyncQueue.create(":memory:") as q:
        q.put({"n": 1})
        q.put({"n": 2})
        fresh = _engine_queue(q).fresh
        rec = fresh[0]
        damaged = rec.data[:-1] + bytes([rec.data[-1] ^ 0xFF])
        fresh[0] = StoredRecord(rec.id, damaged, rec.raw_size, rec.attempts,
                                rec.enqueued_at, rec.reason)
        with caplog.at_level(logging.ERROR, logger="spoolq"):
            assert q.get(timeout=1) == {"n": 2}
        assert "failed its checksum" in caplog.text
        stats = q.stats
        assert (stats["count"], stats["dead"], stats["gets"], stats["puts"]) == (0, 1, 1, 2)
        assert stats["raw_size_bytes"] == 0 and stats["compressed_size_bytes"] == 0
        with pytest.raises(spoolq.CorruptError, match="failed its checksum"):
            q.peek(1, dead=True)  # set aside as it was, damaged


def test_a_get_that_finds_only_a_damaged_record_raises_empty_without_blocking() -> None:
    with spoolq.SyncQueue.create(":memory:") as q:
        q.put("only")
        fresh = _engine_queue(q).fresh
        rec = fresh[0]
        fresh[0] = rec._replace(data=rec.data[:7] + b"\xff" + rec.data[8:])
        with pytest.raises(spoolq.Empty):
            q.get_nowait()
        assert q.stats["dead"] == 1 and q.stats["gets"] == 0
        with pytest.raises(spoolq.Empty):
            q.get(timeout=0.05)


def test_a_cbor_item_nested_deeper_than_cbor2_reads_by_default_comes_back() -> None:
    item: Any = "core"
    for _ in range(1000):
        item = [item]
    with spoolq.SyncQueue.create(":memory:") as q:
        q.put(item)
        got = q.get(timeout=1)
        assert q.stats["dead"] == 0 and q.stats["gets"] == 1
    for _ in range(1000):
        assert isinstance(got, list) and len(got) == 1
        got = got[0]
    assert got == "core"


class _Refusing:
    """A serializer whose loads refuses every payload, counting its calls."""

    name = "refusing"

    def __init__(self) -> None:
        self.loads_calls = 0

    def dumps(self, obj: Any) -> bytes:
        return repr(obj).encode()

    def loads(self, data: bytes) -> Any:
        self.loads_calls += 1
        raise ValueError("refused")


def test_a_custom_serializer_that_refuses_a_payload_is_asked_once() -> None:
    ser = _Refusing()
    with spoolq.SyncQueue.create(":memory:", serializer=ser) as q:
        q.put("a")
        with pytest.raises(spoolq.Empty):
            q.get(timeout=0.05)
        assert ser.loads_calls == 1
        assert q.stats["dead"] == 1


def test_a_cbor_payload_that_cbor2_refuses_is_set_aside_with_cbor2s_error(
        caplog: pytest.LogCaptureFixture) -> None:
    with spoolq.SyncQueue.create(":memory:", compressor="none") as q:
        q.put("x")
        fresh = _engine_queue(q).fresh
        rec = fresh[0]
        payload = b"\x9f"  # an indefinite array that never ends
        head = rec.data[:3]
        crc = zlib.crc32(payload, zlib.crc32(head))
        fresh[0] = rec._replace(data=head + struct.pack("<I", crc) + payload)
        with caplog.at_level(logging.ERROR, logger="spoolq"), pytest.raises(spoolq.Empty):
            q.get_nowait()
        assert "could not be deserialized" in caplog.text
        assert q.stats["dead"] == 1


def test_a_small_record_is_its_header_its_checksum_and_the_cbor_payload() -> None:
    item = {"id": 7, "kind": "order.paid", "payload": "queue coupon refund"}
    with spoolq.SyncQueue.create(":memory:") as q:
        q.put(item)
        data = _engine_queue(q).fresh[0].data
        payload = cbor2.dumps(item)
        head = bytes([1, spoolq.codec.SERIALIZERS["cbor"][0], 0])
        assert data == head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload
        assert q.stats["raw_size_bytes"] == len(payload)
        assert q.stats["compressed_size_bytes"] == len(data)
        assert q.get(timeout=1) == item


def test_counts_and_stats_follow_single_puts_and_gets() -> None:
    items = [{"id": i, "payload": "p" * (i % 300)} for i in range(500)]
    with spoolq.SyncQueue.create(":memory:") as q:
        for item in items:
            q.put(item)
        assert q.qsize() == 500 and q.stats["unfinished"] == 500
        got = [q.get(timeout=1) for _ in range(250)]
        assert got == items[:250]
        stats = q.stats
        engine_counts = q._core.engine.counts("default")
        assert (stats["count"], stats["puts"], stats["gets"]) == (250, 500, 250)
        assert stats["raw_size_bytes"] == engine_counts.raw_bytes
        assert stats["compressed_size_bytes"] == engine_counts.stored_bytes
        for _ in range(250):
            q.task_done()
        assert q.stats["unfinished"] == 250
        assert [q.get_nowait() for _ in range(250)] == items[250:]
        assert q.stats["raw_size_bytes"] == 0 and q.stats["compressed_size_bytes"] == 0
        assert q.empty()
