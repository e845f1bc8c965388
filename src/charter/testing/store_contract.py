"""What every `Store` promises, as pytest test cases: subclass `StoreContract` and give
`make_store`. Each test uses a fresh owner store (context `people`) and, where it needs
one, a fresh copy store (context `mailing`)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from charter import clock, digests, latency
from charter.digests import Digest
from charter.errors import ConstraintError, FencedError, OutOfTimeError, SchemaChangeError
from charter.events import Event
from charter.ids import uuid7
from charter.lanes import PARTITIONS, Lane, partition
from charter.model import Charter, Copy, Entity
from charter.owner import Transaction
from charter.records import Drift, Mend, Parked, RecordedCommand
from charter.stores.base import Store
from charter.testing import world


class StoreContract:
    """The Store protocol, test by test. Subclasses implement `make_store`."""

    def make_store(self, name: str) -> Store:
        """A new, empty store; `name` is fresh for every call (a file, a schema, …)."""
        raise NotImplementedError

    def drop_store(self, store: Store) -> None:
        """Remove what `make_store` made, after the test (the store is closed already)."""

    # -- fixtures ---------------------------------------------------------------

    @pytest.fixture
    def charter(self) -> Charter:
        return world.charter(f"c{uuid7()[-12:]}")

    def _open(self, charter: Charter, context: str) -> Iterator[Store]:
        store = self.make_store(f"{context}_{uuid7()[-12:]}")
        try:
            store.prepare(charter, context)
            yield store
        finally:
            store.close()
            self.drop_store(store)

    @pytest.fixture
    def owner(self, charter: Charter) -> Iterator[Store]:
        yield from self._open(charter, "people")

    @pytest.fixture
    def copies(self, charter: Charter) -> Iterator[Store]:
        yield from self._open(charter, "mailing")

    @staticmethod
    def person(charter: Charter) -> Entity:
        return charter.entities["Person"]

    @staticmethod
    def copy(charter: Charter) -> Copy:
        return charter.copies["mail_people"]

    @staticmethod
    def write(store: Store, charter: Charter, work: Any) -> list[Event]:
        """Run `work(tx)` in one owner transaction of `store`; the events it committed."""
        with store.transaction() as writes:
            tx = Transaction(charter, "people", writes)
            work(tx)
            events = tx._commit_events()
        return events

    # -- schema -----------------------------------------------------------------

    def test_prepare_twice_changes_nothing(self, owner: Store, charter: Charter) -> None:
        self.write(owner, charter, lambda tx: tx.create("Person", email="a@x.org", name="A"))
        owner.prepare(charter, "people")
        assert [r["email"] for r in owner.rows(self.person(charter))] == ["a@x.org"]

    def test_a_field_type_changed_on_a_store_with_rows_is_refused(
        self, owner: Store, charter: Charter
    ) -> None:
        self.write(owner, charter, lambda tx: tx.create("Person", email="a@x.org", name="A"))
        changed = world.charter(charter.name, "name:  {type: integer}")
        with pytest.raises(SchemaChangeError, match=r"Person\.name changed type"):
            owner.prepare(changed, "people")

    # -- owner transactions -----------------------------------------------------

    def test_a_committed_change_and_its_event_are_there_together(
        self, owner: Store, charter: Charter
    ) -> None:
        person = self.person(charter)
        events = self.write(
            owner, charter, lambda tx: tx.create("Person", email="a@x.org", name="A")
        )
        (event,) = events
        row = owner.fetch(person, event.entity_id)
        assert row is not None and row["version"] == 1 and row["name"] == "A"
        (out,) = owner.outbox(0, 10)
        assert (out.event_id, out.entity_id, out.version, out.op) == (
            event.id,
            event.entity_id,
            1,
            "created",
        )
        assert out.body == event.encode()
        assert [h.version for h in owner.history("Person", event.entity_id)] == [1]

    def test_a_transaction_that_raises_leaves_nothing(self, owner: Store, charter: Charter) -> None:
        def fail(tx: Transaction) -> None:
            tx.create("Person", email="a@x.org", name="A")
            tx._commit_events()  # its events are appended too: they must go as well
            raise RuntimeError("the caller gives up")

        with pytest.raises(RuntimeError):
            self.write(owner, charter, fail)
        assert list(owner.rows(self.person(charter))) == []
        assert owner.outbox(0, 10) == []

    def test_outbox_is_in_commit_order_and_pages(self, owner: Store, charter: Charter) -> None:
        for n in range(5):
            self.write(
                owner, charter, lambda tx, n=n: tx.create("Person", email=f"{n}@x", name="N")
            )
        rows = owner.outbox(0, 100)
        seqs = [r.seq for r in rows]
        assert len(rows) == 5 and seqs == sorted(seqs) and len(set(seqs)) == 5
        assert owner.outbox(seqs[1], 2) == rows[2:4]

    def test_update_and_delete_what_the_transaction_read(
        self, owner: Store, charter: Charter
    ) -> None:
        """A transaction reads a record (locking it where the database locks), then changes
        it at the version it read; later reads in the transaction see the change."""
        person = self.person(charter)
        (created,) = self.write(
            owner, charter, lambda tx: tx.create("Person", email="a@x", name="A")
        )
        with owner.transaction() as writes:
            row = writes.fetch(person, created.entity_id)
            assert row is not None
            assert writes.update(person, created.entity_id, 1, {**row, "version": 2, "name": "B"})
            again = writes.fetch(person, created.entity_id)
            assert again is not None and (again["version"], again["name"]) == (2, "B")
        row = owner.fetch(person, created.entity_id)
        assert row is not None and (row["version"], row["name"]) == (2, "B")
        with owner.transaction() as writes:
            assert writes.fetch(person, created.entity_id) is not None
            assert writes.delete(person, created.entity_id, 2)
            assert writes.fetch(person, created.entity_id) is None
        assert owner.fetch(person, created.entity_id) is None

    def test_unique_fields_are_refused_twice(self, owner: Store, charter: Charter) -> None:
        self.write(owner, charter, lambda tx: tx.create("Person", email="a@x", name="A"))
        with pytest.raises(ConstraintError, match="email"):
            self.write(owner, charter, lambda tx: tx.create("Person", email="a@x", name="B"))
        assert len(list(owner.rows(self.person(charter)))) == 1
        assert len(owner.outbox(0, 10)) == 1

    def test_no_overlap_refuses_an_intersecting_range(self, owner: Store, charter: Charter) -> None:
        def book(room: str, start: str, end: str) -> Any:
            return lambda tx: tx.create(
                "Booking", room=room, start=f"2026-01-01T{start}Z", end=f"2026-01-01T{end}Z"
            )

        self.write(owner, charter, book("blue", "09:00:00", "10:00:00"))
        self.write(owner, charter, book("blue", "10:00:00", "11:00:00"))  # touching is fine
        self.write(owner, charter, book("red", "09:30:00", "10:30:00"))  # another room
        with pytest.raises(ConstraintError, match="no_overlap"):
            self.write(owner, charter, book("blue", "09:30:00", "10:30:00"))
        assert len(list(owner.rows(charter.entities["Booking"]))) == 3

    def test_rows_filter_by_fields_in_id_order(self, owner: Store, charter: Charter) -> None:
        for n in range(4):
            self.write(
                owner,
                charter,
                lambda tx, n=n: tx.create("Person", email=f"{n}@x", name="AB"[n % 2]),
            )
        rows = list(owner.rows(self.person(charter), {"name": "A"}))
        assert [r["email"] for r in rows] == ["0@x", "2@x"]
        everyone = [r["id"] for r in owner.rows(self.person(charter))]
        assert everyone == sorted(everyone)

    def test_one_writer_at_a_time_loses_no_update(self, owner: Store, charter: Charter) -> None:
        """Threads incrementing one record through read-then-update: none is lost."""
        person = self.person(charter)
        (created,) = self.write(
            owner, charter, lambda tx: tx.create("Person", email="a@x", name="0")
        )
        lost: list[int] = []

        def bump() -> None:
            for _ in range(20):
                while True:
                    with owner.transaction() as writes:
                        row = writes.fetch(person, created.entity_id)
                        assert row is not None
                        new = {
                            **row,
                            "version": row["version"] + 1,
                            "name": str(int(row["name"]) + 1),
                        }
                        if writes.update(person, created.entity_id, row["version"], new):
                            break
                    lost.append(1)

        threads = [threading.Thread(target=bump) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        row = owner.fetch(person, created.entity_id)
        assert row is not None and row["name"] == "80" and row["version"] == 81

    # -- relay side ---------------------------------------------------------------

    def test_pending_until_relayed_and_again_after_a_rewind(
        self, owner: Store, charter: Charter
    ) -> None:
        for n in range(3):
            self.write(
                owner, charter, lambda tx, n=n: tx.create("Person", email=f"{n}@x", name="N")
            )
        first = owner.pending(2)
        assert len(first) == 2
        assert owner.pending(10, first) == owner.outbox(first[-1].seq, 10)  # read ahead
        assert owner.unrelayed("Person").events == 3
        owner.mark_relayed(first)
        rest = owner.pending(10)
        assert [r.seq for r in rest] == [owner.outbox(0, 10)[2].seq]
        owner.mark_relayed(rest)
        assert owner.pending(10) == [] and owner.unrelayed("Person").events == 0
        assert owner.unrelayed("Person").oldest is None
        owner.rewind(0)
        assert len(owner.pending(10)) == 3

    def test_current_is_each_live_records_newest_event(
        self, owner: Store, charter: Charter
    ) -> None:
        ids: list[str] = []

        def make(tx: Transaction) -> None:
            for n in range(4):
                ids.append(tx.create("Person", email=f"{n}@x", name="N").id)

        self.write(owner, charter, make)
        self.write(owner, charter, lambda tx: tx.update("Person", ids[0], name="M"))
        self.write(owner, charter, lambda tx: tx.delete("Person", ids[1]))
        current = owner.current(self.person(charter))
        assert [(r.entity_id, r.version) for r in current] == [
            (ids[0], 2),
            (ids[2], 1),
            (ids[3], 1),
        ]
        assert [r.entity_id for r in owner.current(self.person(charter), ids[0], 1)] == [ids[2]]

    # -- copy side ------------------------------------------------------------------

    def test_a_copy_takes_only_newer_versions(self, copies: Store, charter: Charter) -> None:
        copy, entity_id = self.copy(charter), uuid7()
        copies.apply(copy, [(1, world.event(entity_id, 2, name="Two"))], [], 1)
        copies.apply(copy, [(2, world.event(entity_id, 1, op="created", name="One"))], [], 2)
        copies.apply(copy, [(3, world.event(entity_id, 2, name="Again"))], [], 3)
        (row,) = copies.copy_rows(copy)
        assert (row["id"], row["version"], row["name"]) == (entity_id, 2, "Two")
        assert row["synced_at"]

    def test_a_deleted_record_never_comes_back(self, copies: Store, charter: Charter) -> None:
        copy, entity_id = self.copy(charter), uuid7()
        copies.apply(copy, [(1, world.event(entity_id, 1, op="created"))], [], 1)
        copies.apply(copy, [(2, world.event(entity_id, 3, op="deleted"))], [], 2)
        copies.apply(copy, [(3, world.event(entity_id, 2))], [], 3)  # late
        assert list(copies.copy_rows(copy)) == []
        copies.backfill(copy, iter([(entity_id, 2, {"name": "Old", "email": "o@x"})]), 3)
        assert list(copies.copy_rows(copy)) == []

    def test_the_checkpoint_only_moves_forward(self, copies: Store, charter: Charter) -> None:
        copy = self.copy(charter)
        assert copies.checkpoint(copy) is None
        copies.backfill(copy, iter(()), 0)
        copies.apply(copy, [(5, world.event(uuid7(), 1, op="created"))], [], 5)
        checkpoint = copies.checkpoint(copy)
        assert checkpoint is not None and checkpoint.position == 5
        assert checkpoint.fields == copy.fields and checkpoint.applied_at
        copies.apply(copy, [], [], 3)
        assert copies.checkpoint(copy).position == 5  # type: ignore[union-attr]

    def test_parked_events_are_kept_once_each(self, copies: Store, charter: Charter) -> None:
        copy = self.copy(charter)
        copies.backfill(copy, iter(()), 0)
        bad = Parked(copy.name, "some-id", 3, "event-1", 7, "event event-1: bad", b"{}")
        copies.apply(copy, [], [bad], 7)
        copies.apply(copy, [], [bad], 7)  # a second process parked it too
        (kept,) = copies.parked(copy)
        assert (kept.entity_id, kept.version, kept.event_id, kept.position) == (
            "some-id",
            3,
            "event-1",
            7,
        )
        assert kept.reason == "event event-1: bad" and kept.body == b"{}" and kept.parked_at

    def test_a_backfill_writes_the_owners_rows_and_lowers_the_checkpoint(
        self, copies: Store, charter: Charter
    ) -> None:
        copy, a, b = self.copy(charter), uuid7(), uuid7()
        copies.apply(copy, [(9, world.event(a, 5, name="Five"))], [], 9)
        rows = iter(
            [(a, 4, {"name": "Four", "email": "f@x"}), (b, 1, {"name": "B", "email": "b@x"})]
        )
        assert copies.backfill(copy, rows, 6) == 2
        got = {r["id"]: (r["version"], r["name"]) for r in copies.copy_rows(copy)}
        assert got == {a: (5, "Five"), b: (1, "B")}  # a newer version stays
        assert copies.checkpoint(copy).position == 6  # type: ignore[union-attr]
        (only_b,) = copies.copy_rows(copy, {"id": b})
        assert only_b["email"] == "b@x"

    def test_lanes_carry_the_copy_as_far_as_the_slowest(
        self, copies: Store, charter: Charter
    ) -> None:
        copy = self.copy(charter)
        copies.backfill(copy, iter(()), 0)
        one, two = Lane(1, 2), Lane(2, 2)
        copies.apply(copy, [(4, world.event(uuid7(), 1, op="created"))], [], 4, one)
        assert copies.checkpoint(copy).position == 0  # type: ignore[union-attr]
        assert copies.checkpoint(copy, one).position == 4  # type: ignore[union-attr]
        copies.apply(copy, [], [], 8, two)
        assert copies.checkpoint(copy).position == 4  # type: ignore[union-attr]
        assert copies.checkpoint(copy, two).position == 8  # type: ignore[union-attr]
        lanes = {(str(x.lane), x.position) for x in copies.lanes(copy)}
        assert lanes == {("1/2", 4), ("2/2", 8)}
        copies.apply(copy, [], [], 2, one)  # a lane's checkpoint only moves forward too
        assert copies.checkpoint(copy, one).position == 4  # type: ignore[union-attr]

    # -- reconciliation: digests inside the database ------------------------------

    def test_digests_of_an_owner_and_its_copy_agree(
        self, owner: Store, copies: Store, charter: Charter
    ) -> None:
        person, copy = self.person(charter), self.copy(charter)
        fields = [person.fields[name] for name in copy.fields]
        assert owner.id_range(person) is None
        assert owner.digest(person, fields, "", 0) == {}
        events = self.write(
            owner,
            charter,
            lambda tx: [tx.create("Person", email=f"{n}@x.org", name=f"P{n}") for n in range(5)],
        )
        copies.backfill(copy, iter(()), 0)
        copies.apply(copy, [(n + 1, e) for n, e in enumerate(events)], [], len(events))
        ids = sorted(e.entity_id for e in events)
        assert owner.id_range(person) == copies.id_range(copy) == (ids[0], ids[-1])
        whole = owner.digest(person, fields, "", 0)
        assert whole == copies.digest(copy, fields, "", 0) and list(whole) == [""]
        assert whole[""].count == 5
        rows = owner.digest_rows(person, fields, [""])
        assert rows == copies.digest_rows(copy, fields, [""])
        assert [r[0] for r in rows] == ids and all(r[1] == 1 for r in rows)
        assert whole[""].total == sum(r[2] for r in rows) % 2**64
        kinds = digests.codes(fields)
        expected = [
            digests.row_hash(kinds, [e.entity_id, 1, *((e.state or {})[f] for f in copy.fields)])
            for e in sorted(events, key=lambda e: e.entity_id)
        ]
        assert [r[2] for r in rows] == expected  # the database computes charter.digests' hash
        assert copies.tombstone(copy, ids[0]) is None
        # a store's own hash, where it has one: the same rows digest alike on both sides
        native = owner.native_hash(person, fields)
        if native is not None and native == copies.native_hash(copy, fields):
            mine = owner.digest_under(person, fields, [""], 0, native=True)
            assert mine == copies.digest_under(copy, fields, [""], 0, native=True)
            assert mine[""].count == 5 and mine != whole

    def test_a_digest_groups_rows_by_a_prefix_of_the_id(
        self, owner: Store, charter: Charter
    ) -> None:
        person = self.person(charter)
        fields = list(person.fields.values())[:2]
        self.write(
            owner,
            charter,
            lambda tx: [tx.create("Person", email=f"{n}@x.org", name=f"P{n}") for n in range(6)],
        )
        rows = owner.digest_rows(person, fields, [""])
        ids, hashes = [r[0] for r in rows], {r[0]: r[2] for r in rows}
        each = owner.digest(person, fields, "", 36)  # a UUID's whole length: a group an id
        assert {k: (d.count, d.total) for k, d in each.items()} == {i: (1, hashes[i]) for i in ids}
        length = next(n for n in range(36) if ids[0][n] != ids[-1][n]) + 1  # ids sorted
        shared = ids[0][: length - 1]
        groups = owner.digest(person, fields, shared, length)
        assert sum(d.count for d in groups.values()) == 6 and len(groups) >= 2
        for key, found in groups.items():
            inside = [i for i in ids if i.startswith(key)]
            assert len(key) == length and found.count == len(inside)
            assert found.total == sum(hashes[i] for i in inside) % 2**64
        assert owner.digest(person, fields, ids[2], 40) == {ids[2]: each[ids[2]]}
        # several prefixes in one query: each one's digest, merged
        assert owner.digest_under(person, fields, [ids[4], ids[1]], 40) == {
            ids[1]: each[ids[1]],
            ids[4]: each[ids[4]],
        }
        finer: dict[str, Digest] = {}
        for key in groups:
            finer.update(owner.digest(person, fields, key, length + 1))
        assert owner.digest_under(person, fields, sorted(groups), length + 1) == finer
        assert owner.digest_under(person, fields, [""], length) == owner.digest(
            person, fields, "", length
        )
        assert owner.digest_under(person, fields, [], length) == {}
        assert owner.digest_under(person, fields, ["~", "g"], 3) == {}
        picked = owner.digest_rows(person, fields, [ids[4], ids[1]])
        assert [r[0] for r in picked] == [ids[1], ids[4]]
        overlapping = owner.digest_rows(person, fields, [shared, ids[0]])  # each id once
        assert [r[0] for r in overlapping] == ids
        assert (
            owner.digest(person, fields, "~", 2)
            == {}
            == dict.fromkeys(r[0] for r in owner.digest_rows(person, fields, ["~", "g"]))
        )

    def test_a_digest_stops_at_its_deadline(self, owner: Store, charter: Charter) -> None:
        """A check's budget bounds a pass (a past deadline: stopped before it starts; one
        still ahead: the whole answer)."""
        person = self.person(charter)
        fields = list(person.fields.values())[:2]
        self.write(owner, charter, lambda tx: [tx.create("Person", email="d@x.org", name="D")])
        with pytest.raises(OutOfTimeError):
            owner.digest(person, fields, "", 0, clock.monotonic() - 1)
        later = clock.monotonic() + 60
        assert owner.digest(person, fields, "", 0, later) == owner.digest(person, fields, "", 0)

    def test_a_mend_writes_the_owners_state_where_the_copy_takes_it(
        self, copies: Store, charter: Charter
    ) -> None:
        copy = self.copy(charter)
        same, older, ahead, extra, tomb = (uuid7() for _ in range(5))
        events = [
            world.event(same, 2, name="Written"),
            world.event(older, 1, name="Old"),
            world.event(ahead, 9, name="Nine"),
            world.event(extra, 4, name="Extra"),
            world.event(tomb, 5, op="deleted"),
        ]
        copies.apply(copy, list(enumerate(events, 1)), [], len(events))
        state = {"name": "Owner", "email": "o@x.org"}
        mends = [
            Mend(same, 2, state),  # the same version: the copy was written past charter
            Mend(older, 3, state),
            Mend(ahead, 3, state),  # the copy is ahead: left alone …
            Mend(extra, 4, None),  # the owner does not hold it: gone, tombstoned
            Mend(tomb, 4, state),  # deleted later than the owner's state: left alone
        ]
        assert copies.mend(copy, mends) == 3
        rows = {r["id"]: (r["version"], r["name"]) for r in copies.copy_rows(copy)}
        assert rows == {same: (2, "Owner"), older: (3, "Owner"), ahead: (9, "Nine")}
        copies.apply(copy, [(9, world.event(extra, 4, name="Late"))], [], 9)
        assert extra not in {r["id"] for r in copies.copy_rows(copy)}  # the tombstone holds
        assert copies.mend(copy, [Mend(ahead, 3, state, over=9), Mend(tomb, 4, state, 5)]) == 2
        rows = {r["id"]: (r["version"], r["name"]) for r in copies.copy_rows(copy)}
        assert rows[ahead] == (3, "Owner") and rows[tomb] == (4, "Owner")  # … unless accepted
        assert copies.tombstone(copy, extra) == 4 and copies.tombstone(copy, tomb) is None
        copies.apply(copy, [(10, world.event(tomb, 5, name="Five"))], [], 10)
        assert {r["id"]: r["version"] for r in copies.copy_rows(copy)}[tomb] == 5

    def test_every_event_moves_the_copys_version_whatever_it_changed(
        self, copies: Store, charter: Charter
    ) -> None:
        """An event that changes no field the copy keeps (another field, a private one)
        still carries the owner's version, and the copy takes it."""
        copy, entity_id = self.copy(charter), uuid7()
        copies.apply(copy, [(1, world.event(entity_id, 1, op="created", name="Same"))], [], 1)
        copies.apply(copy, [(2, world.event(entity_id, 2, name="Same"))], [], 2)
        same = world.event(entity_id, 3, name="Same")
        copies.apply(copy, [(3, same), (4, world.event(entity_id, 4, name="Same"))], [], 4)
        (row,) = copies.copy_rows(copy)
        assert (row["version"], row["name"]) == (4, "Same")

    # -- latency ------------------------------------------------------------------

    def test_latencies_are_counted_with_their_apply_once_each(
        self, copies: Store, charter: Charter
    ) -> None:
        copy, clock = self.copy(charter), world.Clock()
        with clock.installed():
            copies.backfill(copy, iter(()), 0)
            events = [(n, world.event(uuid7(), 1, op="created")) for n in (1, 2, 3)]
            copies.apply(copy, events, [], 3, latencies=[(1, 0.004), (2, 0.004), (3, 2.5)])
            copies.apply(copy, events, [], 3, latencies=[(1, 0.004), (3, 2.5)])  # again
            assert copies.latency(copy, clock.minute) == {
                latency.bucket(0.004): 2,
                latency.bucket(2.5): 1,
            }
            clock.advance(60)  # the next minute: a row of its own
            later = [(n, world.event(uuid7(), 1, op="created")) for n in (4, 5)]
            copies.apply(copy, later, [], 5, latencies=[(4, 0.004), (5, 90.0)])
            assert copies.latency(copy, clock.minute) == {
                latency.bucket(0.004): 1,
                latency.bucket(90.0): 1,
            }
            assert copies.latency(copy, clock.minute - 1)[latency.bucket(0.004)] == 3
            assert copies.latency(copy, clock.minute + 1) == {}

    def test_a_lane_counts_the_latencies_past_its_own_checkpoint(
        self, copies: Store, charter: Charter
    ) -> None:
        copy, clock, one = self.copy(charter), world.Clock(), Lane(1, 2)
        with clock.installed():
            copies.backfill(copy, iter(()), 0)
            copies.apply(copy, [(4, world.event(uuid7(), 1, op="created"))], [], 4, one, [(4, 1)])
            # a batch another applier of this lane had begun is not counted again (a
            # histogram may miss part of it, never count an event twice); one past it is
            events = [(n, world.event(uuid7(), 1, op="created")) for n in (4, 6)]
            copies.apply(copy, events, [], 6, one, [(4, 1.0), (6, 1.0)])
            counted = copies.latency(copy, clock.minute)[latency.bucket(1.0)]
            assert counted in (1, 2)  # 4 never twice; 6 counted, or its batch skipped
            events = [(n, world.event(uuid7(), 1, op="created")) for n in (7, 9)]
            copies.apply(copy, events, [], 9, one, [(7, 1.0), (9, 1.0)])
            assert copies.latency(copy, clock.minute) == {latency.bucket(1.0): counted + 2}

    def test_latency_minutes_past_the_retention_are_deleted(self, copies: Store) -> None:
        charter = world.charter(f"c{uuid7()[-12:]}", more="latency_retention: 10m")
        copies.prepare(charter, "mailing")
        copy, clock = self.copy(charter), world.Clock()
        with clock.installed():
            copies.backfill(copy, iter(()), 0)
            first = clock.minute
            copies.apply(copy, [(1, world.event(uuid7(), 1, op="created"))], [], 1, None, [(1, 1)])
            clock.advance(9 * 60)  # the tenth minute: the first is kept
            copies.apply(copy, [(2, world.event(uuid7(), 1, op="created"))], [], 2, None, [(2, 1)])
            assert copies.latency(copy, first) == {latency.bucket(1.0): 2}
            clock.advance(60)  # the eleventh: the first goes
            copies.apply(copy, [], [], 3)
            assert copies.latency(copy, first) == {latency.bucket(1.0): 1}

    def test_no_latency_is_kept_with_a_retention_of_zero(self, copies: Store) -> None:
        charter = world.charter(f"c{uuid7()[-12:]}", more="latency_retention: 0")
        copies.prepare(charter, "mailing")
        copy = self.copy(charter)
        copies.backfill(copy, iter(()), 0)
        copies.apply(copy, [(1, world.event(uuid7(), 1, op="created"))], [], 1, None, [(1, 1)])
        assert copies.latency(copy, 0) == {}

    # -- the last check of each copy (charter.reconcile) --------------------------------

    def test_a_copys_last_check_is_kept_and_replaced_by_the_next(
        self, copies: Store, charter: Charter
    ) -> None:
        copy = self.copy(charter)
        assert copies.drift(copy) is None  # never checked
        first = Drift(
            copy.name,
            "2026-01-02T03:04:05.123456Z",
            0.25,
            {"missing": 2, "divergent": 1, "in_flight": 7},
            {"missing": [uuid7(), uuid7()], "divergent": [uuid7()]},
            complete=False,
            repaired={"missing": 3},
        )
        copies.record_drift(first)
        assert copies.drift(copy) == first and first.rows == 3
        clean = Drift(copy.name, "2026-01-02T04:00:00.000000Z", 0.01, {}, {})
        copies.record_drift(clean)
        assert copies.drift(copy) == clean and clean.rows == 0
        failed = Drift(copy.name, "2026-01-02T05:00:00.000000Z", 0.0, {}, {}, error="down")
        copies.record_drift(failed)
        assert copies.drift(copy) == failed
        other = dataclasses.replace(copy, name="other_people")
        assert copies.drift(other) is None  # one row per copy

    # -- waiting for a version (read your own writes) ----------------------------------

    def test_wait_applied_says_what_the_copy_holds(self, copies: Store, charter: Charter) -> None:
        copy, entity_id = self.copy(charter), uuid7()
        assert copies.wait_applied(copy, entity_id, 1, 0.0) == 0
        copies.apply(copy, [(1, world.event(entity_id, 2))], [], 1)
        assert copies.wait_applied(copy, entity_id, 2, 0.0) == 2
        assert copies.wait_applied(copy, entity_id, 1, 0.0) == 2  # an older one: there too
        assert copies.wait_applied(copy, entity_id, 3, 0.05) == 2  # not there: time runs out
        assert copies.wait_applied(copy, uuid7(), 1, 0.0) == 0  # another record
        copies.apply(copy, [(2, world.event(entity_id, 4, op="deleted"))], [], 2)
        assert list(copies.copy_rows(copy)) == []
        assert copies.wait_applied(copy, entity_id, 3, 0.0) == 4  # deleted after it
        assert copies.wait_applied(copy, entity_id, 4, 0.0) == 4  # the delete itself

    def test_a_wait_wakes_when_another_thread_applies(
        self, copies: Store, charter: Charter
    ) -> None:
        """Waits (in threads, on their own connections) for versions applied after they
        began: one by an apply of the version after a lower one, one by a backfill, one by
        a delete; each is woken by the change and returns what the copy then holds."""
        copy, a, b, c = self.copy(charter), uuid7(), uuid7(), uuid7()
        copies.apply(copy, [(1, world.event(c, 1, op="created"))], [], 1)
        got: dict[str, int] = {}

        def wait(entity_id: str, version: int) -> None:
            got[entity_id] = copies.wait_applied(copy, entity_id, version, 600.0)

        waiting = [
            threading.Thread(target=wait, args=wanted) for wanted in ((a, 2), (b, 3), (c, 2))
        ]
        for thread in waiting:
            thread.start()
        time.sleep(0.05)  # the waits begin (a wait that began later sees the versions at once)
        copies.apply(copy, [(2, world.event(a, 1, op="created"))], [], 2)  # not yet
        copies.apply(copy, [(3, world.event(a, 2))], [], 3)
        copies.backfill(copy, iter([(b, 3, {"name": "B", "email": "b@x"})]), 3)
        copies.apply(copy, [(4, world.event(c, 2, op="deleted"))], [], 4)
        for thread in waiting:
            thread.join(30)  # woken by the change: never near the ten minutes it may wait
        assert not any(thread.is_alive() for thread in waiting), "a wait was not woken"
        assert got == {a: 2, b: 3, c: 2}

    # -- commands (charter.commands) ----------------------------------------------

    @staticmethod
    def handled(key: str, result: bytes = b'{"ok":1}') -> RecordedCommand:
        return RecordedCommand(key, "Rename", result, "2030-01-01T00:00:00.000000Z")

    def test_a_command_key_commits_with_its_change_or_not_at_all(
        self, owner: Store, charter: Charter
    ) -> None:
        def rename(tx: Transaction) -> None:
            assert tx._recorded_command("k1") is None
            tx.create("Person", email="a@x.org", name="A")
            tx._record_command(self.handled("k1"))
            assert tx._recorded_command("k1") == self.handled("k1")  # seen in its transaction

        self.write(owner, charter, rename)

        def fail(tx: Transaction) -> None:
            tx.create("Person", email="b@x.org", name="B")
            tx._record_command(self.handled("k2"))
            tx._commit_events()
            raise RuntimeError("the handler gives up")

        with pytest.raises(RuntimeError):
            self.write(owner, charter, fail)
        with owner.transaction() as writes:
            assert writes.command("k1") == self.handled("k1")
            assert writes.command("k2") is None
        assert [r["email"] for r in owner.rows(self.person(charter))] == ["a@x.org"]

    def test_a_command_key_is_recorded_once(self, owner: Store, charter: Charter) -> None:
        self.write(owner, charter, lambda tx: tx._record_command(self.handled("k")))
        with pytest.raises(ConstraintError):
            self.write(owner, charter, lambda tx: tx._record_command(self.handled("k", b"2")))
        with owner.transaction() as writes:
            assert writes.command("k") == self.handled("k")

    def test_a_command_recorded_in_a_failed_savepoint_is_not(
        self, owner: Store, charter: Charter
    ) -> None:
        def work(tx: Transaction) -> None:
            with pytest.raises(RuntimeError), tx.savepoint():
                tx._record_command(self.handled("inner"))
                raise RuntimeError("undo it")
            tx._record_command(self.handled("outer"))

        self.write(owner, charter, work)
        with owner.transaction() as writes:
            assert writes.command("inner") is None
            assert writes.command("outer") is not None

    # -- fences (G10) -----------------------------------------------------------

    def test_a_fence_refuses_its_partitions_from_its_commit_on(
        self, owner: Store, charter: Charter
    ) -> None:
        person = self.person(charter)
        made: list[str] = []

        def create_more(tx: Transaction) -> None:
            first = len(made)
            made.extend(
                tx.create("Person", email=f"{n}@x.org", name="A").id
                for n in range(first, first + 40)
            )

        while not any(partition(i, PARTITIONS) == 2 for i in made):  # ids are random
            self.write(owner, charter, create_more)
        fenced = next(i for i in made if partition(i, PARTITIONS) == 2)
        free = next(i for i in made if partition(i, PARTITIONS) != 2)
        owner.fence(person, [2], 2, "mailing", "fenced")
        for work in (
            lambda tx: tx.update("Person", fenced, name="B"),
            lambda tx: tx.delete("Person", fenced),
        ):
            with pytest.raises(FencedError, match="partition 2 moved to 'mailing' at epoch 2"):
                self.write(owner, charter, work)
        self.write(owner, charter, lambda tx: tx.update("Person", free, name="B"))
        assert [(f.part, f.state, f.epoch) for f in owner.fences("Person")] == [(2, "fenced", 2)]
        owner.fence(person, None, 3, "mailing", "waiting")  # the whole entity, now
        with pytest.raises(FencedError, match="the whole entity is moving here"):
            self.write(owner, charter, lambda tx: tx.update("Person", free, name="C"))
        owner.unfence(person, None)
        self.write(owner, charter, lambda tx: tx.update("Person", fenced, name="C"))
        assert owner.fences("Person") == []

    def test_promote_writes_the_rows_as_they_came_and_then_takes_writes(
        self, owner: Store, charter: Charter
    ) -> None:
        person = self.person(charter)
        kept: dict[str, Any] = {"id": uuid7(), "version": 7, "email": "p@x.org", "name": "P"}
        kept["note"] = "n"
        owner.promote(person, None, 2, "people", [kept], (), "waiting")
        assert dict(owner.fetch(person, kept["id"]) or {}) == kept  # versions kept
        with pytest.raises(FencedError):
            self.write(owner, charter, lambda tx: tx.update("Person", kept["id"], name="Q"))
        gone = {**kept, "id": uuid7(), "email": "g@x.org"}
        owner.promote(person, None, 2, "people", [gone])
        owner.promote(person, None, 2, "people", [], [gone["id"]])
        assert owner.fetch(person, gone["id"]) is None
        events = self.write(owner, charter, lambda tx: tx.update("Person", kept["id"], name="Q"))
        assert [e.version for e in events] == [8]
