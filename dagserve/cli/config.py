"""Config files on the command line: ``dagserve run --config FILE`` and ``dagserve config MODULE:ATTR``.

Precedence: code < config file < command-line flags. A flag counts as given when it comes from
the command line or its environment variable; otherwise the file's setting replaces its default.
``dagserve config`` prints the configuration in force (the code's node options, the file's over
them, and the server settings) as YAML: a starting file to edit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from dagserve._errors import CompileError, OptionsError
from dagserve.cli.targets import load_graphs
from dagserve.deploy_config import DeployConfig, compile_with_config, format_size, load_config
from dagserve.graph import Graph
from dagserve.http.settings import ServerConfig, server_config

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "check_config",
    "config_command",
    "config_option",
    "effective_config",
    "read_config",
    "server_defaults",
    "with_server_config",
]


def config_option(fn: Any) -> Any:
    """The ``--config FILE`` option, shared by the commands that read config files."""
    return click.option(
        "--config",
        "config_file",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        metavar="FILE.yaml",
        help="Config file: node options (graphs.<graph>.nodes.<node>) and server settings (server:) over "
        "those in code; flags override it (docs/deploy.md).",
    )(fn)


def read_config(path: str | None) -> DeployConfig | None:
    """The config file at ``path`` (``None``: no file): its shape and its server section checked."""
    if path is None:
        return None
    try:
        config = load_config(path)
        server_config(config)
    except OptionsError as exc:
        raise click.BadParameter(str(exc), param_hint="--config") from None
    return config


def check_config(config: DeployConfig | None, graphs: Sequence[Graph]) -> None:
    """Before anything deploys: the config names only these graphs, and each compiles with it."""
    if config is None:
        return
    try:
        config.check_graphs(g.name for g in graphs)
        for graph in graphs:
            compile_with_config(graph, config.for_graph(graph.name))
    except (OptionsError, CompileError) as exc:
        raise click.BadParameter(str(exc), param_hint="--config") from None


def with_server_config(ctx: click.Context, options: dict[str, Any], config: DeployConfig | None) -> dict[str, Any]:
    """``options`` (the command's parameters) with the file's server settings for those not given."""
    if config is None:
        return options
    out = dict(options)
    for key, value in server_config(config).given().items():
        if key in out and ctx.get_parameter_source(key) in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None):
            out[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    return out


def server_defaults(run: click.Command) -> dict[str, Any]:
    """``dagserve run``'s default for every setting a config file's ``server:`` section may hold."""
    ctx = click.Context(run)
    defaults: dict[str, Any] = {}
    for p in run.params:
        if p.name in ServerConfig.model_fields:
            value = p.get_default(ctx)
            if getattr(p, "multiple", False):  # click's "nothing given" for a repeatable option
                value = list(value) if isinstance(value, (list, tuple)) else []
            defaults[p.name] = value
    return defaults


def effective_config(graphs: Sequence[Graph], config: DeployConfig | None, run: click.Command) -> dict[str, Any]:
    """The configuration in force, in a config file's shape: every node's options, every server setting."""
    out: dict[str, Any] = {"graphs": {}}
    for graph in graphs:
        plan = compile_with_config(graph, config.for_graph(graph.name) if config else None)
        nodes = {d.name: _options(d.options.model_dump(exclude={"name"}, exclude_none=True)) for d in plan.deployments}
        out["graphs"][graph.name] = {"nodes": nodes}
    server = server_defaults(run)
    if config is not None:
        server.update(server_config(config).given())
    server = {k: v for k, v in server.items() if v is not None}
    if isinstance(server.get("max_body_size"), int):
        server["max_body_size"] = format_size(server["max_body_size"])
    out["server"] = server
    return out


def _options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v != {}}


@click.command("config")
@click.argument("target", metavar="MODULE:ATTR")
@config_option
@click.pass_context
def config_command(ctx: click.Context, target: str, config_file: str | None) -> None:
    """Print the configuration in force for the graph(s) at MODULE:ATTR, as a config file (YAML).

    Every node's options (code, then --config FILE over them) and every server setting of
    `dagserve run` (its defaults, then the file's). Save it, edit it, and pass it back:
    dagserve config app:graph > dagserve.yaml; dagserve run app:graph --config dagserve.yaml
    """
    import yaml

    config = read_config(config_file)
    graphs = load_graphs(target)
    check_config(config, graphs)
    # `dagserve run`'s defaults, from its command (found through the group: no import of cli.run here).
    root = ctx.find_root().command
    run = root.get_command(ctx, "run") if isinstance(root, click.Group) else None
    if run is None:  # pragma: no cover - only when this command is used outside the dagserve group
        raise click.UsageError("dagserve config runs as a subcommand of dagserve.")
    text = yaml.safe_dump(effective_config(graphs, config, run), sort_keys=False, default_flow_style=False)
    source = f" with {config_file}" if config_file else ""
    click.echo(f"# Configuration in force for {target}{source} (dagserve config); pass it to dagserve run --config.")
    click.echo(text, nl=False)
