"""How the server runs wire requests against its engine, in order.

An engine whose calls may block (a file, a lock another process holds) is
called on one thread, never on the server's event loop
(:class:`EngineThread`). Every request becomes a job on that thread; jobs
that arrive while the thread is busy are run together when it is free, and a
run of consecutive appends to the same queue becomes one engine transaction
(group commit). Results go back to the loop in one ``call_soon_threadsafe``
per batch, with the names of the queues that may have gained ready records,
so long-polling requests can be woken.

An engine that declares ``inline = True`` (its calls never block: the memory
engine) is called on the loop itself (:class:`InlineRunner`): handing each
call to a thread and back would cost more than the call.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from ._givebacks import GiveBacks
from ._replysize import (
    REPLY_OVERHEAD,
    fitting,
    fitting_leased,
    gather,
    reply_size,
    snapshot,
)
from .engines import Engine, Lease, StoredRecord, SupportsPeekLeased
from .errors import ClosedError, ConfigurationError, EngineError
from .protocol import (
    decode_records,
    encode_leased,
    encode_records,
    encode_reply,
)

__all__ = ["EngineThread", "InlineRunner", "Outcome", "Runner", "make_runner"]

log = logging.getLogger("spoolq")

Outcome = Callable[[Any, "BaseException | None"], None]
"""Called on the event loop with ``(result, None)`` or ``(None, error)``."""

_Job = tuple[str, dict[str, Any], Outcome]
_T = TypeVar("_T")


def _take(engine: Engine, a: dict[str, Any], backs: GiveBacks) -> tuple[list[Any], set[str]]:
    lease = None if a["lease"] is None else Lease(a["lease"][0], float(a["lease"][1]))
    limit = a.get("limit")
    taken: list[StoredRecord] = []

    def fetch(k: int, _: int) -> list[StoredRecord]:
        got = engine.take(a["queue"], k, a["now"], lease)
        taken.extend(got)
        backs.taken(a["queue"], got)
        return got

    try:
        recs = gather(engine, a["queue"], a["n"], limit, fetch)
    except Exception:
        # A later chunk failed: the take answers with the error, so the records of the
        # chunks before it go back, as if it had taken nothing.
        backs.give_back(engine, a["queue"], taken, lease)
        raise
    if limit is not None and recs and reply_size(recs) > limit:
        # Keep the reply within what the client accepts; give the rest straight back.
        try:
            keep = fitting(recs, limit, a["queue"], a.get("limit_one"))
        except ConfigurationError:
            backs.give_back(engine, a["queue"], recs, lease)
            raise
        # The records kept are taken: they are sent even if the rest cannot go back now.
        backs.give_back(engine, a["queue"], recs[keep:], lease)
        recs = recs[:keep]
    return encode_records(recs), set()


def _give_back_op(engine: Engine, a: dict[str, Any],
                  backs: GiveBacks) -> tuple[int, set[str]]:
    """The records of a take whose reply could not be sent go back (``a``: the take's
    queue, its wire-shaped records and lease); how many went back now (0: kept for a
    later try)."""
    recs = decode_records(a["records"])
    lease = None if a["lease"] is None else Lease(a["lease"][0], float(a["lease"][1]))
    if backs.give_back(engine, a["queue"], recs, lease):
        return len(recs), {a["queue"]}
    return 0, set()


def _purge(engine: Engine, a: dict[str, Any], backs: GiveBacks) -> tuple[int, set[str]]:
    """A purge deletes the records waiting to go back to its queue too (see
    :mod:`spoolq._givebacks`)."""
    backs.before_purge(engine, a["queue"])
    purged = engine.purge(a["queue"])
    backs.purged(a["queue"])
    return purged, set()


def _peek(engine: Engine, a: dict[str, Any]) -> list[Any]:
    limit = a.get("limit")
    recs = snapshot(engine, a["queue"], a["n"], limit,
                    lambda k: engine.peek(a["queue"], k, a["offset"]))
    if limit is not None and recs and reply_size(recs) > limit:
        recs = recs[:fitting(recs, limit, a["queue"], a.get("limit_one"))]
    return encode_records(recs)


def _peek_leased(engine: Engine, a: dict[str, Any]) -> list[Any]:
    if not isinstance(engine, SupportsPeekLeased):
        raise EngineError(f"the {engine.name} engine cannot list leased records")
    recs = engine.peek_leased(a["queue"], a["n"], a["offset"])
    limit = a.get("limit")
    if limit is not None and recs:
        recs = recs[:fitting_leased(recs, limit, a["queue"], a.get("limit_one"))]
    return encode_leased(recs)


def _bounded(op: str, result: _T, bound: int, a: dict[str, Any]) -> _T:
    """``result``, unless its reply (at most ``bound`` bytes) is larger than the client's
    ``limit``: then a ConfigurationError. These ops change nothing, so refusing to send
    their result loses nothing."""
    limit = a.get("limit")
    if limit is not None and bound > limit:
        size = len(encode_reply(1, result))
        if size > limit:
            raise ConfigurationError(
                f"the reply to {op} takes {size:,} bytes, more than this connection accepts "
                f"({limit:,}): open the queue with a larger engine_options={{'max_reply': "
                "...}} to receive it")
    return result


def _queues(engine: Engine, a: dict[str, Any]) -> list[str]:
    names = engine.queues()
    return _bounded("queues", names, REPLY_OVERHEAD + sum(4 * len(n) + 9 for n in names), a)


def _owners(engine: Engine, a: dict[str, Any]) -> dict[str, int]:
    held = engine.owners(a["queue"])
    return _bounded("owners", held,
                    REPLY_OVERHEAD + sum(4 * len(o) + 18 for o in held), a)


def _get_meta(engine: Engine, a: dict[str, Any]) -> bytes | None:
    value = engine.get_meta(a["key"])
    return value if value is None else _bounded("get_meta", value,
                                                REPLY_OVERHEAD + len(value), a)


def _restore(engine: Engine, a: dict[str, Any]) -> tuple[None, set[str]]:
    engine.restore(a["queue"], decode_records(a["records"]))
    return None, {a["queue"]}


def _set_meta(engine: Engine, a: dict[str, Any]) -> tuple[None, set[str]]:
    engine.set_meta(a["key"], a["value"])
    return None, set()


def _wakes(queue_name: str, result: Any) -> set[str]:
    return {queue_name} if result else set()


_OPS: dict[str, Callable[[Engine, dict[str, Any]], tuple[Any, set[str]]]] = {
    "restore": _restore,
    "ack": lambda e, a: (e.ack(a["queue"], [tuple(d) for d in a["deliveries"]], a["owner"]),
                         set()),
    "release": lambda e, a: (r := e.release(
        a["queue"], [tuple(d) for d in a["deliveries"]], a["owner"],
        not_before=a["not_before"], max_attempts=a["max_attempts"],
        count_attempt=a["count_attempt"], reason=a["reason"]), _wakes(a["queue"], r)),
    "expire": lambda e, a: (r := e.expire(a["queue"], a["now"], owners=a["owners"],
                                          max_attempts=a["max_attempts"]),
                            _wakes(a["queue"], r)),
    "peek": lambda e, a: (_peek(e, a), set()),
    "peek_leased": lambda e, a: (_peek_leased(e, a), set()),
    "counts": lambda e, a: (list(e.counts(a["queue"])), set()),
    "owners": lambda e, a: (_owners(e, a), set()),
    "move": lambda e, a: (r := e.move(a["src"], a["dst"], a["ids"]), _wakes(a["dst"], r)),
    "queues": lambda e, a: (_queues(e, a), set()),
    "get_meta": lambda e, a: (_get_meta(e, a), set()),
    "set_meta": _set_meta,
}
# Ops that give records back, or settle those waiting to, through the runner's GiveBacks.
_GIVING: dict[str, Callable[[Engine, dict[str, Any], GiveBacks], tuple[Any, set[str]]]] = {
    "take": _take,
    "give_back": _give_back_op,
    "purge": _purge,
}
OPS = frozenset(_OPS) | frozenset(_GIVING) | {"append"}
"""The ops the engine thread runs (the others are answered by the server itself); besides
the wire's, ``give_back`` undoes a take whose reply could not be sent."""


