"""Fences on PostgreSQL (G10, charter.stores.fencing): `charter_fence`, and a row trigger
on the entity's table that refuses a write the fence forbids. `fence` takes the table in
SHARE ROW EXCLUSIVE mode before it writes the fence rows: every write transaction that
touched the table commits first, and every later one waits for the fence, then reads it
(a plpgsql statement takes a fresh snapshot under READ COMMITTED). So once `fence`
returns, the old owner's state is final and nothing can slip past."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from charter.lanes import PARTITIONS
from charter.model import Entity
from charter.records import Fence, Row
from charter.stores import fencing
from charter.stores.postgres.core import _Core

_TABLE = """
CREATE TABLE IF NOT EXISTS {s}.charter_fence (
    entity text NOT NULL, part integer NOT NULL, epoch integer NOT NULL,
    state text NOT NULL, holder text NOT NULL, PRIMARY KEY (entity, part))
"""

_PARTITION = """
CREATE OR REPLACE FUNCTION {s}.charter_partition(t text) RETURNS integer
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    crc bigint := 4294967295;
    b bytea := convert_to(t, 'UTF8');
    tab bigint[] := '{{{table}}}';
BEGIN
    FOR i IN 0 .. length(b) - 1 LOOP
        crc := (crc >> 8) # tab[((crc # get_byte(b, i)) & 255) + 1];
    END LOOP;
    RETURN ((crc # 4294967295) % {partitions})::integer;
END $$
"""

_CHECK = """
CREATE OR REPLACE FUNCTION {s}.charter_fence_check() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    rid text;
    f record;
BEGIN
    IF TG_OP = 'INSERT' THEN rid := NEW.id::text; ELSE rid := OLD.id::text; END IF;
    SELECT state, part, epoch, holder INTO f FROM {s}.charter_fence
        WHERE entity = TG_ARGV[0] AND part IN (-1, {s}.charter_partition(rid))
        ORDER BY part DESC LIMIT 1;
    IF FOUND AND f.state <> 'owner' THEN
        RAISE EXCEPTION USING ERRCODE = '23F10', MESSAGE = '{prefix}' ||
            CASE WHEN f.state = 'fenced' THEN 'fenced: ' ELSE '' END ||
            CASE WHEN f.part = -1 THEN 'the whole entity' ELSE 'partition ' || f.part END ||
            CASE WHEN f.state = 'fenced'
                 THEN ' moved to ''' || f.holder || ''' at epoch ' || f.epoch
                 ELSE ' is moving here (epoch ' || f.epoch || ') and not yet promoted' END;
    END IF;
    IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
    RETURN NEW;
END $$
"""


class _Fences(_Core):
    """fence, unfence, fences, promote (the Store protocol's G10 part)."""

    def _fence_ddl(self, conn: psycopg.Connection[Any], entity: Entity) -> None:
        """The fence table, functions and the entity's trigger, unless there already (DDL
        takes locks a transfer's switch should not wait for)."""
        trigger = f"{entity.table}_charter_fence"
        exists = conn.execute(
            "SELECT 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN "
            "pg_namespace n ON n.oid = c.relnamespace WHERE t.tgname = %s AND n.nspname = %s",
            (trigger, self.schema),
        ).fetchone()
        if exists:
            return
        s = f'"{self.schema}"'
        conn.execute(_TABLE.format(s=s))
        table = ",".join(map(str, fencing.crc32_table()))
        conn.execute(_PARTITION.format(s=s, table=table, partitions=PARTITIONS))
        conn.execute(_CHECK.format(s=s, prefix=fencing.PREFIX))
        conn.execute(
            f'CREATE TRIGGER "{trigger}" BEFORE INSERT OR UPDATE OR DELETE ON '
            f"{self._t(entity.table)} FOR EACH ROW EXECUTE FUNCTION "
            f"{self._t('charter_fence_check')}('{entity.name}')"
        )

    def _set_fences(
        self,
        conn: psycopg.Connection[Any],
        entity: Entity,
        parts: Sequence[int] | None,
        epoch: int,
        holder: str,
        state: str,
    ) -> None:
        if parts is None:
            conn.execute(
                f"DELETE FROM {self._t('charter_fence')} WHERE entity = %s", (entity.name,)
            )
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {self._t('charter_fence')} VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (entity, part) DO UPDATE SET epoch = excluded.epoch, "
                "state = excluded.state, holder = excluded.holder",
                [(entity.name, p, epoch, state, holder) for p in fencing.parts_of(parts)],
            )

    def fence(
        self, entity: Entity, parts: Sequence[int] | None, epoch: int, holder: str, state: str
    ) -> None:
        with self.pool.connection() as conn, conn.transaction():
            self._fence_ddl(conn, entity)
            conn.execute(f"LOCK TABLE {self._t(entity.table)} IN SHARE ROW EXCLUSIVE MODE")
            self._set_fences(conn, entity, parts, epoch, holder, state)

    def unfence(self, entity: Entity, parts: Sequence[int] | None) -> None:
        with self.pool.connection() as conn, conn.transaction():
            conn.execute(_TABLE.format(s=f'"{self.schema}"'))
            with conn.cursor() as cur:
                cur.executemany(
                    f"DELETE FROM {self._t('charter_fence')} WHERE entity = %s AND part = %s",
                    [(entity.name, p) for p in fencing.parts_of(parts)],
                )

    def fences(self, entity: str) -> list[Fence]:
        with self.pool.connection() as conn:
            found = conn.execute(
                "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = 'charter_fence'",
                (self.schema,),
            ).fetchone()
            if not found:
                return []
            rows = conn.execute(
                f"SELECT entity, part, epoch, state, holder FROM {self._t('charter_fence')} "
                "WHERE entity = %s ORDER BY part",
                (entity,),
            ).fetchall()
        return [Fence(*row) for row in rows]

    def promote(
        self,
        entity: Entity,
        parts: Sequence[int] | None,
        epoch: int,
        holder: str,
        rows: Sequence[Row],
        gone: Sequence[str] = (),
        state: str = fencing.OWNER,
    ) -> None:
        names = ["id", "version", *entity.fields]
        insert = self._sql[f"insert:{entity.name}"]
        with self.pool.connection() as conn, conn.transaction():
            self._fence_ddl(conn, entity)
            conn.execute(f"LOCK TABLE {self._t(entity.table)} IN SHARE ROW EXCLUSIVE MODE")
            self._set_fences(conn, entity, parts, epoch, holder, fencing.OWNER)
            ids = [r["id"] for r in rows] + list(gone)
            if ids:
                conn.execute(
                    f"DELETE FROM {self._t(entity.table)} WHERE id::text = ANY(%s)", (ids,)
                )
            with conn.cursor() as cur:
                cur.executemany(insert, [tuple(r.get(n) for n in names) for r in rows])
            if state != fencing.OWNER:
                self._set_fences(conn, entity, parts, epoch, holder, state)
