"""`charter audit` in a terminal: what was read, who was seen, then the findings by kind."""

from __future__ import annotations

from rich import box
from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from charter.audit.findings import (
    CROSS_JOIN,
    CROSS_READ,
    KINDS,
    NON_OWNER_WRITE,
    SHARED_TABLE,
    UNKNOWN,
    UNOWNED,
    WOULD_REFUSE,
    Report,
)

TITLES = {
    NON_OWNER_WRITE: "writes by non-owners",
    WOULD_REFUSE: "what charter apply would refuse (pgAudit object audit)",
    SHARED_TABLE: "shared tables (written by more than one)",
    CROSS_READ: "reads of another context's tables",
    CROSS_JOIN: "statements joining the tables of several contexts",
    UNOWNED: "tables no context owns",
    UNKNOWN: "statements PostgreSQL's parser refused (counted as unknown)",
}


def render(report: Report) -> list[RenderableType]:
    parts: list[RenderableType] = []
    parsed = report.statements - report.unknown
    parts.append(
        Text(
            f"{report.statements} statements read from {', '.join(report.sources) or 'nothing'}: "
            f"{parsed} parsed, {report.unknown} unknown"
        )
    )
    sessions = Table("who", "roles", "applications", "statements", box=box.SIMPLE_HEAD)
    sessions.title, sessions.title_justify = "sessions", "left"
    for label, doc in sorted(report.sessions.items()):
        context = "" if doc["context"] else " (no context)"
        sessions.add_row(
            escape(label + context),
            escape(", ".join(doc["roles"])),
            escape(", ".join(doc["applications"])),
            str(doc["statements"]),
        )
    parts.append(sessions)
    if not report.findings:
        parts.append(Text("no findings: the traffic keeps to the charter", style="green"))
        return parts
    for kind in KINDS:
        found = report.of(kind)
        if not found:
            continue
        table = Table("finding", "first seen", "last seen", box=box.SIMPLE_HEAD)
        table.title, table.title_justify = f"{TITLES[kind]}: {len(found)}", "left"
        table.add_column("example", overflow="fold")
        for f in found:
            table.add_row(
                Text(f.message, style="red" if kind != UNKNOWN else "yellow"),
                escape(f.first[:19]),
                escape(f.last[:19]),
                escape(f.sample[:160]),
            )
        parts.append(table)
    return parts
