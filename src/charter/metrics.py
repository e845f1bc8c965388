"""Prometheus metrics from a runner (`charter run --metrics HOST:PORT`), with the
prometheus-client library (the extra `charter[metrics]`).

What a copy's contract is measured by is computed at scrape time from its status (the same
figures as `charter status`): staleness, window, lag, parked events; and for each owner
whose relay runs here, its unrelayed outbox. A copy's lag counts that outbox only where
its owner's relay runs here: a process that runs only copies may not read the owners'
stores, and says what is on the bus (as `charter status --context` does). What happens
between scrapes is counted as it happens, through each projector's `on_applied`: the
events applied and a histogram of their propagation latency, with buckets at fractions
and multiples of the copy's window (so that "within the window" is always a bucket edge).
A copy that cannot be measured (UNKNOWN in status) has `charter_copy_up 0` and no
gauges, rather than a false 0. Whether anything applies the copy's events is apart:
`charter_copy_projector_up` is 1 while this process's projector of it works, 0 while it
fails (a store or bus out of reach) or has stopped; a copy no process serves has none
(the rule `CharterCopyDown`, charter.alerts, fires on both).

Each copy's last reconciliation (charter.reconcile, kept in its store by whoever checked)
is `charter_drift` (one series per kind of drift, label `class`) with the time it was made.

Labels: `copy`, `of` (the entity), `owner`, `in` (the context keeping the copy); the
outbox's are `owner` and `of`."""

from __future__ import annotations

import datetime as dt
import math
import socket
import threading
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from charter.errors import Error, MissingExtraError
from charter.model import Copy
from charter.records import DRIFT_KINDS
from charter.runner import Runner
from charter.status import UNKNOWN, copy_status

try:
    from prometheus_client import make_wsgi_app
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector, CollectorRegistry
except ModuleNotFoundError as exc:  # the extra is not installed
    if not (exc.name or "").startswith("prometheus_client"):
        raise
    raise MissingExtraError(
        "Prometheus metrics need the prometheus-client package, which is not installed "
        "here: pip install 'charter[metrics]'",
        extra="metrics",
        package="prometheus_client",
    ) from None

WINDOW_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0)
"""The latency histogram's bucket edges, as multiples of the copy's window."""
COPY_LABELS = ("copy", "of", "owner", "in")
OUTBOX_LABELS = ("owner", "of")


def buckets(window_s: float) -> tuple[float, ...]:
    """A copy's latency bucket edges (+Inf aside): fractions and multiples of its window."""
    if window_s <= 0:
        window_s = 1.0  # a window of 0 has no fractions: edges around a second instead
    return tuple(round(window_s * share, 9) for share in WINDOW_FRACTIONS)


@dataclass
class _Observed:
    """One copy's latencies as they were applied: counts per bucket (the last: +Inf)."""

    edges: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    applied: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.edges) + 1)


