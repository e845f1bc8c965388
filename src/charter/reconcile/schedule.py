"""Continuous reconciliation: `charter run` checks each copy it keeps that declares
`reconcile:` (its own, or the charter's default) on that schedule, repairs the kinds of
drift its `repair:` lists, and keeps each result in the copy's store (charter_drift) for
status and the metrics.

One thread for all the copies, one check at a time, so the stores never see two at once.
Each check has a budget (a tenth of the copy's interval, between 1 s and 30 s: a check that
runs out is recorded as incomplete, never as drift), and after a check of T seconds the
thread rests at least T * (1 - DUTY) / DUTY before the next, so reconciliation takes at most
DUTY of the time however many copies and however slow the stores. The times are jittered
(± JITTER of the interval), so runners started together do not check together; a runner
started again picks up from the last check recorded, not from zero. A repair is published
by the owner's state (charter.reconcile.repair), applied by the copy's projector running in
the same runner; the check after it is the one recorded, with what was repaired.

Checks are incremental (charter.reconcile.compare.incremental: from the buckets both
databases keep), and a runner's first check of a copy, and one every REBUILD_S after,
builds the buckets anew (a full pass on each side, as Riak's AAE trees expire): what a write
with triggers turned off changed, no bucket saw, and a rebuild does."""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from charter import clock
from charter.errors import Error
from charter.model import Copy
from charter.reconcile.classify import IN_FLIGHT
from charter.reconcile.drift import record
from charter.reconcile.repair import repair
from charter.reconcile.report import BUDGET_S, MAX_DIFFS, Report, check
from charter.records import Drift
from charter.reports import Reports
from charter.system import System

DUTY = 0.25  # the largest share of the time the reconciler spends checking
JITTER = 0.1  # each wait is the interval ± this share of it
FIRST_WITHIN_S = 30.0  # a copy never checked is checked within this (or its interval)
MIN_BUDGET_S = 1.0
REBUILD_S = 86_400.0  # how long a runner compares a copy's buckets before it builds them anew
WORKER = "reconciliation"  # its name in `charter run`'s reports


def budget_of(copy: Copy) -> float:
    """How long one scheduled check of `copy` may take."""
    return min(BUDGET_S, max(MIN_BUDGET_S, copy.reconcile_s / 10))


def _epoch(moment: str) -> float | None:
    try:
        return dt.datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class _Due:
    copy: Copy
    at: float  # clock.time_s() of its next check


