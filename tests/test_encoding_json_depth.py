"""A json item as deep as a put accepts comes back from a get, however deep the
stack of the call that gets it."""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq import SerializationError, SyncQueue


def _nested(depth: int) -> list[Any]:
    item: list[Any] = []
    for _ in range(depth):
        item = [item]
    return item


def _depth_of(item: Any) -> int:
    depth = 0
    while item:
        item, depth = item[0], depth + 1
    return depth


def _deepest_put(q: SyncQueue[Any]) -> int:
    """The deepest nesting q.put takes from this test's frame (json's limit is the
    interpreter's recursion limit less the stack already in use)."""
    low, high = 1, sys.getrecursionlimit() + 10
    while low + 1 < high:
        middle = (low + high) // 2
        try:
            q.put(_nested(middle))
        except SerializationError:
            high = middle
        else:
            q.get_nowait()
            low = middle
    return low


def _get_deeper(q: SyncQueue[Any], frames: int) -> Any:
    if frames:
        return _get_deeper(q, frames - 1)
    return q.get(timeout=5)


@pytest.mark.parametrize("frames", [20, 200])
def test_the_deepest_json_item_a_put_takes_is_got_from_a_deeper_stack(
        tmp_path: Path, frames: int) -> None:
    with SyncQueue.create(str(tmp_path / "q.sqlite"), serializer="json") as q:
        depth = _deepest_put(q)
        assert depth > 500
        q.put(_nested(depth))
        assert _depth_of(_get_deeper(q, frames)) == depth
        assert q.qsize() == 0


def test_a_json_record_nested_beyond_any_put_is_still_refused() -> None:
    codec = spoolq.Codec("json", "none")
    record, _ = spoolq.Codec("raw", "none").encode(b"[" * 200_000 + b"]" * 200_000)
    # The raw serializer's id in the header swapped for json's, checksum made anew.
    payload = record[7:]
    head = bytes([1, 4, 0])
    record = head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload
    with pytest.raises(SerializationError, match="recursion"):
        codec.decode(record)
