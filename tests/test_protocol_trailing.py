"""A frame's body is exactly one CBOR item: bytes after it are a protocol error, in
both directions, never silently ignored."""

from __future__ import annotations

import socket
import struct
import threading
import time

import cbor2
import pytest

import spoolq
from spoolq.protocol import (
    ClientProtocol,
    ErrorCode,
    Frame,
    FrameDecoder,
    FrameType,
    ProtocolError,
    ServerProtocol,
    decode_body,
    encode_preamble,
)
from tests.servers import ServerProcess

# What may follow the item: a whole second item, the start of one, a lone break code,
# a stray zero, a run of junk.
TRAILERS = [b"\x00", cbor2.dumps({"op": "queues"}), b"\x18", b"\xff", b"\x00" * 100]


def _frame(ftype: int, ident: int, body: object, trailer: bytes) -> bytes:
    payload = cbor2.dumps(body) + trailer
    return struct.pack(">IBI", len(payload) + 5, ftype, ident) + payload


def _frames(data: bytes) -> list[tuple[int, int, object]]:
    return [(f.type, f.id, cbor2.loads(f.body)) for f in FrameDecoder().feed(data)]


@pytest.mark.parametrize("trailer", TRAILERS)
def test_decode_body_refuses_bytes_after_the_item(trailer: bytes) -> None:
    body = cbor2.dumps({"op": "counts", "queue": "q"})
    assert decode_body(Frame(FrameType.REQUEST, 3, body)) == {"op": "counts", "queue": "q"}
    with pytest.raises(ProtocolError, match="frame 3: the body is not"):
        decode_body(Frame(FrameType.REQUEST, 3, body + trailer))


@pytest.mark.parametrize("value", [0, None, b"", "text", [], {}, b"x" * 70000, 2**70,
                                   [b"r" * 100, 1, 2, 0, 1.5, None] * 1000])
def test_decode_body_takes_one_item_of_every_shape(value: object) -> None:
    body = cbor2.dumps(value)
    assert decode_body(Frame(FrameType.REPLY, 1, body)) == value
    with pytest.raises(ProtocolError, match="1 bytes follow the item"):
        decode_body(Frame(FrameType.REPLY, 1, body + b"\x00"))


@pytest.mark.parametrize("trailer", TRAILERS)
def test_the_server_answers_a_request_with_trailing_bytes_with_an_error(trailer: bytes) -> None:
    server = ServerProtocol()
    server.receive_data(encode_preamble())
    server.data_to_send()
    bad = _frame(FrameType.REQUEST, 9, {"op": "counts", "queue": "q"}, trailer)
    with pytest.raises(ProtocolError, match="frame 9: the body is not"):
        server.receive_data(bad)
    ((ftype, ident, body),) = _frames(server.data_to_send())
    assert (ftype, ident, body["code"]) == (FrameType.ERROR, 9, ErrorCode.PROTOCOL)  # type: ignore[index]


def test_the_request_is_not_run_when_trailing_bytes_follow_it() -> None:
    server = ServerProtocol()
    good = _frame(FrameType.REQUEST, 1, {"op": "queues"}, b"")
    bad = _frame(FrameType.REQUEST, 2, {"op": "purge", "queue": "q"}, b"\x00")
    with pytest.raises(ProtocolError):
        server.receive_data(encode_preamble() + good + bad)
    # the error frame goes out, then the connection closes: the purge never runs
    frames = _frames(server.data_to_send()[8:])
    assert [(t, i) for t, i, _ in frames] == [(FrameType.ERROR, 2)]


def test_an_auth_frame_with_trailing_bytes_is_refused() -> None:
    server = ServerProtocol(token="s3cret")
    bad = _frame(FrameType.AUTH, 1, {"token": "s3cret"}, b"\x00")
    with pytest.raises(ProtocolError, match="not one CBOR item"):
        server.receive_data(encode_preamble() + bad)
    assert not server.authenticated
    ((ftype, ident, body),) = _frames(server.data_to_send()[8:])
    assert (ftype, ident, body["code"]) == (FrameType.ERROR, 1, ErrorCode.PROTOCOL)  # type: ignore[index]


@pytest.mark.parametrize("ftype, body", [
    (FrameType.REPLY, [0, 0, 0, 0]),
    (FrameType.ERROR, {"code": int(ErrorCode.EMPTY), "message": "empty"}),
])
@pytest.mark.parametrize("trailer", TRAILERS)
def test_the_client_refuses_a_reply_with_trailing_bytes(ftype: int, body: object,
                                                         trailer: bytes) -> None:
    client = ClientProtocol()
    client.receive_data(encode_preamble())
    ident, _ = client.request("counts", {"queue": "q"})
    assert client.receive_data(_frame(ftype, ident, body, b""))[0].id == ident
    with pytest.raises(ProtocolError, match=f"frame {ident}: the body is not"):
        client.receive_data(_frame(ftype, ident, body, trailer))


def test_a_client_whose_server_adds_bytes_to_a_reply_fails_the_call() -> None:
    """Over a socket: a server that answers the greeting with bytes after the reply's item
    is refused, the call failing rather than going on with what it made of the reply."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            frames: list[Frame] = []
            decoder, head = FrameDecoder(), b""
            while not frames:  # the preamble, then the hello request
                head += conn.recv(65536)
                if len(head) >= 8:
                    frames = decoder.feed(head[8:])
                    head = head[:8]
            hello = {"max_frame": 1 << 20, "time": time.time()}
            conn.sendall(encode_preamble()
                         + _frame(FrameType.REPLY, frames[-1].id, hello, b"\x00"))
            conn.recv(1)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        with pytest.raises(spoolq.SpoolqError, match="not one CBOR item"):
            spoolq.SyncQueue.create(f"spoolq://127.0.0.1:{port}/jobs",
                                    engine_options={"connect_timeout": 5})
    finally:
        thread.join(10)
        listener.close()


def test_a_server_closes_a_connection_that_sends_trailing_bytes_and_serves_others() -> None:
    with ServerProcess(":memory:") as server, \
            spoolq.SyncQueue.create(server.url + "/jobs") as healthy:
        healthy.put("before")
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            good = _frame(FrameType.REQUEST, 1, {"op": "hello", "max_reply": 1 << 20}, b"")
            raw.sendall(encode_preamble() + good)
            data = b""
            while len(_frames(data[8:])) < 1:
                data += raw.recv(65536)
            bad = _frame(FrameType.REQUEST, 2, {"op": "purge", "queue": "jobs"}, b"\x00junk")
            raw.sendall(bad)
            while chunk := raw.recv(65536):  # the server closes the connection
                data += chunk
        assert data[:8] == encode_preamble()
        frames = _frames(data[8:])
        assert [(t, i) for t, i, _ in frames] == [(FrameType.REPLY, 1), (FrameType.ERROR, 2)]
        error = frames[-1][2]
        assert error["code"] == ErrorCode.PROTOCOL  # type: ignore[index]
        assert "not one CBOR item" in error["message"]  # type: ignore[index]
        # the purge never ran, and the other client is still served
        healthy.put("after")
        assert [healthy.get(timeout=5), healthy.get(timeout=5)] == ["before", "after"]
