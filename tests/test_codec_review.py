"""Codec and zstd dictionaries: training off the event loop, damaged dictionaries, items
the serializer would write but could not read back."""

from __future__ import annotations

import asyncio
import json
import random
import time

import spoolq
from spoolq.zdict import DICTIONARY_QUEUE


def _documents(n: int, rows: int = 500, seed: int = 1) -> list[bytes]:
    rnd = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "order", "user", "item", "price", "qty"]
    return [json.dumps({"n": i, "rows": [{"k": rnd.choice(words), "v": rnd.randint(0, 10**6)}
                                         for _ in range(rows)]}).encode() for i in range(n)]


def test_training_a_dictionary_on_the_memory_engine_does_not_hold_up_the_event_loop() -> None:
    # 100 samples of 14 KiB are enough to train from; training them takes tens of ms.
    docs = _documents(101)

    async def main() -> None:
        q = await spoolq.Queue.create(":memory:", serializer="raw", compressor="zstd-dict")
        try:
            slowest = 0.0
            for doc in docs[:100]:
                start = time.perf_counter()
                await q.put(doc)
                slowest = max(slowest, time.perf_counter() - start)
            engine = q._core.engine
            assert slowest < 0.02, f"a put held the event loop for {slowest * 1000:.0f} ms"
            deadline = time.monotonic() + 5
            while not engine.peek(DICTIONARY_QUEUE, 1):  # stored by a put once trained
                assert time.monotonic() < deadline, "the dictionary was never stored"
                await asyncio.sleep(0.01)
                await q.put(docs[100])
            await q.put(docs[100])
            tail = engine.peek("default", 1, offset=q.qsize() - 1)[0].data
            assert spoolq.codec.record_codec_names(tail)[1] == "zstd-dict"
            assert spoolq.codec.record_dictionary(tail) == 1
            got = [await q.get() for _ in range(q.qsize())]
            assert got[:100] == docs[:100] and set(got[100:]) == {docs[100]}
        finally:
            await q.aclose()

    asyncio.run(main())
