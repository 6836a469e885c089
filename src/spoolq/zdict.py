"""zstd with a dictionary trained from the queue's own records (``compressor="zstd-dict"``).

Small records barely compress on their own: a 100-byte record has no history
for zstd to refer to. A dictionary trained on earlier records supplies that
history. The compressor collects samples from the first records it sees
(compressing them with plain zstd meanwhile); once it has enough, the queue
trains a dictionary, stores it in the file (so any reader, online or offline,
finds it there) and compresses every later record with it.

Dictionaries are numbered 1, 2, ... within a file: they are the records of an
internal queue (``DICTIONARY_QUEUE``). A compressed payload is one byte naming the
dictionary (0: none) followed by a magic-less zstd frame without a dictionary
id: for records of a hundred bytes, those nine bytes of framing are a large
part of what is saved. A codec can hold several dictionaries, so records stay
readable whichever dictionary wrote them, in any queue of the file.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from typing import TYPE_CHECKING

import zstandard

from ._inchild import InChild
from .errors import CorruptError, SerializationError

if TYPE_CHECKING:
    from .codec import Codec
    from .engines.base import Engine, StoredRecord

__all__ = ["DICTIONARY_QUEUE", "MAX_UNPACKED_SIZE", "MissingDictionary", "ZstdDictCompressor",
           "check_zstd_frame", "checksum_key", "damaged_dictionaries", "dictionary_damage",
           "load_dictionaries", "train_dictionary"]

log = logging.getLogger("spoolq")

DICTIONARY_QUEUE = "__spoolq_dictionaries__"
"""The internal queue holding trained zstd dictionaries, one record each."""

DICT_SIZE = 16 * 1024


class MissingDictionary(SerializationError):
    """A record names a zstd dictionary this codec has not been given (yet)."""


MAX_UNPACKED_SIZE = 256 * 1024 * 1024
"""The largest payload spoolq compresses, and so the most a record may decompress to.

