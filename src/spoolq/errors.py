"""The spoolq exception tree.

Every error spoolq raises on its own account derives from :class:`SpoolqError`.
``Empty``, ``Full`` and ``QueueShutDown`` also derive from the standard
library's exceptions of the same meaning, so code written for ``queue.Queue``
or ``asyncio.Queue`` keeps working unchanged.
"""

from __future__ import annotations

import asyncio
import queue as _stdqueue

__all__ = [
    "AuthenticationError",
    "ClosedError",
    "ConfigurationError",
    "CorruptError",
    "Empty",
    "EngineError",
    "FormatError",
    "Full",
    "LeaseError",
    "LockTimeout",
    "QueueShutDown",
    "SerializationError",
    "SpoolqError",
    "TLSMismatch",
    "Unavailable",
]


class SpoolqError(Exception):
    """Root of every error that spoolq raises on its own account."""


class ConfigurationError(SpoolqError, ValueError):
    """A setting is invalid, or conflicts with the settings stored in the file."""


class SerializationError(SpoolqError, TypeError):
    """An item cannot be serialized (or a record cannot be deserialized)."""


class EngineError(SpoolqError):
    """The storage engine failed; the original error is kept as ``__cause__``."""


class Unavailable(EngineError):
    """The engine's server (a spoolq server, PostgreSQL) cannot be reached just now: the
    connection failed or was lost. A ``get`` or ``lease`` that blocks waits until it is
    back (or its timeout passes, and then raises this)."""


class CorruptError(EngineError):
    """A file or a record is damaged: a failed checksum, a truncated header."""


class FormatError(EngineError):
    """A file is not a spoolq queue, or has a format version this release cannot read."""


class LockTimeout(EngineError):
    """The file stayed locked by another writer for longer than the timeout."""


class TLSMismatch(ConfigurationError, EngineError):
    """The client and the server disagree on TLS: one side speaks it and the other does
    not, or the client cannot verify the server's certificate. A setting to fix, not an
    outage to wait out (no :class:`Unavailable`); an :class:`EngineError` as well, as
    every failed TLS handshake is."""


class ClosedError(SpoolqError):
    """The queue (or its engine) has been closed."""


class LeaseError(SpoolqError):
    """An ack or nack named a lease that is unknown, already settled or expired."""


class AuthenticationError(SpoolqError, PermissionError):
    """A server refused the token offered to it."""


class Empty(SpoolqError, _stdqueue.Empty, asyncio.QueueEmpty):
    """Raised by ``get_nowait`` on an empty queue, or when a timeout passes."""


class Full(SpoolqError, _stdqueue.Full, asyncio.QueueFull):
    """Raised by ``put_nowait`` on a full queue, or when a timeout passes."""


_shutdown_bases: tuple[type[BaseException], ...] = tuple(
    base
    for base in (getattr(_stdqueue, "ShutDown", None), getattr(asyncio, "QueueShutDown", None))
    if base is not None
)


class QueueShutDown(SpoolqError, *_shutdown_bases):  # type: ignore[misc]
    """Raised by ``put`` after ``shutdown()``, and by ``get`` once a shut-down queue is drained.

    On Python 3.13+ it also derives from ``queue.ShutDown`` and ``asyncio.QueueShutDown``.
    """
