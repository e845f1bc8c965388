"""Following a change across services with OpenTelemetry, when it is installed
(`pip install 'charter[otel]'`): the owner's transaction records the trace context it runs
in (W3C `traceparent`, and `tracestate`) in each of its events, as the CloudEvents
distributed-tracing extension says; each projector's apply of a batch is a span
(`charter.apply <copy>`) linked to the trace of every event in it.

Only the OpenTelemetry API is used, so what is recorded, sampled and exported is the
application's choice (its tracer provider); without one configured, nothing is recorded.
Without OpenTelemetry installed nothing changes: it is looked for once, on the first
commit or apply, and never imported at `import charter`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from charter.events import Event

TRACER = "charter"
_otel: Any = None  # (trace module, propagator) once looked for; False: not installed


def _api() -> Any:
    global _otel
    if _otel is None:
        try:
            from opentelemetry import trace
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError:
            _otel = False
        else:
            _otel = (trace, TraceContextTextMapPropagator())
    return _otel


def current() -> tuple[str | None, str | None]:
    """The `traceparent` and `tracestate` of the span current here: (None, None) when no
    span is, or OpenTelemetry is not installed."""
    otel = _api()
    if not otel:
        return None, None
    trace, propagator = otel
    if not trace.get_current_span().get_span_context().is_valid:
        return None, None
    carrier: dict[str, str] = {}
    propagator.inject(carrier)
    return carrier.get("traceparent"), carrier.get("tracestate") or None


@contextmanager
def applying(copy: str, entity: str, items: Sequence[tuple[int, Event]]) -> Iterator[None]:
    """A span around one apply of `items` (bus position, event) to `copy`, linked to each
    event's trace (once per trace context); nothing when OpenTelemetry is not installed."""
    otel = _api()
    if not otel:
        yield
        return
    trace, propagator = otel
    tracer = trace.get_tracer(TRACER)
    attributes = {"charter.copy": copy, "charter.entity": entity, "charter.events": len(items)}
    with tracer.start_as_current_span(
        f"charter.apply {copy}", kind=trace.SpanKind.CONSUMER, attributes=attributes
    ) as span:
        if span.is_recording():
            seen: set[str] = set()
            for _, event in items:
                parent = event.traceparent
                if parent is None or parent in seen:
                    continue
                seen.add(parent)
                carrier = {"traceparent": parent}
                if event.tracestate:
                    carrier["tracestate"] = event.tracestate
                linked = trace.get_current_span(propagator.extract(carrier)).get_span_context()
                if linked.is_valid:
                    span.add_link(linked)
        yield
