"""Following a change across services (charter[otel]): an owner's transaction run inside a
span records its trace context in each event (CloudEvents `traceparent`, `tracestate`),
and each projector's apply is a span linked to it. With OpenTelemetry's SDK recording into
memory; test_extras.py runs charter without OpenTelemetry installed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

import charter
from charter.events import Event, decode
from charter.system import System


class Switch(Sampler):
    """Records only while a test here is on: the tracer provider is set once per process,
    and the other tests of the suite should not pay for spans."""

    on = False

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if not self.on:
            return SamplingResult(Decision.DROP)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)  # the span keeps them

    def get_description(self) -> str:
        return "on while a tracing test runs"


SWITCH = Switch()
EXPORTED = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider(sampler=SWITCH)
        provider.add_span_processor(SimpleSpanProcessor(EXPORTED))
        trace.set_tracer_provider(provider)
    EXPORTED.clear()
    SWITCH.on = True
    try:
        yield EXPORTED
    finally:
        SWITCH.on = False
        EXPORTED.clear()


def settle(system: System) -> None:
    """Run the pipeline until every copy holds every change."""
    with charter.Runner(system) as runner:
        assert runner.wait_until_synced()


def traceparent(span: trace.SpanContext) -> str:
    """The W3C traceparent of a span (version 00)."""
    return f"00-{span.trace_id:032x}-{span.span_id:016x}-{span.trace_flags:02x}"


def outbox_events(system: System, entity_id: str) -> list[dict[str, Any]]:
    rows = system.store("customers").history("Customer", entity_id)
    return [orjson.loads(row.body) for row in rows]


def applies(exported: InMemorySpanExporter, copy: str) -> list[ReadableSpan]:
    return [s for s in exported.get_finished_spans() if s.name == f"charter.apply {copy}"]


def test_a_change_made_in_a_span_carries_its_trace_to_every_copys_apply(
    shop: System, spans: InMemorySpanExporter
) -> None:
    settle(shop)  # the copies' first fill: later changes come as events
    tracer = trace.get_tracer("the-shop")
    customers = shop.context("customers")
    with tracer.start_as_current_span("POST /customers") as request, customers.transaction() as tx:
        ada = tx.create("Customer", email="ada@example.org", name="Ada", password_hash="h")
    made = request.get_span_context()
    with tracer.start_as_current_span("PATCH /customers") as second, customers.transaction() as tx:
        tx.update("Customer", ada.id, name="Ada L.")
    settle(shop)

    first_event, second_event = outbox_events(shop, ada.id)
    other = second.get_span_context()
    assert first_event["traceparent"] == traceparent(made)
    assert "tracestate" not in first_event  # none was set
    assert second_event["traceparent"] == traceparent(other)

    for copy in ("order_customers", "shipping_customers"):
        found = applies(spans, copy)  # one batch, or one an event, as the bus hands them out
        assert found and all(span.kind is SpanKind.CONSUMER for span in found)
        for span in found:
            attributes = dict(span.attributes or {})
            assert attributes.pop("charter.events") == len(span.links)  # one trace each here
            assert attributes == {"charter.copy": copy, "charter.entity": "Customer"}
            assert span.context.trace_id not in {made.trace_id, other.trace_id}  # its own
        linked = [(x.context.trace_id, x.context.span_id) for span in found for x in span.links]
        assert sorted(linked) == sorted(
            [(made.trace_id, made.span_id), (other.trace_id, other.span_id)]
        )


def test_the_trace_state_goes_along(shop: System, spans: InMemorySpanExporter) -> None:
    state = TraceState([("shop", "eu-1")])
    settle(shop)
    outer = trace.SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=1, trace_state=state)
    customers = shop.context("customers")
    with trace.use_span(trace.NonRecordingSpan(outer)), customers.transaction() as tx:
        ada = tx.create("Customer", email="ada@example.org", name="Ada", password_hash="h")
    (event,) = outbox_events(shop, ada.id)
    assert event["traceparent"] == traceparent(outer) == f"00-{0x1234:032x}-{0x5678:016x}-01"
    assert event["tracestate"] == "shop=eu-1"
    settle(shop)
    (link,) = [link for span in applies(spans, "order_customers") for link in span.links]
    assert link.context.trace_state.get("shop") == "eu-1"


def test_a_change_made_outside_any_span_carries_no_trace(
    shop: System, spans: InMemorySpanExporter
) -> None:
    settle(shop)
    with shop.context("customers").transaction() as tx:
        ada = tx.create("Customer", email="ada@example.org", name="Ada", password_hash="h")
    (event,) = outbox_events(shop, ada.id)
    assert "traceparent" not in event and "tracestate" not in event
    settle(shop)
    found = applies(spans, "order_customers")
    assert sum(dict(span.attributes or {})["charter.events"] for span in found) == 1
    assert all(list(span.links) == [] for span in found)  # still spans of their own


def test_trace_attributes_read_back_and_junk_in_them_is_left_out() -> None:
    event = Event(
        "e1",
        "Customer",
        "c1",
        1,
        "created",
        ("name",),
        {"name": "Ada"},
        "customers",
        "2026-01-01T00:00:00Z",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        tracestate="a=1",
    )
    assert decode(event.encode()) == event
    doc = event.to_cloudevent()
    del doc["traceparent"], doc["tracestate"]  # written before tracing: reads as it did
    assert decode(orjson.dumps(doc)).traceparent is None
    doc["traceparent"], doc["tracestate"] = 7, ["x"]  # another tool's junk: never parked for
    odd = decode(orjson.dumps(doc))
    assert (odd.traceparent, odd.tracestate, odd.state) == (None, None, {"name": "Ada"})
