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
import logging
from typing import TYPE_CHECKING

# The module, not its names: the protocol imports this module in turn.
from . import protocol
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .session import Session

__all__ = ["DECODE_FACTOR", "DEFAULT_MAX_CONNECTIONS", "abort_later", "check_max_connections",
           "decode_budget", "decode_cost", "refuse_connection", "too_many_ids"]

log = logging.getLogger("spoolq")

DECODE_FACTOR = 16
"""A request body may take at most this many times the server's ``max_frame`` in memory
once decoded (and 1 MiB more). The largest request the protocol allows, an ack of as many
deliveries as a reply of ``max_frame`` bytes holds ids for, takes under 14 times."""
_DECODE_SLACK = 1 << 20
DEFAULT_MAX_CONNECTIONS = 1000
"""Connections a server serves at once unless told otherwise (``--max-connections``)."""
_REFUSED_LINGER = 1.0  # seconds a refused connection waits for its client to close it
_DROP_GRACE = 1.0  # seconds a dropped connection has to send its last replies and end

# What decoding an item costs in memory, by the item's first byte (64-bit CPython): a slot
# in its array or map (a list grows by a little more than 8 bytes an element), and the
# object, unless the object is one the interpreter shares (small integers, False, True,
# None, empty and one-byte strings). These are upper bounds, as measured with tracemalloc.
_SLOT = 10
_INT = 36  # an int outside -5..256
_FLOAT = 24
_SIMPLE = 48  # cbor2's CBORSimpleValue
_LIST = 56
_DICT = 64
_ENTRY = 64  # a dict's share of one entry: its table grows by halves
_BYTES = 40  # a bytes object besides its data
_ASCII = 56  # a str of ASCII characters besides them
_TEXT = 80  # any other str, which takes up to 4 bytes a character
_MOST_PER_BYTE = _SLOT + _DICT  # an empty map: no body costs more per byte


def _tables() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The size and cost of each item without contents of its own, by first byte (size 0:
    a string, a map, an indefinite string or map, or a byte no item starts with)."""
    size = [0] * 256
    cost = [0] * 256
    widths = {24: 2, 25: 3, 26: 5, 27: 9}
    for b in range(256):
        major, info = b >> 5, b & 31
        width = 1 if info < 24 else widths.get(info, 0)
        if major in (0, 1) and width:  # an integer: shared from -5 to 256
            size[b] = width
            shared = (b <= 0x18) if major == 0 else (b <= 0x24)
            cost[b] = _SLOT + (0 if shared else _INT)
        elif major == 4 and (width or info == 31):  # an array; its items cost their own
            size[b] = width or 1
            cost[b] = _SLOT + _LIST
        elif major == 6 and width:  # a tag: the item it tags takes the slot
            size[b] = width
        elif major == 7 and b != 0xff and (info < 24 or width):
            size[b] = width
            cost[b] = _SLOT + (0 if 20 <= info <= 23 else _FLOAT if info > 24 else _SIMPLE)
        elif b == 0xff:  # the end of an indefinite item
            size[b] = 1
    return tuple(size), tuple(cost)


_SIZE, _COST = _tables()


def decode_budget(max_frame: int) -> int:
    """The most memory decoding one request body to a server of ``max_frame`` may take."""
    return DECODE_FACTOR * max_frame + _DECODE_SLACK


def decode_cost(body: bytes, budget: int) -> int | None:
    """None when decoding ``body`` takes at most ``budget`` bytes of memory by the estimate;
    otherwise the estimate, once it passed ``budget`` (the rest of the body is not read).

    The estimate adds up the cost of every item the body's bytes hold, whatever their
    nesting: what cbor2 builds is never more. It reads only the items' first bytes and
    lengths (a string's contents are skipped, but for telling ASCII text), and does not
    read a body so short that no contents could take ``budget``. Bytes that start no item
    end it: cbor2 refuses the body there."""
    end = len(body)
    if end * _MOST_PER_BYTE <= budget:
        return None
    sizes, costs = _SIZE, _COST
    pos = cost = 0
    entry = 0  # after an indefinite map, every string may be one of its keys
    while pos < end and cost <= budget:
        b = body[pos]
        size = sizes[b]
        if size:
            pos += size
            cost += costs[b]
            continue
        if 0x40 <= b <= 0x58:  # a byte string under 256 bytes: the records of an append
            if b == 0x58:
                n = body[pos + 1] if pos + 1 < end else 0
                pos += 2 + n
            else:
                n = b - 0x40
                pos += 1 + n
            cost += _SLOT + entry + (_BYTES + n if n > 1 else 0)
            continue
        major, info = b >> 5, b & 31
        if info < 24:
            n, head = info, 1
        elif info < 28:
            width = 1 << (info - 24)
            n, head = int.from_bytes(body[pos + 1:pos + 1 + width], "big"), 1 + width
        elif b in (0x5f, 0x7f):  # an indefinite string: its chunks follow, each a string
            cost += _SLOT + _BYTES
            pos += 1
            continue
        elif b == 0xbf:
            cost += _SLOT + _DICT
            entry = _ENTRY
            pos += 1
            continue
        else:
            return None
        if major == 2:
            cost += _SLOT + entry + _BYTES + n
        elif major == 3:
            # Short text is counted at 4 bytes a character without looking: telling would
            # cost more than it saves.
            ascii = n >= 16 and body[pos + head:pos + head + n].isascii()
            cost += _SLOT + entry + (_ASCII + n if ascii else _TEXT + 4 * n)
        else:  # a map of n entries
            cost += _SLOT + _DICT + _ENTRY * n
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
