"""Decoding stored records for commands to show: :class:`Decoder`, JSON and text forms."""

from __future__ import annotations

import base64
import json
import math
import sys
from dataclasses import dataclass
from typing import Any

from rich.text import Text

from ..codec import COMPRESSORS, SERIALIZERS, Codec, record_codec_names, record_dictionary
from ..engines import Engine, StoredRecord
from ..errors import CorruptError, SerializationError, SpoolqError
from ..zdict import MissingDictionary, load_dictionaries
from ._common import one_line

__all__ = [
    "Decoded",
    "Decoder",
    "check_json",
    "json_text",
    "record_json",
    "record_text",
    "safe_repr",
]


@dataclass(frozen=True, slots=True)
class Decoded:
    """One record as a command shows it: the item, or a note saying why it is raw.

    ``status`` is ``"ok"``; ``"damaged"`` (header, checksum or compression
    broken); ``"invalid"`` (sound bytes that a built-in serializer rejects);
    ``"pickle"`` (not unpickled without permission); or ``"foreign"`` (a custom
    codec, a pickled class this process cannot import, a missing compressor).
    """

    record: StoredRecord
    status: str
    item: Any = None
    note: str | None = None

    @property
    def ok(self) -> bool:
        """Whether ``item`` holds the decoded item."""
        return self.status == "ok"

    @property
    def codec(self) -> str:
        """``"serializer+compressor"`` as the record's header names them; ``"?"`` if damaged."""
        try:
            ser, comp = record_codec_names(self.record.data)
        except CorruptError:
            return "?"
        return f"{ser}+{comp}"


class Decoder:
    """Decodes records of any built-in codec; pickle only when ``allow_pickle``.

    Records it cannot decode here (pickle without permission, a pickled class
    this process cannot import, a custom serializer or compressor, damage) come
    back with ``ok=False`` and a note instead of raising.

    The file's zstd dictionaries are loaded when it is made, and again when a record
    needs one it does not have (a writer trained it since): once for each number, so
    that a file which lost a dictionary is not read again for every record needing it.
    A record whose dictionary the file does not hold is damaged.

    A compressed record is unpacked within the raw size stored with it, as a get does: one
    that unpacks to more (a damaged record, or a small one made to inflate without end)
    is damaged, and is refused as soon as its output passes that size.
    """

    def __init__(self, engine: Engine, *, allow_pickle: bool = False) -> None:
        self.allow_pickle = allow_pickle
        self._engine = engine
        self._codec = Codec("pickle" if allow_pickle else "cbor", "none")
        load_dictionaries(engine, "", self._codec)
        self._reloaded_for: set[int] = set()
        """Dictionary numbers missed since the dictionaries were loaded last."""

    def decode(self, rec: StoredRecord) -> Decoded:
        try:
            return Decoded(rec, "ok", self._decode(rec))
        except CorruptError as exc:
            return Decoded(rec, "damaged", note=one_line(exc))
        except SpoolqError as exc:
            # decode() checks the checksum before it looks at the codec: the bytes are sound.
            ser, comp = record_codec_names(rec.data)
            if ser == "pickle" and not self.allow_pickle:
                return Decoded(rec, "pickle", note="pickled; --allow-pickle decodes it "
                               "(unpickling can run code from the file)")
            builtin = ser in SERIALIZERS and ser != "pickle" and comp in COMPRESSORS
            if builtin and isinstance(exc, SerializationError):
                return Decoded(rec, "invalid", note=one_line(exc))
            return Decoded(rec, "foreign", note=f"cannot be decoded here: {one_line(exc)}")

    def _decode(self, rec: StoredRecord) -> Any:
        try:
            return self._codec.decode(rec.data, rec.id, raw_size=rec.raw_size)
        except MissingDictionary:
            number = record_dictionary(rec.data)
            if number in self._reloaded_for:
                raise self._absent(rec, number) from None
        # A writer appends a dictionary before any record compressed with it, so a load
        # now gives every dictionary the records read so far can need.
        try:
            load_dictionaries(self._engine, "", self._codec)
        except SpoolqError as exc:  # the next record that needs it loads them again
            raise CorruptError(f"record {rec.id} needs zstd dictionary {number}, and the "
                               f"file's dictionaries could not be read: {one_line(exc)}"
                               ) from exc
        self._reloaded_for.add(number)
        try:
            return self._codec.decode(rec.data, rec.id, raw_size=rec.raw_size)
        except MissingDictionary:
            raise self._absent(rec, number) from None

    @staticmethod
    def _absent(rec: StoredRecord, number: int) -> CorruptError:
        return CorruptError(f"record {rec.id} needs zstd dictionary {number}, which the file "
                            "does not hold: the record cannot be decoded")


