"""The ``dagserve`` command. Each subcommand lives beside the feature it drives and is imported
only when used, so ``dagserve --help`` stays fast and never starts Ray."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

__all__ = ["load_target", "main"]

# name -> "module:attribute" of a click command
COMMANDS: dict[str, str] = {
    "run": "dagserve.cli.run:run_command",
    "render": "dagserve.render:render_command",
    "status": "dagserve.cli.ops:status_command",
    "scale": "dagserve.cli.ops:scale_command",
    "update": "dagserve.cli.ops:update_command",
    "batch": "dagserve.offline.files:batch_command",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dagserve")
def main() -> None:
    """Serve, draw, operate and batch-run dagserve inference graphs."""


def load_target(spec: str) -> Any:
    """Import ``MODULE:ATTR`` (e.g. ``examples.quickstart:graph``) and return the attribute.

    The current directory is put on ``sys.path`` so project modules import as they do in Python.
    Raises :class:`click.BadParameter` with what went wrong and how to fix it.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise click.BadParameter(f"{spec!r} is not MODULE:ATTR, e.g. examples.quickstart:graph.")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import module {module_name!r}: {exc}.") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise click.BadParameter(f"module {module_name!r} has no attribute {attr!r}.") from None
    return obj


if __name__ == "__main__":  # pragma: no cover
    main()
