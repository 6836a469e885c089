"""``spoolq serve``: the TCP server, with the options of ``python -m spoolq.server``."""

from __future__ import annotations

import sys

import click


@click.command(short_help="Serve every queue of a file over TCP.",
               context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                 "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def serve(args: tuple[str, ...]) -> None:
    """Serve every queue of PATH over TCP until SIGTERM or SIGINT.

    Takes the arguments of `python -m spoolq.server` (PATH, --host, --port,
    --token-file, --tls-cert, --tls-key, --max-frame, ...); `spoolq serve
    --help` lists them. See docs/server.md.
    """
    from ..server import main as serve_main

    sys.exit(serve_main(list(args)))
