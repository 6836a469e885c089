"""``python -m spoolq``: the ``spoolq`` command."""

from spoolq.cli import console

if __name__ == "__main__":
    console()
