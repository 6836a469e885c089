"""The raw serializer takes any bytes-like object, as the docs say."""

from __future__ import annotations

import array
from pathlib import Path

import pytest

from spoolq import SerializationError, SyncQueue


def test_raw_takes_every_bytes_like_item_and_gives_back_its_bytes(tmp_path: Path) -> None:
    """An array.array (or any object with the buffer protocol) is bytes-like; the raw
    serializer refused everything but bytes, bytearray and memoryview."""
    words = array.array("H", [1, 2, 0xFFFF])
    with SyncQueue.create(str(tmp_path / "q.sqlite"), serializer="raw") as q:
        q.put(array.array("B", b"abc"))
        q.put(words)
        q.put(memoryview(b"abcdef")[::2])
        assert q.get_many(3, timeout=1) == [b"abc", words.tobytes(), b"ace"]


@pytest.mark.parametrize("item", ["text", 5, None, [b"a"]])
def test_raw_still_refuses_what_is_not_bytes_like(tmp_path: Path, item: object) -> None:
    with SyncQueue.create(str(tmp_path / "q.sqlite"), serializer="raw") as q:
        with pytest.raises(SerializationError, match="bytes-like"):
            q.put(item)
        assert q.qsize() == 0
