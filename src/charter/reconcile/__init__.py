"""Reconciliation (G6): every row where a copy differs from its owner beyond what is in
flight, found, classified and repaired from the owner.

Nothing downloads whole tables: both sides digest ranges of ids inside their own databases
(charter.digests: one canonical encoding from the charter's types, so SQLite and PostgreSQL
write the same bytes for the same values), ranges whose digests differ are cut again, and
only small differing ranges are read as rows (`compare`). Each difference is read again and
classified (`classify`): missing, extra, stale, divergent, ahead, or in flight (within the
copy's window: never drift). `check` makes the report of one copy; `record` keeps it in
the copy's store (charter_drift) for status; `Reconciler` checks on the copies' schedules
(`reconcile:`, `repair:`) inside `charter run`."""

from charter.reconcile.classify import (
    AHEAD,
    DIVERGENT,
    DRIFT,
    EXTRA,
    IN_FLIGHT,
    MISSING,
    STALE,
    Finding,
)
from charter.reconcile.drift import record
from charter.reconcile.repair import Mended, Repair, mend, repair
from charter.reconcile.report import Report, check, check_all
from charter.reconcile.schedule import Reconciler

__all__ = [
    "AHEAD",
    "DIVERGENT",
    "DRIFT",
    "EXTRA",
    "IN_FLIGHT",
    "MISSING",
    "STALE",
    "Finding",
    "Mended",
    "Reconciler",
    "Repair",
    "Report",
    "check",
    "check_all",
    "mend",
    "record",
    "repair",
]
