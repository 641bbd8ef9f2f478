"""``python -m dagserve``: the same as the ``dagserve`` command."""

from dagserve._cli import main

main()
