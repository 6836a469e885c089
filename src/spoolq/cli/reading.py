"""Read-only commands: ``info``, ``peek`` (ready, dead or leased items) and ``verify``.

Each opens the file with ``read_only=True`` and leaves its bytes unchanged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import click
from rich.text import Text

from ..engines import Engine, LeasedRecord, StoredRecord, SupportsPeekLeased, dead_queue_name
from ..errors import CorruptError
from ..zdict import dictionary_damage
from . import _sqlite
from ._common import (
    DEFAULT_CHUNK,
    MAX_CHUNK,
    MAX_OFFSET,
    DamagedRecord,
    Refused,
    base_queues,
    disk_size,
    iter_leased_pages,
    iter_pages,
    iter_pages_following,
    names_not_text,
    not_text_note,
    now,
    one_line,
    open_existing,
    skipping_damaged,
    stored_codec,
)
from ._decoding import Decoded, Decoder, record_json, record_text
from ._options import engine_option, json_option, queue_option, schema_option
from ._output import CliState, format_age, format_bytes, owner_state, ratio_pct

__all__ = ["info", "peek", "verify"]

_MAX_PROBLEMS = 100


def _format_version(eng: Engine) -> str | None:
    raw = eng.get_meta("format_version")
    return None if raw is None else raw.decode("utf-8", "replace")


def _queue_info(eng: Engine, name: str, t: float) -> dict[str, Any]:
    counts = eng.counts(name)
    dq = dead_queue_name(name)
    dead = eng.counts(dq)
    head = eng.peek(name, 1)
    dead_head = eng.peek(dq, 1)
    ser, comp = stored_codec(eng, name)
    oldest = head[0].enqueued_at if head else None
    return {
        "name": name,
        "serializer": ser,
        "compressor": comp,
        "ready": counts.ready,
        "leased": counts.leased,
        "dead": dead.ready + dead.leased,
        "stored_bytes": counts.stored_bytes,
        "raw_bytes": counts.raw_bytes,
        "compression_ratio_pct": ratio_pct(counts.stored_bytes, counts.raw_bytes),
        "dead_stored_bytes": dead.stored_bytes,
        "oldest_enqueued_at": oldest,
        "oldest_age_seconds": None if oldest is None else round(t - oldest, 3),
        "oldest_dead_enqueued_at": dead_head[0].enqueued_at if dead_head else None,
        "lease_owners": [{"owner": owner, "leased": n, "process": owner_state(owner)}
                         for owner, n in sorted(eng.owners(name).items())],
    }


@click.command(short_help="Counts, sizes, ages, codecs and lease owners of each queue.")
@click.argument("path")
@queue_option(default=None)
@engine_option()
@schema_option()
@json_option()
def info(path: str, queue: str | None, engine: str | None, schema: str | None,
         as_json: bool) -> None:
    """Show the engine and format version, and for each named queue its ready, leased
    and dead counts, stored and raw sizes, compression, codec and the age of the item
    at the head.

    Leases are listed with their owner process: "gone" (its process has ended:
    `spoolq requeue --leased` releases them), "running", or "unknown" (another
    host; the lease comes back when its ttl runs out).
    """
    state = CliState()
    eng = open_existing(path, engine, read_only=True, schema=schema)
    try:
        t = now()
        report: dict[str, Any] = {
            "path": path,
            "engine": eng.name,
            "format_version": _format_version(eng),
            "file_bytes": disk_size(path, eng.name),
            "queues": [_queue_info(eng, name, t) for name in base_queues(eng, queue)],
        }
        odd = [] if queue is not None else names_not_text(eng)
        for name in odd:
            state.note(f"note: {not_text_note(eng, name)}; listed as {name!r}")
            report["queues"].append({
                **_queue_info(eng, name, t), "name": repr(name),
                "name_hex": name.hex() if isinstance(name, bytes) else None})
        if queue is not None:
            state.check_queue_name(eng, queue, dead_queue_name(queue))
    finally:
        eng.close()
    if as_json:
        state.print_json(report)
        return
    size = report["file_bytes"]
    state.line(f"{path}: {report['engine']} engine, format version "
               f"{report['format_version'] or '?'}, "
               + ("no file of its own" if size is None else f"{format_bytes(size)} on disk"))
    queues: list[dict[str, Any]] = report["queues"]
    if not queues:
        state.line("no queues hold records")
        return
    table = state.table("queue", "#ready", "#leased", "#dead", "#stored", "#raw", "#saved",
                        "#oldest", "codec")
    owners = state.table("queue", "lease owner", "#items", "process", title="leases")
    for q in queues:
        ratio = q["compression_ratio_pct"]
        state.add_row(table, q["name"], q["ready"], q["leased"], q["dead"],
                      format_bytes(q["stored_bytes"]), format_bytes(q["raw_bytes"]),
                      "-" if ratio is None else f"{ratio:.1f}%",
                      format_age(q["oldest_age_seconds"]),
                      f"{q['serializer'] or '?'}+{q['compressor'] or '?'}")
        for lease in q["lease_owners"]:
            state.add_row(owners, q["name"], lease["owner"], lease["leased"],
                          lease["process"])
    state.print_table(table)
    if owners.row_count:
        state.out.print()
        state.print_table(owners)


@click.command(short_help="Show items at the head of a queue, its dead letters or its leases.")
@click.argument("path")
@queue_option()
@click.option("-n", "count", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many items to show.")
@click.option("--offset", type=click.IntRange(0, MAX_OFFSET), default=0, show_default=True,
              help="Skip this many items from the head first.")
@click.option("--dead", is_flag=True, help="Show the queue's dead letters instead.")
@click.option("--leased", is_flag=True,
              help="Show the leased items (being worked on) instead, with their lease owner, "
                   "its process and the time left on the lease.")
@click.option("--allow-pickle", is_flag=True,
              help="Unpickle pickled items. Only for files you trust: unpickling can run code.")
@click.option("--full", is_flag=True, help="Show whole items in the table, over several lines.")
@engine_option()
@schema_option()
@json_option()
def peek(path: str, queue: str, count: int, offset: int, dead: bool, leased: bool,
         allow_pickle: bool, full: bool, engine: str | None, schema: str | None,
         as_json: bool) -> None:
    """Show items from the head of a queue without removing anything.

    Items that cannot be decoded here (pickled without --allow-pickle, a class
    this process cannot import, a custom codec, a damaged record) are shown
    as their raw bytes with a note; in --json they come as base64 "raw".

    --leased lists the items consumers hold, oldest first, with each lease's
    owner, whether its process is "running", "gone" (`spoolq requeue --leased`
    releases its items) or "unknown" (another host), and the time left before
    the lease runs out (negative once it has: a consumer polling the queue, or
    `spoolq requeue --leased`, puts the item back).
    """
    if dead and leased:
        raise click.UsageError("--dead and --leased cannot be used together")
    state = CliState()
    name = dead_queue_name(queue) if dead else queue
    eng = open_existing(path, engine, read_only=True, schema=schema)
    held: list[tuple[Decoded, LeasedRecord]] = []
    try:
        lister = _lister(eng, path) if leased else None
        decoder = Decoder(eng, allow_pickle=allow_pickle)
        if lister is not None:
            total = eng.counts(name).leased
            held = [(decoder.decode(lr.record), lr)
                    for page in iter_leased_pages(lister, name, offset=offset, limit=count,
                                                  expected=total - offset)
                    for lr in page]
            decoded = [d for d, _ in held]
        else:
            total = eng.counts(name).ready
            decoded = [decoder.decode(rec)
                       for page in iter_pages_following(eng, name, offset=offset,
                                                        limit=count, expected=total - offset)
                       for rec in page]
        if not decoded:
            state.check_queue_name(eng, name)
    finally:
        eng.close()
    if leased:
        _show_leased(state, name, offset, total, held, full=full, as_json=as_json)
        return
    if as_json:
        state.print_json({"queue": name, "ready": total, "offset": offset,
                          "records": [record_json(d) for d in decoded]})
        return
    if not decoded:
        state.line(f"{name}: no items at offset {offset} ({total} ready)")
        return
    title = f"{name}: items {offset + 1}-{offset + len(decoded)} of {total}"
    columns = ["#id", "#age", "#tries", "#size", "~item"] + (["reason"] if dead else [])
    table = state.table(*columns, title=title, fold=full, others_width=46 if dead else 30)
    t = now()
    for d in decoded:
        rec = d.record
        row: list[Any] = [str(rec.id), format_age(t - rec.enqueued_at), str(rec.attempts),
                          format_bytes(len(rec.data)), record_text(d, 0 if full else 1000)]
        if dead:
            row.append(rec.reason or "")
        state.add_row(table, *row)
    state.print_table(table, min_width=0)
    _raw_notes(state, decoded)


def _lister(eng: Engine, path: str) -> SupportsPeekLeased:
    if not isinstance(eng, SupportsPeekLeased):
        raise Refused(f"{path}: the {eng.name} engine cannot list leased items "
                      "(`spoolq info` counts them by owner)")
    return eng


def _show_leased(state: CliState, name: str, offset: int, total: int,
                 held: list[tuple[Decoded, LeasedRecord]], *, full: bool,
                 as_json: bool) -> None:
    t = now()
    processes = {owner: owner_state(owner) for owner in {lr.owner for _, lr in held}}
    if as_json:
        state.print_json({"queue": name, "leased": total, "offset": offset, "records": [
            {**record_json(d), "owner": lr.owner, "process": processes[lr.owner],
             "until": lr.until, "seconds_left": round(lr.until - t, 3)} for d, lr in held]})
        return
    if not held:
        state.line(f"{name}: no leased items at offset {offset} ({total} leased)")
        return
    title = f"{name}: leased items {offset + 1}-{offset + len(held)} of {total}"
    widest = max(len(lr.owner) for _, lr in held)
    table = state.table("#id", "#age", "#tries", "#size", "owner", "process", "#left",
                        "~item", title=title, fold=full, others_width=60 + widest)
    table.columns[4].min_width = widest  # an owner cut in two is hard to copy
    for d, lr in held:
        rec = d.record
        state.add_row(table, str(rec.id), format_age(t - rec.enqueued_at), str(rec.attempts),
                      format_bytes(len(rec.data)), lr.owner, processes[lr.owner],
                      _time_left(lr.until - t), record_text(d, 0 if full else 1000))
    # Wider than the terminal rather than without the columns after the owner.
    state.print_table(table, min_width=60 + widest + 20)
    _raw_notes(state, [d for d, _ in held])


def _time_left(seconds: float) -> Text:
    """``300`` → ``"5m 0s"``; a lease that ran out 12 s ago → ``"-12s"``, in red."""
    if seconds > 0:
        return Text(format_age(seconds))
    return Text(f"-{format_age(-seconds)}", style="red")


def _raw_notes(state: CliState, decoded: list[Decoded]) -> None:
    """Say why items were shown raw, each reason once (at most five)."""
    raw: dict[str, int] = {}
    for d in decoded:
        if not d.ok and d.note:
            raw[d.note] = raw.get(d.note, 0) + 1
    for note, n in list(raw.items())[:5]:
        state.line(f"{n} item(s) shown raw: {note}")
    if len(raw) > 5:
        state.line(f"… and {len(raw) - 5} more notes; --json shows each")


class _Verification:
    """The findings of ``verify``, gathered while it reads."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.problem_count = 0
        self.queues: list[dict[str, Any]] = []
        self.unread: set[str] = set()
        """Queues with records the engine could not read (see :func:`skipping_damaged`)."""

    def problem(self, message: str) -> None:
        self.problem_count += 1
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(message)

    def check_queue(self, eng: Engine, name: str, decoder: Decoder, chunk: int,
                    advance: Any) -> None:
        counts = eng.counts(name)
        row: dict[str, Any] = {"name": name, "ready": counts.ready, "leased": counts.leased,
                               "read": 0, "leased_read": None, "checked": 0,
                               "not_decodable_here": 0, "problems": 0}
        self.queues.append(row)
        before = self.problem_count
        pages = iter_pages(eng, name, chunk=chunk, read=skipping_damaged(eng, name),
                           expected=counts.ready)
        ready = self._check_records(name, "", pages, decoder, row, advance)
        row["read"] = ready[0]
        sizes = ready[1:]
        if ready[0] != counts.ready:
            self.problem(f"{name}: the stored count says {counts.ready} ready records, "
                         f"{ready[0]} were read")
        elif isinstance(eng, SupportsPeekLeased):
            holders: Counter[str] = Counter()

            def records(page: list[LeasedRecord]) -> list[StoredRecord]:
                holders.update(lr.owner for lr in page)
                return [lr.record for lr in page]

            # A file is verified while nothing uses it (the counts would not match what
            # is read otherwise): its pages are read where the ones before ended.
            pages = map(records, iter_leased_pages(eng, name, chunk=chunk,
                                                   expected=counts.leased, following=False))
            leased = self._check_records(name, "leased ", pages, decoder, row, advance)
            row["leased_read"] = leased[0]
            sizes = (sizes[0] + leased[1], sizes[1] + leased[2])
            if leased[0] != counts.leased:
                self.problem(f"{name}: the stored count says {counts.leased} leased records, "
                             f"{leased[0]} were read")
            elif (held := eng.owners(name)) != holders:
                self.problem(f"{name}: the stored lease owners say {_owners_text(held)}, the "
                             f"leased records were read as {_owners_text(holders)}")
        all_read = ready[0] == counts.ready and counts.leased in (0, row["leased_read"])
        # The sizes of records the engine could not read are not known.
        if all_read and name not in self.unread and sizes != (counts.stored_bytes,
                                                              counts.raw_bytes):
            self.problem(f"{name}: the stored sizes say {counts.stored_bytes} stored / "
                         f"{counts.raw_bytes} raw bytes, the records add up to "
                         f"{sizes[0]} / {sizes[1]}")
        row["problems"] = self.problem_count - before

    def _check_records(self, name: str, kind: str, pages: Iterator[list[StoredRecord]],
                       decoder: Decoder, row: dict[str, Any],
                       advance: Any) -> tuple[int, int, int]:
        """Check the records of ``pages`` (``kind`` names them in problems); return how
        many were read and their stored and raw bytes."""
        read = stored = raw = 0
        last_id: int | None = None
        for page in pages:
            for rec in page:
                if isinstance(rec, DamagedRecord):  # its id is not known
                    self.problem(f"{name}: {kind}{rec.reason}")
                    self.unread.add(name)
                    continue
                if last_id is not None and rec.id <= last_id:
                    self.problem(f"{name}: {kind}record {rec.id} follows {kind}record "
                                 f"{last_id}: ids must only grow")
                last_id = rec.id
                stored += len(rec.data)
                raw += rec.raw_size
                d = decoder.decode(rec)
                if d.status in ("damaged", "invalid"):
                    self.problem(f"{name}: {kind}{d.note}")
                elif d.ok:
                    row["checked"] += 1
                else:
                    row["not_decodable_here"] += 1
            read += len(page)
            advance(len(page))
        return read, stored, raw


