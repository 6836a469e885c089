"""Turning items into records and back: serializer, compressor and record header.

A record is ``header + payload``. The header is 7 bytes::

    version (1) | serializer id (1) | compressor id (1) | crc32 (4, little endian)

followed, for a custom serializer or compressor (id 255), by its name as one
length byte and UTF-8 text. The CRC covers the first three header bytes, the
names and the payload, so a damaged record is detected instead of decoded into
a wrong item. Because every record names its own codec, a queue whose
compressor changes stays readable, and a file can be decoded offline.
"""

from __future__ import annotations

import struct
import sys
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import cbor2

from ._builtin_codecs import COMPRESSORS, SERIALIZERS, Compressor, Serializer
from ._codecnames import resolve_codec
from ._inchild import ChildLock
from ._unpacking import (
    CUSTOM_ID,
    HEAD,
    HEADER_SIZE,
    LIMIT_MOST,
    LIMIT_RAW,
    RECORD_VERSION,
    as_record,
    failed,
    parse_header,
    unpack_with,
    unpack_zstd_dict,
)
from .errors import ConfigurationError, CorruptError, SerializationError
from .zdict import MAX_UNPACKED_SIZE, ZstdDictCompressor

__all__ = [
    "COMPRESSORS",
    "SERIALIZERS",
    "Codec",
    "Compressor",
    "Serializer",
    "record_codec_names",
    "record_dictionary",
]

_CRC = struct.Struct("<I")
ZSTD_DICT_ID = 6
DICT_THRESHOLD = 16
_SERIALIZER_NAMES = {ident: name for name, (ident, _) in SERIALIZERS.items()}
_COMPRESSOR_NAMES = {ident: name for name, (ident, _) in COMPRESSORS.items()}


def record_codec_names(record: bytes) -> tuple[str, str]:
    """Return the (serializer, compressor) names a record's header declares."""
    ser_id, comp_id, _crc, names, _start = parse_header(record, None)
    ser = names[0] if ser_id == CUSTOM_ID else _SERIALIZER_NAMES.get(ser_id, f"#{ser_id}")
    comp = names[-1] if comp_id == CUSTOM_ID else _COMPRESSOR_NAMES.get(comp_id, f"#{comp_id}")
    return ser, comp


def record_dictionary(record: bytes) -> int:
    """The number of the zstd dictionary a record was compressed with; 0 when none (or
    when the header cannot be read)."""
    try:
        _ser_id, comp_id, _crc, _names, start = parse_header(record, None)
    except CorruptError:
        return 0
    if comp_id != ZSTD_DICT_ID or start >= len(record):
        return 0
    return record[start]  # the dictionary payload starts with its number (see zdict)