class Reconciler:
    """Checks `copies` on their schedules until stopped. Since it started: `checks` counts
    the checks made, `drifted` those that found drift (before any repair), `in_flight` the
    ids they found on their way (summed over the checks: no drift), `repaired` the ids it
    had published again by kind; `last` holds each copy's last check."""

    def __init__(self, system: System, copies: Iterable[Copy], reports: Reports) -> None:
        self.system, self.reports = system, reports
        self.copies = [c for c in copies if c.reconcile_s > 0]
        self.checks = self.drifted = self.in_flight = 0
        self.repaired: Counter[str] = Counter()
        self.last: dict[str, Drift] = {}
        self._built: dict[str, float] = {}  # copy → clock.monotonic() of its buckets' build
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the schedule -------------------------------------------------------------------

    def _jitter(self, seconds: float) -> float:
        share = (clock.randbits(16) / 65535 * 2 - 1) * JITTER  # -JITTER … +JITTER
        return seconds * (1 + share)

    def _first(self, copy: Copy, now: float) -> float:
        """When `copy` is first checked by this runner: an interval after its last recorded
        check, or soon (jittered) when it was never checked or that is past."""
        soon = now + clock.randbits(16) / 65535 * min(copy.reconcile_s, FIRST_WITHIN_S)
        try:
            last = self.system.store(copy.context).drift(copy)
        except Error:
            return soon
        then = None if last is None else _epoch(last.checked_at)
        if then is None:
            return soon
        return max(soon, then + self._jitter(copy.reconcile_s))

    def start(self) -> Reconciler:
        if self.copies and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="charter:reconcile", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the check in hand (its budget bounds it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        now = clock.time_s()
        due = [_Due(copy, self._first(copy, now)) for copy in self.copies]
        while not self._stop.is_set():
            nearest = min(due, key=lambda d: d.at)
            wait = nearest.at - clock.time_s()
            if wait > 0:
                self._stop.wait(min(wait, 1.0))  # asks again: a stop never waits an hour
                continue
            started = clock.monotonic()
            try:
                self.once(nearest.copy)
                self.reports.worked(WORKER)
            except Exception as exc:  # a store or the bus failing: said once, tried again
                self.reports.failed(WORKER, exc)
            took = clock.monotonic() - started
            rest = took * (1 - DUTY) / DUTY
            nearest.at = clock.time_s() + max(self._jitter(nearest.copy.reconcile_s), rest)
            for other in due:  # the duty cycle holds for the other copies too
                other.at = max(other.at, clock.time_s() + rest)

    # -- one check ----------------------------------------------------------------------

    def once(self, copy: Copy) -> Drift:
        """Check `copy`, repair the drift its `repair:` allows, check again if it did, and
        record the last check in the copy's store."""
        budget = budget_of(copy)
        self._rebuild(copy)
        report = check(self.system, copy, budget, MAX_DIFFS, incremental_digests=True)
        self.drifted += 1 if report.drift else 0
        self.in_flight += report.counts.get(IN_FLIGHT, 0)
        repaired: dict[str, int] | None = None
        allowed = [f for f in report.drift if f.kind in copy.repair]
        if allowed and not report.error:
            before = report
            done = repair(self.system, report, copy.repair)
            repaired = dict(done.published)
            self.repaired.update(repaired)
            if done.count:  # checked again, applied or not: what is left is what it says
                self._applied(copy, done.head, budget)
                report = check(self.system, copy, budget, MAX_DIFFS, incremental_digests=True)
            self._said(before, repaired, report)
        elif report.drift and self._news(report):
            self._said(report, None, report)
        drift = record(self.system, report, repaired)
        self.checks += 1
        self.last[copy.name] = drift
        return drift

    def _rebuild(self, copy: Copy) -> None:
        """Drop both sides' buckets of `copy` when this runner has not built them, or built
        them REBUILD_S ago: the check then builds them from the rows."""
        built = self._built.get(copy.name)
        if built is not None and clock.monotonic() - built < REBUILD_S:
            return
        entity = self.system.charter.entities[copy.of]
        fields = [entity.fields[name] for name in copy.fields]
        try:
            self.system.store(entity.owner).drop_buckets(entity, fields)
            self.system.store(copy.context).drop_buckets(copy, fields)
        except Error:
            return  # a store out of reach: the check says so, and is recorded
        self._built[copy.name] = clock.monotonic()

    def _news(self, report: Report) -> bool:
        """Whether drift left alone differs from what the last check said (said once)."""
        last = self.last.get(report.copy)
        if last is None or last.repaired is not None:
            return True
        drifted = {kind: n for kind, n in report.counts.items() if kind != IN_FLIGHT}
        return drifted != {kind: n for kind, n in last.counts.items() if kind != IN_FLIGHT}

    def _applied(self, copy: Copy, head: int, timeout: float) -> bool:
        """Whether the copy's projector applied the bus up to `head` (the repair) within
        `timeout`; gives up at once when the reconciler is stopped."""
        store = self.system.store(copy.context)
        deadline = clock.monotonic() + timeout
        while not self._stop.is_set():
            checkpoint = store.checkpoint(copy)
            if checkpoint is not None and checkpoint.position >= head:
                return True
            if clock.monotonic() >= deadline:
                return False
            self._stop.wait(0.02)
        return False

    def _said(self, found: Report, repaired: dict[str, int] | None, after: Report) -> None:
        counts = ", ".join(f"{n} {k}" for k, n in found.counts.items() if k != "in_flight")
        line = f"copy '{found.copy}' of {found.of} drifted from '{found.owner}': {counts}"
        if repaired:
            mended = ", ".join(f"{n} {kind}" for kind, n in repaired.items())
            left = len(after.drift)
            line += f"; repaired {mended}" + (f", {left} left" if left else ", clean now")
        else:
            line += " (not repaired: `repair:` does not list it)"
        self.reports.note(line)
