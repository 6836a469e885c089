"""Edges of the public Codec's settings."""

from __future__ import annotations

import pytest

import spoolq


@pytest.mark.parametrize("threshold", [True, False])
def test_a_bool_threshold_is_refused_as_the_queue_refuses_compress_threshold(
        threshold: bool) -> None:
    # A bool is an int to Python, but True as a byte count is a mistake, which
    # compress_threshold of a queue refuses too.
    with pytest.raises(spoolq.ConfigurationError, match="threshold"):
        spoolq.Codec(threshold=threshold)


def test_threshold_zero_and_huge_are_taken() -> None:
    packed = spoolq.Codec(threshold=0)
    plain = spoolq.Codec(threshold=2**70)
    item = {"text": "spool " * 50}
    packed_record, size = packed.encode(item)
    plain_record, _ = plain.encode(item)
    assert len(packed_record) < size < len(plain_record)
    assert packed.decode(packed_record) == plain.decode(plain_record) == item
