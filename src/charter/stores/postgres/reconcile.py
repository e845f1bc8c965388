"""Reconciliation's side of the PostgreSQL store. Digests computed by the server in one
pass: each row's canonical text (charter.digests) written in SQL from the charter's field
types, hashed with md5, summed modulo 2^64 (in three parts that a bigint sum holds: the
high 32 bits signed, then two unsigned 16-bit parts), grouped into the parts of the range
with width_bucket; only the sums leave the server. And the mends a repair brings
(records.Mend), applied by the copy's projector."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from charter import digests
from charter.digests import Digest
from charter.model import Copy, Entity, Field
from charter.records import Mend
from charter.stores.postgres.core import _Core
from charter.values import now_text


def value_text(field: Field) -> str:
    """An SQL expression: the canonical text of `field`'s column (charter.digests)."""
    column = f'"{field.name}"'
    kind = field.type
    if kind == "timestamp":
        return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
    if kind == "date":
        return f"to_char({column}, 'YYYY-MM-DD')"
    if kind == "number":
        return f"encode(float8send({column} + 0::float8), 'hex')"  # -0 + 0 is 0
    if kind in ("uuid", "integer", "boolean"):
        return f"{column}::text"  # boolean: true / false
    return column


def row_text(fields: Sequence[Field]) -> str:
    """An SQL expression: the canonical text of a row of `fields`."""
    tokens = ["length(id) || ':' || id", "length(version::text) || ':' || version"]
    for field in fields:
        text = value_text(field)
        tokens.append(f"coalesce(length({text}) || ':' || {text}, '~')")
    return "concat(" + ", ".join(tokens) + ")"


def _range(low: str, high: str | None) -> tuple[str, list[Any]]:
    if high is None:
        return "id >= %s", [low]
    return "id >= %s AND id < %s", [low, high]


_SUMS = (
    "sum(('x' || substr(m, 1, 8))::bit(32)::int), "
    "sum(('x' || substr(m, 9, 4))::bit(16)::int), "
    "sum(('x' || substr(m, 13, 4))::bit(16)::int)"
)


def _total(high: int | None, mid: int | None, low: int | None) -> int:
    return ((int(high or 0) << 32) + (int(mid or 0) << 16) + int(low or 0)) & digests.MASK


class _Reconcile(_Core):
    """id_range, digest, digest_rows; mend."""

    def id_range(self, table: Entity | Copy) -> tuple[str, str] | None:
        with self.pool.connection() as conn:
            low, high = conn.execute(
                f"SELECT min(id), max(id) FROM {self._t(table.table)}"
            ).fetchone()  # type: ignore[misc]
        return None if low is None else (str(low), str(high))

    def digest(
        self,
        table: Entity | Copy,
        fields: Sequence[Field],
        low: str,
        high: str | None,
        splits: Sequence[str] = (),
    ) -> list[Digest]:
        where, params = _range(low, high)
        bucket = "width_bucket(id, %s::text[])" if splits else "0"
        query = (
            f"SELECT b, count(*), {_SUMS}, min(id), max(id) FROM ("
            f"SELECT id, {bucket} AS b, md5({row_text(fields)}) AS m "
            f"FROM {self._t(table.table)} WHERE {where}) AS r GROUP BY b"
        )
        found = [Digest()] * (len(splits) + 1)
        with self.pool.connection() as conn:
            rows = conn.execute(query, [list(splits), *params] if splits else params)
            for part, count, hi, mid, lo, first, last in rows:
                found[int(part)] = Digest(int(count), _total(hi, mid, lo), first, last)
        return found

    def digest_rows(
        self, table: Entity | Copy, fields: Sequence[Field], low: str, high: str | None
    ) -> list[tuple[str, int, int]]:
        where, params = _range(low, high)
        query = (
            f"SELECT id, version, substr(md5({row_text(fields)}), 1, 16) "
            f"FROM {self._t(table.table)} WHERE {where} ORDER BY id"
        )
        with self.pool.connection() as conn:
            rows = conn.execute(query, params).fetchall()
        return [(str(i), int(v), int(h, 16)) for i, v, h in rows]

    def mend(self, copy: Copy, mends: Sequence[Mend]) -> int:
        table, tombstones = self._t(copy.table), self._t("charter_tombstone")
        names = ["id", "version", *copy.fields, "synced_at"]
        columns = ", ".join(f'"{n}"' for n in names)
        sets = ", ".join(f'"{n}" = excluded."{n}"' for n in names[1:])
        upsert = (
            f"INSERT INTO {table} ({columns}) VALUES ({', '.join('%s' for _ in names)}) "
            f"ON CONFLICT (id) DO UPDATE SET {sets}"
        )
        now, changed = now_text(), 0
        with self.pool.connection() as conn, conn.transaction():
            for item in mends:
                key = (copy.name, item.entity_id)
                row = conn.execute(
                    f"SELECT version FROM {table} WHERE id = %s FOR UPDATE", (item.entity_id,)
                ).fetchone()
                seen = conn.execute(
                    f"SELECT version FROM {tombstones} WHERE copy = %s AND id = %s FOR UPDATE",
                    key,
                ).fetchone()
                if not item.takes(row[0] if row else None, seen[0] if seen else None):
                    continue
                changed += 1
                if item.over is not None:
                    conn.execute(f"DELETE FROM {tombstones} WHERE copy = %s AND id = %s", key)
                if item.state is None:
                    conn.execute(f"DELETE FROM {table} WHERE id = %s", (item.entity_id,))
                    conn.execute(
                        f"INSERT INTO {tombstones} (copy, id, version) VALUES (%s, %s, %s) "
                        f"ON CONFLICT (copy, id) DO UPDATE SET version = "
                        f"greatest({tombstones}.version, excluded.version)",
                        (*key, item.version),
                    )
                else:
                    state = [item.state.get(name) for name in copy.fields]
                    conn.execute(upsert, (item.entity_id, item.version, *state, now))
        return changed
