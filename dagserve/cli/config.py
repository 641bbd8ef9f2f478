"""Config files on the command line: ``dagserve run --config FILE`` and ``dagserve config MODULE:ATTR``.

Precedence: code < config file < command-line flags. A flag counts as given when it comes from
the command line or its environment variable; otherwise the file's setting replaces its default.
``dagserve config`` prints the configuration in force (the code's node options, the file's over
them, and every server setting, with ``dagserve run``'s flags given after the target) as YAML,
each setting with a comment naming its source: a starting file to edit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from dagserve._errors import CompileError, OptionsError
from dagserve.cli.targets import InputError, app_dir_option, load_graphs
from dagserve.deploy_config import DeployConfig, compile_with_config, format_size, load_config
from dagserve.graph import Graph
from dagserve._options import DEFAULT_READY_TIMEOUT_S, DEFAULT_REQUEST_TIMEOUT_S
from dagserve.http.settings import ServerConfig, server_config
from dagserve.runtime.streaming import DEFAULT_STREAM_TIMEOUT_S
from dagserve.runtime.tracing import otlp_endpoint

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "check_config",
    "config_command",
    "config_option",
    "dump_with_sources",
    "effective_config",
    "effective_config_with_sources",
    "read_config",
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
        raise InputError(str(exc), "--config") from None
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
        raise InputError(str(exc), "--config") from None


def with_server_config(ctx: click.Context, options: dict[str, Any], config: DeployConfig | None) -> dict[str, Any]:
    """``options`` (the command's parameters) with the file's server settings for those not given."""
    if config is None:
        return options
    out = dict(options)
    for key, value in server_config(config).given().items():
        if key in out and ctx.get_parameter_source(key) in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None):
            out[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    return out


#: Where a setting in force comes from, as ``dagserve config`` prints it.
Source = str  # "default", "code", "file", "environment" or "flag"

#: ``dagserve run``'s settings whose flag defaults to "unset" and what unset means.
_UNSET_MEANS: dict[str, Any] = {
    "request_timeout": DEFAULT_REQUEST_TIMEOUT_S,
    "ready_timeout": DEFAULT_READY_TIMEOUT_S,
    "stream_timeout": DEFAULT_STREAM_TIMEOUT_S,
}

_PARAMETER_SOURCES = {ParameterSource.COMMANDLINE: "flag", ParameterSource.ENVIRONMENT: "environment"}


def effective_config(
    graphs: Sequence[Graph], config: DeployConfig | None, run: click.Command, run_args: Sequence[str] = ()
) -> dict[str, Any]:
    """The configuration in force, in a config file's shape: every node's options, every server setting."""
    values, _ = effective_config_with_sources(graphs, config, run, run_args)
    return values


def effective_config_with_sources(
    graphs: Sequence[Graph], config: DeployConfig | None, run: click.Command, run_args: Sequence[str] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`effective_config` and, in the same shape, where each setting comes from: ``default``,
    ``code`` (set on the node in Python), ``file`` (``config``), ``environment`` or ``flag``
    (``run_args``: ``dagserve run``'s flags, read as that command reads them)."""
    out: dict[str, Any] = {"graphs": {}}
    sources: dict[str, Any] = {"graphs": {}}
    for graph in graphs:
        section = config.for_graph(graph.name) if config else None
        in_file = section.graphs[graph.name].nodes if section and graph.name in section.graphs else {}
        plan = compile_with_config(graph, section)
        in_code = {d.name: d.options.model_fields_set for d in compile_with_config(graph, None).deployments}
        nodes, node_sources = {}, {}
        for d in plan.deployments:
            options = _options(d.options.model_dump(exclude={"name"}, exclude_none=True))
            nodes[d.name] = options
            node_sources[d.name] = {
                k: "file" if k in in_file.get(d.name, {}) else "code" if k in in_code.get(d.name, ()) else "default"
                for k in options
            }
        out["graphs"][graph.name] = {"nodes": nodes}
        sources["graphs"][graph.name] = {"nodes": node_sources}
    out["server"], sources["server"] = _server_settings(config, run, run_args)
    return out, sources


def _server_settings(
    config: DeployConfig | None, run: click.Command, run_args: Sequence[str]
) -> tuple[dict[str, Any], dict[str, Source]]:
    """Every server setting of ``dagserve run`` with these flags and this file, and its source."""
    ctx = run.make_context("run", ["MODULE:ATTR", *run_args])
    in_file = server_config(config).given() if config is not None else {}
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for key in ServerConfig.model_fields:
        source = _PARAMETER_SOURCES.get(ctx.get_parameter_source(key), "default")  # type: ignore[arg-type]
        value = ctx.params.get(key)
        if source == "default" and key in in_file:
            source, value = "file", in_file[key]
        if value is None and key in _UNSET_MEANS:
            value = _UNSET_MEANS[key]
        if key == "otlp_endpoint" and value is None and otlp_endpoint():
            source, value = "environment", otlp_endpoint()  # OpenTelemetry's own variable
        if isinstance(value, tuple):
            value = list(value)
        if key == "max_body_size" and isinstance(value, int):
            value = format_size(value)
        values[key], sources[key] = value, source
    return values, sources


def dump_with_sources(values: dict[str, Any], sources: dict[str, Any], indent: int = 0) -> str:
    """``values`` as block YAML, each setting followed by a comment naming its source."""
    lines = []
    for key, value in values.items():
        source = sources.get(key)
        if isinstance(value, dict) and isinstance(source, dict):
            lines.append(f"{' ' * indent}{_flow(key)}:")
            lines.append(dump_with_sources(value, source, indent + 2))
        else:
            lines.append(f"{' ' * indent}{_flow(key)}: {_flow(value)}  # {source}")
    return "\n".join(line for line in lines if line)


def _flow(value: Any) -> str:
    """One value as a YAML flow node (a scalar, ``[...]`` or ``{...}``) on one line."""
    import yaml

    return str(yaml.safe_dump([value], default_flow_style=True, width=1_000_000).strip()[1:-1])


def _options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v != {}}


@click.command(
    "config", context_settings={"ignore_unknown_options": True, "allow_extra_args": True}
)
@click.argument("target", metavar="MODULE:ATTR")
@config_option
@app_dir_option
@click.pass_context
def config_command(ctx: click.Context, target: str, config_file: str | None, app_dir: str | None) -> None:
    """Print the configuration in force for the graph(s) at MODULE:ATTR, as a config file (YAML).

    Every node's options and every server setting of `dagserve run`, each with a comment saying
    where it comes from: default, code, file (--config FILE), environment, or flag (any of
    `dagserve run`'s flags given after MODULE:ATTR). Save it, edit it, and pass it back:
    dagserve config app:graph > dagserve.yaml; dagserve run app:graph --config dagserve.yaml
    """
    config = read_config(config_file)
    graphs = load_graphs(target, app_dir)
    check_config(config, graphs)
    # `dagserve run`'s defaults, from its command (found through the group: no import of cli.run here).
    root = ctx.find_root().command
    run = root.get_command(ctx, "run") if isinstance(root, click.Group) else None
    if run is None:  # pragma: no cover - only when this command is used outside the dagserve group
        raise click.UsageError("dagserve config runs as a subcommand of dagserve.")
    values, sources = effective_config_with_sources(graphs, config, run, ctx.args)
    source = f" with {config_file}" if config_file else ""
    click.echo(f"# Configuration in force for {target}{source} (dagserve config); pass it to dagserve run --config.")
    click.echo("# Each setting's comment says where it comes from: default, code, file, environment or flag.")
    click.echo(dump_with_sources(values, sources))
