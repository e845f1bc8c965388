"""`/metrics`: the copies' and outboxes' gauges of charter.metrics, measured at each
scrape as `charter run --metrics` measures them. The dashboard applies nothing, so the
families counted as a process applies events (events applied, the latency histogram) are
left out: they are the runners' to serve, and a 0 here would read as "nothing applied".
Imported after charter.metrics, which says what to install when prometheus-client is not."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from charter import metrics
from charter.runner import Runner
from charter.system import System

PER_PROCESS = {"charter_copy_events_applied", "charter_copy_propagation_latency_seconds"}


class _Measured(Collector):
    def __init__(self, inner: metrics.CopyCollector) -> None:
        self.inner = inner

    def collect(self) -> Iterator[Metric]:
        return (m for m in self.inner.collect() if m.name not in PER_PROCESS)


def scraper(system: System) -> Callable[[], bytes]:
    """What /metrics answers, in Prometheus's text format: every copy of `system` and every
    owner's outbox (a Runner is built for its list of them, and never started)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Measured(metrics.CopyCollector(Runner(system, commands=False))))
    return lambda: generate_latest(registry)
