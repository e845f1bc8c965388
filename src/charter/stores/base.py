"""The one small protocol every database behind a context implements.

A store holds one context's data: the entities it owns with their outbox (the
owner's full history), and the copies it keeps with their checkpoints and parked
events. Charter's logic (ids, versions, validation, events) lives above it; a
store only knows how to keep that data safely in its database."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from charter.digests import Digest
from charter.errors import SchemaChangeError
from charter.events import Event
from charter.lanes import Lane
from charter.model import Charter, Copy, Entity, Field
from charter.records import (
    Backlog,
    Checkpoint,
    Drift,
    Fence,
    LaneCheckpoint,
    Mend,
    OutboxRow,
    Parked,
    RecordedCommand,
    Row,
    latest_lanes,
)

# The row types live in charter.records (the bus protocol uses them too); they are named
# here as well for code written before they moved.
__all__ = [
    "Backlog",
    "Checkpoint",
    "LaneCheckpoint",
    "OutboxRow",
    "OwnerWrites",
    "Parked",
    "Row",
    "Store",
    "latest_lanes",
]


class OwnerWrites(Protocol):
    """The store's half of an owner transaction; the owner does the thinking."""

    def fetch(self, entity: Entity, entity_id: str) -> Row | None: ...
    def insert(self, entity: Entity, row: Row) -> None: ...
    def update(self, entity: Entity, entity_id: str, old_version: int, row: Row) -> bool: ...
    def delete(self, entity: Entity, entity_id: str, old_version: int) -> bool: ...
    def append(
        self,
        events: Sequence[Event],
        bodies: Sequence[bytes],
        private: Sequence[tuple[str, ...]] = (),
    ) -> None:
        """The outbox rows of the transaction, just before it commits. `private`, when not
        empty, holds for each event the private fields its change set (kept in the row,
        for the owner's history; never in the body)."""

    def command(self, key: str) -> RecordedCommand | None:
        """The command handled under idempotency `key`, if one was (charter.commands)."""

    def record_command(self, command: RecordedCommand) -> None:
        """Keep a handled command's outcome in this transaction, so it commits with the
        changes the command made or not at all (G9). A key recorded already, by another
        transaction, fails this one with a ConstraintError (at once, or at commit)."""

    def savepoint(self) -> AbstractContextManager[None]:
        """A nested part of the transaction. A block that raises is undone alone (back to
        where it began) and its error goes on. On a clean exit the block's changes must have
        been checked: a store that queues changes sends them there, and a refusal is raised
        from the exit with the block undone. Savepoints nest. If entering one sends changes
        queued before it and they are refused, it raises from the entry, having undone them
        back to the enclosing savepoint (or the whole transaction)."""


