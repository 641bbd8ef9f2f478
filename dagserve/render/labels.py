"""Text of the diagram's labels: options, replicas, keys and durations, escaped for DOT's HTML labels."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from dagserve.compiler.plan import DeploymentSpec, Ref

if TYPE_CHECKING:
    from dagserve.runtime.status import NodeStatus

# Colours: fills by kind, one pen colour, and replica states.
INK = "#334155"
MUTED = "#64748b"
FILL = {"model": "#dbeafe", "function": "#fef3c7", "io": "#dcfce7", "route": "#f3e8ff"}
CLUSTER_FILL = {"model": "#eff6ff", "function": "#fffbeb"}
OK, WARN, BAD = "#15803d", "#b45309", "#b91c1c"
KIND_TEXT = {"model": "model", "function": "business logic"}

#: One line of a node label: (text, colour); the colour "" marks the bold name.
Line = tuple[str, str]
#: The line that marks a ``map`` step (drawn as a stack: a double border).
MAP_LINE: Line = ("map: one call per item", MUTED)


def option_lines(spec: DeploymentSpec, *, live: bool) -> list[str]:
    """The options in force, one short line each (replicas, batching, resources, limits)."""
    o = spec.options
    lines: list[str] = []
    if not spec.inline:
        if o.autoscaling is not None:
            lines.append(f"autoscaling {o.autoscaling.min_replicas}-{o.autoscaling.max_replicas} replicas")
        elif o.num_replicas == "auto":
            lo, hi = o.replica_range()
            lines.append(f"autoscaling {lo}-{hi} replicas")
        elif not live:  # live views show running/target instead
            n = o.num_replicas
            lines.append(f"{n} replica" if n == 1 else f"{n} replicas")
    if o.max_batch_size is not None:
        lines.append(f"batch {o.max_batch_size}, wait {duration(o.batch_wait_timeout_s)}")
    shares = []
    if o.num_cpus:
        shares.append(f"CPU {o.num_cpus:g}")
    if o.num_gpus:
        shares.append(f"GPU {o.num_gpus:g}")
    if o.memory:
        shares.append(f"mem {bytes(o.memory)}")
    shares.extend(f"{name} {amount:g}" for name, amount in sorted(o.resources.items()))
    if shares:
        lines.append(", ".join(shares))
    limits = []
    if o.max_ongoing_requests is not None:
        limits.append(f"max ongoing {o.max_ongoing_requests}")
    if o.max_queued_requests is not None:
        limits.append(f"max queued {o.max_queued_requests}")
    if o.timeout_s is not None:
        limits.append(f"timeout {duration(o.timeout_s)}")
    if o.retries:
        limits.append(f"retries {o.retries}")
    if limits:
        lines.append(", ".join(limits))
    return lines


def replica_lines(status: NodeStatus | None) -> list[Line]:
    if status is None:
        return [("replicas unknown", WARN)]
    text = f"replicas {status.running_replicas}/{status.target_replicas} running"
    if status.pending_replicas:
        text += f", {status.pending_replicas} pending"
    if status.state != "RUNNING":
        text += f" ({status.state.lower()})"
    healthy = status.state == "RUNNING" and status.running_replicas >= status.target_replicas
    color = BAD if status.state == "UNHEALTHY" else OK if healthy else WARN
    lines: list[Line] = [(text, color)]
    if status.pending_reason:
        lines.append((short(status.pending_reason, 48), WARN))
    models = status.models  # a multiplexed node's cache (docs/multiplexing.md)
    if models:
        held = sum(len(ids) for ids in models.get("replicas", {}).values())
        ratio = models.get("hit_ratio")
        lines.append((f"models {held} held, hit ratio {'-' if ratio is None else f'{ratio:.2f}'}", MUTED))
    return lines


def io_table(rows: list[str]) -> str:
    return (
        f'<table border="1" cellborder="0" cellspacing="0" cellpadding="3" style="rounded" '
        f'bgcolor="{FILL["io"]}" color="{INK}">' + "".join(rows) + "</table>"
    )


def label(lines: list[Line]) -> str:
    """An HTML-like label: the bold name, then small lines, one font tag per run of one colour."""
    parts = []
    for color, run in itertools.groupby(lines, key=lambda line: line[1]):
        text = "<br/>".join(html_escape(t) for t, _ in run)
        parts.append(f"<b>{text}</b>" if not color else f'<font point-size="9" color="{color}">{text}</font>')
    return "<br/>".join(parts)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def html_escape(text: str) -> str:
    """Escape text for a Graphviz HTML-like label (text content only, so quotes stay as they are).

    Graphviz still applies its escapes to HTML-like label text (``\\N`` is the node's name,
    ``\\\\`` one backslash), so every backslash is doubled to stay a backslash.
    """
    text = _CONTROL.sub(" ", text)
    return text.replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def quote(name: str) -> str:
    """A quoted DOT identifier."""
    name = _CONTROL.sub(" ", name)
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def key_text(key: Any) -> str:
    """A key as the user would write it: strings in double quotes, others as repr."""
    if isinstance(key, str):
        return json.dumps(key, ensure_ascii=False)
    return repr(key)


def row_key(key: Any, output: Any) -> str:
    """How the output node names one of its rows: a dict key bare, a list position as ``[i]``."""
    if isinstance(output, dict):
        return key if isinstance(key, str) else repr(key)
    return f"[{key}]"


def path_text(keys: tuple[Any, ...]) -> str:
    return "".join(f"[{key_text(k)}]" for k in keys)


def short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def has_ref(template: Any) -> bool:
    return any(True for _ in refs_with_paths(template))


def refs_with_paths(template: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[int, tuple[Any, ...]]]:
    """``(step index, path inside the template)`` for every Ref in a template."""
    if isinstance(template, Ref):
        yield template.index, path
    elif isinstance(template, (list, tuple)):
        for i, t in enumerate(template):
            yield from refs_with_paths(t, (*path, i))
    elif isinstance(template, dict):
        for k, t in template.items():
            yield from refs_with_paths(t, (*path, k))


_MODULE_PREFIX = re.compile(r"\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])")


def type_name(tp: Any) -> str:
    if isinstance(tp, type) and not getattr(tp, "__args__", None):
        return tp.__name__
    return _MODULE_PREFIX.sub("", repr(tp).replace("<class '", "").replace("'>", ""))


def percent(weight: float) -> str:
    return f"{weight * 100:.3g}%"


def duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3g} s"
    ms = seconds * 1000
    if ms >= 100:
        return f"{ms:.0f} ms"
    return f"{ms:.3g} ms" if ms >= 1 else f"{ms:.2g} ms"


def bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def optional_node(s: Any) -> str:
    """An ``optional`` step: a dashed octagon saying what its readers get when its node fails."""
    if s.on_error is not None:
        fallback = f"else on_error: {getattr(s.on_error, '__name__', 'function')}"
    else:
        fallback = f"else {short(key_text(s.default), 24)}"
    lines: list[Line] = [(s.name, ""), ("optional", MUTED), (fallback, MUTED)]
    return (
        f'  {quote(s.name)} [shape=octagon, style="dashed,filled", margin="0.04,0.02", '
        f'fillcolor="{FILL["route"]}", label=<{label(lines)}>];'
    )
