"""The settings of a queue handle, checked once when it is created."""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .codec import COMPRESSORS, SERIALIZERS, Codec
from .engines import Engine
from .engines._remoteurl import is_remote_url, url_queue_name
from .engines.base import MAX_ATTEMPTS
from .errors import ConfigurationError
from .zdict import load_dictionaries

__all__ = ["DURABILITIES", "RESERVED_PREFIX", "Settings", "check_count", "check_seconds",
           "resolve_target", "setting_checks", "stored_codec"]

DURABILITIES = ("fsync", "commit", "buffer")


MAX_NAME_BYTES = 255
"""The longest queue name, in bytes of UTF-8: the same on every engine (LMDB's keys hold
some 500 bytes, and a name goes into keys with a prefix and a suffix)."""


RESERVED_PREFIX = "__spoolq_"
"""Names starting with this are spoolq's own queues in a file (such as its zstd
dictionaries): a queue handle cannot open them, so no program purges them by mistake."""


def check_queue_name(name: object) -> str:
    """``name`` as a queue name: ConfigurationError unless it is a non-empty string without
    NUL characters of at most MAX_NAME_BYTES bytes of UTF-8, not starting with
    :data:`RESERVED_PREFIX`."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"name must be a non-empty string, not {name!r}")
    # Its text, as a plain str: formatted, a str Enum gives "Name.JOBS", which the name
    # of the dead letters would take.
    name = str.__str__(name)
    if name.startswith(RESERVED_PREFIX):
        raise ConfigurationError(f"name {name!r} is reserved: names starting with "
                                 f"{RESERVED_PREFIX!r} are spoolq's own queues")
    if "\x00" in name:
        raise ConfigurationError(f"name {name!r} holds a NUL character, which no engine stores")
    try:
        size = len(name.encode())
    except UnicodeEncodeError as exc:
        raise ConfigurationError(f"name {name!r} cannot be written as UTF-8: {exc}") from None
    if size > MAX_NAME_BYTES:
        raise ConfigurationError(f"name is {size} bytes of UTF-8; a queue name takes at most "
                                 f"{MAX_NAME_BYTES}")
    return name


def check_count(name: str, value: object, minimum: int) -> int:
    """``value`` as a count of at least ``minimum``: TypeError unless it is an int (a bool
    is refused), ValueError when it is smaller."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value!r}")
    return value


def check_ids(ids: object) -> list[int] | None:
    """The ids of a ``requeue_dead``: None, or an iterable of ints >= 0 (not one int, and
    not a text or bytes, whose characters would be taken for ids)."""
    if ids is None:
        return None
    if isinstance(ids, (int, str, bytes, bytearray)) or not isinstance(ids, Iterable):
        raise TypeError(f"ids must be a list of ids (or None for all), not "
                        f"{type(ids).__name__} {ids!r}")
    return [check_count("ids", i, 0) for i in ids]


_LARGEST_SECONDS = sys.float_info.max  # an int past it cannot be added to a time


def check_seconds(name: str, value: object, *, positive: bool = False) -> float:
    """``value`` as a finite number of seconds, >= 0 (> 0 when ``positive``): TypeError
    unless it is an int or a float (a bool is refused), ValueError otherwise."""
    if (type(value) is float or type(value) is int) and 0 < value <= _LARGEST_SECONDS:
        return value  # the common case, in one test (a NaN fails it)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a number of seconds, not {type(value).__name__} {value!r}")
    if isinstance(value, int) and value > _LARGEST_SECONDS:
        raise ValueError(f"{name} must be a finite number of seconds, not an int of "
                         f"{value.bit_length()} bits (past the float range)")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, not {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else 'a non-negative number'}, "
                         f"not {value!r}")
    return value


@contextmanager
def setting_checks() -> Iterator[None]:
    """Report what :func:`check_count` and :func:`check_seconds` refuse in a setting as
    a :class:`ConfigurationError`."""
    try:
        yield
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(str(exc)) from None


_LONGEST_INTERVAL = threading.TIMEOUT_MAX
"""The longest ``poll_interval`` or ``flush_interval``: the queue waits on threads that long,
and a thread's wait refuses a longer timeout (OverflowError)."""


_INT64_MAX = (1 << 63) - 1


