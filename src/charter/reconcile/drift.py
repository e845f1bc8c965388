"""A check's result kept in the copy's own store (Store.record_drift, charter_drift), so
`charter status` and the metrics can say how the copy stood at its last check, whoever made
it: `charter run`'s reconciler (charter.reconcile.schedule) or `charter reconcile`."""

from __future__ import annotations

from charter.errors import Error
from charter.reconcile.classify import DRIFT
from charter.reconcile.repair import Mended
from charter.reconcile.report import SAMPLE, Report
from charter.records import Drift
from charter.system import System


def drift_of(report: Report, repaired: dict[str, int] | None = None) -> Drift:
    """`report` as the row its copy's store keeps: counts of every kind, a sample of the
    drifted ids of each kind; `repaired`: what a repair published before this check."""
    sample = {kind: report.ids(kind)[:SAMPLE] for kind in sorted(DRIFT) if report.counts.get(kind)}
    return Drift(
        report.copy,
        report.checked_at,
        round(report.took_s, 6),
        dict(report.counts),
        sample,
        report.complete,
        report.error,
        repaired,
    )


def record(system: System, report: Report, repaired: dict[str, int] | None = None) -> Drift:
    """Keep `report` as its copy's last check, in the copy's store."""
    drift = drift_of(report, repaired)
    copy = system.charter.copies[report.copy]
    system.store(copy.context).record_drift(drift)
    return drift


def keep_all(system: System, reports: list[Report], mended: dict[str, Mended]) -> list[str]:
    """Keep each copy's result (`charter reconcile`: the check after its repair, where
    `mended` has one) in its store; what could not be kept (a role that may not write
    there), as lines to warn of: the check itself stands."""
    lines = []
    for report in reports:
        done = mended.get(report.copy)
        final = done.after if done is not None else report
        try:
            record(system, final, dict(done.repair.published) if done else None)
        except Error as exc:
            lines.append(f"{report.copy}: its result is not kept for `charter status`: {exc}")
    return lines
