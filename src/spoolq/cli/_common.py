"""What every subcommand shares: exit codes, opening files, reading queues page by page.

Options are in :mod:`._options`, record decoding in :mod:`._decoding` and output in
:mod:`._output`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from enum import IntEnum
from typing import Any, TypeVar

import click

from ..engines import (
    Engine,
    LeasedRecord,
    StoredRecord,
    SupportsPeekLeased,
    dead_queue_name,
    engine_name_for,
    open_engine,
)
from ..errors import CorruptError
from ..zdict import DICTIONARY_QUEUE
from ._following import pages_after

__all__ = [
    "DEFAULT_CHUNK",
    "MAX_CHUNK",
    "MAX_OFFSET",
    "DamagedRecord",
    "ExitCode",
    "FileProblem",
    "Refused",
    "base_queues",
    "check_not_a_stray_empty_file",
    "disk_bytes",
    "disk_size",
    "engine_options",
    "iter_leased_pages",
    "iter_pages",
    "iter_pages_following",
    "names_not_text",
    "not_text_note",
    "now",
    "one_line",
    "open_existing",
    "opening",
    "partial_file",
    "set_stored_codec",
    "skipping_damaged",
    "stored_codec",
]

log = logging.getLogger("spoolq")
T = TypeVar("T")

DEFAULT_CHUNK = 1000
"""Records read per engine call when a command walks a whole queue."""
MAX_CHUNK = 1_000_000
"""The largest ``--chunk``: a chunk is held in memory."""
MAX_OFFSET = 2**62
"""The largest ``--offset``: engines take offsets that fit in 64 bits."""


class ExitCode(IntEnum):
    """What the ``spoolq`` command's exit status means."""

    OK = 0
    PROBLEM = 1
    """``verify`` found damage, or an operation was refused or could not finish."""
    USAGE = 2
    """Bad arguments or options (click's own usage errors use 2 as well)."""
    FILE = 3
    """The file is missing, is not a spoolq queue file, is damaged or locked, or I/O failed."""
    INTERRUPTED = 130
    """Stopped by Ctrl-C (SIGINT), as a shell reports a command SIGINT ended."""


class Refused(click.ClickException):
    """An operation was refused or found problems: exit status 1, one line on stderr."""

    exit_code = ExitCode.PROBLEM


class Interrupted(click.ClickException):
    """Ctrl-C (SIGINT) stopped the command: exit status 130, one line on stderr."""

    exit_code = ExitCode.INTERRUPTED


class FileProblem(click.ClickException):
    """The file cannot be used: exit status 3, one line on stderr."""

    exit_code = ExitCode.FILE


def one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# ---- opening ------------------------------------------------------------------------------

def engine_options(path: str, engine: str | None, schema: str | None, *,
                   option: str = "--schema", what: str = "PATH") -> dict[str, Any] | None:
    """The ``engine_options`` that open ``path`` on ``schema`` (None without one); a
    usage error when the path is no PostgreSQL database."""
    if schema is None:
        return None
    if (engine or engine_name_for(path)) != "postgres":
        raise click.UsageError(f"{option} applies to a postgresql:// {what} only")
    return {"schema": schema}


def open_existing(path: str, engine: str | None, *, read_only: bool,
                  schema: str | None = None, option: str = "--schema",
                  what: str = "PATH") -> Engine:
    """Open the queue file at ``path``, which must exist; nothing is ever created.

    ``schema`` is the PostgreSQL schema of a ``postgresql://`` path, given
    with the ``option`` of the argument ``what``. Raises :class:`FileProblem` for a missing
    path or, unless ``engine`` is given, the lock file of a dbm or pickle queue, and
    usage errors for paths that name no file (``:memory:``) or a schema for
    another engine; engine errors propagate to ``main``.
    With ``read_only=False`` the file is first checked to hold a queue: an
    engine opened for writing turns an empty file, directory or PostgreSQL
    schema into a new queue, which a command working on an existing queue
    must refuse instead.
    """
    if path == ":memory:":
        raise click.UsageError("':memory:' holds nothing outside the program that made it")
    options = engine_options(path, engine, schema, option=option, what=what)
    if "://" not in path and not os.path.exists(path):
        raise FileProblem(f"{path}: no such file")
    if engine is None:
        check_not_a_stray_empty_file(path)
    log.debug("spoolq: opening %s (engine=%s, read_only=%s)", path, engine or "by suffix",
              read_only)
    with opening(path):
        if not read_only:
            _check_holds_a_queue(path, engine, options)
        return open_engine(path, engine, read_only=read_only, options=options)


