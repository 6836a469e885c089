"""The reason a record that would decompress beyond the limit is refused reads right."""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Callable

import pytest

import spoolq
from spoolq import _builtin_codecs as builtin_codecs
from spoolq import codec as codec_module
from spoolq import zdict

LIMIT = 64 * 1024


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lower the decompression limit so that bombs are cheap to make and read."""
    for module in (zdict, codec_module, builtin_codecs):
        monkeypatch.setattr(module, "MAX_UNPACKED_SIZE", LIMIT)
    monkeypatch.setattr(builtin_codecs, "_ZLIB_SAFE_SIZE", LIMIT // 1032)


PACKERS: dict[str, Callable[[bytes], bytes]] = {
    "zlib": zlib.compress, "bz2": bz2.compress, "lzma": lzma.compress}


@pytest.mark.usefixtures("small_limit")
@pytest.mark.parametrize("name", sorted(PACKERS))
def test_a_bomb_is_refused_naming_the_limit_in_plain_words(name: str) -> None:
    payload = PACKERS[name](bytes(LIMIT * 4))
    head = bytes([1, 1, spoolq.codec.COMPRESSORS[name][0]])
    record = head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload
    with pytest.raises(spoolq.CorruptError) as caught:
        spoolq.Codec("raw", name).decode(record, 5)
    message = str(caught.value)
    assert message == (f"record 5 could not be decompressed: the payload decompresses to "
                       f"more than {LIMIT} bytes, the most spoolq ever compresses")
