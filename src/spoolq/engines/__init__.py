"""Storage engines and how a path picks one."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigurationError
from ._remoteurl import is_remote_url
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


_CALL = "factory(path, durability=..., read_only=..., **engine_options)"
_MEMBERS = ("name", *(member for member, value in vars(Engine).items()
                      if callable(value) and not member.startswith("_")))
"""What an engine has: its ``name`` and the methods of :class:`Engine`."""


def _signature(factory: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):  # none to read (a builtin): trust the documentation
        return None


def _same_function(a: object, b: object) -> bool:
    """Whether ``b`` is ``a`` defined again: the same named function or class of the same
    module (a module reloaded, a notebook cell run again)."""
    def where(f: object) -> tuple[object, object]:
        return getattr(f, "__module__", None), getattr(f, "__qualname__", None)

    qualname = where(a)[1]
    return isinstance(qualname, str) and "<lambda>" not in qualname and where(a) == where(b)


def register_engine(name: str, factory: EngineFactory, *, replace: bool = False) -> None:
    """Make ``engine=name`` open storage with ``factory``, which is called as
    ``factory(path, durability=..., read_only=..., **engine_options)`` and returns an
    engine.

    ConfigurationError when ``name`` is not a non-empty string, when ``factory`` is not
    callable or cannot be called so, and when ``name`` names an engine already (a built-in
    one too) unless ``replace=True``. Registering the same factory again (or the same
    function defined again, by a module reloaded) is harmless.
    """
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"engine name must be a non-empty string, not {name!r}")
    if not callable(factory):
        raise ConfigurationError(f"the factory of engine {name!r} must be callable, not "
                                 f"{type(factory).__name__} {factory!r}")
    signature = _signature(factory)
    if signature is not None:
        try:
            signature.bind("path", durability="commit", read_only=False)
        except TypeError as exc:
            raise ConfigurationError(f"the factory of engine {name!r} cannot be called as "
                                     f"{_CALL}: {exc}") from None
    old = ENGINES.get(name)
    if old is not None and old is not factory and not replace and not _same_function(
            old, factory):
        raise ConfigurationError(f"an engine named {name!r} is registered already (with "
                                 f"{old!r}); pass replace=True to replace it")
    ENGINES[name] = factory


def _lacking(engine: object) -> list[str]:
    """What ``engine`` lacks of an engine, as ``name`` and ``method()``. Looked up with
    getattr, so an engine that hands its methods on through ``__getattr__`` (a wrapper) has
    them, which ``isinstance(engine, Engine)`` denies from Python 3.12 on."""
    return [m if m == "name" else f"{m}()" for m in _MEMBERS
            if (m == "name" and not hasattr(engine, m))
            or (m != "name" and not callable(getattr(engine, m, None)))]


def _opened(name: str, factory: EngineFactory, path: str, durability: str, read_only: bool,
            options: dict[str, Any]) -> Engine:
    """``factory`` called as documented; ConfigurationError naming the options it does not
    take, or when what it returns lacks part of an engine (which is then closed)."""
    signature = _signature(factory)
    if signature is not None and options:
        try:
            signature.bind(path, durability=durability, read_only=read_only, **options)
        except TypeError:
            raise ConfigurationError(
                f"the {name} engine takes no option {', '.join(map(repr, sorted(options)))} "
                f"(its factory {factory!r} is called as {_CALL})") from None
    engine = factory(path, durability=durability, read_only=read_only, **options)
    missing = _lacking(engine)
    if engine is None:
        raise ConfigurationError(f"the factory of engine {name!r} returned None, not an engine")
    if missing:
        close = getattr(engine, "close", None)
        if callable(close):
            close()
        raise ConfigurationError(
            f"the factory of engine {name!r} returned a {type(engine).__name__}, which lacks "
            f"{', '.join(missing)}: an engine has every method of spoolq.Engine")
    return engine


def engine_name_for(path: str) -> str:
    """The engine a path picks: by scheme or suffix; an unknown suffix means sqlite."""
    if path == ":memory:":
        return "memory"
    if is_remote_url(path):
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
        missing = _lacking(engine)
        if missing:
            some = len(missing) < len(_MEMBERS)  # name all it lacks only if it has some
            raise ConfigurationError(
                f"engine must be a name or an object implementing spoolq.Engine, "
                f"not {type(engine).__name__}"
                + (f", which lacks {', '.join(missing)}" if some else ""))
        return engine
    spath = os.fspath(path)
    name = engine_name_for(spath) if engine is None else engine
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
    return _opened(name, factory, spath, durability, read_only, opts)
