"""The estimate of what decoding a request body takes is an upper bound: a body the server
accepts never makes it hold more than its budget (``decode_budget(max_frame)``), however
its items are mixed to make the most of the estimate; and the largest requests the
protocol allows are accepted. Real server subprocesses, their peak memory read from /proc."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import cbor2
import pytest

from spoolq._serverlimits import decode_budget, decode_cost
from spoolq.protocol import ErrorCode, FrameType, encode_preamble, max_ids

from .servers import ServerProcess

_MAX_FRAME = 1 << 20
_BUDGET = decode_budget(_MAX_FRAME)


def _peak(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _ask(port: int, body: bytes) -> tuple[int, object]:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(encode_preamble())
        data = b""
        while len(data) < 8:
            data += sock.recv(8 - len(data))
        sock.sendall(struct.pack(">IBI", len(body) + 5, FrameType.REQUEST, 1) + body)
        data = b""
        while len(data) < 9 or len(data) < 4 + struct.unpack_from(">I", data)[0]:
            chunk = sock.recv(1 << 16)
            assert chunk, "the server closed the connection"
            data += chunk
        return data[4], cbor2.loads(data[9:])


def _filled(item: bytes, count: int) -> bytes:
    """An array of ``count`` times ``item`` then one byte string padding it to max_frame."""
    room = _MAX_FRAME - 5 - 9 - len(item) * count - 5
    return (b"\x9b" + (count + 1).to_bytes(8, "big") + item * count
            + b"\x5a" + room.to_bytes(4, "big") + b"p" * room)


def _most(item: bytes) -> bytes:
    """The body of the most ``item`` that the estimate accepts in one max_frame."""
    lo, hi = 0, (_MAX_FRAME - 32) // len(item)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if decode_cost(_filled(item, mid), _BUDGET) is None:
            lo = mid
        else:
            hi = mid - 1
    return _filled(item, lo)


_SHAPES = {
    "one-entry maps of negative bignums": b"\xa1\x41\x00\xc3\x41\x10",
    "arrays of five negative bignums": b"\x85" + b"\xc3\x41\x10" * 5,
    "arrays of one negative bignum": b"\x81\xc3\x41\x10",
    "one-entry maps of an empty array": b"\xa1\x42xy\x80",
    "two-byte texts of two bytes a character": b"\x62\xc4\x80",
    "texts of one astral character": b"\x6c" + b"a" * 8 + b"\xf0\x9f\x98\x80",
    "deliveries of 9-byte ints": b"\x82\x1b" + b"\x7f" * 8 + b"\x1b" + b"\x7f" * 8,
    "simple values": b"\xe0",
    "negative ints": b"\x30",
}


@pytest.mark.parametrize("shape", list(_SHAPES))
def test_an_accepted_body_takes_no_more_than_the_budget(shape: str) -> None:
    body = _most(_SHAPES[shape])
    with ServerProcess(":memory:", "--max-frame", str(_MAX_FRAME)) as srv:
        _ask(srv.port, cbor2.dumps({"op": "counts", "queue": "q"}))
        before = _peak(srv.proc.pid)
        ftype, reply = _ask(srv.port, body)
        grew = _peak(srv.proc.pid) - before
    assert ftype == FrameType.ERROR and isinstance(reply, dict)  # not a request, but decoded
    assert reply["code"] == ErrorCode.BAD_REQUEST and "max_frame" not in reply["message"]
    assert grew <= _BUDGET, f"decoding took {grew:,} bytes, over the budget of {_BUDGET:,}"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(":memory:", "--max-frame", str(_MAX_FRAME)) as srv:
        yield srv


@pytest.mark.parametrize("op", ["ack", "release"])
@pytest.mark.parametrize("attempts", [1, 256, 257, 65535])
def test_the_largest_ack_or_release_is_accepted_whatever_its_attempts(
        server: ServerProcess, op: str, attempts: int) -> None:
    """As many deliveries as a reply of max_frame bytes holds ids for, of ints that are
    no small ints the interpreter shares (the costliest), in one frame: it runs."""
    n = max_ids(_MAX_FRAME)
    deliveries = [[257 + i if i < 65279 else 70000 + i, attempts] for i in range(n)]
    args: dict[str, object] = {"op": op, "queue": "q", "owner": "o", "deliveries": deliveries}
    if op == "release":
        args.update(not_before=0.0, max_attempts=None, count_attempt=True, reason="")
    body = cbor2.dumps(args)
    assert len(body) + 5 <= _MAX_FRAME
    assert _ask(server.port, body) == (FrameType.REPLY, [])
