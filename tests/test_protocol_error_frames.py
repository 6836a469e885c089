"""ERROR frames: any message, however long or whatever its characters, becomes a frame
that fits in the smallest reply limit and decodes as text."""

from __future__ import annotations

import cbor2
import pytest

from spoolq.errors import EngineError
from spoolq.protocol import (
    MIN_MAX_REPLY,
    ClientProtocol,
    ErrorCode,
    FrameDecoder,
    encode_error,
    encode_preamble,
)


@pytest.mark.parametrize("message", [
    "no such file: /srv/q\udcff.sqlite",  # an undecodable file name, as os.fsdecode gives it
    "x" * 300 + "\udcff",
    "\ud800" * 2000,
    "é" * 2000,
    "",
])
def test_every_message_becomes_an_error_frame_a_client_reads(message: str) -> None:
    frame = encode_error(7, ErrorCode.ENGINE, message)
    assert len(frame) <= MIN_MAX_REPLY
    ((decoded),) = FrameDecoder(MIN_MAX_REPLY).feed(frame)
    text = cbor2.loads(decoded.body)["message"]
    assert isinstance(text, str) and len(text.encode("utf-8")) <= 960
    client = ClientProtocol(max_frame=MIN_MAX_REPLY)
    ((reply),) = client.receive_data(encode_preamble() + frame)
    assert isinstance(reply.error, EngineError) and reply.id == 7


def test_an_undecodable_character_is_shown_escaped() -> None:
    frame = encode_error(1, ErrorCode.ENGINE, "file q\udcff.sqlite")
    ((decoded),) = FrameDecoder().feed(frame)
    assert cbor2.loads(decoded.body)["message"] == "file q\\udcff.sqlite"