class Store(Protocol):
    url: str

    def prepare(self, charter: Charter, context: str) -> None:
        """Create or extend the tables for what this context owns and copies."""

    def check(self, charter: Charter, context: str) -> list[SchemaChangeError]:
        """What `prepare` would refuse, found without changing anything: each change of
        the charter that the data already in this store does not allow (none for a store
        not created yet). For `charter check`."""

    def transaction(self) -> AbstractContextManager[OwnerWrites]: ...

    def fetch(self, entity: Entity, entity_id: str) -> Row | None: ...
    def rows(self, entity: Entity, where: Row | None = None) -> Iterator[Row]: ...

    # relay side
    def outbox(self, after: int, limit: int) -> list[OutboxRow]:
        """The owner's events after `seq`, in commit order: its full history."""

    def pending(self, limit: int, skip: Sequence[OutboxRow] = ()) -> list[OutboxRow]:
        """Committed events not yet relayed, oldest first, but for `skip` (the batch on its
        way to the bus, read before). Never skips one that commits late."""

    def mark_relayed(self, rows: Sequence[OutboxRow]) -> None: ...

    def lead(self, holder: str) -> bool:
        """Whether `holder` (one relay) leads this outbox: it takes the lead when nobody
        holds it and keeps it while it does. Only the leader publishes, so a relay that
        stalled with a batch in hand cannot publish an old version after a newer one (and
        after compaction forgot both): two live relays for one owner brought a deleted
        record back into a new copy (charter.sim found it). The lead ends with its holder's
        process (a lock the operating system or the server frees) or at release()."""

    def release(self, holder: str) -> None:
        """Give up the lead, if `holder` has it."""

    def rewind(self, after: int = 0) -> None:
        """Make every event after `seq` pending again (to heal a bus that lost events)."""

    def unrelayed(self, entity: str) -> Backlog: ...
    def history(self, entity: str, entity_id: str) -> list[OutboxRow]:
        """The record's outbox rows by version, with their actor and private names."""

    def current(self, entity: Entity, after: str = "", limit: int = 1000) -> list[OutboxRow]:
        """The event of each live record's current version, ids after `after` in order: the
        owner's current state as events, to fill a copy through the bus (charter.fills)."""

    # copy side
    def checkpoint(self, copy: Copy, lane: Lane | None = None) -> Checkpoint | None:
        """Where the copy has got to as a whole (charter.lanes), or where `lane` starts."""

    def lanes(self, copy: Copy) -> list[LaneCheckpoint]:
        """The copy's lanes as last run (empty when it never ran in lanes)."""

    def apply(
        self,
        copy: Copy,
        items: Sequence[tuple[int, Event]],
        parked: Sequence[Parked],
        position: int,
        lane: Lane | None = None,
        latencies: Sequence[tuple[int, float]] = (),
    ) -> list[Parked]:
        """Apply events newer than each id's version, park what fails, move the checkpoint
        (the whole copy's, or `lane`'s): all in one transaction. Returns the events parked
        while applying.

        Every event past the checkpoint is applied, whatever fields it changed: the copy's
        version of the id follows the owner's, even for a change of fields the copy does
        not keep. `latencies` holds (position, seconds) for events of `items`: each one's
        propagation latency (charter.latency). Those past the checkpoint are counted in the
        copy's histogram, in the current minute (charter.clock), in the same transaction;
        minutes older than the charter's `latency_retention` are deleted now and then (at
        most once a minute per copy, in an apply)."""

    def latency(self, copy: Copy, since: int) -> dict[int, int]:
        """The copy's latency histogram summed over the minutes from `since` (minutes since
        the epoch, charter.latency.minute) on: bucket → events (empty: none recorded)."""

    def backfill(self, copy: Copy, rows: Iterator[tuple[str, int, Row]], position: int) -> int:
        """Write the owner's current `rows` into the copy (newer or equal versions win) and
        set the checkpoint to `position` with the copy's fields. If another fill already
        set it higher, it goes down to `position`: what comes after is read again (and
        applied only where newer), so a record deleted after the other fill's snapshot
        cannot be missed."""

    def copy_rows(self, copy: Copy, where: Row | None = None) -> Iterator[Row]: ...

    def wait_applied(self, copy: Copy, entity_id: str, version: int, timeout: float) -> int:
        """Wait up to `timeout` seconds until the copy holds `entity_id` at `version` or
        newer, or deleted it at `version` or later (its tombstone), whichever process
        applies it (an apply, a backfill or a retry of parked events); returns the newest
        version of the record the copy has taken, its row's or its tombstone's (0: none),
        which is below `version` only when the time ran out. A wait is woken by the change
        where the database can say so (charter.stores.waiting), not by asking in a loop."""

    def parked(self, copy: Copy) -> list[Parked]: ...

    def retry_parked(
        self, copy: Copy, events: Sequence[tuple[int, Event]], kept: Sequence[Parked]
    ) -> list[Parked]:
        """Once the cause of parked events is mended, in one transaction: apply `events`
        (parked ones, by their position, that pass the projector's checks now) where newer
        than each id's version (an older one changes nothing) and forget them; those the
        database still refuses, and `kept` (ones that still fail the checks), stay parked
        with their new reason. Returns those that stay parked. The checkpoint stays."""

    def drop_parked(self, copy: Copy, positions: Sequence[int]) -> list[Parked]:
        """Forget the parked events at `positions`; returns those forgotten."""

    # reconciliation (charter.reconcile): digests computed inside the database, over the
    # canonical encoding of charter.digests; `table` is an entity (the owner's records) or
    # a copy, `fields` the copy's fields (a copy's columns are named after them)
    def id_range(self, table: Entity | Copy) -> tuple[str, str] | None:
        """The lowest and highest id of `table`'s rows; None when it has none."""

    def digest(
        self, table: Entity | Copy, fields: Sequence[Field], prefix: str, length: int
    ) -> dict[str, Digest]:
        """The digests of `table`'s rows whose id starts with `prefix` ("": all) on
        `fields`, by the first `length` characters of the id (the whole id when shorter),
        in one pass: key → Digest (count and total; no low, no high). Keys with no rows
        are absent."""

    def digest_under(
        self,
        table: Entity | Copy,
        fields: Sequence[Field],
        prefixes: Sequence[str],
        length: int,
        native: bool = False,
    ) -> dict[str, Digest]:
        """digest(table, fields, prefix, length) for each of `prefixes` (distinct, none
        under another), merged, in one query: a level of the search, one round trip.
        `native`: each row hashed by the store's own hash (native_hash), not charter's."""

    def native_hash(self, table: Entity | Copy, fields: Sequence[Field]) -> str | None:
        """What this store's own hash of `table`'s rows on `fields` is (for PostgreSQL: its
        version, a probe value's hash and the columns' types), if it has one cheaper than
        charter's canonical encoding: two stores that say the same hash equal rows the
        same, and their digest_under(native=True) compare. None: it has none."""

    def digest_rows(
        self, table: Entity | Copy, fields: Sequence[Field], prefixes: Sequence[str]
    ) -> list[tuple[str, int, int]]:
        """Each row's id, version and hash (charter.digests, unsigned) whose id starts with
        any of `prefixes`, by id, each once."""

    def tombstone(self, copy: Copy, entity_id: str) -> int | None:
        """The version at which the copy saw `entity_id` deleted (None: never), so a copy
        that took a delete its owner never reached is ahead, not missing."""

    # incremental digests: buckets (Store.digest's groups at one `length`) kept by the
    # database as rows change, in the same transaction (triggers mark a bucket dirty; a
    # check recomputes only dirty ones); what no trigger sees (PostgreSQL with triggers
    # turned off) only a full check finds
    def bucket_length(self, table: Entity | Copy, fields: Sequence[Field]) -> int | None:
        """The length the buckets of `table` on `fields` are kept at; None: not kept."""

    def refresh_buckets(self, table: Entity | Copy, fields: Sequence[Field], length: int) -> None:
        """Bring the buckets of `table` on `fields` at `length` up to date: kept from now on
        (built, or built again when kept at another length), the dirty ones recomputed."""

    def bucket_digest(
        self, table: Entity | Copy, fields: Sequence[Field], prefixes: Sequence[str], by: int
    ) -> dict[str, Digest]:
        """The kept buckets under each of `prefixes` (distinct groups, none under another)
        summed by their first `by` characters (at most the length they are kept at): after
        refresh_buckets, equal to digest(table, fields, prefix, by) for each prefix, read
        from the buckets alone."""

    def drop_buckets(self, table: Entity | Copy, fields: Sequence[Field]) -> None:
        """Stop keeping them (their triggers and rows)."""

    def mend(self, copy: Copy, mends: Sequence[Mend]) -> int:
        """Put the copy's records right from their owner's state (charter.reconcile.repair;
        Mend.takes says which it takes), in one transaction; returns how many changed."""

    def record_drift(self, drift: Drift) -> None:
        """Keep `drift` as the copy's last check (charter_drift: one row per copy, the newer
        replacing the older), for `charter status` and the metrics to read."""

    def drift(self, copy: Copy) -> Drift | None:
        """The copy's last check as recorded (None: never checked)."""

    def fence(
        self, entity: Entity, parts: Sequence[int] | None, epoch: int, holder: str, state: str
    ) -> None:
        """G10: from this commit on, write `parts` of `entity` (partitions of the record id;
        None: all of it) only as `state` says (charter.stores.fencing: owner, fenced,
        waiting); returns once no write in flight can still commit without seeing it."""

    def unfence(self, entity: Entity, parts: Sequence[int] | None) -> None:
        """Forget the fence rows of `parts` (a transfer rolled back)."""

    def fences(self, entity: str) -> list[Fence]:
        """The fence rows of `entity`, by partition (-1: the whole entity)."""

    def promote(
        self,
        entity: Entity,
        parts: Sequence[int] | None,
        epoch: int,
        holder: str,
        rows: Sequence[Row],
        gone: Sequence[str] = (),
        state: str = "owner",
    ) -> None:
        """In one transaction: `rows` (another store's, versions kept) written, the ids
        `gone` deleted, and `parts` left in `state` at `epoch` (owner: this store's to
        write; waiting: filled ahead of the switch, still refused)."""

    def close(self) -> None: ...