class CopyCollector(Collector):
    """The metrics of a runner's copies and outboxes, read when scraped."""

    def __init__(self, runner: Runner) -> None:
        self.system = runner.system
        charter = self.system.charter
        self.copies: dict[str, Copy] = {p.copy.name: p.copy for p in runner.projectors}
        relayed = [r.context for r in runner.relays]
        self.owned = [(context, e.name) for context in relayed for e in charter.owned_by(context)]
        # A copy's lag counts its owner's unrelayed outbox where this process relays it; a
        # process running only copies may not read the owners' stores (their own runners
        # serve their outboxes), so there it is what is on the bus.
        self.with_owner = {
            name: charter.entities[c.of].owner in relayed for name, c in self.copies.items()
        }
        self.runner = runner
        self._lock = threading.Lock()
        self._observed = {name: _Observed(buckets(c.window_s)) for name, c in self.copies.items()}
        for projector in runner.projectors:
            name = projector.copy.name
            projector.on_applied = lambda seconds, name=name: self.observe(name, seconds)

    def observe(self, copy: str, seconds: Sequence[float]) -> None:
        """Count the latencies of a batch the copy applied."""
        observed = self._observed[copy]
        with self._lock:
            for value in seconds:
                observed.counts[bisect_left(observed.edges, value)] += 1
                observed.total += value
            observed.applied += len(seconds)

    def labels(self, copy: Copy) -> list[str]:
        owner = self.system.charter.entities[copy.of].owner
        return [copy.name, copy.of, owner, copy.context]

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, text: str, labels: Sequence[str] = COPY_LABELS) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=labels)

        up = gauge("charter_copy_up", "1 when the copy could be measured at this scrape")
        working = gauge(
            "charter_copy_projector_up",
            "1 while this process's projector of the copy works; 0 failing or stopped",
        )
        for projector in self.runner.projectors:
            running = self.runner.working(projector)
            working.add_metric(self.labels(projector.copy), 1 if running else 0)
        staleness = gauge(
            "charter_copy_staleness_seconds",
            "Age of the oldest owner commit the copy has not applied (0 when none)",
        )
        window = gauge("charter_copy_window_seconds", "How stale the copy may get (contract)")
        lag = gauge("charter_copy_lag_events", "Owner events the copy has not applied yet")
        parked = gauge("charter_copy_parked_events", "Events the copy could not apply")
        applied = CounterMetricFamily(
            "charter_copy_events_applied",
            "Events the copy applied in this process",
            labels=COPY_LABELS,
        )
        latency = HistogramMetricFamily(
            "charter_copy_propagation_latency_seconds",
            "From the owner's commit to the copy's, per event applied in this process",
            labels=COPY_LABELS,
        )
        for name, copy in self.copies.items():
            labels = self.labels(copy)
            window.add_metric(labels, copy.window_s)
            try:
                row = copy_status(self.system, copy, owner=self.with_owner[name])
            except Error:
                row = None
            up.add_metric(labels, 0 if row is None or row.state == UNKNOWN else 1)
            if row is not None and row.state != UNKNOWN:
                staleness.add_metric(labels, row.lag_s)
                lag.add_metric(labels, row.lag_events)
                parked.add_metric(labels, row.parked)
            observed = self._observed[name]
            with self._lock:
                counts, total, count = list(observed.counts), observed.total, observed.applied
            cumulative, edges = 0, []
            for edge, number in zip((*observed.edges, math.inf), counts, strict=True):
                cumulative += number
                edges.append((_edge(edge), float(cumulative)))
            latency.add_metric(labels, edges, total)
            applied.add_metric(labels, count)
        yield from (up, working, staleness, window, lag, parked, applied, latency)
        yield from self._drift()
        unrelayed = gauge(
            "charter_outbox_unrelayed_events",
            "Events the owner committed that its relay has not published yet",
            OUTBOX_LABELS,
        )
        for context, entity in self.owned:
            try:
                backlog = self.system.store(context).unrelayed(entity)
            except Error:
                continue
            unrelayed.add_metric([context, entity], backlog.events)
        yield unrelayed

    def _drift(self) -> Iterator[Metric]:
        """Each copy's last reconciliation, as its store keeps it (charter_drift): ids by
        kind of drift, when it was made, and how long it took; nothing for a copy never
        checked."""
        drift = GaugeMetricFamily(
            "charter_drift",
            "Ids that differed from the owner beyond in flight, by kind, at the last check",
            labels=(*COPY_LABELS, "class"),
        )
        checked = GaugeMetricFamily(
            "charter_drift_last_check_timestamp_seconds",
            "When the copy was last checked against its owner (Unix time)",
            labels=COPY_LABELS,
        )
        took = GaugeMetricFamily(
            "charter_drift_last_check_duration_seconds",
            "How long the last check of the copy against its owner took",
            labels=COPY_LABELS,
        )
        for copy in self.copies.values():
            try:
                last = self.system.store(copy.context).drift(copy)
            except Error:
                continue
            when = None if last is None else _epoch(last.checked_at)
            if last is None or when is None:
                continue
            labels = self.labels(copy)
            for kind in DRIFT_KINDS:
                if kind != "in_flight":
                    drift.add_metric([*labels, kind], last.counts.get(kind, 0))
            checked.add_metric(labels, when)
            took.add_metric(labels, last.took_s)
        yield from (drift, checked, took)


def _epoch(moment: str) -> float | None:
    try:
        return dt.datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _edge(value: float) -> str:
    """A bucket's `le` as Prometheus writes it."""
    return "+Inf" if value == math.inf else repr(value)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a line on stderr each."""


class _Server6(WSGIServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """The HTTP endpoint (/metrics) of one runner's metrics, until close(). One thread
    answers every scrape, one after the other: the stores keep a connection per thread
    (SQLite's), so a thread per request would open new ones at every scrape."""

    def __init__(self, runner: Runner, host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = CopyCollector(runner)
        self.registry.register(self.collector)
        kind = _Server6 if ":" in host else WSGIServer
        self._server = make_server(host, port, make_wsgi_app(self.registry), kind, _Quiet)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="charter:metrics", daemon=True
        )
        self._thread.start()
        self.host, self.port = host, int(self._server.server_port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
