"""What a charter change breaks, known before it is merged: every difference between two
charters, each with the copies it breaks (their context, team and own `breaks` words) and
the parties it only informs. Pure: two loaded charters in, a list of changes out; no store
is opened.

Who decides what. An entity belongs to its owner, a copy's declaration to the context that
keeps it. So a change to an entity (a field removed, retyped, made private or optional, enum
values removed, the entity removed or given another owner) is judged against the copies
of the *old* charter, the consumers that exist today: it breaks each one that keeps what
changed, even when the new charter also edits or drops that copy (it has to, to load: a
copy cannot keep a field that is gone). A change to a copy's own declaration (fields
dropped or added, a window loosened or tightened, the copy removed or moved) is its
keeper's choice and breaks nobody; it tells the other side.

A rename cannot be proven from two files: charter matches fields and entities by name, and
the store keeps the old column while the new one starts empty. A field removed and
another added in the same entity, each the only one of its kind (type, values, privacy)
among the removed and the added, is reported once as `field_renamed`, "a rename?", with the
severity of the removal; likewise an entity removed and one added with the same owner and
fields (`entity_renamed`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from charter.model import Charter, Copy, Entity, Field
from charter.urls import redact

BREAKING, INFORMS, SAFE = "breaking", "informs", "safe"  # a change's severity, worst first
SEVERITIES = (BREAKING, INFORMS, SAFE)


@dataclass(frozen=True)
class Party:
    """Someone a change concerns: a copy (`copy`: its name; `breaks`: what its keeper said
    breaks when it is wrong), or, with `copy` empty, a context itself (an owner that must
    now deliver faster, a team that is now called)."""

    context: str
    team: str
    copy: str = ""
    breaks: str = ""

    def __str__(self) -> str:
        who = f"{self.copy} in {self.context}" if self.copy else f"context {self.context}"
        text = f"{who} ({self.team})" if self.team else who
        return f"{text}: {self.breaks}" if self.breaks else text

    def as_json(self) -> dict[str, str]:
        return {
            "copy": self.copy,
            "context": self.context,
            "team": self.team,
            "breaks": self.breaks,
        }


@dataclass(frozen=True)
class Change:
    """One difference between two charters. `breaks`: the copies it breaks; `informs`: the
    parties that should know but are not broken. `line` is in the new file, or in the old
    one (`in_old`) when what it is about is gone from the new."""

    kind: str
    sentence: str
    severity: str
    entity: str = ""
    field: str = ""
    copy: str = ""
    context: str = ""
    breaks: tuple[Party, ...] = ()
    informs: tuple[Party, ...] = ()
    line: int = 0
    in_old: bool = False

    @property
    def breaking(self) -> bool:
        return self.severity == BREAKING

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "sentence": self.sentence,
            "entity": self.entity,
            "field": self.field,
            "copy": self.copy,
            "context": self.context,
            "breaks": [p.as_json() for p in self.breaks],
            "informs": [p.as_json() for p in self.informs],
            "line": self.line,
            "in_old": self.in_old,
        }


def compare(old: Charter, new: Charter) -> list[Change]:
    """Every change from `old` to `new`: the system's settings, contexts, entities and their
    fields, copies; in that order, each group in the order of the files."""
    return _Comparison(old, new).changes()


def breaking(changes: Iterable[Change]) -> list[Change]:
    return [c for c in changes if c.breaking]


def deprecated_kept(charter: Charter) -> list[tuple[Copy, Field]]:
    """Each copy that keeps a field its owner marked deprecated, with that field."""
    found = []
    for copy in charter.copies.values():
        entity = charter.entities.get(copy.of)
        for name in copy.fields:
            field = entity.fields.get(name) if entity else None
            if field is not None and field.deprecated:
                found.append((copy, field))
    return found


def duration(seconds: float) -> str:
    """A window as a person writes it: 5s, 2m, 250ms."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds * 1000:g}ms" if 0 < seconds < 1 else f"{seconds:g}s"


def _names(first: Iterable[str], second: Iterable[str]) -> list[str]:
    """The names of both, the first's in its order, then those only in the second."""
    return list(dict.fromkeys([*first, *second]))


