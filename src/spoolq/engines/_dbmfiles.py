"""The files of a dbm queue directory: the ``CURRENT`` pointer, making and
compacting generations, and repairing a ``dbm.dumb`` index that a killed
process left half-written.

A queue directory holds ``CURRENT`` (one line naming the live generation) and
the files of that generation, ``gen-NNNNNN`` plus whatever suffixes the dbm
backend adds (``dbm.dumb``: ``.dat`` data, ``.dir`` index, ``.bak`` the index
before the last rewrite). A new generation is written completely and fsynced
before ``CURRENT`` is replaced to name it, so a crash at any point leaves a
directory naming one complete generation.
"""

from __future__ import annotations

import ast
import dbm
import glob
import importlib
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Iterable, Iterator
from contextlib import suppress
from typing import Protocol

from ..errors import CorruptError, EngineError, FormatError
from ._dbmstate import State, encode_state, main_key
from ._diskspace import full_disk_note
from ._shared import fsync_dir, fsync_file

__all__ = ["Database", "create_generation", "current", "files_of", "finish_generation",
           "foreign_database", "get", "is_ours", "make_queue_directory", "mode_of",
           "open_generation", "remove_generation", "remove_other_generations",
           "remove_unfinished", "repair_dumb", "set_current", "sync_generation",
           "unfinished_name", "write_compacted"]

log = logging.getLogger("spoolq")

MAGIC = "spoolq-dbm"
CURRENT = "CURRENT"
FIRST = "gen-000001"


class Database(Protocol):
    """What the engine uses of a dbm object."""

    def __getitem__(self, key: bytes, /) -> bytes: ...
    def __setitem__(self, key: bytes, value: bytes, /) -> None: ...
    def keys(self) -> Iterable[bytes]: ...
    def close(self) -> None: ...


def current(path: str) -> str | None:
    """The live generation named by ``CURRENT``; None when there is no ``CURRENT``."""
    try:
        with open(os.path.join(path, CURRENT), encoding="ascii") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CorruptError(f"{path}: cannot read {CURRENT}: {exc}") from exc
    fields = text.split()
    if len(fields) != 2 or fields[0] != MAGIC or not fields[1].startswith("gen-"):
        raise FormatError(f"{path} is not a spoolq dbm queue ({CURRENT} is not ours)")
    number = fields[1][4:]
    # Only names this engine gives: zeros a power cut left (which no path may hold) or a
    # path out of the directory are damage, not a generation to look for.
    if not (len(number) >= 6 and number.isascii() and number.isdigit()):
        raise CorruptError(f"{path}: {CURRENT} is damaged: it names {fields[1]!r}, not a "
                           "generation; the files are left as they are")
    return fields[1]


def set_current(path: str, generation: str) -> None:
    """Make ``generation`` the live one, atomically and durably."""
    tmp = os.path.join(path, CURRENT + ".tmp")
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{MAGIC} {generation}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(path, CURRENT))
    fsync_dir(path)


def files_of(path: str, generation: str) -> Iterator[str]:
    """Paths of the files a generation's dbm backend made."""
    for name in os.listdir(path):
        if name == generation or name.startswith(generation + "."):
            yield os.path.join(path, name)


_UNFINISHED = ".new-" + "[0-9a-f]" * 12  # the names unfinished_name makes; nothing else goes


def unfinished_name(path: str) -> str:
    """Where a new queue directory is made before it is renamed to ``path``."""
    return f"{path}.new-{uuid.uuid4().hex[:12]}"


def remove_unfinished(path: str) -> None:
    """Remove what a process killed while making the queue at ``path`` left beside it:
    only directories named as :func:`unfinished_name` names them, never the user's own
    files that merely start like them."""
    for leftover in glob.glob(glob.escape(path) + _UNFINISHED):
        if os.path.isdir(leftover) and not os.path.islink(leftover):
            shutil.rmtree(leftover, ignore_errors=True)
            log.info("spoolq: removed %s, left by an interrupted creation", leftover)


def foreign_database(path: str) -> str | None:
    """The backend of a dbm database that another program made under the name ``path``
    (``dbm.open(path)`` adds suffixes such as ``.dat``/``.dir`` or ``.db``), or None."""
    return dbm.whichdb(path) or None


def is_ours(name: str) -> bool:
    """Whether a directory entry is one this engine writes."""
    return name.startswith(("gen-", CURRENT))


def remove_generation(path: str, generation: str) -> None:
    for name in list(files_of(path, generation)):
        with suppress(FileNotFoundError):
            os.unlink(name)


