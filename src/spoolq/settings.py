"""The settings of a queue handle, checked once when it is created."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .engines import Engine
from .engines.remote import url_queue_name
from .errors import ConfigurationError

__all__ = ["DURABILITIES", "Settings", "resolve_target"]

DURABILITIES = ("fsync", "commit", "buffer")


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated settings of one queue handle."""

    name: str = "default"
    maxsize: int = 0
    durability: str = "commit"
    flush_items: int = 1000
    flush_interval: float = 1.0
    max_attempts: int | None = None
    poll_interval: float = 0.05
    compress_threshold: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError(f"name must be a non-empty string, not {self.name!r}")
        if not isinstance(self.maxsize, int) or self.maxsize < 0:
            raise ConfigurationError(f"maxsize must be an int >= 0, not {self.maxsize!r}")
        if self.durability not in DURABILITIES:
            raise ConfigurationError(
                f"durability must be one of {', '.join(DURABILITIES)}, not {self.durability!r}")
        if not isinstance(self.flush_items, int) or self.flush_items < 1:
            raise ConfigurationError(f"flush_items must be an int >= 1, not {self.flush_items!r}")
        if not self.flush_interval > 0:
            raise ConfigurationError(f"flush_interval must be > 0, not {self.flush_interval!r}")
        if self.max_attempts is not None and (
                not isinstance(self.max_attempts, int) or self.max_attempts < 1):
            raise ConfigurationError(
                f"max_attempts must be None or an int >= 1, not {self.max_attempts!r}")
        if not self.poll_interval > 0:
            raise ConfigurationError(f"poll_interval must be > 0, not {self.poll_interval!r}")


def resolve_target(path: str | os.PathLike[str], name: str | None,
                   engine: str | Engine | None, token: str | None,
                   engine_options: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
    """The queue name and engine options of ``create()``: a ``spoolq://`` URL's path names
    the queue (a different ``name=`` is an error); ``token`` goes to the remote engine."""
    url_name = url_queue_name(path)
    if url_name is not None and name is not None and name != url_name:
        raise ConfigurationError(f"the URL names the queue {url_name!r}, not {name!r}")
    if token is not None:
        remote = engine == "remote" or (
            engine is None and os.fspath(path).startswith("spoolq://"))
        if not remote:
            raise ConfigurationError("token= applies to spoolq:// servers only")
        engine_options = {**(engine_options or {}), "token": token}
    if url_name is not None:
        return url_name, engine_options
    return "default" if name is None else name, engine_options
