"""The spoolq wire protocol, without sockets: bytes in, events out.

Both the server (:mod:`spoolq.server`) and the remote engine
(:mod:`spoolq.engines.remote`) use this module; it never reads or writes a
socket, so it is tested without a network. docs/protocol.md describes the same
format for implementers in other languages.

A connection starts with an 8-byte preamble in each direction (``b"SPOOLQ"``
and a big-endian u16 version). After it, everything is a frame::

    u32 length | u8 type | u32 request id | CBOR body (length - 5 bytes)

``length`` counts the type, the id and the body. The client sends ``AUTH``
and ``REQUEST`` frames, the server answers each with a ``REPLY`` or an
``ERROR`` frame carrying the same id; replies may come in any order.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from enum import IntEnum
from functools import partial
from io import BytesIO
from itertools import chain
from typing import Any, NamedTuple, TypeVar

import cbor2

from . import _serverlimits
from .engines._checks import MAX_META_KEY_BYTES
from .engines.base import Counts, LeasedRecord, StoredRecord
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
    Unavailable,
)

__all__ = [
    "DEFAULT_MAX_FRAME", "ID_OPS", "MAGIC", "MAX_AUTH_FRAME", "MAX_ERROR_MESSAGE",
    "MAX_QUEUE_BYTES", "MIN_MAX_REPLY", "NOT_TLS_REASONS", "OPS", "VERSION", "WRITE_OPS",
    "BadRequest", "ClientProtocol",
    "ErrorCode", "Frame", "FrameDecoder", "FrameTooLarge", "FrameType",
    "ProtocolError", "Reply", "ReplyTooLarge", "Request", "ServerProtocol", "VersionMismatch",
    "code_for",
    "decode_body", "decode_counts", "decode_leased", "decode_records", "encode_error",
    "encode_frame", "encode_leased", "encode_preamble", "encode_records", "encode_reply",
    "error_for", "ids_reply_size", "max_ids", "parse_preamble", "parse_request",
    "record_count",
]

MAGIC = b"SPOOLQ"
VERSION = 2
MIN_VERSION = 2  # version 1 sent records as one array per record
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
MIN_MAX_REPLY = 1024
"""The smallest reply limit a client may ask for.

Every reply fits in a client's ``max_reply``: the server sends fewer records
rather than more, answers a list of queues or owners or a metadata value too
large for it with a CONFIGURATION error, and cuts error messages to
:data:`MAX_ERROR_MESSAGE` bytes, which fit in this limit. The replies to
``append``, ``ack`` and ``release`` hold an id per record of the request (at
most :func:`ids_reply_size` bytes): a client keeps those requests within
:func:`max_ids` records, as :class:`ClientProtocol` checks.
"""
MAX_ERROR_MESSAGE = 960
"""The longest error message an ERROR frame carries, in bytes of UTF-8."""
ID_OPS: dict[str, str] = {"append": "records", "ack": "deliveries", "release": "deliveries"}
"""The ops whose reply is an array of ids, one at most per element of this field."""
_ID_REPLY_OVERHEAD = 18  # the frame's header and the array's, at most
_ID_BYTES = 9  # a uint in CBOR, at most
MAX_AUTH_FRAME = 65536
"""The largest frame a server that wants a token reads before the client authenticated."""
PREAMBLE = struct.Struct(">6sH")
HEADER = struct.Struct(">IBI")
_LENGTH = struct.Struct(">I")
_TYPE_ID = struct.Struct(">BI")
MAX_ID = 2**32 - 1


class ProtocolError(EngineError):
    """The peer broke the wire protocol (or the connection ended mid-frame)."""


class VersionMismatch(ConfigurationError, ProtocolError):
    """The server speaks no protocol version this client does (or the reverse): one of
    them needs upgrading, a setting to fix rather than an outage to wait out."""


class FrameTooLarge(ProtocolError):
    """A frame is longer than the receiver's limit; it is refused before it is read."""


class ReplyTooLarge(ConfigurationError):
    """The reply to a request of this many records could be larger than the client
    accepts; :attr:`fits` records at a time can go. Raised before anything is sent."""

    def __init__(self, message: str, fits: int) -> None:
        super().__init__(message)
        self.fits = fits


def ids_reply_size(n: int) -> int:
    """The largest reply frame of ``n`` ids (the reply to an append, ack or release)."""
    return _ID_REPLY_OVERHEAD + _ID_BYTES * n


