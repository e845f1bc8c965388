"""Reconciliation's side of the PostgreSQL store. Digests computed by the server in one
pass: each row's canonical text (charter.digests) written in SQL from the charter's field
types (times, dates and numbers as the hexadecimal of their binary send format, so nothing
is formatted), hashed with md5, its first 64 bits summed (PostgreSQL adds bigints in 128
bits), grouped by a prefix of the id; only the sums leave the server. And the mends a
repair brings (records.Mend), and a copy's tombstones, for the copy's projector."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import psycopg

from charter import clock, digests
from charter.digests import Digest
from charter.errors import OutOfTimeError
from charter.model import Copy, Entity, Field
from charter.records import Mend
from charter.stores.postgres.core import _Core
from charter.stores.postgres.schema import _column_type
from charter.values import now_text

# Collations under which text compares by code points, as a prefix's range needs
# (charter.digests.prefix_end); under any other the range is compared in "C", unindexed.
_BY_CODE_POINTS = frozenset({"c", "posix", "c.utf8", "c.utf-8", "ucs_basic"})
# A grouped digest's settings, in one round trip: no sort (below), room for its groups, no
# JIT (the prefixes' rows are estimated at a million: compiling took 150 ms to 9 s under
# load, for 4,741 rows; over a whole table it saved nothing).
_GROUPING = (
    "SELECT set_config('enable_sort', 'off', true), set_config('work_mem', '64MB', true), "
    "set_config('jit', 'off', true)"
)
# Rows under a list of prefixes (ranges of the id): through the primary key only. Estimated
# at a tenth of the table a range, they were once read by a parallel scan of the whole
# table, each row checked against every range: 100 ranges of 47 rows took 14 s, not 40 ms.
_BY_RANGES = (
    "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', "
    "true), set_config('max_parallel_workers_per_gather', '0', true)"
)


def value_text(field: Field) -> str:
    """An SQL expression: the canonical token of `field`'s column (charter.digests), null
    as `~`; a fixed-width text's length is written as a constant, not computed."""
    column = f'"{field.name}"'
    kind = field.type
    if kind == "timestamp":
        return f"coalesce('16:' || encode(timestamptz_send({column}), 'hex'), '~')"
    if kind == "date":
        return f"coalesce('8:' || encode(date_send({column}), 'hex'), '~')"
    if kind == "number":  # -0 + 0 is 0
        return f"coalesce('16:' || encode(float8send({column} + 0::float8), 'hex'), '~')"
    if kind == "boolean":
        return f"CASE WHEN {column} THEN '4:true' WHEN NOT {column} THEN '5:false' ELSE '~' END"
    if kind == "uuid":
        return f"coalesce('36:' || {column}::text, '~')"
    if kind == "integer":
        return f"coalesce(length({column}::text) || ':' || {column}, '~')"
    return f"coalesce(length({column}) || ':' || {column}, '~')"


def row_text(fields: Sequence[Field]) -> str:
    """An SQL expression: the canonical text of a row of `fields`."""
    tokens = ["length(id) || ':' || id", "length(version::text) || ':' || version"]
    tokens += [value_text(field) for field in fields]
    return " || ".join(tokens)


def row_hash(fields: Sequence[Field]) -> str:
    """An SQL expression: a row's hash as a (signed) bigint."""
    return f"('x' || left(md5({row_text(fields)}), 16))::bit(64)::bigint"


def native_hash(fields: Sequence[Field]) -> str:
    """An SQL expression: a row's hash by PostgreSQL's own hash functions (those of hash
    indexes and hash partitions: stable across versions, each type's equality), a fifth of
    the cost of the canonical md5 (digest_under(native=True)); text compared as bytes."""
    columns = ['id COLLATE "C"', "version"]
    columns += [
        f'"{f.name}" COLLATE "C"' if _column_type(f) == "text" else f'"{f.name}"' for f in fields
    ]
    return f"hash_record_extended(ROW({', '.join(columns)}), 0)"