def _check_interval(name: str, value: object) -> None:
    if check_seconds(name, value, positive=True) > _LONGEST_INTERVAL:
        raise ValueError(f"{name} must be at most {_LONGEST_INTERVAL:.0f} seconds, "
                         f"not {value!r}")


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated settings of one queue handle."""

    name: str = "default"
    maxsize: int = 0
    durability: str = "commit"
    flush_items: int = 1000
    flush_interval: float = 1.0
    max_attempts: int | None = None
    poll_interval: float = 0.05
    compress_threshold: int = 128

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", check_queue_name(self.name))
        if self.durability not in DURABILITIES:
            raise ConfigurationError(
                f"durability must be one of {', '.join(DURABILITIES)}, not {self.durability!r}")
        with setting_checks():
            if check_count("maxsize", self.maxsize, -(2**63)) < 0:
                object.__setattr__(self, "maxsize", 0)  # no limit, as in queue.Queue
            check_count("flush_items", self.flush_items, 1)
            _check_interval("flush_interval", self.flush_interval)
            # No record reaches more than MAX_ATTEMPTS attempts, so a larger limit (2**31-1
            # and sys.maxsize are common ways to say "never") is none: engines get None,
            # which SQLite can bind. Past 64 bits it is refused, as SQLite did on a nack.
            if (self.max_attempts is not None
                    and check_count("max_attempts", self.max_attempts, 1) > MAX_ATTEMPTS):
                if self.max_attempts > _INT64_MAX:
                    raise ValueError(f"max_attempts must be at most {_INT64_MAX} (or None "
                                     f"for no limit), not {self.max_attempts!r}")
                object.__setattr__(self, "max_attempts", None)
            _check_interval("poll_interval", self.poll_interval)
            check_count("compress_threshold", self.compress_threshold, 0)


def resolve_target(path: str | os.PathLike[str], name: str | None,
                   engine: str | Engine | None, token: str | None,
                   engine_options: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
    """The queue name and engine options of ``create()``: a ``spoolq://`` URL's path names
    the queue (a different ``name=`` is an error); ``token`` goes to the remote engine."""
    if not os.fspath(path) and (engine is None or (isinstance(engine, str)
                                                  and engine != "memory")):
        # SQLite would open a temporary database, deleted with every item on close.
        raise ConfigurationError("the queue's path is empty: name a file (or ':memory:' "
                                 "for a queue kept in memory only)")
    if engine_options is not None and not isinstance(engine_options, Mapping):
        raise ConfigurationError(f"engine_options must be a dict of option names and values, "
                                 f"not {type(engine_options).__name__} {engine_options!r}")
    url_name = url_queue_name(path)
    if url_name is not None and name is not None and name != url_name:
        raise ConfigurationError(f"the URL names the queue {url_name!r}, not {name!r}")
    if token is not None:
        remote = engine == "remote" or (
            engine is None and is_remote_url(os.fspath(path)))
        if not remote:
            raise ConfigurationError("token= applies to spoolq:// servers only")
        engine_options = {**(engine_options or {}), "token": token}
    if url_name is not None:
        return url_name, engine_options
    return "default" if name is None else name, engine_options


def check_codecs(serializer: object, compressor: object) -> None:
    """ConfigurationError for a serializer or compressor that spoolq cannot use (None: the
    file's or the default), raised before anything opens or creates a file."""
    Codec("cbor" if serializer is None else serializer,
          "zstd" if compressor is None else compressor)


def _custom_codec(queue: str, kind: str, name: str) -> ConfigurationError:
    return ConfigurationError(
        f"queue {queue!r} was created with the {kind} {name!r}, which spoolq does not have "
        f"built in: open it with {kind}= set to that {kind} object")


def stored_codec(engine: Engine, settings: Settings, serializer: object,
                 compressor: object, *, store: bool = True) -> Codec:
    """The codec of the queue ``settings.name`` in ``engine``: the settings the file stores,
    which a new queue stores first. Another serializer than the stored one is a
    :class:`ConfigurationError`; another compressor changes it for new records. Loads the
    queue's zstd dictionaries. With ``store`` false (an engine opened read-only) nothing is
    written, and durability "buffer" is a ConfigurationError: its puts would return before
    a write that can never happen."""
    if not store and settings.durability == "buffer":
        raise ConfigurationError("durability='buffer' cannot be used with an engine opened "
                                 "read-only (engine_options read_only): buffered puts would "
                                 "return and never be written")
    key = f"queue/{settings.name}/"
    stored_ser = engine.get_meta(key + "serializer")
    stored_comp = engine.get_meta(key + "compressor")
    if stored_ser is not None:
        stored = stored_ser.decode()
        if serializer is None and stored == "pickle":
            raise ConfigurationError(
                f"queue {settings.name!r} stores pickled items, and unpickling runs code from "
                "the file: open it with serializer='pickle' if you trust the file")
        wanted = serializer if serializer is not None else stored
        try:
            codec_probe = Codec(wanted, "none")
        except ConfigurationError as exc:
            if serializer is None and stored not in SERIALIZERS:
                raise _custom_codec(settings.name, "serializer", stored) from exc
            raise
        if codec_probe.serializer_name != stored:
            raise ConfigurationError(
                f"queue {settings.name!r} was created with serializer {stored!r}; "
                f"it cannot be reopened with {codec_probe.serializer_name!r}")
        serializer = wanted
        if compressor is None:
            compressor = stored_comp.decode() if stored_comp else "zstd"
    try:
        codec = Codec("cbor" if serializer is None else serializer,
                      "zstd" if compressor is None else compressor,
                      threshold=settings.compress_threshold)
    except ConfigurationError as exc:
        if (stored_comp is not None and compressor == stored_comp.decode()
                and compressor not in COMPRESSORS):
            raise _custom_codec(settings.name, "compressor", compressor) from exc
        raise
    if not store:
        pass
    elif stored_ser is None:
        engine.set_meta(key + "serializer", codec.serializer_name.encode())
    if store and (stored_comp is None or stored_comp.decode() != codec.compressor_name):
        engine.set_meta(key + "compressor", codec.compressor_name.encode())
    load_dictionaries(engine, settings.name, codec)
    return codec
