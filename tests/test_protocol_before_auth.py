"""Before a token server's client authenticated, every frame but a small AUTH frame is
refused from its header, with the same answer however the bytes are cut into reads: a
frame of another type gets code 4 even when its length is above any limit, an AUTH frame
above the limit code 2, each with the frame's id."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

import spoolq
from spoolq.protocol import (
    DEFAULT_MAX_FRAME,
    MAX_AUTH_FRAME,
    ErrorCode,
    FrameDecoder,
    FrameType,
    ServerProtocol,
    encode_frame,
    encode_preamble,
)
from tests.servers import ServerProcess

_TOKEN = "s3cret"
_HUGE = DEFAULT_MAX_FRAME + 1  # above the server's max_frame


def _header(length: int, ftype: int, ident: int) -> bytes:
    return struct.pack(">IBI", length, ftype, ident)


def _errors(data: bytes) -> list[tuple[int, int]]:
    """(id, code) of each ERROR frame in ``data`` (after the server's preamble)."""
    return [(f.id, cbor2.loads(f.body)["code"]) for f in FrameDecoder().feed(data[8:])
            if f.type == FrameType.ERROR]


def _cuts(data: bytes) -> Iterator[list[bytes]]:
    """``data`` whole, byte by byte, and cut after the preamble and each header."""
    yield [data]
    yield [data[k:k + 1] for k in range(len(data))]
    yield [data[:8], data[8:17], data[17:]]


_CASES = [
    # a request announcing more than the server reads: not AUTH, so code 4
    (_header(_HUGE, FrameType.REQUEST, 5), [(5, ErrorCode.AUTH)]),
    (_header(2**32 - 1, 9, 6), [(6, ErrorCode.AUTH)]),
    # a frame of another type, then one whose length no server reads, in one write
    (encode_frame(9, 7, {}) + _header(_HUGE, FrameType.REQUEST, 8), [(7, ErrorCode.AUTH)]),
    (encode_frame(FrameType.REQUEST, 7, {"op": "queues"}) + _header(3, FrameType.REQUEST, 8),
     [(7, ErrorCode.AUTH)]),
    # AUTH frames above the limit, whatever the server's max_frame: code 2, their id
    (_header(MAX_AUTH_FRAME + 1, FrameType.AUTH, 9), [(9, ErrorCode.FRAME_TOO_LARGE)]),
    (_header(_HUGE, FrameType.AUTH, 10), [(10, ErrorCode.FRAME_TOO_LARGE)]),
    # the AUTH reply goes out before the error of a broken frame after it
    (encode_frame(FrameType.AUTH, 11, {"token": _TOKEN}) + _header(3, FrameType.REQUEST, 12),
     [(0, ErrorCode.PROTOCOL)]),
]


_IDS = ["huge-request", "huge-unknown-type", "unknown-type-then-huge",
        "request-then-short", "auth-above-64k", "auth-above-max-frame", "auth-then-short"]


@pytest.mark.parametrize(("frames", "errors"), _CASES, ids=_IDS)
def test_the_answer_before_authentication_does_not_depend_on_how_bytes_arrive(
        frames: bytes, errors: list[tuple[int, int]]) -> None:
    data = encode_preamble() + frames
    answers = set()
    for chunks in _cuts(data):
        server = ServerProtocol(token=_TOKEN)
        out = b""
        with pytest.raises((spoolq.AuthenticationError, spoolq.protocol.ProtocolError)):
            for chunk in chunks:
                server.receive_data(chunk)
                out += server.data_to_send()
        out += server.data_to_send()
        assert _errors(out) == errors
        answers.add(out[8:])
    assert len(answers) == 1


def test_an_auth_reply_comes_before_the_error_of_a_broken_frame_after_it() -> None:
    server = ServerProtocol(token=_TOKEN)
    with pytest.raises(spoolq.protocol.ProtocolError):
        server.receive_data(encode_preamble() + encode_frame(FrameType.AUTH, 11, {"token": _TOKEN})
                            + _header(3, FrameType.REQUEST, 12))
    replies = FrameDecoder().feed(server.data_to_send()[8:])
    assert [(f.type, f.id) for f in replies] == [(FrameType.REPLY, 11), (FrameType.ERROR, 0)]


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    token = Path(tmp_path_factory.mktemp("token")) / "token"
    token.write_text(_TOKEN)
    with ServerProcess(":memory:", "--token-file", str(token)) as srv:
        yield srv


def _answer(port: int, data: bytes) -> tuple[bytes, bool]:
    """What the server sends for ``data``, and whether it then closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        got = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return got, True
            got += chunk


@pytest.mark.parametrize(("frames", "errors"), _CASES[:3] + _CASES[4:6],
                         ids=_IDS[:3] + _IDS[4:6])
def test_a_token_server_answers_frames_before_authentication_from_their_header(
        token_server: ServerProcess, frames: bytes, errors: list[tuple[int, int]]) -> None:
    got, closed = _answer(token_server.port, encode_preamble() + frames)
    assert got[:8] == encode_preamble() and closed
    assert _errors(got) == errors
