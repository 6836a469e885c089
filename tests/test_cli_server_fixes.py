"""The command line on a PostgreSQL schema of one's choice, its float options, replies that
fit a small ``max_reply``, and a server that finishes its shutdown whatever signals come."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import cbor2
import click
import pytest
from click.types import FloatParamType

import spoolq
from spoolq.cli import cli
from spoolq.engines import Lease, open_engine
from spoolq.engines.remote import RemoteEngine
from spoolq.errors import ConfigurationError
from spoolq.protocol import (
    MAX_ID,
    MIN_MAX_REPLY,
    ClientProtocol,
    ErrorCode,
    FrameTooLarge,
    ReplyTooLarge,
    encode_error,
    encode_reply,
    ids_reply_size,
    max_ids,
)

from .cli_support import run, run_json
from .conftest import fresh_pg_schema
from .servers import SRC, ServerProcess, ThreadedServer

# ---- --schema ---------------------------------------------------------------------------


@pytest.fixture
def other_schema(pg_url: str) -> Iterator[str]:
    """A second fresh schema for one test, dropped afterwards."""
    yield from fresh_pg_schema(pg_url)


def _fill_pg(url: str, schema: str) -> None:
    """Queue ``jobs`` of ``schema``: items 2..9 ready, 0 and 1 dead, one leased item 2
    held by a process on another host."""
    with spoolq.SyncQueue.create(url, name="jobs", max_attempts=1,
                                 engine_options={"schema": schema}) as q:
        q.put_many([{"n": n} for n in range(10)])
        q.nack(*q.lease_many(2, ttl=60))
    eng = open_engine(url, options={"schema": schema})
    try:
        now = time.time()
        eng.take("jobs", 1, now, Lease("elsewhere.invalid:1:0:x", now + 3600))
    finally:
        eng.close()


def test_every_command_opens_the_postgres_schema_given(pg_url: str, pg_schema: str,
                                                       other_schema: str,
                                                       tmp_path: Path) -> None:
    _fill_pg(pg_url, pg_schema)
    s = ("--schema", pg_schema)

    info = run_json("info", pg_url, *s)
    (jobs,) = info["queues"]
    assert (jobs["name"], jobs["ready"], jobs["leased"], jobs["dead"]) == ("jobs", 7, 1, 2)
    peeked = run_json("peek", pg_url, *s, "-q", "jobs", "-n", "3")
    assert [r["item"] for r in peeked["records"]] == [{"n": 3}, {"n": 4}, {"n": 5}]
    assert run_json("peek", pg_url, *s, "-q", "jobs", "--leased")["leased"] == 1
    assert run_json("verify", pg_url, *s)["ok"] is True

    dumped = run("dump", pg_url, *s, "-q", "jobs")
    assert dumped.exit_code == 0, dumped.output
    assert [json.loads(line)["n"] for line in dumped.stdout.splitlines()] == list(range(3, 10))

    moved = run_json("requeue", pg_url, *s, "-q", "jobs", "--dead")
    assert moved["dead_moved"] == 2
    released = run_json("requeue", pg_url, *s, "-q", "jobs", "--leased", "--force")
    assert released["leases_released"] == 1
    loaded = run("load", pg_url, "-", *s, "-q", "extra", input='{"x": 1}\n{"x": 2}\n')
    assert loaded.exit_code == 0, loaded.output
    assert run_json("compact", pg_url, *s)["engine"] == "postgres"

    copy = os.fspath(tmp_path / "copy.sqlite")
    copied = run_json("migrate", pg_url, copy, "--from-schema", pg_schema)
    assert {q["name"]: q["ready"] for q in copied["queues"]} == {"extra": 2, "jobs": 10}
    into = run_json("migrate", copy, pg_url, "--to-schema", other_schema, "-q", "extra")
    assert into["queues"][0] == {"name": "extra", "copied": 2, "ready": 2}
    assert run_json("peek", pg_url, "--schema", other_schema, "-q", "extra")["ready"] == 2

    purged = run_json("purge", pg_url, *s, "-q", "jobs", "--yes")
    assert purged["removed"] == 10
    assert run_json("info", pg_url, *s, "-q", "jobs")["queues"][0]["ready"] == 0


def test_a_schema_that_holds_no_queue_is_a_file_problem(pg_url: str, pg_schema: str) -> None:
    result = run("info", pg_url, "--schema", pg_schema)
    assert result.exit_code == 3, result.output
    assert pg_schema in result.output and "no spoolq queue" in result.output


@pytest.mark.parametrize("args", [
    ("info", "{path}", "--schema", "s"),
    ("peek", "{path}", "--schema", "s"),
    ("verify", "{path}", "--schema", "s"),
    ("dump", "{path}", "--schema", "s"),
    ("load", "{path}", "-", "--schema", "s"),
    ("requeue", "{path}", "--dead", "--schema", "s"),
    ("purge", "{path}", "--yes", "--schema", "s"),
    ("compact", "{path}", "--schema", "s"),
    ("migrate", "{path}", "{path}.copy.sqlite", "--from-schema", "s"),
    ("migrate", "{path}", "{path}.copy.sqlite", "--to-schema", "s"),
    ("serve", "{path}", "--port", "0", "--schema", "s"),
])
def test_a_schema_for_another_engine_is_a_usage_error(tmp_path: Path,
                                                      args: tuple[str, ...]) -> None:
    path = os.fspath(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create(path) as q:
        q.put(1)
    result = run(*(a.format(path=path) for a in args), input="")
    assert result.exit_code == 2, result.output
    assert "schema" in result.output and "postgresql://" in result.output
    assert not os.path.exists(path + ".copy.sqlite")


@pytest.mark.parametrize("name", ["", "x" * 64])
def test_a_schema_name_postgres_cannot_have_is_a_usage_error(name: str) -> None:
    result = run("info", "postgresql://127.0.0.1/test", "--schema", name)
    assert result.exit_code == 2, result.output
    assert "--schema" in result.output


# ---- float options ----------------------------------------------------------------------


def _float_options() -> list[tuple[str, str]]:
    found = []
    for name, command in sorted(cli.commands.items()):
        for param in command.params:
            if isinstance(param, click.Option) and isinstance(param.type, FloatParamType):
                found.append((name, param.opts[0]))
    return found


def test_the_float_options_are_found() -> None:
    assert ("compact", "--timeout") in _float_options()


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "infinity"])
@pytest.mark.parametrize(("command", "option"), _float_options())
def test_float_options_refuse_nan_and_infinity(tmp_path: Path, command: str, option: str,
                                               value: str) -> None:
    path = os.fspath(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create(path) as q:
        q.put(1)
    result = run(command, path, f"{option}={value}")
    assert result.exit_code == 2, result.output
    assert option in result.output and "finite" in result.output


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1"])
def test_serve_refuses_a_stall_timeout_that_is_no_finite_positive_number(
        tmp_path: Path, value: str) -> None:
    # A path in a missing directory: a server that took the value fails to open it (3).
    path = os.fspath(tmp_path / "missing" / "q.sqlite")
    result = run("serve", path, "--port", "0", f"--stall-timeout={value}")
    assert result.exit_code == 2, result.output
    assert "--stall-timeout" in result.output


# ---- replies within max_reply -----------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def small_reply_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A server (on the loop for memory, on its engine thread for sqlite); its URL."""
    path = ":memory:" if request.param == "memory" else os.fspath(tmp_path / "q.sqlite")
    with ThreadedServer(path) as srv:
        yield srv.url


