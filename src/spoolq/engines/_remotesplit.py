"""How the remote engine cuts an append, ack or release into several requests: so that
each reply of ids fits in what the client accepts, and each ack or release of many
deliveries fits one frame of the server (its ``max_frame``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import cbor2

from ..protocol import HEADER, ReplyTooLarge

__all__ = ["Settling", "delivery_parts"]

# What the deliveries' array head may take beyond the byte measured with an empty array.
_ARRAY_SLACK = 8
_LARGEST = 19  # one delivery: an array of two ints of 9 bytes each at most


def _int_size(value: int) -> int:
    """Bytes of ``value`` as a CBOR integer (from -2**64 to 2**64 - 1)."""
    if value < 0:
        value = -1 - value
    return 1 if value < 24 else 2 if value < 256 else 3 if value < 65536 \
        else 5 if value < 1 << 32 else 9


def delivery_parts(op: str, args: Mapping[str, Any], max_frame: int) -> list[slice]:
    """The runs of ``args["deliveries"]`` (each ``[id, attempts]``) that each make a
    request ``op`` of ``args`` of at most ``max_frame`` bytes; one run when they all fit.
    A run holds one delivery at least (a request too large even so is refused when sent)."""
    deliveries = args["deliveries"]
    base = HEADER.size + len(cbor2.dumps({"op": op, **args, "deliveries": []})) + _ARRAY_SLACK
    total = len(deliveries)
    if base + _LARGEST * total <= max_frame:
        return [slice(0, total)]
    parts: list[slice] = []
    start, size = 0, base
    for k, (ident, attempts) in enumerate(deliveries):
        cost = 1 + _int_size(ident) + _int_size(attempts)
        if k > start and size + cost > max_frame:
            parts.append(slice(start, k))
            start, size = k, base
        size += cost
    parts.append(slice(start, total))
    return parts


class Settling:
    """The remote engine's requests of many ids, sent in parts."""

    server_info: dict[str, Any]
    _call: Callable[..., Any]
    _ids: Callable[[Any], list[int]]

    def _settle(self, op: str, args: dict[str, Any]) -> list[int]:
        """Send an ack or release as requests that each fit one frame of the server and
        whose replies of ids each fit in ``max_reply``, in order; the ids they found. Each
        is its own request, applied or not on its own, as separate calls would be."""
        ids: list[int] = []
        for part in delivery_parts(op, args, self.server_info["max_frame"]):
            these = dict(args, deliveries=args["deliveries"][part])
            try:
                ids += self._ids(self._call(op, these))
            except ReplyTooLarge as exc:
                self._in_parts(op, these, ("deliveries",), exc.fits, ids)
        return ids

    def _in_parts(self, op: str, args: dict[str, Any], fields: tuple[str, ...],
                  size: int, ids: list[int] | None = None) -> list[int]:
        """Send ``op`` as several requests of ``size`` elements of ``fields`` each, in
        order, so that each reply of ids fits in ``max_reply``; their ids, in order,
        added to ``ids`` (when given) as each reply comes."""
        ids = [] if ids is None else ids
        total = len(args[fields[0]])
        for start in range(0, total, size):
            part = dict(args)
            for field in fields:
                part[field] = args[field][start:start + size]
            ids += self._ids(self._call(op, part))
        return ids
