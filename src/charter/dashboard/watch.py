"""What the dashboard shows, measured in one place. Every store and the bus are read on
one thread: SQLite keeps a connection per thread, and one reader neither opens one per
request nor loads the databases once per viewer. Every copy's status is measured every
`refresh_s` (0.5 s) however many viewers there are, encoded once, and each viewer's poll
is answered from that snapshot (how each copy kept its promise, its latency over minutes
and hours, every tenth time: 5 s). The map is drawn again (by Graphviz, on a thread of its
own) only when a copy's state, its drift or the audit findings change."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

import orjson

from charter import clock, latency, parking, topology
from charter.dashboard.findings import Findings
from charter.dashboard.story import story
from charter.errors import Error
from charter.records import Parked
from charter.status import CopyStatus, Kept, copy_status, kept, unknown
from charter.system import System
from charter.values import now_text

log = logging.getLogger("charter.dashboard")
REFRESH_S = 0.5
KEPT_EVERY = 10  # the promise kept (latency quantiles, shares) is read every 10th time
PARKED_SHOWN = 500  # parked events listed at most (the count is whole)
BODY_SHOWN = 2000  # bytes of a parked event's body shown
T = TypeVar("T")


@dataclass(frozen=True)
class Snapshot:
    """One measurement of every copy: its JSON (as served) and the key of its map."""

    version: int
    body: bytes
    map_key: str
    rows: tuple[CopyStatus, ...]


@dataclass(frozen=True)
class Drawn:
    key: str
    svg: bytes | None
    error: str = ""


class Watcher:
    """The system as the dashboard sees it; `run()` keeps its snapshot fresh."""

    def __init__(
        self, system: System, findings: Findings | None = None, refresh_s: float = REFRESH_S
    ) -> None:
        self.system, self.findings, self.refresh_s = system, findings, refresh_s
        self._stores = self._drawer = ThreadPoolExecutor(1)  # until open()
        self.snapshot: Snapshot | None = None
        self.drawn = Drawn("", None, "the map is being drawn")
        self._drawing = ""
        self._version = 0
        self._scrape: Callable[[], bytes] | None = None
        self._kept: dict[str, Kept] = {}
        self._kept_at = -math.inf

    def open(self) -> None:
        """Its threads, until close() (an app may be started again: tests do)."""
        self._stores = ThreadPoolExecutor(1, thread_name_prefix="charter:dashboard")
        self._drawer = ThreadPoolExecutor(1, thread_name_prefix="charter:map")

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the thread that reads the stores."""
        return await asyncio.get_running_loop().run_in_executor(self._stores, partial(fn, *args))

    async def run(self) -> None:
        """Measure every `refresh_s` until cancelled."""
        while True:
            started = time.monotonic()
            try:
                await self.refresh()
            except Exception:  # a bug, not a store down (status says UNKNOWN): go on
                log.exception("dashboard: measuring the copies failed")
            await asyncio.sleep(max(0.05, self.refresh_s - (time.monotonic() - started)))

    async def refresh(self) -> Snapshot:
        snap = await self.call(self.measure)
        self.snapshot = snap
        if snap.map_key not in (self.drawn.key, self._drawing):
            self._drawing = snap.map_key
            loop = asyncio.get_running_loop()
            loop.run_in_executor(self._drawer, self._draw, snap)
        return snap

    def close(self) -> None:
        self._stores.shutdown(wait=True, cancel_futures=True)
        self._drawer.shutdown(wait=True, cancel_futures=True)

    # on the stores' thread

    def measure(self) -> Snapshot:
        started = time.monotonic()
        charter = self.system.charter
        fresh = time.monotonic() - self._kept_at >= self.refresh_s * KEPT_EVERY
        rows = self._status(fresh)
        docs, drawn_rows, marks = [], [], []
        for row in rows:
            copy = charter.copies[row.copy]
            doc = row.as_json()
            doc["fields"] = list(copy.fields)
            doc["breaks"] = copy.breaks
            doc["drift_text"] = topology.drift(row)  # doc["drift"]: its last check (status)
            docs.append(doc)
            drawn_rows.append(row)
            marks.append((row.copy, row.state, doc["drift_text"]))
        found = self.findings.version if self.findings else 0
        key = hashlib.sha1(orjson.dumps([marks, found])).hexdigest()[:16]
        self._version += 1
        body = {
            "charter": charter.name,
            "version": self._version,
            "measured_at": now_text(),
            "took_s": round(time.monotonic() - started, 4),
            "refresh_s": self.refresh_s,
            "counts": dict(Counter(row.state for row in rows)),
            "parked": sum(row.parked for row in rows),
            "map": key,
            "findings": found if self.findings else None,
            "copies": docs,
        }
        return Snapshot(self._version, orjson.dumps(body), key, tuple(drawn_rows))

    def _status(self, fresh: bool) -> list[CopyStatus]:
        """Every copy's status (charter.status.status); how each kept its promise (p50/p99
        over 5 minutes, the shares of an hour and a day) is read again every KEPT_EVERY only:
        it hardly moves in half a second, and it is most of what a measurement costs. So is
        reconciliation's last drift result."""
        rows = []
        for copy in self.system.charter.copies.values():
            try:
                row = copy_status(self.system, copy, history=False)
                if fresh or copy.name not in self._kept:
                    self._kept[copy.name] = kept(self.system, copy)
            except Error as exc:
                rows.append(unknown(self.system, copy, exc))
                continue
            p50, p99, hour, day = self._kept[copy.name]
            rows.append(
                replace(
                    row,
                    latency_p50_s=p50,
                    latency_p99_s=p99,
                    within_window_1h=hour,
                    within_window_1d=day,
                )
            )
        if fresh:
            self._kept_at = time.monotonic()
        return rows

    def parked(self, copy: str | None = None) -> dict[str, Any]:
        events: list[Parked] = []
        errors = []
        for spec in parking.copies(self.system, copy):
            try:
                events += self.system.store(spec.context).parked(spec)
            except Error as exc:
                errors.append(f"{spec.name}: {exc}")
        return {
            "total": len(events),
            "events": [parked_json(p) for p in events[:PARKED_SHOWN]],
            "errors": errors,
        }

    def retry(self, copy: str, ident: str | None) -> list[dict[str, Any]]:
        return [
            parked_json(o.parked)
            | {"outcome": "resolved" if o.resolved else "parked"}
            | ({"reason": o.reason} if o.reason else {})
            for o in parking.retry(self.system, copy, ident)
        ]

    def drop(self, copy: str, ident: str | None) -> list[dict[str, Any]]:
        return [
            parked_json(p) | {"outcome": "dropped"} for p in parking.drop(self.system, copy, ident)
        ]

    def story(self, entity: str, entity_id: str) -> dict[str, Any]:
        return story(self.system, entity, entity_id)

    def latency(self, name: str) -> dict[str, Any]:
        """The copy's propagation latency minute by minute over the last hour: p50, p99,
        events and the share within its window (None in a minute with nothing applied)."""
        [copy] = parking.copies(self.system, name)  # an unknown name: NotFoundError
        store = self.system.store(copy.context)
        now = latency.minute(clock.time_ns())
        first = now - 59
        since = [store.latency(copy, first + n) for n in range(60)]  # each: to now
        minutes = []
        for n, total in enumerate(since):
            later = since[n + 1] if n + 1 < len(since) else {}
            counts = {at: c - later.get(at, 0) for at, c in total.items()}
            counts = {at: c for at, c in counts.items() if c > 0}
            p50, p99 = latency.quantile(counts, 0.5), latency.quantile(counts, 0.99)
            share = latency.within(counts, copy.window_s)
            minutes.append(
                {
                    "minute": (first + n) * 60,
                    "events": sum(counts.values()),
                    "p50_s": None if p50 is None else round(p50, 6),
                    "p99_s": None if p99 is None else round(p99, 6),
                    "within_window": None if share is None else round(share, 6),
                }
            )
        return {"copy": copy.name, "window_s": copy.window_s, "minutes": minutes}

    def metrics(self) -> bytes:
        if self._scrape is None:
            from charter import metrics  # noqa: F401 (without prometheus-client: what to install)
            from charter.dashboard.scrape import scraper

            self._scrape = scraper(self.system)
        return self._scrape()

    # on the map's thread

    def _draw(self, snap: Snapshot) -> None:
        try:
            found = self.findings.found() if self.findings else []
            graph = topology.graph(self.system.charter, snap.rows, found)
            graph.edges = [
                replace(e, label=_LAG.sub("", e.label)) if e.kind == "copy" else e
                for e in graph.edges
            ]  # lag changes all the time: the table says it, the map says states
            self.drawn = Drawn(snap.map_key, topology.render(graph, "svg"))
        except Exception as exc:  # dot missing or failing: the page says why
            self.drawn = Drawn(snap.map_key, None, str(exc))
        finally:
            if self._drawing == snap.map_key:
                self._drawing = ""


_LAG = re.compile(r" lag \S+s$", re.MULTILINE)


def parked_json(p: Parked) -> dict[str, Any]:
    return parking.as_json(p) | {"body": p.body[:BODY_SHOWN].decode(errors="replace")}