A larger serialized item is stored uncompressed, so every record spoolq writes
stays readable; a small hostile record (a "decompression bomb") is refused instead
of being unpacked to gigabytes."""

# A zstd block holds at most 128 KiB, and the smallest (an RLE block) takes 4 bytes: a
# frame this many times shorter than the limit cannot decompress beyond it.
_ZSTD_MAX_RATIO = 32 * 1024


def check_zstd_frame(frame: bytes, fmt: int = zstandard.FORMAT_ZSTD1) -> None:
    """Raise ``ValueError`` when a zstd frame declares more than :data:`MAX_UNPACKED_SIZE`
    bytes of content (the size zstandard would allocate before decompressing)."""
    if len(frame) * _ZSTD_MAX_RATIO > MAX_UNPACKED_SIZE:
        size = zstandard.get_frame_parameters(frame, format=fmt).content_size
        if size > MAX_UNPACKED_SIZE:
            raise ValueError(f"the payload declares {size} bytes, more than the "
                             f"{MAX_UNPACKED_SIZE} bytes spoolq ever compresses")


SAMPLE_COUNT = 1000
SAMPLE_BYTES = 1 << 20
SAMPLE_MIN_COUNT = 100
"""Training waits for this many samples even once they reach SAMPLE_BYTES: zstd cannot
train a dictionary from a handful of (large) samples."""
SAMPLE_MAX_SIZE = DICT_SIZE
"""Only this much of a payload is kept as a sample: a dictionary holds what small records
share, and a large record would crowd out the others."""
LEVEL = 3
_FORMAT = zstandard.FORMAT_ZSTD1_MAGICLESS



class ZstdDictCompressor:
    """Compresses with the active dictionary; decompresses with any registered one.

    Thread-safe: compressor and decompressor objects are kept per thread.
    """

    name = "zstd-dict"

    def __init__(self, level: int = LEVEL) -> None:
        self._level = level
        self._dicts: dict[int, zstandard.ZstdCompressionDict] = {}
        self._damaged: dict[int, str] = {}
        self.active_id: int | None = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._samples: list[bytes | bytearray | memoryview] = []
        self._sample_bytes = 0
        self._generation = 0
        # A training under way in a thread of its own, and the list its result goes in.
        self._background: tuple[threading.Thread, list[bytes | None]] | None = None
        _instances.add(self)

    def _after_fork_in_child(self) -> None:
        # The thread that held the lock (or trained) at the fork does not exist here: a
        # lock it held would be waited for for ever, and a training it ran never ends.
        self._lock = threading.Lock()
        self._generation += 1  # caches made from a change the fork cut short
        background = self._background
        if background is not None and not background[1]:
            self._background = None  # sample again

    # ---- dictionaries -------------------------------------------------------------------

    def add(self, number: int, dict_bytes: bytes) -> None:
        """Register dictionary ``number`` (1..255) for decompression."""
        if not 1 <= number <= 255:
            raise CorruptError(f"zstd dictionary number {number} is out of range")
        with self._lock:
            self._dicts[number] = zstandard.ZstdCompressionDict(dict_bytes)
            self._damaged.pop(number, None)
            self._generation += 1

    def add_damaged(self, number: int, reason: str) -> None:
        """Make records needing dictionary ``number`` raise :class:`CorruptError` with
        ``reason`` (unless a sound copy of it is registered already)."""
        with self._lock:
            if number not in self._dicts:
                self._damaged[number] = reason

    def activate(self, number: int, dict_bytes: bytes) -> None:
        """Register dictionary ``number`` and compress every later record with it."""
        self.add(number, dict_bytes)
        with self._lock:
            self.active_id = number
            self._samples.clear()
            self._generation += 1

    # ---- sampling and training ----------------------------------------------------------

    def sample(self, data: bytes) -> None:
        """Keep a payload as a training sample while no dictionary is active, until the
        samples are enough to train from: puts made before the training (a batch's, or
        those made while it waits for a thread) add none, so the samples stay about
        SAMPLE_BYTES, and so does the training's work."""
        if self.active_id is None and self._background is None and not self._enough():
            if len(data) > SAMPLE_MAX_SIZE:
                data = bytes(data[:SAMPLE_MAX_SIZE])
            self._samples.append(data)
            self._sample_bytes += len(data)

    @property
    def training_due(self) -> bool:
        """True once the samples are enough to train a dictionary from, or once a
        training started by :meth:`train_in_background` is done."""
        background = self._background
        if background is not None:
            return not background[0].is_alive()
        return self.active_id is None and self._enough()

    def _enough(self) -> bool:
        count = len(self._samples)
        return count >= SAMPLE_COUNT or (count >= SAMPLE_MIN_COUNT
                                         and self._sample_bytes >= SAMPLE_BYTES)

    def drop_samples(self) -> list[bytes | bytearray | memoryview]:
        """Forget the samples kept so far, and return them."""
        with self._lock:
            samples, self._samples, self._sample_bytes = self._samples, [], 0
        return samples

    def train(self) -> bytes | None:
        """Train a dictionary from the samples; None when they are too few or too alike.

        After :meth:`train_in_background`, the dictionary that training made (waiting
        for it if it is still under way)."""
        with self._lock:
            background, self._background = self._background, None
        if background is not None:
            background[0].join()
            return background[1][0] if background[1] else None
        return self._train_from(self.drop_samples())

    def train_in_background(self) -> None:
        """Train from the samples in a thread of its own (zstd releases the GIL meanwhile),
        so that the caller does not wait the tens of milliseconds training takes;
        :attr:`training_due` turns true again when it is done, and :meth:`train` then
        returns its dictionary at once."""
        samples = self.drop_samples()
        result: list[bytes | None] = []

        def run() -> None:
            try:
                result.append(self._train_from(samples))
            except Exception:
                log.exception("spoolq: training a zstd dictionary failed")

        thread = threading.Thread(target=run, name="spoolq-zstd-dict-training", daemon=True)
        with self._lock:
            self._background = (thread, result)
        thread.start()

    @property
    def training_in_background(self) -> bool:
        """Whether a training started by :meth:`train_in_background` has not been
        collected by :meth:`train` yet."""
        return self._background is not None

    def _train_from(self, samples: list[bytes | bytearray | memoryview]) -> bytes | None:
        try:
            trained = zstandard.train_dictionary(DICT_SIZE, samples, level=self._level)
        except zstandard.ZstdError:
            return None
        return bytes(trained.as_bytes())

    # ---- compression --------------------------------------------------------------------

    def _compressor(self) -> tuple[bytes, zstandard.ZstdCompressor]:
        cached = getattr(self._local, "compressor", None)
        # Read before the dictionary it selects: a dictionary activated meanwhile then
        # shows as a newer generation on the next call, not as this one.
        generation = self._generation
        if cached is None or cached[0] != generation:
            number = self.active_id or 0
            params = zstandard.ZstdCompressionParameters.from_level(
                self._level, format=_FORMAT, write_dict_id=False, write_checksum=False,
                write_content_size=True)
            comp = zstandard.ZstdCompressor(dict_data=self._dicts.get(number),
                                            compression_params=params)
            cached = self._local.compressor = (generation, bytes([number]), comp)
        return cached[1], cached[2]

    def compress(self, data: bytes) -> bytes:
        """Compress with the active dictionary (none while sampling)."""
        prefix, comp = self._compressor()
        return prefix + comp.compress(data)

    def decompress(self, data: bytes) -> bytes:
        """Decompress a payload written with any registered dictionary."""
        if not data:
            raise CorruptError("empty zstd-dict payload")
        number = data[0]
        cached: tuple[int, dict[int, zstandard.ZstdDecompressor]] | None = getattr(
            self._local, "decompressors", None)
        if cached is None or cached[0] != self._generation:
            # A number registered again may hold another dictionary now.
            cached = self._local.decompressors = (self._generation, {})
        cache = cached[1]
        dec = cache.get(number)
        if dec is None:
            zdict = self._dicts.get(number)
            if number and zdict is None and number in self._damaged:
                raise CorruptError(self._damaged[number])
            if number and zdict is None:
                raise MissingDictionary(
                    f"the record needs zstd dictionary {number}, which this reader does not "
                    "have")
            dec = cache[number] = zstandard.ZstdDecompressor(dict_data=zdict, format=_FORMAT)
        frame = data[1:]
        check_zstd_frame(frame, _FORMAT)
        return bytes(dec.decompress(frame))