def max_ids(max_reply: int) -> int:
    """How many records an append, ack or release may name so that its reply of ids
    fits in ``max_reply`` bytes."""
    return max((max_reply - _ID_REPLY_OVERHEAD) // _ID_BYTES, 1)


class FrameType(IntEnum):
    """The kind of a frame (byte 4 of every frame)."""

    AUTH = 1
    REQUEST = 2
    REPLY = 3
    ERROR = 4


_REQUEST, _REPLY, _ERROR = int(FrameType.REQUEST), int(FrameType.REPLY), int(FrameType.ERROR)


class ErrorCode(IntEnum):
    """Codes of ERROR frames. 1-9: the connection is closed after the frame."""

    PROTOCOL = 1
    FRAME_TOO_LARGE = 2
    UNSUPPORTED_VERSION = 3
    AUTH = 4
    TIMEOUT = 5
    TOO_MANY_CONNECTIONS = 6
    BAD_REQUEST = 10
    VALUE = 11
    EMPTY = 20
    FULL = 21
    LEASE = 22
    SHUT_DOWN = 23
    CLOSED = 24
    CONFIGURATION = 25
    SERIALIZATION = 26
    FORMAT = 30
    CORRUPT = 31
    LOCK_TIMEOUT = 32
    ENGINE = 33
    SPOOLQ = 40
    INTERNAL = 50
    SERVER_STOPPING = 51


class BadRequest(ProtocolError):
    """A well-formed frame whose request names an unknown op or has bad arguments."""


# Most specific first: the first class an exception is an instance of wins.
_CODES: tuple[tuple[type[BaseException], ErrorCode], ...] = (
    (FrameTooLarge, ErrorCode.FRAME_TOO_LARGE),
    (BadRequest, ErrorCode.BAD_REQUEST),
    (ProtocolError, ErrorCode.PROTOCOL),
    (AuthenticationError, ErrorCode.AUTH),
    (Empty, ErrorCode.EMPTY),
    (Full, ErrorCode.FULL),
    (LeaseError, ErrorCode.LEASE),
    (QueueShutDown, ErrorCode.SHUT_DOWN),
    (ClosedError, ErrorCode.CLOSED),
    (ConfigurationError, ErrorCode.CONFIGURATION),
    (SerializationError, ErrorCode.SERIALIZATION),
    (FormatError, ErrorCode.FORMAT),
    (CorruptError, ErrorCode.CORRUPT),
    (LockTimeout, ErrorCode.LOCK_TIMEOUT),
    (EngineError, ErrorCode.ENGINE),
    (SpoolqError, ErrorCode.SPOOLQ),
    (ValueError, ErrorCode.VALUE),
    (TypeError, ErrorCode.VALUE),
)
_CLASSES: dict[int, Callable[[str], Exception]] = {
    ErrorCode.UNSUPPORTED_VERSION: VersionMismatch, ErrorCode.TIMEOUT: ProtocolError,
    ErrorCode.INTERNAL: EngineError, ErrorCode.SERVER_STOPPING: ClosedError,
    ErrorCode.TOO_MANY_CONNECTIONS: Unavailable,
    **{code: cls for cls, code in reversed(_CODES) if issubclass(cls, Exception)},
}


def code_for(exc: BaseException) -> ErrorCode:
    """The error code an exception travels as (INTERNAL for anything unexpected)."""
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return ErrorCode.INTERNAL


def error_for(code: int, message: str) -> Exception:
    """The exception a client raises for an ERROR frame: the class the server raised."""
    factory = _CLASSES.get(code, EngineError)
    return factory(message)


# ---- frames -----------------------------------------------------------------------------


class Frame(NamedTuple):
    """One decoded frame; ``body`` is still CBOR."""

    type: int
    id: int
    body: bytes


def encode_frame(ftype: int, ident: int, body: Any) -> bytes:
    """A whole frame: header plus ``body`` encoded as CBOR."""
    payload = cbor2.dumps(body)
    return HEADER.pack(len(payload) + 5, ftype, ident) + payload


def encode_reply(ident: int, value: Any) -> bytes:
    """A REPLY frame carrying ``value``."""
    payload = cbor2.dumps(value)
    return HEADER.pack(len(payload) + 5, _REPLY, ident) + payload


def encode_error(ident: int, code: int, message: str) -> bytes:
    """An ERROR frame; ``ident`` 0 means the error concerns the whole connection.

    A message longer than :data:`MAX_ERROR_MESSAGE` bytes is cut (ending in
    ``…``), so the frame fits in any client's ``max_reply``. A character UTF-8 cannot
    hold (a lone surrogate, as an undecodable file name has) travels escaped."""
    raw = message.encode("utf-8", "backslashreplace")
    if len(raw) > MAX_ERROR_MESSAGE:
        message = raw[:MAX_ERROR_MESSAGE - 3].decode("utf-8", "ignore") + "…"
    else:
        message = raw.decode("utf-8")
    return encode_frame(FrameType.ERROR, ident, {"code": int(code), "message": message})


class _NoTags(dict[int, Any]):
    """cbor2's ``semantic_decoders``, refusing every tag but bignums (2 and 3: a number
    beyond 64 bits is a BAD_REQUEST, not a broken frame). The protocol uses no tags, and
    cbor2 acts on some it knows (tag 35 compiles a regular expression: seconds for a few
    MiB, on the event loop that serves every client)."""

    def __missing__(self, tag: int) -> Any:
        if tag in (2, 3):
            raise KeyError(tag)  # cbor2's own decoder: linear in the number's size
        raise ValueError(f"CBOR tag {tag}: the protocol uses no tags")


_NO_TAGS = _NoTags()


def decode_body(frame: Frame) -> Any:
    """The CBOR value of a frame's body; :class:`ProtocolError` if it is not exactly one
    CBOR item (bytes after the item are an error, never ignored), or holds a tag (but a
    bignum) or a map key that is no text or bytes: the protocol uses neither, and keys
    that all hash alike (multiples of 2**61 - 1) would take a dict quadratic time."""
    body = frame.body
    # A decoder reading the whole body at once: it hands back what it read beyond the
    # item (seeks back), so the position after the item tells whether bytes are left.
    stream = BytesIO(body)
    try:
        value = cbor2.CBORDecoder(stream, read_size=max(len(body), 1),
                                  semantic_decoders=_NO_TAGS,
                                  strict_hashable_types=True).decode()
    except Exception as exc:  # cbor2 raises several types on hostile input
        raise ProtocolError(f"frame {frame.id}: the body is not valid CBOR ({exc})") from None
    end = stream.tell()
    if end != len(body):
        raise ProtocolError(f"frame {frame.id}: the body is not one CBOR item "
                            f"({len(body) - end} bytes follow the item)")
    return value


class FrameDecoder:
    """Turns bytes, in chunks of any size, into frames.

    A length prefix above ``max_frame`` raises :class:`FrameTooLarge` as soon
    as its four bytes arrive, before any of the body is kept. After an error
    the decoder stays failed: every later ``feed`` raises again.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 5:
            raise ConfigurationError(f"max_frame must be >= 5, not {max_frame!r}")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._failed: ProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes held of a frame not yet complete."""
        return len(self._buf)

    def pending_header(self) -> tuple[int, int, int] | None:
        """``(length, type, id)`` of the frame not yet complete, once its header is in."""
        if len(self._buf) < HEADER.size:
            return None
        length, ftype, ident = HEADER.unpack_from(self._buf)
        return int(length), int(ftype), int(ident)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add bytes; return every frame now complete, in order."""
        if self._failed is not None:
            raise self._failed
        buf = self._buf
        if buf:
            buf += data
            src: bytes | bytearray | memoryview = buf
        else:
            src = data  # the common case: no partial frame, parse without copying first
        frames: list[Frame] = []
        pos, end = 0, len(src)
        try:
            while end - pos >= 4:
                (length,) = _LENGTH.unpack_from(src, pos)
                if length > self.max_frame:
                    raise FrameTooLarge(
                        f"a frame of {length} bytes exceeds the limit of {self.max_frame}")
                if length < 5:
                    raise ProtocolError(f"a frame length of {length} is shorter than its header")
                if end - pos < 4 + length:
                    break
                ftype, ident = _TYPE_ID.unpack_from(src, pos + 4)
                frames.append(Frame(ftype, ident, bytes(src[pos + 9:pos + 4 + length])))
                pos += 4 + length
        except ProtocolError as exc:
            self._failed = exc
            buf.clear()
            raise
        if src is buf:
            if pos:
                del buf[:pos]
        elif pos < end:
            buf += src[pos:]
        return frames


def encode_preamble(version: int = VERSION) -> bytes:
    """The 8 bytes each side sends first."""
    return PREAMBLE.pack(MAGIC, version)


NOT_TLS_REASONS = frozenset({
    "WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE", "HTTP_REQUEST",
    "PACKET_LENGTH_TOO_LONG", "UNEXPECTED_RECORD", "RECORD_LENGTH_MISMATCH",
    "ENCRYPTED_LENGTH_TOO_LONG", "WRONG_SSL_VERSION"})
"""OpenSSL's reasons (``ssl.SSLError.reason``) for a TLS handshake whose peer sent bytes
that are no TLS record: a peer without TLS, such as spoolq's greeting."""


def _looks_like_tls(data: bytes | bytearray) -> bool:
    """Whether ``data`` starts as a TLS record does: a handshake (a client's hello) or an
    alert, of TLS 1.0 to 1.3 (all say major version 3)."""
    return len(data) >= 2 and data[0] in (0x15, 0x16) and data[1] == 3


def parse_preamble(data: bytes) -> int:
    """The version in a peer's preamble; :class:`ProtocolError` if it is not spoolq's."""
    magic, version = PREAMBLE.unpack(data)
    if magic != MAGIC:
        raise ProtocolError("the peer does not speak the spoolq protocol (bad magic)")
    return int(version)


# ---- requests ---------------------------------------------------------------------------


# Numbers the engines can store: 64-bit signed integers, finite floats. A value beyond
# them is the client's mistake (BAD_REQUEST), never an engine failure.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def _is_int(v: object) -> bool:
    return type(v) is int and _INT_MIN <= v <= _INT_MAX


def _is_uint(v: object) -> bool:
    return type(v) is int and 0 <= v <= _INT_MAX


def _is_num(v: object) -> bool:
    if type(v) is float:
        return math.isfinite(v)
    return type(v) is int and _INT_MIN <= v <= _INT_MAX


def _ints_in_range(values: list[Any], low: int = _INT_MIN) -> bool:
    """Every element (already known to be an int) lies in ``low`` .. the 64-bit maximum."""
    return not values or (min(values) >= low and max(values) <= _INT_MAX)


def _is_str(v: object) -> bool:
    return isinstance(v, str)


MAX_QUEUE_BYTES = 260
"""The longest queue name a request may give, in bytes of UTF-8: a queue name of
``spoolq.settings.MAX_NAME_BYTES`` (255) and the ``.dead`` of its dead letters. Longer
ones, empty ones and ones holding NUL are what some engine cannot store."""


def _is_queue(v: object) -> bool:
    return (type(v) is str and 0 < len(v) <= MAX_QUEUE_BYTES and "\x00" not in v
            and len(v.encode("utf-8", "surrogatepass")) <= MAX_QUEUE_BYTES)


def _is_bytes(v: object) -> bool:
    return isinstance(v, bytes)


def _opt(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: v is None or check(v)


def _list_of_type(kind: type) -> Callable[[object], bool]:
    # exact type checks done in C (the set of the element types): these lists can be long
    kinds = {kind}
    return lambda v: isinstance(v, list) and set(map(type, v)) <= kinds


def _is_sizes(v: object) -> bool:
    return isinstance(v, list) and set(map(type, v)) <= _INT and _ints_in_range(v, 0)


def _is_ids(v: object) -> bool:
    return isinstance(v, list) and set(map(type, v)) <= _INT and _ints_in_range(v, 0)


def _list_of(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def _is_delivery(v: object) -> bool:
    return isinstance(v, list) and len(v) == 2 and _is_int(v[0]) and _is_int(v[1])


_new_record = partial(tuple.__new__, StoredRecord)  # without the generated __new__
RECORD_FIELDS = 6
"""Array elements per record: id, data, raw_size, attempts, enqueued_at, reason."""
_INT: set[type] = {int}
_BYTES: set[type] = {bytes}
_FLOAT: set[type] = {float}
_TIME: set[type] = {int, float}
_REASON: set[type] = {str, type(None)}


def _record_fields(v: object) -> tuple[list[Any], ...] | None:
    """The six fields of a flat records array, each as a list; None if it is not one."""
    if type(v) is not list or len(v) % RECORD_FIELDS:
        return None
    ids, data, sizes, attempts, times, reasons = (v[0::6], v[1::6], v[2::6], v[3::6],
                                                  v[4::6], v[5::6])
    ints = ids + sizes + attempts  # uints, all three
    # set(map(type, ...)) checks exact types in C (a bool is no id): the arrays can be long
    if not (set(map(type, ints)) <= _INT and set(map(type, data)) <= _BYTES
            and set(map(type, reasons)) <= _REASON and _ints_in_range(ints, 0)):
        return None
    time_types = set(map(type, times))
    if time_types <= _FLOAT:
        if not all(map(math.isfinite, times)):
            return None
    elif not (time_types <= _TIME and all(map(_is_num, times))):
        return None
    return ids, data, sizes, attempts, times, reasons


def _is_records(v: object) -> bool:
    return _record_fields(v) is not None


def _is_lease(v: object) -> bool:
    return (isinstance(v, list) and len(v) == 2 and _is_str(v[0]) and _is_num(v[1]))


def _is_count(v: object) -> bool:
    return _is_int(v) and 0 <= v < 2**31  # type: ignore[operator]


def _is_bool(v: object) -> bool:
    return isinstance(v, bool)


def _is_wait(v: object) -> bool:
    return _is_num(v) and 0 <= v <= 86400  # type: ignore[operator]




def _is_meta_key(v: object) -> bool:
    return (type(v) is str and 0 < len(v) <= MAX_META_KEY_BYTES and "\x00" not in v
            and len(v.encode("utf-8", "surrogatepass")) <= MAX_META_KEY_BYTES)


_Check = Callable[[object], bool]
_E = TypeVar("_E", bound=SpoolqError)
# op -> {field: (check, default)}; a default of ... marks a required field.
OPS: dict[str, dict[str, tuple[_Check, Any]]] = {
    "hello": {"max_reply": (_opt(_is_uint), None), "client": (_opt(_is_str), None)},
    "bye": {},
    "append": {"queue": (_is_queue, ...), "records": (_list_of_type(bytes), ...),
               "sizes": (_is_sizes, ...), "now": (_is_num, ...)},
    "take": {"queue": (_is_queue, ...), "n": (_is_count, ...), "now": (_is_num, ...),
             "lease": (_opt(_is_lease), None), "wait": (_is_wait, 0.0),
             "max_attempts": (_opt(_is_uint), None)},
    "restore": {"queue": (_is_queue, ...), "records": (_is_records, ...)},
    "ack": {"queue": (_is_queue, ...), "deliveries": (_list_of(_is_delivery), ...),
            "owner": (_is_str, ...)},
    "release": {"queue": (_is_queue, ...), "deliveries": (_list_of(_is_delivery), ...),
                "owner": (_is_str, ...), "not_before": (_is_num, ...),
                "max_attempts": (_opt(_is_uint), None), "count_attempt": (_is_bool, True),
                "reason": (_is_str, "")},
    "expire": {"queue": (_is_queue, ...), "now": (_is_num, ...),
               "owners": (_list_of(_is_str), []), "max_attempts": (_opt(_is_uint), None)},
    "peek": {"queue": (_is_queue, ...), "n": (_is_count, ...), "offset": (_is_count, 0)},
    "peek_leased": {"queue": (_is_queue, ...), "n": (_is_count, ...),
                    "offset": (_is_count, 0)},
    "counts": {"queue": (_is_queue, ...)},
    "owners": {"queue": (_is_queue, ...)},
    "move": {"src": (_is_queue, ...), "dst": (_is_queue, ...),
             "ids": (_opt(_is_ids), None)},
    "purge": {"queue": (_is_queue, ...)},
    "queues": {},
    "get_meta": {"key": (_is_meta_key, ...)},
    "set_meta": {"key": (_is_meta_key, ...), "value": (_is_bytes, ...)},
    "wait": {"queue": (_is_queue, ...), "timeout": (_is_wait, ...)},
}
WRITE_OPS = frozenset({"append", "take", "restore", "ack", "release", "expire", "move",
                       "purge", "set_meta"})


class Request(NamedTuple):
    """A validated request: ``args`` holds every field of the op, defaults filled in."""

    id: int
    op: str
    args: dict[str, Any]


_MISSING = object()
# OPS as tuples, for the loop below: (field, check, default) in order.
_SPECS: dict[str, tuple[tuple[str, _Check, Any], ...]] = {
    op: tuple((key, check, default) for key, (check, default) in fields.items())
    for op, fields in OPS.items()}


def parse_request(ident: int, body: Any) -> Request:
    """Validate a REQUEST body; :class:`BadRequest` names what is wrong."""
    if type(body) is not dict:
        raise BadRequest(f"request {ident}: the body must be a map")
    op = body.get("op")
    spec = _SPECS.get(op) if isinstance(op, str) else None
    if spec is None or not isinstance(op, str):
        raise BadRequest(f"request {ident}: unknown op {op!r}")
    args: dict[str, Any] = {}
    get = body.get
    for key, check, default in spec:
        value = get(key, _MISSING)
        if value is _MISSING:
            if default is ...:
                raise BadRequest(f"request {ident} ({op}): missing field {key!r}")
            value = list(default) if isinstance(default, list) else default
        elif not check(value):
            if key in ("queue", "src", "dst") and type(value) is str:
                raise BadRequest(f"request {ident} ({op}): a queue name is 1 to "
                                 f"{MAX_QUEUE_BYTES} bytes of UTF-8 without NUL, not {value!r:.80}")
            raise BadRequest(f"request {ident} ({op}): bad value for {key!r}")
        args[key] = value
    if op == "append" and len(args["records"]) != len(args["sizes"]):
        raise BadRequest(f"request {ident} (append): records and sizes differ in length")
    return Request(ident, op, args)


def encode_records(records: Sequence[StoredRecord]) -> list[Any]:
    """Records as they travel: one flat array, six elements per record
    (``id, data, raw_size, attempts, enqueued_at, reason``), not an array per
    record: a batch is one CBOR array whatever its length."""
    return list(chain.from_iterable(records))


def record_count(value: Sequence[Any]) -> int:
    """How many records an :func:`encode_records` value holds."""
    return len(value) // RECORD_FIELDS


def decode_records(value: Any) -> list[StoredRecord]:
    """The inverse of :func:`encode_records`; :class:`ProtocolError` on a bad shape."""
    fields = _record_fields(value)
    if fields is None:
        raise ProtocolError("the server sent records of an unexpected shape")
    ids, data, sizes, attempts, times, reasons = fields
    if not set(map(type, times)) <= _FLOAT:
        times = [float(t) for t in times]  # a peer may send whole seconds as integers
    return list(map(_new_record, zip(ids, data, sizes, attempts, times, reasons,
                                     strict=True)))


def encode_leased(leased: Sequence[LeasedRecord]) -> list[Any]:
    """Leased records as they travel: ``[records, owners, untils]``, the records as
    :func:`encode_records` sends them and their owners and lease ends in the same order."""
    return [encode_records([r.record for r in leased]), [r.owner for r in leased],
            [r.until for r in leased]]


def decode_leased(value: Any) -> list[LeasedRecord]:
    """The inverse of :func:`encode_leased`; :class:`ProtocolError` on a bad shape."""
    if not (isinstance(value, list) and len(value) == 3 and _list_of(_is_str)(value[1])
            and _list_of(_is_num)(value[2])):
        raise ProtocolError("the server sent leased records of an unexpected shape")
    records = decode_records(value[0])
    if not len(records) == len(value[1]) == len(value[2]):
        raise ProtocolError("the server sent leased records of an unexpected shape")
    return [LeasedRecord(rec, owner, float(until))
            for rec, owner, until in zip(records, value[1], value[2], strict=True)]


def decode_counts(value: Any) -> Counts:
    """Counts travel as ``[ready, leased, stored_bytes, raw_bytes]``."""
    if not isinstance(value, list) or len(value) != 4 or not all(_is_int(v) for v in value):
        raise ProtocolError("the server sent counts of an unexpected shape")
    return Counts(*value)


# ---- connection state machines ----------------------------------------------------------


class ServerProtocol:
    """The server's side of one connection.

    Feed it received bytes with :meth:`receive_data`; it returns the requests
    to run and leaves in :attr:`outbox` the bytes to send (preamble, auth
    replies, error frames). When it raises :class:`ProtocolError` or
    :class:`AuthenticationError` it has queued an ERROR frame: send the
    outbox, then close the connection.
    """

    def __init__(self, *, max_frame: int = DEFAULT_MAX_FRAME, token: str | None = None) -> None:
        self.decoder = FrameDecoder(max_frame)
        # What decoding one body may take in memory (see spoolq._serverlimits)
        self.decode_budget = _serverlimits.decode_budget(max_frame)
        self.outbox = bytearray()
        self.version: int | None = None
        self.authenticated = token is None
        # Compared as digests: compare_digest takes no time to tell lengths apart.
        self._token = None if token is None else hashlib.sha256(token.encode()).digest()
        self._head = bytearray()
        self._failed: ProtocolError | AuthenticationError | None = None

    @property
    def ready(self) -> bool:
        """Whether the handshake (preamble and, with a token, auth) is complete."""
        return self.version is not None and self.authenticated and self._failed is None

    @property
    def pending(self) -> int:
        """Bytes held of an incomplete preamble or frame."""
        return len(self._head) + self.decoder.pending

    def data_to_send(self) -> bytes:
        """Take the queued outgoing bytes."""
        out = bytes(self.outbox)
        self.outbox.clear()
        return out

    def _fail(self, exc: _E, ident: int = 0) -> _E:
        self.outbox += encode_error(ident, code_for(exc), str(exc))
        return exc

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Request]:
        """Consume bytes; return the complete, valid requests in order.

        Once it raised, the connection is refused: every later call raises the same
        error again, reading nothing (neither a new handshake nor a request)."""
        if self._failed is not None:
            raise self._failed
        try:
            return self._receive(data)
        except (ProtocolError, AuthenticationError) as exc:
            self._failed = exc
            raise

    def _receive(self, data: bytes | bytearray | memoryview) -> list[Request]:
        if self.version is None:
            self._head += data
            if len(self._head) < PREAMBLE.size:
                return []
            try:
                version = parse_preamble(bytes(self._head[:PREAMBLE.size]))
            except ProtocolError as exc:
                refused = exc
                if _looks_like_tls(self._head):
                    refused = ProtocolError(
                        "the client speaks TLS to this server, which runs without TLS (no "
                        "--tls-cert): does its URL say tls=1 or ca= by mistake?")
                self._head.clear()
                raise self._fail(refused) from None
            data = self._head[PREAMBLE.size:]
            self._head.clear()
            self.version = min(version, VERSION)
            self.outbox += encode_preamble(self.version)
            if version < MIN_VERSION:
                spoken = (f"version {VERSION}" if MIN_VERSION == VERSION
                          else f"versions {MIN_VERSION} to {VERSION}")
                refused = ProtocolError(f"protocol version {version} is not supported: this "
                                        f"server speaks {spoken}")
                self.outbox += encode_error(0, ErrorCode.UNSUPPORTED_VERSION, str(refused))
                raise refused
        if not self.authenticated:
            self._head += data
            data = self._authenticate()
            if not self.authenticated:
                return []
        try:
            frames = self.decoder.feed(data)
        except ProtocolError as exc:
            raise self._fail(exc) from None
        requests: list[Request] = []
        for frame in frames:
            request = self._frame(frame)
            if request is not None:
                requests.append(request)
        return requests

    def _authenticate(self) -> bytearray:
        """Read the AUTH frames held in ``_head`` until one is accepted; return the bytes
        after it (nothing while the client has not authenticated).

        Each frame is judged by its header alone, before its body is read, and frame by
        frame, so the answer does not depend on how the bytes were cut into reads: a frame
        of another type gets code 4 (whatever its length), an AUTH frame above
        :data:`MAX_AUTH_FRAME` (or the server's ``max_frame``) code 2, each with its id."""
        head = self._head
        limit = min(MAX_AUTH_FRAME, self.decoder.max_frame)
        while len(head) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(head)
            if length < 5:
                head.clear()
                raise self._fail(ProtocolError(
                    f"a frame length of {length} is shorter than its header"))
            if len(head) < HEADER.size:
                break
            ftype, ident = _TYPE_ID.unpack_from(head, _LENGTH.size)
            if ftype != FrameType.AUTH:
                head.clear()
                raise self._fail(AuthenticationError("the server requires a token"), ident)
            if length > limit:
                head.clear()
                raise self._fail(FrameTooLarge(
                    f"an AUTH frame of {length} bytes exceeds the limit of {limit}"), ident)
            if len(head) < 4 + length:
                break
            frame = Frame(ftype, ident, bytes(head[HEADER.size:4 + length]))
            del head[:4 + length]
            self._frame(frame)
            if self.authenticated:
                rest = head[:]
                head.clear()
                return rest
        return bytearray()

    def _frame(self, frame: Frame) -> Request | None:
        if frame.id == 0:
            raise self._fail(ProtocolError("request id 0 is reserved"))
        too_costly = _serverlimits.decode_cost(frame.body, self.decode_budget)
        if frame.type == FrameType.AUTH:
            try:
                if too_costly is not None:
                    raise ProtocolError(self._too_costly(frame, too_costly))
                body = decode_body(frame)
            except ProtocolError as exc:
                raise self._fail(exc, frame.id) from None
            token = body.get("token") if isinstance(body, dict) else None
            if self._token is not None and not (
                    isinstance(token, str)
                    and hmac.compare_digest(hashlib.sha256(token.encode()).digest(),
                                            self._token)):
                raise self._fail(AuthenticationError("the server refused the token"), frame.id)
            self.authenticated = True
            self.outbox += encode_reply(frame.id, None)
            return None
        if frame.type != FrameType.REQUEST:
            raise self._fail(ProtocolError(f"unexpected frame type {frame.type}"), frame.id)
        if too_costly is not None:  # refused before it is decoded; the next frames are read
            self.outbox += encode_error(frame.id, ErrorCode.BAD_REQUEST,
                                        self._too_costly(frame, too_costly))
            return None
        try:
            body = decode_body(frame)
        except ProtocolError as exc:
            raise self._fail(exc, frame.id) from None
        try:
            return parse_request(frame.id, body)
        except BadRequest as exc:
            # a well-formed frame with bad arguments: answer it, keep the connection
            self.outbox += encode_error(frame.id, ErrorCode.BAD_REQUEST, str(exc))
            return None

    def _too_costly(self, frame: Frame, cost: int) -> str:
        factor = _serverlimits.DECODE_FACTOR
        return (f"frame {frame.id}: its body of {len(frame.body):,} bytes holds too many "
                f"items: decoding it would take over {cost:,} bytes of memory, more than the "
                f"{self.decode_budget:,} this server allows ({factor} times its max_frame of "
                f"{self.decoder.max_frame:,}, and 1 MiB); send fewer items a request")


class Reply(NamedTuple):
    """The answer to request ``id``: a value, or the exception to raise for it."""

    id: int
    value: Any = None
    error: Exception | None = None


class ClientProtocol:
    """The client's side of one connection: builds requests, matches replies by id."""

    def __init__(self, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.decoder = FrameDecoder(max_frame)
        self.version: int | None = None
        self._head = bytearray()
        self._next_id = 1
        self._server_max_frame = DEFAULT_MAX_FRAME
        self._checked_above = 0
        self.server_max_frame = DEFAULT_MAX_FRAME

    @property
    def server_max_frame(self) -> int:
        """The largest frame the server accepts (its ``hello`` says)."""
        return self._server_max_frame

    @server_max_frame.setter
    def server_max_frame(self, value: int) -> None:
        self._server_max_frame = value
        # A request of n records takes at least 2 bytes a record, its reply of ids at
        # most ids_reply_size(n): a request up to this length has a reply that fits.
        safe = (min(self.decoder.max_frame, value) - _ID_REPLY_OVERHEAD) * 2 // _ID_BYTES
        self._checked_above = min(value, safe)

    def _id(self) -> int:
        ident = self._next_id
        self._next_id = ident + 1 if ident < MAX_ID else 1
        return ident

    def start(self, token: str | None) -> tuple[bytes, list[int]]:
        """The opening bytes (preamble, auth when a token is given) and the ids to await.

        :class:`ConfigurationError` for a token that is no UTF-8 text (it holds a lone
        surrogate, as an environment variable of other bytes gives): the frame carries text."""
        out = encode_preamble()
        ids = []
        if token is not None:
            try:
                if isinstance(token, str):
                    token.encode("utf-8")
            except UnicodeEncodeError:
                raise ConfigurationError(
                    "the token is not text UTF-8 can hold (it has a lone surrogate, as a "
                    "token read from bytes of another encoding has); give it as text") from None
            ident = self._id()
            out += encode_frame(FrameType.AUTH, ident, {"token": token})
            ids.append(ident)
        return out, ids

    def request(self, op: str, args: Mapping[str, Any]) -> tuple[int, bytes]:
        """A REQUEST frame and its id; :class:`FrameTooLarge` if the server would refuse it,
        :class:`ReplyTooLarge` if its reply could be larger than this client accepts (an
        append, ack or release of more than :func:`max_ids` records)."""
        body = {"op": op}
        body.update(args)
        payload = cbor2.dumps(body)
        length = len(payload) + 5
        if length > self._checked_above:
            self._check_large(op, args, length)
        ident = self._id()
        return ident, HEADER.pack(length, _REQUEST, ident) + payload

    def _check_large(self, op: str, args: Mapping[str, Any], length: int) -> None:
        if length > self._server_max_frame:
            raise FrameTooLarge(
                f"a {op} request of {length} bytes exceeds the server's limit of "
                f"{self._server_max_frame}")
        field = ID_OPS.get(op)
        if field is None:
            return
        # The server counts a max_reply above its max_frame as its max_frame
        n, max_reply = len(args[field]), min(self.decoder.max_frame, self._server_max_frame)
        if ids_reply_size(n) > max_reply:
            fits = max_ids(max_reply)
            raise ReplyTooLarge(
                f"the reply to a {op} of {n} records could take {ids_reply_size(n):,} bytes, "
                f"more than this client accepts or the server sends (max_reply "
                f"{max_reply:,}); at most {fits} records fit", fits)

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Reply]:
        """Consume bytes from the server; return the replies now complete."""
        if self.version is None:
            self._head += data
            if len(self._head) < PREAMBLE.size:
                return []
            version = parse_preamble(bytes(self._head[:PREAMBLE.size]))
            if version < MIN_VERSION:
                raise VersionMismatch(f"the server speaks protocol version {version}; this "
                                      f"client needs version {MIN_VERSION} or later")
            if version > VERSION:  # the server answers at most the version offered
                raise VersionMismatch(f"the server answered protocol version {version} to a "
                                      f"client that offered version {VERSION}")
            self.version = version
            data = bytes(self._head[PREAMBLE.size:])
            self._head.clear()
        replies: list[Reply] = []
        for frame in self.decoder.feed(data):
            body = decode_body(frame)
            if frame.type == _REPLY:
                replies.append(Reply(frame.id, body))
            elif frame.type == _ERROR and isinstance(body, dict):
                code, message = body.get("code"), body.get("message")
                replies.append(Reply(frame.id, error=error_for(
                    code if _is_int(code) else ErrorCode.INTERNAL,  # type: ignore[arg-type]
                    str(message))))
            elif frame.type == _ERROR:
                raise ProtocolError(f"an ERROR frame from the server whose body is a "
                                    f"{type(body).__name__}, not a map")
            else:
                raise ProtocolError(f"unexpected frame type {frame.type} from the server")
        return replies