# A value of each type charter makes columns of, hashed: two servers whose hashes of it
# agree hash alike (the same functions, the same byte order).
_PROBE = (
    "SELECT current_setting('server_version_num')::int / 10000, hash_record_extended(ROW("
    "'charter'::text, 1::int, 2::bigint, -0.5::float8, true, '2000-01-02'::date, "
    "'2000-01-01 00:00:01+00'::timestamptz, '00000000-0000-7000-8000-000000000001'::uuid), 0)"
)


_HASHED = frozenset(
    {"text", "integer", "bigint", "double precision", "boolean", "uuid", "date"}
    | {"timestamp with time zone"}
)  # the column types charter makes (each with a hash function): any other, no native hash


class _Reconcile(_Core):
    """id_range, digest, digest_rows, tombstone; mend."""

    _by_code_points: bool | None = None

    def _id(self) -> str:
        """The id column as a prefix's range compares it (see _BY_CODE_POINTS)."""
        if self._by_code_points is None:
            with self.pool.connection() as conn:
                (collation,) = conn.execute(  # type: ignore[misc]
                    "SELECT datcollate FROM pg_database WHERE datname = current_database()"
                ).fetchone()
            self._by_code_points = str(collation).lower() in _BY_CODE_POINTS
        return "id" if self._by_code_points else 'id COLLATE "C"'

    def _under(self, prefix: str) -> tuple[str, list[Any]]:
        """A WHERE clause: ids starting with `prefix`, as a range of the primary key."""
        if not prefix:
            return "", []
        end, column = digests.prefix_end(prefix), self._id()
        if end is None:
            return f" WHERE {column} >= %s", [prefix]
        return f" WHERE {column} >= %s AND {column} < %s", [prefix, end]

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
        prefix: str,
        length: int,
        deadline: float | None = None,
    ) -> dict[str, Digest]:
        where, params = self._under(prefix)
        source = f"{self._t(table.table)}{where}"
        return self._grouped(source, params, row_hash(fields), length, deadline=deadline)

    def digest_under(
        self,
        table: Entity | Copy,
        fields: Sequence[Field],
        prefixes: Sequence[str],
        length: int,
        native: bool = False,
        deadline: float | None = None,
    ) -> dict[str, Digest]:
        hashed = native_hash(fields) if native else row_hash(fields)
        ends = [digests.prefix_end(p) for p in prefixes]
        if len(prefixes) <= 1 or None in ends:  # "" or a prefix no range ends: one by one
            found: dict[str, Digest] = {}
            for prefix in prefixes:
                where, params = self._under(prefix)
                source = f"{self._t(table.table)}{where}"
                found.update(self._grouped(source, params, hashed, length, deadline=deadline))
            return found
        ranges = [list(prefixes), ends]
        return self._grouped(self._ranges(table), ranges, hashed, length, True, deadline)

    def _ranges(self, table: Entity | Copy) -> str:
        """FROM the rows whose id lies in one of the ranges [lo, hi) given as two arrays
        (each a prefix: digests.prefix_end), read as _BY_RANGES says."""
        column = self._id()
        return (
            f"unnest(%s::text[], %s::text[]) AS r(lo, hi) JOIN {self._t(table.table)} "
            f"ON {column} >= r.lo AND {column} < r.hi"
        )

    def native_hash(self, table: Entity | Copy, fields: Sequence[Field]) -> str | None:
        names = ["id", "version", *(f.name for f in fields)]
        with self.pool.connection() as conn:
            try:
                version, probe = conn.execute(_PROBE).fetchone()  # type: ignore[misc]
            except psycopg.errors.UndefinedFunction:  # before PostgreSQL 14: canonical only
                return None
            types: dict[str, str] = dict(
                conn.execute(
                    "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
                    "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                    (self._t(table.table),),
                ).fetchall()
            )
        held = [types.get(name) for name in names]
        if not all(kind in _HASHED for kind in held):  # a column altered past charter
            return None
        return f"postgresql {version} {probe} " + " ".join(str(kind) for kind in held)

    def _grouped(
        self,
        source: str,
        params: list[Any],
        hashed: str,
        length: int,
        ranged: bool = False,
        deadline: float | None = None,
    ) -> dict[str, Digest]:
        """The digests of the rows of `source` (FROM …), by the first `length` characters
        of the id, summed by the server; `hashed`: a row's hash, an SQL expression."""
        query = (
            f"SELECT substr(id, 1, %s) AS k, count(*), sum({hashed})::text FROM {source} GROUP BY k"
        )
        with self.pool.connection() as conn, conn.transaction():
            # The planner takes every id prefix for distinct and would sort the table to
            # group it (on disk, 3x the pass); a comparison asks for some thousands of
            # groups, which fit in memory (tens of MB at FIRST_PARTS: not on disk).
            conn.execute(_GROUPING)
            if ranged:
                conn.execute(_BY_RANGES)
            if deadline is not None:  # the server cancels the pass at the deadline
                left_ms = int((deadline - clock.monotonic()) * 1000)
                if left_ms <= 0:
                    raise OutOfTimeError("the deadline passed before the digest started")
                conn.execute(f"SET LOCAL statement_timeout = {left_ms}")
            try:
                rows = conn.execute(query, [max(length, 0), *params]).fetchall()
            except psycopg.errors.QueryCanceled as exc:
                if deadline is None:
                    raise
                raise OutOfTimeError("the digest was stopped at its deadline") from exc
        return {
            str(key): Digest(int(count), int(total or 0) & digests.MASK)
            for key, count, total in rows
        }

    def digest_rows(
        self, table: Entity | Copy, fields: Sequence[Field], prefixes: Sequence[str]
    ) -> list[tuple[str, int, int]]:
        if not prefixes:
            return []
        ends = [digests.prefix_end(p) for p in prefixes]
        ranged = not ("" in prefixes or None in ends)  # else: a prefix holds (nearly) all
        source = self._ranges(table) if ranged else self._t(table.table)
        params: list[Any] = [list(prefixes), ends] if ranged else []
        with self.pool.connection() as conn, conn.transaction():
            # a few thousand rows, estimated at a million: compiling it took 45 ms
            conn.execute("SET LOCAL jit = off")
            if ranged:
                conn.execute(_BY_RANGES)
            rows = conn.execute(
                f"SELECT id, version, {row_hash(fields)} FROM {source}", params
            ).fetchall()
        found = {str(i): (int(v), int(h) & digests.MASK) for i, v, h in rows}
        return [(i, v, h) for i, (v, h) in sorted(found.items())]

    def tombstone(self, copy: Copy, entity_id: str) -> int | None:
        with self.pool.connection() as conn:
            row = conn.execute(
                f"SELECT version FROM {self._t('charter_tombstone')} WHERE copy = %s AND id = %s",
                (copy.name, entity_id),
            ).fetchone()
        return None if row is None else int(row[0])

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


