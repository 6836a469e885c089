"""The client of a spoolq server: what its URLs and options accept, and how long its calls
last when the server is slow, stalled or away."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import spoolq
from spoolq.engines.remote import RemoteEngine, parse_url

from .servers import ServerProcess, ThreadedServer
from .test_server import _self_signed


@pytest.fixture(scope="module")
def memory_server() -> Iterator[ThreadedServer]:
    with ThreadedServer(":memory:") as server:
        yield server


@pytest.mark.parametrize("url", [
    "spoolq://127.0.0.1:0/jobs",  # port 0 connects nowhere; it used to mean 7480
    "spoolq://[::1/jobs",  # an IPv6 literal left open
    "spoolq://[::1]:7480:1/jobs",
    "spoolq://127.0.0.1/jobs?tsl=1",  # a misspelt tls= sent the token in clear text
    "spoolq://127.0.0.1/jobs?tls=maybe",
    "spoolq://127.0.0.1/jobs?tls=",
    "spoolq://127.0.0.1/jobs?token",
    "spoolq://127.0.0.1/jobs#1",  # an unquoted '#' cut the queue name short
    "spoolq://127.0.0.1/jobs%FF",  # not UTF-8: it named the queue '\ufffd', as %FE did
    "spoolq://127.0.0.1/jobs?token=%FF",
    "spoolq://:%FF@127.0.0.1/jobs",
    "spoolq://127.0.0.1/jobs?ca=%FF.pem",
])
def test_a_url_the_client_cannot_follow_is_a_configuration_error(url: str) -> None:
    with pytest.raises(spoolq.ConfigurationError, match="URL"):
        parse_url(url)
    with pytest.raises(spoolq.ConfigurationError, match="URL"):
        spoolq.SyncQueue.create(url)


def test_the_urls_the_client_takes() -> None:
    six = parse_url("spoolq://[::1]:7481/jobs?tls=yes&token=t")
    assert (six.host, six.port, six.queue, six.tls, six.token) == ("::1", 7481, "jobs", True,
                                                                   "t")
    assert parse_url("spoolq://[::1]/jobs%231?tls=off").queue == "jobs#1"
    assert parse_url("spoolq://[::1]/jobs?tls=off").tls is False
    assert parse_url("spoolq://h:7480/jobs?tls=0&ca=ca.pem").ca_file == "ca.pem"
    assert parse_url("spoolq://h").queue is None
    assert parse_url("spoolq://h/caf%C3%A9%2Fd%25").queue == "caf\u00e9/d%"
    assert parse_url("spoolq://h/q?token=%C3%A9").token == "\u00e9"


def test_a_bad_url_never_shows_its_token() -> None:
    for url in ("spoolq://:s3cret@h:0/q", "spoolq://:s3cret@[::1/q", "spoolq://h/q?x=s3cret",
                "spoolq://:s3cret@h/q?tls=s3cret"):
        with pytest.raises(spoolq.ConfigurationError) as info:
            parse_url(url)
        assert "s3cret" not in str(info.value)


def test_blank_url_parameters_are_left_out() -> None:
    blank = parse_url("spoolq://h/jobs?token=&ca=&tls=1")
    assert (blank.token, blank.ca_file, blank.tls) == (None, None, True)


@pytest.mark.parametrize("option", ["timeout", "connect_timeout"])
@pytest.mark.parametrize("value", [math.inf, 1e300, 10**400, math.nan, 0, -1, True, "5", None],
                         ids=["inf", "1e300", "10**400", "nan", "0", "-1", "True", "'5'", "None"])
def test_a_timeout_out_of_range_is_a_configuration_error_naming_it(
        memory_server: ThreadedServer, option: str, value: object) -> None:
    # inf and 1e300 raised OverflowError or struct.error at the first call, 10**400
    # OverflowError, True was taken for one second, "5" and None raised TypeError
    with pytest.raises(spoolq.ConfigurationError, match=option):
        spoolq.SyncQueue.create(f"{memory_server.url}/jobs", engine_options={option: value})


def test_a_long_timeout_is_taken(memory_server: ThreadedServer) -> None:
    with spoolq.SyncQueue.create(f"{memory_server.url}/jobs", engine_options={
            "timeout": 2147483, "connect_timeout": 2147483.0}) as q:
        q.put("x")
        assert q.get(timeout=1) == "x"


def test_a_get_blocked_in_a_long_poll_keeps_its_timeout_when_the_server_stalls() -> None:
    # It waited its timeout plus the engine's timeout (10 s here, 30 s by default).
    with ServerProcess(":memory:") as server, spoolq.SyncQueue.create(
            f"{server.url}/jobs", engine_options={"timeout": 10}) as q:
        outcome: list[object] = []

        def get() -> None:
            start = time.monotonic()
            try:
                outcome.append(q.get(timeout=1.0))
            except (spoolq.Empty, spoolq.Unavailable) as exc:
                outcome.append(exc)
            outcome.append(time.monotonic() - start)

        getter = threading.Thread(target=get)
        getter.start()
        time.sleep(0.4)  # in the engine's wait by now
        with server.stalled():
            getter.join(15)
        assert isinstance(outcome[0], spoolq.Unavailable)
        assert outcome[1] < 2.0


def test_a_wait_for_items_keeps_its_timeout_when_the_server_stalls() -> None:
    with ServerProcess(":memory:") as server:
        engine = RemoteEngine(f"{server.url}/jobs", timeout=10, connect_timeout=10)
        try:
            assert engine.wait_ready("jobs", 0.05) is False  # a waiting connection kept
            with server.stalled():
                for _ in range(2):  # on the connection kept, then on a new one
                    start = time.monotonic()
                    with pytest.raises(spoolq.Unavailable):
                        engine.wait_ready("jobs", 0.5)
                    assert time.monotonic() - start < 1.5
            assert engine.wait_ready("jobs", 0.05) is False
        finally:
            engine.close()


def test_a_ca_file_the_client_cannot_read_is_a_configuration_error(tmp_path: Path) -> None:
    # FileNotFoundError or ssl.SSLError, before the client tried to connect
    missing, empty = tmp_path / "missing.pem", tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    for ca in (missing, empty):
        with pytest.raises(spoolq.ConfigurationError, match="ca_file"):
            spoolq.SyncQueue.create("spoolq://127.0.0.1:1/jobs", engine_options={"ca_file": ca})
        with pytest.raises(spoolq.ConfigurationError, match="ca_file"):
            spoolq.SyncQueue.create(f"spoolq://127.0.0.1:1/jobs?ca={ca}")


def test_a_tls_server_that_stalls_is_unavailable(tmp_path: Path) -> None:
    # The TLS handshake's timeout was an EngineError, where a server without TLS that
    # stalls is Unavailable: a blocked get did not wait it out.
    cert, key = _self_signed(tmp_path)
    with ServerProcess(":memory:", "--tls-cert", str(cert), "--tls-key", str(key)) as server:
        url, options = f"{server.url}/jobs", {"ca_file": str(cert), "connect_timeout": 0.5}
        engine = RemoteEngine(url, **options)  # type: ignore[arg-type]
        try:
            with server.stalled():
                with pytest.raises(spoolq.Unavailable):
                    spoolq.SyncQueue.create(url, engine_options=options)
                start = time.monotonic()
                with pytest.raises(spoolq.Unavailable):  # on a connection of its own
                    engine.wait_ready("jobs", 0.2)
                assert time.monotonic() - start < 1.5
            assert engine.wait_ready("jobs", 0.05) is False
        finally:
            engine.close()


def test_a_put_many_is_cut_to_the_frames_of_a_server_restarted_with_a_smaller_max_frame(
        tmp_path: Path) -> None:
    # The client cut appends to the frame limit the first server had, and a put_many after
    # the restart raised FrameTooLarge, storing nothing, though each item fitted a frame.
    path = str(tmp_path / "q.sqlite")
    items = [bytes([k]) * 30_000 for k in range(10)]
    with ServerProcess(path, "--max-frame", "65536") as first:
        port = first.port
        q = spoolq.SyncQueue.create(f"{first.url}/jobs", serializer="raw", compressor="none")
        q.put_many(items[:4])
    try:
        with ServerProcess(path, "--max-frame", "40000", port=port):
            q.put_many(items[4:])
            assert q.get_many(10, timeout=2) == items
            with pytest.raises(spoolq.protocol.FrameTooLarge, match="40000"):
                q.put(b"x" * 45_000)
            assert q.qsize() == 0
    finally:
        q.close()


def test_a_url_whose_scheme_is_in_capitals_reaches_the_server(
        memory_server: ThreadedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a path taken for a file would be made here
    url = memory_server.url.replace("spoolq://", "SPOOLQ://", 1) + "/capitals"
    with spoolq.SyncQueue.create(url) as q:
        assert q.stats["engine"] == "remote"
        q.put("x")
    with spoolq.SyncQueue.create(memory_server.url + "/capitals") as q:
        assert q.get(timeout=5) == "x"
    assert list(tmp_path.iterdir()) == []
