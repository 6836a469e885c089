"""A server side that refused its client (bad magic, an old version, a protocol error, a
wrong token) stays refused: what arrives before the connection is closed is not read."""

from __future__ import annotations

import struct

import pytest

import spoolq
from spoolq.protocol import FrameType, ProtocolError, ServerProtocol, encode_frame, encode_preamble

_GOOD = (encode_preamble() + encode_frame(FrameType.AUTH, 2, {"token": "s3cret"})
         + encode_frame(FrameType.REQUEST, 3, {"op": "queues"}))


@pytest.mark.parametrize("opening, error", [
    (b"NOTSPQ\x00\x02", ProtocolError),
    (encode_preamble(1), ProtocolError),
    (encode_preamble() + encode_frame(FrameType.AUTH, 1, {"token": "s3cret"})
     + struct.pack(">IBI", 6, FrameType.REQUEST, 0) + b"\xa0", ProtocolError),
    (encode_preamble() + encode_frame(FrameType.AUTH, 1, {"token": "guess"}),
     spoolq.AuthenticationError),
])
def test_a_server_side_that_refused_its_client_refuses_everything_after(
        opening: bytes, error: type[Exception]) -> None:
    server = ServerProtocol(token="s3cret")
    with pytest.raises(error):
        server.receive_data(opening)
    assert server.data_to_send()  # the ERROR frame
    for follow in (_GOOD, _GOOD[8:], encode_frame(FrameType.REQUEST, 4, {"op": "queues"})):
        with pytest.raises(error):
            server.receive_data(follow)
        assert server.data_to_send() == b""
    assert not server.ready


def test_a_request_answered_with_bad_request_does_not_refuse_the_connection() -> None:
    server = ServerProtocol()
    assert server.receive_data(encode_preamble()
                               + encode_frame(FrameType.REQUEST, 1, {"op": "nope"})) == []
    (request,) = server.receive_data(encode_frame(FrameType.REQUEST, 2, {"op": "queues"}))
    assert request.op == "queues" and server.ready