@contextlib.contextmanager
def opening(path: str) -> Iterator[None]:
    """Raise :class:`FileProblem` saying ``path`` is damaged for a UnicodeDecodeError as
    it is opened: SQLite's message for a damaged schema quotes the bytes it could not
    parse, and Python's sqlite3 fails to decode a message that is not UTF-8."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise FileProblem(f"{path} is damaged: it holds bytes that are not UTF-8 where "
                          f"text belongs ({one_line(exc)})") from exc


_LOCKED_ENGINES = ("dbm", "pickle")
"""The engines that keep an empty ``PATH.lock`` file beside a queue."""


def check_not_a_stray_empty_file(path: str) -> None:
    """Raise for the empty lock file a dbm or pickle queue keeps beside it: with no suffix
    of its own it would be opened (or made) as an SQLite database. Other empty files are
    SQLite databases as SQLite makes them first, and left to the engine."""
    if ("://" in path or not path.endswith(".lock") or not os.path.isfile(path)
            or os.path.getsize(path) != 0):
        return
    queue = path[: -len(".lock")]
    if engine_name_for(queue) in _LOCKED_ENGINES and os.path.exists(queue):
        raise FileProblem(f"{path} is an empty file, not a spoolq queue file; it is the "
                          f"lock file of the queue {queue}")


def _check_holds_a_queue(path: str, engine: str | None,
                         options: dict[str, Any] | None) -> None:
    """Raise unless ``path`` is a queue already, by opening it read-only.

    A dbm queue is only checked not to be an empty directory: opened for
    writing, the dbm engine repairs an index a killed writer left behind,
    which its read-only open refuses to read.
    """
    if (engine or engine_name_for(path)) == "dbm":
        if os.path.isdir(path) and not os.listdir(path):
            raise FileProblem(f"{path} is an empty directory, not a spoolq dbm queue")
        return
    open_engine(path, engine, read_only=True, options=options).close()


def stored_codec(engine: Engine, queue: str) -> tuple[str | None, str | None]:
    """The serializer and compressor names the file stores for ``queue`` (None if unset).

    The keys are the ones :class:`spoolq.core.QueueCore` writes when it creates a queue.
    """
    ser = engine.get_meta(f"queue/{queue}/serializer")
    comp = engine.get_meta(f"queue/{queue}/compressor")
    return (None if ser is None else ser.decode("utf-8", "replace"),
            None if comp is None else comp.decode("utf-8", "replace"))


def set_stored_codec(engine: Engine, queue: str, serializer: str | None,
                     compressor: str | None) -> None:
    """Record ``queue``'s codec names in the file, as :func:`stored_codec` reads them."""
    if serializer is not None:
        engine.set_meta(f"queue/{queue}/serializer", serializer.encode())
    if compressor is not None:
        engine.set_meta(f"queue/{queue}/compressor", compressor.encode())


def base_queues(engine: Engine, only: str | None = None) -> list[str]:
    """Named queues of the file, without their ``.dead`` companions, sorted.

    ``X.dead`` is the companion of ``X`` (its dead letters) when the file knows a queue
    ``X``: one that records were stored in, or that a handle opened (it stores the
    queue's codec). Otherwise no queue ``X`` ever had dead letters here, and ``X.dead``
    is a queue of its own, listed by its name. A queue that only has dead letters is
    listed too. With ``only`` the list is just that name, whether the file holds it or
    not.
    """
    if only is not None:
        return [only]
    names = {n for n in engine.queues() if isinstance(n, str)} - {DICTIONARY_QUEUE}
    suffix = dead_queue_name("")
    bases = {n for n in names if not n.endswith(suffix)}
    for name in sorted(n for n in names if n.endswith(suffix)):
        owner = name[: -len(suffix)]
        if owner in names or stored_codec(engine, owner) != (None, None):
            bases.add(owner)
        else:
            bases.add(name)
    return sorted(bases)


