"""The canonical row encoding (charter.digests) is the same bytes on every store: values
of every field type, nulls and empty strings, Unicode, and numbers and timestamps at their
edges hash the same inside SQLite, inside PostgreSQL and in memory, in the owner's table
and in a copy's, and the same as the Python reference."""

from __future__ import annotations

import datetime as dt
import struct
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from charter import digests, model, values
from charter.digests import Digest
from charter.events import Event
from charter.ids import uuid7
from charter.model import Charter
from charter.owner import Transaction
from charter.stores.base import Store
from charter.stores.memory import MemoryStore
from charter.stores.memory import forget as forget_store
from charter.stores.postgres import PostgresStore
from charter.stores.sqlite import SQLiteStore
from tests.backends import POSTGRES

CHARTER = """\
charter: 1
name: digests
bus: "memory://unused/bus"
contexts:
  lab:    {team: lab-team,  store: "memory://unused/lab"}
  desk:   {team: desk-team, store: "memory://unused/desk"}
entities:
  Sample:
    owner: lab
    fields:
      s:  {type: string,    required: false}
      t:  {type: text,      required: false}
      i:  {type: integer,   required: false}
      n:  {type: number,    required: false}
      b:  {type: boolean,   required: false}
      ts: {type: timestamp, required: false}
      d:  {type: date,      required: false}
      u:  {type: uuid,      required: false}
      e:  {type: enum, values: [low, "hé", "漢字"], required: false}
copies:
  desk_samples:
    in: desk
    of: Sample
    fields: [e, u, d, ts, b, n, i, t, s]
    window: 1m
"""

UTC = dt.UTC
# Each row: field → value, as a caller gives it. Together they cover every edge named.
EDGES: list[dict[str, Any]] = [
    {},  # every field null
    {"s": "", "t": "", "i": 0, "n": 0.0, "b": False},
    {"s": "a", "t": "~", "i": -1, "n": -0.0, "b": True, "e": "low"},
    {"s": "3:abc", "t": "1:a~", "n": 1.0},  # looks like tokens
    {"s": "Ünïcödé 漢字 🎉 \u200b", "t": "\u00e9 vs e\u0301", "e": "hé"},
    {"s": "line\nbreak\ttab\r", "t": "'quote\" \\back", "e": "漢字"},
    {"s": "\x01\x1f\x7f", "t": "x" * 10_000},
    {"i": 2**63 - 1, "n": 1e15},
    {"i": -(2**63), "n": 1e16},
    {"n": 0.1},
    {"n": 1e-5},
    {"n": 5e-324},  # the smallest double (subnormal)
    {"n": 2.2250738585072014e-308},  # the smallest normal
    {"n": 1.7976931348623157e308},  # the largest
    {"n": -2.5, "i": 42},
    {"n": 123456789.12345679},
    {"n": 2**53 + 1},  # an integer given for a number
    {"ts": dt.datetime(1, 1, 1, tzinfo=UTC), "d": dt.date(1, 1, 1)},
    {"ts": dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "d": dt.date(9999, 12, 31)},
    {"ts": dt.datetime(1970, 1, 1, tzinfo=UTC), "d": dt.date(2024, 2, 29)},
    {"ts": "2024-03-31T02:30:00.000001+05:30"},  # another zone: UTC in every store
    {"ts": dt.datetime(999, 6, 1, 12, 0, 0, 1, tzinfo=UTC)},  # a year of three digits
    {"u": "00000000-0000-0000-0000-000000000000"},
    {"u": "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"},  # given in capitals
    {"u": uuid.UUID("0190a0b0-c0d0-7e00-8000-000000000001")},
]


def charter() -> Charter:
    return model.loads(CHARTER)


def _postgres(name: str) -> Store:
    return PostgresStore(f"{POSTGRES}?schema={name}")


def _drop_postgres(store: Store) -> None:
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{store.url.rsplit("=", 1)[1]}" CASCADE')


_FOLDER = Path(tempfile.mkdtemp(prefix="charter-digests-"))
KINDS = {
    "memory": (lambda name: MemoryStore(f"memory://digests/{name}"), lambda s: forget_store(s.url)),
    "sqlite": (lambda name: SQLiteStore(f"sqlite:///{_FOLDER}/{name}.db"), lambda s: None),
    "postgres": (_postgres, _drop_postgres),
}


