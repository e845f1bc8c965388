"""The one small protocol every transport between contexts implements.

A bus is transport, not truth: the owner's outbox is. So a bus only has to keep
events in order per entity, drop a duplicate by event id, hand a consumer the
events after a position, and forget what every copy declared in the charter has applied.

Topics. What the methods below call `entity` is a *topic*: a log of its own. An entity's
topic is its name (``Customer``); under contract visibility each copy has one of its own,
``Customer@order_customers`` (charter.visibility), which holds that copy's events only
(its fields, and event ids of its own). Everything per entity is per topic: ordering,
fetch, head, backlog, the positions `ack` keeps, compaction and `compacted`. An outbox
row's `entity` names the topic it is published on. Positions are one sequence for the
whole bus, as before, and event ids are unique over it. Notes stay keyed by the entity's
name and the copy (a fill request is about a copy, whatever it reads)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from charter.records import Backlog, CommandDelivery, Delivery, OutboxRow

__all__ = ["COMMAND_LEASE_S", "Bus", "Delivery", "published"]  # Delivery: charter.records

# A command handed to its owner and not answered within this is handed out again: its
# taker may have died (the owner's store keeps a second delivery from applying twice).
COMMAND_LEASE_S = 5.0

OutgoingCommand = tuple[str, str, str, bytes]  # (owner, name, key, body): Bus.send_commands


class Bus(Protocol):
    url: str
    partitions: int  # of each entity's events (charter.lanes)

    def publish(self, rows: Sequence[OutboxRow]) -> None:
        """Publish in order. Publishing an event id twice keeps one."""

    def publish_begin(self, rows: Sequence[OutboxRow]) -> Callable[[], None]:
        """Start publishing; the function returned waits until it is done (and raises as
        publish would). Lets the relay read its next batch meanwhile."""

    def fetch(self, consumer: str, entity: str, after: int, limit: int) -> list[Delivery]:
        """Events of `entity` after position `after`, in order, for `consumer` (a copy)."""

    def ack(self, consumer: str, entity: str, position: int) -> None:
        """A copy has applied everything up to `position`: the bus keeps it as the copy's
        position (compaction reads it). May be recorded a moment later; compact and close
        record what is on its way first. A position may go back (two processes running one
        copy): compaction then keeps more, never less."""

    def put_note(self, kind: str, entity: str, copy: str, body: bytes) -> None:
        """Keep a small value under (kind, entity, copy); the newest one replaces any before
        it. Owners and copies talk through these (charter.fills)."""

    def note(self, kind: str, entity: str, copy: str) -> bytes | None:
        """The newest value put under (kind, entity, copy), if any."""

    def head(self, entity: str) -> int:
        """The position of the newest event of `entity` (0 when none)."""

    def backlog(self, consumer: str, entity: str, after: int) -> Backlog:
        """What `consumer` has not applied yet: how many events, and the oldest commit time."""

    def compact(self, retention_s: float, copies: Mapping[str, Sequence[str]]) -> int:
        """Forget events older than the retention that every copy declared for their entity
        in `copies` (entity -> copy names, from the charter) has applied; returns how many.
        A declared copy whose position the bus does not know (it never ran, its position
        was lost) keeps every event of its entity; positions of copies not declared count
        for nothing. Before forgetting, raises compacted() to the newest event forgotten."""

    def compacted(self, entity: str) -> int:
        """The position of the newest event of `entity` compaction has forgotten (0: none).
        A copy whose position is below it has lost events it never applied: it must be
        filled again (charter.projector), and status says GAP until it is."""

    # commands to owners (charter.commands) -------------------------------------------

    def send_command(
        self, sender: str, owner: str, name: str, key: str, body: bytes
    ) -> Callable[[float], bytes | None]:
        """Put a command for the context `owner` on the bus, from the context `sender`, under
        idempotency `key`. It stays there until the owner answers it, however long that
        takes (at most the charter's retention). The function returned waits at most that
        many seconds for the answer: the bytes the owner answered for `key`, or None."""

    def send_commands(
        self, sender: str, commands: Sequence[OutgoingCommand]
    ) -> list[Callable[[float], bytes | None]]:
        """send_command for each (owner, name, key, body), all at once (one write, one round
        of publishes): how a saga's orchestrator sends the next steps of many runs."""

    def take_commands(self, owner: str, limit: int, wait: float) -> list[CommandDelivery]:
        """Commands for `owner` not answered yet, oldest first, at most `limit`; when there
        is none, waits up to `wait` seconds for one. A command handed out and not answered
        within COMMAND_LEASE_S is handed out again (at least once)."""

    def answer_command(self, owner: str, command: CommandDelivery, answer: bytes) -> None:
        """Hand `answer` to whoever waits for the command's key, and let the command go: it
        is not handed out again."""

    def answer_commands(self, owner: str, answers: Sequence[tuple[CommandDelivery, bytes]]) -> None:
        """answer_command for each (command, answer), all at once."""

    def close(self) -> None: ...


def published() -> None:
    """What publish_begin returns when the publishing is already done: nothing to wait for."""
    return None
