"""Config files: node options and server settings from YAML, over those in code.

::

    graphs:
      reviews:                  # a graph's name
        nodes:
          Sentiment:            # a node's name
            num_replicas: 3
            max_batch_size: 4
    server:
      max_body_size: 1MiB

Precedence: code < config file < command-line flags. This module reads the file and checks its
shape (:class:`DeployConfig`): every section and name is validated, an unknown one is an error
naming it with the closest valid name. Node options are validated by the compiler with the same
model as in code (``NodeOptions``), against the graph's real node names
(``dagserve.compile(graph, options=...)``); the ``server:`` section by the HTTP layer
(``dagserve.http.settings.ServerConfig``), since only a server reads it. A new section (say
``tracing:``) is one more field of :class:`DeployConfig`, validated by the layer that uses it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dagserve._errors import CompileError, DagserveError, OptionsError

if TYPE_CHECKING:
    from dagserve.compiler.plan import Plan
    from dagserve.graph import Graph

__all__ = [
    "ConfigSource",
    "DeployConfig",
    "GraphConfig",
    "compile_with_config",
    "format_size",
    "graph_names",
    "graph_overrides",
    "import_target",
    "load_config",
    "parse_size",
    "suggest",
]

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
}
#: Node options given in bytes, which a config file may also write as sizes (``memory: 2GiB``).
_SIZE_OPTIONS = ("memory",)


def parse_size(text: str) -> int:
    """``"10MiB"`` -> 10485760; also plain bytes, kB/MB/GB (powers of 1000) and KiB/MiB/GiB."""
    m = _SIZE.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not a size; write e.g. 10MiB, 512KiB or 1048576.")
    number, unit = m.groups()
    return int(float(number) * _UNITS[(unit or "").lower()])


def format_size(size: int) -> str:
    """``1048576`` -> ``"1MiB"``: the largest binary unit that divides it (the reverse of parse_size)."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def suggest(name: str, valid: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the closest valid name, or ``""``."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


class GraphConfig(BaseModel):
    """One graph's section: its nodes' options (validated against the graph when it compiles)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nodes: dict[str, dict[str, Any]] = Field(default_factory=dict)


class DeployConfig(BaseModel):
    """A whole config file. ``server`` is kept as written here and validated by the HTTP layer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    graphs: dict[str, GraphConfig] = Field(default_factory=dict)
    server: dict[str, Any] = Field(default_factory=dict)
    #: Where it was read from (for messages); ``None`` for a dict given in code.
    source: str | None = Field(None, exclude=True)

    def where(self) -> str:
        return f"config file {self.source}" if self.source else "config"

    def check_graphs(self, names: Iterable[str]) -> None:
        """Every graph the config names is one of ``names``: a typo must not be ignored."""
        known = sorted(set(names))
        for name in self.graphs:
            if name not in known:
                raise OptionsError(
                    f"{self.where()} names graph {name!r}, which is not deployed here.{suggest(name, known)} "
                    f"Graphs: {', '.join(known)}."
                )

    def for_graph(self, *names: str) -> DeployConfig:
        """This config with only the sections of the graphs ``names`` (those deployed of several)."""
        return self.model_copy(update={"graphs": {k: v for k, v in self.graphs.items() if k in names}})


#: What ``config=`` accepts: a path to a YAML file, a dict of the same shape, or a loaded config.
ConfigSource = str | Path | Mapping[str, Any] | DeployConfig


