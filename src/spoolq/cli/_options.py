"""Click options and parameter types the subcommands share."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import click

from ..engines import ENGINES
from ..errors import SpoolqError
from ..settings import check_queue_name
from ._common import one_line

__all__ = [
    "FiniteFloatRange",
    "engine_option",
    "json_option",
    "queue_option",
    "schema_option",
]


def _check_engine(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and value not in ENGINES:
        raise click.BadParameter(
            f"no engine named {value!r}; known engines: {', '.join(sorted(ENGINES))}")
    if value == "memory":
        raise click.BadParameter("the memory engine holds nothing outside the program that "
                                 "made it, so there is no file to work on")
    return value


def engine_option(*names: str, dest: str = "engine",
                  help: str | None = None) -> Callable[[Any], Any]:
    """``--engine NAME``: overrides the engine the path's suffix picks (never ``memory``)."""
    return click.option(*(names or ("--engine",)), dest, default=None, metavar="NAME",
                        callback=_check_engine,
                        help=help or "Engine to open PATH with (default: picked by suffix).")


def _check_queue(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_queue_name(value)
    except SpoolqError as exc:
        raise click.BadParameter(one_line(exc)) from None


def queue_option(default: str | None = "default") -> Callable[[Any], Any]:
    """``--queue NAME`` (``-q``): a usage error unless NAME is a name a queue can have
    (non-empty, valid UTF-8 of at most 255 bytes, no NUL)."""
    text = ("Named queue (default: every queue in the file)." if default is None
            else f"Named queue (default: {default!r}).")
    return click.option("--queue", "-q", "queue", default=default, metavar="NAME",
                        callback=_check_queue, help=text)


class FiniteFloatRange(click.FloatRange):
    """A float option in a range, and a finite number: click's FloatRange lets NaN
    through (no comparison with it is true) and infinity through an open bound."""

    name = "finite float range"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


def _check_schema(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not 1 <= len(value.encode("utf-8", "surrogatepass")) <= 63:
        raise click.BadParameter("a PostgreSQL schema name is 1 to 63 bytes long")
    return value


def schema_option(*names: str, dest: str = "schema", what: str = "PATH") -> Callable[[Any], Any]:
    """``--schema NAME``: the PostgreSQL schema of a ``postgresql://`` ``what``;
    :func:`open_existing` refuses it for a path of another engine."""
    return click.option(*(names or ("--schema",)), dest, default=None, metavar="NAME",
                        callback=_check_schema,
                        help=f"PostgreSQL schema, for a postgresql:// {what} (default: spoolq).")


def json_option() -> Callable[[Any], Any]:
    """``--json``: print one JSON document instead of tables."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print JSON for scripts instead of tables.")
