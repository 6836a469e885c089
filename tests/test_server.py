"""The server as a real process on 127.0.0.1: queues through both clients, safety, crashes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib.util
import ipaddress
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

import spoolq
from spoolq import Queue, SyncQueue
from spoolq.engines.remote import RemoteEngine
from spoolq.protocol import ErrorCode, FrameType, encode_frame, encode_preamble
from spoolq.server import run as run_server

from .servers import SRC, ServerProcess


def _needs(loop: str) -> None:
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        pytest.skip(reason='uvloop is not installed (pip install "spoolq[server]")')


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per event loop for the module, with a short stall timeout; each test uses
    its own queue."""
    _needs(request.param)
    log = tmp_path_factory.mktemp("server") / "server.log"
    with ServerProcess(":memory:", "--stall-timeout", "0.5", "--max-frame", "65536",
                       "--loop", request.param, log_file=log) as proc:
        yield proc


@pytest.fixture
def name() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


def _url(server: ServerProcess, name: str) -> str:
    return f"{server.url}/{name}"


def test_sync_queue_through_the_server(server: ServerProcess, name: str) -> None:
    with SyncQueue.create(_url(server, name), name=name) as q:
        assert q.stats["engine"] == "remote"
        q.put({"job": 1})
        q.put_many([{"job": i} for i in range(2, 6)])
        assert q.qsize() == 5 and q.peek(2) == [{"job": 1}, {"job": 2}]
        assert q.get(timeout=1) == {"job": 1}
        assert q.get_many(10, timeout=0.2) == [{"job": i} for i in range(2, 6)]
        with pytest.raises(spoolq.Empty):
            q.get(timeout=0.1)
        q.put("leased")
        msg = q.lease(ttl=30)
        assert (msg.item, msg.attempts) == ("leased", 1) and q.stats["leased"] == 1
        q.nack(msg)
        again = q.lease(timeout=1)
        assert again.attempts == 2
        q.ack(again)
        stats = q.stats
        assert (stats["count"], stats["leased"], stats["acks"], stats["puts"]) == (0, 0, 1, 6)


def test_async_queue_through_the_server(server: ServerProcess, name: str) -> None:
    async def main() -> None:
        async with await Queue.create(_url(server, name), name=name,
                                      engine_options={"timeout": 10.0}) as q:
            await asyncio.gather(*(q.put(i) for i in range(50)))
            assert q.qsize() == 50 and await q.peek(3) == [0, 1, 2]
            assert sorted(await q.get_many(50, timeout=1)) == list(range(50))
            await q.put({"nested": [1, 2]})
            async with q.leased(ttl=10) as item:
                assert item == {"nested": [1, 2]}
            assert q.stats["acks"] == 1
            with pytest.raises(spoolq.Empty):
                await q.get_many(1, timeout=0.1)

    asyncio.run(main())


def test_two_clients_share_a_queue_and_get_each_item_once(server: ServerProcess,
                                                          name: str) -> None:
    got: list[list[int]] = [[], []]
    with SyncQueue.create(_url(server, name), name=name) as producer, \
            SyncQueue.create(_url(server, name), name=name, poll_interval=0.01) as a, \
            SyncQueue.create(_url(server, name), name=name, poll_interval=0.01) as b:

        def consume(q: SyncQueue[int], out: list[int]) -> None:
            while True:
                try:
                    out.append(q.get(timeout=0.5))
                except spoolq.Empty:
                    return

        threads = [threading.Thread(target=consume, args=(q, out))
                   for q, out in ((a, got[0]), (b, got[1]))]
        for t in threads:
            t.start()
        for i in range(0, 300, 10):
            producer.put_many(range(i, i + 10))
        for t in threads:
            t.join(30)
    assert sorted(got[0] + got[1]) == list(range(300))
    assert got[0] and got[1]


LEASE_AND_DIE = textwrap.dedent("""
    import os, sys, spoolq
    q = spoolq.SyncQueue.create(sys.argv[1], name=sys.argv[2])
    msg = q.lease(timeout=10, ttl=600)
    print(msg.item, flush=True)
    os.kill(os.getpid(), 9)
""")


