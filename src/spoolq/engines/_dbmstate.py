"""The dbm engine's state document and record values.

The state, written under a new key by every committed call, is JSON behind a
CRC-32; a record value is a CRC-32, a fixed header, the reason and the data.
"""

from __future__ import annotations

import heapq
import json
import logging
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter

from ..errors import CorruptError, FormatError
from .base import FORMAT_VERSION, StoredRecord

__all__ = ["APPLICATION", "Aside", "QueueState", "State", "decode_record", "decode_state",
           "encode_state", "leased_window", "main_key", "pack", "ready_window", "state_version",
           "trusted_state"]

log = logging.getLogger("spoolq")
APPLICATION = b"spoolq"

_CRC = struct.Struct(">I")
_RECORD = struct.Struct(">IQQIdi")  # crc, id, raw size, attempts, enqueued_at, reason length


@dataclass(slots=True)
class Aside:
    """A record held outside the main line: leased, or ready again after a release."""

    key: str
    owner: str | None
    visible_at: float
    attempts: int
    size: int
    raw: int


@dataclass(slots=True)
class QueueState:
    """A queue: its main line ``[head, tail)``, its counts and the records held aside."""

    number: int
    head: int = 0
    tail: int = 0
    extra: int = 0
    ready: int = 0
    leased: int = 0
    stored: int = 0
    raw: int = 0
    holes: set[int] = field(default_factory=set)  # main-line positions moved out by move(ids)
    aside: dict[int, Aside] = field(default_factory=dict)

    def live(self) -> int:
        return self.tail - self.head - len(self.holes) + len(self.aside)


@dataclass(slots=True)
class State:
    """Everything but the records: what one committed call leaves behind."""

    commit: int = 0
    keys: int = 0  # keys in the generation once this state is written, itself included
    waste: int = 0  # bytes no state names: replaced states and freed records
    next_id: int = 1
    next_number: int = 1
    meta: dict[str, bytes] = field(default_factory=dict)
    queues: dict[str, QueueState] = field(default_factory=dict)


def encode_state(st: State) -> bytes:
    doc = {
        "commit": st.commit, "keys": st.keys, "waste": st.waste, "next_id": st.next_id,
        "next_number": st.next_number, "meta": {k: v.hex() for k, v in st.meta.items()},
        "queues": {name: [q.number, q.head, q.tail, q.extra, q.ready, q.leased, q.stored, q.raw,
                          sorted(q.holes),
                          [[i, a.key, a.owner, a.visible_at, a.attempts, a.size, a.raw]
                           for i, a in q.aside.items()]]
                   for name, q in st.queues.items()},
    }
    body = json.dumps(doc, separators=(",", ":")).encode()
    return _CRC.pack(zlib.crc32(body)) + body


def decode_state(blob: bytes) -> State:
    """The state in ``blob``; ValueError, KeyError or TypeError when it is damaged."""
    if len(blob) < _CRC.size or _CRC.unpack_from(blob)[0] != zlib.crc32(blob[_CRC.size:]):
        raise ValueError("checksum mismatch")
    doc = json.loads(blob[_CRC.size:])
    if not (isinstance(doc, dict) and isinstance(doc.get("queues"), dict)
            and isinstance(doc.get("meta"), dict)):
        raise ValueError("not a state's layout")
    queues = {}
    for name, (number, head, tail, extra, ready, leased, stored, raw, holes,
               aside) in doc["queues"].items():
        queues[str(name)] = QueueState(
            int(number), int(head), int(tail), int(extra), int(ready), int(leased), int(stored),
            int(raw), {int(h) for h in holes},
            {int(i): Aside(str(key), None if owner is None else str(owner), float(visible),
                            int(attempts), int(size), int(r_raw))
             for i, key, owner, visible, attempts, size, r_raw in aside})
    return State(int(doc["commit"]), int(doc["keys"]), int(doc.get("waste", 0)),
                 int(doc["next_id"]), int(doc["next_number"]),
                 {str(k): bytes.fromhex(v) for k, v in doc["meta"].items()}, queues)


def state_version(blob: bytes) -> bytes | None:
    """The format version an intact state names, however the rest of it is laid out
    (another version may lay it out differently); None when there is none to read."""
    if len(blob) < _CRC.size or _CRC.unpack_from(blob)[0] != zlib.crc32(blob[_CRC.size:]):
        return None
    try:
        version = json.loads(blob[_CRC.size:])["meta"]["format_version"]
        return bytes.fromhex(version) if isinstance(version, str) else None
    except (ValueError, KeyError, TypeError):
        return None


