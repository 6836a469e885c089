"""zstd-dict keeps no more samples than a training needs, however the puts come: a batch
of large items (or puts made while a training waits for its turn) no longer holds up to a
thousand samples of 16 KiB, and the training no longer runs on all of them."""

from __future__ import annotations

import gc
import random
import tracemalloc
from pathlib import Path

from spoolq import SyncQueue
from spoolq.codec import Codec
from spoolq.engines import open_engine
from spoolq.zdict import DICTIONARY_QUEUE, SAMPLE_BYTES, SAMPLE_COUNT, SAMPLE_MAX_SIZE


def _large_items(n: int) -> list[dict[str, object]]:
    rnd = random.Random(5)
    return [{"rows": [{"event": rnd.choice(["click", "view", "buy"]),
                       "user": f"user-{rnd.randint(1, 90)}", "score": rnd.random()}
                      for _ in range(300)], "n": i} for i in range(n)]


def test_samples_stop_once_they_are_enough_to_train_from() -> None:
    items = _large_items(SAMPLE_COUNT)
    codec = Codec("cbor", "zstd-dict")
    gc.collect()
    tracemalloc.start()
    try:
        for item in items:  # a batch's encoding: nothing trains in between
            codec.encode(item)
        gc.collect()
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert codec.training_due
    # Enough to train from: SAMPLE_BYTES and a sample more, not every payload sampled.
    assert held < 2 * SAMPLE_BYTES + SAMPLE_MAX_SIZE, f"{held:,} bytes held by the samples"


def test_a_batch_of_large_items_trains_a_dictionary_from_what_is_enough(tmp_path: Path) -> None:
    items = _large_items(SAMPLE_COUNT)
    with SyncQueue.create(str(tmp_path) + "/q.sqlite", compressor="zstd-dict") as q:
        q.put_many(items)
        engine = open_engine(str(tmp_path) + "/q.sqlite", read_only=True)
        try:
            assert len(engine.peek(DICTIONARY_QUEUE, 10)) == 1
        finally:
            engine.close()
        q.put_many(items[:10])
        assert q.get_many(None) == items + items[:10]