def test_leases_of_a_client_that_disconnects_are_released_at_once(server: ServerProcess,
                                                                  name: str) -> None:
    with SyncQueue.create(_url(server, name), name=name, poll_interval=0.02) as q:
        q.put_many(["job", "next"])
        child = subprocess.run([sys.executable, "-c", LEASE_AND_DIE, _url(server, name), name],
                               check=False, capture_output=True, text=True, timeout=60,
                               env={"PYTHONPATH": SRC})
        assert child.stdout.strip() == "job" and child.returncode == -signal.SIGKILL
        # The server learns of the closed connection on its next loop turn; until then a
        # lease would get "next". The ttl was 600 s: only the release explains "job" again.
        start = time.monotonic()
        eng = RemoteEngine(server.url)
        try:
            while eng.counts(name).leased and time.monotonic() - start < 3:
                time.sleep(0.01)
        finally:
            eng.close()
        msg = q.lease(timeout=5, ttl=600)
        assert (msg.item, msg.attempts) == ("job", 2)
        assert time.monotonic() - start < 3
        q.ack(msg)


def test_long_poll_take_and_wait_ready_wake_on_a_put(server: ServerProcess, name: str) -> None:
    waiter = RemoteEngine(server.url)
    writer = RemoteEngine(server.url)
    try:
        assert waiter.wait_ready(name, 0.2) is False
        timer = threading.Timer(0.3, writer.append, (name, [b"r"], [1], time.time()))
        timer.start()
        start = time.monotonic()
        got = waiter.take(name, 5, time.time(), None, wait=10)
        timer.join()
        assert [r.data for r in got] == [b"r"] and time.monotonic() - start < 5
        timer = threading.Timer(0.3, writer.append, (name, [b"s"], [1], time.time()))
        timer.start()
        start = time.monotonic()
        assert waiter.wait_ready(name, 10) is True
        timer.join()
        assert time.monotonic() - start < 5
        assert waiter.counts(name).ready == 1  # the waiting connection held nothing up
    finally:
        waiter.close()
        writer.close()


# ---- hostile clients --------------------------------------------------------------------


