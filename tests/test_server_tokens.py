"""A server's token is checked when the server is made: one no client could send (not
UTF-8) or that is empty or not text is refused then, not at every connection."""

from __future__ import annotations

import asyncio

import pytest

import spoolq
from spoolq.engines import MemoryEngine
from spoolq.server import Server


@pytest.mark.parametrize(("token", "message"), [
    ("s\udcffcret", r"cannot be written as UTF-8 \(it holds '\\udcff'\)"),
    ("", "non-empty str"),
    (b"secret", "non-empty str"),
])
def test_a_token_no_client_can_send_is_refused_when_the_server_is_made(
        token: object, message: str) -> None:
    engine = MemoryEngine()
    try:
        with pytest.raises(spoolq.ConfigurationError, match=message):
            Server(engine, token=token)  # type: ignore[arg-type]
    finally:
        engine.close()


def test_a_token_of_any_utf8_text_is_taken() -> None:
    async def made() -> str | None:
        return Server(engine, token="sécret-🔑").token

    engine = MemoryEngine()
    try:
        assert asyncio.run(made()) == "sécret-🔑"
    finally:
        engine.close()
