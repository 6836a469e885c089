"""What is measured: durability classes, workloads and the list of contestants.

This module imports nothing but the standard library, so the command-line
runner can plan a run without importing any peer library.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

DurabilityClass = Literal["fsync per op", "write per op", "batch", "memory", "on-close"]
Accepts = Literal["bytes", "str", "object"]
Kind = Literal["sync", "async"]

FSYNC: Final = "fsync per op"
WRITE: Final = "write per op"
BATCH: Final = "batch"
MEMORY: Final = "memory"
#: In-memory queues finish a workload's N in tens of milliseconds, too short to time on a
#: shared machine: they run this many times more items.
MEMORY_N_FACTOR: Final = 10
ON_CLOSE: Final = "on-close"

#: Durability classes in the order the report lists them, with their meaning.
DURABILITY_CLASSES: Final[dict[str, str]] = {
    FSYNC: "a returned put/get has been fsynced: it survives power loss",
    WRITE: (
        "a returned put/get has been written to the OS (no fsync): it survives a "
        "killed process, a power cut may lose the last moments"
    ),
    BATCH: (
        "durable only at the end of a batch (one transaction or pipeline for many "
        "operations); a crash loses the open batch"
    ),
    MEMORY: "nothing reaches the disk; a killed process loses everything",
    ON_CLOSE: (
        "held in memory and written when the queue is closed (or when a buffer "
        "fills); a killed process loses the unwritten part"
    ),
}


@dataclass(frozen=True)
class Workload:
    """One measured scenario."""

    name: str
    description: str
    item_size: int
    n_full: int
    n_quick: int
    #: Only for contestants with an async interface (native or adapted).
    async_only: bool = False
    #: Needs a contestant that tolerates a producer and a consumer at once.
    concurrent: bool = False
    #: Reopen of a filled queue instead of a throughput run.
    reopen: bool = False
    #: Child time limit multiplier (the reopen workload also fills the queue).
    timeout_factor: float = 1.0


WORKLOADS: Final[tuple[Workload, ...]] = (
    Workload(
        "burst-100B",
        "put N items one by one, then get N one by one (100-byte items)",
        100,
        5_000,
        100,
    ),
    Workload(
        "burst-4KB",
        "put N items one by one, then get N one by one (4 KB items)",
        4096,
        2_000,
        50,
    ),
    Workload(
        "batch-100",
        "put_many of 100 items until N, then get_many(100) until N (100-byte items)",
        100,
        20_000,
        300,
    ),
    Workload(
        "1p1c",
        "one producer and one consumer at once (threads, or tasks for async queues)",
        100,
        5_000,
        100,
        concurrent=True,
    ),
    Workload(
        "5p1c-async",
        "five producer tasks and one consumer task on one event loop",
        100,
        5_000,
        100,
        async_only=True,
        concurrent=True,
    ),
    Workload(
        "64p-async",
        "64 producer tasks put at once, then the queue is drained with get_many(100)",
        100,
        6_400,
        320,
        async_only=True,
        concurrent=True,
    ),
    Workload(
        "reopen",
        "a queue filled with N items by another process is opened; open time, "
        "first get time and RSS growth",
        100,
        200_000,
        200,
        reopen=True,
        timeout_factor=3.0,
    ),
)

WORKLOADS_BY_NAME: Final[dict[str, Workload]] = {w.name: w for w in WORKLOADS}


@dataclass(frozen=True)
class ContestantSpec:
    """A contestant: an adapter class plus the facts the planner needs."""

    name: str
    durability: DurabilityClass
    #: ``"module:Class"`` under ``measurements.contestants``.
    target: str
    kind: Kind = "sync"
    options: Mapping[str, Any] = field(default_factory=dict)
    #: Top-level modules that must be importable (checked without importing).
    requires: tuple[str, ...] = ()
    #: Distribution names reported with their versions.
    distributions: tuple[str, ...] = ()
    accepts: Accepts = "bytes"
    persistent: bool = True
    concurrent: bool = True
    #: A sync contestant that may also run the async workloads through an
    #: adapter that calls it directly on the event loop.
    async_adapter: bool = False
    #: Largest N per workload name (``"*"`` for every workload, ``"quick"`` for
    #: every workload in ``--quick`` mode).
    caps: Mapping[str, int] = field(default_factory=dict)
    #: The reference row of its durability class.
    reference: bool = False
    #: ``"everysec"`` or ``"always"``: needs a redis-server of that policy.
    redis: str | None = None
    #: A spoolq contestant, probed in a child before it is scheduled.
    spoolq: bool = False
    #: Also run in ``--quick`` mode.
    quick: bool = True
    note: str = ""

    def n_for(self, workload: Workload, n: int, quick: bool = False) -> int:
        """The N this contestant runs ``workload`` with: memory-class contestants take
        ``MEMORY_N_FACTOR`` times more items (outside ``--quick``), then the caps apply."""
        if self.durability == MEMORY and not quick and not workload.reopen:
            n *= MEMORY_N_FACTOR
        return self.cap(workload.name, n, quick)

    def cap(self, workload: str, n: int, quick: bool = False) -> int:
        limits = [self.caps.get(workload, self.caps.get("*"))]
        if quick:
            limits.append(self.caps.get("quick"))
        return min([n, *(limit for limit in limits if limit is not None)])

    def runs(self, workload: Workload) -> bool:
        """Whether this contestant takes part in ``workload``."""
        if workload.reopen:
            return self.persistent
        if workload.concurrent and not self.concurrent:
            return False
        if workload.async_only:
            return self.kind == "async" or self.async_adapter
        return True


def _sqlite(sync: str, per_op: bool, reference: bool) -> ContestantSpec:
    label = "txn per op" if per_op else "one txn"
    if per_op:
        durability: DurabilityClass = FSYNC if sync == "FULL" else WRITE
    else:
        durability = BATCH
    return ContestantSpec(
        name=f"sqlite3 WAL {sync}, {label}",
        durability=durability,
        target="raw:RawSqlite",
        options={"synchronous": sync, "per_op": per_op},
        requires=("sqlite3",),
        concurrent=per_op,
        async_adapter=per_op,
        reference=reference,
        note="raw sqlite3, one table, DELETE ... RETURNING",
    )


def _lmdb(sync: bool, per_op: bool, metasync: bool | None = None) -> ContestantSpec:
    """Raw py-lmdb; ``metasync`` defaults to ``sync`` (False: one flush per commit, the
    setting spoolq's "commit" durability uses on LMDB)."""
    label = "txn per op" if per_op else "one txn"
    metasync = sync if metasync is None else metasync
    if not per_op:
        durability: DurabilityClass = BATCH
    elif sync and metasync:
        durability = FSYNC
    else:
        durability = WRITE
    flush = "" if metasync == sync else f" metasync={metasync}"
    return ContestantSpec(
        name=f"lmdb sync={sync}{flush}, {label}",
        durability=durability,
        target="raw:RawLmdb",
        options={"sync": sync, "metasync": metasync, "per_op": per_op},
        requires=("lmdb",),
        distributions=("lmdb",),
        concurrent=per_op,
        async_adapter=per_op,
        note="raw py-lmdb, big-endian counter keys",
    )


def _aiodiskqueue(
    engine: str, durability: DurabilityClass, caps: Mapping[str, int]
) -> ContestantSpec:
    extra = {"SqliteEngine": ("aiosqlite",), "DbmEngine": ()}.get(engine, ("aiofiles",))
    return ContestantSpec(
        name=f"aiodiskqueue {engine}",
        durability=durability,
        target="peers_async:AioDiskQueue",
        kind="async",
        options={"engine": engine},
        requires=("aiodiskqueue", *extra),
        distributions=("aiodiskqueue",),
        accepts="object",
        caps=caps,
    )


def _redis(policy: str, pipelined: bool) -> ContestantSpec:
    if pipelined:
        durability: DurabilityClass = BATCH
    else:
        durability = FSYNC if policy == "always" else WRITE
    label = "pipeline x100" if pipelined else "single"
    return ContestantSpec(
        name=f"redis appendfsync {policy}, {label}",
        durability=durability,
        target="peer_redis:RedisList",
        options={"pipelined": pipelined},
        requires=("redis",),
        distributions=("redis",),
        persistent=False,
        redis=policy,
        note="LPUSH/RPOP through redis-py to a redis-server started for the run",
    )


_SPOOLQ_SUFFIX: Final[dict[str, str]] = {
    "sqlite": "sqlite",
    "lmdb": "lmdb",
    "dbm": "dbm",
    "pickle": "pickle",
}
_SPOOLQ_CLASS: Final[dict[str, DurabilityClass]] = {
    "fsync": FSYNC,
    "commit": WRITE,
    "buffer": ON_CLOSE,
}
#: Engines whose cost per operation may grow with the queue length.
_SPOOLQ_CAPS: Final[dict[str, dict[str, int]]] = {
    "dbm": {"*": 2_000, "reopen": 20_000, "quick": 100},
    "pickle": {"*": 1_000, "reopen": 20_000, "quick": 100},
}


def _spoolq_specs() -> list[ContestantSpec]:
    specs: list[ContestantSpec] = []
    for kind in ("sync", "async"):
        facade = "SyncQueue" if kind == "sync" else "Queue"
        target = "spoolq_queues:SpoolqSync" if kind == "sync" else "spoolq_queues:SpoolqAsync"
        specs.append(
            ContestantSpec(
                name=f"spoolq {facade} memory",
                durability=MEMORY,
                target=target,
                kind=kind,
                options={"engine": "memory", "durability": None},
                requires=("spoolq",),
                distributions=("spoolq",),
                accepts="object",
                persistent=False,
                spoolq=True,
            )
        )
        for engine in _SPOOLQ_SUFFIX:
            for durability, klass in _SPOOLQ_CLASS.items():
                specs.append(
                    ContestantSpec(
                        name=f"spoolq {facade} {engine} {durability}",
                        durability=klass,
                        target=target,
                        kind=kind,
                        options={"engine": engine, "durability": durability},
                        requires=("spoolq",),
                        distributions=("spoolq",),
                        accepts="object",
                        caps=_SPOOLQ_CAPS.get(engine, {}),
                        spoolq=True,
                        quick=engine == "sqlite" or durability == "commit",
                    )
                )
    # Like-for-like with the raw ceilings: the same pre-encoded bytes, no serializer.
    for engine, durability in (("sqlite", "commit"), ("sqlite", "fsync"), ("lmdb", "commit")):
        specs.append(
            ContestantSpec(
                name=f"spoolq SyncQueue {engine} {durability}, bytes",
                durability=_SPOOLQ_CLASS[durability],
                target="spoolq_queues:SpoolqSync",
                options={"engine": engine, "durability": durability, "serializer": "raw"},
                requires=("spoolq",),
                distributions=("spoolq",),
                spoolq=True,
                quick=False,
                note="serializer='raw', given the raw rows' bytes: no serialization timed",
            )
        )
    specs.append(
        ContestantSpec(
            name="spoolq Queue sqlite commit, calls on loop",
            durability=WRITE,
            target="spoolq_queues:SpoolqAsync",
            kind="async",
            options={"engine": "sqlite", "durability": "commit", "calls_on_loop": True},
            requires=("spoolq",),
            distributions=("spoolq",),
            accepts="object",
            spoolq=True,
            note="calls_on_loop=True: puts and gets made on the event loop when nothing "
                 "else of the queue is under way",
        )
    )
    specs.append(
        ContestantSpec(
            name="spoolq Batcher sqlite",
            durability=WRITE,
            target="spoolq_queues:SpoolqBatcher",
            kind="async",
            requires=("spoolq",),
            distributions=("spoolq",),
            accepts="object",
            persistent=False,
            spoolq=True,
            note="items persisted on add, delivered to on_flush in batches of 100",
        )
    )
    return specs


CONTESTANTS: Final[tuple[ContestantSpec, ...]] = (
    # Baselines written by hand.
    ContestantSpec(
        name="disk write+fsync",
        durability=FSYNC,
        target="raw:FsyncProbe",
        persistent=False,
        async_adapter=True,
        note="the disk's ceiling: pwrite+fsync of a small file per put and per get",
    ),
    _sqlite("FULL", per_op=True, reference=True),
    _sqlite("NORMAL", per_op=True, reference=True),
    _sqlite("FULL", per_op=False, reference=True),
    _sqlite("NORMAL", per_op=False, reference=False),
    _lmdb(True, per_op=True),
    _lmdb(True, per_op=True, metasync=False),
    _lmdb(False, per_op=True),
    _lmdb(True, per_op=False),
    ContestantSpec(
        name="collections.deque",
        durability=MEMORY,
        target="raw:DequeQueue",
        accepts="object",
        persistent=False,
        async_adapter=True,
        reference=True,
    ),
    ContestantSpec(
        name="deque + pickle on close",
        durability=ON_CLOSE,
        target="raw:PickleOnClose",
        accepts="object",
        async_adapter=True,
        reference=True,
        note="a deque pickled to a file by close() and loaded by open",
    ),
    # persist-queue
    ContestantSpec(
        name="persist-queue SQLiteQueue",
        durability=FSYNC,
        target="peers_sync:PersistSqliteQueue",
        options={"ack": False},
        requires=("persistqueue",),
        distributions=("persist-queue",),
        accepts="object",
        note="auto_commit=True, WAL, sqlite's default synchronous=FULL",
    ),
    ContestantSpec(
        name="persist-queue SQLiteAckQueue",
        durability=FSYNC,
        target="peers_sync:PersistSqliteQueue",
        options={"ack": True},
        requires=("persistqueue",),
        distributions=("persist-queue",),
        accepts="object",
        note="auto_commit=True; every get is followed by ack",
    ),
    ContestantSpec(
        name="persist-queue Queue (files)",
        durability=WRITE,
        target="peers_sync:PersistFileQueue",
        requires=("persistqueue",),
        distributions=("persist-queue",),
        accepts="object",
        note="autosave=True: the index file is rewritten on every put and get",
    ),
    # litequeue
    ContestantSpec(
        name="litequeue",
        durability=WRITE,
        target="peers_sync:LiteQueueContestant",
        requires=("litequeue",),
        distributions=("litequeue",),
        accepts="str",
        note="WAL, synchronous=NORMAL; every pop is followed by done()",
    ),
    # queuelib
    ContestantSpec(
        name="queuelib FifoDiskQueue",
        durability=ON_CLOSE,
        target="peers_sync:QueuelibQueue",
        options={"variant": "disk"},
        requires=("queuelib",),
        distributions=("queuelib",),
        note="items are written per op but the index only on close()",
    ),
    ContestantSpec(
        name="queuelib FifoSQLiteQueue",
        durability=FSYNC,
        target="peers_sync:QueuelibQueue",
        options={"variant": "sqlite"},
        requires=("queuelib",),
        distributions=("queuelib",),
        concurrent=False,
        caps={"*": 2_000, "reopen": 10_000, "quick": 50},
        note="rollback journal, synchronous=FULL; one connection per thread only",
    ),
    # diskcache
    ContestantSpec(
        name="diskcache Deque",
        durability=WRITE,
        target="peers_sync:DiskcacheDeque",
        requires=("diskcache",),
        distributions=("diskcache",),
        accepts="object",
        note="WAL, synchronous=NORMAL; batches use Deque.transact()",
    ),
    # quez
    ContestantSpec(
        name="quez CompressedQueue",
        durability=MEMORY,
        target="peers_sync:QuezQueue",
        requires=("quez",),
        distributions=("quez",),
        accepts="object",
        persistent=False,
        note="defaults: pickle + zlib",
    ),
    ContestantSpec(
        name="quez AsyncCompressedQueue",
        durability=MEMORY,
        target="peers_async:QuezAsyncQueue",
        kind="async",
        requires=("quez",),
        distributions=("quez",),
        accepts="object",
        persistent=False,
        caps={"*": 10_000},  # a thread-pool hop per item: about 7,000 items/s
        note="defaults: pickle + zlib, compression in the default executor",
    ),
    # beque
    ContestantSpec(
        name="beque",
        durability=MEMORY,
        target="peers_async:BequeBatcher",
        kind="async",
        requires=("beque",),
        distributions=("beque",),
        accepts="object",
        persistent=False,
        note="in-memory batcher; get takes items handed to on_flush",
    ),
    # aiodiskqueue: each engine of its own.
    _aiodiskqueue("DbmEngine", WRITE, {"*": 200, "reopen": 1_000, "quick": 30}),
    _aiodiskqueue("SqliteEngine", FSYNC, {"*": 2_000, "reopen": 5_000, "quick": 30}),
    _aiodiskqueue("PickledList", WRITE, {"*": 500, "reopen": 2_000, "quick": 50}),
    _aiodiskqueue("PickleSequence", WRITE, {"*": 1_000, "reopen": 5_000, "quick": 50}),
    # Redis
    _redis("everysec", pipelined=False),
    _redis("everysec", pipelined=True),
    _redis("always", pipelined=False),
    _redis("always", pipelined=True),
    *_spoolq_specs(),
)

CONTESTANTS_BY_NAME: Final[dict[str, ContestantSpec]] = {c.name: c for c in CONTESTANTS}


def reference_for(durability: str) -> ContestantSpec | None:
    """The reference contestant of a durability class."""
    for spec in CONTESTANTS:
        if spec.reference and spec.durability == durability:
            return spec
    return None


def select(patterns: list[str] | None) -> list[ContestantSpec]:
    """Contestants whose name matches one of the shell-style patterns (all if none).

    A pattern without wildcards matches as a case-insensitive substring.
    """
    if not patterns:
        return list(CONTESTANTS)
    chosen: list[ContestantSpec] = []
    for spec in CONTESTANTS:
        name = spec.name.lower()
        for pattern in patterns:
            p = pattern.lower()
            hit = fnmatch.fnmatchcase(name, p) if any(ch in p for ch in "*?[") else p in name
            if hit:
                chosen.append(spec)
                break
    return chosen
