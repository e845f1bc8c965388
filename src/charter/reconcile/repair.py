"""Repair, source wins, through the normal path: for each drifted id, the owner's current
state is published on the bus again (its newest event from the owner's history, as a fill
publishes a copy's records, for just those ids), and an id the owner does not hold is
tombstoned (its delete, or one made for it). The copy's projector mends its copy from them
in its own transaction, under its own role (Store.mend, records.Mend); nothing writes the
owner's store, and nothing here writes the copy's.

A copy ahead of its owner (the owner restored from an old backup) is moved back only when
the operator accepts the owner's state (`accept_owner`): its repair replaces exactly the
version the copy held, and nothing newer."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from charter import clock
from charter.events import Event
from charter.ids import uuid7
from charter.model import Copy
from charter.reconcile.classify import AHEAD, DIVERGENT, EXTRA, MISSING, STALE, Finding
from charter.reconcile.report import BUDGET_S, MAX_DIFFS, Report, check
from charter.records import OutboxRow, repair_id
from charter.system import System
from charter.values import now_text

REPAIRABLE = (MISSING, STALE, EXTRA, DIVERGENT, AHEAD)
BY_DEFAULT = frozenset({MISSING, STALE, EXTRA, DIVERGENT})  # `charter reconcile --repair`
ACTOR = "charter reconcile"  # who a tombstone made for an id the owner never had names


@dataclass
class Repair:
    """What one repair published for a copy: events by kind, where the bus was after them
    (the copy is mended once its projector has applied that far), and what it left alone."""

    copy: str
    published: dict[str, int] = field(default_factory=dict)
    head: int = 0
    left: list[Finding] = field(default_factory=list)  # drift of a kind not asked for

    @property
    def count(self) -> int:
        return sum(self.published.values())


def repair(
    system: System, report: Report, kinds: Iterable[str] = BY_DEFAULT, accept_owner: bool = False
) -> Repair:
    """Publish the owner's state for each drifted id of `report` whose kind is in `kinds`;
    ahead with `accept_owner`, and only then."""
    copy = system.charter.copies[report.copy]
    entity = system.charter.entities[copy.of]
    owner = system.store(entity.owner)
    allowed = set(kinds) | {AHEAD} if accept_owner else set(kinds) - {AHEAD}
    token = clock.token(6)
    done = Repair(copy.name)
    rows: list[OutboxRow] = []
    published: Counter[str] = Counter()
    for finding in report.drift:
        if finding.kind not in allowed:
            done.left.append(finding)
            continue
        history = owner.history(entity.name, finding.id)
        row = _row(copy, entity.owner, finding, history[-1] if history else None, token)
        if row is not None:
            rows.append(row)
            published[finding.kind] += 1
        else:
            done.left.append(finding)
    for start in range(0, len(rows), 1000):
        system.bus.publish(rows[start : start + 1000])
    done.published = dict(published)
    done.head = system.bus.head(entity.name)
    return done


def _row(
    copy: Copy, owner: str, finding: Finding, newest: OutboxRow | None, token: str
) -> OutboxRow | None:
    """The event that mends `finding`: the owner's newest event of the record, or a delete
    made for it when the owner holds no delete the copy would take."""
    over = finding.copy_version if finding.kind == AHEAD else None
    if finding.kind == EXTRA:
        held = finding.copy_version or 0
        if newest is not None and newest.op == "deleted" and newest.version > held:
            return replace(newest, event_id=repair_id(newest.event_id, token))
        return _tombstone(copy, owner, finding.id, held, token)
    if newest is None or newest.op == "deleted" or newest.version != finding.owner_version:
        return None  # the owner changed it since the check: its own event is on its way
    return replace(newest, event_id=repair_id(newest.event_id, token, over))


def _tombstone(copy: Copy, owner: str, entity_id: str, version: int, token: str) -> OutboxRow:
    """A delete of an id the owner does not have at a version the copy takes, from the
    owner (so its projector applies it), under a repair's id."""
    event = Event(
        uuid7(), copy.of, entity_id, version, "deleted", (), None, owner, now_text(), ACTOR
    )
    return replace(OutboxRow.of(event, event.encode()), event_id=repair_id(event.id, token))


def wait_applied(system: System, copy: Copy, head: int, timeout: float) -> bool:
    """Whether the copy's projector applies the bus up to `head` within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    store = system.store(copy.context)
    while True:
        checkpoint = store.checkpoint(copy)
        if checkpoint is not None and checkpoint.position >= head:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


@dataclass
class Mended:
    """A copy checked, repaired, and checked again once its projector applied the repair
    (or the wait ran out: `applied` False, and `after` says what is still there)."""

    before: Report
    repair: Repair
    applied: bool
    after: Report

    def as_json(self) -> dict[str, object]:
        return self.after.as_json() | {
            "before": self.before.as_json(),
            "repair": {
                "published": self.repair.published,
                "applied": self.applied,
                "left": [f.id for f in self.repair.left],
            },
        }


def mend(
    system: System,
    report: Report,
    wait_s: float,
    kinds: Iterable[str] = BY_DEFAULT,
    accept_owner: bool = False,
    budget_s: float = BUDGET_S,
    max_diffs: int = MAX_DIFFS,
) -> Mended:
    """Repair what `report` found, wait up to `wait_s` for the copy's projector (`charter
    run`) to apply it, and check the copy again."""
    copy = system.charter.copies[report.copy]
    done = repair(system, report, kinds, accept_owner)
    applied = done.count == 0 or wait_applied(system, copy, done.head, wait_s)
    return Mended(report, done, applied, check(system, copy, budget_s, max_diffs))