@pytest.fixture(scope="module")
def stores() -> Iterator[dict[str, tuple[Store, Store]]]:
    """Each kind of store: an owner (context lab) and a copy store (context desk)."""
    made: dict[str, tuple[Store, Store]] = {}
    plan = charter()
    try:
        for kind, (make, _) in KINDS.items():
            tag = uuid7()[-10:]
            owner, desk = make(f"dg_lab_{tag}"), make(f"dg_desk_{tag}")
            owner.prepare(plan, "lab")
            desk.prepare(plan, "desk")
            made[kind] = (owner, desk)
        yield made
    finally:
        for kind, (owner, desk) in made.items():
            for store in (owner, desk):
                store.close()
                KINDS[kind][1](store)


def _canonical(plan: Charter, row: dict[str, Any]) -> dict[str, Any]:
    return values.check_new(plan.entities["Sample"], row)


def _reference(plan: Charter, entity_id: str, version: int, row: dict[str, Any]) -> int:
    copy = plan.copies["desk_samples"]
    fields = [plan.entities["Sample"].fields[f] for f in copy.fields]
    state = _canonical(plan, row)
    return digests.row_hash(
        digests.codes(fields), [entity_id, version, *(state[f] for f in copy.fields)]
    )


def _event(entity_id: str, state: dict[str, Any]) -> Event:
    return Event(
        uuid7(), "Sample", entity_id, 7, "created", tuple(state), state, "lab", values.now_text()
    )


def test_every_store_hashes_every_edge_value_as_the_reference(
    stores: dict[str, tuple[Store, Store]],
) -> None:
    plan = charter()
    entity, copy = plan.entities["Sample"], plan.copies["desk_samples"]
    fields = [entity.fields[f] for f in copy.fields]
    ids = sorted(uuid7() for _ in EDGES)
    expected = {i: _reference(plan, i, 7, row) for i, row in zip(ids, EDGES, strict=True)}
    assert len(set(expected.values())) == len(EDGES)  # no two edge rows collide
    seen: dict[str, dict[str, int]] = {}
    for kind, (owner, desk) in stores.items():
        events = [_event(i, _canonical(plan, row)) for i, row in zip(ids, EDGES, strict=True)]
        desk.backfill(copy, iter(()), 0)
        desk.apply(copy, [(n + 1, e) for n, e in enumerate(events)], [], len(events))
        got = {i: h for i, v, h in desk.digest_rows(copy, fields, [""])}
        assert got == expected, f"{kind}: copy rows hash other than the reference"
        seen[kind] = got
        whole = desk.digest(copy, fields, "", 0)
        assert whole == {"": Digest(len(ids), sum(expected.values()) % 2**64)}

        with owner.transaction() as writes:  # the owner's table, through an owner transaction
            tx = Transaction(plan, "lab", writes)
            made = [tx.create("Sample", **row) for row in EDGES]
            tx._commit_events()
        for record, row in zip(made, EDGES, strict=True):
            (mine,) = owner.digest_rows(entity, fields, [record.id])
            assert mine == (record.id, 1, _reference(plan, record.id, 1, row)), (kind, row)
    assert seen["sqlite"] == seen["postgres"] == seen["memory"]


def test_a_number_is_hashed_by_its_bits_and_minus_zero_as_zero() -> None:
    assert digests.value_text("n", 1.5) == struct.pack(">d", 1.5).hex() == "3ff8000000000000"
    assert digests.value_text("n", -0.0) == digests.value_text("n", 0.0) == "0" * 16
    assert digests.value_text("n", 3) == digests.value_text("n", 3.0)  # SQLite may hand back 3
    assert digests.value_text("b", 1) == digests.value_text("b", True) == "true"  # SQLite: 0/1


def test_tokens_keep_values_apart() -> None:
    """A value can never run into the next one: each token says its length, null is ~."""
    kinds = "s" + "i" + "ss"
    assert digests.row_text(kinds, ["a", 1, "b", None]) == "1:a1:11:b~"
    assert digests.row_text(kinds, ["a", 1, "b~", None]) != digests.row_text(
        kinds, ["a", 1, "b", "~"]
    )
    assert digests.row_text(kinds, ["a", 1, "", None]) != digests.row_text(
        kinds, ["a", 1, None, ""]
    )


def test_a_digest_is_the_same_in_any_order_and_survives_removals() -> None:
    rows = [(f"id{n}", digests.text_hash(str(n))) for n in range(100)]
    forward, backward = Digest.of(rows), Digest.of(rows[::-1])
    assert forward == backward
    total = forward.total
    for _, hashed in rows[:40]:
        total = (total - hashed) % 2**64
    assert Digest.of(rows[40:]).total == total
    assert not Digest.of(rows[1:]).same(forward)
