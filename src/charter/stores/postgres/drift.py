"""The last check of each copy on PostgreSQL (charter_drift, one row per copy): written by
the process that checked (`charter run`'s reconciler, `charter reconcile`), read by status
and the metrics."""

from __future__ import annotations

from charter.model import Copy
from charter.records import Drift
from charter.stores.common import DRIFT_COLUMNS, drift_of, drift_values
from charter.stores.postgres.core import _Core

TABLE = """
CREATE TABLE IF NOT EXISTS {s}.charter_drift (
    copy text PRIMARY KEY, checked_at text NOT NULL, took double precision NOT NULL,
    complete integer NOT NULL, missing bigint NOT NULL, extra bigint NOT NULL,
    stale bigint NOT NULL, divergent bigint NOT NULL, ahead bigint NOT NULL,
    in_flight bigint NOT NULL, sample text NOT NULL, repaired text, error text
);
"""


class _Drift(_Core):
    def record_drift(self, drift: Drift) -> None:
        columns = ", ".join(DRIFT_COLUMNS)
        marks = ", ".join(["%s"] * len(DRIFT_COLUMNS))
        updates = ", ".join(f"{c} = excluded.{c}" for c in DRIFT_COLUMNS[1:])
        with self.pool.connection() as conn:
            conn.execute(
                f"INSERT INTO {self._t('charter_drift')} ({columns}) VALUES ({marks}) "
                f"ON CONFLICT (copy) DO UPDATE SET {updates}",
                drift_values(drift),
            )

    def drift(self, copy: Copy) -> Drift | None:
        with self.pool.connection() as conn:
            row = conn.execute(
                f"SELECT {', '.join(DRIFT_COLUMNS)} FROM {self._t('charter_drift')} "
                "WHERE copy = %s",
                (copy.name,),
            ).fetchone()
        return None if row is None else drift_of(row)
