"""What ``migrate`` copies: zstd dictionaries, codec settings and records, as stored."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from ..codec import record_dictionary
from ..engines import Engine, StoredRecord
from ..errors import EngineError
from ..zdict import DICTIONARY_QUEUE, checksum_key, dictionary_damage
from ._common import FileProblem, Refused, iter_pages, set_stored_codec, stored_codec
from ._output import CliState
from ._signals import sigint_deferred

__all__ = ["building_path", "copy_dictionaries", "copy_queues", "move_into_place",
           "name_dst", "remove_folder"]

log = logging.getLogger("spoolq")


def _lost_after(engine: Engine, held: int) -> int:
    """How many zstd dictionaries the file lost after its ``held`` dictionary records
    (their checksums kept): :func:`train_dictionary` keeps their places with empty
    records, so no dictionary takes their numbers."""
    return sum(1 for number, _why in dictionary_damage(engine) if number > held)


def copy_dictionaries(source: Engine, target: Engine, bases: list[str], names: list[str],
                       chunk: int) -> None:
    """Give the destination the source's zstd dictionaries under the same numbers.

    Records are copied as stored, and a ``zstd-dict`` record names its
    dictionary by number (its place in the dictionary queue), so each number
    a copied record needs must hold the same dictionary in both files. The
    source's dictionaries beyond the destination's are appended, so they keep
    their numbers; a number the destination already gives another dictionary
    is refused only when a copied record needs it.

    A dictionary a file lost (its checksum kept) keeps its number: the destination
    gets the checksum and an empty record in its place, so records that needed it stay
    damaged there, and no dictionary copied or trained later takes the number.
    """
    target_held = target.peek(DICTIONARY_QUEUE, 255)
    have = [d.data for d in target_held] + [b""] * _lost_after(target, len(target_held))
    held = source.peek(DICTIONARY_QUEUE, 255)
    wanted = [d.data for d in held] + [b""] * _lost_after(source, len(held))
    clash = {n for n in range(1, len(have) + 1)
             if n > len(wanted) or have[n - 1] != wanted[n - 1]}
    if clash:
        for name in names:
            for page in iter_pages(source, name, chunk=chunk,
                                   expected=source.counts(name).ready):
                for rec in page:
                    number = record_dictionary(rec.data)
                    if number in clash:
                        raise Refused(
                            f"record {rec.id} of {name!r} needs zstd dictionary {number}, and "
                            f"the destination's dictionary {number} is another one; migrate "
                            "into a new file")
    now = time.time()
    if len(wanted) > len(have):
        # The places of the destination's own lost dictionaries first (their checksums
        # are there), so that the source's keep their numbers.
        for _number in range(len(target_held) + 1, len(have) + 1):
            target.append(DICTIONARY_QUEUE, [b""], [0], now)
    for number in range(len(have) + 1, len(wanted) + 1):
        if number <= len(held):
            rec = held[number - 1]
            target.append(DICTIONARY_QUEUE, [rec.data], [rec.raw_size], rec.enqueued_at)
        else:  # lost: its checksum and an empty record keep its number
            target.append(DICTIONARY_QUEUE, [b""], [0], now)
        crc = source.get_meta(checksum_key(number))
        if crc is not None:
            target.set_meta(checksum_key(number), crc)
    for base in bases:
        key = f"queue/{base}/zstd-dict"
        active = source.get_meta(key)
        if active is None or target.get_meta(key) is not None:
            continue
        if active.isdigit() and int(active) in clash:
            # The destination's dictionary of that number is another queue's: the queue
            # trains its own there once it has enough new items.
            log.info("spoolq: %r: zstd dictionary %s is another one in the destination; "
                     "the queue will train its own", base, active.decode())
            continue
        target.set_meta(key, active)


def _ends(engine: Engine, name: str) -> tuple[int, int | None, int | None]:
    """A queue's ready count and the ids of its head and its tail (None when empty)."""
    ready = engine.counts(name).ready
    head = engine.peek(name, 1)
    tail = engine.peek(name, 1, ready - 1) if ready else []
    return ready, head[0].id if head else None, tail[0].id if tail else None


def _ascending(ids: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(ids))


def _joined_pages(source: Engine, name: str, chunk: int,
                  ready: int) -> Iterator[list[StoredRecord]]:
    """The ``ready`` records of ``name``, ``chunk`` at a time, each page read from the
    last record of the one before: Refused when that record is no longer where it was
    (records ahead of it were taken or given back meanwhile). A page may hold fewer
    records than asked for without being the last (a server's reply holds what fits):
    the pages end when ``ready`` records were read, or a read finds nothing more."""
    page = source.peek(name, chunk, 0)
    offset = 0
    while page:
        yield page
        offset += len(page)
        if offset >= ready:
            return  # records put meanwhile are after the tail the copy checks
        following = source.peek(name, chunk + 1, offset - 1)
        if not following or following[0].id != page[-1].id:
            raise _changed(name)
        page = following[1:]
        if not page and len(following) == 1:
            # A reply with room for the last record read only: the next page without it,
            # then that record again, where it was (a record taken ahead of it and one
            # given back behind it meanwhile would have moved the page past a record).
            page = source.peek(name, chunk, offset)
            again = source.peek(name, 1, offset - 1)
            if not again or again[0].id != following[0].id:
                raise _changed(name)


