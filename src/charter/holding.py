"""Where an entity's records are read from once ownership of some of them moved (`charter
transfer --partitions`): each record from the store of its current owner. The old owner's
store keeps its rows of the records that moved away (fenced, no longer current), so
reading the `owner:` store alone shows those rows as they were at the move and misses the
records created since by the new owner.

`owner_store(system, entity)` is the store to read the entity's records from: the
`owner:` store itself while one context owns them all, else `Holders`, a read-only view
over each owner's store that answers the reads reconciliation, a copy's backfill and
`charter history` make, keeping from each store only the records it holds (by the
record's partition, `Entity.holder`). Digests are then summed in Python from each
store's (id, version, hash) rows of the group asked, instead of in the database: exact,
and slower for a large table (a row a record, not a row a group)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from charter import digests
from charter.digests import Digest
from charter.model import Copy, Entity, Field
from charter.records import OutboxRow, Row
from charter.stores import Store
from charter.system import System


def owner_store(system: System, entity: Entity) -> Store:
    """The store to read `entity`'s records from (see the module's docstring)."""
    owners = entity.owners
    if len(owners) == 1:  # (all of its partitions may have moved, one by one)
        return system.store(owners[0])
    return Holders(entity, {ctx: system.store(ctx) for ctx in past_and_present(entity)})


def past_and_present(entity: Entity) -> tuple[str, ...]:
    """Every context that owns or owned some of `entity`'s records, its owner first: the
    stores a record's history may be spread over."""
    seen = [entity.owner, *entity.owners]
    for move in entity.moves:
        seen += [move.source, move.to]
    return tuple(dict.fromkeys(c for c in seen if c))


class Holders:
    """A read-only Store for one entity whose records have several owners: each record
    read from its current owner's store, a record's history from every store that held it.
    Only the reads charter's readers of an owner make are here; anything else is an error."""

    def __init__(self, entity: Entity, stores: dict[str, Store]) -> None:
        self.entity, self.stores = entity, stores

    def _held(self, context: str, entity_id: str) -> bool:
        return self.entity.holder(entity_id)[0] == context

    def fetch(self, entity: Entity, entity_id: str) -> Row | None:
        return self.stores[entity.holder(entity_id)[0]].fetch(entity, entity_id)

    def rows(self, entity: Entity, where: Row | None = None) -> Iterator[Row]:
        for context in entity.owners:
            for row in self.stores[context].rows(entity, where):
                if self._held(context, row["id"]):
                    yield row

    def history(self, entity: str, entity_id: str) -> list[OutboxRow]:
        """Every store's events of the record, by version: the old owner's up to the move,
        the new owner's after it (the fence keeps them apart)."""
        found: dict[int, OutboxRow] = {}
        for store in self.stores.values():
            for row in store.history(entity, entity_id):
                found.setdefault(row.version, row)
        return [found[v] for v in sorted(found)]

    def current(self, entity: Entity, after: str = "", limit: int = 1000) -> list[OutboxRow]:
        merged: list[OutboxRow] = []
        for context in entity.owners:
            store, start = self.stores[context], after
            kept: list[OutboxRow] = []
            while len(kept) < limit and (page := store.current(entity, start, limit)):
                kept += [r for r in page if self._held(context, r.entity_id)]
                start = page[-1].entity_id
                if len(page) < limit:
                    break
            merged += kept[:limit]
        return sorted(merged, key=lambda r: r.entity_id)[:limit]

    def id_range(self, table: Entity | Copy) -> tuple[str, str] | None:
        ends = [r for c in self.entity.owners if (r := self.stores[c].id_range(table))]
        return (min(e[0] for e in ends), max(e[1] for e in ends)) if ends else None

    def digest_rows(
        self, table: Entity | Copy, fields: Sequence[Field], prefixes: Sequence[str]
    ) -> list[tuple[str, int, int]]:
        found: list[tuple[str, int, int]] = []
        for context in self.entity.owners:
            rows = self.stores[context].digest_rows(table, fields, prefixes)
            found += [r for r in rows if self._held(context, r[0])]
        return sorted(found)

    def digest(
        self,
        table: Entity | Copy,
        fields: Sequence[Field],
        prefix: str,
        length: int,
        deadline: float | None = None,
    ) -> dict[str, Digest]:
        digests.in_time(deadline)
        rows = self.digest_rows(table, fields, [prefix])
        return digests.group(((i, hashed) for i, _, hashed in rows), prefix, length)

    def digest_under(
        self,
        table: Entity | Copy,
        fields: Sequence[Field],
        prefixes: Sequence[str],
        length: int,
        native: bool = False,
        deadline: float | None = None,
    ) -> dict[str, Digest]:
        """charter's own row hash only (native_hash is None): both sides then use it."""
        found: dict[str, Digest] = {}
        for prefix in prefixes:
            found.update(self.digest(table, fields, prefix, length, deadline))
        return found

    def native_hash(self, table: Entity | Copy, fields: Sequence[Field]) -> str | None:
        return None  # rows from several stores: charter's canonical hash, the same in each

    def bucket_length(self, table: Entity | Copy, fields: Sequence[Field]) -> int | None:
        return None  # no buckets are kept of records spread over several stores

    def refresh_buckets(self, table: Entity | Copy, fields: Sequence[Field], length: int) -> None:
        return None

    def bucket_digest(
        self, table: Entity | Copy, fields: Sequence[Field], prefixes: Sequence[str], by: int
    ) -> dict[str, Digest]:
        found: dict[str, Digest] = {}
        for prefix in prefixes:
            found.update(self.digest(table, fields, prefix, by))
        return found

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"{self.entity.name}'s records have several owners ({', '.join(self.entity.owners)})"
            f": '{name}' is not a read charter makes across them"
        )