def test_append_ack_and_release_of_many_records_fit_a_small_max_reply(
        small_reply_server: str) -> None:
    url = f"{small_reply_server}/jobs"
    with spoolq.SyncQueue.create(url, engine_options={"max_reply": MIN_MAX_REPLY},
                                 max_attempts=2) as q:
        q.put_many(list(range(3000)))
        assert q.qsize() == 3000
        held = []
        while len(held) < 2000:
            held += q.lease_many(2000 - len(held), ttl=60)
        q.ack(*held[:1000])
        q.nack(*held[1000:])
        assert q.stats["leased"] == 0
        assert q.qsize() == 2000
        assert q.get_many(2000) == list(range(1000, 3000))


def test_ids_replies_are_split_at_the_engine(small_reply_server: str) -> None:
    eng = RemoteEngine(f"{small_reply_server}/jobs", max_reply=MIN_MAX_REPLY)
    try:
        ids = eng.append("jobs", [b"x"] * 1000, [1] * 1000, time.time())
        assert len(ids) == 1000 and ids == sorted(ids)
        now = time.time()
        got = []
        while len(got) < 1000:
            got += eng.take("jobs", 1000, now, Lease("me", now + 60))
        assert [r.id for r in got] == ids
        deliveries = [(r.id, r.attempts) for r in got]
        assert eng.release("jobs", deliveries[:600], "me", not_before=0.0,
                           max_attempts=None) == ids[:600]
        assert eng.ack("jobs", deliveries[600:], "me") == ids[600:]
        assert tuple(eng.counts("jobs"))[:2] == (600, 0)
    finally:
        eng.close()


