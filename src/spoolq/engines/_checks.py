"""The checks of the values engines store: types, and the ranges every format holds.
Each raises TypeError or ValueError naming the value, to be called before anything
changes. :mod:`spoolq.engines.base` re-exports them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from math import inf, isnan

__all__ = ["MAX_ATTEMPTS", "MAX_META_KEY_BYTES", "MAX_OWNER_BYTES", "MAX_RAW_SIZE", "as_bytes",
           "as_delivery", "as_float_time", "as_int", "as_max_attempts", "as_meta_key",
           "as_queue_name",
           "as_records", "as_text", "check_expire", "check_release", "checked_attempts",
           "checked_ids", "checked_owner", "checked_raw_size", "checked_raw_sizes",
           "checked_size_types",
           "int_deliveries", "lease_owner_fits", "meta_key_bytes", "names_nothing_stored",
           "writable"]


def as_bytes(value: object, what: str) -> bytes:
    """``value`` as bytes (a bytes-like object is copied); TypeError naming ``what`` for
    anything else, which an engine that pickles its records could save but never read
    back."""
    if isinstance(value, bytes):
        return value
    try:
        return bytes(memoryview(value))  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}") from None


_ONLY_BYTES = {bytes}


def as_records(records: Sequence[object]) -> Sequence[bytes]:
    """The records of an ``append`` as bytes (see :func:`as_bytes`): the same sequence
    when every record is bytes already, the usual case, checked without a loop in Python.
    An engine keeping text as text would count it in characters and give it back as bytes."""
    if type(records[0]) is bytes and (len(records) == 1
                                      or {*map(type, records)} == _ONLY_BYTES):
        return records  # type: ignore[return-value]
    return [as_bytes(r, "a record") for r in records]


def writable(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8: every str but one holding a surrogate
    ("\\ud800"), which no file, server or peer takes. One C call for ASCII text."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def as_queue_name(value: object) -> str:
    """``value`` as the name of a queue to store records under: TypeError when it is not a
    str, which a file engine keeping names as text would give back as another name (7 as
    "7"); ValueError when it cannot be written as UTF-8 (see :func:`writable`), which the
    SQLite, LMDB and PostgreSQL engines cannot store. Reads by such a name find nothing
    (see :func:`names_nothing_stored`)."""
    if not isinstance(value, str):
        raise TypeError(f"a queue name must be a str, not {type(value).__name__}")
    if not writable(value):
        raise ValueError(f"a queue name must be text that can be written as UTF-8, not "
                         f"{value[:40]!r}, which holds a surrogate; nothing was changed")
    return value


def names_nothing_stored(queue: object) -> bool:
    """Whether ``queue`` is a str that :func:`as_queue_name` refuses, so names no queue: a
    call that only reads or settles finds nothing by it, as by a name never used. Cheap
    for the ASCII names of the usual case. Other types are left to the engine."""
    return type(queue) is str and not queue.isascii() and not writable(queue)


def as_int(value: object, what: str) -> int:
    """``value`` when it is an int; TypeError naming ``what`` for anything else."""
    if not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return value


def as_max_attempts(value: object) -> int | None:
    """The ``max_attempts`` of a ``release`` or an ``expire``: None, or an int; TypeError
    for anything else, which would stop the settling half way (a str) or bury records
    early (a float)."""
    return None if value is None else as_int(value, "max_attempts")


def as_delivery(ident: object, attempts: object) -> tuple[int, int] | None:
    """A delivery ``(id, attempts)`` of an ``ack`` or a ``release`` as two ints (a bool as
    its int), or None when either is not an int: such a delivery holds no lease, though
    1.0 == 1 finds a record kept by its id in a dict and SQL compares "1" with 1."""
    if isinstance(ident, int) and isinstance(attempts, int):
        return int(ident), int(attempts)
    return None


def int_deliveries(deliveries: Iterable[tuple[object, object]]) -> list[tuple[int, int]]:
    """The deliveries of an ``ack`` or a ``release`` that can hold a lease, each as two
    ints (see :func:`as_delivery`), in their order; the others are left out."""
    return [(i, a) if type(i) is int and type(a) is int else (int(i), int(a))
            for i, a in deliveries if isinstance(i, int) and isinstance(a, int)]


def as_float_time(value: float) -> float:
    """A time that passed the checks (a real number, not NaN) as a float, for a store that
    binds no int beyond 64 bits (SQLite): an int beyond every float as an infinity of its
    sign, a time past either end, as the engines comparing in Python take it."""
    try:
        return float(value)
    except OverflowError:
        return inf if value > 0 else -inf


def as_text(value: object, what: str) -> str:
    """``value`` when it is a str; TypeError naming ``what`` for anything else."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    return value


MAX_RAW_SIZE = (1 << 63) - 1
"""The largest raw size a record may have: SQLite's largest integer."""

MAX_ATTEMPTS = (1 << 30) - 1
"""The largest attempts a restore takes: room for as many deliveries again in every format."""


def _in_range(value: object, what: str, top: int) -> int:
    number = as_int(value, what)
    if not 0 <= number <= top:
        raise ValueError(f"{what} must be from 0 to {top}, not {number}; nothing was changed")
    return number


def checked_raw_size(value: object) -> int:
    """A record's raw size: TypeError when it is not an int, ValueError when it is negative
    or above :data:`MAX_RAW_SIZE`. Call it before changing anything."""
    return _in_range(value, "a raw size", MAX_RAW_SIZE)


def checked_attempts(value: object) -> int:
    """A restored record's attempts: TypeError when not an int, ValueError when negative or
    above :data:`MAX_ATTEMPTS`. Call it before changing anything."""
    return _in_range(value, "attempts", MAX_ATTEMPTS)