_instances: InChild[ZstdDictCompressor] = InChild(
    lambda compressor: compressor._after_fork_in_child())


def checksum_key(number: int) -> str:
    """The metadata key holding the CRC-32 of dictionary ``number`` (8 hex digits)."""
    return f"zstd-dict/{number}/crc32"


def _checksum(dict_bytes: bytes) -> bytes:
    return b"%08x" % zlib.crc32(dict_bytes)


def _damage(engine: Engine, number: int, rec: StoredRecord) -> str | None:
    """Why dictionary ``number`` (record ``rec``) is damaged, or None when it is sound: it
    fails the checksum stored beside it, or (in files from before checksums, which store
    none) zstd cannot load it as the trained dictionary spoolq stores. Compressing with such
    a dictionary would fail every put; and zstd takes bytes that lost a trained
    dictionary's header (or every byte) for a dictionary of raw content, with which
    records would decode into other bytes. :data:`_KEPT` for a place that never held a
    dictionary (see :func:`_kept_place`)."""
    dict_bytes = rec.data
    stored = engine.get_meta(checksum_key(number))
    if stored is not None and not dict_bytes:  # kept in place of one lost (see _lost)
        return _MISSING
    if stored is not None:
        return None if stored == _checksum(dict_bytes) else "it fails its checksum"
    if _kept_place(rec):
        return _KEPT
    try:
        zstandard.ZstdCompressionDict(dict_bytes, dict_type=zstandard.DICT_TYPE_FULLDICT
                                      ).precompute_compress(level=LEVEL)
    except zstandard.ZstdError as exc:
        return f"zstd cannot load it ({exc})"
    return None


def _kept_place(rec: StoredRecord) -> bool:
    """Whether ``rec``, a dictionary record without a checksum, is an empty record that
    :func:`train_dictionary` appended to keep a lost dictionary's number, but behind
    another handle's training that kept the same number a moment before (both looked for
    lost numbers before either appended). No dictionary was ever stored under its
    number, so no record names it: it is no damage. A dictionary record always has a
    raw size (its length), which damage to its bytes leaves; a kept place has none."""
    return not rec.data and rec.raw_size == 0


_MISSING = "it is missing (the file keeps its checksum, not the dictionary)"
_KEPT = "it never held a dictionary (an empty record keeps its place)"


def _lost(engine: Engine, held: int) -> list[int]:
    """Numbers after the file's last dictionary (``held`` of them) whose checksums the
    file stores without the dictionaries: damage dropped their records. A dictionary is
    appended before its checksum is stored, so a checksum whose record is not there when
    looked for after it is a loss, not another handle's training under way."""
    lost: list[int] = []
    for number in range(held + 1, 256):
        if engine.get_meta(checksum_key(number)) is None:
            break
        if engine.peek(DICTIONARY_QUEUE, 1, offset=number - 1):
            break  # appended meanwhile: a later load gives it
        lost.append(number)
    return lost


def dictionary_damage(engine: Engine) -> list[tuple[int, str]]:
    """``(number, why)`` of each of the file's zstd dictionaries that fails the checksum
    stored beside it (or, without one, that zstd cannot load), or that the file lost. A
    place kept by an empty record that never held a dictionary is none of them."""
    held = engine.peek(DICTIONARY_QUEUE, 255)
    found = [(number, _damage(engine, number, rec))
             for number, rec in enumerate(held, start=1)]
    return [(number, why) for number, why in found if why not in (None, _KEPT)] + [
        (number, _MISSING) for number in _lost(engine, len(held))]


def damaged_dictionaries(engine: Engine) -> list[int]:
    """Numbers of the file's zstd dictionaries that :func:`dictionary_damage` names."""
    return [number for number, _why in dictionary_damage(engine)]


