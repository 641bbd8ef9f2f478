"""``python -m dagserve``: the same as the ``dagserve`` command."""

from dagserve.cli.main import main

main()