def remove_other_generations(path: str, live: str) -> None:
    """Remove every generation but ``live``, and a ``CURRENT`` update or an index repair
    never finished.

    A process killed while compacting leaves the old generation (killed after
    ``CURRENT`` named the new one) or half of the new one (killed before); later
    compactions never look at either, so without this they would stay forever. One
    killed while repairing the live generation's index leaves its temporary copy
    (``gen-NNNNNN.dir.tmp``, which no dbm backend names a file of its own).
    Only call it holding the queue's lock: nothing else then reads those files.
    """
    for name in os.listdir(path):
        if name == CURRENT + ".tmp" or (
                name.startswith("gen-") and name != live and not name.startswith(live + ".")):
            what = "compaction"
        elif name == _repair_temporary(live):
            what = "index repair"
        else:
            continue
        with suppress(FileNotFoundError):
            os.unlink(os.path.join(path, name))
            log.info("spoolq: %s: removed %s, left by an interrupted %s", path, name, what)


def sync_generation(path: str, generation: str) -> None:
    """fsync every file of a generation and the directory."""
    for name in files_of(path, generation):
        fsync_file(name)
    fsync_dir(path)


def mode_of(path: str, generation: str) -> int:
    """The permissions of a generation's files, which the files written after it keep
    (dbm.dumb sets its own on every write): 0o666 when it has none (the umask applies)."""
    for name in sorted(files_of(path, generation)):
        with suppress(FileNotFoundError):
            return stat.S_IMODE(os.stat(name).st_mode)
    return 0o666


def open_generation(path: str, generation: str, flag: str) -> tuple[Database, str]:
    """Open a generation with the backend that wrote it; return it and the backend's name."""
    base = os.path.join(path, generation)
    which = dbm.whichdb(base)
    if which is None:
        raise CorruptError(f"{path}: the files of {generation} are missing or unreadable")
    if not which:
        raise FormatError(f"{path}: {generation} is not a dbm database")
    try:
        module = importlib.import_module(which)
    except ImportError as exc:
        raise FormatError(f"{path} was written with {which}, which this Python does not have"
                          ) from exc
    try:
        db: Database = module.open(base, flag, mode_of(path, generation))
    except (SyntaxError, ValueError, TypeError) as exc:
        # dbm.dumb evaluates each line of its index: a damaged line fails to parse.
        raise CorruptError(f"{path}: the index of {generation} is damaged: "
                           f"{type(exc).__name__}: {exc}") from exc
    return db, which


def create_generation(path: str, generation: str, backend: str | None,
                      mode: int = 0o666) -> Database:
    """A new, empty database for ``generation``: with ``backend`` (a module name such as
    ``"dbm.dumb"``), or with the ``dbm`` package's default when None; its files get
    ``mode`` less the umask."""
    remove_generation(path, generation)
    module = dbm if backend is None else importlib.import_module(backend)
    db: Database = module.open(os.path.join(path, generation), "n", mode)
    return db


def get(path: str, db: Database, key: bytes) -> bytes:
    """The value of ``key``; CorruptError when the key the state names is missing."""
    try:
        return db[key]
    except KeyError as exc:
        raise CorruptError(f"{path}: record {key.decode()} is missing") from exc


def finish_generation(directory: str, generation: str, db: Database, st: State,
                      copied: int) -> None:
    """Write the state into a new generation that holds ``copied`` records, close and
    fsync it (whatever the durability: ``CURRENT`` is about to name these files)."""
    try:
        st.commit += 1
        st.keys = copied + 1
        st.waste = 0
        db[b"s%d" % st.commit] = encode_state(st)
    finally:
        db.close()
    sync_generation(directory, generation)


def make_queue_directory(path: str, st: State) -> str:
    """Make a new queue holding only the state ``st``; return its generation.

    It is made in a sibling directory, then renamed into place (replacing an
    empty directory, as rename(2) does), so a crash never leaves half a queue.
    """
    tmp = unfinished_name(path)
    os.mkdir(tmp)
    try:
        finish_generation(tmp, FIRST, create_generation(tmp, FIRST, None), st, 0)
        set_current(tmp, FIRST)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(os.path.dirname(os.path.realpath(path)))  # "link/.." as the kernel takes it
    return FIRST


def write_compacted(path: str, generation: str, backend: str, old: Database, st: State,
                    mode: int) -> int:
    """Write a new generation holding only the records ``st`` names, renumbered from 0,
    and the state changed to match, its files with permissions ``mode``; return how many
    records it holds."""
    new = create_generation(path, generation, backend, mode)
    copied = 0
    try:
        for q in st.queues.values():
            position = 0
            for before in range(q.head, q.tail):
                if before not in q.holes:
                    new[main_key(q, position)] = get(path, old, main_key(q, before))
                    position += 1
            q.head, q.tail, q.holes = 0, position, set()
            for n, aside in enumerate(q.aside.values()):
                key = f"x{q.number}.{n}"
                new[key.encode()] = get(path, old, aside.key.encode())
                aside.key = key
            q.extra = len(q.aside)
            copied += position + len(q.aside)
        finish_generation(path, generation, new, st, copied)
    except BaseException:
        with suppress(Exception):
            new.close()
        remove_generation(path, generation)
        raise
    return copied