def json_text(item: Any) -> str:
    """``item`` as compact JSON, or ValueError if JSON cannot hold it exactly.

    Only dicts with string keys, lists, strings, finite numbers, booleans and
    None pass: anything else (bytes, tuples, sets, int keys, NaN, strings with
    a lone surrogate, which UTF-8 cannot encode) would not come back as the
    same item.
    """
    check_json(item)
    return json.dumps(item, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def check_json(item: Any) -> None:
    """Raise ValueError, naming the part at fault, unless JSON holds ``item`` exactly
    (as :func:`json_text` writes it)."""
    try:
        _check_json(item, "item")
    except RecursionError:
        raise ValueError("the item is nested too deeply for JSON") from None


def _check_json(obj: Any, where: str) -> None:
    kind = type(obj)
    if kind is str:
        _check_text(obj, where)
        return
    if obj is None or kind is bool:
        return
    if kind is int:
        _check_int(obj, where)
        return
    if kind is float:
        if not math.isfinite(obj):
            raise ValueError(f"{where} is {obj!r}, which JSON cannot hold")
        return
    if kind is list:
        for n, value in enumerate(obj):
            _check_json(value, f"{where}[{n}]")
        return
    if kind is dict:
        for key, value in obj.items():
            if type(key) is not str:
                raise ValueError(f"{where} has the key {key!r}: JSON keys are strings only")
            _check_text(key, f"a key of {where}")
            _check_json(value, f"{where}[{key!r}]")
        return
    raise ValueError(f"{where} is a {kind.__name__}, which JSON cannot hold")


def _check_int(number: int, where: str) -> None:
    """Python refuses to write an int of more digits than sys.get_int_max_str_digits()
    as text (converting one takes time quadratic in its length)."""
    limit = sys.get_int_max_str_digits()
    if limit and number.bit_length() > 3 * limit:  # 3 bits a digit, at most: cheap first
        try:
            str(number)
        except ValueError:
            raise ValueError(f"{where} is an integer of more than {limit} digits, which "
                             "this Python does not write as text") from None


def safe_repr(item: Any) -> str:
    """``repr(item)``, or a description of ``item`` when its repr fails (an integer too
    long to write as text, a class whose ``__repr__`` raises)."""
    try:
        return repr(item)
    except Exception as exc:  # any object's __repr__ may raise anything
        return f"<{type(item).__name__} that cannot be shown: {one_line(exc)}>"


def _check_text(text: str, where: str) -> None:
    """JSON Lines are UTF-8: a string with a lone surrogate cannot be written."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{where} is a string with a lone surrogate "
                         f"({text[exc.start]!r} at index {exc.start}), which UTF-8 "
                         "cannot encode") from None


def record_json(d: Decoded) -> dict[str, Any]:
    """One record for ``--json`` output: metadata plus ``item``, ``repr`` or ``raw``."""
    rec = d.record
    out: dict[str, Any] = {
        "id": rec.id, "enqueued_at": rec.enqueued_at, "attempts": rec.attempts,
        "stored_bytes": len(rec.data), "raw_bytes": rec.raw_size, "codec": d.codec,
    }
    if rec.reason is not None:
        out["reason"] = rec.reason
    if d.ok:
        try:
            json_text(d.item)
            out["item"] = d.item
        except ValueError as exc:
            out["repr"] = safe_repr(d.item)
            out["note"] = str(exc)
    else:
        out["raw"] = base64.b64encode(rec.data).decode()
        out["note"] = d.note
    return out


def record_text(d: Decoded, limit: int) -> Text:
    """One record's item for a table cell, cut to ``limit`` characters."""
    if d.ok:
        try:
            text = json_text(d.item)
        except ValueError:
            text = safe_repr(d.item)
        style = ""
    else:
        text = f"({d.note}) raw: {d.record.data[:48]!r}…"
        style = "yellow"
    if len(text) > limit > 0:
        text = text[: limit - 1] + "…"
    return Text(text, style=style)
