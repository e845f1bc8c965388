"""What every `Bus` promises, as pytest test cases: subclass `BusContract` and give
`make_bus`. Each test uses a fresh bus for a system of its own."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import pytest

from charter import clock, visibility
from charter.buses.base import COMMAND_LEASE_S, Bus
from charter.ids import uuid7
from charter.lanes import partition
from charter.records import CommandDelivery, OutboxRow
from charter.testing import world


class _Commands:
    """Commands on a bus (Bus.send_command and its owner's side)."""

    def test_a_command_waits_on_the_bus_until_its_owner_answers(self, bus: Bus) -> None:
        answer = bus.send_command("mailing", "people", "Rename", "k1", b'{"n":1}')
        assert answer(0.05) is None  # nobody took it yet
        (command,) = bus.take_commands("people", 10, 5.0)
        assert (command.key, command.name, command.body) == ("k1", "Rename", b'{"n":1}')
        assert bus.take_commands("people", 10, 0.0) == []  # handed out: not again meanwhile
        bus.answer_command("people", command, b'{"ok":1}')
        assert answer(5.0) == b'{"ok":1}'
        assert bus.take_commands("people", 10, 0.2) == []  # answered: gone

    def test_commands_come_out_in_order_for_their_owner_only(self, bus: Bus) -> None:
        for n in range(3):
            bus.send_command("mailing", "people", "Rename", f"k{n}", b"{}")
        bus.send_command("people", "mailing", "Other", "x", b"{}")
        taken: list[str] = []
        while len(taken) < 3 and (batch := bus.take_commands("people", 2, 5.0)):
            taken += [c.key for c in batch]
            for command in batch:
                bus.answer_command("people", command, b"{}")
        assert taken == ["k0", "k1", "k2"]
        (other,) = bus.take_commands("mailing", 10, 5.0)
        assert other.key == "x"

    def test_a_command_taken_and_not_answered_is_handed_out_again(self, bus: Bus) -> None:
        """Its taker may have died: after the lease another one gets it (at least once)."""
        answer = bus.send_command("mailing", "people", "Rename", "k", b"{}")
        assert len(bus.take_commands("people", 10, 5.0)) == 1
        deadline = time.monotonic() + COMMAND_LEASE_S + 10
        again: list[CommandDelivery] = []
        while not again and time.monotonic() < deadline:
            again = bus.take_commands("people", 10, 1.0)
        assert [c.key for c in again] == ["k"], "not handed out again after the lease"
        bus.answer_command("people", again[0], b'{"ok":2}')
        assert answer(5.0) == b'{"ok":2}'

    def test_every_sender_of_a_key_hears_its_answer(self, bus: Bus) -> None:
        """A retry with the same key while the first attempt waits: both hear the answer."""
        first = bus.send_command("mailing", "people", "Rename", "same", b"{}")
        second = bus.send_command("mailing", "people", "Rename", "same", b"{}")
        taken = bus.take_commands("people", 10, 5.0)
        assert taken and {c.key for c in taken} == {"same"}
        bus.answer_command("people", taken[0], b'{"ok":3}')
        assert first(5.0) == second(5.0) == b'{"ok":3}'

    def test_commands_sent_and_answered_together(self, bus: Bus) -> None:
        """send_commands and answer_commands: as many single calls, in order, at once."""
        waits = bus.send_commands(
            "mailing",
            [("people", "Rename", f"t{n}", b"{}") for n in range(3)]
            + [("shop", "Other", "t-shop", b"{}")],
        )
        taken: list[CommandDelivery] = []
        while len(taken) < 3 and (batch := bus.take_commands("people", 10, 5.0)):
            taken += batch
        assert [c.key for c in taken] == ["t0", "t1", "t2"]
        bus.answer_commands("people", [(c, f'{{"ok":"{c.key}"}}'.encode()) for c in taken])
        assert [w(5.0) for w in waits[:3]] == [b'{"ok":"t0"}', b'{"ok":"t1"}', b'{"ok":"t2"}']
        (other,) = bus.take_commands("shop", 10, 5.0)
        bus.answer_commands("shop", [(other, b'{"ok":0}')])
        assert waits[3](5.0) == b'{"ok":0}'
        assert bus.take_commands("people", 10, 0.2) == []


class BusContract(_Commands):
    """The Bus protocol, test by test. Subclasses implement `make_bus`."""

    def make_bus(self, system: str) -> Bus:
        """A new, empty bus for the system named `system` (fresh for every call)."""
        raise NotImplementedError

    def drop_bus(self, bus: Bus, system: str) -> None:
        """Remove what `make_bus` made, after the test (the bus is closed already)."""

    @pytest.fixture
    def bus(self) -> Iterator[Bus]:
        system = f"b{uuid7()[-12:].replace('-', '')}"
        bus = self.make_bus(system)
        try:
            yield bus
        finally:
            bus.close()
            self.drop_bus(bus, system)

    @staticmethod
    def rows(count: int, entity_id: str = "") -> list[OutboxRow]:
        """`count` events of Person: of one record when `entity_id` is given."""
        return [
            world.outbox_row(world.event(entity_id or uuid7(), n + 1, name=f"N{n}"), n + 1)
            for n in range(count)
        ]

    @staticmethod
    def fetch_all(bus: Bus, entity: str = "Person", after: int = 0) -> list[int]:
        """The positions of every event of `entity` after `after`, fetched page by page."""
        positions: list[int] = []
        while deliveries := bus.fetch("reader", entity, after, 3):
            positions.extend(d.position for d in deliveries)
            after = deliveries[-1].position
        return positions

    def test_events_come_back_in_order_with_what_they_were(self, bus: Bus) -> None:
        rows = self.rows(5)
        bus.publish(rows)
        deliveries = bus.fetch("reader", "Person", 0, 100)
        assert [d.body for d in deliveries] == [r.body for r in rows]
        assert [d.event_id for d in deliveries] == [r.event_id for r in rows]
        assert [d.partition for d in deliveries] == [
            partition(r.entity_id, bus.partitions) for r in rows
        ]
        positions = [d.position for d in deliveries]
        assert positions == sorted(positions) and len(set(positions)) == 5
        assert bus.head("Person") == positions[-1]

    def test_fetch_pages_after_a_position(self, bus: Bus) -> None:
        bus.publish(self.rows(7))
        every = [d.position for d in bus.fetch("reader", "Person", 0, 100)]
        assert self.fetch_all(bus) == every
        assert [d.position for d in bus.fetch("reader", "Person", every[2], 2)] == every[3:5]
        assert bus.fetch("reader", "Person", every[-1], 10) == []

    def test_reading_takes_nothing_away(self, bus: Bus) -> None:
        """At least once: what one fetch handed out, the next fetch from there hands out again."""
        bus.publish(self.rows(3))
        first = bus.fetch("reader", "Person", 0, 10)
        assert bus.fetch("reader", "Person", 0, 10) == first
        assert bus.fetch("another", "Person", 0, 10) == first

    def test_one_event_id_is_kept_once(self, bus: Bus) -> None:
        rows = self.rows(3)
        bus.publish(rows)
        bus.publish(rows[1:])  # a relay that crashed before marking them sends them again
        bus.publish_begin(rows[:1])()
        assert len(self.fetch_all(bus)) == 3

    def test_publish_begin_returns_once_they_are_on_the_bus(self, bus: Bus) -> None:
        rows = self.rows(4)
        wait = bus.publish_begin(rows)
        wait()
        assert len(self.fetch_all(bus)) == 4

    def test_each_entity_reads_only_its_own(self, bus: Bus) -> None:
        person = self.rows(2)
        other = [dataclasses.replace(r, entity="Booking") for r in self.rows(2)]
        bus.publish([person[0], other[0], person[1], other[1]])
        assert len(self.fetch_all(bus, "Person")) == 2
        assert len(self.fetch_all(bus, "Booking")) == 2
        assert bus.head("Nobody") == 0

    def test_notes_keep_the_newest_value_per_key(self, bus: Bus) -> None:
        assert bus.note("fillreq", "Person", "mail_people") is None
        bus.put_note("fillreq", "Person", "mail_people", b"one")
        bus.put_note("fillreq", "Person", "mail_people", b"two")
        bus.put_note("fill", "Person", "mail_people", b"mark")
        assert bus.note("fillreq", "Person", "mail_people") == b"two"
        assert bus.note("fill", "Person", "mail_people") == b"mark"
        assert bus.note("fillreq", "Person", "other_copy") is None

    def test_backlog_counts_what_a_copy_has_not_applied(self, bus: Bus) -> None:
        rows = self.rows(4)
        bus.publish(rows)
        positions = self.fetch_all(bus)
        behind = bus.backlog("mail_people", "Person", positions[1])
        assert behind.events == 2
        assert behind.oldest == rows[2].time
        nothing = bus.backlog("mail_people", "Person", positions[-1])
        assert (nothing.events, nothing.oldest) == (0, None)

    COPIES = {"Person": ["mail_people", "shipping_people"]}  # as the charter declares

    def test_compaction_keeps_what_a_declared_copy_has_not_applied(self, bus: Bus) -> None:
        bus.publish(self.rows(6))
        positions = self.fetch_all(bus)
        bus.ack("mail_people", "Person", positions[2])
        bus.ack("shipping_people", "Person", positions[4])
        bus.ack("undeclared", "Person", positions[0])  # not in the charter: counts for nothing
        _settle()
        assert bus.compacted("Person") == 0
        bus.compact(0.0, self.COPIES)
        assert self.fetch_all(bus) == positions[3:]
        assert bus.compacted("Person") == positions[2]

    def test_a_declared_copy_with_no_position_keeps_everything(self, bus: Bus) -> None:
        bus.publish(self.rows(3))
        positions = self.fetch_all(bus)
        bus.ack("mail_people", "Person", positions[-1])  # shipping_people never ran
        _settle()
        bus.compact(0.0, self.COPIES)
        assert self.fetch_all(bus) == positions and bus.compacted("Person") == 0

    def test_compaction_keeps_what_is_younger_than_the_retention(self, bus: Bus) -> None:
        bus.publish(self.rows(3))
        positions = self.fetch_all(bus)
        for copy in self.COPIES["Person"]:
            bus.ack(copy, "Person", positions[-1])
        bus.compact(3600.0, self.COPIES)
        assert self.fetch_all(bus) == positions

    def test_a_copys_topic_is_a_log_of_its_own(self, bus: Bus) -> None:
        """Under contract visibility a copy reads its own topic (charter.visibility): its
        events, head, backlog, position and compaction apart from the entity's and from
        another copy's; its events' ids are its own, so a copy's event is no duplicate of
        the entity's, and publishing it again is."""
        whole = self.rows(2)
        mine = [copy_event(r, "mail_people") for r in whole]
        theirs = [copy_event(r, "shipping_people") for r in whole]
        bus.publish([whole[0], mine[0], theirs[0], whole[1], mine[1], theirs[1]])
        bus.publish(mine)  # a relay publishing them again
        topic, other = mine[0].entity, theirs[0].entity
        got = bus.fetch("mail_people", topic, 0, 10)
        assert [d.body for d in got] == [r.body for r in mine]
        assert [d.event_id for d in got] == [r.event_id for r in mine]
        assert len(self.fetch_all(bus, "Person")) == 2 and len(self.fetch_all(bus, other)) == 2
        assert bus.head(topic) == got[-1].position != bus.head("Person")
        assert bus.backlog("mail_people", topic, got[0].position).events == 1
        bus.ack("mail_people", topic, got[0].position)
        _settle()
        bus.compact(0.0, {"Person": [], topic: ["mail_people"], other: ["shipping_people"]})
        assert self.fetch_all(bus, topic) == [got[1].position]
        assert bus.compacted(topic) == got[0].position
        assert len(self.fetch_all(bus, other)) == 2 and bus.compacted(other) == 0
        assert self.fetch_all(bus, "Person") == []  # no copy reads it: gone by age

    def test_an_entity_no_copy_declares_is_compacted_by_age(self, bus: Bus) -> None:
        bus.publish(self.rows(2))
        _settle()
        bus.compact(0.0, {"Person": []})
        assert self.fetch_all(bus) == []


def copy_event(row: OutboxRow, copy: str) -> OutboxRow:
    """`row` as the relay publishes it on the topic of `copy` (name only, under contract
    visibility)."""
    mail_people = world.charter().copies["mail_people"]
    return visibility.narrow(row, dataclasses.replace(mail_people, name=copy))


def _settle() -> None:
    """Let a moment pass, so that what was published is older than a retention of 0."""
    start = clock.time_ns()
    while clock.time_ns() - start < 2_000_000:
        pass
