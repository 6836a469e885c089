"""Output: formatting numbers, ages and owners, and :class:`CliState`'s tables and notes."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ..engines import Engine, dead_queue_name
from ..owners import owner_is_dead, owner_is_here
from ._common import base_queues

__all__ = [
    "CliState",
    "format_age",
    "format_bytes",
    "is_interactive",
    "json_document",
    "owner_state",
    "printable",
    "ratio_pct",
]


# ---- formatting ---------------------------------------------------------------------------

def format_bytes(n: int) -> str:
    """``1536`` → ``"1.5 KiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_age(seconds: float | None) -> str:
    """``200`` → ``"3m 20s"``; None → ``"-"``; NaN or infinity → ``"?"``."""
    if seconds is None:
        return "-"
    if not math.isfinite(seconds):  # a time in a damaged file, or one a foreign writer set
        return "?"
    s = max(int(seconds), 0)
    for size, unit, sub_size, sub_unit in ((86400, "d", 3600, "h"), (3600, "h", 60, "m"),
                                           (60, "m", 1, "s")):
        if s >= size:
            return f"{s // size}{unit} {(s % size) // sub_size}{sub_unit}"
    return f"{s}s"


def ratio_pct(stored: int, raw: int) -> float | None:
    """Space saved by compression, ``(1 - stored/raw) * 100``; None when empty."""
    return None if raw == 0 else round((1 - stored / raw) * 100, 1)


def owner_state(owner: str) -> str:
    """``"gone"`` (a process of this host that no longer runs), ``"running"`` (one that
    does) or ``"unknown"`` (another host or container, even with this host name, or an
    owner name of another form)."""
    if owner_is_dead(owner):
        return "gone"
    return "running" if owner_is_here(owner) else "unknown"


