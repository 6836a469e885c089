"""spoolq: a durable, disk-backed queue for Python, for threads and for asyncio.

>>> import spoolq
>>> with spoolq.SyncQueue.create(":memory:") as q:
...     q.put({"job": 1})
...     q.get()
{'job': 1}
"""

from __future__ import annotations

from .aio import Queue
from .batcher import Batcher
from .codec import Codec, Compressor, Serializer
from .engines import (
    Counts,
    Engine,
    Lease,
    LeasedRecord,
    StoredRecord,
    open_engine,
    register_engine,
)
from .errors import (
    AuthenticationError,
    ClosedError,
    ConfigurationError,
    CorruptError,
    Empty,
    EngineError,
    FormatError,
    Full,
    LeaseError,
    LockTimeout,
    QueueShutDown,
    SerializationError,
    SpoolqError,
    TLSMismatch,
    Unavailable,
)
from .message import Message
from .sync import SyncQueue

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "Batcher",
    "ClosedError",
    "Codec",
    "Compressor",
    "ConfigurationError",
    "CorruptError",
    "Counts",
    "Empty",
    "Engine",
    "EngineError",
    "FormatError",
    "Full",
    "Lease",
    "LeaseError",
    "LeasedRecord",
    "LockTimeout",
    "Message",
    "Queue",
    "QueueShutDown",
    "SerializationError",
    "Serializer",
    "SpoolqError",
    "StoredRecord",
    "SyncQueue",
    "TLSMismatch",
    "Unavailable",
    "__version__",
    "open_engine",
    "register_engine",
]