def _raw(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _error_code(data: bytes) -> int:
    length, ftype, _ = struct.unpack_from(">IBI", data, 8)
    assert ftype == FrameType.ERROR
    code: int = cbor2.loads(data[17:17 + length - 5])["code"]
    return code


@pytest.mark.parametrize("attack", ["garbage", "bad body", "huge length", "half frame",
                                    "silence"])
def test_hostile_connections_are_closed_and_others_keep_being_served(
        server: ServerProcess, name: str, attack: str) -> None:
    with SyncQueue.create(_url(server, name), name=name) as healthy, _raw(server) as bad:
        healthy.put("before")
        start = time.monotonic()
        if attack == "garbage":
            bad.sendall(b"GET / HTTP/1.1\r\nHost: spoolq\r\n\r\n")
            expected = ErrorCode.PROTOCOL
        elif attack == "bad body":
            bad.sendall(encode_preamble() + struct.pack(">IBI", 9, FrameType.REQUEST, 1)
                        + b"\xff\xfe\xfd\xfc")
            expected = ErrorCode.PROTOCOL
        elif attack == "huge length":
            bad.sendall(encode_preamble() + struct.pack(">IBI", 2**31, FrameType.REQUEST, 1))
            expected = ErrorCode.FRAME_TOO_LARGE
        elif attack == "half frame":
            frame = encode_frame(FrameType.REQUEST, 1, {"op": "queues"})
            bad.sendall(encode_preamble() + frame[:len(frame) // 2])
            expected = ErrorCode.TIMEOUT
        else:
            bad.sendall(encode_preamble()[:3])
            expected = ErrorCode.TIMEOUT
        data = _read_until_closed(bad)
        if attack == "garbage":  # refused before any preamble is sent back
            assert _error_code(b"\0" * 8 + data) == expected
        elif attack != "silence":
            assert data[:8] == encode_preamble()
            assert _error_code(data) == expected
        assert time.monotonic() - start < 4  # the stall timeout is 0.5 s
        healthy.put("after")
        assert healthy.get_many(2, timeout=1) == ["before", "after"]


def test_frame_too_large_for_the_server_is_refused_by_the_client(server: ServerProcess,
                                                                 name: str) -> None:
    with SyncQueue.create(_url(server, name), name=name, compressor="none") as q:
        with pytest.raises(spoolq.EngineError, match="exceeds the server's limit"):
            q.put(b"x" * 100_000)
        q.put("still connected")
        assert q.get(timeout=1) == "still connected"


def test_pipelined_requests_are_answered_by_id(server: ServerProcess, name: str) -> None:
    hello = encode_frame(FrameType.REQUEST, 1, {"op": "hello"})
    take = encode_frame(FrameType.REQUEST, 2, {"op": "take", "queue": name, "n": 1,
                                                "now": 0.0, "wait": 0.5})
    counts = encode_frame(FrameType.REQUEST, 3, {"op": "counts", "queue": name})
    with _raw(server) as sock:
        sock.sendall(encode_preamble() + hello + take + counts)
        data = b""
        while len(data) < 8 or not _complete(data[8:], 3):
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection"
            data += chunk
    ids = [frame_id for frame_id, _ in _complete(data[8:], 3)]
    assert ids == [1, 3, 2]  # the long-poll take answers last


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RSS from /proc")
@pytest.mark.parametrize("path", [":memory:", "served.sqlite"])
def test_a_client_that_pipelines_without_reading_holds_up_only_itself(
        tmp_path: Path, path: str) -> None:
    """Requests read in one go wait unstarted while the client does not read its
    replies: the server's memory does not grow with what the client asked for."""
    with ServerProcess(path if path == ":memory:" else str(tmp_path / path)) as srv, \
            SyncQueue.create(srv.url + "/big", name="big", serializer="raw",
                             compressor=None) as q:
        q.put_many([os.urandom(1000)] * 100)
        before = _rss_mb(srv.proc.pid)
        # replies of about 20 KB each: 80 MB if all were answered at once, 5 MB for the
        # 256 requests that may be in flight
        n = 4000
        peeks = b"".join(encode_frame(FrameType.REQUEST, i, {"op": "peek", "queue": "big",
                                                             "n": 20})
                         for i in range(2, n + 2))
        with _raw(srv) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(encode_preamble() + peeks)
            time.sleep(1.0)
            grown = _rss_mb(srv.proc.pid) - before
            assert q.qsize() == 100  # other clients are served meanwhile
            answered, data = 0, b""
            sock.settimeout(20)
            while answered < n:
                chunk = sock.recv(1 << 20)
                assert chunk, "the server closed the connection"
                data += chunk
                if answered == 0:
                    data = data[8:]  # the server's preamble
                while len(data) >= 4 and len(data) >= 4 + struct.unpack_from(">I", data)[0]:
                    length, ftype = struct.unpack_from(">IB", data)
                    assert ftype == FrameType.REPLY
                    data = data[4 + length:]
                    answered += 1
    assert grown < 30, f"the server grew by {grown:.0f} MB"


def _complete(data: bytes, want: int) -> list[tuple[int, object]]:
    out = []
    while len(data) >= 4 and len(out) < want:
        (length,) = struct.unpack_from(">I", data)
        if len(data) < 4 + length:
            return []
        out.append((struct.unpack_from(">I", data, 5)[0], cbor2.loads(data[9:4 + length])))
        data = data[4 + length:]
    return out if len(out) == want else []


# ---- event loops ------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_server_runs_on_the_event_loop_asked_for(tmp_path: Path, loop: str) -> None:
    _needs(loop)
    log = tmp_path / "server.log"
    with ServerProcess(":memory:", "--loop", loop, log_file=log) as srv, \
            SyncQueue.create(srv.url + "/jobs", name="jobs") as q:
        q.put("x")
        assert q.get(timeout=1) == "x"
    assert f"{loop} event loop" in log.read_text()


def test_run_refuses_an_unknown_event_loop() -> None:
    async def never() -> None:
        raise AssertionError("not run")

    with pytest.raises(spoolq.ConfigurationError, match="loop must be one of"):
        run_server(never(), loop="trio")
    done = run_server(asyncio.sleep(0, "done"), loop="asyncio")
    assert done == "done"


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_a_port_out_of_range_is_a_one_line_error(tmp_path: Path, port: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "spoolq.server", ":memory:", "--port", port],
                          check=False, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert proc.returncode == 1 and "listening" not in proc.stdout
    assert "port must be an int from 0 to 65535" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- auth, TLS --------------------------------------------------------------------------


def test_token_auth(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    log = tmp_path / "server.log"
    with ServerProcess(":memory:", "--token-file", str(token_file), log_file=log) as srv:
        with pytest.raises(spoolq.AuthenticationError):
            SyncQueue.create(srv.url + "/jobs", name="jobs")
        with pytest.raises(spoolq.AuthenticationError):
            SyncQueue.create(srv.url + "/jobs", name="jobs", engine_options={"token": "guess"})
        with SyncQueue.create(srv.url + "/jobs", name="jobs",
                              engine_options={"token": "s3cret-token"}) as q:
            q.put(1)
        host = srv.url.removeprefix("spoolq://")
        with SyncQueue.create(f"spoolq://:s3cret-token@{host}/jobs", name="jobs") as q:
            q.put(2)
        with SyncQueue.create(f"spoolq://{host}/jobs?token=s3cret-token", name="jobs") as q:
            assert q.get_many(2, timeout=1) == [1, 2]
    text = log.read_text()
    assert "refused the token" in text and "guess" not in text and "s3cret" not in text


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key: with the cryptography package, else openssl."""
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip(reason="needs the cryptography package or the openssl command to make "
                        "a certificate")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key_path), "-out", str(cert_path)],
                       check=True, capture_output=True, timeout=60)
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tls(tmp_path: Path, loop: str) -> None:
    _needs(loop)
    cert, key = _self_signed(tmp_path)
    with ServerProcess(":memory:", "--tls-cert", str(cert), "--tls-key", str(key),
                       "--loop", loop) as srv:
        with SyncQueue.create(srv.url + "/jobs", name="jobs",
                              engine_options={"ca_file": str(cert)}) as q:
            q.put({"secret": "payload"})
            assert q.get(timeout=1) == {"secret": "payload"}
        with pytest.raises(spoolq.EngineError, match="TLS"):  # not signed by a system CA
            SyncQueue.create(srv.url + "/jobs?tls=1", name="jobs")
        with pytest.raises(spoolq.EngineError):  # plain text to a TLS server
            SyncQueue.create(srv.url + "/jobs", name="jobs",
                             engine_options={"connect_timeout": 2.0})


# ---- restarts and crashes ---------------------------------------------------------------


def test_items_survive_a_server_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "served.sqlite")
    with ServerProcess(path) as srv:
        port = srv.port
        with SyncQueue.create(srv.url + "/jobs", name="jobs") as q:
            q.put_many(range(100))
            msg = q.lease()
            assert srv.stop() == 0  # SIGTERM: a clean shutdown
            with pytest.raises(spoolq.Unavailable):
                q.get(block=False)
            with pytest.raises(spoolq.Unavailable):  # a blocking get waits for its timeout
                q.get(timeout=0.3)
            with ServerProcess(path, port=port):
                assert q.get_many(99, timeout=1) == list(range(1, 100))
                q.ack(msg)  # the lease survived the restart too
                assert q.stats["leased"] == 0


def test_idle_connections_to_a_restarted_server_are_replaced_unnoticed(tmp_path: Path) -> None:
    """No call was running when the server went away: none fails once it is back."""
    path = str(tmp_path / "served.sqlite")

    def wait_briefly() -> None:
        with contextlib.suppress(spoolq.Empty):
            q.get_many(1, timeout=0.3)

    srv = ServerProcess(path)
    port = srv.port
    with SyncQueue.create(srv.url + "/jobs", name="jobs") as q:
        try:
            q.put("before")
            assert q.get() == "before"
            waiters = [threading.Thread(target=wait_briefly) for _ in range(3)]
            for t in waiters:  # they leave long-poll connections idle in the pool
                t.start()
            for t in waiters:
                t.join()
        finally:
            assert srv.stop() == 0
        with ServerProcess(path, port=port):
            q.put("after")
            assert q.get(timeout=2) == "after"
            for _ in range(4):
                with pytest.raises(spoolq.Empty):
                    q.get(timeout=0.2)


def test_sigkill_of_the_server_loses_no_confirmed_put(tmp_path: Path) -> None:
    path = str(tmp_path / "served.sqlite")
    confirmed = 0
    with ServerProcess(path) as srv:
        port = srv.port
        with SyncQueue.create(srv.url + "/jobs", name="jobs") as q:

            def put_until_it_fails() -> None:
                nonlocal confirmed
                try:
                    while True:
                        q.put(confirmed)
                        confirmed += 1
                except spoolq.EngineError:
                    pass

            putter = threading.Thread(target=put_until_it_fails)
            putter.start()
            while confirmed < 200:
                time.sleep(0.01)
            srv.stop(signal.SIGKILL)
            putter.join(30)
            assert not putter.is_alive()
    with ServerProcess(path, port=port) as srv, \
            SyncQueue.create(srv.url + "/jobs", name="jobs") as q:
        items = q.get_many(None, timeout=1)
    assert items[:confirmed] == list(range(confirmed))
    assert len(items) <= confirmed + 1  # the put in flight may or may not have landed


def test_sigterm_finishes_waiting_requests_and_exits_cleanly(tmp_path: Path) -> None:
    srv = ServerProcess(str(tmp_path / "q.sqlite"), log_file=tmp_path / "log")
    eng = RemoteEngine(srv.url)
    try:
        eng.append("q", [b"kept"], [4], time.time())
        result: list[object] = []
        waiter = threading.Thread(target=lambda: result.append(
            eng.take("empty", 1, time.time(), None, wait=30)))
        waiter.start()
        time.sleep(0.3)
        start = time.monotonic()
        assert srv.stop() == 0
        waiter.join(10)
        assert result == [[]] and time.monotonic() - start < 5
    finally:
        eng.close()
        srv.stop()
    assert "server stopped" in (tmp_path / "log").read_text()
    with ServerProcess(str(tmp_path / "q.sqlite")) as again:
        check = RemoteEngine(again.url)
        try:
            assert check.counts("q").ready == 1
        finally:
            check.close()


def test_a_long_poll_of_a_client_that_left_takes_nothing(server: ServerProcess,
                                                         name: str) -> None:
    take = encode_frame(FrameType.REQUEST, 1, {"op": "take", "queue": name, "n": 1,
                                                "now": time.time(), "wait": 30.0,
                                                "lease": ["gone", time.time() + 600]})
    with _raw(server) as sock:
        sock.sendall(encode_preamble() + take)
        assert sock.recv(8) == encode_preamble()
        time.sleep(0.1)
    eng = RemoteEngine(server.url)
    try:
        eng.append(name, [b"for someone present"], [20], time.time())
        time.sleep(0.5)  # the abandoned long-poll wakes up, and must leave the record
        assert [r.data for r in eng.take(name, 5, time.time(), None)] == [b"for someone present"]
    finally:
        eng.close()


def test_a_server_that_stops_answering_fails_the_call_after_the_timeout(tmp_path: Path) -> None:
    with ServerProcess(":memory:") as srv, \
            SyncQueue.create(srv.url + "/jobs", name="jobs",
                             engine_options={"timeout": 0.3}) as q:
        q.put("before")
        srv.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(spoolq.EngineError, match=r"no reply .* in time"):
                q.put("while stopped")
            assert 0.25 <= time.monotonic() - started < 5
        finally:
            srv.proc.send_signal(signal.SIGCONT)
        q.put("after")  # a new connection; the stopped call's put may have landed too
        got = q.get_many(3, timeout=1)
        assert got[0] == "before" and got[-1] == "after"


def test_a_server_that_stops_reading_fails_a_large_put_after_the_timeout(
        tmp_path: Path) -> None:
    with ServerProcess(":memory:", "--max-frame", str(64 << 20)) as srv, \
            SyncQueue.create(srv.url + "/jobs", name="jobs", serializer="raw",
                             compressor="none", engine_options={"timeout": 0.3}) as q:
        big = [os.urandom(1 << 20) for _ in range(48)]  # more than loopback buffers hold
        srv.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(spoolq.EngineError, match="in time"):
                q.put_many(big)
            assert time.monotonic() - started < 5
        finally:
            srv.proc.send_signal(signal.SIGCONT)
        q.put(b"after")
        assert q.get(timeout=5) == b"after"  # the cut-off frame stored nothing


def test_remote_timeouts_must_be_positive() -> None:
    for options in ({"timeout": 0}, {"timeout": -1.0}, {"connect_timeout": 0.0}):
        with pytest.raises(spoolq.ConfigurationError, match="timeout must be"):
            RemoteEngine("spoolq://127.0.0.1:1/jobs", **options)  # type: ignore[arg-type]
