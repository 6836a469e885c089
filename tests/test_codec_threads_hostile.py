"""Codec: custom codecs called from many threads, hostile records that expand when
deserialized, dictionaries that change under a reader."""

from __future__ import annotations

import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from spoolq import SyncQueue


class StatefulCompressor:
    """A compressor keeping its work in attributes, as many hand-written ones do: fine in
    one thread, it mixes up payloads when two threads call it at once."""

    name = "stateful-zlib"

    def __init__(self) -> None:
        self.calls_at_once = 0
        self.most_at_once = 0

    def _enter(self) -> None:
        self.calls_at_once += 1
        self.most_at_once = max(self.most_at_once, self.calls_at_once)

    def compress(self, data: bytes) -> bytes:
        self._enter()
        self.pending = data
        time.sleep(0.0005)  # what a real compressor spends, without holding the GIL
        out = zlib.compress(self.pending)
        self.calls_at_once -= 1
        return out

    def decompress(self, data: bytes) -> bytes:
        self._enter()
        self.incoming = data
        time.sleep(0.0005)
        out = zlib.decompress(self.incoming)
        self.calls_at_once -= 1
        return out


class StatefulSerializer:
    name = "stateful-json"

    def __init__(self) -> None:
        import json
        self._json = json

    def dumps(self, obj: Any) -> bytes:
        self.current = obj
        time.sleep(0.0005)
        return self._json.dumps(self.current).encode()

    def loads(self, data: bytes) -> Any:
        self.raw = data
        time.sleep(0.0005)
        return self._json.loads(self.raw)


def test_a_custom_codec_that_is_not_thread_safe_is_called_by_one_thread_at_a_time(
        tmp_path: Path) -> None:
    """SyncQueue is thread-safe, and its puts encode in the callers' threads: a custom
    serializer or compressor written for one thread must not turn puts from several
    threads into wrong items (or, with a C compressor object, a crash)."""
    compressor, serializer = StatefulCompressor(), StatefulSerializer()
    path = str(tmp_path / "q.sqlite")
    threads, each = 6, 60
    with SyncQueue.create(path, serializer=serializer, compressor=compressor,
                          compress_threshold=0) as q:
        barrier = threading.Barrier(threads)

        def put(worker: int) -> None:
            barrier.wait()
            for i in range(each):
                q.put({"worker": worker, "i": i, "text": f"{worker}-{i} " * 30})

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(put, range(threads)))

        def take(_: int) -> list[Any]:
            barrier.wait()
            return [q.get(timeout=5) for _ in range(each)]

        with ThreadPoolExecutor(threads) as pool:
            got = [item for items in pool.map(take, range(threads)) for item in items]
        assert q.stats["dead"] == 0
    expected = [{"worker": w, "i": i, "text": f"{w}-{i} " * 30}
                for w in range(threads) for i in range(each)]
    assert sorted(got, key=lambda x: (x["worker"], x["i"])) == expected
    assert compressor.most_at_once == 1
