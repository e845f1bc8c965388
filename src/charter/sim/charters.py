"""The charter a simulation runs: its own small system by default (a library), or any
charter file, with every store and the bus moved into memory."""

from __future__ import annotations

import dataclasses
import functools
import random
from pathlib import Path

from charter import model
from charter.lanes import PARTITIONS
from charter.model import CONTRACT, Charter, Command, Copy, Field, Move
from charter.sim.sagas import CHARTER as SHOP

LIBRARY = """\
charter: 1
name: library
bus: memory://sim/bus
contexts:
  members: {team: member-desk, store: memory://sim/members}
  loans:   {team: circulation, store: memory://sim/loans}
  desk:    {team: front-desk,  store: memory://sim/desk}
entities:
  Member:
    owner: members
    fields:
      email:  {type: string, unique: true}
      name:   {type: string}
      tier:   {type: enum, values: [basic, gold], default: basic}
      pin:    {type: string, required: false, private: true}
  Loan:
    owner: loans
    fields:
      member_id: {type: uuid}
      book:      {type: string}
      starts_at: {type: timestamp}
      ends_at:   {type: timestamp}
    constraints:
      - no_overlap: {per: [book], range: [starts_at, ends_at]}
copies:
  loan_members:
    in: loans
    of: Member
    fields: [name, email]
    window: 5s
  desk_members:
    in: desk
    of: Member
    fields: [name]
    window: 30s
  desk_loans:
    in: desk
    of: Loan
    fields: [book, starts_at, ends_at]
    window: 1m
"""


def library() -> Charter:
    return model.loads(LIBRARY, "library.yaml")


def in_memory(charter: Charter) -> Charter:
    """The same charter with each context's store and the bus in memory://sim/…"""
    contexts = {
        name: dataclasses.replace(context, store=f"memory://sim/{name}")
        for name, context in charter.contexts.items()
    }
    return dataclasses.replace(charter, bus="memory://sim/bus", contexts=contexts)


def from_file(path: str | Path) -> Charter:
    return in_memory(model.load(path))


def widened(charter: Charter, copy_name: str, field: str) -> Charter:
    """The charter after a schema change: `copy_name` keeps `field` too."""
    copy = charter.copies[copy_name]
    copies = dict(charter.copies)
    copies[copy_name] = dataclasses.replace(copy, fields=(*copy.fields, field))
    return dataclasses.replace(charter, copies=copies)


def with_visibility(charter: Charter, seed: int) -> Charter:
    """A third of the seeds run most entities under contract visibility (each copy on a
    topic of its own, charter.visibility). Drawn apart from the world's randomness, so
    that every other seed runs as it did before; the salt keeps the seeds that found bugs
    before visibility existed (tests/test_sim.py) among those."""
    rng = random.Random(f"visibility:40:{seed}")
    if rng.random() >= 1 / 3:
        return charter
    entities = {
        name: dataclasses.replace(entity, visibility=CONTRACT) if rng.random() < 0.7 else entity
        for name, entity in charter.entities.items()
    }
    return dataclasses.replace(charter, entities=entities)


def with_copy(charter: Charter, entity: str, context: str, rng: random.Random) -> Charter:
    """The charter after a schema change: `context` starts keeping a copy of `entity`
    (some of its public fields)."""
    public = list(charter.entities[entity].public_names)
    fields = tuple(rng.sample(public, 1 + rng.randrange(len(public))))
    name = f"late_{context}_{entity.lower()}"
    copy = Copy(name, context, entity, fields, 10.0)
    return dataclasses.replace(charter, copies={**charter.copies, name: copy})


def with_commands(charter: Charter, seed: int) -> Charter:
    """A third of the seeds declare a command on each entity (charter.commands):
    `Set<Entity>`, sent by some of the other contexts, changing one or two of its public
    fields, with `refuse` (a boolean: the sender asks the owner to refuse). A charter that
    declares commands of its own keeps them, and only them. Drawn apart from the world's
    randomness, as visibility is, and salted so that the seeds that found bugs before
    commands existed (tests/test_sim.py) run as they did."""
    rng = random.Random(f"commands:10:{seed}")
    if charter.commands or rng.random() >= 1 / 3:
        return charter
    entities = dict(charter.entities)
    for name, entity in charter.entities.items():
        others = [c for c in charter.contexts if c != entity.owner]
        public = list(entity.public_names)
        if not others or not public:
            continue
        senders = tuple(rng.sample(others, 1 + rng.randrange(len(others))))
        picked = rng.sample(public, min(len(public), 1 + rng.randrange(2)))
        fields = {n: entity.fields[n] for n in picked}
        fields["refuse"] = Field("refuse", "boolean", required=False, default=False)
        command = Command(f"Set{name}", name, entity.owner, senders, fields)
        entities[name] = dataclasses.replace(entity, commands={command.name: command})
    return dataclasses.replace(charter, entities=entities)


@functools.cache
def _shop() -> Charter:
    """The shop the saga seeds add, read once per process (reading costs more than a run)."""
    return model.loads(SHOP, "shop.yaml")


def with_sagas(charter: Charter, seed: int) -> Charter:
    """A third of the seeds add a shop of their own (sim/sagas.py: three owners and the
    Checkout saga that orchestrates them, with a copy of the orders). A charter that
    declares sagas, or uses one of the shop's names, is left as it is. Drawn apart from the
    world's randomness and salted, as commands are, so that every other seed runs as it
    did."""
    rng = random.Random(f"sagas:20:{seed}")
    if charter.sagas or rng.random() >= 1 / 3:
        return charter
    shop = _shop()
    if (
        (shop.contexts.keys() & charter.contexts.keys())
        or (shop.entities.keys() & charter.entities.keys())
        or (shop.copies.keys() & charter.copies.keys())
    ):
        return charter
    return dataclasses.replace(
        charter,
        contexts={**charter.contexts, **shop.contexts},
        entities={**charter.entities, **shop.entities},
        copies={**charter.copies, **shop.copies},
        sagas=dict(shop.sagas),
    )


def with_transfers(
    charter: Charter, seed: int, blind: frozenset[str] = frozenset()
) -> tuple[str, Move] | None:
    """A third of the seeds move some partitions of one entity (one with a copy, none of
    the shop's sagas') to another context during the run (sim/transfers.py): the entity
    and the move, or None. Drawn apart from the world's randomness and salted, as
    commands are, so that every other seed runs as it did. Not an entity with a copy in
    `blind` (filled through the bus, charter.fills): a fill through the bus takes one
    owner's answer, so after a partition move it misses the other owner's records (a
    known gap: seed 2243 shows it when this is lifted)."""
    rng = random.Random(f"transfers:30:{seed}")
    if rng.random() >= 1 / 3:
        return None
    shop = _shop()
    movable = [
        e
        for e in charter.entities.values()
        if e.name not in shop.entities and charter.copies_of(e.name) and not e.moves
    ]
    if not movable:
        return None
    entity = rng.choice(movable)
    to = [c for c in charter.contexts if c != entity.owner and c not in shop.contexts]
    if not to or any(c.name in blind for c in charter.copies_of(entity.name)):
        return None
    parts = tuple(sorted(rng.sample(range(PARTITIONS), 1 + rng.randrange(PARTITIONS // 2))))
    return entity.name, Move(entity.epoch + 1, rng.choice(to), parts, entity.owner)
