"""``spoolq serve``: the TCP server, with the options of ``python -m spoolq.server``."""

from __future__ import annotations

import argparse
from typing import NoReturn

import click

from ..errors import ConfigurationError
from ._common import one_line


class _Parser(argparse.ArgumentParser):
    """The server's argument parser, reporting bad arguments as the other commands do."""

    def error(self, message: str) -> NoReturn:
        raise click.UsageError(f"{message} (`spoolq serve --help` lists the options)")


@click.command(short_help="Serve every queue of a file over TCP.",
               options_metavar="",
               context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                 "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="PATH [OPTIONS]")
def serve(args: tuple[str, ...]) -> None:
    """Serve every queue of PATH over TCP until SIGTERM or SIGINT.

    Takes the arguments of `python -m spoolq.server` (PATH, --host, --port,
    --token-file, --tls-cert, --tls-key, --max-frame, --max-connections, ...);
    `spoolq serve --help` lists them. See docs/server.md. Errors follow the exit statuses
    of the other commands: 2 for bad arguments or settings, 3 for a file
    that cannot be used or an I/O error (a port in use, a certificate that
    cannot be read).
    """
    from ..server import command_parser, serve_command

    parsed = command_parser("spoolq serve", _Parser).parse_args(list(args))
    try:
        serve_command(parsed)
    except ConfigurationError as exc:
        raise click.UsageError(one_line(exc)) from exc
    # Engine and OS errors (an unusable file, a port in use, an unreadable certificate)
    # reach the group, which makes them one line with status 3.
