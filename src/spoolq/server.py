"""The spoolq server: every named queue of one file, shared over TCP.

Run it with ``python -m spoolq.server PATH`` (or ``spoolq serve PATH``), or
embed it with :func:`start_server` / :func:`serve`. Clients connect with a
``spoolq://host:port/name`` path; the wire format is in docs/protocol.md.

The server stores the records clients send as they are: it never decodes an
item. Engine calls run on one thread (:mod:`spoolq.dispatch`), never on the
event loop, and concurrent appends to a queue share one transaction; only an
engine that never blocks (the memory engine) is called on the loop itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import signal
import ssl
import sys
from collections.abc import Callable, Coroutine, Sequence
from types import FrameType, TracebackType
from typing import Any, TypeVar

from ._serverlimits import DEFAULT_MAX_CONNECTIONS, check_max_connections
from ._serversignals import LateSignals, Wakeup, loop_name
from ._servertls import Acceptor, Handshake, ssl_context
from ._sessionleases import Deliveries
from .dispatch import make_runner
from .engines import Engine, engine_name_for, open_engine
from .errors import ConfigurationError, SpoolqError
from .protocol import DEFAULT_MAX_FRAME
from .session import Session

__all__ = ["DEFAULT_PORT", "LOOPS", "Server", "loop_name", "main", "read_token_file", "run",
           "serve", "start_server"]

log = logging.getLogger("spoolq")
R = TypeVar("R")

DEFAULT_PORT = 7480
LOOPS = ("auto", "asyncio", "uvloop")
_SHUTDOWN_GRACE = 30.0
_LINGER = 1.0  # seconds a stopping server waits for clients to close after its last reply
_WRITE_STALL = 1.0  # seconds a stopping server waits for a client to read any of its replies
# Seconds a client that keeps reading has for its last replies after the last request was
# answered, when that came near or past the end of _SHUTDOWN_GRACE.
_LAST_READ = 5.0


class Server:
    """A running spoolq server over one engine; see :func:`start_server`.

    Use it as an async context manager, or call :meth:`close` and await
    :meth:`wait_closed`. Closing stops accepting, lets every request already
    received finish, closes the connections and then the engine.
    """

    def __init__(self, engine: Engine, *, token: str | None = None,
                 max_frame: int = DEFAULT_MAX_FRAME, stall_timeout: float = 10.0,
                 poll_interval: float = 0.2, ssl_context: ssl.SSLContext | None = None,
                 label: str = "", max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        if not isinstance(max_frame, int) or max_frame < 1024:
            raise ConfigurationError(f"max_frame must be an int >= 1024, not {max_frame!r}")
        if not (stall_timeout > 0 and math.isfinite(stall_timeout)):
            raise ConfigurationError(
                f"stall_timeout must be a finite number > 0, not {stall_timeout!r}")
        if token is not None and (not isinstance(token, str) or not token):
            raise ConfigurationError(f"the token must be a non-empty str, not {token!r}")
        if token is not None:
            try:
                token.encode()
            except UnicodeEncodeError as exc:  # every connection would fail on it
                raise ConfigurationError("the token cannot be written as UTF-8 (it holds "
                                         f"{token[exc.start:exc.end]!a})") from exc
        self.engine = engine
        self.token = token
        self.max_frame = max_frame
        self.max_connections = check_max_connections(max_connections)
        self.stall_timeout = stall_timeout
        self.poll_interval = poll_interval
        self.ssl_context = ssl_context
        self.label = label
        self.loop = asyncio.get_running_loop()
        self.runner = make_runner(engine, self.loop, self._on_ready)
        self.connections: set[Session] = set()
        # Sessions with requests in flight, open or not: a shutdown waits for them all
        # (a closed connection's take still running gives its records back when it ends).
        self.busy: set[Session] = set()
        self.connection_closed = asyncio.Event()  # a connection ended, or went idle
        # queue -> {record id: the connection whose delivery of it is still out}: an ack,
        # release or take on any connection ends that connection's record of it.
        self.holders: dict[str, dict[int, Deliveries]] = {}
        self.stopping = False
        self.stopped_by: signal.Signals | None = None  # the signal that stopped serve()
        self.address: tuple[str, int] = ("", 0)
        self._server: asyncio.Server | None = None
        self._acceptor: Acceptor | None = None
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
        factory: Callable[[], asyncio.Protocol] = (
            (lambda: Session(self)) if self.ssl_context is None else (lambda: Handshake(self)))
        self._server = await self.loop.create_server(factory, host, port)
        if Acceptor.wanted(self.loop):  # asyncio's own loop, whose accept floods its log
            self._acceptor = Acceptor(self, factory, self._server.sockets)
        sockname = self._server.sockets[0].getsockname()
        self.address = (str(sockname[0]), int(sockname[1]))
        log.info("spoolq: serving %s (%s engine) on %s:%d%s%s, %s event loop",
                 self.label or "a queue file", self.engine.name, *self.address,
                 " with TLS" if self.ssl_context else "",
                 " with token auth" if self.token else "", loop_name(self.loop))

    # ---- long-poll wake-ups -------------------------------------------------------------

    def spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_for(self, queue_name: str, timeout: float,
                       sleepers: set[asyncio.Future[bool]] | None = None) -> bool:
        """Sleep until ``queue_name`` may have ready records (True) or ``timeout`` passes.

        The wait's future is in ``sleepers`` meanwhile: resolving it with False (as a
        connection that ends does) ends the wait early."""
        fut: asyncio.Future[bool] = self.loop.create_future()
        self._waiters.setdefault(queue_name, set()).add(fut)
        if sleepers is not None:
            sleepers.add(fut)
        handle = self.loop.call_later(max(timeout, 0.0), _resolve, fut, False)
        try:
            return await fut
        finally:
            handle.cancel()
            if sleepers is not None:
                sleepers.discard(fut)
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
        if self._acceptor is not None:
            self._acceptor.close()
        for waiters in list(self._waiters.values()):
            for fut in waiters:
                _resolve(fut, False)
        for conn in list(self.connections):
            conn.update_reading()
        deadline = self.loop.time() + _SHUTDOWN_GRACE
        while self.busy and self.loop.time() < deadline:
            self.connection_closed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.connection_closed.wait(), 0.01)
        # Replies written near the end of the grace period may take a while to read: a
        # client that keeps reading them (see below) gets _LAST_READ seconds for that.
        deadline = max(deadline, self.loop.time() + _LAST_READ)
        for conn in list(self.connections):
            with contextlib.suppress(OSError):  # reset just now: asyncio's write_eof raises
                conn.finish()
        linger = min(deadline, self.loop.time() + _LINGER)
        while self.connections and self.loop.time() < linger:
            self.connection_closed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.connection_closed.wait(), 0.05)
        for conn in list(self.connections):
            conn.drop()
        # A connection closes once its replies are written. One whose client does not read
        # them (its writes make no progress for _WRITE_STALL) is cut off: its replies are
        # lost, its leases go back, and the shutdown does not wait on it.
        progress: dict[Session, tuple[int, float]] = {}
        while self.connections and self.loop.time() < deadline:
            now = self.loop.time()
            for conn in list(self.connections):
                size = conn.unsent()
                last = progress.get(conn)
                if last is None or size != last[0]:
                    progress[conn] = (size, now)
                elif now - last[1] >= _WRITE_STALL:
                    conn.abandon(now - last[1])
            self.connection_closed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.connection_closed.wait(), 0.05)
        for conn in list(self.connections):  # still sending when the grace period ended
            conn.abandon(None)
        if self._server is not None:
            await self._server.wait_closed()
        self.runner.stop()
        await asyncio.to_thread(self.runner.join)
        log.info("spoolq: server stopped; %d engine transactions", self.runner.transactions)
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


async def start_server(path: str | os.PathLike[str], *, host: str = "127.0.0.1",
                       port: int = DEFAULT_PORT, token: str | None = None,
                       tls_cert: str | os.PathLike[str] | None = None,
                       tls_key: str | os.PathLike[str] | None = None,
                       max_frame: int = DEFAULT_MAX_FRAME, durability: str = "commit",
                       stall_timeout: float = 10.0, engine: str | Engine | None = None,
                       engine_options: dict[str, Any] | None = None,
                       max_connections: int = DEFAULT_MAX_CONNECTIONS) -> Server:
    """Open ``path`` (created if missing) and serve every queue in it; return the server.

    ``port=0`` picks a free port (read it from ``server.address``).
    ``token`` makes clients authenticate first; ``tls_cert``/``tls_key``
    (PEM files) turn on TLS. Frames longer than ``max_frame`` bytes are
    refused unread, and a client that stops sending in the middle of a frame
    (or of the handshake) is dropped after ``stall_timeout`` seconds. Past
    ``max_connections`` connections, a new one is refused with an ERROR frame.
    ``durability`` is the engine's (``"fsync"`` or ``"commit"``). Raises
    :class:`ConfigurationError` for bad settings and ``OSError`` when the
    address is taken.
    """
    if durability not in ("fsync", "commit"):
        raise ConfigurationError(f"durability must be 'fsync' or 'commit', not {durability!r}")
    if type(port) is not int or not 0 <= port <= 65535:
        raise ConfigurationError(f"port must be an int from 0 to 65535, not {port!r}")
    ctx = ssl_context(tls_cert, tls_key)
    eng = await asyncio.to_thread(open_engine, path, engine, durability=durability,
                                  options=engine_options)
    try:
        server = Server(eng, token=token, max_frame=max_frame, stall_timeout=stall_timeout,
                        ssl_context=ctx, label=os.fspath(path), max_connections=max_connections)
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
                on_listening: Callable[[Server], None] | None = None,
                max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
    """Serve ``path`` until SIGTERM or SIGINT (or until cancelled), then shut down cleanly.

    Takes the settings of :func:`start_server`; ``on_listening`` is called
    once the server listens. Signal handlers are installed only when running
    in the main thread, and once the server has shut down the handlers that
    were there before are put back. They are Python-level handlers: a handler
    the program registered with the loop's ``add_signal_handler`` for SIGTERM
    or SIGINT stays registered (and is called too while the server runs).
    """
    server = await start_server(path, host=host, port=port, token=token, tls_cert=tls_cert,
                                tls_key=tls_key, max_frame=max_frame, durability=durability,
                                stall_timeout=stall_timeout, engine=engine,
                                engine_options=engine_options, max_connections=max_connections)
    loop = asyncio.get_running_loop()

    def handle(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed
            loop.call_soon_threadsafe(_on_signal, server, signal.Signals(signum))

    # Python-level handlers, not the loop's add_signal_handler(): removing a handler from
    # the loop would drop one the program had registered there for the same signal, which
    # it then ignored for good. These are swapped in and the ones found put back.
    installed: dict[signal.Signals, Any] = {}
    wakeup: Wakeup | None = None
    if sys.platform != "win32":
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread
                installed[sig] = signal.signal(sig, handle)
        if installed:
            wakeup = Wakeup.install(loop)
    try:
        if on_listening is not None:
            on_listening(server)
        await server.wait_closed()
    finally:
        server.close()
        await asyncio.shield(server.wait_closed())
        for sig, before in installed.items():
            # The handler from before serve() ran goes back (None: one not set from
            # Python, which cannot be put back: the default action then).
            if signal.getsignal(sig) == handle:
                signal.signal(sig, signal.SIG_DFL if before is None else before)
        if wakeup is not None:
            wakeup.remove()


def run(main: Coroutine[Any, Any, R], *, loop: str = "auto") -> R:
    """Run ``main`` to completion on a new event loop and return its result.

    ``loop`` is ``"asyncio"`` (the standard library's), ``"uvloop"`` (less
    server CPU per request, about a tenth in ``measurements/server_bench.py``;
    ``pip install "spoolq[server]"``, not on Windows) or ``"auto"``: uvloop when
    it is installed, else asyncio. Raises
    :class:`ConfigurationError` for an unknown name or a missing uvloop.
    """
    if loop not in LOOPS:
        main.close()
        raise ConfigurationError(f"loop must be one of {', '.join(LOOPS)}, not {loop!r}")
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                main.close()
                raise ConfigurationError(
                    "the uvloop event loop is not available on Windows" if sys.platform == "win32"
                    else 'the uvloop event loop is not installed: pip install "spoolq[server]"'
                ) from None
        else:
            result: R = uvloop.run(main)
            return result
    return asyncio.run(main)


def _on_signal(server: Server, sig: signal.Signals) -> None:
    log.info("spoolq: %s received", sig.name)
    if server.stopped_by is None:
        server.stopped_by = sig
    server.close()


def command_parser(prog: str = "python -m spoolq.server",
                   parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser
                   ) -> argparse.ArgumentParser:
    """The arguments of :func:`main`; ``spoolq serve`` parses them under its own name
    (``prog``) and with a ``parser_class`` that reports usage errors its way."""
    parser = parser_class(
        prog=prog,
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
    parser.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                        help="connections served at once; more are refused (default "
                             f"{DEFAULT_MAX_CONNECTIONS})")
    parser.add_argument("--stall-timeout", type=_seconds, default=10.0,
                        help="drop a client silent this many seconds mid-frame (default 10)")
    parser.add_argument("--durability", choices=("commit", "fsync"), default="commit",
                        help="commit: survives a killed server; fsync: also power loss")
    parser.add_argument("--engine", help="engine name (default: picked from the path)")
    parser.add_argument("--schema", help="PostgreSQL schema, for a postgresql:// path "
                                         "(default: spoolq)")
    parser.add_argument("--loop", choices=LOOPS, default="auto",
                        help="event loop: uvloop is faster (pip install \"spoolq[server]\"); "
                             "auto (the default) uses it when installed")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def _seconds(text: str) -> float:
    """A number of seconds > 0 on the command line: finite (``nan``, ``inf`` are not)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds > 0")
    return seconds


