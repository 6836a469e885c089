"""Custom serializers and compressors that hand back a buffer they reuse on their next
call: what they return is copied before another thread may call them again."""

from __future__ import annotations

import json
import threading
import zlib
from pathlib import Path
from typing import Any

from spoolq import SyncQueue


class SlowCopy(bytearray):
    """A reused output buffer whose copy takes a while: while it is being copied, a
    second caller's call gets its chance to run (and would overwrite the buffer)."""

    def __init__(self, owner: Any) -> None:
        super().__init__()
        self.owner = owner

    def __bytes__(self) -> bytes:
        self.owner.copying.set()
        self.owner.other_call_done.wait(0.3)  # never set while the object's lock is held
        return bytes(bytearray(self))


class ReusingSerializer:
    """json into one buffer it reuses for every item, as zero-copy encoders do: not
    thread-safe, which spoolq's lock around a custom codec's calls is there for."""

    name = "reusing-json"

    def __init__(self) -> None:
        self.buf = SlowCopy(self)
        self.copying = threading.Event()
        self.other_call_done = threading.Event()

    def dumps(self, obj: Any) -> bytearray:
        self.buf.clear()
        self.buf += json.dumps(obj).encode()
        if obj == "second":
            self.other_call_done.set()
        return self.buf

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


class ReusingCompressor:
    """zlib into one buffer it reuses, for compress and decompress alike."""

    name = "reusing-zlib"

    def __init__(self) -> None:
        self.buf = SlowCopy(self)
        self.copying = threading.Event()
        self.other_call_done = threading.Event()
        self.second: bytes | None = None

    def compress(self, data: bytes) -> bytearray:
        self.buf.clear()
        self.buf += zlib.compress(data)
        if b"second" in data:
            self.other_call_done.set()
        return self.buf

    def decompress(self, data: bytes) -> bytearray:
        self.buf.clear()
        self.buf += zlib.decompress(data)
        if b"second" in self.buf:
            self.other_call_done.set()
        return self.buf


def _two_puts_at_once(q: SyncQueue[Any], codec: Any, first: Any, second: Any) -> None:
    """Put ``first``; once the codec copies its output, put ``second`` from another
    thread."""
    def put_second() -> None:
        codec.copying.wait(5)
        q.put(second)

    thread = threading.Thread(target=put_second)
    thread.start()
    q.put(first)
    thread.join(5)


def test_a_serializer_s_reused_buffer_is_copied_before_another_put_serializes(
        tmp_path: Path) -> None:
    """Each put stores its own item: the buffer a serializer hands back was copied after
    the lock that keeps other threads out of the serializer was let go, so a put from
    another thread in between stored the other item under the first put's checksum
    (two copies of one item, the other lost without a trace)."""
    ser = ReusingSerializer()
    with SyncQueue.create(str(tmp_path / "q.sqlite"), serializer=ser,
                          compressor="none") as q:
        _two_puts_at_once(q, ser, "first", "second")
        assert sorted(q.get_many(None, timeout=1)) == ["first", "second"]
        assert q.stats["dead"] == 0


def test_a_compressor_s_reused_buffer_is_copied_before_another_put_compresses(
        tmp_path: Path) -> None:
    comp = ReusingCompressor()
    first, second = "first " * 100, "second " * 100
    with SyncQueue.create(str(tmp_path / "q.sqlite"), compressor=comp) as q:
        _two_puts_at_once(q, comp, first, second)
        comp.copying.clear()
        comp.other_call_done.clear()
        assert sorted(q.get_many(None, timeout=1)) == [first, second]
        assert q.stats["dead"] == 0


def test_a_decompressor_s_reused_buffer_is_copied_before_another_get_decompresses(
        tmp_path: Path) -> None:
    comp = ReusingCompressor()
    first, second = "first " * 100, "second " * 100
    with SyncQueue.create(str(tmp_path / "q.sqlite"), compressor=comp) as q:
        q.put(first)
        q.put(second)
        comp.copying.clear()
        comp.other_call_done.clear()
        got: list[Any] = []

        def get_second() -> None:
            comp.copying.wait(5)
            got.append(q.get(timeout=5))

        thread = threading.Thread(target=get_second)
        thread.start()
        got.append(q.get(timeout=5))
        thread.join(5)
        assert sorted(got) == [first, second]
        assert q.stats["dead"] == 0
