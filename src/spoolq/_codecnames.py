"""Which serializer or compressor a codec setting names: a built-in by its name, or an
object with the two methods, known by the name records store for it."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from ._onethread import OneAtATime
from ._unpacking import CUSTOM_ID
from .errors import ConfigurationError

__all__ = ["resolve_codec"]


def _custom_name(obj: object) -> str:
    name = getattr(obj, "name", None)
    if isinstance(obj, types.ModuleType):
        name = obj.__name__
    elif not isinstance(name, str) or not name:
        cls = type(obj) if not isinstance(obj, type) else obj
        name = f"{cls.__module__}.{cls.__qualname__}"
    try:
        size = len(name.encode())
    except UnicodeEncodeError as exc:  # a lone surrogate: records store names as UTF-8
        raise ConfigurationError(f"codec name {name[:40]!r} is not valid Unicode text: "
                                 f"{exc.reason}") from None
    if size > 255:
        raise ConfigurationError(f"codec name {name[:40]!r}... is longer than 255 bytes")
    return name


def resolve_codec(kind: str, spec: object, table: dict[str, tuple[int, Callable[[], Any]]],
             methods: tuple[str, str]) -> tuple[int, str, Any]:
    if isinstance(spec, str):
        try:
            ident, factory = table[spec]
        except KeyError:
            raise ConfigurationError(
                f"unknown {kind} {spec!r}; choose one of {', '.join(sorted(table))} "
                f"or pass an object with {methods[0]}/{methods[1]}"
            ) from None
        return ident, spec, factory()
    if all(callable(getattr(spec, m, None)) for m in methods):
        name = _custom_name(spec)
        if name not in table:
            return CUSTOM_ID, name, OneAtATime(spec)
        # A file stores the codec's name, and reopening by that name gives the built-in:
        # records written under a built-in's name by another object would not decode.
        if isinstance(spec, types.ModuleType):
            ident, factory = table[name]  # the module the built-in is made of
            return ident, name, factory()
        raise ConfigurationError(
            f"a custom {kind} cannot be named {name!r}, the name of the built-in one: "
            f"give it another name, or pass {kind}={name!r} for the built-in")
    raise ConfigurationError(
        f"{kind} must be a name or an object with {methods[0]}() and {methods[1]}(), "
        f"not {type(spec).__name__}"
    )
