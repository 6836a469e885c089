"""Tokens as they travel in the AUTH frame: any text of UTF-8, compared byte for byte by
the server; a token that is no UTF-8 text (a lone surrogate, as an environment variable
of other bytes gives) is refused on the client as a setting to fix, before connecting."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import spoolq
from spoolq.protocol import ClientProtocol
from tests.servers import ServerProcess

_TOKEN = "tökén✓ 🔑"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    token = Path(tmp_path_factory.mktemp("token")) / "token"
    token.write_text(_TOKEN, encoding="utf-8")
    with ServerProcess(":memory:", "--token-file", str(token)) as srv:
        yield srv


def test_a_token_of_any_utf8_text_authenticates(server: ServerProcess) -> None:
    with spoolq.SyncQueue.create(f"{server.url}/jobs", token=_TOKEN) as q:
        q.put("x")
        assert q.get(timeout=5) == "x"


@pytest.mark.parametrize("token", ["", "tokén✓", _TOKEN + " "])
def test_another_token_is_refused(server: ServerProcess, token: str) -> None:
    with pytest.raises(spoolq.AuthenticationError):
        spoolq.SyncQueue.create(f"{server.url}/jobs", token=token)


@pytest.mark.parametrize("token", ["\udce9", "s3cret\ud800"])
def test_a_token_that_is_no_utf8_text_is_a_configuration_error(
        server: ServerProcess, token: str) -> None:
    with pytest.raises(spoolq.ConfigurationError, match="token"):
        ClientProtocol().start(token)
    began = time.monotonic()
    with pytest.raises(spoolq.ConfigurationError, match="token"):
        spoolq.SyncQueue.create(f"{server.url}/jobs", token=token)
    assert time.monotonic() - began < 5
