"""Commands that change a queue file in place: ``requeue``, ``purge`` and ``compact``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import click

from ..engines import Engine, dead_queue_name
from ..owners import owner_is_dead
from . import _sqlite
from ._common import DEFAULT_CHUNK, MAX_CHUNK, Refused, disk_size, now, open_existing
from ._options import FiniteFloatRange, engine_option, json_option, queue_option, schema_option
from ._output import CliState, format_bytes, is_interactive, owner_state
from ._signals import sigint_deferred

__all__ = ["compact", "purge", "requeue"]


def _size(n: int | None) -> str:
    return "?" if n is None else format_bytes(n)


@runtime_checkable
class _Compactable(Protocol):
    """An engine that can give free space back (an optional method, not in ``Engine``)."""

    def compact(self) -> None: ...


@click.command(short_help="Give dead letters or stuck leases back to a queue.")
@click.argument("path")
@queue_option()
@click.option("--dead", is_flag=True,
              help="Move the dead letters back to the tail of the queue.")
@click.option("--leased", is_flag=True,
              help="Make stuck leases ready again: those whose ttl ran out or whose "
                   "process has ended.")
@click.option("--force", is_flag=True,
              help="With --leased, also take back leases of running processes and of "
                   "other hosts.")
@click.option("--chunk", type=click.IntRange(1, MAX_CHUNK), default=DEFAULT_CHUNK,
              show_default=True,
              help="Dead letters moved (and, on lmdb, leases released) per transaction.")
@engine_option()
@schema_option()
@json_option()
def requeue(path: str, queue: str, dead: bool, leased: bool, force: bool, chunk: int,
            engine: str | None, schema: str | None, as_json: bool) -> None:
    """Give items back to a queue: dead letters (--dead), stuck leases (--leased), or both.

    --dead moves every dead letter to the tail of the queue as a new item
    (attempts start again at 0); items that become dead letters while it runs
    stay there. --leased releases leases that ran out and
    leases whose owner process on this host has ended; the items keep their
    place in line. Leases of running processes, or of processes on other
    hosts, are left alone (exit status 1) unless --force is given.
    """
    if not (dead or leased):
        raise click.UsageError("say what to requeue: --dead, --leased or both")
    if force and not leased:
        raise click.UsageError("--force only applies to --leased")
    state = CliState()
    result: dict[str, Any] = {"queue": queue, "dead_moved": 0, "leases_released": 0,
                              "leases_left": 0, "owners_left": []}
    eng = open_existing(path, engine, read_only=False, schema=schema)
    try:
        state.check_queue_name(eng, queue, dead_queue_name(queue))
        # Engine calls that write are only made when there is something to give back:
        # some engines record a queue they are asked to write to, even to change nothing.
        if dead:
            _move_dead(eng, queue, chunk, result)
        if leased:
            left = eng.owners(queue)
            if left:
                gone = [owner for owner in left if owner_is_dead(owner)]
                _expire(eng, queue, gone, chunk, result)
                left = eng.owners(queue)
            if left and force:
                _expire(eng, queue, sorted(left), chunk, result)
                left = eng.owners(queue)
            result["leases_left"] = sum(left.values())
            result["owners_left"] = [{"owner": o, "leased": n, "process": owner_state(o)}
                                     for o, n in sorted(left.items())]
    except BaseException:
        # Ctrl-C, a lock held too long: what was given back stays given back.
        if result["dead_moved"]:
            state.note(f"{queue}: {result['dead_moved']} dead letter(s) were moved back to "
                       "the queue before the requeue stopped")
        if result["leases_released"]:
            state.note(f"{queue}: {result['leases_released']} lease(s) were released "
                       "before the requeue stopped")
        raise
    finally:
        eng.close()
    if as_json:
        state.print_json(result)
    else:
        if dead:
            state.line(f"{queue}: moved {result['dead_moved']} dead letter(s) back to the queue")
        if leased:
            state.line(f"{queue}: released {result['leases_released']} lease(s)")
        if result["owners_left"]:
            table = state.table("lease owner", "#items", "process", title="leases left alone")
            for o in result["owners_left"]:
                state.add_row(table, o["owner"], o["leased"], o["process"])
            state.print_table(table)
    if result["leases_left"]:
        raise Refused(f"{queue}: {result['leases_left']} lease(s) of running or unknown "
                      "processes were left alone; --force takes them back")


@runtime_checkable
class _ExpiresInChunks(Protocol):
    """An engine that can end a bounded number of leases per transaction (lmdb)."""

    def expire_some(self, queue: str, now: float, *, owners: Sequence[str] = (),
                    limit: int, after: int = 0) -> tuple[int, int]: ...


def _expire(eng: Engine, queue: str, owners: Sequence[str], chunk: int,
            result: dict[str, Any]) -> None:
    """End the leases of ``queue`` that ran out or that ``owners`` hold, counting them in
    ``result["leases_released"]`` as each transaction ends (a first Ctrl-C waits for it).

    Where the engine can, ``chunk`` leases per transaction: LMDB keeps a copy of every
    page a transaction changes until it commits, so ending every lease at once would
    take memory in proportion to them."""
    if not isinstance(eng, _ExpiresInChunks):
        with sigint_deferred():
            result["leases_released"] += eng.expire(queue, now(), owners=owners)
        return
    after = 0
    while True:
        with sigint_deferred():
            done, after = eng.expire_some(queue, now(), owners=owners, limit=chunk,
                                          after=after)
            result["leases_released"] += done
        if not after:
            return


def _move_dead(eng: Engine, queue: str, chunk: int, result: dict[str, Any]) -> None:
    """Move the dead letters of ``queue`` to its tail, ``chunk`` per transaction, oldest
    first, counting them in ``result["dead_moved"]`` as each transaction ends (a first
    Ctrl-C waits for it). Moving them in one call would hold them all in memory.

    Only as many as the dead letters held when it started are moved: items a consumer
    fails again meanwhile join the tail of the dead letters, and chasing them would
    never end while it keeps failing them."""
    dead = dead_queue_name(queue)
    left = eng.counts(dead).ready
    while left > 0:
        ids = [rec.id for rec in eng.peek(dead, min(chunk, left))]
        if not ids:
            return
        with sigint_deferred():
            done = eng.move(dead, queue, ids)
            result["dead_moved"] += done
        if not done:  # another program took them meanwhile
            return
        left -= len(ids)


@click.command(short_help="Delete a queue's items or its dead letters.")
@click.argument("path")
@queue_option()
@click.option("--dead", is_flag=True, help="Delete the queue's dead letters instead.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@engine_option()
@schema_option()
@json_option()
def purge(path: str, queue: str, dead: bool, yes: bool, engine: str | None,
          schema: str | None, as_json: bool) -> None:
    """Delete every item of a queue, ready and leased (or every dead letter, with --dead).

    Asks for confirmation first unless --yes is given; without a terminal to
    ask on, and without --yes, it refuses (exit status 1) and deletes nothing,
    as it does when the queue gained items while the question was asked.
    """
    state = CliState()
    name = dead_queue_name(queue) if dead else queue
    confirmed: int | None = None
    if not yes:
        eng = open_existing(path, engine, read_only=True, schema=schema)
        try:
            counts = eng.counts(name)
            if not counts.ready + counts.leased:
                state.check_queue_name(eng, name)
        finally:
            eng.close()
        confirmed = counts.ready + counts.leased
        if confirmed:
            question = (f"Delete {counts.ready} ready and {counts.leased} leased item(s) of "
                        f"{name!r} in {path}?")
            if not is_interactive():
                raise Refused(f"{question} Refusing without confirmation: pass --yes")
            if not click.confirm(question, default=False, err=True):
                raise Refused("nothing was deleted")
    removed = 0
    held = 0
    if confirmed is None or confirmed:
        # Counted again in the open that deletes: items put while the question was
        # asked were not confirmed.
        eng = open_existing(path, engine, read_only=False, schema=schema)
        try:
            counts = eng.counts(name)
            held = counts.ready + counts.leased
            if confirmed is not None and held > confirmed:
                raise Refused(f"{name!r} gained items while the question was asked (now "
                              f"{counts.ready} ready and {counts.leased} leased); nothing "
                              "was deleted")
            if held:
                # One transaction: a first Ctrl-C waits for it, and is told what it did.
                purged = False
                try:
                    with sigint_deferred():
                        removed = eng.purge(name)
                        purged = True
                except BaseException:
                    if purged:
                        state.note(f"{name}: deleted {removed} item(s) before the purge "
                                   "stopped")
                    raise
            elif confirmed is None:
                state.check_queue_name(eng, name)
        finally:
            eng.close()
    if as_json:
        state.print_json({"queue": name, "removed": removed})
    elif held:
        state.line(f"{name}: deleted {removed} item(s)")
    else:
        state.line(f"{name}: nothing to delete")


@click.command(short_help="Give the space of deleted items back.")
@click.argument("path")
@click.option("--timeout", type=FiniteFloatRange(min=0), default=10.0, show_default=True,
              help="Seconds to wait for other programs' writes to finish.")
@engine_option()
@schema_option()
@json_option()
def compact(path: str, timeout: float, engine: str | None, schema: str | None,
            as_json: bool) -> None:
    """Give the space of deleted items back to the file system.

    SQLite files are rewritten with VACUUM (other programs may keep the file
    open; the rewrite waits for their writes). An engine object that offers
    a compact() method has it called; for the others there is nothing to do.
    """
    state = CliState()
    eng = open_existing(path, engine, read_only=True, schema=schema)
    try:
        engine_name = eng.name
        can_compact = isinstance(eng, _Compactable)
    finally:
        eng.close()
    before = disk_size(path, engine_name)
    action: str | None = None
    try:
        # A first Ctrl-C waits for the rewrite, which ends whole or not at all either way,
        # so that the user learns that it was done.
        if engine_name == "sqlite":
            with state.progress("compacting", None), sigint_deferred():
                _sqlite.vacuum(path, timeout=timeout)
                action = "VACUUM"
        elif can_compact:
            eng = open_existing(path, engine, read_only=False, schema=schema)
            try:
                if isinstance(eng, _Compactable):
                    with state.progress("compacting", None), sigint_deferred():
                        eng.compact()
                        action = "compact()"
            finally:
                eng.close()
    except BaseException:
        if action is not None:
            state.note(f"{path}: {_size(before)} -> {_size(disk_size(path, engine_name))} "
                       f"({action}) before the compact stopped")
        raise
    after = disk_size(path, engine_name)
    if as_json:
        state.print_json({"path": path, "engine": engine_name, "action": action,
                          "bytes_before": before, "bytes_after": after})
    elif action is None:
        state.line(f"{path}: nothing to do: the {engine_name} engine has no space to reclaim")
    else:
        state.line(f"{path}: {_size(before)} -> {_size(after)} ({action})")
