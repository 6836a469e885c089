"""Version negotiation in the client's state machine: the server answers the lower of
its version and the one the client offered, and nothing else is accepted."""

from __future__ import annotations

import pytest

from spoolq.protocol import VERSION, ClientProtocol, ProtocolError, encode_preamble


@pytest.mark.parametrize("version", [VERSION + 1, 0xFFFF])
def test_the_client_refuses_a_server_that_answers_a_newer_version_than_it_offered(
        version: int) -> None:
    """A higher version is a server this client cannot speak with, not one to go on with."""
    client = ClientProtocol()
    client.start(None)
    with pytest.raises(ProtocolError, match=f"version {version}"):
        client.receive_data(encode_preamble(version))
    assert client.version is None


def test_the_client_takes_the_version_it_offered() -> None:
    client = ClientProtocol()
    opening, _ = client.start(None)
    assert opening == encode_preamble(VERSION)
    assert client.receive_data(encode_preamble(VERSION)) == []
    assert client.version == VERSION
