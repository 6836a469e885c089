"""What the requests of one connection in flight may hold of the server's memory: the
replies of its large reads, and the records of its writes waiting on the engine thread.
A request that would take a connection past either budget waits, unread with those
behind it, until a request in flight is answered (see :class:`spoolq.session.Session`).
"""

from __future__ import annotations

from .protocol import RECORD_FIELDS, Request

__all__ = ["LIMITED", "SETTLING", "request_cost", "reserves", "too_much"]

# Ops whose reply the server keeps within max_reply (given to them as "limit"): fewer
# records, or an error for queue names, owners or a metadata value that do not fit.
LIMITED = frozenset({"take", "peek", "peek_leased", "queues", "owners", "get_meta"})
SETTLING = frozenset({"ack", "release"})  # ops that end deliveries of this connection

# What the replies of one connection's reads on the engine thread may come to at once, at
# their largest (max_reply each): more of them wait unstarted until one is answered, so a
# client that pipelines large reads without reading the replies pins no more than this.
_REPLY_BUDGET = 64 * 1024 * 1024
# What the records (and ids) of one connection's requests waiting on the engine thread may
# come to at once: more wait unread, so a client that pipelines large appends faster than
# the engine writes them pins no more than this (and one request), not MAX_INFLIGHT frames.
_REQUEST_BUDGET = 64 * 1024 * 1024
_ITEM_COST = 64  # bytes a record or id of a request takes in memory besides its data


def reserves(req: Request) -> bool:
    """Whether ``req`` counts against the reply budget while in flight: a read whose reply
    may take up to max_reply, but not a long-polling take (which may wait for long, and
    takes each record once)."""
    return req.op in LIMITED and not (req.op == "take" and req.args["wait"] > 0
                                      and req.args["n"])


def request_cost(req: Request) -> int:
    """About the memory ``req``'s records, ids or value hold while it waits to run."""
    op, args = req.op, req.args
    if op == "append":
        records = args["records"]
        return sum(map(len, records)) + _ITEM_COST * len(records)
    if op == "restore":
        records = args["records"]
        return sum(map(len, records[1::RECORD_FIELDS])) + _ITEM_COST * len(records)
    if op in SETTLING:
        return _ITEM_COST * len(args["deliveries"])
    if op == "move":
        return _ITEM_COST * len(args["ids"] or ())
    if op == "set_meta":
        return len(args["value"])
    return 0


def too_much(req: Request, cost: int, reserved: int, held: int, max_reply: int) -> bool:
    """Whether ``req`` must wait for a request in flight to be answered first: its reply,
    with the ``reserved`` replies in flight (``max_reply`` each), could exceed the reply
    budget, or its records (``cost``, its :func:`request_cost`), with the ``held`` of those
    in flight, the request budget."""
    if reserved and reserves(req) and (reserved + 1) * max_reply > _REPLY_BUDGET:
        return True
    return bool(held) and held + cost > _REQUEST_BUDGET
