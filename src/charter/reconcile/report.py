"""One copy checked against its owner's current public state, on the copy's fields: the
differences found by digests (charter.reconcile.compare), each classified
(charter.reconcile.classify), in a report that names the copy, its owner and team, the
ids by kind and the time it took."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from charter import clock
from charter.errors import CharterError, Error, Problem
from charter.model import Copy
from charter.reconcile.classify import DRIFT, KINDS, Finding, classify
from charter.reconcile.compare import Sides, differences, incremental
from charter.system import System
from charter.values import now_text

BUDGET_S = 30.0  # how long one check may take, by default
MAX_DIFFS = 10_000  # how many differences one check collects, by default
SAMPLE = 10  # ids of each kind a report prints
CLASSIFIERS = 6  # differences read again at once (a PostgreSQL store's pool holds 10)


@dataclass
class Report:
    """A copy against its owner, as found at `checked_at`."""

    copy: str
    of: str
    owner: str
    team: str
    context: str
    window_s: float
    checked_at: str
    findings: list[Finding] = field(default_factory=list)
    took_s: float = 0.0
    complete: bool = True  # False: stopped by the budget or --max-diffs (then `left` ranges)
    left: int = 0
    ranges: int = 0  # ranges whose digests were compared
    rows: int = 0  # rows read to tell the ids apart
    incremental: bool = False  # from the buckets the databases keep (Store.bucket_digest)
    error: str = ""  # a store or the bus failed: nothing is known

    @property
    def drift(self) -> list[Finding]:
        return [f for f in self.findings if f.drift]

    @property
    def counts(self) -> dict[str, int]:
        found = Counter(f.kind for f in self.findings)
        return {kind: found[kind] for kind in KINDS if found[kind]}

    @property
    def clean(self) -> bool:
        """No drift, and the whole copy was looked at."""
        return not self.error and self.complete and not self.drift

    def ids(self, kind: str) -> list[str]:
        return [f.id for f in self.findings if f.kind == kind]

    def as_json(self) -> dict[str, Any]:
        return {
            "copy": self.copy,
            "of": self.of,
            "owner": self.owner,
            "team": self.team,
            "in": self.context,
            "window_s": self.window_s,
            "checked_at": self.checked_at,
            "took_s": round(self.took_s, 3),
            "complete": self.complete,
            "left": self.left,
            "ranges": self.ranges,
            "rows": self.rows,
            "incremental": self.incremental,
            "drift": len(self.drift),
            "counts": self.counts,
            "findings": [f.as_json() for f in self.findings],
            "error": self.error or None,
        }


def check(
    system: System,
    copy: Copy,
    budget_s: float = BUDGET_S,
    max_diffs: int = MAX_DIFFS,
    incremental_digests: bool = False,
) -> Report:
    """`copy` against its owner; a store that fails gives a report with its error. With
    `incremental_digests`, from the buckets both databases keep (built on the first such
    check): what a write with triggers turned off changed, only a full check finds."""
    charter = system.charter
    entity = charter.entities[copy.of]
    report = Report(
        copy.name,
        copy.of,
        entity.owner,
        charter.contexts[entity.owner].team,
        copy.context,
        copy.window_s,
        now_text(),
    )
    started = clock.monotonic()
    try:
        owner, store = system.store(entity.owner), system.store(copy.context)
        sides = Sides(owner, entity, store, copy)
        deadline = started + budget_s
        try:
            search = incremental if incremental_digests else differences
            found = search(sides, deadline, max_diffs)
        finally:
            sides.close()
        now = clock.time_s()
        late: list[str] = []  # ids the budget left unclassified: each a range of one id

        def one(entity_id: str) -> Finding | None:
            if clock.monotonic() > deadline:
                late.append(entity_id)
                return None
            return classify(owner, entity, store, copy, entity_id, now)

        # each id is a few reads on each side: several at once, as a round trip is what
        # they cost (a hundred one after another took longer than the digests)
        with ThreadPoolExecutor(CLASSIFIERS, thread_name_prefix="charter-classify") as pool:
            findings = pool.map(one, sorted(found.ids))
            report.findings = [f for f in findings if f is not None]
        report.complete, report.left = found.complete and not late, found.left + len(late)
        report.ranges, report.rows = found.ranges, found.rows
        report.incremental = incremental_digests
    except Error as exc:
        report.error = str(exc)
    report.took_s = clock.monotonic() - started
    return report


def check_all(
    system: System,
    names: tuple[str, ...] = (),
    budget_s: float = BUDGET_S,
    max_diffs: int = MAX_DIFFS,
    incremental_digests: bool = False,
) -> list[Report]:
    """Each copy named (every copy when none is), in the charter's order."""
    copies = [_copy(system, name) for name in names] or list(system.charter.copies.values())
    return [check(system, copy, budget_s, max_diffs, incremental_digests) for copy in copies]


def _copy(system: System, name: str) -> Copy:
    copies = system.charter.copies
    if name not in copies:
        known = ", ".join(copies) or "none"
        raise CharterError(
            [Problem(str(system.charter.path), 0, f"no copy '{name}'", f"its copies: {known}")]
        )
    return copies[name]


__all__ = ["DRIFT", "Report", "check", "check_all"]
