"""A server held up (its process stopped) while a client sent its handshake, or the rest of
a frame, in good time: once it runs again it reads those bytes before judging the client,
rather than dropping it as stalled for a silence that was its own."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from spoolq.protocol import FrameType, encode_frame, encode_preamble

from .servers import ServerProcess, reply_frames, request_frame

_STALL = 1.0
_HELD_UP = 3 * _STALL  # the server stopped this long, past its stall timeout


def _read_frames(sock: socket.socket, count: int) -> list[tuple[int, int, object]]:
    data = b""
    while len(reply_frames(data)) < count:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return reply_frames(data)


@pytest.mark.skipif(sys.platform == "win32", reason="stops the server with SIGSTOP")
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("where", ["handshake", "frame"])
def test_bytes_sent_while_the_server_was_held_up_are_read_before_it_judges(
        tmp_path: Path, loop: str, where: str) -> None:
    pytest.importorskip(loop)
    token = tmp_path / "token"
    token.write_text("s3cret")
    auth = encode_frame(FrameType.AUTH, 1, {"token": "s3cret"})
    counts = request_frame(2, "counts", queue="q")
    with ServerProcess(str(tmp_path / "q.sqlite"), "--token-file", str(token),
                       "--stall-timeout", str(_STALL), "--loop", loop) as srv:
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        try:
            if where == "handshake":  # its preamble answered: the connection is served
                first, rest, expected = encode_preamble(), auth + counts, 2
            else:  # authenticated, then half of a request
                first, rest, expected = encode_preamble() + auth + counts[:5], counts[5:], 2
            sock.sendall(first)
            got = b""
            while len(got) < 8:
                chunk = sock.recv(8 - len(got))
                assert chunk, "the server closed the connection"
                got += chunk
            assert got == encode_preamble()
            if where == "frame":
                assert _read_frames(sock, 1) == [(FrameType.REPLY, 1, None)]
            with srv.stalled():
                sock.sendall(rest)  # at once: the client never stalls
                time.sleep(_HELD_UP)
            frames = _read_frames(sock, expected if where == "handshake" else 1)
        finally:
            sock.close()
    want = [(FrameType.REPLY, 2, [0, 0, 0, 0])]
    if where == "handshake":
        want.insert(0, (FrameType.REPLY, 1, None))
    assert frames == want