class Codec:
    """Encodes items into self-describing records and decodes them back.

    ``serializer`` is a name (``"cbor"``, ``"pickle"``, ``"json"``, ``"raw"``)
    or an object with ``dumps``/``loads``; ``compressor`` is a name
    (``"zstd"``, ``"zlib"``, ``"bz2"``, ``"lzma"``, ``"lzo"``, ``"zstd-dict"``,
    ``"none"``) or an object with ``compress``/``decompress``. Payloads shorter
    than ``threshold`` bytes, payloads longer than
    :data:`~spoolq.zdict.MAX_UNPACKED_SIZE` (256 MiB), and payloads that
    compression does not shrink, are stored uncompressed; a record that would
    decompress beyond that size (or its raw size, given to :meth:`decode`) is refused
    as corrupt once it does. That bounds the bytes, not the item: cbor or json of empty lists
    takes about 70 bytes of memory per payload byte, and a 1 KB zstd record can hold
    32 MB of payload: such a record still costs its reader gigabytes.
    With ``"zstd-dict"`` the codec samples the first
    payloads until :attr:`training_due`; the owner of the codec then calls
    :meth:`train` and stores the dictionary (see :mod:`spoolq.zdict`).
    Instances are thread-safe, whatever the serializer and compressor: a custom one is
    called by one thread at a time (one lock per object, shared by every codec using it).
    """

    def __init__(self, serializer: object = "cbor", compressor: object = "zstd", *,
                 threshold: int = 128) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise ConfigurationError(f"threshold must be a non-negative int, not {threshold!r}")
        self._ser_id, self.serializer_name, self._ser = resolve_codec(
            "serializer", serializer, SERIALIZERS, ("dumps", "loads"))
        self._comp_id, self.compressor_name, self._comp = resolve_codec(
            "compressor", compressor, COMPRESSORS, ("compress", "decompress"))
        self._threshold = threshold
        ser_name = self._name_bytes(self._ser_id, self.serializer_name)
        comp_name = self._name_bytes(self._comp_id, self.compressor_name)
        self._plain_prefix = (RECORD_VERSION, self._ser_id, 0)
        self._plain_names = ser_name
        self._packed_prefix = (RECORD_VERSION, self._ser_id, self._comp_id)
        self._packed_names = ser_name + comp_name
        self._plain_seed = zlib.crc32(bytes(self._plain_prefix) + self._plain_names)
        self._plain_head = bytes(self._plain_prefix)  # + crc + self._plain_names, see _frame
        # The header of an uncompressed record in one call: head, crc, names.
        self._plain_pack = struct.Struct(f"<3sI{len(ser_name)}s").pack
        # cbor2.loads itself for the built-in cbor, without its loads() around it, which
        # decode() calls only for a payload cbor2.loads refused (see _loads_again).
        self._loads = cbor2.loads if self._ser_id == SERIALIZERS["cbor"][0] else self._ser.loads
        self._packed_seed = zlib.crc32(bytes(self._packed_prefix) + self._packed_names)
        self._unpack: Any = getattr(self._comp, "unpack", None)  # a built-in's, bounded
        self._zdict: ZstdDictCompressor | None = (
            self._comp if isinstance(self._comp, ZstdDictCompressor) else None)
        self._sampling = self._zdict is not None
        self._small = 0
        self._update_small()
        # Header prefixes this codec writes with built-in codecs -> (crc seed, compressed):
        # such records skip the general header parse in decode().
        self._own_heads: dict[bytes, tuple[int, bool]] = {}
        if self._ser_id != CUSTOM_ID:
            self._own_heads[bytes(self._plain_prefix)] = (self._plain_seed, False)
            if self._comp_id not in (0, CUSTOM_ID, ZSTD_DICT_ID):
                self._own_heads[bytes(self._packed_prefix)] = (self._packed_seed, True)

    @property
    def threshold(self) -> int:
        """Payloads shorter than this many bytes are stored uncompressed."""
        return self._threshold

    def _update_small(self) -> None:
        # Payloads shorter than _small are stored uncompressed, framed without a call to
        # _frame (which would also sample them for a dictionary).
        self._small = (-1 if self._sampling else self._threshold if self._comp_id != 0
                       else sys.maxsize)

    # ---- trained dictionaries -----------------------------------------------------------

    def add_dictionary(self, number: int, dict_bytes: bytes, *, activate: bool = False) -> None:
        """Register zstd dictionary ``number`` of the file so records written with it
        decode; with ``activate`` (and ``compressor="zstd-dict"``) compress with it too."""
        if self._zdict is None:
            self._zdict = ZstdDictCompressor()
        if activate and self._comp is self._zdict:
            self._zdict.activate(number, dict_bytes)
            self._sampling = False
            self._threshold = min(self._threshold, DICT_THRESHOLD)
            self._update_small()
        else:
            self._zdict.add(number, dict_bytes)

    def add_damaged_dictionary(self, number: int, reason: str) -> None:
        """Record that the file's zstd dictionary ``number`` is damaged: records that
        need it raise :class:`CorruptError` with ``reason``."""
        if self._zdict is None:
            self._zdict = ZstdDictCompressor()
        self._zdict.add_damaged(number, reason)

    @property
    def sampling(self) -> bool:
        """True while ``"zstd-dict"`` samples payloads, before it has a dictionary to use."""
        return self._sampling

    @property
    def training_due(self) -> bool:
        """True when ``"zstd-dict"`` has sampled enough payloads to train a dictionary."""
        return self._sampling and self._zdict is not None and self._zdict.training_due

    def train(self) -> bytes | None:
        """Train a dictionary from the sampled payloads (None if they do not allow one)."""
        if self._zdict is None:
            return None
        trained = self._zdict.train()
        if trained is None:
            self._sampling = False
            self._update_small()
        return trained

    def train_in_background(self) -> bool:
        """Start training the dictionary in a thread of its own unless that was done
        already: True when it started now. :attr:`training_due` turns true again when it
        is done, and :meth:`train` then returns the dictionary without waiting."""
        zdict = self._zdict
        if zdict is None or not self._sampling or zdict.training_in_background:
            return False
        zdict.train_in_background()
        return True

    def stop_sampling(self) -> None:
        """Stop sampling payloads for a dictionary (when the file can hold no more);
        records keep the compression they have now."""
        self._sampling = False
        self._update_small()
        if self._zdict is not None:
            self._zdict.drop_samples()

    @staticmethod
    def _name_bytes(ident: int, name: str) -> bytes:
        if ident != CUSTOM_ID:
            return b""
        raw = name.encode()
        return bytes([len(raw)]) + raw

    def dumps(self, item: Any) -> bytes:
        """Serialize one item, raising :class:`SerializationError` if the serializer refuses it."""
        try:
            data = self._ser.dumps(item)
        except Exception as exc:
            raise self._refused(item, exc) from exc
        return data if type(data) is bytes else self._as_bytes(data, item)

    def _refused(self, item: Any, exc: Exception) -> SerializationError:
        hint = ("; serializer='pickle' takes arbitrary Python objects"
                if self._ser_id not in (CUSTOM_ID, SERIALIZERS["pickle"][0]) else "")
        return SerializationError(f"the {self.serializer_name} serializer cannot encode "
                                  f"{type(item).__name__}: {exc}{hint}")

    def _as_bytes(self, data: object, item: Any) -> bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise SerializationError(
                f"serializer {self.serializer_name} returned {type(data).__name__}, not bytes, "
                f"for a {type(item).__name__} item")
        return bytes(data)

    def encode(self, item: Any) -> tuple[bytes, int]:
        """Return ``(record, raw_size)`` for one item; raw_size is the serialized length."""
        try:
            data = self._ser.dumps(item)
        except Exception as exc:
            raise self._refused(item, exc) from exc
        if type(data) is not bytes:
            data = self._as_bytes(data, item)
        size = len(data)
        if size < self._small:  # stored uncompressed: framed here, without a call
            return self._plain_pack(self._plain_head, zlib.crc32(data, self._plain_seed),
                                    self._plain_names) + data, size
        return self._frame(data), size

    def encode_many(self, items: Iterable[Any]) -> tuple[list[bytes], list[int]]:
        """Encode items: ``(records, raw sizes)``, as :meth:`encode` of each, faster."""
        records: list[bytes] = []
        sizes: list[int] = []
        dumps, frame, refused, as_bytes = self._ser.dumps, self._frame, self._refused, \
            self._as_bytes
        small = self._small
        head, names, seed = self._plain_head, self._plain_names, self._plain_seed
        crc32, plain_pack = zlib.crc32, self._plain_pack
        for item in items:
            try:
                data = dumps(item)
            except Exception as exc:
                raise refused(item, exc) from exc
            if type(data) is not bytes:
                data = as_bytes(data, item)
            size = len(data)
            if size < small:
                records.append(plain_pack(head, crc32(data, seed), names) + data)
            else:
                records.append(frame(data))
            sizes.append(size)
        return records, sizes

    def _frame(self, data: bytes) -> bytes:
        """A record: header, codec names, then ``data`` compressed if that pays."""
        if self._sampling:
            self._zdict.sample(data)  # type: ignore[union-attr]
        if self._threshold <= len(data) <= MAX_UNPACKED_SIZE and self._comp_id != 0:
            try:
                packed = self._comp.compress(data)
                if type(packed) is not bytes:
                    packed = self._packed_bytes(packed)
            except SerializationError:
                raise
            except Exception as exc:
                raise SerializationError(
                    f"the {self.compressor_name} compressor failed on a {len(data)}-byte "
                    f"payload: {exc!r}") from exc
            if len(packed) < len(data):
                crc = zlib.crc32(packed, self._packed_seed)
                return HEAD.pack(*self._packed_prefix, crc) + self._packed_names + packed
        crc = zlib.crc32(data, self._plain_seed)
        return self._plain_pack(self._plain_head, crc, self._plain_names) + data

    def _packed_bytes(self, packed: object) -> bytes:
        if not isinstance(packed, (bytes, bytearray, memoryview)):
            raise SerializationError(
                f"the {self.compressor_name} compressor returned {type(packed).__name__}, "
                "not bytes")
        return bytes(packed)

    def decode_all(self, records: Sequence[bytes]) -> list[Any] | None:
        """Items of ``records`` when every one was written by this codec's own built-in
        serializer and compressor and passes its checksum; None as soon as one does not
        (call :meth:`decode` on each then: it decodes the others and names the failure)."""
        own_heads = self._own_heads
        if not all(type(record) is bytes and record[:3] in own_heads for record in records):
            return None
        items, failures = self.decode_each(records, [None] * len(records), [None] * len(records))
        return None if failures else items

    def decode_each(self, records: Sequence[bytes], ids: Sequence[int | None],
                    raw_sizes: Sequence[int | None]) -> tuple[list[Any], dict[int, Exception]]:
        """Decode ``records[i]`` as ``decode(records[i], ids[i], raw_size=raw_sizes[i])``
        does, decompressing each once: ``(items, failures)``, the items that decode, in
        order, and by index the error each other record raised (no other is caught)."""
        own_heads, loads, unpack = self._own_heads, self._ser.loads, self._unpack
        crc32, unpack_crc, most = zlib.crc32, _CRC.unpack_from, MAX_UNPACKED_SIZE
        items: list[Any] = []
        append = items.append
        failures: dict[int, Exception] = {}
        for record, ident, size in zip(records, ids, raw_sizes, strict=True):
            own = own_heads.get(record[:3]) if type(record) is bytes else None
            if own is not None and len(record) >= HEADER_SIZE:
                payload = record[HEADER_SIZE:]
                if crc32(payload, own[0]) == unpack_crc(record, 3)[0]:
                    try:
                        if own[1]:  # as _limit() says, without a call
                            payload = unpack(payload, size, LIMIT_RAW) if size is not None \
                                and size < most else unpack(payload, most, LIMIT_MOST)
                    except Exception as exc:  # the index: records done before this one
                        failures[len(items) + len(failures)] = failed(
                            CorruptError, ident, "decompressed", exc)
                        continue
                    try:
                        append(loads(payload))
                    except Exception as exc:
                        failures[len(items) + len(failures)] = failed(
                            SerializationError, ident, "deserialized", exc)
                    continue
            try:
                append(self.decode(record, ident, raw_size=size))
            except (CorruptError, SerializationError, ConfigurationError) as exc:
                failures[len(items) + len(failures)] = exc
        return items, failures

    def decode(self, record: bytes, record_id: int | None = None, *,
               raw_size: int | None = None) -> Any:
        """Decode a record; raise :class:`CorruptError` if it is damaged.

        A record written with another built-in compressor decodes normally. A
        record whose serializer differs from this codec's is refused when it is
        ``pickle`` (decoding it could run code) or a custom one. ``raw_size`` is the
        one stored with the record (as :meth:`encode` returned it): a record that
        decompresses to more is refused as damaged as soon as it does."""
        if type(record) is not bytes:
            record = as_record(record)
        own = self._own_heads.get(record[:3])
        if own is not None and len(record) >= HEADER_SIZE:
            payload = record[HEADER_SIZE:]
            if zlib.crc32(payload, own[0]) == _CRC.unpack_from(record, 3)[0]:
                if own[1]:
                    try:
                        payload = self._unpack(payload, raw_size, LIMIT_RAW) if raw_size is not \
                            None and raw_size < MAX_UNPACKED_SIZE else self._unpack(
                                payload, MAX_UNPACKED_SIZE, LIMIT_MOST)  # as _limit() says
                    except Exception as exc:
                        raise failed(CorruptError, record_id, "decompressed", exc) from exc
                try:
                    return self._loads(payload)
                except Exception as exc:
                    if self._loads is not cbor2.loads:
                        raise failed(SerializationError, record_id, "deserialized", exc) from exc
                return self._loads_again(payload, record_id)
        ser_id, comp_id, crc, names, start = parse_header(record, record_id)
        where = f"record {record_id}" if record_id is not None else "record"
        seed = zlib.crc32(record[:3] + record[HEADER_SIZE:start])
        payload = record[start:]
        if zlib.crc32(payload, seed) != crc:
            raise CorruptError(f"{where} failed its checksum: the stored bytes are damaged")
        data = self._decompress(comp_id, names[-1] if comp_id == CUSTOM_ID else "", payload,
                                where, *_limit(raw_size))
        serializer = self._serializer_for(ser_id, names[0] if ser_id == CUSTOM_ID else "", where)
        if ser_id == CUSTOM_ID and type(data) is not bytes:
            data = bytes(data)  # a built-in's output of many steps is a bytearray
        try:
            return serializer.loads(data)  # type: ignore[arg-type]  # bytearray: built-ins
        except Exception as exc:
            raise SerializationError(f"{where} could not be deserialized: {exc}") from exc

    def _decompress(self, comp_id: int, name: str, payload: bytes, where: str, limit: int,
                    why: str) -> bytes | bytearray:
        if comp_id == 0:
            return payload
        if comp_id == ZSTD_DICT_ID:
            zdict = self._zdict or _decompressor("zstd-dict")
            return unpack_zstd_dict(zdict, payload, where, limit, why)
        if comp_id == self._comp_id and (comp_id != CUSTOM_ID or name == self.compressor_name):
            comp = self._comp
        elif comp_id in _COMPRESSOR_NAMES:
            comp = _decompressor(_COMPRESSOR_NAMES[comp_id])
        elif comp_id == CUSTOM_ID:
            raise SerializationError(
                f"{where} was compressed with the custom compressor {name!r}; open the queue "
                "with that compressor object to read it")
        else:
            raise SerializationError(
                f"{where} names compressor id {comp_id}, which this version of spoolq does "
                "not know")
        return unpack_with(comp, name if comp_id == CUSTOM_ID else None, payload, where,
                           limit, why)

    def _loads_again(self, payload: bytes, record_id: int | None) -> Any:
        """The serializer's own loads() of a payload that cbor2.loads refused: it reads
        items nested deeper than cbor2.loads does without options."""
        try:
            return self._ser.loads(payload)
        except Exception as exc:
            raise failed(SerializationError, record_id, "deserialized", exc) from exc

    def _serializer_for(self, ser_id: int, name: str, where: str) -> Serializer:
        if ser_id == self._ser_id and (ser_id != CUSTOM_ID or name == self.serializer_name):
            return self._ser  # type: ignore[no-any-return]
        if ser_id in _SERIALIZER_NAMES and _SERIALIZER_NAMES[ser_id] != "pickle":
            return SERIALIZERS[_SERIALIZER_NAMES[ser_id]][1]()
        if ser_id == CUSTOM_ID:
            raise SerializationError(
                f"{where} was written with the custom serializer {name!r}; open the queue "
                "with that serializer object to read it")
        if ser_id in _SERIALIZER_NAMES:
            label = _SERIALIZER_NAMES[ser_id]
            raise SerializationError(
                f"{where} was written with the {label} serializer; open the queue with "
                f"serializer={label!r} to read it")
        raise SerializationError(
            f"{where} names serializer id {ser_id}, which this version of spoolq does not "
            "know")


def _limit(raw_size: int | None) -> tuple[int, str]:
    """The most a record may decompress to, and why: its stored raw size, when known."""
    if raw_size is None or raw_size >= MAX_UNPACKED_SIZE:
        return MAX_UNPACKED_SIZE, LIMIT_MOST
    return raw_size, LIMIT_RAW


_decompressors: dict[str, Compressor] = {}
_decompressors_lock = ChildLock()


def _decompressor(name: str) -> Compressor:
    with _decompressors_lock.lock:
        comp = _decompressors.get(name)
        if comp is None:
            comp = COMPRESSORS[name][1]()
            _decompressors[name] = comp
        return comp
