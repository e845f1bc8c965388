"""What more than one face prints about copies: the status table (`charter status`, the
demo) and a copy's lanes, as rich renders that fit an 80-column terminal."""

from __future__ import annotations

import datetime as dt

from rich import box
from rich.table import Table

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


def seconds(value: float) -> str:
    """A duration as a person writes it: 5s, 2m, 250ms, 1.5m."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if value >= size and value % size == 0:
            return f"{int(value // size)}{unit}"
    if value >= 60:
        return f"{value / 60:.1f}m"
    return f"{value * 1000:g}ms" if 0 < value < 1 else f"{value:g}s"
