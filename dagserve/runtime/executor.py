"""The per-request dataflow executor, written once for every backend.

It walks a :class:`~dagserve.Plan` on demand from the output: a step starts as soon as the
inputs it needs are ready, independent steps run concurrently, a step used by several others runs
once, and a switch or split evaluates only the branch it picks. Backends differ only in the
:class:`Runner` that performs a call step.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import random
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from dagserve._errors import (
    DagserveError,
    InputValidationError,
    NodeError,
    NoRouteError,
    RequestError,
)
from dagserve.compiler.plan import Plan, Ref, Step, fill, refs_in
from dagserve.runtime.composite_steps import run_map, run_optional
from dagserve.runtime.failures import blame, node_failure, node_timeout_error
from dagserve.runtime.multiplex import MODEL_ID_KEY, check_model_id
from dagserve.runtime.streaming import open_stream, stream_readers
from dagserve.runtime.tracing import RequestSpan, W3CTrace

__all__ = [
    "Executor",
    "RequestContext",
    "Runner",
    "node_timeout_error",
    "refuses_unknown_fields",
    "select",
    "validate_payload",
]

_UNSET: Any = object()


class Runner(Protocol):
    """How a backend performs one call step.

    ``call`` returns an awaitable for the step's result. When ``passthrough`` is true, that
    awaitable may be handed, un-awaited, as a top-level argument to another remote call (Ray Serve
    resolves it in the downstream replica, so the data never travels through the ingress).

    The executor records each call's time in ``ctx.timings`` (from the call to its result) unless
    the runner has already recorded one for that step: a passthrough runner must, since a call
    handed on un-awaited finishes after the executor has moved on, and the next call's wait for
    it is not that call's own time.

    A plan with streaming steps (``Step.streams``) also needs ``stream(step, args, kwargs, ctx)``:
    the step's items as an async iterator, started on the first read (runtime/streaming.py).
    """

    passthrough: bool

    def call(self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any], ctx: RequestContext) -> Awaitable[Any]: ...


@dataclass
class RequestContext:
    """Per-request state: its id, deadline, what ran for how long, what ``optional`` skipped."""

    request_id: str = field(default_factory=lambda: os.urandom(12).hex())
    deadline: float | None = None  # time.monotonic() value
    timings: dict[str, float] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    route: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, BaseException] = field(default_factory=dict)  # optional: node -> its error
    #: Called per streamed item with (node, "first" | "gap", seconds) (runtime/streaming.py).
    item_observer: Any = None
    #: The W3C trace context (runtime/tracing.py): the HTTP ingress sets it, a tracer may.
    trace: W3CTrace | None = None
    #: The request's span when traces are exported (observe/otel.py); ``None``: tracing costs nothing.
    span: RequestSpan | None = None
    #: The door the request came in by ("python", "http", "oip", "grpc", "openai", "job", "batch"):
    #: metrics, access records and spans carry it. Each door sets it when it builds the context.
    protocol: str = "python"
    #: The request's default model id (HTTP: the ``x-dagserve-model-id`` header): what a
    #: multiplexed node's ``model_id=`` reading a payload field gets when the payload lacks it.
    model_id: str | None = None
    #: The graph the request runs (the scope sets it): calls through handles that replicas make
    #: elsewhere count under it (runtime/call_stats.py).
    graph: str | None = None
    #: Time of the calls node code made through handles in this process, summed per callee
    #: (``None``: none). Kept apart from ``timings`` (the graph's own steps, which metrics count per
    #: request): metrics count handle calls one by one from the caller's ``CallStats``
    #: (runtime/call_stats.py); Server-Timing and access records show both (:meth:`shown_timings`).
    handle_timings: dict[str, float] | None = None

    def shown_timings(self) -> Mapping[str, float]:
        """``timings`` with the calls through handles added, summed per name (what Server-Timing,
        access records and the status windows show)."""
        extra = self.handle_timings
        if not extra:
            return self.timings
        out = dict(self.timings)
        for name, seconds in extra.items():
            out[name] = out.get(name, 0.0) + seconds
        return out


def select(value: Any, key: Any) -> Any:
    """``value[key]`` for dicts and sequences, ``getattr`` for pydantic models, dataclasses and
    other objects that cannot be indexed."""
    kind = type(value)
    if isinstance(key, str) and not isinstance(value, Mapping) and (
        hasattr(kind, "model_fields") or (not hasattr(kind, "__getitem__") and _is_object(value))
    ):
        try:
            return getattr(value, key)
        except AttributeError:
            raise KeyError(key) from None
    return value[key]


def _is_object(value: Any) -> bool:
    """A dataclass or another object with attributes (not a number, a string or None)."""
    return hasattr(value, "__dict__") or hasattr(type(value), "__dataclass_fields__") or bool(getattr(type(value), "__slots__", ()))


def validate_payload(schema: Any, payload: Any) -> Any:
    """Validate ``payload`` against a pydantic ``schema``; :class:`InputValidationError` lists each error.

    A JSON object's fields the schema does not know are errors too (``extra_forbidden``, named),
    unless the schema's ``model_config`` sets ``extra`` itself (``"allow"`` or ``"ignore"``): a
    misspelt optional field must not run as if it were absent.
    """
    if schema is None:
        return payload
    from pydantic import ValidationError

    if isinstance(payload, schema):
        return payload
    errors = []
    try:
        value = schema.model_validate(payload)
    except ValidationError as exc:
        errors = [
            {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors(include_url=False)
        ]
    unknown = _unknown_fields(schema, payload)
    if not errors and not unknown:
        return value
    errors += [{"loc": [key], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"} for key in unknown]
    # An empty location is the payload itself (not a JSON object, say), never a field: a schema
    # may well have a field named "body".
    where = ", ".join(".".join(str(p) for p in e["loc"]) if e["loc"] else "the payload itself" for e in errors[:5])
    message = f"The payload does not match {schema.__name__}: {len(errors)} error(s) at {where}"
    if unknown:
        known = ", ".join(schema.model_fields)
        message += f" (unknown field(s) {', '.join(map(repr, unknown[:5]))}; the fields are: {known})"
    raise InputValidationError(message + ".", errors) from None


def refuses_unknown_fields(schema: Any) -> bool:
    """Does :func:`validate_payload` refuse fields ``schema`` does not know (it does unless the
    schema's ``model_config`` sets ``extra``)? ``None`` (no schema) refuses nothing."""
    return schema is not None and _field_keys(schema) is not None


def _unknown_fields(schema: Any, payload: Any) -> list[str]:
    """The keys of a JSON object ``payload`` that ``schema`` has no field for, in payload order;
    none when the schema says itself what to do with extra fields."""
    keys = _field_keys(schema)
    if keys is None or not isinstance(payload, Mapping):
        return []
    return [str(k) for k in payload if k not in keys]


@functools.cache
def _field_keys(schema: Any) -> frozenset[str] | None:
    """Every key a field of ``schema`` is filled from (names and aliases), or ``None`` when the
    schema's ``model_config`` sets ``extra`` (then pydantic's own rule holds)."""
    if "extra" in schema.model_config:
        return None
    keys: set[str] = set()
    for name, field in schema.model_fields.items():
        keys.add(name)
        for alias in (field.alias, field.validation_alias):
            choices = getattr(alias, "choices", [alias])  # AliasChoices holds several
            for choice in choices:
                path = getattr(choice, "path", [choice])  # an AliasPath starts at a top-level key
                if path and isinstance(path[0], str):
                    keys.add(path[0])
    return frozenset(keys)


class Executor:
    """Runs one plan's steps for each request through a :class:`Runner`."""

    def __init__(self, plan: Plan, runner: Runner, *, previous: Executor | None = None) -> None:
        """``previous``: the executor this one replaces when a running App's plan changes (scale,
        update); seeded splits then go on with their sequence instead of starting it again."""
        self.plan = plan
        self.runner = runner
        steps = plan.steps
        self._steps = steps
        consumers: list[list[Step | None]] = [[] for _ in steps]
        for s in steps:
            for r in _all_refs(s):
                consumers[r].append(s)
        for r in refs_in(plan.output):
            consumers[r].append(None)
        # A step whose value several others read runs once, in a task they all await.
        self._shared = [len(c) > 1 for c in consumers]
        # A call result may stay un-awaited when every reader is a remote call taking it whole.
        readers = stream_readers(plan)  # (not a stream, nor the result of a call reading one)
        self._pass = [
            runner.passthrough
            and s.kind == "call"
            and not s.inline
            and not s.streams
            and i not in readers
            and bool(consumers[i])
            and all(c is not None and _takes_whole(c, i) for c in consumers[i])
            for i, s in enumerate(steps)
        ]
        # A node's timeout_s bounds its own call, from when its inputs are ready. A passthrough
        # runner (Ray) times its remote calls itself, from when each is sent: the executor would
        # start the clock when it hands a call over, before the upstream calls it takes whole end.
        self._timeouts = {
            s.index: None if runner.passthrough and not s.inline else plan.deployment(s.deployment).options.timeout_s
            for s in steps
            if s.kind == "call"
        }
        # Per-step work that does not depend on the request, done once here, not per call.
        self._keep = [None if s.inline or s.kind != "call" else _whole_refs(s) - set(refs_in(s.model_id)) for s in steps]
        # Payload fields a multiplexed call reads its model id from: the header may give them.
        self._model_id_fields = _model_id_fields(steps)
        self._inputs = [list(s.inputs) for s in steps]
        self._build_args = [_arg_builder(s) for s in steps]
        self._rng = random.Random()
        # A seeded split draws from a generator of its own, so the n-th request reaching it takes
        # the same branch in every App of the graph (docs/graphs.md); a keyed one salts its hash.
        self._seeded: dict[int, random.Random] = (
            previous._seeded
            if previous is not None
            else {s.index: random.Random(s.seed) for s in steps if s.kind == "split" and s.seed is not None}
        )
        self._output_refs = refs_in(plan.output)
        self._output_direct = plan.output.index if isinstance(plan.output, Ref) else None
        self._line = _straight_line(plan, runner)

    async def run(self, payload: Any, ctx: RequestContext | None = None) -> Any:
        """Run the graph for one payload and return the (structured) output."""
        ctx = ctx or RequestContext()
        values: list[Any] = [_UNSET] * len(self._steps)
        for s in self._steps:
            if s.kind == "input":
                values[s.index] = validate_payload(self.plan.input_schema, payload)
        try:
            if self._line is not None:
                return await self._run_line(self._line, values, ctx)
            if self._output_direct is not None:
                return await self._value(self._output_direct, values, ctx)
            await self._gather(self._output_refs, values, ctx, resolve=True)
            return fill(self.plan.output, values)
        finally:
            # A failed or cancelled request leaves no shared step running behind it.
            for v in values:
                if isinstance(v, asyncio.Future) and not v.done():
                    v.cancel()

    # -- evaluation ----------------------------------------------------------------------------

    async def _run_line(self, line: list[Step], values: list[Any], ctx: RequestContext) -> Any:
        """A straight-line plan (see :func:`_straight_line`): each step in turn, the last one's value."""
        v: Any = None
        for step in line:
            if step.kind == "call":
                v = await self._invoke(step, values, ctx)
            else:  # select
                parent = step.inputs[0]
                v = self._select(step, parent, values[parent], ctx)
            values[step.index] = v
        return v

    async def _value(self, i: int, values: list[Any], ctx: RequestContext) -> Any:
        """Step ``i``'s value, resolved."""
        v = await self._eval(i, values, ctx)
        if self._pass[i]:
            return await self._resolve(i, v, ctx)
        return v

    async def _eval(self, i: int, values: list[Any], ctx: RequestContext) -> Any:
        v = values[i]
        if v is not _UNSET:
            if isinstance(v, asyncio.Future):
                # Shielded: a reader that is cancelled (its sibling failed) must not cancel the step
                # for the other readers; the request's end cancels whatever still runs (see run()).
                return await asyncio.shield(v)
            return v
        if self._shared[i]:
            task = asyncio.ensure_future(self._compute(i, values, ctx))
            values[i] = task
            v = await asyncio.shield(task)
            values[i] = v
            return v
        v = await self._compute(i, values, ctx)
        values[i] = v
        return v

    async def _gather(self, refs: list[int], values: list[Any], ctx: RequestContext, *, resolve: bool, keep: set[int] | None = None) -> None:
        """Evaluate ``refs`` concurrently; values stay pending only where ``keep`` allows."""
        todo = [r for r in refs if values[r] is _UNSET or isinstance(values[r], asyncio.Future)]
        if len(todo) == 1:
            r = todo[0]
            await self._eval(r, values, ctx)
        elif todo:
            await _gather_all([self._eval(r, values, ctx) for r in todo])
        if resolve:
            for r in refs:
                if self._pass[r] and (keep is None or r not in keep):
                    values[r] = await self._resolve(r, values[r], ctx)

    async def _compute(self, i: int, values: list[Any], ctx: RequestContext) -> Any:
        step = self._steps[i]
        kind = step.kind
        if kind == "call":
            return await self._call(step, values, ctx)
        if kind == "select":
            parent = step.inputs[0]
            v = await self._value(parent, values, ctx)
            return self._select(step, parent, v, ctx)
        if kind == "switch":
            return await self._switch(step, values, ctx)
        if kind == "split":
            return await self._split(step, values, ctx)
        if kind == "map":  # runtime/composite_steps.py
            return await run_map(self, step, values, ctx)
        if kind == "optional":
            return await run_optional(self, step, values, ctx)
        raise AssertionError(f"unexpected step kind {kind}")  # pragma: no cover

    async def _call(self, step: Step, values: list[Any], ctx: RequestContext) -> Any:
        i = step.index
        # Pass-through values must be resolved for everything but whole top-level arguments.
        await self._gather(self._inputs[i], values, ctx, resolve=True, keep=self._keep[i])
        return await self._invoke(step, values, ctx)

    async def _invoke(self, step: Step, values: list[Any], ctx: RequestContext) -> Any:
        """Run call step ``step`` on its inputs' values, which are ready."""
        args, kwargs = self._build_args[step.index](values)
        if step.model_id is not None:  # multiplexed: its model id goes with the call (and routes it)
            kwargs = {**kwargs, MODEL_ID_KEY: check_model_id(fill(step.model_id, values), step.name)}
        if step.streams:  # its items flow as its reader pulls them (runtime/streaming.py)
            return open_stream(self.runner, step, args, kwargs, ctx)
        name = step.name
        ctx.running.add(name)
        start = time.perf_counter()
        cancelled = False
        failed: BaseException | None = None
        span = ctx.span.call(step) if ctx.span is not None else None  # a runner's call() reads it
        current = span.activate() if span is not None else None  # the node's own spans nest under it
        try:
            pending = self.runner.call(step, args, kwargs, ctx)
            if self._pass[step.index]:
                return pending
            timeout = self._timeouts[step.index]
            if timeout is not None:
                try:
                    return await asyncio.wait_for(pending, timeout)
                except TimeoutError:
                    raise node_timeout_error(name, timeout) from None
            return await pending
        except DagserveError as exc:
            blame(exc, name)  # an HTTPError the node raised names it
            failed = exc
            raise
        except asyncio.CancelledError as exc:
            cancelled = True  # stays in ctx.running: the deadline error names it
            failed = exc
            raise
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            # A node calling sys.exit() fails its request, never the server's event loop.
            failed = _node_error(name, exc)
            raise failed from exc
        finally:
            if not cancelled:
                ctx.running.discard(name)
            if name not in ctx.timings:  # unless the runner recorded the call's own time (Runner)
                ctx.timings[name] = time.perf_counter() - start
            if span is not None:
                span.deactivate(current)
                if failed is not None or not self._pass[step.index]:
                    span.end(failed)  # a call handed on un-awaited is ended by its runner, or with the request

    async def _resolve(self, i: int, pending: Any, ctx: RequestContext) -> Any:
        name = self._steps[i].name
        try:
            return await pending
        except DagserveError:
            raise
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            raise _node_error(name, exc) from exc

    def _select(self, step: Step, parent: int, value: Any, ctx: RequestContext | None = None) -> Any:
        try:
            found = select(value, step.key)
        except (KeyError, IndexError, AttributeError, TypeError) as exc:
            if step.index in self._model_id_fields and ctx is not None and ctx.model_id is not None:
                return ctx.model_id  # the payload lacks the model id field: the header gives it
            if self._steps[parent].kind == "input":
                raise RequestError(
                    f"The payload has no {step.key!r} (needed by {step.name!r}); send it in the request body."
                    if not isinstance(exc, TypeError)
                    else f"The payload is a {type(value).__name__}, so {step.name} cannot be read; send a JSON object."
                ) from None
            raise NodeError(
                f"Selecting {step.key!r} from the output of {self._steps[parent].name!r} failed: "
                f"{type(exc).__name__}: {exc}. Check what that node returns.",
                node=step.name,
                error_type=type(exc).__name__,
            ) from exc
        if found is None and step.index in self._model_id_fields and ctx is not None and ctx.model_id is not None:
            return ctx.model_id  # a schema's optional field left unset
        return found

    async def _switch(self, step: Step, values: list[Any], ctx: RequestContext) -> Any:
        key = await self._value(step.inputs[0], values, ctx)
        template = _UNSET
        for case, t in step.cases:
            try:
                if case == key:
                    template = t
                    break
            except Exception:  # an exotic value whose == raises cannot match
                continue
        if template is _UNSET:
            if not step.has_default:
                cases = [c for c, _ in step.cases]
                raise NoRouteError(
                    f"Switch {step.name!r} got {_short(key)} which matches none of its cases {cases!r} and "
                    "it has no default; send a supported value or add default= to the switch."
                )
            template = step.default
            ctx.route[step.name] = "default"
        else:
            ctx.route[step.name] = repr(case)
        return await self._branch(template, values, ctx)

    async def _split(self, step: Step, values: list[Any], ctx: RequestContext) -> Any:
        if isinstance(step.key, Ref):
            key = await self._value(step.key.index, values, ctx)
            text = repr(key) if step.seed is None else f"{step.seed}:{key!r}"
            digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
            u = int.from_bytes(digest, "big") / 2.0**64
        else:
            u = self._seeded.get(step.index, self._rng).random()
        acc = 0.0
        label = step.weights[-1][0]
        for name, w in step.weights:
            acc += w
            if u < acc:
                label = name
                break
        ctx.route[step.name] = label
        template = dict(step.cases)[label]
        return await self._branch(template, values, ctx)

    async def _branch(self, template: Any, values: list[Any], ctx: RequestContext) -> Any:
        if isinstance(template, Ref):
            return await self._value(template.index, values, ctx)
        await self._gather(refs_in(template), values, ctx, resolve=True)
        return fill(template, values)


def _all_refs(s: Step) -> list[int]:
    refs = list(s.inputs)
    if isinstance(s.key, Ref) and s.key.index not in refs:
        refs.append(s.key.index)
    return refs


def _straight_line(plan: Plan, runner: Runner) -> list[Step] | None:
    """The steps from the input to the output, in order, when each reads the one before it only.

    Such a plan has nothing to run concurrently and nothing to share or route, so the executor
    runs its steps one after the other instead of walking back from the output (~2 µs less per
    request of a 3-node chain). ``None`` for any other plan: several inputs to a step, a switch or
    split, a structured output, or a runner that passes results through un-awaited.
    """
    if runner.passthrough or not isinstance(plan.output, Ref):
        return None
    line: list[Step] = []
    step = plan.steps[plan.output.index]
    while step.kind != "input":
        refs = _all_refs(step)
        if step.kind not in ("call", "select") or len(refs) > 1:
            return None
        line.append(step)
        if not refs:
            break
        step = plan.steps[refs[0]]
    return line[::-1] or None  # (a graph returning its input has no steps to run)


def _arg_builder(step: Step) -> Any:
    """A function values -> (args, kwargs) for a call step, specialised for the common shapes."""
    if step.kind != "call":
        return None
    if not step.kwargs and all(isinstance(t, Ref) for t in step.args):
        idx = [t.index for t in step.args]
        if len(idx) == 1:
            j = idx[0]
            return lambda values: ((values[j],), {})
        return lambda values: (tuple([values[j] for j in idx]), {})
    return lambda values: (fill(step.args, values), fill(step.kwargs, values))


def _whole_refs(step: Step) -> set[int]:
    out = {t.index for t in step.args if isinstance(t, Ref)}
    out.update(t.index for t in step.kwargs.values() if isinstance(t, Ref))
    return out


def _takes_whole(consumer: Step, i: int) -> bool:
    """Does ``consumer`` read step ``i`` only as a whole top-level argument of a remote call?

    A stream's call is not one: it awaits its arguments itself (backends/ray/remote_streams.py), and a
    call result awaited there cannot also be handed on un-awaited to another call."""
    if consumer.kind != "call" or consumer.inline or consumer.streams:
        return False
    whole = _whole_refs(consumer)
    if i not in whole:
        return False
    nested = [t for t in (*consumer.args, *consumer.kwargs.values()) if not isinstance(t, Ref)]
    return i not in refs_in([*nested, consumer.model_id])


def _model_id_fields(steps: tuple[Step, ...]) -> frozenset[int]:
    """The select steps reading a payload field that a multiplexed call takes as its model id."""
    out = set()
    for s in steps:
        if isinstance(s.model_id, Ref):
            source = steps[s.model_id.index]
            if source.kind == "select" and steps[source.inputs[0]].kind == "input":
                out.add(source.index)
    return frozenset(out)


async def _gather_all(coros: list[Any]) -> None:
    """Run coroutines concurrently; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            if not t.done():
                t.cancel()
        # Retrieve the others' outcomes so nothing is reported as never retrieved.
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _node_error(name: str, exc: BaseException) -> DagserveError:
    return node_failure(name, exc)  # a NodeError, or the HTTP status the node chose


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
