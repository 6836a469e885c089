"""What a ``spoolq://`` URL says: the server's address, the queue and the client's options."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import ConfigurationError

__all__ = ["DEFAULT_PORT", "RemoteAddress", "is_remote_url", "parse_url", "url_queue_name"]

DEFAULT_PORT = 7480


@dataclass(frozen=True)
class RemoteAddress:
    """What a ``spoolq://`` URL says. ``queue`` is None when the URL has no path."""

    host: str
    port: int
    queue: str | None
    token: str | None = None
    tls: bool = False
    ca_file: str | None = None

    def __repr__(self) -> str:  # never show the token
        return f"RemoteAddress({self.host!r}, {self.port}, queue={self.queue!r}, tls={self.tls})"


_QUERY_KEYS = ("token", "tls", "ca")
_TLS_VALUES = {"1": True, "true": True, "yes": True, "on": True,
               "0": False, "false": False, "no": False, "off": False}


def parse_url(url: str) -> RemoteAddress:
    """Split a ``spoolq://`` URL; :class:`ConfigurationError` if it is not one, or says
    what the client cannot follow (the error never shows the URL: it may hold a token)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # an IPv6 literal left open, a port out of range
        raise ConfigurationError(f"the spoolq:// URL is malformed: {exc}") from None
    if parts.scheme != "spoolq" or not parts.hostname:
        raise ConfigurationError(f"not a spoolq://host:port/name URL: {parts.scheme}://...")
    if port == 0:
        raise ConfigurationError("the spoolq:// URL has a bad port: 0")
    if parts.fragment or url.endswith("#"):
        raise ConfigurationError("the spoolq:// URL has a '#' fragment; write a '#' in a "
                                 "queue name as %23")
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query),
                         errors="strict")
    except UnicodeDecodeError:
        raise _not_utf8() from None
    except ValueError:
        raise ConfigurationError("the spoolq:// URL has a malformed query") from None
    unknown = sorted(set(query) - set(_QUERY_KEYS))
    if unknown:
        raise ConfigurationError(
            f"the spoolq:// URL has unknown parameters {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(_QUERY_KEYS)}")
    tokens = [t for t in query.get("token", ()) if t]  # token= and ca= left blank: none
    token = tokens[-1] if tokens else None
    if parts.password:
        token = _unquote(parts.password)
    elif parts.username:
        token = _unquote(parts.username)
    name = _unquote(parts.path.lstrip("/")) or None
    cas = [c for c in query.get("ca", ()) if c]
    ca_file = cas[-1] if cas else None
    tls_value = (query.get("tls") or ["0"])[-1].lower()
    if tls_value not in _TLS_VALUES:
        raise ConfigurationError(f"the spoolq:// URL's tls= takes {', '.join(_TLS_VALUES)}")
    tls = _TLS_VALUES[tls_value] or ca_file is not None
    return RemoteAddress(parts.hostname, port or DEFAULT_PORT, name, token, tls, ca_file)


def _not_utf8() -> ConfigurationError:
    return ConfigurationError("the spoolq:// URL has %-escapes that are not UTF-8; a queue "
                              "name, token or ca= path is text")


def _unquote(part: str) -> str:
    """``part`` with its %-escapes decoded; one that is not UTF-8 is an error, where
    ``unquote`` made it U+FFFD (so that ``/%FF`` and ``/%FE`` named the same queue)."""
    try:
        return unquote(part, errors="strict")
    except UnicodeDecodeError:
        raise _not_utf8() from None


def is_remote_url(path: str) -> bool:
    """Whether ``path`` is a ``spoolq://`` URL (its scheme in any case, as URLs allow)."""
    return path[:9].lower() == "spoolq://"


def url_queue_name(path: str | os.PathLike[str]) -> str | None:
    """The queue a ``spoolq://`` URL names in its path; None for other paths or no path."""
    spath = os.fspath(path)
    if not is_remote_url(spath):
        return None
    return parse_url(spath).queue
