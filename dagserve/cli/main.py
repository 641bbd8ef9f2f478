"""The ``dagserve`` command group. Each subcommand is a module of this package, imported only
when used, so ``dagserve --help`` stays fast and never starts Ray."""

from __future__ import annotations

from collections.abc import Callable

import click

__all__ = ["main"]


def _run() -> click.Command:
    from dagserve.cli.run import run_command

    return run_command


def _render() -> click.Command:
    from dagserve.cli.render import render_command

    return render_command


def _batch() -> click.Command:
    from dagserve.cli.batch import batch_command

    return batch_command


def _config() -> click.Command:
    from dagserve.cli.config import config_command

    return config_command


def _build() -> click.Command:
    from dagserve.cli.build import build_command

    return build_command


def _jobs() -> click.Command:
    from dagserve.cli.jobs import jobs_command

    return jobs_command


def _ops(name: str) -> Callable[[], click.Command]:
    def load() -> click.Command:
        from dagserve.cli import ops

        return {"status": ops.status_command, "scale": ops.scale_command, "update": ops.update_command}[name]

    return load


#: name -> loader of the click command (imports happen only when the command runs or is listed)
COMMANDS: dict[str, Callable[[], click.Command]] = {
    "run": _run,
    "render": _render,
    "status": _ops("status"),
    "scale": _ops("scale"),
    "update": _ops("update"),
    "batch": _batch,
    "config": _config,
    "build": _build,
    "jobs": _jobs,
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        load = COMMANDS.get(cmd_name)
        return None if load is None else load()


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dagserve")
def main() -> None:
    """Serve, draw, operate and batch-run dagserve inference graphs."""


if __name__ == "__main__":  # pragma: no cover
    main()