def _changed(name: str) -> Refused:
    return Refused(f"{name!r}: the source's records changed while they were copied; was "
                   "another program using the files?")


def copy_queues(state: CliState, source: Engine, target: Engine, bases: list[str],
                plan: dict[str, int], chunk: int,
                written: dict[str, int]) -> list[dict[str, Any]]:
    """Copy the queues of ``plan`` (name -> ready count), codec settings first.

    ``written`` counts the records stored in each destination queue so far, also when
    the copy stops part of the way (a Ctrl-C as a run commits waits for it)."""
    names = list(plan)
    for base in bases:
        ser, comp = stored_codec(source, base)
        have_ser, have_comp = stored_codec(target, base)
        set_stored_codec(target, base, None if have_ser else ser, None if have_comp else comp)
    before = {name: target.counts(name).ready for name in names}
    copied: list[dict[str, Any]] = []
    with state.progress("copying", sum(plan.values())) as advance:
        for name in names:
            done = 0
            start = _ends(source, name)
            first: int | None = None
            last: int | None = None
            in_order = True
            for page in _joined_pages(source, name, chunk, start[0]):
                read = [r.id for r in page]
                in_order = in_order and _ascending(read if last is None else [last, *read])
                first = read[0] if first is None else first
                last = read[-1]
                # append() stamps one time per call: runs of equal times keep each record's.
                for stamp, run in itertools.groupby(page, key=lambda r: r.enqueued_at):
                    recs = list(run)
                    with sigint_deferred():
                        target.append(name, [r.data for r in recs],
                                      [r.raw_size for r in recs], stamp)
                        written[name] = written.get(name, 0) + len(recs)
                done += len(page)
                advance(len(page))
            ready = target.counts(name).ready
            if done != plan[name] or ready != before[name] + done:
                raise Refused(f"{name!r}: {plan[name]} items were to be copied, {done} were "
                              f"read and the destination gained {ready - before[name]}; "
                              "was another program using the files?")
            # Pages are read at offsets: a consumer taking items from the head while a
            # producer puts as many moves them under the copy, which then misses records
            # and reads others twice or from after it began, with every count right.
            # Ids only grow, so a copy that read, in increasing order, as many records
            # as the queue held, from its head to its tail, with both the same at the
            # end, read the records it held; each page starts at the last record of the
            # one before, so records taken and given back behind it (which leave the
            # head, the tail and the count as they were) cannot move a record past it.
            if not in_order or (done, first, last) != start or _ends(source, name) != start:
                raise _changed(name)
            if done or plan[name] or name in bases:
                copied.append({"name": name, "copied": done, "ready": ready})
    return copied


def building_path(dst: str) -> str | None:
    """Where to make a new queue file ``dst``: a path of the same name in a new folder
    ``DST.<random>.part`` next to it (engines keep files beside it, which stay in the
    folder); None when ``dst`` exists already or names no file (a database URL)."""
    if "://" in dst or os.path.lexists(dst):
        return None
    # Not abspath: it drops "link/.." as text, where the kernel follows the link first.
    head, name = os.path.split(dst.rstrip(os.sep) or dst)
    if not os.path.isdir(parent := head or os.curdir):
        raise FileProblem(f"{dst}: cannot open the queue: no directory {os.path.realpath(parent)}")
    try:  # the name cut short: a folder name has 255 bytes, an SQLite path 512
        folder = tempfile.mkdtemp(dir=parent, prefix=name[:32] + ".", suffix=".part")
    except OSError as exc:
        raise FileProblem(f"{dst}: cannot create the queue: {exc.strerror}") from None
    # Engines make paths absolute with abspath: give them one that needs no "..".
    return os.path.join(os.path.realpath(folder), name)


def name_dst(exc: BaseException, building: str, dst: str) -> None:
    """Raise ``exc`` again naming ``dst``, not the path (now gone) the copy was made at."""
    if isinstance(exc, EngineError) and building in str(exc):
        try:
            again = type(exc)(str(exc).replace(building, dst))
        except Exception:  # an error class that takes other arguments
            return
        raise again from exc.__cause__


def move_into_place(building: str, dst: str) -> None:
    """Move the whole copy ``building`` to ``dst``, which must still not exist (another
    program may have made it meanwhile), and remove its folder."""
    try:
        if os.path.isdir(building):
            if os.path.lexists(dst):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
            os.rename(building, dst)
        else:
            _move_file(building, dst)
    except FileExistsError:
        raise FileProblem(f"{dst} was made by another program while the migrate copied "
                          "into it") from None
    except OSError as exc:  # the kernel makes no file named "DST/": named as given
        raise FileProblem(f"{dst}: cannot create the queue: {exc.strerror}") from None
    remove_folder(os.path.dirname(building))


def _move_file(path: str, dst: str) -> None:
    """Move the file ``path`` to ``dst`` unless ``dst`` exists (FileExistsError)."""
    if os.path.exists(path + "-wal"):  # part of an SQLite file, left by a failed close
        raise FileProblem(f"{dst}: the copy's WAL could not be emptied into it")
    try:
        os.link(path, dst)  # never replaces a file made meanwhile
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst) from None
        os.rename(path, dst)


def remove_folder(folder: str) -> None:
    """Remove the folder a new DST was made in, and what it still holds."""
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("spoolq: could not remove %s: %s", folder, exc)