def _owners_text(held: Mapping[str, int]) -> str:
    return ", ".join(f"{n} held by {owner!r}" for owner, n in sorted(held.items())) or "none"


@click.command(short_help="Read and check every record; exit 1 when damaged.")
@click.argument("path")
@queue_option(default=None)
@click.option("--allow-pickle", is_flag=True,
              help="Also unpickle pickled items (their checksums are checked either way).")
@click.option("--chunk", type=click.IntRange(1, MAX_CHUNK), default=DEFAULT_CHUNK,
              show_default=True,
              help="Records read per engine call.")
@engine_option()
@schema_option()
@json_option()
def verify(path: str, queue: str | None, allow_pickle: bool, chunk: int, engine: str | None,
           schema: str | None, as_json: bool) -> None:
    """Read every record and check it: header, checksum, decompression and decoding,
    ids that only grow, and the stored counts and sizes against what was read.

    Exits 0 when the file is sound and 1 with a report when it is not (3 when
    it cannot even be opened as a queue file). Leased records are checked the
    same way. Run it on a file no program is writing: a live writer makes the
    counts move while they are compared.
    """
    state = CliState()
    found = _Verification()
    eng = open_existing(path, engine, read_only=True, schema=schema)
    decoder = Decoder(eng, allow_pickle=allow_pickle)
    try:
        engine_name = eng.name
        if engine_name == "sqlite":
            for line in _sqlite.quick_check(path):
                found.problem(line)
        for number, why in dictionary_damage(eng):
            found.problem(_dictionary_problem(number, why))
        names = [n for base in base_queues(eng, queue) for n in (base, dead_queue_name(base))]
        if queue is not None:
            state.check_queue_name(eng, *names)
        else:
            for odd in names_not_text(eng):
                found.problem(not_text_note(eng, odd))
        total = sum(c.ready + c.leased for c in map(eng.counts, names))
        with state.progress("verifying", total) as advance:
            for name in names:
                try:
                    found.check_queue(eng, name, decoder, chunk, advance)
                except CorruptError as exc:
                    found.problem(f"{name}: reading stopped: {one_line(exc)}")
    finally:
        eng.close()
    records = sum(q["read"] + (q["leased_read"] or 0) for q in found.queues)
    report = {"path": path, "engine": engine_name, "ok": found.problem_count == 0,
              "records": records, "problem_count": found.problem_count,
              "problems": found.problems, "queues": found.queues}
    if as_json:
        state.print_json(report)
    else:
        _print_verification(state, path, engine_name, report)
    if found.problem_count:
        raise Refused(f"{path}: {found.problem_count} problem(s) found")


def _dictionary_problem(number: int, why: str) -> str:
    """``zstd dictionary 2 fails its checksum; ...`` from :func:`dictionary_damage`'s
    ``why`` (``"it fails its checksum"``, ``"zstd cannot load it (...)"``, ...)."""
    what = why[3:] if why.startswith("it ") else f"is damaged: {why}"
    return (f"zstd dictionary {number} {what}; the records compressed with it cannot be "
            "decoded")


def _print_verification(state: CliState, path: str, engine_name: str,
                        report: dict[str, Any]) -> None:
    table = state.table("queue", "#ready", "#leased", "#read", "#checked",
                        "#not decodable here", "#problems", title=f"{path} ({engine_name})")
    for q in report["queues"]:
        if q["ready"] or q["leased"] or q["read"] or q["problems"]:
            state.add_row(table, q["name"], q["ready"], q["leased"], q["read"], q["checked"],
                          q["not_decodable_here"], q["problems"])
    state.print_table(table)
    for line in report["problems"]:
        state.line(f"  problem: {line}")
    hidden = report["problem_count"] - len(report["problems"])
    if hidden > 0:
        state.line(f"  … and {hidden} more")
    if report["ok"]:
        state.line(f"sound: {report['records']} records read")
