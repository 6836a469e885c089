"""The spoolq server: every named queue of one file, shared over TCP.

Run it with ``python -m spoolq.server PATH`` (or ``spoolq serve PATH``), or
embed it with :func:`start_server` / :func:`serve`. Clients connect with a
``spoolq://host:port/name`` path; the wire format is in docs/protocol.md.

The server stores the records clients send as they are: it never decodes an
item. Engine calls run on one thread (:mod:`spoolq.dispatch`), never on the
event loop; concurrent appends to a queue share one transaction.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, cast

from .dispatch import EngineThread
from .engines import Engine, open_engine
from .errors import AuthenticationError, ConfigurationError, SpoolqError
from .protocol import (
    DEFAULT_MAX_FRAME,
    VERSION,
    ErrorCode,
    ProtocolError,
    Request,
    ServerProtocol,
    code_for,
    encode_error,
    encode_reply,
)

__all__ = ["DEFAULT_PORT", "Server", "main", "serve", "start_server"]

log = logging.getLogger("spoolq")

DEFAULT_PORT = 7480
_MAX_INFLIGHT = 256  # requests per connection before the server stops reading from it
_SHUTDOWN_GRACE = 30.0


def _version() -> str:
    from . import __version__
    return __version__


class _Connection(asyncio.Protocol):
    """One client connection: frames in, engine jobs out, replies back."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.sans = ServerProtocol(max_frame=server.max_frame, token=server.token)
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.owners: dict[str, dict[str, int | None]] = {}
        self.inflight = 0
        self.closed = False
        self.orderly = False
        self.max_reply = server.max_frame
        self._last_data = 0.0
        self._stall: asyncio.TimerHandle | None = None
        self._write_paused = False
        self._read_paused = False

    # ---- transport events ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = self.transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.server.connections.add(self)
        self._last_data = self.loop.time()
        self._arm_stall()
        log.info("spoolq: connection from %s", self.peer)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._last_data = self.loop.time()
        try:
            requests = self.sans.receive_data(data)
        except (ProtocolError, AuthenticationError) as exc:
            self._write(self.sans.data_to_send())
            log.warning("spoolq: closing the connection from %s: %s", self.peer, exc)
            self._drop()
            return
        out = self.sans.data_to_send()
        if out:
            self._write(out)
        for request in requests:
            self._dispatch(request)
        self._arm_stall()

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        self.server.connections.discard(self)
        self.server.connection_closed.set()
        if self.owners and not self.orderly and not self.server.stopping:
            self._release_leases()
        log.info("spoolq: connection from %s closed%s", self.peer,
                 f" ({exc})" if exc is not None else "")

    # ---- helpers ------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _drop(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _update_reading(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        pause = self._write_paused or self.inflight >= _MAX_INFLIGHT or self.server.stopping
        if pause and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()
        elif not pause and self._read_paused and self.inflight <= _MAX_INFLIGHT // 2:
            self._read_paused = False
            self._last_data = self.loop.time()
            self.transport.resume_reading()
            self._arm_stall()

    def _arm_stall(self) -> None:
        if self._stall is None and (self.sans.pending or not self.sans.ready):
            self._stall = self.loop.call_later(self.server.stall_timeout, self._check_stall)

    def _check_stall(self) -> None:
        self._stall = None
        if self.closed or (self.sans.ready and not self.sans.pending):
            return
        if self._read_paused:
            return
        idle = self.loop.time() - self._last_data
        if idle < self.server.stall_timeout:
            self._stall = self.loop.call_later(self.server.stall_timeout - idle,
                                               self._check_stall)
            return
        what = "mid-frame" if self.sans.ready else "during the handshake"
        log.warning("spoolq: dropping the connection from %s: no data for %.1f s %s",
                    self.peer, idle, what)
        self._write(encode_error(0, ErrorCode.TIMEOUT, f"no data for {idle:.1f} s {what}"))
        self._drop()

    def _release_leases(self) -> None:
        for queue_name, owners in self.owners.items():
            by_limit: dict[int | None, list[str]] = {}
            for owner, max_attempts in owners.items():
                by_limit.setdefault(max_attempts, []).append(owner)
            for max_attempts, group in by_limit.items():
                args = {"queue": queue_name, "now": time.time(), "owners": group,
                        "max_attempts": max_attempts}
                self.server.engine_thread.submit("expire", args, self._log_release(queue_name))

    def _log_release(self, queue_name: str) -> Callable[[Any, BaseException | None], None]:
        def outcome(result: Any, error: BaseException | None) -> None:
            if error is not None:
                log.error("spoolq: releasing the leases of %s on %r failed", self.peer,
                          queue_name, exc_info=error)
            elif result:
                log.info("spoolq: released %d leases of %s on %r", result, self.peer,
                         queue_name)
        return outcome

    # ---- requests -----------------------------------------------------------------------

    def _dispatch(self, req: Request) -> None:
        op, args = req.op, req.args
        if op == "hello":
            if args["max_reply"]:
                self.max_reply = max(args["max_reply"], 1024)
            self._write(encode_reply(req.id, {
                "server": f"spoolq {_version()}", "version": VERSION,
                "engine": self.server.engine.name, "max_frame": self.server.max_frame,
                "time": time.time()}))
            return
        if op == "bye":
            self.orderly = True
            self._write(encode_reply(req.id, None))
            return
        if op == "take":
            args["limit"] = self.max_reply
            if args["lease"] is not None:
                self.owners.setdefault(args["queue"], {})[args["lease"][0]] = \
                    args["max_attempts"]
        self.inflight += 1
        self._update_reading()
        if op == "wait":
            self.server.spawn(self._wait_ready(req))
        elif op == "take" and args["wait"] > 0:
            self.server.spawn(self._long_take(req))
        else:
            self.server.engine_thread.submit(
                op, args, lambda result, error: self._complete(req, result, error))

    def _complete(self, req: Request, result: Any, error: BaseException | None) -> None:
        self.inflight -= 1
        if self.closed:
            if req.op == "take" and error is None and result and req.args["lease"] is None:
                # the reply cannot be sent: put the records back where they were
                self.server.engine_thread.submit(
                    "restore", {"queue": req.args["queue"], "records": result},
                    self._log_release(req.args["queue"]))
            return
        if error is None:
            self._write(encode_reply(req.id, result))
        else:
            code = code_for(error)
            if code == ErrorCode.INTERNAL:
                log.error("spoolq: %s request from %s failed", req.op, self.peer,
                          exc_info=error)
            elif not isinstance(error, (SpoolqError, ValueError, TypeError)):
                log.warning("spoolq: %s request from %s failed: %s", req.op, self.peer, error)
            self._write(encode_error(req.id, code, f"{type(error).__name__}: {error}"
                                     if code == ErrorCode.INTERNAL else str(error)))
        self._update_reading()

    async def _long_take(self, req: Request) -> None:
        a = req.args
        start = self.loop.time()
        deadline = start + a["wait"]
        result: Any = []
        try:
            while True:
                shift = self.loop.time() - start
                lease = a["lease"]
                args = {**a, "now": a["now"] + shift,
                        "lease": None if lease is None else [lease[0], lease[1] + shift]}
                result = await self.server.engine_thread.run("take", args)
                remaining = deadline - self.loop.time()
                if result or remaining <= 0 or self.closed or self.server.stopping:
                    break
                await self.server.wait_for(a["queue"], min(remaining, self.server.poll_interval))
        except Exception as exc:
            self._complete(req, None, exc)
            return
        self._complete(req, result, None)

    async def _wait_ready(self, req: Request) -> None:
        queue_name = req.args["queue"]
        deadline = self.loop.time() + req.args["timeout"]
        try:
            while True:
                counts = await self.server.engine_thread.run("counts", {"queue": queue_name})
                remaining = deadline - self.loop.time()
                if counts[0] > 0 or remaining <= 0 or self.closed or self.server.stopping:
                    ready = counts[0] > 0
                    break
                if await self.server.wait_for(queue_name,
                                              min(remaining, self.server.poll_interval)):
                    ready = True
                    break
        except Exception as exc:
            self._complete(req, None, exc)
            return
        self._complete(req, ready, None)