def names_not_text(engine: Engine) -> list[Any]:
    """Queue names of ``engine`` that are not text, which :func:`base_queues` leaves out:
    bytes, in an SQLite file written by a spoolq that did not check the type of a name
    (``SQLiteEngine.names_not_text``), or a name of another type an engine lists. No
    queue can be opened by such a name; the engine's reads (``counts``, ``peek``) take it."""
    found = {n for n in engine.queues() if not isinstance(n, str)}
    listed = getattr(engine, "names_not_text", None)
    if listed is not None:
        found.update(listed())
    return sorted(found, key=repr)


def not_text_note(engine: Engine, name: Any) -> str:
    """What to tell of a queue :func:`names_not_text` lists, shown as Python writes it."""
    counts = engine.counts(name)
    return (f"queue name {name!r} is stored as {type(name).__name__}, not text (a file "
            "written by an earlier spoolq): no queue can be opened by that name, so its "
            f"{counts.ready} ready and {counts.leased} leased items are out of reach")


_NO_FILE = frozenset({"postgres", "remote"})


def disk_size(path: str, engine_name: str) -> int | None:
    """:func:`disk_bytes`, or None for a queue store that has no file of its own: a
    PostgreSQL database, a server's queues, an engine whose path names no file."""
    if engine_name in _NO_FILE or not os.path.exists(path):
        return None
    return disk_bytes(path)


def disk_bytes(path: str) -> int:
    """Bytes the queue occupies on disk: the file (or directory) plus an SQLite ``-wal``."""
    total = 0
    if os.path.isdir(path):
        for root, _dirs, files in os.walk(path):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    elif os.path.exists(path):
        total = os.path.getsize(path)
    wal = path + "-wal"
    if os.path.isfile(wal):
        total += os.path.getsize(wal)
    return total


def iter_pages(engine: Engine, queue: str, *, offset: int = 0, chunk: int = DEFAULT_CHUNK,
               limit: int | None = None, read: Peek | None = None,
               expected: int | None = None) -> Iterator[list[StoredRecord]]:
    """Ready records of ``queue`` in FIFO order, ``chunk`` at a time, never all at once;
    ``read`` replaces ``engine.peek`` of the queue (see :func:`skipping_damaged`).

    ``expected`` is how many records the queue held past ``offset`` when the reading
    began: a page shorter than asked for ends the reading only once that many were
    read (a served queue's reply holds the records that fit in it, fewer than asked
    for when they are large), or when a read finds nothing more. Records put meanwhile
    are not chased past it."""
    return _pages(read or (lambda n, at: engine.peek(queue, n, at)), offset, chunk, limit,
                  expected)


def iter_leased_pages(engine: SupportsPeekLeased, queue: str, *, offset: int = 0,
                      chunk: int = DEFAULT_CHUNK, limit: int | None = None,
                      expected: int | None = None,
                      following: bool = True) -> Iterator[list[LeasedRecord]]:
    """Leased records of ``queue`` in FIFO order, ``chunk`` at a time, as :func:`iter_pages`
    reads ready ones, while consumers may settle and lease records meanwhile: every record
    that stays leased from start to end is yielded once (see :func:`.pages_after`).

    With ``following=False`` each page is read where the one before ended, as
    :func:`iter_pages` reads: for a queue nothing changes meanwhile, whose pages the
    engines then read in linear time (see :class:`~spoolq.engines.base.PageEnds`)."""
    def read(n: int, at: int) -> list[LeasedRecord]:
        return engine.peek_leased(queue, n, at)

    if not following:
        return _pages(read, offset, chunk, limit, expected)
    return pages_after(read, lambda lr: lr.record.id, offset=offset, chunk=chunk,
                       limit=limit, expected=expected)


class DamagedRecord(StoredRecord):
    """Stands in for a record the engine itself could not read (it raised
    :class:`CorruptError`); ``reason`` is why. Its id is one between its neighbours'
    (the real one is not known), so that pages stay in id order."""


Peek = Callable[[int, int], list[StoredRecord]]
"""Reads ``n`` ready records of a queue from an offset, as ``Engine.peek`` does."""


