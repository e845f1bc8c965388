"""The guarantees, checked on a simulated run, derived from its charter: one writer per
entity (G1); every committed change in the outbox exactly once, none from a rolled-back
one (G2); each version applied at most once, by the lane its id belongs to (G3); no
copy's version ever goes back (G4); status never reports less lag than there is (G5);
after quiet, every copy equals its owner's public state (G7); only poison is parked (G8)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from charter.lanes import partition
from charter.model import Charter, Copy
from charter.records import Parked
from charter.sim.world import World
from charter.status import NEVER_SYNCED, copy_status
from charter.stores.memory import MemoryStore
from charter.system import System

Change = tuple[str, str, int, str]  # entity, id, version, op


@dataclass
class Model:
    """What the simulated owners know they committed: the truth the outboxes must tell."""

    changes: dict[str, list[Change]] = field(default_factory=dict)  # per context
    versions: dict[tuple[str, str], int] = field(default_factory=dict)  # live records
    _live: dict[str, list[str]] = field(default_factory=dict)

    def committed(self, context: str, done: list[Change]) -> None:
        self.changes.setdefault(context, []).extend(done)
        for entity, entity_id, version, op in done:
            live = self._live.setdefault(entity, [])
            if op == "deleted":
                self.versions.pop((entity, entity_id), None)
                live.remove(entity_id)
            else:
                if op == "created":
                    live.append(entity_id)
                self.versions[(entity, entity_id)] = version

    def live(self, entity: str) -> list[str]:
        return self._live.get(entity, [])

    def version(self, entity: str, entity_id: str) -> int | None:
        return self.versions.get((entity, entity_id))


class Checker:
    def __init__(self, world: World, model: Model) -> None:
        self.world, self.model = world, model
        self.violations: list[str] = []
        self.unhealed = False  # the bus lost events and the relays were not rewound yet
        self._stores: dict[str, MemoryStore] = {}
        self._held: dict[tuple[str, str], int] = {}  # (copy, id) → highest version seen
        self._poison_ids: set[str] = set()
        self._poison_bodies: set[bytes] = set()
        self._logs: dict[str, list[tuple[str, str, int, str]]] = {}  # per context
        self.charter: Charter | None = None
        self.system: System | None = None
        self._excuses: list[Callable[[Parked], bool]] = []  # parked as it must be (G10)

    def excuse(self, parked_rightly: Callable[[Parked], bool]) -> None:
        """Parked events that are no violation besides poison (an old epoch's, say)."""
        self._excuses.append(parked_rightly)

    def fail(self, message: str) -> None:
        self.world.note(f"VIOLATION: {message}")
        self.violations.append(message)

    def watch_store(self, context: str, store: MemoryStore) -> None:
        self._stores[context] = store
        self._logs[context] = store.log_applies()

    def start(self, charter: Charter, system: System) -> None:
        self.charter, self.system = charter, system

    def poisoned(self, event_id: str, body: bytes | str) -> None:
        self._poison_ids.add(event_id)
        self._poison_bodies.add(body.encode() if isinstance(body, str) else body)

    def lost_events(self) -> None:
        self.unhealed = True

    def healed(self) -> None:
        self.unhealed = False

    # -- along the way ------------------------------------------------------------------

    def after_apply(self, copy: Copy) -> None:
        """G4: no id of the copy is held at a lower version than it was (a deleted id is
        held at the version that deleted it)."""
        held = self._stores[copy.context].versions(copy)
        for entity_id, version in held.items():
            key = (copy.name, entity_id)
            before = self._held.get(key, 0)
            if version < before:
                self.fail(
                    f"copy {copy.name}: {entity_id} went back from version {before} to {version}"
                )
            self._held[key] = max(before, version)
        for (name, entity_id), before in list(self._held.items()):
            if name == copy.name and entity_id not in held:
                self.fail(f"copy {copy.name}: {entity_id} at version {before} vanished")

    def status_tells_the_lag(self, copy: Copy) -> None:
        """G5: when the copy differs from its owner, status does not say it is synced."""
        assert self.system is not None
        if self.unhealed:
            return  # events the bus lost are known to nobody until the relays rewind
        state = copy_status(self.system, copy)
        differ = self._differences(copy)
        if differ and state.lag_events == 0 and state.state != NEVER_SYNCED:
            self.fail(
                f"status says copy {copy.name} is {state.state} with lag 0, but {len(differ)} "
                f"ids differ from the owner: {_sample(differ)}"
            )

    def synced(self) -> bool:
        assert self.system is not None and self.charter is not None
        return all(copy_status(self.system, c).synced for c in self.charter.copies.values())

    # -- at the end ----------------------------------------------------------------------

    def final(self) -> None:
        assert self.charter is not None and self.system is not None
        charter, system = self.charter, self.system
        for name, context in charter.contexts.items():
            outbox = system.store(name).outbox(0, 10**9)
            for row in outbox:
                owner = charter.entities[row.entity].owner
                if name not in charter.entities[row.entity].owners:  # after a move: either
                    self.fail(f"{name}'s outbox holds {row.entity} {row.entity_id}: {owner}'s")
            told = Counter((r.entity, r.entity_id, r.version, r.op) for r in outbox)
            knew = Counter(self.model.changes.get(name, []))
            if told != knew:
                extra, missing = told - knew, knew - told
                self.fail(
                    f"{context.name}'s outbox is not what it committed: {sum(extra.values())} "
                    f"events it did not commit (e.g. {_sample(list(extra))}), "
                    f"{sum(missing.values())} committed and missing "
                    f"(e.g. {_sample(list(missing))})"
                )
        for copy in charter.copies.values():
            differ = self._differences(copy)
            if differ:
                self.fail(
                    f"copy {copy.name} differs from {charter.entities[copy.of].owner} on "
                    f"{len(differ)} ids after quiet: {_sample(differ)}"
                )
            self._only_poison_parked(copy)
            state = copy_status(system, copy)
            if not state.synced:
                self.fail(f"copy {copy.name} is {state.state} after quiet: {state}")
        self._applied_once()

    def _differences(self, copy: Copy) -> list[str]:
        """The ids where the copy differs from its owner's public state, with how."""
        assert self.charter is not None and self.system is not None
        entity = self.charter.entities[copy.of]
        owner = {  # each record from the context that holds it (one, until a move)
            r["id"]: r
            for name in entity.owners
            for r in self.system.store(name).rows(entity)
            if not entity.moves or entity.holder(r["id"])[0] == name
        }
        held = {r["id"]: r for r in self.system.store(copy.context).copy_rows(copy)}
        differ = [f"{i} missing (owner v{owner[i]['version']})" for i in owner if i not in held]
        differ += [f"{i} extra (v{held[i]['version']})" for i in held if i not in owner]
        for i in owner.keys() & held.keys():
            mine, theirs = held[i], owner[i]
            if [mine[f] for f in ("version", *copy.fields)] != [
                theirs[f] for f in ("version", *copy.fields)
            ]:
                differ.append(f"{i} at v{mine['version']}, owner at v{theirs['version']}")
        return sorted(differ)

    def _only_poison_parked(self, copy: Copy) -> None:
        assert self.system is not None
        for parked in self.system.store(copy.context).parked(copy):
            if any(excused(parked) for excused in self._excuses):
                continue
            if parked.event_id not in self._poison_ids and parked.body not in self._poison_bodies:
                self.fail(
                    f"copy {copy.name} parked event {parked.event_id} (version "
                    f"{parked.version}), which its owner wrote: {parked.reason}"
                )

    def _applied_once(self) -> None:
        """G3: each version taken once per copy, and with lanes by its id's lane."""
        assert self.system is not None
        partitions = self.system.bus.partitions
        seen: Counter[tuple[str, str, int]] = Counter()
        for log in self._logs.values():
            for copy, entity_id, version, lane in log:
                seen[(copy, entity_id, version)] += 1
                # the rule of charter.lanes, spelled out: a checker must not share the code
                number, lanes = (int(n) for n in lane.split("/")) if lane else (1, 1)
                if partition(entity_id, partitions) % lanes != number - 1:
                    self.fail(f"copy {copy}: lane {lane} applied {entity_id}, another lane's")
        twice = [key for key, count in seen.items() if count > 1]
        if twice:
            self.fail(f"{len(twice)} versions applied more than once, e.g. {twice[:3]}")


def _sample(items: Sequence[object]) -> str:
    shown = ", ".join(str(i) for i in items[:3])
    return shown + (f" and {len(items) - 3} more" if len(items) > 3 else "")