# -- incremental digests (Store.buckets) ----------------------------------------------------
#
# Per (table, fields), charter_bucket holds each bucket's digest, and triggers on the table
# append the bucket of each row a write touched to charter_bucket_dirty, in the write's own
# transaction (an append to a table with no index: concurrent writers never wait on one
# another): row triggers, BEFORE the row is written (no after-trigger queue), about 5-7 µs
# a row on the server (benchmarks/RESULTS.md). A check takes the marks committed so far
# (DELETE … RETURNING, under an advisory lock: one check of a key at a time), recomputes
# those buckets from the table in one statement and commits; a mark committed later stays
# for the next check, so the buckets a check reads equal a recomputation from the rows.

_BUCKET_TABLES = (
    "CREATE TABLE IF NOT EXISTS {s}.charter_bucket (key text NOT NULL, bucket text NOT NULL, "
    "count bigint NOT NULL, total numeric NOT NULL, PRIMARY KEY (key, bucket))",
    # no index and no sequence: the cheapest append (a store made before kept a serial
    # seq; its default fills it, so the triggers' two columns fit either)
    "CREATE TABLE IF NOT EXISTS {s}.charter_bucket_dirty (key text NOT NULL, bucket text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {s}.charter_bucket_meta (key text PRIMARY KEY, "
    "tbl text NOT NULL, length integer NOT NULL)",
    # the upper level's length (digests.upper_length), its groups kept under `key^`
    "ALTER TABLE {s}.charter_bucket_meta ADD COLUMN IF NOT EXISTS top integer",
)


