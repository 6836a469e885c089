"""``python -m spoolq``: the ``spoolq`` command."""

from spoolq.cli import main

if __name__ == "__main__":
    main()
