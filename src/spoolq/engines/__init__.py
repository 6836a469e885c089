"""Storage engines and how a path picks one."""

from __future__ import annotations

import inspect
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
    SupportsRecordCheck,
    WaitCancel,
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
    "SupportsRecordCheck",
    "WaitCancel",
    "dead_queue_name",
    "engine_name_for",
    "open_engine",
    "register_engine",
]

EngineFactory = Callable[..., Engine]
"""Called as ``factory(path, durability=..., read_only=..., **engine_options)``."""


def _check_options(engine: str, cls: Callable[..., Engine], options: Mapping[str, Any]) -> None:
    """ConfigurationError naming the options ``cls`` does not take, with those it takes."""
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = sorted(name for name, p in params.items()
                   if p.kind is inspect.Parameter.KEYWORD_ONLY
                   and name not in {"read_only", "durability"})
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigurationError(
            f"the {engine} engine has no option {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(valid) or 'none'}")


def _sqlite(path: str, *, durability: str, read_only: bool = False, **options: Any) -> Engine:
    _check_options("sqlite", SQLiteEngine, options)
    options.setdefault("synchronous", "FULL" if durability == "fsync" else "NORMAL")
    return SQLiteEngine(path, read_only=read_only, **options)


def _memory(path: str, *, durability: str, read_only: bool = False, **options: Any) -> Engine:
    if options:
        raise ConfigurationError(f"the memory engine takes no options, got {sorted(options)}")
    return MemoryEngine()


def _lmdb(path: str, *, durability: str, read_only: bool = False, **options: Any) -> Engine:
    # "commit" keeps LMDB's data flush and drops the meta flush: the file stays sound on
    # power loss and only the last commit may be undone (see engines/lmdb.py).
    _check_options("lmdb", LMDBEngine, options)
    options.setdefault("sync", True)
    options.setdefault("metasync", durability == "fsync")
    return LMDBEngine(path, read_only=read_only, **options)


def _dbm(path: str, *, durability: str, read_only: bool = False, **options: Any) -> Engine:
    _check_options("dbm", DBMEngine, options)
    options.setdefault("fsync", durability == "fsync")
    return DBMEngine(path, read_only=read_only, **options)


def _pickle(path: str, *, durability: str, read_only: bool = False, **options: Any) -> Engine:
    _check_options("pickle", PickleEngine, options)
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
    _check_options("postgres", PostgresEngine, options)
    return PostgresEngine(path, durability=durability, read_only=read_only, **options)


def _remote(path: str, *, durability: str, read_only: bool = False, **options: Any) -> Engine:
    # The server's own durability setting decides how its commits are made.
    from .remote import RemoteEngine
    _check_options("remote", RemoteEngine, options)
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
    (pick by path). ``options`` may hold ``read_only`` too (a bool): the file is then
    opened read-only when either says so."""
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
    opts = dict(options or {})
    if "durability" in opts:
        raise ConfigurationError(
            "durability is a setting of the queue (durability=...), not an engine option")
    if "read_only" in opts:
        flag = opts.pop("read_only")
        if not isinstance(flag, bool):
            raise ConfigurationError(f"engine option read_only must be a bool, not {flag!r}")
        read_only = read_only or flag
    return factory(spath, durability=durability, read_only=read_only, **opts)
