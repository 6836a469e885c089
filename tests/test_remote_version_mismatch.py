"""A remote client meeting a server of a protocol version it does not speak is told so at
once, as a setting to fix (``VersionMismatch``, a ``ConfigurationError``): it was a lost
connection (``Unavailable``), which callers wait out and try again."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

import spoolq
from spoolq.protocol import (
    PREAMBLE,
    ErrorCode,
    VersionMismatch,
    encode_error,
    encode_preamble,
)


@pytest.fixture
def answering() -> Iterator[tuple[list[bytes], int]]:
    """A server on 127.0.0.1 that answers each connection with the bytes put in the list
    (its first item), then waits for the client to close."""
    answers: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(PREAMBLE.size)
                conn.sendall(answers[0])
                conn.settimeout(5)
                try:
                    while conn.recv(65536):
                        pass
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield answers, listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.mark.parametrize(("answer", "message"), [
    (encode_preamble(1), "speaks protocol version 1; this client needs version 2"),
    (encode_preamble(3), "answered protocol version 3 to a client that offered version 2"),
    (encode_preamble(2) + encode_error(0, ErrorCode.UNSUPPORTED_VERSION,
                                       "this server needs version 3 or later"),
     "needs version 3"),
])
def test_a_server_of_another_protocol_version_is_a_setting_to_fix(
        answering: tuple[list[bytes], int], answer: bytes, message: str) -> None:
    answers, port = answering
    answers.append(answer)
    start = time.monotonic()
    with pytest.raises(VersionMismatch, match=message) as info:
        spoolq.SyncQueue.create(f"spoolq://127.0.0.1:{port}/jobs")
    assert isinstance(info.value, spoolq.ConfigurationError)
    assert not isinstance(info.value, spoolq.Unavailable)
    assert time.monotonic() - start < 5
