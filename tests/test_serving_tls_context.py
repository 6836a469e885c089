"""The server's TLS context refuses what its docs say it refuses, whatever OpenSSL's own
defaults are."""

from __future__ import annotations

import ssl
from pathlib import Path

from spoolq._servertls import ssl_context
from tests.test_server import _self_signed


def test_the_server_context_refuses_renegotiation_and_old_protocols(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    ctx = ssl_context(str(cert), str(key))
    assert ctx is not None
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