def _engine_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """The engine options the command line gives: ``--schema`` for PostgreSQL."""
    if args.schema is None:
        return None
    if (args.engine or engine_name_for(args.path)) != "postgres":
        raise ConfigurationError("--schema applies to a postgresql:// path only")
    return {"schema": args.schema}


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The token in ``path``, without surrounding whitespace or a byte order mark (which
    editors on Windows write); ConfigurationError if empty or not UTF-8."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        token = data.decode("utf-8-sig").strip()
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{os.fspath(path)}: the token file is not UTF-8 (byte "
                                 f"{exc.start} is {data[exc.start:exc.start + 1]!r})") from None
    if not token:
        raise ConfigurationError(f"{os.fspath(path)}: the token file is empty")
    return token


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: parse ``argv``, serve until a signal, return the exit status.

    It prints one line, ``listening on spoolq://HOST:PORT``, once the server
    accepts connections (useful with ``--port 0``); logs go to stderr.
    """
    args = command_parser().parse_args(argv)
    try:
        serve_command(args)
    except (SpoolqError, OSError, ssl.SSLError) as exc:
        log.error("spoolq: %s", exc)
        return 1
    return 0


def serve_command(args: argparse.Namespace) -> None:
    """Serve as the parsed command line ``args`` says, until a signal.

    Sets up logging to stderr and prints the ``listening on`` line; raises
    what starting the server raises (:class:`SpoolqError`, :class:`OSError`),
    for :func:`main` and ``spoolq serve`` to report each in its own way.
    The SIGTERM and SIGINT handlers found are put back when it returns; when a
    signal stopped the server, a later one is ignored (logged) once the interpreter
    exits, so that the process exits with status 0 (see :class:`LateSignals`).
    """
    if not log.handlers:  # ``spoolq -v serve`` has given the logger its handler already
        logging.basicConfig(level=args.log_level, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(message)s")

    late = LateSignals()
    served: list[Server] = []

    def listening(server: Server) -> None:
        late.serving = True
        served.append(server)
        sys.stdout.write(f"listening on {server.url}\n")
        sys.stdout.flush()

    options = _engine_options(args)
    token = None if args.token_file is None else read_token_file(args.token_file)
    late.install()
    try:
        run(serve(args.path, host=args.host, port=args.port, token=token,
                  tls_cert=args.tls_cert, tls_key=args.tls_key, max_frame=args.max_frame,
                  durability=args.durability, stall_timeout=args.stall_timeout,
                  engine=args.engine, engine_options=options, on_listening=listening,
                  max_connections=args.max_connections),
            loop=args.loop)
    finally:
        late.restore(exiting=any(s.stopped_by is not None for s in served))


if __name__ == "__main__":
    sys.exit(main())
