"""What the PostgreSQL test modules share: an engine on the test's own schema, a
statement run on a connection of its own, and a server of a test's own to crash."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import NoReturn

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from spoolq.engines.postgres import PostgresEngine


@pytest.fixture
def engine(pg_url: str, pg_schema: str) -> Iterator[PostgresEngine]:
    eng = PostgresEngine(pg_url, schema=pg_schema)
    try:
        yield eng
    finally:
        eng.close()


def execute(url: str, statement: sql.Composable, *params: object) -> None:
    """Run ``statement`` in autocommit mode on a new connection to ``url``."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement, params or None)


@contextlib.contextmanager
def meta_reader_role(url: str, schema: str, role: str) -> Iterator[str]:
    """A login role ``role`` that may put, take and move ids in ``schema`` but only read
    its meta; yields the conninfo to connect as it, then drops the role."""
    s, r = sql.Identifier(schema), sql.Identifier(role)
    execute(url, sql.SQL("CREATE ROLE {} LOGIN").format(r))
    try:
        for grant in ("GRANT USAGE ON SCHEMA {s} TO {r}",
                      "GRANT SELECT, INSERT, UPDATE, DELETE ON {s}.records, {s}.counts TO {r}",
                      "GRANT SELECT ON {s}.meta TO {r}",
                      "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {s} TO {r}"):
            execute(url, sql.SQL(grant).format(s=s, r=r))
        yield make_conninfo(url, user=role)
    finally:
        execute(url, sql.SQL("DROP OWNED BY {}").format(r))
        execute(url, sql.SQL("DROP ROLE {}").format(r))


def _server_binaries() -> str | None:
    """The directory of PostgreSQL's server programs (initdb, pg_ctl), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return None if initdb is None else os.path.dirname(initdb)


class Cluster:
    """A PostgreSQL server of a test's own, in a temporary directory on a free port of
    127.0.0.1, that the test may crash and restart (the shared server is never touched).
    Run as the ``postgres`` user when the tests run as root, since initdb refuses root."""

    def __init__(self, bindir: str, base: str) -> None:
        self.bindir = bindir
        self.data = os.path.join(base, "data")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_user: list[str] = []
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            import pwd  # Unix only, and only needed as root

            user = pwd.getpwnam("postgres")
            os.chown(base, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres")
        self._base = base

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([*self._as_user, os.path.join(self.bindir, program), *args],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=120)

    def start(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-w", "-l", os.path.join(self._base, "log"),
                  "-o", f"-p {self.port} -k {self._base} -c listen_addresses=127.0.0.1",
                  "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-w", "-m", mode, "stop")

    def wait_up(self, timeout: float = 30.0) -> None:
        """Wait until the server accepts connections again (after a crash, its recovery)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def _skip_or_fail(problem: str) -> NoReturn:
    """Skip, stating ``problem``; fail instead where SPOOLQ_REQUIRE_POSTGRES is set (CI)."""
    if os.environ.get("SPOOLQ_REQUIRE_POSTGRES"):
        pytest.fail(f"SPOOLQ_REQUIRE_POSTGRES is set but {problem}")
    pytest.skip(reason=problem)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A started server of the test's own (see :class:`Cluster`), stopped afterwards;
    skips where PostgreSQL's server programs are not installed."""
    bindir = _server_binaries()
    if bindir is None:
        _skip_or_fail("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
    base = tempfile.mkdtemp(prefix="spoolq-pg-")
    try:
        try:
            server = Cluster(bindir, base)
        except (OSError, KeyError, subprocess.SubprocessError) as exc:
            _skip_or_fail(f"cannot create a PostgreSQL cluster here: {exc}")
        server.start()
        try:
            yield server
        finally:
            server.stop("immediate")
    finally:
        shutil.rmtree(base, ignore_errors=True)
