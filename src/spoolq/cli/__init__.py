"""The ``spoolq`` command: look inside queue files, fix them, move them.

``console()`` is the console-script entry point (also ``python -m spoolq``);
``main(argv)`` runs the command in-process. Each
subcommand lives in a module of this package; see docs/cli.md for a session
with each, the exit codes and the JSON shapes.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import click

from .. import __version__
from ..errors import EngineError, SpoolqError
from ._common import ExitCode, FileProblem, Interrupted, Refused, one_line
from ._stdout import whole_writes
from .bench import bench
from .maintain import compact, purge, requeue
from .reading import info, peek, verify
from .serve import serve
from .transfer import dump, load, migrate

__all__ = ["ExitCode", "cli", "console", "main"]

log = logging.getLogger("spoolq")


class _ReaderGone(Exception):
    """The program reading the command's output went away (``spoolq dump FILE | head``)."""


class _Group(click.Group):
    """Turns spoolq and OS errors into one line on stderr and a meaningful exit status."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:  # --help and --version write while the command line is parsed
            return super().make_context(info_name, args, parent, **extra)
        except BrokenPipeError as exc:
            raise _ReaderGone() from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.Abort as exc:
            if isinstance(exc.__context__, KeyboardInterrupt):  # at a question (purge)
                raise Interrupted("interrupted (Ctrl-C)") from None
            raise
        except (click.ClickException, click.exceptions.Exit):
            raise
        except BrokenPipeError as exc:
            # Not an OSError any more: click would turn it into status 1.
            raise _ReaderGone() from exc
        except KeyboardInterrupt:
            # click would say "Aborted!" with status 1
            raise Interrupted("interrupted (Ctrl-C)") from None
        except (EngineError, OSError) as exc:
            log.debug("spoolq command failed", exc_info=True)
            raise FileProblem(one_line(exc)) from exc
        except SpoolqError as exc:
            log.debug("spoolq command failed", exc_info=True)
            raise Refused(one_line(exc)) from exc


@click.group(name="spoolq", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spoolq")
@click.option("-v", "--verbose", is_flag=True, help="Log what spoolq does to stderr.")
def cli(verbose: bool) -> None:
    """Inspect and maintain spoolq queue files of any engine, without the program
    that writes them.

    Exit status: 0 success; 1 verify found problems, or an operation was
    refused or could not finish; 2 bad usage; 3 the file is missing, not a
    spoolq queue file, damaged, locked, or an I/O error occurred; 130
    stopped by Ctrl-C.
    """
    if verbose:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))  # messages say "spoolq: "
        log.addHandler(handler)
        log.setLevel(logging.DEBUG)


for _command in (info, peek, dump, load, requeue, purge, compact, verify, migrate, serve,
                 bench):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``spoolq`` command with ``argv`` (default: the process's arguments); exits.

    Always ends by raising SystemExit with the command's exit status (see docs/cli.md),
    so a program may call it in-process. When the reader of the output goes away, the
    status is 1, as click gives; the ``spoolq`` command itself ends as ``cat`` does
    then (see :func:`console`).
    """
    _run(argv, by_sigpipe=False)


def console() -> None:
    """The ``spoolq`` command and ``python -m spoolq``: :func:`main` on the process's
    arguments, except that when the reader of its output goes away the process ends as
    ``cat`` or ``seq`` do: quietly, killed by SIGPIPE (status 141 in a shell; 1 where
    there is no SIGPIPE), with Python's output buffered or not (``PYTHONUNBUFFERED``)."""
    _run(None, by_sigpipe=True)


def _run(argv: Sequence[str] | None, *, by_sigpipe: bool) -> None:
    try:
        with whole_writes():
            cli.main(args=None if argv is None else list(argv), prog_name="spoolq")
    except _ReaderGone:
        log.debug("spoolq: the reader of the output went away")
        if by_sigpipe:
            # Output still buffered for the broken pipe must not be written at exit.
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            if hasattr(signal, "SIGPIPE"):
                signal.signal(signal.SIGPIPE, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGPIPE)
        sys.exit(ExitCode.PROBLEM)
