"""What every subcommand shares: exit codes, opening files, output, decoding, paging."""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ..codec import COMPRESSORS, SERIALIZERS, Codec, record_codec_names
from ..engines import (
    ENGINES,
    Engine,
    LeasedRecord,
    StoredRecord,
    SupportsPeekLeased,
    dead_queue_name,
    engine_name_for,
    open_engine,
)
from ..errors import CorruptError, SerializationError, SpoolqError
from ..owners import owner_is_dead
from ..settings import check_queue_name
from ..zdict import DICTIONARY_QUEUE, load_dictionaries

__all__ = [
    "DEFAULT_CHUNK",
    "MAX_CHUNK",
    "MAX_OFFSET",
    "CliState",
    "Decoded",
    "Decoder",
    "ExitCode",
    "FileProblem",
    "FiniteFloatRange",
    "Refused",
    "base_queues",
    "disk_bytes",
    "engine_option",
    "engine_options",
    "format_age",
    "format_bytes",
    "is_interactive",
    "iter_leased_pages",
    "iter_pages",
    "iter_pages_following",
    "json_option",
    "json_text",
    "now",
    "one_line",
    "open_existing",
    "owner_state",
    "queue_option",
    "ratio_pct",
    "record_json",
    "record_text",
    "safe_repr",
    "schema_option",
    "set_stored_codec",
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


class Refused(click.ClickException):
    """An operation was refused or found problems: exit status 1, one line on stderr."""

    exit_code = ExitCode.PROBLEM


class FileProblem(click.ClickException):
    """The file cannot be used: exit status 3, one line on stderr."""

    exit_code = ExitCode.FILE


def one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# ---- options ------------------------------------------------------------------------------

def _check_engine(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and value not in ENGINES:
        raise click.BadParameter(
            f"no engine named {value!r}; known engines: {', '.join(sorted(ENGINES))}")
    if value == "memory":
        raise click.BadParameter("the memory engine holds nothing outside the program that "
                                 "made it, so there is no file to work on")
    return value


def engine_option(*names: str, dest: str = "engine",
                  help: str | None = None) -> Callable[[Any], Any]:
    """``--engine NAME``: overrides the engine the path's suffix picks (never ``memory``)."""
    return click.option(*(names or ("--engine",)), dest, default=None, metavar="NAME",
                        callback=_check_engine,
                        help=help or "Engine to open PATH with (default: picked by suffix).")


def _check_queue(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_queue_name(value)
    except SpoolqError as exc:
        raise click.BadParameter(one_line(exc)) from None


def queue_option(default: str | None = "default") -> Callable[[Any], Any]:
    """``--queue NAME`` (``-q``): a usage error unless NAME is a name a queue can have
    (non-empty, valid UTF-8 of at most 255 bytes, no NUL)."""
    text = ("Named queue (default: every queue in the file)." if default is None
            else f"Named queue (default: {default!r}).")
    return click.option("--queue", "-q", "queue", default=default, metavar="NAME",
                        callback=_check_queue, help=text)


class FiniteFloatRange(click.FloatRange):
    """A float option in a range, and a finite number: click's FloatRange lets NaN
    through (no comparison with it is true) and infinity through an open bound."""

    name = "finite float range"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


def _check_schema(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not 1 <= len(value.encode("utf-8", "surrogatepass")) <= 63:
        raise click.BadParameter("a PostgreSQL schema name is 1 to 63 bytes long")
    return value


def schema_option(*names: str, dest: str = "schema", what: str = "PATH") -> Callable[[Any], Any]:
    """``--schema NAME``: the PostgreSQL schema of a ``postgresql://`` ``what``;
    :func:`open_existing` refuses it for a path of another engine."""
    return click.option(*(names or ("--schema",)), dest, default=None, metavar="NAME",
                        callback=_check_schema,
                        help=f"PostgreSQL schema, for a postgresql:// {what} (default: spoolq).")


def engine_options(path: str, engine: str | None, schema: str | None, *,
                   option: str = "--schema", what: str = "PATH") -> dict[str, Any] | None:
    """The ``engine_options`` that open ``path`` on ``schema`` (None without one); a
    usage error when the path is no PostgreSQL database."""
    if schema is None:
        return None
    if (engine or engine_name_for(path)) != "postgres":
        raise click.UsageError(f"{option} applies to a postgresql:// {what} only")
    return {"schema": schema}


def json_option() -> Callable[[Any], Any]:
    """``--json``: print one JSON document instead of tables."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print JSON for scripts instead of tables.")


# ---- opening ------------------------------------------------------------------------------

def open_existing(path: str, engine: str | None, *, read_only: bool,
                  schema: str | None = None, option: str = "--schema",
                  what: str = "PATH") -> Engine:
    """Open the queue file at ``path``, which must exist; nothing is ever created.

    ``schema`` is the PostgreSQL schema of a ``postgresql://`` path, given
    with the ``option`` of the argument ``what``. Raises :class:`FileProblem` for a missing path and
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
    log.debug("spoolq: opening %s (engine=%s, read_only=%s)", path, engine or "by suffix",
              read_only)
    if not read_only:
        _check_holds_a_queue(path, engine, options)
    return open_engine(path, engine, read_only=read_only, options=options)


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

    A queue that only has dead letters is listed too. With ``only`` the list
    is just that name, whether the file holds it or not.
    """
    if only is not None:
        return [only]
    names = set(engine.queues()) - {DICTIONARY_QUEUE}
    suffix = dead_queue_name("")
    bases = {n for n in names if not n.endswith(suffix)}
    bases |= {n[: -len(suffix)] for n in names if n.endswith(suffix)}
    return sorted(bases)


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
               limit: int | None = None) -> Iterator[list[StoredRecord]]:
    """Ready records of ``queue`` in FIFO order, ``chunk`` at a time, never all at once."""
    return _pages(lambda n, at: engine.peek(queue, n, at), offset, chunk, limit)


def iter_leased_pages(engine: SupportsPeekLeased, queue: str, *, offset: int = 0,
                      chunk: int = DEFAULT_CHUNK,
                      limit: int | None = None) -> Iterator[list[LeasedRecord]]:
    """Leased records of ``queue`` in FIFO order, as :func:`iter_pages` reads ready ones."""
    return _pages(lambda n, at: engine.peek_leased(queue, n, at), offset, chunk, limit)


def iter_pages_following(engine: Engine, queue: str, *,
                         chunk: int = DEFAULT_CHUNK) -> Iterator[list[StoredRecord]]:
    """Ready records of ``queue`` in FIFO order, ``chunk`` at a time, while other programs
    may take records from the head meanwhile: every record that stays ready from start to
    end is yielded once (those taken meanwhile may or may not be).

    Records are in id order, so a page goes on after the last id read; the position
    of that id is searched for (O(log n) reads) only when the head of the queue has
    changed since the page before, and otherwise, as in :func:`iter_pages`, the next
    page starts where the last one ended.
    """
    def head() -> int | None:
        first = engine.peek(queue, 1, 0)
        return first[0].id if first else None

    offset, last = 0, -1
    seen_head = head()
    while True:
        now_head = head()
        if now_head == seen_head:
            page = engine.peek(queue, chunk, offset)
        else:
            offset, page = _resync(engine, queue, chunk, last, offset)
            seen_head = now_head
        if not page:
            return
        offset += len(page)
        fresh = [rec for rec in page if rec.id > last]
        if fresh:
            yield fresh
            last = fresh[-1].id
        if len(page) < chunk:
            return


def _resync(engine: Engine, queue: str, chunk: int, last: int,
            offset: int) -> tuple[int, list[StoredRecord]]:
    """The offset of the first ready record with an id above ``last`` (at most
    ``offset``, where it was before records left the head) and the page there."""
    while True:
        lo, hi = 0, offset
        while lo < hi:
            mid = (lo + hi) // 2
            probe = engine.peek(queue, 1, mid)
            if probe and probe[0].id <= last:
                lo = mid + 1
            else:
                hi = mid
        page = engine.peek(queue, chunk, lo)
        before = engine.peek(queue, 1, lo - 1) if lo else []
        # Records leaving the head between the search and the read move the page
        # further on; the record before it is then one not read yet: search again.
        if lo == 0 or (before and before[0].id <= last):
            return lo, page
        offset = lo


def _pages(read: Callable[[int, int], list[T]], offset: int, chunk: int,
           limit: int | None) -> Iterator[list[T]]:
    left = limit
    while left is None or left > 0:
        want = chunk if left is None else min(chunk, left)
        page = read(want, offset)
        if not page:
            return
        yield page
        offset += len(page)
        if left is not None:
            left -= len(page)
        if len(page) < want:
            return


# ---- decoding -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Decoded:
    """One record as a command shows it: the item, or a note saying why it is raw.

    ``status`` is ``"ok"``; ``"damaged"`` (header, checksum or compression
    broken); ``"invalid"`` (sound bytes that a built-in serializer rejects);
    ``"pickle"`` (not unpickled without permission); or ``"foreign"`` (a custom
    codec, a pickled class this process cannot import, a missing compressor).
    """

    record: StoredRecord
    status: str
    item: Any = None
    note: str | None = None

    @property
    def ok(self) -> bool:
        """Whether ``item`` holds the decoded item."""
        return self.status == "ok"

    @property
    def codec(self) -> str:
        """``"serializer+compressor"`` as the record's header names them; ``"?"`` if damaged."""
        try:
            ser, comp = record_codec_names(self.record.data)
        except CorruptError:
            return "?"
        return f"{ser}+{comp}"


class Decoder:
    """Decodes records of any built-in codec; pickle only when ``allow_pickle``.

    Records it cannot decode here (pickle without permission, a pickled class
    this process cannot import, a custom serializer or compressor, damage) come
    back with ``ok=False`` and a note instead of raising.
    """

    def __init__(self, engine: Engine, *, allow_pickle: bool = False) -> None:
        self.allow_pickle = allow_pickle
        self._codec = Codec("pickle" if allow_pickle else "cbor", "none")
        load_dictionaries(engine, "", self._codec)

    def decode(self, rec: StoredRecord) -> Decoded:
        try:
            return Decoded(rec, "ok", self._codec.decode(rec.data, rec.id))
        except CorruptError as exc:
            return Decoded(rec, "damaged", note=one_line(exc))
        except SpoolqError as exc:
            # decode() checks the checksum before it looks at the codec: the bytes are sound.
            ser, comp = record_codec_names(rec.data)
            if ser == "pickle" and not self.allow_pickle:
                return Decoded(rec, "pickle", note="pickled; --allow-pickle decodes it "
                               "(unpickling can run code from the file)")
            builtin = ser in SERIALIZERS and ser != "pickle" and comp in COMPRESSORS
            if builtin and isinstance(exc, SerializationError):
                return Decoded(rec, "invalid", note=one_line(exc))
            return Decoded(rec, "foreign", note=f"cannot be decoded here: {one_line(exc)}")


def json_text(item: Any) -> str:
    """``item`` as compact JSON, or ValueError if JSON cannot hold it exactly.

    Only dicts with string keys, lists, strings, finite numbers, booleans and
    None pass: anything else (bytes, tuples, sets, int keys, NaN, strings with
    a lone surrogate, which UTF-8 cannot encode) would not come back as the
    same item.
    """
    try:
        _check_json(item, "item")
    except RecursionError:
        raise ValueError("the item is nested too deeply for JSON") from None
    return json.dumps(item, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _check_json(obj: Any, where: str) -> None:
    kind = type(obj)
    if kind is str:
        _check_text(obj, where)
        return
    if obj is None or kind is bool:
        return
    if kind is int:
        _check_int(obj, where)
        return
    if kind is float:
        if not math.isfinite(obj):
            raise ValueError(f"{where} is {obj!r}, which JSON cannot hold")
        return
    if kind is list:
        for n, value in enumerate(obj):
            _check_json(value, f"{where}[{n}]")
        return
    if kind is dict:
        for key, value in obj.items():
            if type(key) is not str:
                raise ValueError(f"{where} has the key {key!r}: JSON keys are strings only")
            _check_text(key, f"a key of {where}")
            _check_json(value, f"{where}[{key!r}]")
        return
    raise ValueError(f"{where} is a {kind.__name__}, which JSON cannot hold")


def _check_int(number: int, where: str) -> None:
    """Python refuses to write an int of more digits than sys.get_int_max_str_digits()
    as text (converting one takes time quadratic in its length)."""
    limit = sys.get_int_max_str_digits()
    if limit and number.bit_length() > 3 * limit:  # 3 bits a digit, at most: cheap first
        try:
            str(number)
        except ValueError:
            raise ValueError(f"{where} is an integer of more than {limit} digits, which "
                             "this Python does not write as text") from None


def safe_repr(item: Any) -> str:
    """``repr(item)``, or a description of ``item`` when its repr fails (an integer too
    long to write as text, a class whose ``__repr__`` raises)."""
    try:
        return repr(item)
    except Exception as exc:  # any object's __repr__ may raise anything
        return f"<{type(item).__name__} that cannot be shown: {one_line(exc)}>"


def _check_text(text: str, where: str) -> None:
    """JSON Lines are UTF-8: a string with a lone surrogate cannot be written."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{where} is a string with a lone surrogate "
                         f"({text[exc.start]!r} at index {exc.start}), which UTF-8 "
                         "cannot encode") from None


def record_json(d: Decoded) -> dict[str, Any]:
    """One record for ``--json`` output: metadata plus ``item``, ``repr`` or ``raw``."""
    rec = d.record
    out: dict[str, Any] = {
        "id": rec.id, "enqueued_at": rec.enqueued_at, "attempts": rec.attempts,
        "stored_bytes": len(rec.data), "raw_bytes": rec.raw_size, "codec": d.codec,
    }
    if rec.reason is not None:
        out["reason"] = rec.reason
    if d.ok:
        try:
            json_text(d.item)
            out["item"] = d.item
        except ValueError as exc:
            out["repr"] = safe_repr(d.item)
            out["note"] = str(exc)
    else:
        out["raw"] = base64.b64encode(rec.data).decode()
        out["note"] = d.note
    return out


def record_text(d: Decoded, limit: int) -> Text:
    """One record's item for a table cell, cut to ``limit`` characters."""
    if d.ok:
        try:
            text = json_text(d.item)
        except ValueError:
            text = safe_repr(d.item)
        style = ""
    else:
        text = f"({d.note}) raw: {d.record.data[:48]!r}…"
        style = "yellow"
    if len(text) > limit > 0:
        text = text[: limit - 1] + "…"
    return Text(text, style=style)


# ---- formatting ---------------------------------------------------------------------------

def format_bytes(n: int) -> str:
    """``1536`` → ``"1.5 KiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_age(seconds: float | None) -> str:
    """``200`` → ``"3m 20s"``; None → ``"-"``."""
    if seconds is None:
        return "-"
    s = max(int(seconds), 0)
    for size, unit, sub_size, sub_unit in ((86400, "d", 3600, "h"), (3600, "h", 60, "m"),
                                           (60, "m", 1, "s")):
        if s >= size:
            return f"{s // size}{unit} {(s % size) // sub_size}{sub_unit}"
    return f"{s}s"


def ratio_pct(stored: int, raw: int) -> float | None:
    """Space saved by compression, ``(1 - stored/raw) * 100``; None when empty."""
    return None if raw == 0 else round((1 - stored / raw) * 100, 1)


def owner_state(owner: str) -> str:
    """``"gone"`` (a process of this host that no longer runs), ``"running"`` (one that
    does) or ``"unknown"`` (another host, or an owner name of another form)."""
    if owner_is_dead(owner):
        return "gone"
    parts = owner.split(":")
    if len(parts) == 4 and parts[0] == socket.gethostname():
        return "running"
    return "unknown"


def is_interactive() -> bool:
    """Whether a person can answer a question: stdin and stderr are terminals."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def _holds_items(engine: Engine, name: str) -> bool:
    counts = engine.counts(name)
    return counts.ready + counts.leased > 0


# ---- output -------------------------------------------------------------------------------

class CliState:
    """Where a command writes: tables on stdout, notes and progress on stderr."""

    def __init__(self) -> None:
        self.out = Console(highlight=False, soft_wrap=False)
        self.err = Console(stderr=True, highlight=False)

    def table(self, *columns: str, title: str | None = None, fold: bool = False,
              others_width: int = 40) -> Table:
        """A table for people. Columns named ``#...`` hold numbers (right-aligned);
        ``~...`` hold long text, cut to one line with an ellipsis unless ``fold``, leaving
        about ``others_width`` characters of the console's width to the other columns."""
        table = Table(title=title, title_justify="left", box=None, header_style="bold",
                      pad_edge=False, padding=(0, 1, 0, 0))
        for col in columns:
            if col.startswith("~") and not fold:
                table.add_column(col[1:], no_wrap=True, overflow="ellipsis",
                                 max_width=max(self.out.width - others_width, 20))
            else:
                table.add_column(col.lstrip("#~"), overflow="fold", min_width=len(col) - 1,
                                 justify="right" if col.startswith("#") else "left")
        return table

    @staticmethod
    def add_row(table: Table, *cells: object) -> None:
        """Add a row of plain text: brackets in queue names or items are not markup."""
        table.add_row(*(c if isinstance(c, Text) else Text(str(c)) for c in cells))

    def check_queue_name(self, engine: Engine, *names: str) -> None:
        """Note on stderr when none of ``names`` holds items, naming the queues that do:
        a mistyped ``--queue`` otherwise looks like an empty queue."""
        if not any(_holds_items(engine, name) for name in names):
            # An engine may list a queue that holds nothing (created, or emptied).
            others = ", ".join(base for base in base_queues(engine)
                               if _holds_items(engine, base)
                               or _holds_items(engine, dead_queue_name(base))) or "none"
            self.note(f"note: no queue {names[0]!r} holds items in this file "
                      f"(queues with items: {others})")

    def print_json(self, data: Any) -> None:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))

    def line(self, text: str) -> None:
        """A line of plain text on stdout, left to the terminal to wrap."""
        self.out.print(Text(text), soft_wrap=True)

    def note(self, message: str) -> None:
        """A line for people on stderr (kept out of data written to stdout)."""
        self.err.print(Text(message), soft_wrap=True)

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """A progress bar on a terminal's stderr; nothing at all when stderr is piped."""
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=self.err, transient=True,
                      disable=not self.err.is_terminal) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)


def now() -> float:
    """Wall-clock time, the clock ``enqueued_at`` and lease expiries use."""
    return time.time()
