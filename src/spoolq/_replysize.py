"""How large the server's replies of records come to, so that a reply stays within
what the client accepts (its ``max_reply``), and how many records to read for one:
about a reply's worth, never the whole queue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter

from .engines import Engine, LeasedRecord, StoredRecord
from .errors import ConfigurationError
from .protocol import RECORD_FIELDS

__all__ = ["REPLY_OVERHEAD", "fitting", "fitting_leased", "gather", "reply_size", "snapshot"]

_RECORD_OVERHEAD = 48  # CBOR framing of one record's other fields, an upper bound
REPLY_OVERHEAD = 64  # frame header and CBOR framing of the reply itself, an upper bound
_FRAME_HEAD = 5  # a frame's type and id: what its length counts besides the body
_TIME = 9  # a time in CBOR: cbor2 writes a float as a double, and an integer takes no more

_data, _reason = itemgetter(1), itemgetter(5)


def _head(n: int) -> int:
    """The bytes of a CBOR head carrying ``n``: a whole integer, or the header of a string
    or an array of ``n`` elements."""
    if n < 0:
        n = -1 - n
    return 1 if n < 24 else 2 if n < 0x100 else 3 if n < 0x10000 else 5 if n < 1 << 32 else 9


def _text(value: str) -> int:
    n = len(value.encode())
    return _head(n) + n


def _record_size(rec: StoredRecord) -> int:
    """The bytes ``rec`` takes in the records array of a reply (exact: the frame limit is
    checked against it, and a record refused on an estimate would stay in the queue)."""
    ident, data, raw_size, attempts, _, reason = rec
    n = len(data)
    return (_head(ident) + _head(n) + n + _head(raw_size) + _head(attempts) + _TIME
            + (1 if reason is None else _text(reason)))


def reply_size(recs: list[StoredRecord]) -> int:
    """An upper bound of the bytes a reply carrying ``recs`` takes (a quick check: only
    a reply it finds too large is measured record by record)."""
    if any(map(_reason, recs)):  # dead letters: rare, and their reasons count too
        return REPLY_OVERHEAD + sum(map(_record_size, recs))
    return REPLY_OVERHEAD + sum(map(len, map(_data, recs))) + _RECORD_OVERHEAD * len(recs)


def _too_large(ident: int, size: int, limit: int, queue_name: str) -> ConfigurationError:
    return ConfigurationError(
        f"record {ident} of queue {queue_name!r} takes {size:,} bytes in a reply, more "
        f"than this connection accepts ({limit:,}): open the queue with a larger "
        f"engine_options={{'max_reply': ...}} to receive it")


def _alone(ident: int, size: int, limit: int, limit_one: int | None, queue_name: str) -> int:
    """1 when a first record that fits no reply of ``limit`` bytes, its reply ``size``
    bytes, goes out alone within ``limit_one``; else a ConfigurationError naming it."""
    if limit_one is not None and size <= limit_one:
        return 1
    raise _too_large(ident, size, max(limit, limit_one or 0), queue_name)


def fitting(recs: Sequence[StoredRecord], limit: int, queue_name: str,
            limit_one: int | None = None) -> int:
    """How many of ``recs``, from the first, fit in a reply frame of ``limit`` bytes (as
    its length counts them), or the first alone in one of ``limit_one``; none fitting is a
    ConfigurationError naming the first record (the caller gives it back first)."""
    size, keep = 0, 0
    for rec in recs:
        size += _record_size(rec)
        if _FRAME_HEAD + _head(RECORD_FIELDS * (keep + 1)) + size > limit:
            break
        keep += 1
    if not keep and recs:
        return _alone(recs[0].id, _FRAME_HEAD + _head(RECORD_FIELDS) + size, limit, limit_one,
                      queue_name)
    return keep


def fitting_leased(recs: Sequence[LeasedRecord], limit: int, queue_name: str,
                   limit_one: int | None = None) -> int:
    """:func:`fitting` for leased records, which travel as ``[records, owners, untils]``."""
    size, keep = 0, 0
    for rec in recs:
        size += _record_size(rec.record) + _text(rec.owner) + _TIME
        k = keep + 1
        if _FRAME_HEAD + 1 + _head(RECORD_FIELDS * k) + 2 * _head(k) + size > limit:
            break
        keep = k
    if not keep and recs:
        return _alone(recs[0].record.id, _FRAME_HEAD + 1 + _head(RECORD_FIELDS) + 2 * _head(1)
                      + size, limit, limit_one, queue_name)
    return keep


def gather(engine: Engine, queue_name: str, n: int, limit: int | None,
            fetch: Callable[[int, int], list[StoredRecord]]) -> list[StoredRecord]:
    """Up to ``n`` records from ``fetch(count, already)``, in chunks: no more than about
    twice what a reply of ``limit`` bytes holds is read (a client asking for every record
    of a large queue gets a reply's worth, and the server does not load the queue). The
    first chunk is sized from the queue's average record, each next one doubles."""
    if limit is None or n <= 1:
        return fetch(n, 0)
    want = _first_chunk(engine, queue_name, n, limit)
    recs = fetch(want, 0)
    while len(recs) < n and len(recs) == want and reply_size(recs) <= limit:
        more = fetch(min(n - len(recs), len(recs)), len(recs))
        want = len(recs) + min(n - len(recs), len(recs))
        recs += more
        if not more:
            break
    return recs


def _first_chunk(engine: Engine, queue_name: str, n: int, limit: int) -> int:
    """How many records to read first for a reply of ``limit`` bytes: about twice what it
    holds at the queue's average record (``n`` for a queue of unknown sizes)."""
    held = engine.counts(queue_name)
    records = held.ready + held.leased
    if records and held.stored_bytes:
        average = held.stored_bytes / records + _RECORD_OVERHEAD
        return min(n, max(1, int(2 * limit / average) + 1))
    return n


def snapshot(engine: Engine, queue_name: str, n: int, limit: int | None,
             read: Callable[[int], list[StoredRecord]]) -> list[StoredRecord]:
    """:func:`gather` for a read that changes nothing (a peek): ``read(count)`` gives the
    first ``count`` records, and each try reads them all again, twice as many as the last,
    in one engine call. A read in parts at growing offsets could show a record twice or
    miss one when another process writes the file between two parts; one call is one
    moment of the queue. Reading the head again costs at most as much as the last read."""
    if limit is None or n <= 1:
        return read(n)
    want = _first_chunk(engine, queue_name, n, limit)
    while True:
        recs = read(want)
        if len(recs) < want or want >= n or reply_size(recs) > limit:
            return recs
        want = min(n, 2 * want)