def skipping_damaged(engine: Engine, queue: str) -> Peek:
    """A peek of ``queue`` that reads on past records the engine finds damaged: a page
    that raises :class:`CorruptError` is read again one record at a time, and each
    record that raises is a :class:`DamagedRecord` in it. (The dbm engine checks each
    record it reads; one damaged record would stop every read of a page holding it.)"""
    def one(offset: int) -> StoredRecord | None:
        try:
            page = engine.peek(queue, 1, offset)
        except CorruptError as exc:
            return DamagedRecord(0, b"", 0, 0, float("nan"), one_line(exc))
        return page[0] if page else None

    def read(n: int, offset: int) -> list[StoredRecord]:
        try:
            return engine.peek(queue, n, offset)
        except CorruptError:
            log.debug("spoolq: %s: a damaged record at offsets %d-%d; reading them one by "
                      "one", queue, offset, offset + n - 1)
        page: list[StoredRecord] = []
        for at in range(offset, offset + n):
            rec = one(at)
            if rec is None:
                break
            page.append(rec)
        before = one(offset - 1) if offset else None
        return _number_damaged(page, None if before is None or isinstance(
            before, DamagedRecord) else before.id)

    return read


def _number_damaged(page: list[StoredRecord], before: int | None) -> list[StoredRecord]:
    """Give each :class:`DamagedRecord` of ``page`` an id after the record before it (or
    before the record after it): ids only grow, so the real one lies between them."""
    out = list(page)
    for i, rec in enumerate(out):
        if not isinstance(rec, DamagedRecord):
            continue
        if i:
            out[i] = rec._replace(id=out[i - 1].id + 1)
        elif before is not None:
            out[i] = rec._replace(id=before + 1)
        else:
            after = next((r.id for r in out if not isinstance(r, DamagedRecord)), None)
            run = next((k for k, r in enumerate(out) if not isinstance(r, DamagedRecord)),
                       len(out))
            out[i] = rec._replace(id=0 if after is None else max(after - run, 0))
    return out


def iter_pages_following(engine: Engine, queue: str, *, chunk: int = DEFAULT_CHUNK,
                         read: Peek | None = None, expected: int | None = None,
                         offset: int = 0,
                         limit: int | None = None) -> Iterator[list[StoredRecord]]:
    """Ready records of ``queue`` in FIFO order, ``chunk`` at a time, while other programs
    may take records from the head meanwhile: every record that stays ready from start to
    end is yielded once (those taken meanwhile may or may not be). ``read`` replaces
    ``engine.peek`` of the queue (see :func:`skipping_damaged`); ``expected`` is the
    queue's ready count past ``offset`` when the reading began, as :func:`iter_pages`
    takes it. The first page is read at ``offset``; at most ``limit`` records are yielded.

    Records are in id order: a page after the first is read from the last record read,
    found again by id (O(log n) reads) when records before it left, whether at the head
    or behind a record that waits out a delay (see :func:`.pages_after`).
    """
    peek: Peek = read or (lambda n, at: engine.peek(queue, n, at))
    return pages_after(peek, _record_id, offset=offset, chunk=chunk, limit=limit,
                       expected=expected)


def _record_id(record: StoredRecord) -> int:
    return record.id


def _pages(read: Callable[[int, int], list[T]], offset: int, chunk: int,
           limit: int | None, expected: int | None) -> Iterator[list[T]]:
    left = limit
    got = 0
    while left is None or left > 0:
        want = chunk if left is None else min(chunk, left)
        page = read(want, offset)
        if not page:
            return
        yield page
        offset += len(page)
        got += len(page)
        if left is not None:
            left -= len(page)
        if len(page) < want and (expected is None or got >= expected):
            return


def partial_file(output: str) -> tuple[int, str, str]:
    """A new temporary file to write ``output`` into, to be moved over it once complete:
    its descriptor, its path and the path to move it to.

    It lies next to the file a symlink ``output`` names, so that the link stays a link,
    and has a name of its own, so that two commands writing the same file at once do
    not meet. Raises :class:`FileProblem` naming ``output`` when it cannot be created.
    """
    target = os.path.realpath(output)
    try:
        fd, partial = tempfile.mkstemp(dir=os.path.dirname(target),
                                       prefix=os.path.basename(target) + ".", suffix=".part")
    except OSError as exc:
        raise FileProblem(f"{output}: cannot be written: {exc.strerror or exc}") from exc
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(partial, 0o666 & ~mask)  # as open() would create it
    return fd, partial, target


def now() -> float:
    """Wall-clock time, the clock ``enqueued_at`` and lease expiries use."""
    return time.time()
