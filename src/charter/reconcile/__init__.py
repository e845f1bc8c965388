"""Reconciliation (G6): every row where a copy differs from its owner beyond what is in
flight, found, classified and repaired from the owner.

Nothing downloads whole tables: both sides digest ranges of ids inside their own databases
(charter.digests: one canonical encoding from the charter's types, so SQLite and PostgreSQL
write the same bytes for the same values), ranges whose digests differ are cut again, and
only small differing ranges are read as rows (`compare`). Each difference is read again and
classified (`classify`): missing, extra, stale, divergent, ahead, or in flight (within the
copy's window: never drift). `check` makes the report of one copy."""

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
from charter.reconcile.repair import Mended, Repair, mend, repair
from charter.reconcile.report import Report, check, check_all

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
    "Repair",
    "Report",
    "check",
    "check_all",
    "mend",
    "repair",
]
