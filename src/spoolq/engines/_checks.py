"""The checks of the values engines store: types, and the ranges every format holds.
Each raises TypeError or ValueError naming the value, to be called before anything
changes. :mod:`spoolq.engines.base` re-exports them."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["MAX_ATTEMPTS", "MAX_RAW_SIZE", "as_bytes", "as_int", "as_queue_name", "as_records",
           "as_text", "checked_attempts", "checked_raw_size", "checked_raw_sizes"]


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


def as_queue_name(value: object) -> str:
    """``value`` when it is a str; TypeError for anything else, which a file engine keeping
    names as text would give back as another name (7 as "7")."""
    if not isinstance(value, str):
        raise TypeError(f"a queue name must be a str, not {type(value).__name__}")
    return value


def as_int(value: object, what: str) -> int:
    """``value`` when it is an int; TypeError naming ``what`` for anything else."""
    if not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return value


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