MAX_META_KEY_BYTES = 400
"""The longest metadata key, in bytes of UTF-8, that an engine storing keys by size and a
server's request take: room for the keys spoolq writes for a queue of the longest name,
within what every engine can store."""


def as_meta_key(value: object) -> str:
    """``value`` as a metadata key to store a value under: TypeError when it is not a str,
    ValueError when it cannot be written as UTF-8 (see :func:`writable`), which the SQLite,
    LMDB and PostgreSQL engines cannot store. Reads by such a key find nothing."""
    key = as_text(value, "a metadata key")
    if not writable(key):
        raise ValueError("a metadata key must be text of UTF-8, not one that cannot be "
                         "written as UTF-8; nothing was changed")
    return key


def meta_key_bytes(value: object) -> bytes:
    """A metadata key as UTF-8, checked against the rule a server applies: TypeError when it
    is not a str, ValueError when it is empty, longer than :data:`MAX_META_KEY_BYTES`,
    holds NUL or cannot be written as UTF-8. For an engine that cannot store every key."""
    key = as_text(value, "a metadata key")
    try:
        data = key.encode()
    except UnicodeEncodeError:
        problem = "one that cannot be written as UTF-8"
    else:
        if 0 < len(data) <= MAX_META_KEY_BYTES and b"\0" not in data:
            return data
        problem = "one holding NUL" if b"\0" in data else f"{len(data)} bytes"
    raise ValueError(f"a metadata key must be 1 to {MAX_META_KEY_BYTES} bytes of UTF-8 "
                     f"without NUL, not {problem}; nothing was changed")


_ONLY_INTS = {int}


def checked_size_types(raw_sizes: Sequence[object]) -> None:
    """TypeError naming it when one of an ``append``'s raw sizes is not an int (a float in
    range passes :func:`checked_raw_sizes`), checked without a loop in Python."""
    if not {*map(type, raw_sizes)} <= _ONLY_INTS:
        for size in raw_sizes:
            checked_raw_size(size)


def checked_raw_sizes(raw_sizes: Sequence[int]) -> None:
    """:func:`checked_raw_size` of each of an ``append``'s raw sizes, at the cost of a
    ``min`` and a ``max`` when they are all in range."""
    try:
        fine = not raw_sizes or (min(raw_sizes) >= 0 and max(raw_sizes) <= MAX_RAW_SIZE)
    except TypeError:  # a size that is not a number: named below
        fine = False
    if not fine:
        for size in raw_sizes:
            checked_raw_size(size)


MAX_OWNER_BYTES = 448
"""The longest lease owner, in bytes of UTF-8: what a row of an SQLite file has room for
beside the largest record it takes and a dead letter's reason. The owners a queue makes
(:func:`spoolq.owners.new_owner`) take about 110."""


def checked_owner(value: object) -> str:
    """The owner of a take's lease: TypeError when it is not a str, ValueError when its
    UTF-8 is longer than :data:`MAX_OWNER_BYTES` or it cannot be written as UTF-8 (a lone
    surrogate). Call it before changing anything."""
    owner = as_text(value, "a lease owner")
    if lease_owner_fits(owner):
        return owner
    try:
        size = len(owner.encode())
    except UnicodeEncodeError:
        problem = "one that cannot be written as UTF-8"
    else:
        if size <= MAX_OWNER_BYTES:
            return owner
        problem = f"{size:,} bytes"
    raise ValueError(f"a lease owner must be at most {MAX_OWNER_BYTES} bytes of UTF-8, not "
                     f"{problem}; nothing was changed")


def lease_owner_fits(owner: object) -> bool:
    """Whether ``owner`` is a str that :func:`checked_owner` passes, at the cost of a few
    C calls when it is short ASCII: the usual case, for a take's fast path."""
    return type(owner) is str and owner.isascii() and len(owner) <= MAX_OWNER_BYTES


def checked_ids(ids: Iterable[object] | None) -> Sequence[int] | None:
    """The ids of a ``move``: None, or each an int; TypeError naming one that is not (a float
    matched the record of its value on some engines and none on others; text failed half
    way), or ``ids`` given as a str or bytes, before anything changes. A list or tuple of
    ints comes back as it is, checked without a loop in Python; any other iterable as a
    list."""
    if ids is None:
        return None
    if isinstance(ids, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"ids must be a sequence of ints, not {type(ids).__name__}")
    given = ids if type(ids) is list or type(ids) is tuple else list(ids)
    if not {*map(type, given)} <= _ONLY_INTS:
        for ident in given:
            as_int(ident, "a record id")
    return given  # type: ignore[return-value]


def check_release(reason: object, max_attempts: object) -> str:
    """The arguments of a ``release`` every engine checks, whatever its deliveries: the
    reason as text (TypeError, ValueError) and ``max_attempts`` (see :func:`as_max_attempts`)."""
    text = as_text(reason, "a reason")
    as_max_attempts(max_attempts)
    return text


def check_expire(now: object, owners: object, max_attempts: object) -> None:
    """The arguments of an ``expire``: TypeError when ``now`` is not a number (text sorts
    after every time, so it ended every lease, or failed only once the queue held one),
    ``owners`` is a str or bytes (whose characters would be taken for owners), or
    ``max_attempts`` is neither None nor an int. Call it before changing anything."""
    try:
        isnan(now)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"now must be a number, not {type(now).__name__}") from None
    except OverflowError:
        pass  # an int beyond every float: a time all the same
    if isinstance(owners, (str, bytes)):
        raise TypeError(f"owners must be a sequence of str, not {type(owners).__name__}")
    as_max_attempts(max_attempts)
