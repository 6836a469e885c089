"""A pickle queue file carries a checksum over everything it holds: a flipped byte, a
zeroed run (what a power cut can leave) or a cut-short file is reported (CorruptError, or
FormatError where the damage hits what names the file's kind or version), never read as a
queue of other records or counts. Files of version 1, which have no checksum, still open
and are rewritten with one at the next change; a later version is refused by its version."""

from __future__ import annotations

import logging
import pickle
import random
import zlib
from pathlib import Path

import pytest

import spoolq
from spoolq.engines import PickleEngine
from spoolq.engines.base import Lease

_META_KEYS = ("application", "format_version", "queue/jobs/serializer", "note")


def _fill(path: Path) -> None:
    eng = PickleEngine(path)
    try:
        eng.append("jobs", [b"alpha", b"bravo", b"charlie"], [5, 5, 7], 100.0)
        eng.append("other", [b"delta"], [9], 101.0)
        eng.take("jobs", 1, 102.0, Lease("host:1:start:abc", 500.0))
        eng.set_meta("queue/jobs/serializer", b"cbor")
        eng.set_meta("note", b"kept")
    finally:
        eng.close()


def _view(path: Path) -> object:
    """Everything a reader can see of the queue file, opened read-only."""
    eng = PickleEngine(path, read_only=True)
    try:
        return ({q: (eng.peek(q, 100), eng.peek_leased(q, 100), eng.counts(q), eng.owners(q))
                 for q in eng.queues()},
                {k: eng.get_meta(k) for k in _META_KEYS})
    finally:
        eng.close()


def _next_id(path: Path) -> int:
    eng = PickleEngine(path)
    try:
        (ident,) = eng.append("probe", [b"x"], [1], 200.0)
        return ident
    finally:
        eng.close()


def _damaged_versions(blob: bytes) -> list[tuple[str, bytes]]:
    rng = random.Random(20240611)
    out = []
    for i in range(len(blob)):
        for mask in {0xFF, 0x01, rng.randrange(1, 256)}:
            out.append((f"byte {i} ^ {mask:#x}", blob[:i] + bytes([blob[i] ^ mask]) + blob[i + 1:]))
    for _ in range(300):
        start, length = rng.randrange(len(blob)), rng.randrange(1, 65)
        zeroed = blob[:start] + bytes(min(length, len(blob) - start)) + blob[start + length:]
        if zeroed != blob:
            out.append((f"{length} zero bytes at {start}", zeroed))
    for size in range(len(blob)):
        out.append((f"cut to {size} bytes", blob[:size]))
    return out


def test_every_damaged_byte_is_reported_or_changes_nothing(tmp_path: Path) -> None:
    original = tmp_path / "q.pickle"
    _fill(original)
    blob, want, want_next = original.read_bytes(), _view(original), _next_id(original)
    original.write_bytes(blob)  # _next_id added a record
    path = tmp_path / "damaged.pickle"
    silent, refused = [], 0
    for what, damaged in _damaged_versions(blob):
        path.write_bytes(damaged)
        try:
            got = _view(path)
        except (spoolq.CorruptError, spoolq.FormatError) as exc:
            assert str(path) in str(exc), (what, exc)
            refused += 1
            continue
        if got != want or _next_id(path) != want_next:
            silent.append(what)
    assert not silent, f"{len(silent)} damaged files read as another queue: {silent[:20]}"
    assert refused > len(blob)


def test_damaged_record_is_reported_as_a_failed_checksum(tmp_path: Path) -> None:
    path = tmp_path / "q.pickle"
    _fill(path)
    blob = path.read_bytes()
    at = blob.index(b"charlie")
    path.write_bytes(blob[:at] + b"X" + blob[at + 1:])
    for read_only in (True, False):
        with pytest.raises(spoolq.CorruptError, match="checksum") as info:
            PickleEngine(path, read_only=read_only)
        assert str(path) in str(info.value)


def _version_1_file(path: Path) -> None:
    """A file as the engine wrote it at version 1: the queue dict pickled as it is."""
    doc = {"meta": {"application": b"spoolq", "format_version": b"1", "note": b"old"},
           "next_id": 4,
           "queues": {"q": [(1, b"one", 3, 0, 10.0, None, None, 0.0),
                            (2, b"two", 3, 1, 11.0, "nacked", None, 50.0),
                            (3, b"three", 5, 1, 12.0, None, "host:1:start:abc", 99.0)]}}
    path.write_bytes(pickle.dumps(doc, protocol=5))


def _check_version_1_content(eng: PickleEngine, *added: bytes) -> None:
    assert [r.data for r in eng.peek("q", 10)] == [b"one", b"two", *added]
    assert eng.peek("q", 10)[1].reason == "nacked"
    (leased,) = eng.peek_leased("q", 10)
    assert (leased.record.data, leased.owner, leased.until) == (b"three", "host:1:start:abc", 99.0)
    assert eng.get_meta("note") == b"old"


def test_version_1_file_opens_and_is_rewritten_with_a_checksum_at_the_next_change(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "q.pickle"
    _version_1_file(path)
    before = path.read_bytes()
    reader = PickleEngine(path, read_only=True)
    try:
        _check_version_1_content(reader)
        assert reader.get_meta("format_version") == b"1"
    finally:
        reader.close()
    assert path.read_bytes() == before

    caplog.set_level(logging.INFO, logger="spoolq")
    eng = PickleEngine(path)
    try:
        assert path.read_bytes() == before  # opening alone writes nothing
        _check_version_1_content(eng)
        assert eng.append("q", [b"four"], [4], 13.0) == [4]
        assert eng.get_meta("format_version") == b"2"
    finally:
        eng.close()
    assert any("version 1" in r.getMessage() and "version 2" in r.getMessage()
               and str(path) in r.getMessage() and r.levelno == logging.INFO
               for r in caplog.records if r.name == "spoolq")
    # What an earlier release reads first: the top-level dict's format version.
    top = pickle.loads(path.read_bytes())
    assert top["meta"] == {"application": b"spoolq", "format_version": b"2"}
    eng = PickleEngine(path)
    try:
        _check_version_1_content(eng, b"four")
        assert eng.get_meta("format_version") == b"2"
    finally:
        eng.close()


def test_version_1_file_is_left_as_it_is_by_a_handle_that_changes_nothing(
        tmp_path: Path) -> None:
    path = tmp_path / "q.pickle"
    _version_1_file(path)
    before = path.read_bytes()
    eng = PickleEngine(path)
    try:
        assert eng.take("empty", 1, 20.0, None) == []
    finally:
        eng.close()
    assert path.read_bytes() == before


def test_later_format_version_is_refused_by_its_version(tmp_path: Path) -> None:
    path = tmp_path / "q.pickle"
    body = pickle.dumps({"meta": {"application": b"spoolq", "format_version": b"3"},
                         "next_id": 1, "queues": {}}, protocol=5)
    path.write_bytes(pickle.dumps({"meta": {"application": b"spoolq", "format_version": b"3"},
                                   "body": body, "crc32": zlib.crc32(body)}, protocol=5))
    before = path.read_bytes()
    for read_only in (True, False):
        with pytest.raises(spoolq.FormatError, match="format version 3; this spoolq reads "
                                                     "version 2"):
            PickleEngine(path, read_only=read_only)
    assert path.read_bytes() == before
