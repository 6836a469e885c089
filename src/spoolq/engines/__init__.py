"""Storage engines and how a path picks one."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigurationError
from .base import (
    Counts,
    Engine,
    Lease,
    LeasedRecord,
    StoredRecord,
    SupportsPeekLeased,
    dead_queue_name,
)
from .dbm import DBMEngine
from .lmdb import LMDBEngine
from .memory import MemoryEngine
from .pickle import PickleEngine
from .sqlite import SQLiteEngine

__all__ = [
    "ENGINES",
    "Counts",
    "DBMEngine",
    "Engine",
    "LMDBEngine",
    "Lease",
    "LeasedRecord",
    "MemoryEngine",
    "PickleEngine",
    "SQLiteEngine",
    "StoredRecord",
    "SupportsPeekLeased",
    "dead_queue_name",
    "engine_name_for",
    "open_engine",
    "register_engine",
]

EngineFactory = Callable[..., Engine]
"""Called as ``factory(path, durability=..., read_only=..., **engine_options)``."""


def _sqlite(path: str, *, durability: str, read_only: bool = False, **options: Any) -> Engine:
    options.setdefault("synchronous", "FULL" if durability == "fsync" else "NORMAL")
    return SQLiteEngine(path, read_only=read_only, **options)


def _memory(path: str, *, durability: str, read_only: bool = False, **options: Any) -> Engine:
    if options:
        raise ConfigurationError(f"the memory engine takes no options, got {sorted(options)}")
    return MemoryEngine()


def _lmdb(path: str, *, durability: str, read_only: bool = False, **options: Any) -> Engine:
    # "commit" keeps LMDB's data flush and drops the meta flush: the file stays sound on
    # power loss and only the last commit may be undone (see engines/lmdb.py).
    options.setdefault("sync", True)
    options.setdefault("metasync", durability == "fsync")
    return LMDBEngine(path, read_only=read_only, **options)


def _dbm(path: str, *, durability: str, read_only: bool = False, **options: Any) -> Engine:
    options.setdefault("fsync", durability == "fsync")
    return DBMEngine(path, read_only=read_only, **options)


def _pickle(path: str, *, durability: str, read_only: bool = False, **options: Any) -> Engine:
    options.setdefault("fsync", durability == "fsync")
    return PickleEngine(path, read_only=read_only, **options)




def _postgres(path: str, *, durability: str, read_only: bool = False,
              **options: Any) -> Engine:
    try:
        from .postgres import PostgresEngine
    except ImportError as exc:
        if exc.name not in {"psycopg", "psycopg_pool"}:
            raise
        raise ConfigurationError(
            f"the postgres engine needs {exc.name}, which is not installed: "
            "pip install 'spoolq[postgres]'") from exc
    return PostgresEngine(path, durability=durability, read_only=read_only, **options)


def _remote(path: str, *, durability: str, read_only: bool = False, **options: Any) -> Engine:
    # The server's own durability setting decides how its commits are made.
    from .remote import RemoteEngine
    return RemoteEngine(path, read_only=read_only, **options)


ENGINES: dict[str, EngineFactory] = {"sqlite": _sqlite, "memory": _memory, "lmdb": _lmdb,
                                     "dbm": _dbm, "pickle": _pickle, "postgres": _postgres,
                                     "remote": _remote}
_SUFFIXES = {".sqlite": "sqlite", ".sqlite3": "sqlite", ".db": "sqlite",
             ".lmdb": "lmdb", ".dbm": "dbm", ".pickle": "pickle", ".pkl": "pickle"}


def register_engine(name: str, factory: EngineFactory) -> None:
    """Make ``engine=name`` open storage with ``factory``."""
    ENGINES[name] = factory


def engine_name_for(path: str) -> str:
    """The engine a path picks: by scheme or suffix; an unknown suffix means sqlite."""
    if path == ":memory:":
        return "memory"
    if path.startswith("spoolq://"):
        return "remote"
    if path.startswith(("postgresql://", "postgres://")):
        return "postgres"
    return _SUFFIXES.get(os.path.splitext(path)[1].lower(), "sqlite")


def open_engine(path: str | os.PathLike[str], engine: str | Engine | None = None, *,
                durability: str = "commit", read_only: bool = False,
                options: Mapping[str, Any] | None = None) -> Engine:
    """Open the storage for ``path``: ``engine`` is a name, an engine instance or None
    (pick by path)."""
    if engine is not None and not isinstance(engine, str):
        if not isinstance(engine, Engine):
            raise ConfigurationError(
                f"engine must be a name or an object implementing spoolq.Engine, "
                f"not {type(engine).__name__}")
        return engine
    spath = os.fspath(path)
    name = engine or engine_name_for(spath)
    factory = ENGINES.get(name)
    if factory is None:
        raise ConfigurationError(
            f"no engine named {name!r} is available; known engines: {', '.join(sorted(ENGINES))}")
    return factory(spath, durability=durability, read_only=read_only, **dict(options or {}))