def _name(key: str) -> str:
    return "charter_bucket_" + hashlib.sha1(key.encode()).hexdigest()[:12]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _triggers(s: str, name: str, target: str, key: str, length: int) -> list[str]:
    """The function and triggers that mark the buckets a write touches. They run as their
    owner (SECURITY DEFINER): a service's role writes its table, not charter_bucket_dirty.
    A TRUNCATE marks the whole table ('')."""
    function, marks = f'{s}."{name}"', f"{s}.charter_bucket_dirty (key, bucket)"
    header = (
        f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER "
        "SET search_path = pg_catalog, pg_temp AS $$ BEGIN "
    )
    truncate = (
        f'CREATE TRIGGER "{name}_truncate" AFTER TRUNCATE ON {target} '
        f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
    )
    whole = f"IF TG_OP = 'TRUNCATE' THEN INSERT INTO {marks} VALUES ({_literal(key)}, ''); "
    # a row trigger, before the row is written (no after-trigger queue to fill and fire);
    # a statement trigger over transition tables cost 9-11 µs a statement, and 13 µs a row
    # in a copy's batch whose rows fall in different buckets (benchmarks/RESULTS.md)
    mark = f"INSERT INTO {marks} VALUES ({_literal(key)}, substr("
    body = (
        f"{whole}RETURN NULL; END IF; "
        f"IF TG_OP <> 'DELETE' THEN {mark}NEW.id, 1, {length})); END IF; "
        f"IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND NEW.id IS DISTINCT FROM OLD.id) THEN "
        f"{mark}OLD.id, 1, {length})); END IF; "
        "IF TG_OP = 'DELETE' THEN RETURN OLD; END IF; RETURN NEW; END $$"
    )
    triggers = [
        f'CREATE TRIGGER "{name}_{event.lower()}" BEFORE {event} ON {target} '
        f"FOR EACH ROW EXECUTE FUNCTION {function}()"
        for event in ("INSERT", "DELETE", "UPDATE")
    ]
    return [header + body, *triggers, truncate]


def _ranges(select: str) -> str:
    """A FROM item: `select` once for each range of two arrays passed as parameters
    (r.charter_lo, r.charter_hi), an index scan each. Not a join: with no statistics on
    the buckets (they were just built) PostgreSQL joined every bucket to every range,
    200,000 comparisons for 2,560 buckets; OFFSET 0 keeps the subquery from being
    flattened into that join."""
    return (
        "unnest(%s::text[], %s::text[]) AS r(charter_lo, charter_hi), "
        f"LATERAL ({select} OFFSET 0) AS b"
    )


def _disjoint(buckets: Sequence[str]) -> list[str]:
    """`buckets` less any under another of them (an id shorter than the length is a bucket
    of its own, and a prefix of longer ones), so their ranges never meet."""
    kept: list[str] = []
    for bucket in sorted(set(buckets)):
        if not kept or not bucket.startswith(kept[-1]):
            kept.append(bucket)
    return kept