class Server:
    """A running spoolq server over one engine; see :func:`start_server`.

    Use it as an async context manager, or call :meth:`close` and await
    :meth:`wait_closed`. Closing stops accepting, lets every request already
    received finish, closes the connections and then the engine.
    """

    def __init__(self, engine: Engine, *, token: str | None = None,
                 max_frame: int = DEFAULT_MAX_FRAME, stall_timeout: float = 10.0,
                 poll_interval: float = 0.2, ssl_context: ssl.SSLContext | None = None,
                 label: str = "") -> None:
        if not isinstance(max_frame, int) or max_frame < 1024:
            raise ConfigurationError(f"max_frame must be an int >= 1024, not {max_frame!r}")
        if not stall_timeout > 0:
            raise ConfigurationError(f"stall_timeout must be > 0, not {stall_timeout!r}")
        if token is not None and not token:
            raise ConfigurationError("the token must not be empty")
        self.engine = engine
        self.token = token
        self.max_frame = max_frame
        self.stall_timeout = stall_timeout
        self.poll_interval = poll_interval
        self.ssl_context = ssl_context
        self.label = label
        self.loop = asyncio.get_running_loop()
        self.engine_thread = EngineThread(engine, self.loop, self._on_ready)
        self.connections: set[_Connection] = set()
        self.connection_closed = asyncio.Event()
        self.stopping = False
        self.address: tuple[str, int] = ("", 0)
        self._server: asyncio.Server | None = None
        self._waiters: dict[str, set[asyncio.Future[bool]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        self._closing: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """``spoolq://host:port``: append ``/name`` for a queue."""
        host, port = self.address
        return f"spoolq://{f'[{host}]' if ':' in host else host}:{port}"

    async def start(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
        """Listen on ``host:port`` (port 0 picks a free one; see :attr:`address`)."""
        self._server = await self.loop.create_server(
            lambda: _Connection(self), host, port, ssl=self.ssl_context,
            ssl_handshake_timeout=self.stall_timeout if self.ssl_context else None)
        sockname = self._server.sockets[0].getsockname()
        self.address = (str(sockname[0]), int(sockname[1]))
        log.info("spoolq: serving %s (%s engine) on %s:%d%s%s", self.label or "a queue file",
                 self.engine.name, *self.address, " with TLS" if self.ssl_context else "",
                 " with token auth" if self.token else "")

    # ---- long-poll wake-ups -------------------------------------------------------------

    def spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_for(self, queue_name: str, timeout: float) -> bool:
        """Sleep until ``queue_name`` may have ready records (True) or ``timeout`` passes."""
        fut: asyncio.Future[bool] = self.loop.create_future()
        self._waiters.setdefault(queue_name, set()).add(fut)
        handle = self.loop.call_later(max(timeout, 0.0), _resolve, fut, False)
        try:
            return await fut
        finally:
            handle.cancel()
            waiters = self._waiters.get(queue_name)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self._waiters[queue_name]

    def _on_ready(self, queues: set[str]) -> None:
        for name in queues:
            for fut in self._waiters.pop(name, ()):
                _resolve(fut, True)

    # ---- shutdown -----------------------------------------------------------------------

    def close(self) -> None:
        """Start a clean shutdown (idempotent); await :meth:`wait_closed` for its end."""
        if self._closing is None:
            self._closing = self.loop.create_task(self._shutdown())

    async def wait_closed(self) -> None:
        """Wait until the server has shut down and closed the engine."""
        await self._closed.wait()

    async def _shutdown(self) -> None:
        self.stopping = True
        log.info("spoolq: shutting down: %d connections, %d waiting requests",
                 len(self.connections), len(self._tasks))
        if self._server is not None:
            self._server.close()
        for waiters in list(self._waiters.values()):
            for fut in waiters:
                _resolve(fut, False)
        for conn in list(self.connections):
            conn._update_reading()
        deadline = self.loop.time() + _SHUTDOWN_GRACE
        while any(c.inflight for c in self.connections) and self.loop.time() < deadline:
            self.connection_closed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.connection_closed.wait(), 0.01)
        for conn in list(self.connections):
            conn._drop()
        while self.connections and self.loop.time() < deadline:
            self.connection_closed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.connection_closed.wait(), 0.05)
        if self._server is not None:
            await self._server.wait_closed()
        self.engine_thread.stop()
        await asyncio.to_thread(self.engine_thread.join)
        log.info("spoolq: server stopped; %d engine transactions", self.engine_thread.transactions)
        self._closed.set()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()
        await self.wait_closed()


def _resolve(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


def _ssl_context(tls_cert: str | os.PathLike[str] | None,
                 tls_key: str | os.PathLike[str] | None) -> ssl.SSLContext | None:
    if tls_cert is None and tls_key is None:
        return None
    if tls_cert is None:
        raise ConfigurationError("tls_key needs tls_cert")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls_cert, tls_key)
    return ctx


async def start_server(path: str | os.PathLike[str], *, host: str = "127.0.0.1",
                       port: int = DEFAULT_PORT, token: str | None = None,
                       tls_cert: str | os.PathLike[str] | None = None,
                       tls_key: str | os.PathLike[str] | None = None,
                       max_frame: int = DEFAULT_MAX_FRAME, durability: str = "commit",
                       stall_timeout: float = 10.0, engine: str | Engine | None = None,
                       engine_options: dict[str, Any] | None = None) -> Server:
    """Open ``path`` (created if missing) and serve every queue in it; return the server.

    ``port=0`` picks a free port (read it from ``server.address``).
    ``token`` makes clients authenticate first; ``tls_cert``/``tls_key``
    (PEM files) turn on TLS. Frames longer than ``max_frame`` bytes are
    refused unread, and a client that stops sending in the middle of a frame
    (or of the handshake) is dropped after ``stall_timeout`` seconds.
    ``durability`` is the engine's (``"fsync"`` or ``"commit"``). Raises
    :class:`ConfigurationError` for bad settings and ``OSError`` when the
    address is taken.
    """
    if durability not in ("fsync", "commit"):
        raise ConfigurationError(f"durability must be 'fsync' or 'commit', not {durability!r}")
    ctx = _ssl_context(tls_cert, tls_key)
    eng = await asyncio.to_thread(open_engine, path, engine, durability=durability,
                                  options=engine_options)
    try:
        server = Server(eng, token=token, max_frame=max_frame, stall_timeout=stall_timeout,
                        ssl_context=ctx, label=os.fspath(path))
    except BaseException:
        eng.close()
        raise
    try:
        await server.start(host, port)
    except BaseException:
        server.close()
        await server.wait_closed()
        raise
    return server


async def serve(path: str | os.PathLike[str], *, host: str = "127.0.0.1",
                port: int = DEFAULT_PORT, token: str | None = None,
                tls_cert: str | os.PathLike[str] | None = None,
                tls_key: str | os.PathLike[str] | None = None,
                max_frame: int = DEFAULT_MAX_FRAME, durability: str = "commit",
                stall_timeout: float = 10.0, engine: str | Engine | None = None,
                engine_options: dict[str, Any] | None = None,
                on_listening: Callable[[Server], None] | None = None) -> None:
    """Serve ``path`` until SIGTERM or SIGINT (or until cancelled), then shut down cleanly.

    Takes the settings of :func:`start_server`; ``on_listening`` is called
    once the server listens. Signal handlers are installed only when running
    in the main thread.
    """
    server = await start_server(path, host=host, port=port, token=token, tls_cert=tls_cert,
                                tls_key=tls_key, max_frame=max_frame, durability=durability,
                                stall_timeout=stall_timeout, engine=engine,
                                engine_options=engine_options)
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if sys.platform != "win32":
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.add_signal_handler(sig, _on_signal, server, sig)
                installed.append(sig)
    try:
        if on_listening is not None:
            on_listening(server)
        await server.wait_closed()
    finally:
        server.close()
        await asyncio.shield(server.wait_closed())
        for sig in installed:
            loop.remove_signal_handler(sig)


def _on_signal(server: Server, sig: signal.Signals) -> None:
    log.info("spoolq: %s received", sig.name)
    server.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m spoolq.server",
        description="Serve every queue of a spoolq file over TCP until SIGTERM or SIGINT.")
    parser.add_argument("path", help="the queue file (created if missing), or :memory:")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--token-file", help="file holding the token clients must send")
    parser.add_argument("--tls-cert", help="PEM certificate chain: turns on TLS")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--max-frame", type=int, default=DEFAULT_MAX_FRAME,
                        help=f"largest frame accepted, in bytes (default {DEFAULT_MAX_FRAME})")
    parser.add_argument("--stall-timeout", type=float, default=10.0,
                        help="drop a client silent this many seconds mid-frame (default 10)")
    parser.add_argument("--durability", choices=("commit", "fsync"), default="commit")
    parser.add_argument("--engine", help="engine name (default: picked from the path)")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The token in ``path``, without surrounding whitespace; ConfigurationError if empty."""
    with open(path, encoding="utf-8") as f:
        token = f.read().strip()
    if not token:
        raise ConfigurationError(f"{os.fspath(path)}: the token file is empty")
    return token


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: parse ``argv``, serve until a signal, return the exit status.

    It prints one line, ``listening on spoolq://HOST:PORT``, once the server
    accepts connections (useful with ``--port 0``); logs go to stderr.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def listening(server: Server) -> None:
        sys.stdout.write(f"listening on {server.url}\n")
        sys.stdout.flush()

    try:
        token = None if args.token_file is None else read_token_file(args.token_file)
        asyncio.run(serve(args.path, host=args.host, port=args.port, token=token,
                          tls_cert=args.tls_cert, tls_key=args.tls_key,
                          max_frame=args.max_frame, durability=args.durability,
                          stall_timeout=args.stall_timeout, engine=args.engine,
                          on_listening=listening))
    except (SpoolqError, OSError, ssl.SSLError) as exc:
        log.error("spoolq: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
