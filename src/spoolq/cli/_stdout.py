"""Standard output that writes everything it is given, even when Python runs unbuffered.

With ``PYTHONUNBUFFERED`` set (or ``python -u``) ``sys.stdout`` writes straight to an
unbuffered file, whose ``write`` may write only part of what it is given: the
``write(2)`` into a pipe whose reader has gone away, or one a signal interrupts, writes
what fits and returns. ``sys.stdout`` drops the rest without a word, so a command
writing a large table or JSON document in one call would lose output, and end with
status 0 after its reader went away instead of ending as :func:`spoolq.cli.console`
says. :func:`whole_writes` puts a ``sys.stdout`` in place whose every write is complete
or raises, as a buffered ``sys.stdout``'s is.
"""

from __future__ import annotations

import io
import select
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

__all__ = ["whole_writes"]


class _WholeWrites(io.FileIO):
    """An unbuffered file whose :meth:`write` writes all its data or raises."""

    def write(self, data: Any, /) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            n = super().write(view[done:])
            if n is None:  # a non-blocking descriptor that is full: wait until it is not
                select.select([], [self], [])
                continue
            done += n
        return done


@contextmanager
def whole_writes() -> Iterator[None]:
    """While in the ``with`` block, ``sys.stdout`` writes every byte or raises (a
    ``BrokenPipeError`` when the reader went away); the ``sys.stdout`` of an unbuffered
    Python otherwise loses what a short write left over. A buffered or replaced
    ``sys.stdout`` (a program running :func:`spoolq.cli.main` on a ``StringIO``) is
    left as it is."""
    out = sys.stdout
    raw = getattr(out, "buffer", None)
    if not isinstance(out, io.TextIOWrapper) or not isinstance(raw, io.FileIO) \
            or isinstance(raw, _WholeWrites) or raw.closed:
        yield
        return
    whole = io.TextIOWrapper(_WholeWrites(raw.fileno(), "w", closefd=False),
                             encoding=out.encoding, errors=out.errors,
                             line_buffering=out.line_buffering, write_through=True)
    sys.stdout = whole
    try:
        yield
    finally:
        if sys.stdout is whole:
            sys.stdout = out
        with suppress(OSError, ValueError):
            whole.detach()  # leaves the descriptor open; nothing is held back to write