class _Buckets(_Reconcile):
    """bucket_length, buckets, drop_buckets."""

    def bucket_length(self, table: Entity | Copy, fields: Sequence[Field]) -> int | None:
        key = digests.bucket_key(table.table, fields)
        with self.pool.connection() as conn:
            found = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", (f"{self.schema}.charter_bucket_meta",)
            ).fetchone()
            if not found or not found[0]:
                return None
            row = conn.execute(
                f"SELECT length FROM {self._t('charter_bucket_meta')} WHERE key = %s", (key,)
            ).fetchone()
        return None if row is None else int(row[0])

    def refresh_buckets(self, table: Entity | Copy, fields: Sequence[Field], length: int) -> None:
        key = digests.bucket_key(table.table, fields)
        if self.bucket_length(table, fields) != length:
            self._build(table, fields, key, length)
            return
        held = self._t("charter_bucket")
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{self.schema}.{key}",))
            dirty = sorted(
                {
                    str(b)
                    for (b,) in conn.execute(
                        f"DELETE FROM {self._t('charter_bucket_dirty')} WHERE key = %s "
                        "RETURNING bucket",
                        (key,),
                    )
                }
            )
            if not dirty:
                return
            conn.execute("SET LOCAL jit = off")  # a few buckets' rows, estimated at many
            target = self._t(table.table)
            if "" in dirty:  # truncated: every bucket again
                conn.execute(f"DELETE FROM {held} WHERE key = %s", (key,))
                conn.execute(
                    f"INSERT INTO {held} SELECT %s, substr(id, 1, %s) AS k, count(*), "
                    f"sum({row_hash(fields)}) FROM {target} GROUP BY k",
                    [key, length],
                )
                self._upper(conn, key, [""])
                return
            conn.execute(f"DELETE FROM {held} WHERE key = %s AND bucket = ANY(%s)", (key, dirty))
            ranges = _disjoint(dirty)
            ends = [digests.prefix_end(b) for b in ranges]
            column = self._id()
            if any(e is None for e in ends):
                source, params = target, []  # a bucket that holds nearly every id
            else:
                source = _ranges(
                    f"SELECT * FROM {target} WHERE {column} >= r.charter_lo "
                    f"AND {column} < r.charter_hi"
                )
                params = [ranges, ends]
            conn.execute(
                f"INSERT INTO {held} SELECT %s, substr(id, 1, %s) AS k, count(*), "
                f"sum({row_hash(fields)}) FROM {source} WHERE substr(id, 1, %s) = ANY(%s) "
                "GROUP BY k",
                [key, length, *params, length, dirty],
            )
            self._upper(conn, key, dirty)

    def _upper(self, conn: psycopg.Connection[Any], key: str, buckets: Sequence[str]) -> None:
        """The upper level's groups over `buckets` ("": all) summed again from the buckets,
        in the caller's transaction (so the two levels always commit together)."""
        held, meta = self._t("charter_bucket"), self._t("charter_bucket_meta")
        row = conn.execute(f"SELECT top FROM {meta} WHERE key = %s", (key,)).fetchone()
        if row is None or row[0] is None:
            return  # kept before there was an upper level: summed when asked
        top, upper = int(row[0]), f"{key}^"
        if "" in buckets:
            conn.execute(f"DELETE FROM {held} WHERE key = %s", (upper,))
            conn.execute(
                f"INSERT INTO {held} SELECT %s, substr(bucket, 1, %s), sum(count), sum(total) "
                f"FROM {held} WHERE key = %s GROUP BY 2",
                (upper, top, key),
            )
            return
        groups = sorted({b[:top] for b in buckets})
        ranges = _disjoint(groups)
        ends = [digests.prefix_end(g) for g in ranges]
        conn.execute(f"DELETE FROM {held} WHERE key = %s AND bucket = ANY(%s)", (upper, groups))
        params: list[Any]
        if any(e is None for e in ends):
            source, params = f"{held} WHERE key = %s", [key]
        else:
            source = _ranges(
                f"SELECT * FROM {held} WHERE key = %s AND bucket >= r.charter_lo "
                "AND bucket < r.charter_hi"
            )
            source, params = f"{source} WHERE true", [ranges, ends, key]
        conn.execute(
            f"INSERT INTO {held} SELECT %s, substr(bucket, 1, %s), sum(count), sum(total) "
            f"FROM {source} AND substr(bucket, 1, %s) = ANY(%s) GROUP BY 2",
            [upper, top, *params, top, groups],
        )

    def bucket_digest(
        self, table: Entity | Copy, fields: Sequence[Field], prefixes: Sequence[str], by: int
    ) -> dict[str, Digest]:
        key, held = digests.bucket_key(table.table, fields), self._t("charter_bucket")
        ends = [digests.prefix_end(p) for p in prefixes]
        params: list[Any]
        if not prefixes:
            return {}
        whole = "" in prefixes or any(e is None for e in ends)
        if whole:
            query, params = f"FROM {held} WHERE key = %s", [key]
        else:
            query = "FROM " + _ranges(
                f"SELECT * FROM {held} WHERE key = %s AND bucket >= r.charter_lo "
                "AND bucket < r.charter_hi"
            )
            params = [list(prefixes), ends, key]
        # the sums as text: psycopg makes a Decimal of a numeric, 5x slower to read
        select = f"SELECT substr(bucket, 1, %s), sum(count)::bigint, sum(total)::text {query}"
        if whole:  # the upper level as kept, when it is the one asked for; else summed
            top = f"(SELECT top FROM {self._t('charter_bucket_meta')} WHERE key = %s)"
            sql = (
                f"SELECT bucket, count, total::text FROM {held} WHERE key = %s AND {top} = %s "
                f"UNION ALL {select} AND {top} IS DISTINCT FROM %s GROUP BY 1"
            )
            params = [f"{key}^", key, by, by, *params, key, by]
        else:
            sql, params = f"{select} GROUP BY 1", [by, *params]
        with self.pool.connection() as conn:
            rows = conn.execute(sql, params).fetchall()
        return {str(b): Digest(int(c), int(t) & digests.MASK) for b, c, t in rows}

    def _build(self, table: Entity | Copy, fields: Sequence[Field], key: str, length: int) -> None:
        """The triggers first, in a short transaction (it waits for the writes in flight
        and holds the next ones only while it creates them); then every bucket from the
        rows, with the marks: a write between the two is in both, recomputed once more by
        the next check, never lost. Until the second commits, the buckets are not kept
        (no `_meta` row), so no check reads them half built."""
        s, name, target = f'"{self.schema}"', _name(key), self._t(table.table)
        with self.pool.connection() as conn, conn.transaction():
            for statement in _BUCKET_TABLES:
                conn.execute(statement.format(s=s))
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{self.schema}.{key}",))
            self._drop(conn, key, table)
            if isinstance(table, Copy):  # a copy has one set of fields: those it had are gone
                others = conn.execute(
                    f"SELECT key FROM {s}.charter_bucket_meta WHERE tbl = %s AND key <> %s",
                    (table.table, key),
                ).fetchall()
                for (other,) in others:
                    self._drop(conn, str(other), table)
            for statement in _triggers(s, name, target, key, length):
                conn.execute(statement)
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{self.schema}.{key}",))
            # the marks before the rows (READ COMMITTED: a snapshot a statement), so every
            # mark taken is in what the pass below sees
            conn.execute(f"DELETE FROM {s}.charter_bucket_dirty WHERE key = %s", (key,))
            conn.execute(f"DELETE FROM {s}.charter_bucket WHERE key = %s", (key,))
            conn.execute(
                f"INSERT INTO {s}.charter_bucket SELECT %s, substr(id, 1, %s) AS k, count(*), "
                f"sum({row_hash(fields)}) FROM {target} GROUP BY k",
                [key, length],
            )
            sample = conn.execute(f"SELECT min(id) FROM {target}").fetchone()
            top = digests.upper_length(str((sample[0] if sample else None) or ""), length)
            conn.execute(
                f"INSERT INTO {s}.charter_bucket_meta (key, tbl, length, top) "
                "VALUES (%s, %s, %s, %s)",
                (key, table.table, length, top),
            )
            self._upper(conn, key, [""])

    def _drop(self, conn: psycopg.Connection[Any], key: str, table: Entity | Copy) -> None:
        name = _name(key)
        for event in ("insert", "delete", "update", "truncate"):
            conn.execute(f'DROP TRIGGER IF EXISTS "{name}_{event}" ON {self._t(table.table)}')
        conn.execute(f'DROP FUNCTION IF EXISTS "{self.schema}"."{name}"()')
        for held in ("charter_bucket", "charter_bucket_dirty", "charter_bucket_meta"):
            conn.execute(f"DELETE FROM {self._t(held)} WHERE key = %s", (key,))
        conn.execute(f"DELETE FROM {self._t('charter_bucket')} WHERE key = %s", (f"{key}^",))

    def drop_buckets(self, table: Entity | Copy, fields: Sequence[Field]) -> None:
        if self.bucket_length(table, fields) is None:
            return
        with self.pool.connection() as conn, conn.transaction():
            self._drop(conn, digests.bucket_key(table.table, fields), table)