_SURROGATE = re.compile("[\ud800-\udfff]")
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` as a terminal can show it, on one line: a control character (an escape
    sequence or a line break in a queue name or lease owner, which any program may
    have written into the file) as ``\\x1b``; a byte of a file name that is not UTF-8
    (which Python holds as a lone surrogate) as ``\\xff``, another lone surrogate as
    ``\\udcff``."""
    def escape(match: re.Match[str]) -> str:
        code = ord(match.group())
        if 0xDC80 <= code <= 0xDCFF:
            code -= 0xDC00
        return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"

    return _UNPRINTABLE.sub(escape, text)


def _finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_finite(value) for value in data]
    return data


def json_document(data: Any) -> str:
    """``data`` as indented JSON that is valid UTF-8: a lone surrogate (a byte of a file
    name that is not UTF-8) is written as a ``\\udcff`` escape, which ``json.loads``
    reads back and ``os.fsencode`` turns into the byte again. A number that is not finite
    (a time in a damaged file), which JSON cannot hold, is null."""
    text = json.dumps(_finite(data), indent=2, ensure_ascii=False)
    # Surrogates only occur inside JSON strings, where an escape stands for them.
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def is_interactive() -> bool:
    """Whether a person can answer a question: stdin and stderr are terminals."""
    # Either is None when the command was started with it closed (<&-, 2>&-).
    return (sys.stdin is not None and sys.stdin.isatty()
            and sys.stderr is not None and sys.stderr.isatty())


def _holds_items(engine: Engine, name: str) -> bool:
    counts = engine.counts(name)
    return counts.ready + counts.leased > 0


# ---- output -------------------------------------------------------------------------------

class _Console(Console):
    """A console that lets a broken pipe reach the command (which then ends as other
    tools do when their reader goes away); rich's own way exits with status 1."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


class _Table(Table):
    """A table whose title :meth:`CliState.print_table` prints as a line of its own."""

    heading: str | None = None


class CliState:
    """Where a command writes: tables on stdout, notes and progress on stderr."""

    def __init__(self) -> None:
        self.out = _Console(highlight=False, soft_wrap=False)
        self.err = _Console(stderr=True, highlight=False)

    def table(self, *columns: str, title: str | None = None, fold: bool = False,
              others_width: int = 40) -> _Table:
        """A table for people, shown with :meth:`print_table`. Columns named ``#...`` hold
        numbers (right-aligned); ``~...`` hold long text, cut to one line with an ellipsis
        unless ``fold``, leaving about ``others_width`` characters of the console's width
        to the other columns."""
        table = _Table(box=None, header_style="bold", pad_edge=False, padding=(0, 1, 0, 0))
        table.heading = None if title is None else printable(title)
        for col in columns:
            if col.startswith("~") and not fold:
                table.add_column(col[1:], no_wrap=True, overflow="ellipsis",
                                 max_width=max(self.out.width - others_width, 20))
            else:
                table.add_column(col.lstrip("#~"), overflow="fold", min_width=len(col) - 1,
                                 justify="right" if col.startswith("#") else "left")
        return table

    def print_table(self, table: _Table, *, min_width: int | None = None) -> None:
        """Print ``table`` on stdout after its title, a line of its own (rich would break
        a title longer than the table at the table's width).

        The table is laid out at least ``min_width`` wide (default: what its cells need
        unbroken; a table with a ``~`` column must say), wider than the terminal or than a
        pipe's 80 columns if need be: rich would otherwise cut a lease owner in two, or
        leave out whole columns.
        """
        if table.heading is not None:
            self.line(table.heading)
        if min_width is None:
            # The maximum: at a smaller width rich would break a cell that has a space
            # ("21 B"), or take the width from the widest column (a queue name) instead.
            min_width = Measurement.get(self.out, self.out.options.update_width(2**20),
                                        table).maximum
        if min_width <= self.out.width:
            self.out.print(table)
            return
        wide = _Console(highlight=False, soft_wrap=False, width=min_width)
        wide.print(table)

    @staticmethod
    def add_row(table: Table, *cells: object) -> None:
        """Add a row of plain text: brackets in queue names or items are not markup."""
        table.add_row(*(c if isinstance(c, Text) else Text(printable(str(c))) for c in cells))

    def check_queue_name(self, engine: Engine, *names: str) -> None:
        """Note on stderr when none of ``names`` holds items, naming the queues that do:
        a mistyped ``--queue`` otherwise looks like an empty queue."""
        if not any(_holds_items(engine, name) for name in names):
            # An engine may list a queue that holds nothing (created, or emptied).
            others = ", ".join(
                base if _holds_items(engine, base) else f"{base} (dead letters only)"
                for base in base_queues(engine)
                if _holds_items(engine, base) or _holds_items(engine, dead_queue_name(base)))
            if names[0] in base_queues(engine) and _holds_items(
                    engine, dead_queue_name(names[0])):
                self.note(f"note: queue {names[0]!r} holds dead letters only (--dead shows "
                          f"them); queues with items: {others}")
                return
            self.note(f"note: no queue {names[0]!r} holds items in this file "
                      f"(queues with items: {others or 'none'})")

    def print_json(self, data: Any) -> None:
        click.echo(json_document(data))

    def line(self, text: str) -> None:
        """A line of plain text on stdout, left to the terminal to wrap."""
        self.out.print(Text(printable(text)), soft_wrap=True)

    def note(self, message: str) -> None:
        """A line for people on stderr (kept out of data written to stdout)."""
        self.err.print(Text(printable(message)), soft_wrap=True)

    @contextmanager
    def progress(self, description: str, total: int | None, *,
                 data_on_stdout: bool = False) -> Iterator[Callable[[int], None]]:
        """A progress bar on a terminal's stderr; nothing at all when stderr is piped, nor
        when the command writes its data to stdout (``data_on_stdout``): on the terminal
        that shows stderr, the bar would be drawn among the lines of the data (or of
        the program the data is piped to), and left there."""
        hidden = not self.err.is_terminal or data_on_stdout
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=self.err, transient=True,
                      disable=hidden) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)
