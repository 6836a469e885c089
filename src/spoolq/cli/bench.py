"""``spoolq bench``: put and get rates of a throwaway queue, here, with the settings asked for.

It never opens an existing queue: the queue lives in a new temporary folder
(removed afterwards), in memory, or under a fresh name on a server or database,
purged afterwards. The clock covers the calls only: items are made first, and
nothing is drawn on the terminal while it runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import click

from .. import __version__
from ..aio import Queue
from ..codec import COMPRESSORS, SERIALIZERS
from ..sync import SyncQueue
from ._options import json_option
from ._output import CliState, format_bytes

__all__ = ["MIN_ITEM_BYTES", "BenchResult", "bench", "make_items", "run_bench"]

_FILE_ENGINES = {"sqlite": "bench.sqlite", "lmdb": "bench.lmdb", "dbm": "bench.dbm",
                 "pickle": "bench.pickle"}
_URL_SCHEMES = ("spoolq://", "postgresql://", "postgres://")
_WORDS = ("order", "customer", "invoice", "shipment", "payment", "refund", "account", "email",
          "address", "city", "country", "status", "pending", "accepted", "retry", "timeout",
          "service", "request", "response", "token", "session", "user", "created", "updated",
          "priority", "batch", "worker", "queue", "task", "job", "result", "error", "amount",
          "currency", "price", "quantity", "product", "category", "discount")


def make_items(n: int, size: int, *, raw: bool = False, seed: int = 7) -> list[Any]:
    """``n`` JSON-like records (a few fields and a text of common words, so they compress as
    job arguments do) whose compact JSON takes ``size`` bytes (or the fields alone, when
    they take more); their JSON as bytes if ``raw``."""
    rng = random.Random(seed)
    items: list[Any] = []
    for i in range(n):
        record = {"id": i, "kind": rng.choice(_WORDS), "tenant": f"t{rng.randrange(100)}",
                  "text": ""}
        room = size - len(_json_bytes(record))
        text = ""
        while len(text) < room:
            text += rng.choice(_WORDS) + " "
        record["text"] = text[:max(room, 0)]  # ASCII: one byte a character
        items.append(_json_bytes(record) if raw else record)
    return items


def _json_bytes(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


MIN_ITEM_BYTES = len(_json_bytes({"id": 999, "kind": max(_WORDS, key=len), "tenant": "t99",
                                  "text": ""}))
"""The smallest ``size`` every benchmark item can have: the fields alone of the largest
(bench makes at most 1000 distinct items, ids 0 to 999)."""


@dataclass
class BenchResult:
    """What one ``spoolq bench`` run measured (the fields of its JSON output)."""

    target: str
    engine: str
    durability: str
    serializer: str
    compressor: str
    api: str
    items: int
    item_bytes: int
    batch: int
    producers: int
    put_seconds: float
    get_seconds: float
    put_per_second: float
    get_per_second: float
    ops_per_second: float
    raw_size_bytes: int
    compressed_size_bytes: int
    compression_ratio_pct: float | None
    spoolq: str
    python: str
    sqlite: str


@contextmanager
def _target(target: str | None, engine: str) -> Iterator[tuple[str, str | None, str]]:
    """Yield ``(path, queue name or None, engine name)`` of a throwaway queue; clean up."""
    if target == ":memory:":
        yield ":memory:", None, "memory"
        return
    if target is not None and target.startswith(_URL_SCHEMES):
        name = f"bench-{uuid.uuid4().hex[:12]}"
        if target.startswith("spoolq://"):
            yield f"{target.rstrip('/')}/{name}", None, "remote"
        else:
            yield target, name, "postgres"
        return
    folder = tempfile.mkdtemp(prefix="spoolq-bench-", dir=target)
    try:
        yield os.path.join(folder, _FILE_ENGINES[engine]), None, engine
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _chunks(items: Sequence[Any], batch: int) -> list[Sequence[Any]]:
    return [items[i:i + batch] for i in range(0, len(items), batch)]


def _put_all(q: SyncQueue[Any], items: Sequence[Any], batch: int) -> None:
    if batch == 1:
        for item in items:
            q.put(item)
    else:
        for chunk in _chunks(items, batch):
            q.put_many(chunk)


def _put_in_threads(q: SyncQueue[Any], items: Sequence[Any], batch: int,
                    producers: int) -> None:
    errors: list[BaseException] = []

    def produce(part: Sequence[Any]) -> None:
        try:
            _put_all(q, part, batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(items[i::producers],))
               for i in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _run_sync(q: SyncQueue[Any], items: Sequence[Any], batch: int,
              producers: int) -> tuple[float, float, dict[str, Any]]:
    n = len(items)
    start = time.perf_counter()
    if producers == 1:
        _put_all(q, items, batch)
    else:
        _put_in_threads(q, items, batch, producers)
    q.flush()
    put_seconds = time.perf_counter() - start
    stats = q.stats
    start = time.perf_counter()
    if batch == 1:
        for _ in range(n):
            q.get(timeout=60)
    else:
        got = 0
        while got < n:
            got += len(q.get_many(min(batch, n - got), timeout=60))
    return put_seconds, time.perf_counter() - start, stats


async def _put_all_async(q: Queue[Any], items: Sequence[Any], batch: int) -> None:
    if batch == 1:
        for item in items:
            await q.put(item)
    else:
        for chunk in _chunks(items, batch):
            await q.put_many(chunk)


async def _run_async(q: Queue[Any], items: Sequence[Any], batch: int,
                     producers: int) -> tuple[float, float, dict[str, Any]]:
    n = len(items)
    start = time.perf_counter()
    await asyncio.gather(*(_put_all_async(q, items[i::producers], batch)
                           for i in range(producers)))
    await q.flush()
    put_seconds = time.perf_counter() - start
    stats = q.stats
    start = time.perf_counter()
    if batch == 1:
        for _ in range(n):
            await q.get()
    else:
        got = 0
        while got < n:
            got += len(await q.get_many(min(batch, n - got), timeout=60))
    return put_seconds, time.perf_counter() - start, stats


def run_bench(target: str | None = None, *, engine: str = "sqlite", durability: str = "commit",
              items: int = 10_000, size: int = 100, batch: int = 1, serializer: str = "cbor",
              compressor: str = "zstd", use_async: bool = False, producers: int = 1,
              schema: str | None = None) -> BenchResult:
    """Put ``items`` items of ``size`` bytes as compact JSON (at least
    :data:`MIN_ITEM_BYTES`, else ValueError; ``batch`` at a time, shared among
    ``producers`` threads or tasks), then get them back, through a throwaway queue; return
    the rates. ``target`` is a folder for the queue's
    file (default: the system's temporary folder), ``":memory:"``, or a ``spoolq://`` or
    ``postgresql://`` URL, where a queue of a new name is used and purged afterwards
    (``schema`` names the PostgreSQL schema; default spoolq's own)."""
    if size < MIN_ITEM_BYTES:
        raise ValueError(f"size must be at least {MIN_ITEM_BYTES}: the fields of an item "
                         "alone take that many bytes")
    data = make_items(min(items, 1000), size, raw=serializer == "raw")
    work = [data[i % len(data)] for i in range(items)]
    settings: dict[str, Any] = {"durability": durability, "serializer": serializer,
                                "compressor": compressor}
    with _target(target, engine) as (path, name, engine_name):
        if schema is not None and engine_name == "postgres":
            settings["engine_options"] = {"schema": schema}
        if use_async:
            async def main() -> tuple[float, float, dict[str, Any]]:
                q = await Queue.create(path, name=name, **settings)
                try:
                    return await _run_async(q, work, batch, producers)
                finally:
                    if engine_name in ("remote", "postgres"):
                        await q.purge()
                    await q.aclose()

            put_s, get_s, stats = asyncio.run(main())
        else:
            with SyncQueue.create(path, name=name, **settings) as sq:
                try:
                    put_s, get_s, stats = _run_sync(sq, work, batch, producers)
                finally:
                    if engine_name in ("remote", "postgres"):
                        sq.purge()
    raw, stored = stats["raw_size_bytes"], stats["compressed_size_bytes"]
    return BenchResult(
        target=target or tempfile.gettempdir(), engine=engine_name, durability=durability,
        serializer=serializer, compressor=compressor,
        api="Queue (asyncio)" if use_async else "SyncQueue", items=items,
        item_bytes=size, batch=batch, producers=producers, put_seconds=round(put_s, 6),
        get_seconds=round(get_s, 6), put_per_second=round(items / put_s, 1),
        get_per_second=round(items / get_s, 1),
        ops_per_second=round(2 * items / (put_s + get_s), 1),
        raw_size_bytes=raw, compressed_size_bytes=stored,
        compression_ratio_pct=stats["compression_ratio_pct"], spoolq=__version__,
        python=platform.python_version(), sqlite=sqlite3.sqlite_version)


def _check_target(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None or value == ":memory:" or value.startswith(_URL_SCHEMES):
        return value
    if not os.path.isdir(value):
        what = "a file" if os.path.exists(value) else "missing"
        raise click.BadParameter(
            f"{value!r} is {what}: give a folder for the throwaway queue, ':memory:' or a "
            "spoolq:// or postgresql:// URL (bench never opens an existing queue)",
            ctx=ctx, param=param)
    return value


@click.command(short_help="Measure put and get rates on a throwaway queue.")
@click.argument("target", required=False, callback=_check_target)
@click.option("--engine", type=click.Choice(sorted(_FILE_ENGINES)), default=None,
              help="Engine of the throwaway file in a folder TARGET (default: sqlite).")
@click.option("--durability", type=click.Choice(["commit", "fsync", "buffer"]),
              default="commit", show_default=True)
@click.option("-n", "--items", type=click.IntRange(1, 10_000_000), default=10_000,
              show_default=True, help="Items to put and then get.")
@click.option("--size", type=click.IntRange(MIN_ITEM_BYTES, 1 << 24), default=100,
              show_default=True,
              help=f"Bytes of each item as compact JSON, at least {MIN_ITEM_BYTES} (the fields "
                   "alone; the serializer's size differs).")
@click.option("--batch", type=click.IntRange(1, 100_000), default=1, show_default=True,
              help="Items per put_many / get_many call (1: put and get one at a time).")
@click.option("--serializer", type=click.Choice(sorted(SERIALIZERS)), default="cbor",
              show_default=True)
@click.option("--compressor", type=click.Choice(sorted(COMPRESSORS)), default="zstd",
              show_default=True)
@click.option("--async", "use_async", is_flag=True,
              help="Use the asyncio Queue instead of SyncQueue.")
@click.option("--producers", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Threads (tasks with --async) sharing the puts; their puts are written "
                   "together (group commit).")
@click.option("--schema", default=None, metavar="NAME",
              help="PostgreSQL schema, for a postgresql:// TARGET (default: spoolq).")
@json_option()
def bench(target: str | None, engine: str | None, durability: str, items: int, size: int,
          batch: int, serializer: str, compressor: str, use_async: bool, producers: int,
          schema: str | None, as_json: bool) -> None:
    """Put N items into a throwaway queue and get them back; print the rates.

    TARGET is a folder to hold the queue's file (default: the system's
    temporary folder; the file is removed afterwards), :memory:, or a
    spoolq:// server or postgresql:// database URL, where a queue of a new
    name is used and purged afterwards. It never opens an existing queue.
    """
    if engine is not None and (target == ":memory:"
                               or (target or "").startswith(_URL_SCHEMES)):
        raise click.UsageError("--engine applies to a folder TARGET only: the memory engine "
                               "and URLs pick their own")
    if schema is not None and not (target or "").startswith(("postgresql://", "postgres://")):
        raise click.UsageError("--schema applies to a postgresql:// TARGET only")
    result = run_bench(target, engine=engine or "sqlite", durability=durability, items=items,
                       size=size, batch=batch, serializer=serializer, compressor=compressor,
                       use_async=use_async, producers=producers, schema=schema)
    state = CliState()
    if as_json:
        state.print_json(asdict(result))
        return
    how = "one at a time" if batch == 1 else f"in batches of {batch}"
    if producers > 1:
        how += f", {producers} {'tasks' if use_async else 'threads'} putting"
    state.line(f"spoolq bench: {result.api} on the {result.engine} engine, durability "
               f"{durability}, {items:,} items of {size:,} B as JSON, {how} "
               f"({serializer} + {compressor})")
    table = state.table("phase", "#items/s", "#µs per item", "#seconds")
    for phase, seconds, rate in (("put", result.put_seconds, result.put_per_second),
                                 ("get", result.get_seconds, result.get_per_second)):
        state.add_row(table, phase, f"{rate:,.0f}", f"{seconds / items * 1e6:,.1f}",
                      f"{seconds:.3f}")
    total = result.put_seconds + result.get_seconds
    state.add_row(table, "put+get", f"{result.ops_per_second:,.0f}",
                  f"{total / (2 * items) * 1e6:,.1f}", f"{total:.3f}")
    state.print_table(table)
    saved = result.compression_ratio_pct
    if saved is None:
        effect = ""
    elif saved >= 0:
        effect = f" ({saved:.1f}% saved)"
    else:  # small items: nothing to compress, and every record has a header
        effect = f" (headers add {-saved:.1f}%)"
    state.line(f"stored {format_bytes(result.compressed_size_bytes)} for "
               f"{format_bytes(result.raw_size_bytes)} serialized{effect}")
