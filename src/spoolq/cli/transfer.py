"""Commands that move items in and out: ``dump``, ``load`` and ``migrate``."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from typing import IO, Any

import click

from ..codec import COMPRESSORS, SERIALIZERS
from ..engines import Engine, dead_queue_name, engine_name_for, open_engine
from ..sync import SyncQueue
from ._common import (
    DEFAULT_CHUNK,
    MAX_CHUNK,
    DamagedRecord,
    FileProblem,
    Refused,
    base_queues,
    check_not_a_stray_empty_file,
    engine_options,
    iter_pages_following,
    names_not_text,
    not_text_note,
    open_existing,
    opening,
    partial_file,
    skipping_damaged,
    stored_codec,
)
from ._copying import (
    building_path,
    copy_dictionaries,
    copy_queues,
    move_into_place,
    name_dst,
    remove_folder,
)
from ._decoding import Decoder, check_json, json_text
from ._options import engine_option, json_option, queue_option, schema_option
from ._output import CliState
from ._signals import sigint_deferred

__all__ = ["dump", "load", "migrate"]

log = logging.getLogger("spoolq")


def _write_items(eng: Engine, name: str, decoder: Decoder, out: IO[bytes], chunk: int,
                 advance: Any, skip: Callable[[str, str], None] | None,
                 expected: int) -> int:
    """Write the items of ``name`` as JSON Lines; the number written.

    A record that cannot be decoded or written as JSON stops the dump with
    :class:`Refused`, or with ``skip`` is passed to it ("record ID", why) and left out,
    as is one the engine cannot read ("a record": its error names it as the engine can).
    """
    written = 0
    read = None if skip is None else skipping_damaged(eng, name)
    for page in iter_pages_following(eng, name, chunk=chunk, read=read, expected=expected):
        lines = []
        for rec in page:
            if skip is not None and isinstance(rec, DamagedRecord):
                skip("a record", rec.reason or "damaged")
                continue
            d = decoder.decode(rec)
            if not d.ok:
                if skip is None:
                    raise Refused(f"record {rec.id} of {name!r}: {d.note}")
                skip(f"record {rec.id}", d.note or d.status)
                continue
            try:
                lines.append(json_text(d.item))
            except ValueError as exc:
                if skip is None:
                    raise Refused(f"record {rec.id} of {name!r} cannot be written as JSON: "
                                  f"{exc}; dump handles JSON-compatible items only") from None
                skip(f"record {rec.id}", f"cannot be written as JSON: {exc}")
        if lines:
            out.write(("\n".join(lines) + "\n").encode())
        written += len(lines)
        advance(len(page))
    return written


@click.command(short_help="Write a queue's items as JSON Lines.")
@click.argument("path")
@queue_option()
@click.option("-o", "--output", metavar="FILE", default=None,
              help="Write to FILE (replaced only once the dump is complete; a device or "
                   "pipe is written to as it goes) instead of stdout.")
@click.option("--dead", is_flag=True, help="Dump the queue's dead letters instead.")
@click.option("--allow-pickle", is_flag=True,
              help="Unpickle pickled items. Only for files you trust: unpickling can run code.")
@click.option("--skip-bad", is_flag=True,
              help="Leave out records that cannot be decoded or written as JSON (each named "
                   "on stderr) and dump the others; the exit status is then 1.")
@click.option("--chunk", type=click.IntRange(1, MAX_CHUNK), default=DEFAULT_CHUNK,
              show_default=True,
              help="Records read per engine call.")
@engine_option()
@schema_option()
def dump(path: str, queue: str, output: str | None, dead: bool, allow_pickle: bool,
         skip_bad: bool, chunk: int, engine: str | None, schema: str | None) -> None:
    """Write a queue's items as JSON Lines, oldest first, one item per line.

    Only items that JSON holds exactly (dicts with string keys, lists,
    strings, numbers, booleans, null) can be dumped; anything else, or a
    record that cannot be decoded (damaged, pickled without --allow-pickle, of
    a custom codec), stops the dump with an error naming the record, and -o
    FILE is then left as it was. With --skip-bad such records are left out,
    each named on stderr, the others are dumped (-o FILE is replaced), and the
    dump ends with exit status 1. Leased items are not dumped: a note on
    stderr counts them (the exit status stays 0). `spoolq load` reads the
    output back.
    """
    state = CliState()
    name = dead_queue_name(queue) if dead else queue
    skipped = 0

    def skip(record: str, why: str) -> None:
        nonlocal skipped
        skipped += 1
        state.note(f"skipped {record} of {name!r}: {why}")

    on_bad = skip if skip_bad else None
    if output not in (None, "-") and _same_file(output, path):
        raise click.UsageError(f"-o {output} would overwrite the queue {path}")
    if output in (None, "-") and sys.stdout is None:  # started with stdout closed (>&-)
        raise FileProblem("standard output is closed: no place to write the items to "
                          "(-o FILE writes them to a file)")
    eng = open_existing(path, engine, read_only=True, schema=schema)
    decoder = Decoder(eng, allow_pickle=allow_pickle)
    try:
        counts = eng.counts(name)
        total, leased = counts.ready, counts.leased
        if not total:
            state.check_queue_name(eng, name)
        with state.progress("dumping", total, data_on_stdout=output in (None, "-")) as advance:
            if output is None or output == "-":
                written = _write_items(eng, name, decoder, sys.stdout.buffer,
                                       chunk, advance, on_bad, total)
            elif os.path.exists(output) and not os.path.isfile(output):
                # A device, pipe or terminal (/dev/stdout, `>(command)`) is written to as
                # stdout is: replacing it would put a plain file in its place.
                with open(output, "wb") as f:
                    written = _write_items(eng, name, decoder, f, chunk, advance, on_bad,
                                           total)
            else:
                fd, partial, target = partial_file(output)
                try:
                    with open(fd, "wb") as f:
                        written = _write_items(eng, name, decoder, f, chunk, advance,
                                               on_bad, total)
                    os.replace(partial, target)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.remove(partial)
                    raise
    finally:
        eng.close()
    if output is not None and output != "-":
        state.note(f"{name}: dumped {written} item(s) to {output}")
    if leased:
        state.note(f"note: {leased} leased item(s) of {name!r} not dumped; ack or requeue "
                   "them first (`spoolq requeue --leased` takes back stuck leases)")
    if skipped:
        raise Refused(f"{skipped} record(s) of {name!r} left out of the dump (named above); "
                      f"{written} item(s) dumped")


def _same_file(output: str, path: str) -> bool:
    """Whether writing ``output`` would replace ``path`` (or a file in a dbm queue's
    directory), or a file an engine keeps beside it (a WAL, a lock), existing or not."""
    if not os.path.exists(path):
        return False
    beside = {os.path.realpath(base + side) for base in (path, os.path.realpath(path))
              for side in _SIDE_FILES}
    if os.path.realpath(output) in beside:
        return True
    if os.path.isdir(path):
        return os.path.commonpath([os.path.realpath(output),
                                   os.path.realpath(path)]) == os.path.realpath(path)
    return os.path.exists(output) and os.path.samefile(output, path)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


_SUSPECT = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]|[eE]\+?0*[1-9][0-9]{2}|[0-9]{200}")
"""What a line needs to hold to parse to something JSON does not hold: a ``\\uD800``-
``\\uDFFF`` escape or a surrogate written as UTF-8 bytes (which the parser lets
through as a lone surrogate), or an exponent or a run of digits large enough for a
number to overflow to infinity. Only the items of such lines are searched."""


_JSON_SPACE = b" \t\r\n"
"""What JSON counts as white space: a line of only these is blank, and skipped."""


def _parse_line(source: str, lineno: int, line: bytes) -> Any:
    """The item of one line, which must be JSON that ``dump`` writes back as it is:
    NaN, Infinity, numbers too large for a float and strings with a lone surrogate
    (which Python's parser takes) are refused, as are items nested too deeply."""
    try:
        # Decoded here (as json.loads decodes bytes, surrogates let through for the check
        # below): given bytes, json.loads would guess UTF-16 or UTF-32 from NUL bytes.
        item = json.loads(line.decode("utf-8-sig", "surrogatepass"), parse_constant=_no_constant)
        if _SUSPECT.search(line):
            check_json(item)
    except RecursionError:
        raise Refused(f"{source}:{lineno}: the item is nested too deeply") from None
    except ValueError as exc:
        raise Refused(f"{source}:{lineno}: not valid JSON: {exc}") from None
    return item


def _count_items(source: str, f: IO[bytes]) -> int:
    """Check that every line of a seekable file is JSON before anything is written."""
    count = 0
    for lineno, line in enumerate(f, 1):
        if line.strip(_JSON_SPACE):
            _parse_line(source, lineno, line)
            count += 1
    f.seek(0)
    return count


@click.command(short_help="Append the items of a JSON Lines file to a queue.")
@click.argument("path")
@click.argument("file", metavar="FILE")
@queue_option()
@click.option("--batch-size", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Items written per transaction.")
@click.option("--serializer", type=click.Choice(sorted(SERIALIZERS)), default=None,
              help="Serializer of a queue created by this load (default: cbor; not raw, "
                   "which stores bytes-like objects, and no JSON line is one).")
@click.option("--compressor", type=click.Choice(sorted(COMPRESSORS)), default=None,
              help="Compressor of a queue created by this load (default: zstd).")
@engine_option()
@schema_option()
@json_option()
def load(path: str, file: str, queue: str, batch_size: int, serializer: str | None,
         compressor: str | None, engine: str | None, schema: str | None,
         as_json: bool) -> None:
    """Append the items of a JSON Lines FILE (- for stdin) to a queue, in order.

    Items are encoded with the queue's own codec and written --batch-size at
    a time, each batch in one transaction. PATH and the queue are created if
    they do not exist. A FILE is read through once first, so a line that is
    not JSON stops the load before anything is written; from stdin or a pipe,
    the batches before the bad line stay loaded. Like any program opening the
    queue, load releases the leases of processes that have ended.
    """
    if path == ":memory:":
        raise click.UsageError("':memory:' holds nothing once this command ends")
    if serializer == "raw":
        # Refused before the queue is created: it would keep a codec nothing JSON fits.
        raise click.BadParameter("the raw serializer takes bytes, and no JSON line is "
                                 "bytes", param_hint="'--serializer'")
    options = engine_options(path, engine, schema)
    if engine is None:
        check_not_a_stray_empty_file(path)  # a lock file, say: no SQLite queue made in it
    if file == "-" and sys.stdin is None:  # started with stdin closed (<&-)
        raise FileProblem("standard input is closed: no items to read from it")
    state = CliState()
    stream: IO[bytes] = (sys.stdin.buffer if file == "-"
                         else open(file, "rb"))  # noqa: SIM115 - closed below
    loaded = writing = 0
    try:
        # A pipe (`<(command)`, /dev/stdin) is read once, as stdin is.
        total = _count_items(file, stream) if file != "-" and stream.seekable() else None
        with opening(path):
            opened = SyncQueue.create(path, name=queue, engine=engine, serializer=serializer,
                                      compressor=compressor, engine_options=options)
        with opened as q, state.progress("loading", total) as advance:
            batch: list[Any] = []
            for lineno, line in itertools.chain(enumerate(stream, 1), [(0, b"")]):
                if line.strip(_JSON_SPACE):
                    batch.append(_parse_line(file, lineno, line))
                if batch and (len(batch) >= batch_size or not lineno):
                    # Ctrl-C as the batch commits would leave it stored but not counted.
                    with sigint_deferred():
                        writing = len(batch)
                        q.put_many(batch)
                        loaded, writing = loaded + writing, 0
                    advance(len(batch))
                    batch = []
    except Refused as exc:
        if loaded:
            raise Refused(f"{exc.message} ({loaded} item(s) before it were loaded)") from exc
        raise
    except BaseException:
        # Ctrl-C, a lock held too long, a full disk: the batches written stay, and a load
        # run again would add them twice unless told how many they were.
        if loaded or writing:
            state.note(f"{queue}: {loaded} item(s) of {file} were loaded before the load "
                       "stopped" + (f", and the {writing} after them may be stored too"
                                    if writing else ""))
        raise
    finally:
        if file != "-":
            stream.close()
    if as_json:
        state.print_json({"queue": queue, "loaded": loaded})
    else:
        state.line(f"{queue}: loaded {loaded} item(s) into {path}")


def _plan(src: Engine, names: list[str]) -> dict[str, int]:
    """Each queue's ready count in SRC; refuses leased items, which cannot be read."""
    plan: dict[str, int] = {}
    for name in names:
        counts = src.counts(name)
        if counts.leased:
            raise Refused(
                f"{name!r} has {counts.leased} leased item(s), which cannot be copied: stop "
                "its consumers, or release stuck leases with `spoolq requeue --leased`")
        plan[name] = counts.ready
    return plan


def _check_destination(src: Engine, dst: Engine, bases: list[str], names: list[str],
                       append: bool) -> None:
    """Refuse destination queues that hold items (unless ``append``) or use another
    serializer."""
    full = []
    for name in names:
        there = dst.counts(name)
        if there.ready + there.leased and not append:
            full.append(f"{name!r} ({there.ready + there.leased} item(s))")
    if full:
        raise Refused(f"the destination already holds {', '.join(full)}; "
                      "--append adds to them")
    for base in bases:
        ser, _comp = stored_codec(src, base)
        have_ser, _have_comp = stored_codec(dst, base)
        if have_ser is not None and ser is not None and have_ser != ser:
            raise Refused(f"{base!r} uses the {ser} serializer but the destination's "
                          f"{base!r} uses {have_ser}")


@click.command(short_help="Copy queues to another file or engine.")
@click.argument("src")
@click.argument("dst")
@queue_option(default=None)
@click.option("--append", is_flag=True,
              help="Add to destination queues that already hold items.")
@click.option("--chunk", type=click.IntRange(1, MAX_CHUNK), default=DEFAULT_CHUNK,
              show_default=True,
              help="Records read per engine call.")
@engine_option("--from-engine", dest="from_engine", help="Engine to open SRC with.")
@engine_option("--to-engine", dest="to_engine", help="Engine to create DST with.")
@schema_option("--from-schema", dest="from_schema", what="SRC")
@schema_option("--to-schema", dest="to_schema", what="DST")
@json_option()
def migrate(src: str, dst: str, queue: str | None, append: bool, chunk: int,
            from_engine: str | None, to_engine: str | None, from_schema: str | None,
            to_schema: str | None, as_json: bool) -> None:
    """Copy every named queue, dead letters included, from SRC to DST (of any engine).

    Records are copied as stored (no decoding, so any codec moves), in order,
    with their enqueue times; attempt counts start again at 0 and dead
    letters lose their reason. DST is created if missing; a destination
    queue that already holds items is refused unless --append. SRC is only
    read. Stop the programs using SRC first: leased items cannot be copied.
    """
    state = CliState()
    if (to_engine or engine_name_for(dst)) == "memory":
        raise click.UsageError("the memory engine keeps nothing once this command ends")
    if os.path.exists(dst) and os.path.exists(src) and os.path.samefile(src, dst):
        raise click.UsageError("SRC and DST are the same file")
    dst_options = engine_options(dst, to_engine, to_schema, option="--to-schema", what="DST")
    if to_engine is None:
        check_not_a_stray_empty_file(dst)
    if src == dst and from_schema == to_schema and "://" in src:
        raise click.UsageError("SRC and DST are the same queue store")
    source = open_existing(src, from_engine, read_only=True, schema=from_schema,
                           option="--from-schema", what="SRC")
    try:
        bases = base_queues(source, queue)
        names = [n for base in bases for n in (base, dead_queue_name(base))]
        if queue is not None:
            state.check_queue_name(source, *names)
        else:
            for odd in names_not_text(source):
                state.note(f"note: {not_text_note(source, odd)}; it is not copied")
        plan = _plan(source, names)
        # A new DST is made in a folder of its own next to it and moved into place once
        # whole: a part of a copy left as DST (by a SIGKILL) would be refused next time,
        # or doubled with --append.
        building = building_path(dst)
        written: dict[str, int] = {}
        try:
            target = _open_target(building or dst, dst, to_engine, dst_options)
            try:
                _check_destination(source, target, bases, names, append)
                copy_dictionaries(source, target, bases, names, chunk)
                copied = copy_queues(state, source, target, bases, plan, chunk, written)
            finally:
                target.close()
            if building:
                with sigint_deferred():
                    move_into_place(building, dst)
        except BaseException as exc:
            if building:
                remove_folder(os.path.dirname(building))
                name_dst(exc, building, dst)
            elif any(written.values()):
                kept = ", ".join(f"{n} of the {plan[q]} record(s) of {q!r}"
                                 for q, n in written.items() if n)
                state.note(f"{dst} keeps what was copied before the migrate stopped: {kept}")
            raise
    finally:
        source.close()
    if as_json:
        state.print_json({"src": src, "dst": dst, "queues": copied})
        return
    table = state.table("queue", "#copied", "#now in destination", title=f"{src} -> {dst}")
    for row in copied:
        state.add_row(table, row["name"], row["copied"], row["ready"])
    state.print_table(table)


def _open_target(path: str, dst: str, engine: str | None,
                 options: dict[str, Any] | None) -> Engine:
    """Open (or make) the destination ``dst`` of a migrate at ``path``."""
    with opening(dst):
        return open_engine(path, engine or engine_name_for(dst), options=options)


_SIDE_FILES = ("-wal", "-shm", "-journal", "-lock", ".lock")
"""What engines keep next to a queue file: SQLite's WAL, shared memory and journal, LMDB's
lock file, and the lock file of the dbm and pickle engines."""