def load_config(config: ConfigSource) -> DeployConfig:
    """Read a config file (a path to YAML) or take a dict of the same shape; check its shape."""
    if isinstance(config, DeployConfig):
        return config
    source: str | None = None
    if isinstance(config, (str, Path)):
        source = str(config)
        data = _read_yaml(Path(config))
    elif isinstance(config, Mapping):
        data = dict(config)
    else:
        raise OptionsError(f"config must be a path to a YAML file or a dict, got {type(config).__name__}.")
    where = f"config file {source}" if source else "config"
    _check_keys(data, sorted(k for k in DeployConfig.model_fields if k != "source"), where, "section")
    graphs = data.get("graphs") or {}
    if not isinstance(graphs, Mapping):
        raise OptionsError(f"{where}: 'graphs' must map graph names to their settings, got {type(graphs).__name__}.")
    for name, section in graphs.items():
        at = f"{where}: graphs.{name}"
        if not isinstance(section, Mapping):
            raise OptionsError(f"{at} must be a mapping with 'nodes:', got {type(section).__name__}.")
        _check_keys(section, ["nodes"], at, "key")
        for node, options in (section.get("nodes") or {}).items():
            if not isinstance(options, Mapping):
                raise OptionsError(f"{at}.nodes.{node} must map option names to values, got {options!r}.")
    try:
        return DeployConfig(
            graphs={g: {"nodes": _sizes(s.get("nodes") or {}, f"{where}: graphs.{g}")} for g, s in graphs.items()},
            server=dict(data.get("server") or {}),
            source=source,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise OptionsError(f"{where}: {loc}: {first['msg']}.") from None


def graph_overrides(
    config: ConfigSource | None,
    graph_name: str,
    *,
    others: Iterable[str] = (),
) -> dict[str, dict[str, Any]]:
    """The node options the config gives graph ``graph_name`` (``{}`` for none).

    A config whose ``graphs:`` names neither this graph nor one of ``others`` (the other graphs
    deployed with it) is an error naming the closest graph name: a typo must not be ignored.
    """
    if config is None:
        return {}
    cfg = load_config(config)
    cfg.check_graphs([graph_name, *others])
    section = cfg.graphs.get(graph_name)
    return {node: dict(options) for node, options in section.nodes.items()} if section else {}


def import_target(spec: str, *, app_dir: str | None = None) -> Any:
    """Import ``MODULE:ATTR`` (e.g. ``examples.quickstart:graph``) and return the attribute.

    ``app_dir`` (default: the current directory) is put first on ``sys.path``, so project modules
    import as they do in Python. Raises :class:`~dagserve.DagserveError` saying what went wrong
    and how to fix it: a module that is not found says where it was looked for, a missing
    attribute names the module's closest graphs.
    """
    import importlib
    import os
    import sys

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise DagserveError(f"{spec!r} is not MODULE:ATTR, e.g. examples.quickstart:graph.")
    if app_dir is not None:
        sys.path.insert(0, os.path.abspath(app_dir))
    elif "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name) and module_name[len(exc.name):][:1] in ("", "."):
            # The target itself (not something it imports) is not on the import path.
            where = os.path.abspath(app_dir) if app_dir is not None else f"the current directory ({os.getcwd()})"
            raise DagserveError(
                f"cannot import module {module_name!r}: {exc}. Modules are looked up from {where} and the "
                f"installed packages; run from the directory that holds {exc.name!r}, or point at it with "
                "--app-dir DIR (or PYTHONPATH=DIR)."
            ) from None
        raise DagserveError(f"cannot import module {module_name!r}: {exc}.") from None
    except ImportError as exc:
        raise DagserveError(f"cannot import module {module_name!r}: {exc}.") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            graphs = graph_names(module)
            listed = f" Graphs in it: {', '.join(graphs)}." if graphs else " It holds no dagserve.Graph."
            raise DagserveError(
                f"module {module_name!r} has no attribute {attr!r}.{suggest(attr, graphs)}{listed}"
            ) from None
    return obj


def graph_names(module: Any) -> list[str]:
    """The module's attributes that are a :class:`~dagserve.Graph` or a list of them, sorted."""
    from dagserve.graph import Graph

    def is_graphs(value: Any) -> bool:
        if isinstance(value, Graph):
            return True
        return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, Graph) for v in value)

    return sorted(name for name, value in vars(module).items() if not name.startswith("_") and is_graphs(value))


def compile_with_config(
    graph: Graph,
    config: ConfigSource | None,
    *,
    others: Iterable[str] = (),
) -> Plan:
    """``dagserve.compile(graph)`` with the config's node options over those in code; an error
    about them says which file and graph it comes from."""
    from dagserve.compiler.passes import compile as compile_graph

    overrides = graph_overrides(config, graph.name, others=others)
    if not overrides:
        return compile_graph(graph)
    try:
        return compile_graph(graph, options=overrides)
    except (OptionsError, CompileError) as exc:  # e.g. max_batch_size on a node that takes one item
        where = load_config(config).where()  # type: ignore[arg-type]  # not None: it gave overrides
        raise type(exc)(f"{where}: graphs.{graph.name}: {exc}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise OptionsError(f"Cannot read config file {path}: {exc.strerror or exc}.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise OptionsError(f"Config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OptionsError(f"Config file {path} must hold a mapping (graphs:, server:), got {type(data).__name__}.")
    return data


def _check_keys(data: Mapping[str, Any], valid: list[str], where: str, what: str) -> None:
    for key in data:
        if key not in valid:
            raise OptionsError(f"{where}: unknown {what} {key!r}.{suggest(str(key), valid)} Valid: {', '.join(valid)}.")


def _sizes(nodes: Mapping[str, Mapping[str, Any]], where: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for node, options in nodes.items():
        opts = dict(options)
        for key in _SIZE_OPTIONS:
            if isinstance(opts.get(key), str):
                try:
                    opts[key] = parse_size(opts[key])
                except ValueError as exc:
                    raise OptionsError(f"{where}: invalid option {key}={opts[key]!r} for node {node!r}: {exc}") from None
        out[str(node)] = opts
    return out