def _run_op(engine: Engine, op: str, args: dict[str, Any],
            backs: GiveBacks) -> tuple[Any, set[str]]:
    """Run one request: its wire-shaped result and the queues it may have woken."""
    if op == "append":
        ids = engine.append(args["queue"], args["records"], args["sizes"], args["now"])
        return ids, ({args["queue"]} if ids else set())
    giving = _GIVING.get(op)
    if giving is not None:
        return giving(engine, args, backs)
    return _OPS[op](engine, args)


class Runner(Protocol):
    """What the server needs of the thing that runs its engine calls."""

    engine: Engine
    transactions: int

    def submit(self, op: str, args: dict[str, Any], outcome: Outcome) -> None: ...

    def run(self, op: str, args: dict[str, Any]) -> asyncio.Future[Any]: ...

    def stop(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...


def make_runner(engine: Engine, loop: asyncio.AbstractEventLoop,
                on_ready: Callable[[set[str]], None]) -> Runner:
    """An :class:`InlineRunner` for an engine that never blocks, else an :class:`EngineThread`."""
    if getattr(engine, "inline", False):
        return InlineRunner(engine, loop, on_ready)
    return EngineThread(engine, loop, on_ready)


class InlineRunner:
    """Runs requests against a non-blocking engine directly, on the event loop.

    It has the interface of :class:`EngineThread`; :meth:`call` also gives a
    result straight back, which spares the server a callback per request.
    """

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop,
                 on_ready: Callable[[set[str]], None]) -> None:
        self.engine = engine
        self._loop = loop
        self._on_ready = on_ready
        self.transactions = 0
        self._closed = False
        self.give_backs = GiveBacks()

    def call(self, op: str, args: dict[str, Any]) -> Any:
        """Run ``op`` now and return its wire-shaped result (or raise)."""
        if self._closed:
            raise ClosedError("the server's engine is closed")
        wakes = self.give_backs.retry(self.engine)
        try:
            result, woken = _run_op(self.engine, op, args, self.give_backs)
            wakes |= woken
            self.transactions += 1
        finally:
            if wakes:
                self._on_ready(wakes)
        return result

    def submit(self, op: str, args: dict[str, Any], outcome: Outcome) -> None:
        """Run ``op`` now and hand the result (or error) to ``outcome``."""
        try:
            result = self.call(op, args)
        except Exception as exc:
            outcome(None, exc)
        else:
            outcome(result, None)

    def run(self, op: str, args: dict[str, Any]) -> asyncio.Future[Any]:
        """Run ``op`` now; a future that is already done."""
        fut: asyncio.Future[Any] = self._loop.create_future()
        try:
            fut.set_result(self.call(op, args))
        except Exception as exc:
            fut.set_exception(exc)
        return fut

    def stop(self) -> None:
        """Close the engine; later calls raise :class:`ClosedError`."""
        if self._closed:
            return
        self._closed = True
        self.give_backs.retry(self.engine, last=True)
        try:
            self.engine.close()
        except Exception:
            log.exception("spoolq: closing the engine failed")

    def join(self, timeout: float | None = None) -> None:
        """Nothing to wait for: :meth:`stop` closed the engine already."""


