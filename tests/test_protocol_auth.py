"""Authentication in the server's state machine: before it, nothing but a small AUTH
frame of CBOR is read, and every other frame gets the same answer however it arrives."""

from __future__ import annotations

import struct

import cbor2
import pytest

import spoolq
from spoolq.protocol import (
    ErrorCode,
    FrameDecoder,
    FrameType,
    ProtocolError,
    ServerProtocol,
    encode_frame,
    encode_preamble,
)


def _errors(data: bytes) -> list[tuple[int, int]]:
    """(id, code) of each ERROR frame in ``data``."""
    return [(f.id, cbor2.loads(f.body)["code"]) for f in FrameDecoder().feed(data)
            if f.type == FrameType.ERROR]


@pytest.mark.parametrize("ftype", [FrameType.REQUEST, FrameType.REPLY, FrameType.ERROR, 9])
@pytest.mark.parametrize("whole", [True, False])
def test_before_authentication_any_frame_but_auth_is_refused_with_code_4(
        ftype: int, whole: bool) -> None:
    """The same code whether the frame arrives whole or only its header has come."""
    frame = struct.pack(">IBI", 6, ftype, 5) + b"\xa0"
    server = ServerProtocol(token="s3cret")
    with pytest.raises(spoolq.AuthenticationError):
        server.receive_data(encode_preamble() + (frame if whole else frame[:9]))
    assert _errors(server.data_to_send()[8:]) == [(5, ErrorCode.AUTH)]


@pytest.mark.parametrize("whole", [True, False])
def test_before_authentication_a_request_of_id_0_is_refused_with_code_4(whole: bool) -> None:
    frame = encode_frame(FrameType.REQUEST, 0, {"op": "queues"})
    server = ServerProtocol(token="s3cret")
    with pytest.raises(spoolq.AuthenticationError):
        server.receive_data(encode_preamble() + (frame if whole else frame[:9]))
    assert _errors(server.data_to_send()[8:]) == [(0, ErrorCode.AUTH)]


@pytest.mark.parametrize("token", [None, "s3cret"])
def test_an_auth_frame_without_a_body_is_not_cbor(token: str | None) -> None:
    server = ServerProtocol(token=token)
    with pytest.raises(ProtocolError, match="CBOR"):
        server.receive_data(encode_preamble() + struct.pack(">IBI", 5, FrameType.AUTH, 1))
    assert _errors(server.data_to_send()[8:]) == [(1, ErrorCode.PROTOCOL)]


def test_a_server_without_a_token_accepts_any_auth_frame_of_cbor() -> None:
    server = ServerProtocol()
    assert server.receive_data(encode_preamble()
                               + encode_frame(FrameType.AUTH, 1, {"token": 3})) == []
    replies = FrameDecoder().feed(server.data_to_send()[8:])
    assert [(f.type, f.id, cbor2.loads(f.body)) for f in replies] == [(FrameType.REPLY, 1, None)]
