"""Items put through the queues.

Every item is a JSON-like record (a dict with a few fields and a text
payload) whose compact JSON encoding is exactly ``size`` bytes. Contestants
that take Python objects get the dict itself (and pay for its serialization
inside the measured time); byte-only contestants get its JSON encoding as
bytes, and text-only ones as str, both prepared before the clock starts.
The text is drawn from a small vocabulary, so it compresses roughly as
log lines or job arguments do.
"""

from __future__ import annotations

import json
import random
from typing import Any

from measurements.spec import Accepts

_VOCABULARY = (
    "order customer invoice shipment warehouse payment refund account email "
    "address street city country region status pending accepted rejected "
    "retry timeout network service request response header token session user "
    "created updated deleted priority normal high low batch worker queue task "
    "job result error warning info debug trace span metric value total amount "
    "currency euro dollar price quantity product sku category discount coupon"
)
_WORDS = tuple(_VOCABULARY.split())

_KINDS = ("order.created", "order.paid", "invoice.sent", "user.signup", "report.ready")


def _text(rng: random.Random, length: int) -> str:
    words: list[str] = []
    total = 0
    while total < length:
        word = rng.choice(_WORDS)
        words.append(word)
        total += len(word) + 1
    return " ".join(words)[:length]


def _skeleton(i: int, size: int, rng: random.Random) -> dict[str, Any]:
    record: dict[str, Any] = {"id": i, "kind": rng.choice(_KINDS)}
    if size >= 160:
        record["ts"] = f"2024-05-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z"
        record["tenant"] = f"tenant-{i % 17}"
        record["attempt"] = 0
    if size >= 1024:
        record["tags"] = [rng.choice(_WORDS) for _ in range(4)]
        record["meta"] = {"source": "checkout", "region": rng.choice(("eu", "us", "ap"))}
    record["payload"] = ""
    return record


def make_record(i: int, size: int, rng: random.Random) -> dict[str, Any]:
    """A dict whose compact JSON encoding is exactly ``size`` bytes (when size >= 60)."""
    record = _skeleton(i, size, rng)
    room = size - len(encode(record))
    record["payload"] = _text(rng, max(room, 0))
    return record


def encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


def make_items(n: int, size: int, accepts: Accepts, seed: int = 1) -> list[Any]:
    """``n`` items of about ``size`` bytes in the form the contestant takes."""
    rng = random.Random(seed)
    records = [make_record(i, size, rng) for i in range(n)]
    if accepts == "object":
        return records
    if accepts == "str":
        return [encode(r).decode() for r in records]
    return [encode(r) for r in records]