class EngineThread:
    """Runs requests against ``engine`` on one thread; see the module docstring.

    ``on_ready`` is called on the loop with the names of queues that may have
    gained ready records after each batch.
    """

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop,
                 on_ready: Callable[[set[str]], None]) -> None:
        self.engine = engine
        self._loop = loop
        self._on_ready = on_ready
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.transactions = 0
        self.give_backs = GiveBacks()
        self._thread = threading.Thread(target=self._run, name="spoolq-engine", daemon=True)
        self._thread.start()

    def submit(self, op: str, args: dict[str, Any], outcome: Outcome) -> None:
        """Run ``op`` with validated ``args``; ``outcome`` gets the wire-shaped result."""
        self._jobs.put((op, args, outcome))

    def run(self, op: str, args: dict[str, Any]) -> asyncio.Future[Any]:
        """Like :meth:`submit`, as a future of the loop."""
        fut: asyncio.Future[Any] = self._loop.create_future()

        def outcome(result: Any, error: BaseException | None) -> None:
            if fut.done():
                return
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)

        self.submit(op, args, outcome)
        return fut

    def stop(self) -> None:
        """Finish every job submitted so far, close the engine, end the thread."""
        self._jobs.put(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # ---- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[_Job] = []
            try:
                # Idle, it still wakes for the give-backs that wait for another try.
                job = self._jobs.get(timeout=self.give_backs.wait())
            except queue.Empty:
                self._finish_batch(batch)
                continue
            while job is not None:
                batch.append(job)
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
            else:
                stop = True
            self._finish_batch(batch)
        # What the last results set off on the loop (a take whose connection closed
        # meanwhile gives its records back) comes after the stop: it runs too, before the
        # engine closes. The loop answers once it has handed those results out.
        drained = threading.Event()
        try:
            self._loop.call_soon_threadsafe(self._drained, drained)
        except RuntimeError:  # the loop closed: nothing more can come from it
            drained.set()
        while True:
            try:
                job = self._jobs.get(timeout=0.05)
            except queue.Empty:
                if drained.is_set() or not self._loop.is_running():
                    break
                continue
            batch = []
            while job is not None:
                batch.append(job)
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
            self._finish_batch(batch)
        self.give_backs.retry(self.engine, last=True)
        try:
            self.engine.close()
        except Exception:
            log.exception("spoolq: closing the engine failed")

    def _finish_batch(self, batch: list[_Job]) -> None:
        """Run ``batch`` and hand its results to the loop."""
        done: list[tuple[Outcome, Any, BaseException | None]] = []
        woken: set[str] = set()
        self._run_batch(batch, done, woken)
        if done or woken:
            try:
                self._loop.call_soon_threadsafe(self._deliver, done, woken)
            except RuntimeError:
                log.warning("spoolq: the event loop closed before %d results were "
                            "delivered", len(done))

    def _drained(self, event: threading.Event) -> None:
        """Called on the loop after the results handed to it so far (see :meth:`_run`)."""
        event.set()
        self._jobs.put(None)

    def _run_batch(self, batch: list[_Job], done: list[tuple[Outcome, Any, BaseException | None]],
                   woken: set[str]) -> None:
        woken |= self.give_backs.retry(self.engine)  # before the takes that follow
        i = 0
        while i < len(batch):
            op, args, outcome = batch[i]
            if op == "append":
                j = i + 1
                while j < len(batch) and batch[j][0] == "append" and \
                        batch[j][1]["queue"] == args["queue"]:
                    j += 1
                self._append(batch[i:j], done, woken)
                i = j
                continue
            i += 1
            try:
                result, wakes = _run_op(self.engine, op, args, self.give_backs)
            except BaseException as exc:
                done.append((outcome, None, exc))
                continue
            self.transactions += 1
            woken |= wakes
            done.append((outcome, result, None))

    def _append(self, run: list[_Job], done: list[tuple[Outcome, Any, BaseException | None]],
                woken: set[str]) -> None:
        first = run[0][1]
        records: list[bytes] = []
        sizes: list[int] = []
        for _, args, _ in run:
            records += args["records"]
            sizes += args["sizes"]
        try:
            ids = self.engine.append(first["queue"], records, sizes, first["now"])
        except BaseException as exc:
            if len(run) == 1 or not isinstance(exc, Exception):
                done.extend((outcome, None, exc) for _, _, outcome in run)
                return
            # Nothing of the group was written: one request may have spoiled it for the
            # others, so each goes again on its own and only a bad one fails.
            for job in run:
                self._append([job], done, woken)
            return
        self.transactions += 1
        if records:
            woken.add(first["queue"])
        pos = 0
        for _, args, outcome in run:
            k = len(args["records"])
            done.append((outcome, ids[pos:pos + k], None))
            pos += k

    def _deliver(self, done: list[tuple[Outcome, Any, BaseException | None]],
                 woken: set[str]) -> None:
        for outcome, result, error in done:
            try:
                outcome(result, error)
            except Exception:
                log.exception("spoolq: delivering a result failed")
        if woken:
            self._on_ready(woken)
