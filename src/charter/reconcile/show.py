"""What `charter reconcile` prints: one line per copy, then each copy's differences by
kind (a sample of ids when there are many; both values of a divergent record)."""

from __future__ import annotations

from rich import box
from rich.markup import escape
from rich.table import Table

from charter.reconcile.classify import AHEAD, DIVERGENT, IN_FLIGHT, KINDS
from charter.reconcile.repair import Mended
from charter.reconcile.report import SAMPLE, Report


def table(reports: list[Report]) -> Table:
    grid = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("copy", "of", "owner (team)", "in"):
        grid.add_column(name)
    for name in ("drift", "in flight", "took"):
        grid.add_column(name, justify="right")
    grid.add_column("state", no_wrap=True)
    for report in reports:
        if report.error:
            state = "[bold red]UNKNOWN[/]"
        elif report.drift:
            state = "[bold red]DRIFT[/] " + ", ".join(
                f"{n} {kind}" for kind, n in report.counts.items() if kind != IN_FLIGHT
            )
        elif not report.complete:
            state = "[yellow]INCOMPLETE[/]"
        else:
            state = "[green]OK[/]"
        grid.add_row(
            escape(report.copy),
            escape(report.of),
            escape(f"{report.owner} ({report.team})"),
            escape(report.context),
            str(len(report.drift)),
            str(report.counts.get(IN_FLIGHT, 0)),
            f"{report.took_s:.2f}s",
            state,
        )
    return grid


def details(report: Report) -> list[str]:
    """Lines about one copy's differences and its errors, for under the table."""
    lines = []
    if report.error:
        lines.append(f"[bold red]error[/] {escape(report.copy)}: {escape(report.error)}")
    for kind in KINDS:
        ids = report.ids(kind)
        if not ids:
            continue
        shown = ", ".join(ids[:SAMPLE]) + (
            f" … ({len(ids) - SAMPLE} more)" if len(ids) > SAMPLE else ""
        )
        lines.append(f"{escape(report.copy)} {kind}: {escape(shown)}")
    for finding in report.findings:
        if finding.kind == DIVERGENT and len(lines) < 4 * SAMPLE:
            mine, theirs = repr(finding.owner_values), repr(finding.copy_values)
            lines.append(
                f"  {escape(finding.id)} v{finding.owner_version}: the owner has "
                f"{escape(mine)}, the copy {escape(theirs)} "
                "(written past charter: a single-writer violation)"
            )
    if not report.complete:
        ranges = f"{report.left} range{'s' if report.left != 1 else ''}"
        lines.append(
            f"[yellow]{escape(report.copy)}: stopped before the end[/] ({ranges} "
            "left; the budget or --max-diffs ran out): run again with more"
        )
    return lines


def repaired(done: Mended) -> list[str]:
    """What a repair published, whether the copy applied it, and what the check after it
    found."""
    name = escape(done.before.copy)
    sent = ", ".join(f"{n} {kind}" for kind, n in done.repair.published.items()) or "nothing"
    lines = [f"{name}: repaired from '{escape(done.before.owner)}': published {sent}"]
    if not done.applied:
        lines.append(
            f"[yellow]{name}: its projector has not applied the repair yet[/] (is `charter "
            f"run` running for context '{escape(done.before.context)}'?); it will when it runs"
        )
    for finding in done.repair.left:
        why = " (the owner went back: `--repair --accept-owner` moves the copy back to it)"
        lines.append(
            f"{name}: left alone: {escape(finding.id)} ({finding.kind})"
            + (why if finding.kind == AHEAD else "")
        )
    after = done.after
    kinds = ", ".join(f"{n} {kind}" for kind, n in after.counts.items())
    state = "clean" if after.clean else f"still {len(after.drift)} drifted: {kinds}"
    lines.append(f"{name}: checked again: {escape(state)}")
    return lines