def repair_dumb(path: str, generation: str, *, read_only: bool, go_back: bool = False) -> None:
    """Bring back a ``dbm.dumb`` index that a killed process left half-written.

    ``dbm.dumb`` rewrites its index (on ``sync`` and ``close``) by renaming
    ``.dir`` to ``.bak`` and writing a new ``.dir``. This engine never
    overwrites or deletes a key, so between rewrites the index only grows by
    appended lines and a complete rewrite has as many lines as the ``.bak``
    it replaced: fewer lines, a torn last line or no ``.dir`` at all mean a
    rewrite was cut short, and the ``.bak`` (or the whole lines) are the index.
    A ``.bak`` takes the place of ``.dir`` only when every line of it is an
    index entry and it holds every entry of ``.dir`` as ``.dir`` has it: a
    damaged ``.bak`` never replaces an index that can be read.

    A killed process never damages the ``.bak`` (it is a whole index renamed), so an
    index cut short beside a damaged ``.bak`` is damage to the files (a copy that
    stopped): CorruptError, the files left as they are, unless ``go_back`` asks to open
    at the last state the whole lines of the index name.
    """
    base = os.path.join(path, generation)
    index, backup = base + ".dir", base + ".bak"
    if not os.path.exists(base + ".dat"):
        return
    try:
        current_bytes = _read(index)
        backup_bytes = _read(backup)
    except OSError as exc:
        raise EngineError(f"{path}: cannot read the index of {generation}: {exc}") from exc
    if current_bytes is None and backup_bytes is None:
        raise CorruptError(f"{path}: the index of {generation} is missing")
    whole = b"" if current_bytes is None else current_bytes[:current_bytes.rfind(b"\n") + 1]
    fixed = whole
    if (backup_bytes is not None and not go_back and whole != current_bytes
            and (not backup_bytes.endswith(b"\n") or _entries(backup_bytes) is None)):
        raise CorruptError(f"{path}: the index of {generation} is cut short and its backup "
                           f"{generation}.bak is damaged; the files are left as they are. "
                           "Open the queue with engine_options={'recover': True} to go back "
                           "to the last state the index still names (what was written after "
                           "it is lost)")
    if backup_bytes is not None and backup_bytes.count(b"\n") > whole.count(b"\n"):
        candidate = backup_bytes[:backup_bytes.rfind(b"\n") + 1]
        if _completes(candidate, whole):
            fixed = candidate
        elif current_bytes is None:
            raise CorruptError(f"{path}: the index of {generation} is missing and its "
                               f"backup {generation}.bak is damaged; the files are left as "
                               "they are")
        else:
            log.warning("spoolq: %s: %s.bak is damaged or does not match the index; the "
                        "index is kept", path, generation)
    if fixed == current_bytes:
        return
    if read_only:
        raise EngineError(f"{path}: a write to it was interrupted (or is under way); open it "
                          "for writing once to repair it, then read it again"
                          f"{full_disk_note(path)}")
    tmp = os.path.join(path, _repair_temporary(generation))
    try:
        with open(tmp, "wb") as f:
            f.write(fixed)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, index)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path)
    log.warning("spoolq: %s: repaired the index of %s after an interrupted write", path,
                generation)


def _repair_temporary(generation: str) -> str:
    """The name :func:`repair_dumb` writes a generation's repaired index to."""
    return generation + ".dir.tmp"


def _entries(index: bytes) -> dict[str, tuple[int, int]] | None:
    """The entries of a ``dbm.dumb`` index, each line read as ``dbm.dumb`` reads it; None
    when a line is not an entry (a key and a position and size)."""
    entries = {}
    for line in index.decode("latin-1").splitlines():
        try:
            key, where = ast.literal_eval(line.rstrip())
        except Exception:  # any line literal_eval cannot read is damaged
            return None
        if not (isinstance(key, str) and isinstance(where, tuple) and len(where) == 2
                and all(type(n) is int for n in where)):
            return None
        entries[key] = where
    return entries


def _completes(backup: bytes, index: bytes) -> bool:
    """Whether ``backup`` is an index holding every entry of ``index`` unchanged: what a
    rewrite cut short leaves (``index`` then holds the first entries of ``backup``)."""
    old, new = _entries(backup), _entries(index)
    return (old is not None and new is not None
            and all(old.get(key) == where for key, where in new.items()))


def _read(name: str) -> bytes | None:
    try:
        with open(name, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