def load_dictionaries(engine: Engine, name: str, codec: Codec) -> None:
    """Give ``codec`` every zstd dictionary in the file; activate queue ``name``'s own.

    Dictionaries are records of the internal queue ``DICTIONARY_QUEUE``,
    numbered by their place in it: appends are atomic, nothing takes from that
    queue, and its appends become visible in the order of their ids (PostgreSQL,
    which draws ids before commit, makes them take turns), so no two processes can
    give one number to two dictionaries.
    A dictionary that fails the checksum stored beside it (or, without one,
    that zstd cannot load) is not used: records that need it raise
    :class:`CorruptError` (a damaged dictionary would decode them into wrong
    items, as their own checksums cover only compressed bytes), and a queue
    whose own dictionary it was trains another. So do records needing a dictionary
    whose record the file lost (it keeps the checksum): a dictionary trained later
    never takes its number. An empty record that kept a lost number's place behind
    another training's (see :func:`_kept_place`) is no damage and is not reported.
    """
    active = engine.get_meta(f"queue/{name}/zstd-dict")
    held = engine.peek(DICTIONARY_QUEUE, 255)
    damaged = [(number, _damage(engine, number, rec))
               for number, rec in enumerate(held, start=1)]
    damaged += [(number, _MISSING) for number in _lost(engine, len(held))]
    for number, damage in damaged:
        if damage == _KEPT:  # no record names it: nothing to report
            codec.add_damaged_dictionary(number, f"zstd dictionary {number} of the file: "
                                         f"{damage}")
        elif damage is not None:
            reason = f"zstd dictionary {number} of the file is damaged: {damage}"
            log.error("spoolq: %s; records compressed with it cannot be decoded", reason)
            codec.add_damaged_dictionary(number, reason)
        else:
            codec.add_dictionary(number, held[number - 1].data,
                                 activate=active == str(number).encode())


def train_dictionary(engine: Engine, name: str, codec: Codec) -> None:
    """Train queue ``name``'s dictionary from ``codec``'s samples and store it in the file.

    A file holds at most 255 dictionaries (a record names one in a byte); once it is
    full, the codec stops sampling and keeps compressing without a dictionary. When another
    handle stored the queue's dictionary meanwhile, the codec uses that one instead. With an
    engine that never blocks (``inline``, called on an async queue's event loop), the
    first call starts the training in a thread of its own and returns; the call made
    once :attr:`Codec.training_due` is true again stores the dictionary."""
    if _trained_elsewhere(engine, name, codec):  # first: it may be the one that filled it
        return
    if engine.peek(DICTIONARY_QUEUE, 1, offset=254):
        _file_full(name, codec)
        return
    if getattr(engine, "inline", False) and codec.train_in_background():
        # An engine that never blocks is called on the event loop of an async queue,
        # which training would hold up: a later put stores the dictionary once trained.
        return
    trained = codec.train()
    if trained is None:
        log.info("spoolq: queue %r: records too few or too alike for a zstd dictionary", name)
        return
    if _trained_elsewhere(engine, name, codec):  # while this one trained
        return
    # The numbers of lost dictionaries stay taken: records compressed with one would
    # decode with this one into wrong items. An empty record keeps each one's place;
    # when another handle kept them meanwhile, these land after its records, where no
    # checksum is stored, and are known for places kept (see _kept_place).
    keep = [b""] * len(_lost(engine, len(engine.peek(DICTIONARY_QUEUE, 255))))
    *_kept, ident = engine.append(DICTIONARY_QUEUE, [*keep, trained],
                                  [0] * len(keep) + [len(trained)], time.time())
    held = [rec.id for rec in engine.peek(DICTIONARY_QUEUE, 256)]
    number = held.index(ident) + 1 if ident in held else 256
    if number > 255:  # another process filled the file meanwhile
        _file_full(name, codec)
        return
    engine.set_meta(checksum_key(number), _checksum(trained))
    engine.set_meta(f"queue/{name}/zstd-dict", str(number).encode())
    codec.add_dictionary(number, trained, activate=True)
    log.info("spoolq: queue %r: trained zstd dictionary %d (%d bytes)", name, number,
             len(trained))


def _trained_elsewhere(engine: Engine, name: str, codec: Codec) -> bool:
    """Whether another handle (of this process or another) stored queue ``name``'s
    dictionary since this one read the file's: then ``codec`` compresses with that one
    from now on, and the queue gets no second dictionary."""
    stored = engine.get_meta(f"queue/{name}/zstd-dict")
    if stored is None or not stored.isdigit() or not 1 <= int(stored) <= 255:
        return False
    held = engine.peek(DICTIONARY_QUEUE, 1, offset=int(stored) - 1)
    if not held or _damage(engine, int(stored), held[0]) is not None:
        return False  # this handle trains another (the damage was logged when it opened)
    load_dictionaries(engine, name, codec)
    return not codec.sampling


def _file_full(name: str, codec: Codec) -> None:
    codec.stop_sampling()
    log.warning("spoolq: queue %r: the file holds 255 zstd dictionaries already; the queue "
                "compresses without one", name)