def test_queues_owners_and_meta_too_large_for_max_reply_are_clear_errors(
        small_reply_server: str) -> None:
    eng = RemoteEngine(f"{small_reply_server}/jobs", max_reply=MIN_MAX_REPLY)
    try:
        names = [f"queue-{n:03d}-" + "n" * 40 for n in range(40)]
        for name in names:
            eng.append(name, [b"x"], [1], time.time())
        with pytest.raises(ConfigurationError, match="max_reply"):
            eng.queues()
        assert eng.counts(names[0]).ready == 1  # the connection goes on

        now = time.time()
        for n in range(40):
            eng.take(names[n], 1, now, Lease(f"owner-{n:03d}-" + "o" * 40, now + 60))
            eng.append(names[0], [b"y"], [1], now)
        for n in range(40):
            eng.take(names[0], 1, now, Lease(f"owner-{n:03d}-" + "o" * 40, now + 60))
        with pytest.raises(ConfigurationError, match="max_reply"):
            eng.owners(names[0])
        assert eng.counts(names[0]).leased == 41

        eng.set_meta("big", b"m" * 2000)
        with pytest.raises(ConfigurationError, match="max_reply"):
            eng.get_meta("big")
        eng.set_meta("small", b"m" * 500)
        assert eng.get_meta("small") == b"m" * 500
    finally:
        eng.close()
    roomy = RemoteEngine(f"{small_reply_server}/jobs")
    try:
        assert set(names) <= set(roomy.queues())
        assert roomy.get_meta("big") == b"m" * 2000
    finally:
        roomy.close()


def test_an_error_with_a_long_message_fits_a_small_max_reply(small_reply_server: str) -> None:
    eng = RemoteEngine(f"{small_reply_server}/jobs", max_reply=MIN_MAX_REPLY)
    try:
        name = "\x01" * 250  # its repr in the message is four times as long
        eng.append(name, [b"z" * 2000], [2000], time.time())
        with pytest.raises(ConfigurationError, match="record 1 of queue"):
            eng.take(name, 1, time.time(), None)
        assert eng.counts(name).ready == 1  # the connection goes on
    finally:
        eng.close()


# ---- signals during shutdown --------------------------------------------------------------


_SLOW_EXIT = textwrap.dedent("""\
    import atexit, sys, time
    from spoolq.server import main

    def slow_exit() -> None:
        print("exiting", flush=True)
        time.sleep(1.5)

    atexit.register(slow_exit)
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_teardown_lets_the_server_exit_cleanly(
        tmp_path: Path, loop: str, second: signal.Signals) -> None:
    pytest.importorskip(loop)
    script = tmp_path / "serve.py"
    script.write_text(_SLOW_EXIT)
    proc = subprocess.Popen(
        [sys.executable, os.fspath(script), os.fspath(tmp_path / "q.sqlite"), "--port", "0",
         "--loop", loop, "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": SRC})
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("listening on ")
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline() == "exiting\n"
        proc.send_signal(second)
        _out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_a_signal_before_the_server_listens_still_ends_it(tmp_path: Path) -> None:
    script = tmp_path / "serve.py"
    # Opening the queue file waits: the signal comes before the server listens.
    script.write_text(textwrap.dedent("""\
        import sys, time
        import spoolq.server
        from spoolq.engines import open_engine

        def slow_open(*args, **kwargs):
            print("opening", flush=True)
            time.sleep(30)
            return open_engine(*args, **kwargs)

        spoolq.server.open_engine = slow_open
        sys.exit(spoolq.server.main(sys.argv[1:]))
    """))
    proc = subprocess.Popen(
        [sys.executable, os.fspath(script), os.fspath(tmp_path / "q.sqlite"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": SRC})
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "opening\n"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
        assert proc.returncode == -signal.SIGTERM
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_sigterm_still_shuts_the_server_down_cleanly(tmp_path: Path) -> None:
    with ServerProcess(os.fspath(tmp_path / "q.sqlite")) as srv:
        with spoolq.SyncQueue.create(f"{srv.url}/jobs") as q:
            q.put("kept")
        assert srv.stop() == 0
    with spoolq.SyncQueue.create(os.fspath(tmp_path / "q.sqlite"), name="jobs") as q:
        assert q.get_nowait() == "kept"


def test_the_largest_replies_fit_the_smallest_max_reply() -> None:
    fits = max_ids(MIN_MAX_REPLY)
    assert fits == 111
    assert len(encode_reply(MAX_ID, [2**63 - 1] * fits)) <= ids_reply_size(fits) <= MIN_MAX_REPLY
    for message in ("é" * 5000, "\U0001f600" * 5000, "x" * 5000, "q" * 959 + "é"):
        frame = encode_error(MAX_ID, ErrorCode.INTERNAL, message)
        assert len(frame) <= MIN_MAX_REPLY
        assert cbor2.loads(frame[9:])["message"].endswith("…")


def test_the_client_refuses_an_ids_request_whose_reply_would_not_fit() -> None:
    client = ClientProtocol(max_frame=MIN_MAX_REPLY)
    client.server_max_frame = 1 << 20
    client.request("ack", {"queue": "q", "owner": "o", "deliveries": [[1, 1]] * 111})
    with pytest.raises(ReplyTooLarge) as caught:
        client.request("ack", {"queue": "q", "owner": "o", "deliveries": [[1, 1]] * 112})
    assert caught.value.fits == 111
    client.request("peek", {"queue": "q" * 5000, "n": 1})  # records: the server cuts them
    with pytest.raises(FrameTooLarge):
        client.request("append", {"queue": "q", "records": [b"x" * (1 << 20)], "sizes": [1]})
