"""What more than one face prints: the status table (`charter status`, the demo), how the
copies kept their promise, a copy's lanes and a record's history (`charter history`, the
demo), as rich renders that fit an 80-column terminal."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
from rich import box
from rich.markup import escape
from rich.table import Table

from charter.records import OutboxRow
from charter.status import UNKNOWN, CopyStatus


def status_table(rows: list[CopyStatus]) -> Table:
    """The status of every copy as a table that fits an 80-column terminal."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("copy", "of", "owner", "in"):
        table.add_column(name)
    for name in ("window", "lag events", "lag s", "last applied", "parked"):
        table.add_column(name, justify="right")
    table.add_column("state", no_wrap=True)
    colour = {
        "OK": "green",
        "BREACH": "bold red",
        "NEVER_SYNCED": "yellow",
        "DEGRADED": "red",
        UNKNOWN: "bold red",
        "GAP": "bold red",
        "DRIFT": "bold red",
    }
    now = dt.datetime.now(dt.UTC)
    for row in rows:
        applied = "never"
        if row.last_applied_at:
            then = dt.datetime.fromisoformat(row.last_applied_at.replace("Z", "+00:00"))
            applied = f"{seconds(round((now - then).total_seconds(), 1))} ago"
        known = row.state != UNKNOWN
        table.add_row(
            row.copy,
            row.of,
            row.owner,
            row.context,
            seconds(row.window_s),
            str(row.lag_events) if known else "?",
            f"{row.lag_s:.2f}" if known else "?",
            applied,
            "?"
            if not known
            else str(row.parked)
            if row.parked == 0
            else f"[bold red]{row.parked}[/]",
            f"[{colour[row.state]}]{row.state}[/]",
        )
    return table


def kept_table(rows: list[CopyStatus]) -> Table | None:
    """How each copy kept its promise: p50 and p99 over the last 5 minutes, the share of
    events applied within its window over the last hour and day (None: no copy has
    applied anything in a day)."""
    shown = [row for row in rows if row.within_window_1d is not None]
    if not shown:
        return None
    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        title="promise kept (owner commit → copy)",
        title_justify="left",
    )
    table.add_column("copy")
    for name in ("p50 (5 min)", "p99 (5 min)", "in window (1 h)", "(1 day)"):
        table.add_column(name, justify="right")
    for row in shown:
        hour = row.within_window_1h
        table.add_row(
            row.copy,
            measured(row.latency_p50_s),
            measured(row.latency_p99_s),
            "-" if hour is None else f"{percent(hour)} within {seconds(row.window_s)}",
            percent(row.within_window_1d),
        )
    return table


def percent(share: float | None) -> str:
    """A share as a percentage that never rounds up to 100 % or down to 0 % when it is not."""
    if share is None:
        return "-"
    value = share * 100
    if 0 < share < 1:
        value = min(max(value, 0.1), 99.9)
    return f"{value:.1f} %"


def measured(value: float | None) -> str:
    """A measured duration in three figures: 12.3ms, 1.52s, 2.5m."""
    if value is None:
        return "-"
    if value < 0.9995:
        return f"{value * 1000:.3g}ms"
    if value < 59.95:
        return f"{value:.3g}s"
    return f"{value / 60:.3g}m"


def lanes_line(row: CopyStatus) -> str:
    """Where each lane of a copy is, the slowest marked: the one holding the copy back."""
    known = [lane.position for lane in row.lanes if lane.position is not None]
    slowest = min(known) if len(known) == len(row.lanes) and min(known) < max(known) else None
    parts = []
    for lane in row.lanes:
        where = "never ran" if lane.position is None else f"at {lane.position}"
        mark = " (slowest)" if lane.position is not None and lane.position == slowest else ""
        parts.append(f"{lane.lane} {where}{mark}")
    return f"{row.copy} lanes: {', '.join(parts)}; bus head {row.lanes[0].head}"


def ago(moment: str, now: dt.datetime | None = None) -> str:
    """How long ago an ISO moment was: '3s ago', '2.5m ago'."""
    now = now or dt.datetime.now(dt.UTC)
    then = dt.datetime.fromisoformat(moment.replace("Z", "+00:00"))
    return f"{seconds(max(0.0, round((now - then).total_seconds(), 1)))} ago"


def drift_line(row: CopyStatus) -> str | None:
    """A copy's last reconciliation, for under the status table (None: never checked)."""
    check = row.last_check
    if check is None:
        return None
    when = f"checked {ago(check.checked_at)}, took {measured(check.took_s)}"
    if check.error:
        return f"{row.copy} reconciliation: [bold red]failed[/] ({when}): {escape(check.error)}"
    flying = check.counts.get("in_flight", 0)
    found = ", ".join(f"{n} {k}" for k, n in check.counts.items() if k != "in_flight")
    text = f"[bold red]drift {check.rows}[/]: {found}" if check.rows else "[green]no drift[/]"
    text += f" ({flying} in flight)" if flying else ""
    if not check.complete:
        text += " [yellow](stopped by its budget before the end)[/]"
    if check.repaired:
        mended = ", ".join(f"{n} {kind}" for kind, n in check.repaired.items())
        text += f"; repaired {mended} before this check"
    line = f"{row.copy} reconciliation: {text} ({when})"
    for kind, ids in check.sample.items():
        more = check.counts.get(kind, 0) - len(ids)
        line += f"\n  {kind}: {escape(', '.join(ids))}" + (f" … ({more} more)" if more else "")
    if check.rows:
        line += f"\n  see `charter reconcile {row.copy}`; `--repair` to mend it from its owner"
    return line


def seconds(value: float) -> str:
    """A duration as a person writes it: 5s, 2m, 250ms, 1.5m."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if value >= size and value % size == 0:
            return f"{int(value // size)}{unit}"
    if value >= 60:
        return f"{value / 60:.1f}m"
    return f"{value * 1000:g}ms" if 0 < value < 1 else f"{value:g}s"


def states_of(rows: list[OutboxRow]) -> list[dict[str, Any] | None]:
    """The public state each version's event carried (None for a delete)."""
    return [orjson.loads(r.body).get("data") or None for r in rows]


def history_table(
    rows: list[OutboxRow], states: list[dict[str, Any] | None], **options: Any
) -> Table:
    """A record's history, one row per version: its public values (created: each value;
    updated: before → after), its private fields by name only, who and when."""
    table = Table("version", "op", "public values", "private", "by", "committed at", **options)
    before: dict[str, Any] = {}
    for r, state in zip(rows, states, strict=True):
        after = state or {}
        if r.op == "created":
            shown = [f"{name}={after.get(name)!r}" for name in r.changed]
        else:
            shown = [f"{name}: {before.get(name)!r} → {after.get(name)!r}" for name in r.changed]
        private = ", ".join(r.private) + " (changed)" if r.private else ""
        table.add_row(
            str(r.version), r.op, escape("\n".join(shown)), private, r.actor or "", r.time
        )
        before = after
    return table
