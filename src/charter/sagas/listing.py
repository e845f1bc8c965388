"""`charter sagas`: every run of every saga the charter declares, read from its
orchestrator's store (the records of the saga's entity), with the step it is at and why it
compensates or is parked; `--resume` sends a parked run back to compensating."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from rich.table import Table

from charter import clock
from charter.errors import ValidationError
from charter.sagas.state import ACTIVE, COMPENSATED, COMPENSATING, COMPLETED, ENDED, PARKED, Run
from charter.system import System

DONE = (COMPLETED, COMPENSATED)  # a parked run still names the step it is stuck at
ORDER = ("running", "compensating", "parked", "completed", "compensated")
COLOURS = {
    "running": "cyan",
    "compensating": "yellow",
    "parked": "bold red",
    "completed": "green",
    "compensated": "blue",
}


@dataclass(frozen=True)
class Listed:
    """One run as `charter sagas` prints it."""

    saga: str
    context: str
    id: str
    status: str
    step: str | None  # the step it is at (to do, to compensate, stuck at); None once done
    attempts: int
    started: str  # from its id (UUIDv7: time-ordered)
    version: int  # how many changes its record has had: `charter history SAGA ID`
    reason: str | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _started(run_id: str) -> str:
    try:
        ms = int(run_id.replace("-", ""), 16) >> 80
    except ValueError:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def listed(system: System, saga: str | None = None, status: str | None = None) -> list[Listed]:
    """The runs, active ones first, each group oldest first."""
    charter = system.charter
    if saga is not None and saga not in charter.sagas:
        known = ", ".join(charter.sagas) or "none"
        raise ValidationError(f"no saga '{saga}' in the charter (its sagas: {known})")
    rows: list[Listed] = []
    for name, context in charter.sagas.items():
        if saga is not None and name != saga:
            continue
        where = {} if status is None else {"status": status}
        for record in system.context(context).filter(name, **where):
            run = Run.from_record(record)
            at = None if run.status in DONE else run.step_name()
            rows.append(
                Listed(
                    name,
                    context,
                    run.id,
                    run.status,
                    at,
                    run.attempts,
                    _started(run.id),
                    run.version,
                    run.reason,
                )
            )
    rows.sort(key=lambda r: (ORDER.index(r.status), r.id))
    return rows


def table(rows: list[Listed]) -> Table:
    out = Table(title="sagas", title_justify="left")
    for column in ("saga", "id", "status", "step", "tries", "started", "changes", "reason"):
        out.add_column(column, overflow="fold")
    for row in rows:
        colour = COLOURS.get(row.status, "")
        out.add_row(
            row.saga,
            row.id,
            f"[{colour}]{row.status}[/]",
            row.step or "",
            str(row.attempts) if row.status in ACTIVE else "",
            row.started,
            str(row.version),
            row.reason or "",
        )
    return out


def counts(rows: list[Listed]) -> str:
    by = {s: sum(1 for r in rows if r.status == s) for s in ORDER}
    return ", ".join(f"{n} {s}" for s, n in by.items() if n) or "no runs"


def resume(system: System, run_id: str) -> Listed:
    """A parked run compensates again from where it stopped (its tries start again): for
    when its cause is mended (the record put back, the owner up again). One a refusal
    parked sends its undos under a new round's keys, or the owner would answer the
    refusal its key already has."""
    for name, context in system.charter.sagas.items():
        handle = system.context(context)
        record = handle.get(name, run_id)
        if record is None:
            continue
        if record["status"] != PARKED:
            raise ValidationError(
                f"run {run_id} of saga {name} is {record['status']}, not parked: only a "
                "parked run is resumed (an active one goes on by itself)"
            )
        run = Run.from_record(record)
        again = run.but(refused=False, round=run.round + 1) if run.refused else run
        with handle.transaction(f"saga/{name}/resume") as tx:
            tx.update(
                name,
                run_id,
                expected_version=record.version,
                status=COMPENSATING,
                attempts=0,
                next_at=clock.time_s(),
                data=again.data(),
                reason=f"resumed after: {run.reason}" if run.reason else None,
            )
        return next(r for r in listed(system, name) if r.id == run_id)
    raise ValidationError(f"no run {run_id} in any saga of the charter")


__all__ = ["ENDED", "Listed", "counts", "listed", "resume", "table"]
