"""Crafted CBOR bodies through the server's state machine, whole and split at every
byte: each is a request, a BAD_REQUEST answer (code 10) or a protocol error (code 1),
never another exception."""

from __future__ import annotations

import struct

import cbor2
import pytest

from spoolq.protocol import (
    ErrorCode,
    FrameDecoder,
    FrameType,
    ProtocolError,
    ServerProtocol,
    encode_frame,
    encode_preamble,
)

_BAD_CBOR = [
    b"", b"\xff", b"\x1c", b"\x62\xff\xfe",  # nothing, a lone break, a reserved value, bad UTF-8
    b"\xa1\x01\x01", b"\xa1\x80\x01", b"\xa1\xf9\x3c\x00\x01",  # keys: int, array, float
    b"\xd8\x23\x61a", b"\xc1\x00", b"\xd9\xd9\xf7\xa0", b"\xd8\x1d\x00",  # tags
    b"\x9b" + (2**40).to_bytes(8, "big"), b"\x5b" + (2**40).to_bytes(8, "big"),  # huge lengths
    b"\x81" * 5000 + b"\x00",  # nesting too deep
    b"\xa0\x00",  # an item and a byte after it
    cbor2.dumps({"op": "counts", "queue": "q"})[:-1],  # an item cut short
]
_BAD_REQUESTS = [
    b"\xa1\x62op\xf7",  # op undefined
    b"\xf0",  # a simple value, not a map
    cbor2.dumps({"op": "take", "queue": "q", "n": 1.0, "now": 0}),  # a float where a uint goes
    cbor2.dumps({"op": "take", "queue": "q", "n": True, "now": 0}),
    cbor2.dumps({"op": "take", "queue": "q", "n": 1, "now": float("nan")}),
    b"\xa4\x62op\x64take\x65queue\x61q\x61n\xc2\x49" + b"\x01" * 9 + b"\x63now\x00",  # bignum n
    b"\xa1\x42op\x66queues",  # a bytes key: no op
]


def _answers(data: bytes) -> list[tuple[int, int]]:
    return [(f.id, cbor2.loads(f.body)["code"]) for f in FrameDecoder().feed(data)]


@pytest.mark.parametrize("body", _BAD_CBOR)
@pytest.mark.parametrize("split", [False, True])
def test_a_body_that_is_not_one_plain_cbor_item_is_a_protocol_error(body: bytes,
                                                                    split: bool) -> None:
    data = encode_preamble() + struct.pack(">IBI", 5 + len(body), FrameType.REQUEST, 3) + body
    server = ServerProtocol()
    with pytest.raises(ProtocolError):
        for chunk in ([data[i:i + 1] for i in range(len(data))] if split else [data]):
            assert server.receive_data(chunk) == []
    assert _answers(server.data_to_send()[8:]) == [(3, ErrorCode.PROTOCOL)]


@pytest.mark.parametrize("body", _BAD_REQUESTS)
def test_a_request_of_odd_values_is_answered_and_the_next_one_runs(body: bytes) -> None:
    frame = struct.pack(">IBI", 5 + len(body), FrameType.REQUEST, 3) + body
    follow = encode_frame(FrameType.REQUEST, 4, {"op": "queues"})
    server = ServerProtocol()
    requests = server.receive_data(encode_preamble() + frame + follow)
    assert [(r.id, r.op) for r in requests] == [(4, "queues")]
    assert _answers(server.data_to_send()[8:]) == [(3, ErrorCode.BAD_REQUEST)]
