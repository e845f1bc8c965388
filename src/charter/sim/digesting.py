"""Incremental digests in the simulated world (issue 10): at some steps along the way
(crashes, faults, a schema change and compaction all about) a copy, and after quiet every
copy, is checked as `charter reconcile` checks it, incrementally and in full, at the same
moment; the two must find the same differences, kind by kind. And on each side, the
buckets kept (Store.bucket_digest after Store.refresh_buckets) must equal the digests
recomputed from the rows (Store.digest over the same groups).

A check reads and changes nothing the rest of the world sees (it only keeps buckets), draws
from a generator of its own and turns the world's crashes off while it runs: a seed runs as
it did before these checks existed."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

from charter import clock
from charter.model import Charter, Copy, Entity
from charter.reconcile import compare, prefixes
from charter.reconcile.classify import classify
from charter.reconcile.report import BUDGET_S, MAX_DIFFS
from charter.sim.checker import Checker
from charter.sim.world import World
from charter.stores import Store
from charter.system import System

T = TypeVar("T")

CHANCE = 0.015  # of a step, that a copy is checked after it (one or two a run)


class Digests:
    """The digest checks of one simulated run."""

    def __init__(self, world: World, checker: Checker, seed: int) -> None:
        self.world, self.checker = world, checker
        self.rng = random.Random(f"digests:{seed}")
        self.checks: list[str] = []  # when each check was made (a test counts them)

    def step(self, charter: Charter, system: System | None) -> None:
        """Perhaps check one copy now, along the way."""
        if system is not None and self.rng.random() < CHANCE:
            copy = self.rng.choice(sorted(charter.copies))
            self.check(charter, system, "along the way", [charter.copies[copy]])

    def final(self, charter: Charter, system: System) -> None:
        self.check(charter, system, "after quiet", list(charter.copies.values()))

    def check(self, charter: Charter, system: System, when: str, copies: list[Copy]) -> None:
        """Each of `copies`: kept equals recomputed on both sides; incremental finds what
        full finds. The world does not crash meanwhile (a check is a reader: its crash would
        only end the check, and drawing for it would change the rest of the run)."""
        chance, self.world.crash_chance = self.world.crash_chance, 0.0
        try:
            for copy in copies:
                self._kept(charter, system, copy, when)
                self._same_findings(system, copy, when)
            self.checks.append(when)
        finally:
            self.world.crash_chance = chance

    def _kept(self, charter: Charter, system: System, copy: Copy, when: str) -> None:
        entity = charter.entities[copy.of]
        fields = [entity.fields[name] for name in copy.fields]
        sides: list[tuple[str, Entity | Copy]] = [(entity.owner, entity), (copy.context, copy)]
        for context, table in sides:
            store = system.store(context)
            ends = store.id_range(table)
            length = store.bucket_length(table, fields)
            if length is None:  # not kept yet: the length an incremental check would keep
                if ends is None:
                    continue
                length = prefixes.first_length(ends[0], ends[1], compare.BUCKETS)
            store.refresh_buckets(table, fields, length)
            kept = store.bucket_digest(table, fields, [""], length)
            whole = store.digest(table, fields, "", length)
            if kept != whole:
                wrong = sorted(k for k in kept.keys() | whole.keys() if kept.get(k) != whole.get(k))
                self.checker.fail(
                    f"{when}: {context}'s buckets of {table.name} on {list(copy.fields)} differ "
                    f"from a recomputation in {len(wrong)} groups, e.g. {wrong[:2]}"
                )
                return

    def _same_findings(self, system: System, copy: Copy, when: str) -> None:
        quick, full = (
            _search(system, copy, compare.incremental),
            _search(system, copy, compare.differences),
        )
        for found in (quick, full):
            if not found[0]:
                self.checker.fail(f"{when}: a check of copy {copy.name} did not end")
                return
        if quick != full:
            mine, theirs = set(quick[1]), set(full[1])
            self.checker.fail(
                f"{when}: copy {copy.name} checked incrementally found {len(mine)} "
                f"differences, in full {len(theirs)}: only incrementally "
                f"{sorted(mine - theirs)[:3]}, only in full {sorted(theirs - mine)[:3]}"
            )


class _InOrder(compare.Sides):
    """Both sides asked one after the other, in this thread: a simulated world runs one
    thing at a time (and threads cost more than a simulated check)."""

    def both(self, ask: Callable[[Store, Entity | Copy], T]) -> tuple[T, T]:
        return ask(self.owner, self.entity), ask(self.store, self.copy)


def _search(
    system: System, copy: Copy, search: Callable[[compare.Sides, float, int], compare.Differences]
) -> tuple[bool, list[tuple[str, str, int | None, int | None]]]:
    """What reconcile.check finds with `search` (compare.incremental or .differences),
    each id classified as it classifies them: whether it ended, and (kind, id, versions)."""
    entity = system.charter.entities[copy.of]
    owner, store = system.store(entity.owner), system.store(copy.context)
    sides = _InOrder(owner, entity, store, copy)
    try:
        found = search(sides, clock.monotonic() + BUDGET_S, MAX_DIFFS)
    finally:
        sides.close()
    now = clock.time_s()
    findings = [classify(owner, entity, store, copy, i, now) for i in sorted(found.ids)]
    seen = [(f.kind, f.id, f.owner_version, f.copy_version) for f in findings if f]
    return found.complete, sorted(seen, key=str)