def _kind(field: Field) -> tuple[str, tuple[str, ...], bool]:
    return field.type, field.values, field.private


def _type(field: Field) -> str:
    return f"enum {list(field.values)}" if field.type == "enum" else field.type


class _Comparison:
    """The two charters and the questions every change asks of them: who keeps a field,
    who to call about a context."""

    def __init__(self, old: Charter, new: Charter) -> None:
        self.old, self.new = old, new
        self.found: list[Change] = []

    def changes(self) -> list[Change]:
        self._system()
        for name in _names(self.old.contexts, self.new.contexts):
            self._context(name)
        self._entities()
        for name in _names(self.old.copies, self.new.copies):
            self._copy(name)
        return self.found

    # who a change concerns

    def team(self, context: str) -> str:
        """Who to call about a context now: its team in the new charter, else in the old."""
        for charter in (self.new, self.old):
            if context in charter.contexts:
                return charter.contexts[context].team
        return ""

    def context_party(self, context: str, team: str | None = None) -> Party:
        return Party(context, self.team(context) if team is None else team)

    def copy_party(self, copy: Copy) -> Party:
        """A copy, in its keeper's words now: its new `breaks` text, if it is still there."""
        breaks = self.new.copies[copy.name].breaks if copy.name in self.new.copies else ""
        return Party(copy.context, self.team(copy.context), copy.name, breaks or copy.breaks)

    def keepers(self, charter: Charter, entity: str, field: str) -> tuple[Party, ...]:
        """The copies in `charter` of `entity` that keep `field`."""
        return tuple(self.copy_party(c) for c in charter.copies_of(entity) if field in c.fields)

    def add(
        self,
        kind: str,
        sentence: str,
        *,
        breaks: tuple[Party, ...] = (),
        informs: tuple[Party, ...] = (),
        severity: str | None = None,
        **about: Any,
    ) -> None:
        """Record a change. Its severity follows from whom it concerns unless given: it
        breaks when it names a copy it breaks; else it informs when it tells someone."""
        if severity is None:
            severity = BREAKING if breaks else INFORMS if informs else SAFE
        if not breaks and severity != BREAKING:
            sentence += "; breaks nobody"
        self.found.append(Change(kind, sentence, severity, breaks=breaks, informs=informs, **about))

    # the system and its contexts

    def _system(self) -> None:
        old, new = self.old, self.new
        if old.name != new.name:
            self.add(
                "name_changed",
                f"the system's name changes from {old.name} to {new.name}: its NATS stream "
                "and PostgreSQL roles are named after it (run `charter apply` again)",
            )
        if redact(old.bus) != redact(new.bus):
            self.add(
                "bus_changed",
                f"the bus moves from {redact(old.bus)} to {redact(new.bus)}: events not yet "
                "applied stay on the old one (drain it first: `charter run --once`)",
            )
        if old.retention_s != new.retention_s:
            shorter = new.retention_s < old.retention_s
            self.add(
                "retention_changed",
                f"retention changes from {duration(old.retention_s)} to "
                f"{duration(new.retention_s)}"
                + (": a copy stopped for longer than that fills again" if shorter else ""),
            )

    def _context(self, name: str) -> None:
        old, new = self.old.contexts.get(name), self.new.contexts.get(name)
        if old is None and new is not None:
            self.add("context_added", f"context {name} added", context=name, line=new.line)
            return
        if new is None and old is not None:
            self.add(
                "context_removed",
                f"context {name} removed (what it owned and kept is listed below)",
                context=name,
                informs=(Party(name, old.team),),
                line=old.line,
                in_old=True,
            )
            return
        assert old is not None and new is not None
        if old.team != new.team:
            owns = [e.name for e in self.new.owned_by(name)]
            keeps = [c.name for c in self.new.copies_in(name)]
            what = ", ".join([*(f"owner of {e}" for e in owns), *(f"keeps {c}" for c in keeps)])
            self.add(
                "team_changed",
                f"the team of context {name} changes from {old.team} to {new.team}"
                + (f" ({what})" if what else ""),
                context=name,
                informs=(Party(name, old.team), Party(name, new.team)),
                line=new.line,
            )
        if redact(old.store) != redact(new.store):
            self.add(
                "store_changed",
                f"the store of context {name} moves from {redact(old.store)} to "
                f"{redact(new.store)}: its records, outbox and copies stay in the old one "
                "unless they are moved with it",
                context=name,
                informs=(self.context_party(name),),
                line=new.line,
            )

    # entities and their fields

    def _entities(self) -> None:
        old, new = self.old.entities, self.new.entities
        removed = [n for n in old if n not in new]
        added = [n for n in new if n not in old]
        renamed = self._renamed_entities(removed, added)
        for name in _names(old, new):
            if name in renamed:
                self._entity_renamed(old[name], new[renamed[name]])
            elif name in renamed.values():
                continue
            elif name not in new:
                self._entity_removed(old[name])
            elif name not in old:
                self.add(
                    "entity_added",
                    f"entity {name} added, owned by {new[name].owner}",
                    entity=name,
                    line=new[name].line,
                )
            else:
                self._entity(old[name], new[name])

    def _renamed_entities(self, removed: list[str], added: list[str]) -> dict[str, str]:
        def shape(entity: Entity) -> tuple[str, tuple[tuple[str, Any], ...]]:
            return entity.owner, tuple((f.name, _kind(f)) for f in entity.fields.values())

        olds = [self.old.entities[n] for n in removed]
        news = [self.new.entities[n] for n in added]
        pairs = {}
        for entity in olds:
            alike = [e for e in news if shape(e) == shape(entity)]
            if len(alike) == 1 and [o for o in olds if shape(o) == shape(alike[0])] == [entity]:
                pairs[entity.name] = alike[0].name
        return pairs

    def _entity_removed(self, entity: Entity) -> None:
        copies = tuple(self.copy_party(c) for c in self.old.copies_of(entity.name))
        self.add(
            "entity_removed",
            f"entity {entity.name} removed: its records stay in the store of {entity.owner}, "
            "and no copy of it is fed any more",
            entity=entity.name,
            breaks=copies,
            line=entity.line,
            in_old=True,
        )

    def _entity_renamed(self, old: Entity, new: Entity) -> None:
        copies = tuple(self.copy_party(c) for c in self.old.copies_of(old.name))
        self.add(
            "entity_renamed",
            f"entity {old.name} removed and {new.name} added with the same owner and fields: "
            f"a rename? charter matches entities by name, so {new.name} starts empty in a "
            f"new table and the copies of {old.name} are no longer fed",
            entity=old.name,
            breaks=copies,
            line=new.line,
        )

    def _entity(self, old: Entity, new: Entity) -> None:
        name = new.name
        moved = [m for m in new.moves if m.epoch > old.epoch]
        for move in moved:  # recorded by charter transfer: the records moved with it
            what = f"partitions {','.join(map(str, move.parts))} of {name}" if move.parts else name
            self.add(
                "ownership_moved",
                f"{what} moved to {move.to} at epoch {move.epoch} (charter transfer): copies "
                f"take only epoch-{move.epoch} events for those records; the old owner's store "
                "refuses writes to them",
                entity=name,
                informs=(
                    *(self.copy_party(c) for c in self.old.copies_of(name)),
                    self.context_party(move.to),
                ),
                severity=INFORMS,
                line=move.line or new.line,
            )
        if old.owner != new.owner and not any(m.parts is None and m.to == new.owner for m in moved):
            self.add(
                "owner_changed",
                f"{name}'s owner changes from {old.owner} to {new.owner}: its records stay "
                f"in the store of {old.owner}, so {new.owner} starts without them and every copy "
                "stops receiving their changes; moving ownership needs an ownership move "
                "(not yet in charter), not a charter edit",
                entity=name,
                breaks=tuple(self.copy_party(c) for c in self.old.copies_of(name)),
                informs=(self.context_party(old.owner), self.context_party(new.owner)),
                severity=BREAKING,
                line=new.line,
            )
        if old.visibility != new.visibility:
            self._visibility(old, new)
        if old.why != new.why:
            self.add("why_changed", f"{name}'s why changes", entity=name, line=new.line)
        self._constraints(old, new)
        removed = [f for f in old.fields if f not in new.fields]
        added = [f for f in new.fields if f not in old.fields]
        renamed = self._renamed_fields(old, new, removed, added)
        for field in _names(old.fields, new.fields):
            if field in renamed:
                self._field_renamed(old, new, field, renamed[field])
            elif field in renamed.values():
                continue
            elif field not in new.fields:
                self._field_removed(old, new, old.fields[field])
            elif field not in old.fields:
                self._field_added(new, new.fields[field])
            else:
                self._field(old, new, old.fields[field], new.fields[field])

    def _visibility(self, old: Entity, new: Entity) -> None:
        """Its copies move to other topics: charter carries them over (the owner's relay
        publishes each record's newest event again on the new topics), so nothing breaks;
        who reads the bus changes, and NATS's permissions with it."""
        name = new.name
        copies = self.old.copies_of(name)
        where = (
            "each copy then gets only its fields, on a topic of its own"
            if new.visibility == "contract"
            else "each copy then gets its whole public events, on the entity's topic"
        )
        nats = " (NATS: run `charter apply` for the new permissions)" if copies else ""
        self.add(
            "visibility_changed",
            f"{name}'s visibility changes from {old.visibility} to {new.visibility}: {where}; "
            f"once the relay of {new.owner} runs the new charter it publishes each record's "
            f"newest event again there, so no copy misses what went to the old topic{nats}",
            entity=name,
            informs=(
                self.context_party(new.owner),
                *(self.copy_party(c) for c in copies),
            ),
            line=new.line,
        )

    def _constraints(self, old: Entity, new: Entity) -> None:
        before = {c.describe() for c in old.constraints}
        after = {c.describe(): c for c in new.constraints}
        owner = (self.context_party(new.owner),)
        for text, rule in after.items():
            if text not in before:
                self.add(
                    "constraint_added",
                    f"{new.name}: no_overlap ({text}) added: the owner's store refuses it "
                    "while its records break it",
                    entity=new.name,
                    informs=owner,
                    line=rule.line,
                )
        for text in sorted(before - set(after)):
            self.add(
                "constraint_removed",
                f"{new.name}: no_overlap ({text}) removed: records may now overlap",
                entity=new.name,
                line=new.line,
            )

    def _renamed_fields(
        self, old: Entity, new: Entity, removed: list[str], added: list[str]
    ) -> dict[str, str]:
        pairs = {}
        for name in removed:
            kind = _kind(old.fields[name])
            alike = [a for a in added if _kind(new.fields[a]) == kind]
            if len(alike) == 1 and [r for r in removed if _kind(old.fields[r]) == kind] == [name]:
                pairs[name] = alike[0]
        return pairs

    def _field_removed(self, old: Entity, new: Entity, field: Field) -> None:
        where = f"{old.name}.{field.name}"
        keepers = self.keepers(self.old, old.name, field.name)
        if field.private:
            why = "it was private"
        elif field.deprecated and not keepers:
            why = "it was deprecated and no copy kept it"
        else:
            why = "no copy kept it"
        sentence = f"{where} removed"
        if keepers:
            sentence += ": the copies that kept it lose it"
            if field.deprecated:
                sentence += " (deprecated, but still kept)"
        else:
            sentence += f" ({why})"
        self.add(
            "field_removed",
            sentence,
            entity=old.name,
            field=field.name,
            breaks=keepers,
            line=new.line,
        )

    def _field_renamed(self, old: Entity, new: Entity, before: str, after: str) -> None:
        keepers = self.keepers(self.old, old.name, before)
        now = [c.name for c in self.new.copies_of(new.name) if after in c.fields]
        sentence = (
            f"{old.name}.{before} removed and {new.name}.{after} added with the same type "
            f"({_type(new.fields[after])}): a rename? charter matches fields by name, so "
            f"{after} starts empty and the store keeps the column {before}"
        )
        if now:
            sentence += f"; {', '.join(now)} now keep{'s' if len(now) == 1 else ''} {after}"
        self.add(
            "field_renamed",
            sentence,
            entity=old.name,
            field=before,
            breaks=keepers,
            line=new.fields[after].line,
        )

    def _field_added(self, entity: Entity, field: Field) -> None:
        where = f"{entity.name}.{field.name}"
        if field.required and field.default is None:
            self.add(
                "field_added",
                f"{where} added, required and without a default: the owner's store refuses "
                "it while it holds records (give it a default or required: false)",
                entity=entity.name,
                field=field.name,
                informs=(self.context_party(entity.owner),),
                line=field.line,
            )
            return
        private = " (private)" if field.private else ""
        self.add(
            "field_added",
            f"{where} added{private}",
            entity=entity.name,
            field=field.name,
            line=field.line,
        )

    def _field(self, old_entity: Entity, entity: Entity, old: Field, new: Field) -> None:
        """A field in both: each way it changed, judged against the copies that kept it."""
        where = f"{entity.name}.{new.name}"
        keepers = self.keepers(self.old, entity.name, new.name)
        about: dict[str, Any] = {"entity": entity.name, "field": new.name, "line": new.line}
        owner = (self.context_party(entity.owner),)
        nobody = " (private)" if old.private and new.private else ""
        if old.private != new.private:
            if new.private:
                self.add(
                    "field_made_private",
                    f"{where} made private: it no longer leaves {entity.owner}",
                    breaks=keepers,
                    **about,
                )
            else:
                self.add(
                    "field_made_public",
                    f"{where} made public: every event about {entity.name} now carries it "
                    "to every context (is it fit to leave the owner?)",
                    informs=owner,
                    **about,
                )
        if old.type != new.type:
            self.add(
                "field_retyped",
                f"{where}{nobody} changes type from {old.type} to {new.type} (the owner's "
                "store refuses it while it holds records: add a new field and move the data)",
                breaks=() if new.private else keepers,
                **about,
            )
        elif old.values != new.values:
            gone = [v for v in old.values if v not in new.values]
            came = [v for v in new.values if v not in old.values]
            if gone:
                self.add(
                    "enum_values_removed",
                    f"{where}{nobody} loses the value{'s' if len(gone) > 1 else ''} "
                    f"{', '.join(gone)}: records and copies may still hold "
                    f"{'them' if len(gone) > 1 else 'it'}",
                    breaks=() if new.private else keepers,
                    **about,
                )
            if came:
                self.add(
                    "enum_values_added",
                    f"{where}{nobody} gains the value{'s' if len(came) > 1 else ''} "
                    f"{', '.join(came)}: code that reads the copies may not know "
                    f"{'them' if len(came) > 1 else 'it'}",
                    informs=() if new.private else keepers,
                    **about,
                )
            if not gone and not came:
                self.add("enum_reordered", f"the values of {where} are reordered", **about)
        if old.required and not new.required:
            why = ""
            if new.default is not None and old.default is None:
                why = " (a default without required: true makes a field optional)"
            self.add(
                "field_made_optional",
                f"{where}{nobody} made optional{why}: nulls may now arrive",
                breaks=() if new.private else keepers,
                **about,
            )
        elif new.required and not old.required:
            self.add(
                "field_made_required",
                f"{where}{nobody} made required: records written before may hold none, "
                "and every write must now give one",
                informs=owner,
                **about,
            )
        if old.unique != new.unique:
            if new.unique:
                self.add(
                    "unique_added",
                    f"{where}{nobody} made unique: the owner's store refuses it while two "
                    "records share a value",
                    informs=owner,
                    **about,
                )
            else:
                self.add(
                    "unique_removed",
                    f"{where}{nobody} no longer unique: the same value may now arrive for "
                    "several records",
                    informs=() if new.private else keepers,
                    **about,
                )
        if old.default != new.default:
            self.add(
                "default_changed",
                f"the default of {where}{nobody} changes from {old.default!r} to {new.default!r} "
                "(new records only)",
                **about,
            )
        if new.deprecated and not old.deprecated:
            kept = self.keepers(self.new, entity.name, new.name)
            self.add(
                "field_deprecated",
                f"{where} deprecated: "
                + (
                    "each copy that keeps it should stop; removing it is safe once none does"
                    if kept
                    else "no copy keeps it, so removing it is safe"
                ),
                informs=kept,
                **about,
            )
        elif old.deprecated and not new.deprecated:
            self.add("field_undeprecated", f"{where} no longer deprecated", **about)

    # copies

    def _copy(self, name: str) -> None:
        old, new = self.old.copies.get(name), self.new.copies.get(name)
        if old is None and new is not None:
            self._copy_added(new)
            return
        if new is None and old is not None:
            if old.of not in self.new.entities:  # the entity's removal names it already
                return
            owner_name = self.new.entities[old.of].owner
            self.add(
                "copy_removed",
                f"copy {name} of {old.of} removed from {old.context}: its table is no longer "
                f"fed, and {owner_name} has one consumer fewer",
                copy=name,
                entity=old.of,
                context=old.context,
                informs=(self.context_party(owner_name), self.copy_party(old)),
                line=old.line,
                in_old=True,
            )
            return
        assert old is not None and new is not None
        about: dict[str, Any] = {
            "copy": name,
            "entity": new.of,
            "context": new.context,
            "line": new.line,
        }
        entity = self.new.entities[new.of]
        party = self.copy_party(new)
        owner = self.context_party(entity.owner)
        if old.of != new.of:
            self.add(
                "copy_retargeted",
                f"copy {name} is now of {new.of}, not {old.of}: its table is filled again "
                f"from {entity.owner}",
                informs=(party, owner),
                **about,
            )
        if old.context != new.context:
            self.add(
                "copy_moved",
                f"copy {name} moves from {old.context} to {new.context}: filled anew there; "
                f"the table in {old.context} is no longer fed",
                informs=(self.context_party(old.context), party),
                **about,
            )
        if old.of == new.of:
            self._copy_fields(old, new, entity, about)
        if new.window_s > old.window_s:
            self.add(
                "window_loosened",
                f"the window of copy {name} loosens from {duration(old.window_s)} to "
                f"{duration(new.window_s)}: it may now be staler before it breaches "
                "(its team should agree that is still fine)",
                informs=(party,),
                **about,
            )
        elif new.window_s < old.window_s:
            self.add(
                "window_tightened",
                f"the window of copy {name} tightens from {duration(old.window_s)} to "
                f"{duration(new.window_s)}: {entity.owner} and the pipeline must now deliver "
                "within it",
                informs=(owner,),
                **about,
            )
        if old.breaks != new.breaks:
            self.add("breaks_changed", f"the breaks text of copy {name} changes", **about)

    def _copy_fields(self, old: Copy, new: Copy, entity: Entity, about: dict[str, Any]) -> None:
        name = new.name
        owner = self.context_party(entity.owner)
        for field in old.fields:
            gone = entity.fields.get(field)
            if field in new.fields or gone is None or gone.private:
                continue  # a field gone or made private is the entity's change, named there
            others = [c for c in self.new.copies_of(entity.name) if field in c.fields]
            last = "" if others else f"; no copy keeps {entity.name}.{field} any more"
            self.add(
                "copy_field_dropped",
                f"copy {name} stops keeping {entity.name}.{field}{last}",
                **about,
            )
        for field in new.fields:
            if field in old.fields:
                continue
            spec = entity.fields[field]
            if spec.deprecated:
                self.add(
                    "copy_field_added",
                    f"copy {name} starts keeping {entity.name}.{field}, which is deprecated",
                    informs=(self.copy_party(new), owner),
                    **about,
                )
            else:
                self.add(
                    "copy_field_added",
                    f"copy {name} starts keeping {entity.name}.{field} (filled from "
                    f"the current records of {entity.owner}): one consumer more",
                    informs=(owner,),
                    **about,
                )

    def _copy_added(self, copy: Copy) -> None:
        entity = self.new.entities[copy.of]
        deprecated = [f for f in copy.fields if entity.fields[f].deprecated]
        sentence = (
            f"copy {copy.name} of {copy.of} added in {copy.context}, window "
            f"{duration(copy.window_s)}: a new consumer of {entity.owner}"
        )
        if deprecated:
            sentence += f"; it keeps deprecated {', '.join(deprecated)}"
        self.add(
            "copy_added",
            sentence,
            copy=copy.name,
            entity=copy.of,
            context=copy.context,
            informs=(self.context_party(entity.owner),),
            line=copy.line,
        )