def pack(ident: int, rec: StoredRecord, attempts: int | None = None) -> bytes:
    reason = None if rec.reason is None else rec.reason.encode()
    body = _RECORD.pack(0, ident, rec.raw_size, rec.attempts if attempts is None else attempts,
                        rec.enqueued_at, -1 if reason is None else len(reason))[_CRC.size:]
    body += (reason or b"") + rec.data
    return _CRC.pack(zlib.crc32(body)) + body


def main_key(q: QueueState, position: int) -> bytes:
    return b"m%d.%d" % (q.number, position)


def ready_window(q: QueueState, n: int, offset: int) -> list[tuple[bytes, Aside | None]]:
    """The keys of ready records ``offset`` to ``offset + n`` in FIFO order, each with
    its entry when it is held aside (its attempts are the record's) or None.

    Records held aside come first: they were taken from the head of the main line.
    """
    aside = sorted(i for i, a in q.aside.items() if a.owner is None)
    out: list[tuple[bytes, Aside | None]] = [(q.aside[i].key.encode(), q.aside[i])
                                             for i in aside[offset:offset + n]]
    position = q.head + max(offset - len(aside), 0)
    for hole in sorted(q.holes):
        if hole <= position:
            position += 1
    while len(out) < n and position < q.tail:
        if position not in q.holes:
            out.append((main_key(q, position), None))
        position += 1
    return out


def leased_window(q: QueueState, n: int, offset: int) -> list[tuple[str, Aside]]:
    """(owner, entry) of leased records ``offset`` to ``offset + n`` in id order."""
    held = heapq.nsmallest(offset + n, ((i, a.owner, a) for i, a in q.aside.items()
                                        if a.owner is not None), key=itemgetter(0))
    return [(owner, a) for _, owner, a in held[offset:]]




def decode_record(value: bytes) -> StoredRecord:
    """A record value's contents; ValueError (or struct.error) when it is damaged."""
    crc, ident, raw_size, attempts, enqueued_at, reason_len = _RECORD.unpack_from(value)
    if crc != zlib.crc32(memoryview(value)[_CRC.size:]):
        raise ValueError("checksum mismatch")
    start = _RECORD.size
    reason = None if reason_len < 0 else value[start:start + reason_len].decode()
    return StoredRecord(ident, value[start + max(reason_len, 0):], raw_size, attempts,
                        enqueued_at, reason)


def trusted_state(read: Callable[[bytes], bytes], keys: list[bytes], *, where: str, path: str,
                  go_back: bool, newest: int | None = None) -> State:
    """The newest intact state among the ``s<commit>`` keys of a generation's database
    (``read`` gives a key's value), passing over those above ``newest`` when given: states
    of calls that failed after writing them, which must not take effect.

    A killed process never leaves a listed state torn (the index line is written after
    the value), so a damaged newest state is damage to the file or a power cut that came
    before the data reached the disk: CorruptError, the files left as they are, unless
    ``go_back`` asks for the state before it. An older damaged state is damage to the
    file either way. A state of another format version, or of another program, is a
    FormatError.
    """
    commits = sorted((c for c in (int(k[1:]) for k in keys if k[:1] == b"s" and k[1:].isdigit())
                      if newest is None or c <= newest), reverse=True)
    torn: Exception | None = None
    for commit in commits:
        blob = b""
        try:
            blob = read(b"s%d" % commit)
            state = decode_state(blob)
        except (ValueError, KeyError, TypeError) as exc:
            version = state_version(blob)
            if version is not None and version != str(FORMAT_VERSION).encode():
                raise FormatError(f"{path} has format version "
                                  f"{version.decode(errors='replace')}; this spoolq reads "
                                  f"version {FORMAT_VERSION}") from exc
            if torn is not None:
                raise CorruptError(f"{where}: states {commits[0]} and {commit} are damaged "
                                   f"({exc})") from exc
            if not go_back:
                raise CorruptError(
                    f"{where}: the newest state ({commits[0]}) is damaged ({exc}); the files "
                    "are left as they are. If a power cut interrupted the last write, open "
                    "the queue with engine_options={'recover': True} to go back to the state "
                    "before it (what was written after that is lost)") from exc
            torn = exc
            continue
        if torn is not None:
            log.warning("spoolq: %s: state %d was damaged (%s); recovering state %d",
                        where, commits[0], torn, commit)
        break
    else:
        raise CorruptError(f"{where}: no intact state")
    if state.meta.get("application") != APPLICATION:
        raise FormatError(f"{path} is a dbm database but not a spoolq queue")
    version = state.meta.get("format_version")
    if version != str(FORMAT_VERSION).encode():
        shown = "none" if version is None else version.decode(errors="replace")
        raise FormatError(f"{path} has format version {shown}; "
                          f"this spoolq reads version {FORMAT_VERSION}")
    return state
