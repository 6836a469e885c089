"""The server's limits on what one client can make it hold: the memory a request body
takes once decoded, the records (and so the reply of ids) of one append, ack or release,
and the number of connections served at once.

Decoding CBOR builds a Python object per item, and an item can take one byte of a frame
while its object takes 60 to 70 (an empty array or map): a 16 MiB frame of them made the
server hold over a gigabyte. :func:`decode_cost` estimates, from the bytes alone and
before anything is built, what a body will take; a body over the budget is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING

# The module, not its names: the protocol imports this module in turn.
from . import protocol
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .session import Session

__all__ = ["DECODE_FACTOR", "DEFAULT_MAX_CONNECTIONS", "KEEPALIVE", "abort_later",
           "check_max_connections", "decode_budget", "decode_cost", "refuse_connection",
           "too_many_ids", "tune_socket"]

log = logging.getLogger("spoolq")

DECODE_FACTOR = 32
"""A request body may take at most this many times the server's ``max_frame`` in memory
once decoded (and 1 MiB more). The largest request the protocol allows, an ack of as many
deliveries as a reply of ``max_frame`` bytes holds ids for (each of two ints over 256),
takes about 16 times once decoded, and under 25 times by the estimate."""
_DECODE_SLACK = 1 << 20
DEFAULT_MAX_CONNECTIONS = 1000
"""Connections a server serves at once unless told otherwise (``--max-connections``)."""
KEEPALIVE = (60, 10, 6)
"""TCP keepalive of every connection: the first probe after this many idle seconds, then
one every so many seconds, and the connection is dropped (freeing its slot and releasing
its leases) when this many go unanswered: a peer that vanished without closing (its
host lost power, the network between split) is found out within two minutes."""
_REFUSED_LINGER = 1.0  # seconds a refused connection waits for its client to close it
_DROP_GRACE = 1.0  # seconds a dropped connection has to send its last replies and end

# What decoding an item costs in memory, by its first byte: upper bounds of what the
# process holds (64-bit CPython 3.11, cbor2 6, measured as peak RSS over a million items:
# allocations rounded up to 16 bytes; 8 bytes more for the pools' own), each with the
# item's 8-byte slot in its array or dict. Strings add a cost per byte of their contents.
_SHARED = 8  # an object the interpreter shares: small ints, False, True, None, b"x"...
_INT = 48  # an int of up to 30 bits, or a float
_BIG_INT = 64  # an int of 31 to 64 bits; a bignum's int, a tag
_SIMPLE = 64  # cbor2's CBORSimpleValue
_BYTES = 64  # a bytes object besides its contents
_TEXT = 96  # a str besides its characters
_LIST = 112  # a list besides its slots (a short list has room for 4), rounded up
_DICT = 240  # a dict of up to 5 entries
_ENTRY = 144  # what each entry of a dict may add to it, growing and copied as it grows
_PER_BYTE = 2  # of bytes: the object, or the int a bignum makes of them, and a copy
_PER_CHAR_BYTE = 4  # of text: up to 4 bytes a character, ASCII ones included


def _tables() -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """By first byte: the size of an item without contents of its own (0: a string, a map
    or a byte no item starts with), the cost of the item, and how many bytes its head
    takes (for strings and maps; 0 for a byte no item starts with)."""
    size, cost, head = [0] * 256, [0] * 256, [0] * 256
    widths = {24: 2, 25: 3, 26: 5, 27: 9}
    for b in range(256):
        major, info = b >> 5, b & 31
        width = 1 if info < 24 else widths.get(info, 0)
        if major in (0, 1) and width:  # an int, shared from -5 to 256
            size[b] = width
            shared = b <= 0x18 if major == 0 else b <= 0x24
            cost[b] = _SHARED if shared else _BIG_INT if width == 9 else _INT
        elif major in (2, 3, 5) and width:
            head[b] = width
            cost[b] = _BYTES if major == 2 else _TEXT if major == 3 else _DICT
        elif b in (0x5f, 0x7f):  # an indefinite string: its chunks follow, each costed
            size[b], cost[b] = 1, _BYTES if b == 0x5f else _TEXT
        elif major == 4 and (width or info == 31):  # an array; its items cost their own
            size[b], cost[b] = (0 if width > 1 else 1), _LIST
            head[b] = width  # one of 24 items or more: see decode_cost
        elif major == 6 and width:  # a tag: bignums make an int; cbor2 refuses others
            size[b], cost[b] = width, _BIG_INT
        elif b == 0xbf:  # an indefinite map: its keys and values cost an entry each
            cost[b] = _DICT
        elif b == 0xff:  # the end of an indefinite item
            size[b] = 1
        elif major == 7 and (info < 24 or width):
            size[b] = width
            cost[b] = _SHARED if 20 <= info <= 23 else _INT if info > 24 else _SIMPLE
    return tuple(size), tuple(cost), tuple(head)


_SIZE, _COST, _HEAD = _tables()
# The bytes an item takes whole and the cost of its contents, when its first byte tells:
# an item without contents, or a string of under 24 bytes (0: any other item).
_STEP = tuple(_SIZE[b] or (1 + (b & 31) if b & 31 < 24 and b >> 5 in (2, 3) else 0)
              for b in range(256))
_CONTENTS = tuple((_PER_BYTE if b >> 5 == 2 else _PER_CHAR_BYTE) * (b & 31)
                  if not _SIZE[b] and _STEP[b] else 0 for b in range(256))
# Once an indefinite map began, any item may be one of its keys or values.
_COST_IN_MAP = tuple(c + _ENTRY // 2 for c in _COST)
_MOST_PER_BYTE = max(_COST_IN_MAP) + 2 + _ENTRY  # no body costs more per byte


def decode_budget(max_frame: int) -> int:
    """The most memory decoding one request body to a server of ``max_frame`` may take."""
    return DECODE_FACTOR * max_frame + _DECODE_SLACK


def decode_cost(body: bytes, budget: int) -> int | None:
    """None when decoding ``body`` takes at most ``budget`` bytes of memory by the estimate;
    otherwise the estimate, once it passed ``budget`` (the rest of the body is not read).

    The estimate, an upper bound of what cbor2 takes, adds up a cost by kind for every
    item of the body whatever its nesting, a cost per byte of the contents of strings, and
    twice the body (the decoder's copy, and one item's transient copy). It reads only the
    items' first bytes and lengths, and does not read a body so short that no contents
    could take ``budget``. A byte that starts no item ends it: cbor2 refuses the body there."""
    end = len(body)
    if end * _MOST_PER_BYTE <= budget:
        return None
    sizes, costs, heads = _SIZE, _COST, _HEAD
    pos, cost = 0, 2 * end
    while pos < end and cost <= budget:
        b = body[pos]
        size = sizes[b]
        if size:
            pos += size
            cost += costs[b]
            continue
        head = heads[b]
        if head == 1:
            n = b & 31
        elif head:
            n = int.from_bytes(body[pos + 1:pos + head], "big")
        elif b == 0xbf:
            cost += costs[b]
            costs = _COST_IN_MAP
            pos += 1
            continue
        else:
            return None
        cost += costs[b]
        if 0x98 <= b <= 0x9b:  # an array of 24 items or more
            # Its first items alike (the records of an append, its sizes) are skipped at
            # once: each byte a step apart starts one, as long as those bytes are its own.
            pos += head
            step = _STEP[body[pos]] if pos < end else 0
            if step:
                run = body[pos:pos + step * n:step]
                alike = len(run) - len(run.lstrip(run[:1]))
                cost += alike * (costs[run[0]] + _CONTENTS[run[0]])
                pos += alike * step
            continue
        if b < 0x60:
            cost += _PER_BYTE * n
        elif b < 0x80:
            cost += _PER_CHAR_BYTE * n
        else:  # a map of n entries: its keys and values follow
            cost += _ENTRY * n
            n = 0
        pos += head + n
    return cost if cost > budget else None


def too_many_ids(req: protocol.Request, max_reply: int) -> str | None:
    """Why ``req`` is refused, when it is an append, ack or release of more records than
    a reply of ``max_reply`` bytes holds ids for (its reply could not be sent); else None."""
    field = protocol.ID_OPS.get(req.op)
    if field is None:
        return None
    n = len(req.args[field])
    if protocol.ids_reply_size(n) <= max_reply:
        return None
    return (f"request {req.id} ({req.op}): {n:,} records, more than the "
            f"{protocol.max_ids(max_reply):,} "
            f"whose ids its reply can hold in this connection's max_reply of {max_reply:,} "
            "bytes; send them in several requests")


def abort_later(session: Session) -> None:
    """Once ``session`` was dropped (its transport closed): abort its connection if it has
    not ended within a second. A TLS close waits for the client to answer it, up to 30
    seconds, and a client that does not read keeps a plain one open; the server's shutdown
    sees to those that it drops."""
    def cut() -> None:
        if session in session.server.connections and not session.server.stopping:
            transport = session.tcp or session.transport
            if transport is not None:
                transport.abort()
    session.loop.call_later(_DROP_GRACE, cut)


def check_max_connections(value: object) -> int:
    """``value`` as a limit of connections: an int >= 1, else ConfigurationError."""
    if type(value) is not int or value < 1:
        raise ConfigurationError(f"max_connections must be an int >= 1, not {value!r}")
    return value


def refuse_connection(session: Session) -> bool:
    """Refuse the new connection of ``session`` (True) when the server is stopping or serves
    its ``max_connections`` already; else False, and the session serves it.

    A connection refused for the limit gets the server's preamble and an ERROR frame of
    code TOO_MANY_CONNECTIONS, then the end of the stream; what its client sends is read
    and dropped until it closes, for at most a second, so that the close does not reset
    the connection before the client read why."""
    server, transport = session.server, session.transport
    assert transport is not None
    if server.stopping:
        # Accepted before the server stopped listening, made only now (a TLS handshake
        # ends after the shutdown began): not served, as the engine is about to close.
        log.info("spoolq: closing the connection from %s: the server is stopping",
                 session.peer)
        transport.close()
        return True
    limit = server.max_connections
    # Those the server dropped (closed) hold no slot while they end: a TLS close waits
    # for its client's answer.
    if len(server.connections) < limit or sum(
            not conn.closed for conn in server.connections) < limit:
        return False
    log.warning("spoolq: refusing the connection from %s: %d connections are open, the "
                "limit (--max-connections)", session.peer, limit)
    transport.write(protocol.encode_preamble() + protocol.encode_error(
        0, protocol.ErrorCode.TOO_MANY_CONNECTIONS,
        f"the server serves {limit} connections already, its limit: try again later"))
    if transport.can_write_eof():
        transport.write_eof()
    else:
        transport.close()
    asyncio.get_running_loop().call_later(_REFUSED_LINGER, transport.abort)
    return True


def tune_socket(sock: socket.socket | None) -> None:
    """Set up a new TCP connection's socket: replies go out at once, never held back for
    Nagle's algorithm (the speed of one-at-a-time round trips rests on it, so it is not
    left to the event loop's defaults), and :data:`KEEPALIVE` probes a silent peer."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    idle, interval, count = KEEPALIVE
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval),
                            ("TCP_KEEPCNT", count)):
            if hasattr(socket, name):  # Linux, and most other systems by these names
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
