"""`charter transfer`: move ownership of an entity, or of some partitions of its records,
to another context, with never a moment at which both may write them (G10).

The phases, each recorded in a state file beside the charter before the next begins, so
an interrupted transfer resumes where it was, or rolls back while nothing was promoted:

1. planned   the plan: what moves, from whom, to whom, at which epoch
2. prepared  the new owner's store has the entity's table, and a `waiting` fence: refused
3. filled    the old owner's current rows copied there ahead of the switch (still refused)
4. fenced    the old owner's own store refuses the moving records from this commit on
5. promoted  the rows that changed since the fill copied again, and in the same
             transaction the new owner's fence says `owner` at the new epoch
6. drained   the old owner's last events relayed, every copy of the entity has them
7. recorded  the charter file records the move (owner, epoch): processes that load it
             write as the new owner, and copies take only the new epoch's events
8. done

Between 4 and 7 nobody may write the moving records: the refusal window
(benchmarks/transfer.py measures it)."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from charter import model, values
from charter.errors import Error, ValidationError
from charter.lanes import PARTITIONS, partition
from charter.model import Charter, Entity
from charter.records import Backlog, Checkpoint, Row
from charter.relay import Relay
from charter.stores import Store, fencing
from charter.system import System
from charter.visibility import topic_of

PHASES = ("planned", "prepared", "filled", "fenced", "promoted", "drained", "recorded", "done")
ROLLED_BACK = "rolled back"
KILL_AFTER = "CHARTER_TRANSFER_KILL_AFTER"  # tests: kill -9 this process after that phase


_NONE = Checkpoint(0, None, ())


@dataclass
class Plan:
    """One transfer, as its state file keeps it."""

    entity: str
    source: str
    to: str
    parts: list[int] | None  # None: the whole entity
    epoch: int  # the new one
    charter: str  # the charter file's path
    phase: str = ""  # the last phase reached; "" before the plan is saved
    started: str = ""
    records: int = 0  # how many records move (at the plan)
    copies_retired: list[str] = field(default_factory=list)  # `to`'s copies of a whole move
    history: list[tuple[str, str]] = field(default_factory=list)  # (phase, when)

    def describe(self) -> str:
        what = (
            f"partitions {', '.join(map(str, self.parts))} (of {PARTITIONS}) of {self.entity}"
            if self.parts is not None
            else f"the whole of {self.entity}"
        )
        return f"{what}: '{self.source}' → '{self.to}', epoch {self.epoch - 1} → {self.epoch}"


class TransferError(Error):
    """A transfer that cannot be planned, resumed or rolled back, with what to do."""


def state_path(charter_path: Path, entity: str) -> Path:
    return charter_path.parent / ".charter" / "transfers" / f"{entity}.json"


def read_state(charter_path: Path, entity: str) -> Plan | None:
    path = state_path(charter_path, entity)
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    doc["history"] = [tuple(h) for h in doc.get("history", [])]
    return Plan(**doc)


def _save(plan: Plan) -> None:
    path = state_path(Path(plan.charter), plan.entity)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    with open(temporary, "w") as out:
        out.write(json.dumps(asdict(plan), indent=2))
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def plan(
    charter: Charter, entity_name: str, to: str, parts: Sequence[int] | None
) -> tuple[Plan, Charter]:
    """The plan of a transfer and the charter it leaves (not written)."""
    entity = charter.entities.get(entity_name)
    if entity is None:
        raise ValidationError(f"no entity '{entity_name}' in the charter")
    if to not in charter.contexts:
        raise ValidationError(
            f"no context '{to}' in the charter" + (f"; {model._hint(to, tuple(charter.contexts))}")
        )
    moving = list(range(PARTITIONS)) if parts is None else sorted(set(parts))
    fencing.parts_of(moving)
    holders = {entity._holders[p][0] for p in moving}
    if holders == {to}:
        raise ValidationError(f"'{to}' owns {'them' if parts else entity_name} already")
    holders.discard(to)  # what `to` holds already stays its own
    if len(holders) > 1:
        raise ValidationError(
            f"the records that would move have {len(holders)} owners today "
            f"({', '.join(sorted(holders))}): move one owner's partitions at a time "
            f"({'; '.join(f'{o}: {_parts_text(entity.parts_of(o))}' for o in sorted(holders))})"
        )
    source = holders.pop()
    made = Plan(
        entity_name,
        source,
        to,
        None if parts is None else moving,
        entity.epoch + 1,
        str(charter.path),
        started=_now(),
    )
    if parts is None:
        made.copies_retired = [c.name for c in charter.copies_of(entity_name) if c.context == to]
    return made, after(charter, made)


def _parts_text(parts: Sequence[int]) -> str:
    return ",".join(map(str, parts)) or "none"


def after(charter: Charter, made: Plan) -> Charter:
    """The charter as it is once `made` is recorded."""
    text = _edited(Path(made.charter).read_text(), made)
    return model.loads(text, made.charter)


def _edited(text: str, made: Plan) -> str:
    """The charter file's text with the move recorded: lines added to the entity's block
    (and for a whole move its `owner:` changed, the new owner's copies of it removed), the
    rest of the file as it was, comments and all."""
    doc = YAML(typ="rt").load(text)
    entities = doc["entities"]
    spec = entities[made.entity]
    moves = spec.get("moves") or []
    if any(isinstance(m, dict) and m.get("epoch") == made.epoch for m in moves):
        return text
    lines = text.splitlines()
    first = int(entities.lc.key(made.entity)[0])
    last = _block_end(lines, first)
    indent = _indent(lines[int(spec.lc.key(next(iter(spec)))[0])])
    parts = f", partitions: [{', '.join(map(str, made.parts))}]" if made.parts is not None else ""
    item = (
        f"{indent}  - {{epoch: {made.epoch}, from: {made.source}, to: {made.to}{parts}, "
        f'at: "{made.started}"}}'
    )
    added = (
        [item] if moves else [f"{indent}moves:  # charter transfer: each move, oldest first", item]
    )
    if moves:
        last = _block_end(lines, int(spec.lc.key("moves")[0]), _indent(lines[first]) + "  ")
    out = lines[: last + 1] + added + lines[last + 1 :]
    if made.parts is None:
        number = int(spec.lc.key("owner")[0])
        out[number] = re.sub(
            r"(owner:\s*)(['\"]?)" + re.escape(made.source) + r"\2",
            lambda m: m.group(1) + made.to,
            out[number],
            count=1,
        )
        copies: Any = doc.get("copies")
        for name in sorted(made.copies_retired, key=lambda n: -int(copies.lc.key(n)[0])):
            begin = int(copies.lc.key(name)[0])
            begin += len(added) if begin > last else 0
            stop = _block_end(out, begin)
            del out[begin : stop + 1]
    return "\n".join(out) + "\n"


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _block_end(lines: Sequence[str], first: int, deeper: str | None = None) -> int:
    """The last line of the YAML block that starts at `first`: the lines after it that are
    indented deeper (than `deeper`, else than the first line), blank lines within."""
    base = len(deeper) if deeper is not None else len(_indent(lines[first]))
    last = first
    for number in range(first + 1, len(lines)):
        line = lines[number]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if len(_indent(line)) <= base and not (
            deeper is not None and line.lstrip().startswith("- ") and len(_indent(line)) == base
        ):
            break
        last = number
    return last


def show(made: Plan, system: System | None = None) -> dict[str, Any]:
    """What --dry-run and --status print."""
    doc: dict[str, Any] = {"transfer": made.describe(), **asdict(made)}
    if system is not None:
        entity = system.charter.entities[made.entity]
        try:
            doc["fences"] = {
                ctx: [asdict(f) for f in system.store(ctx).fences(entity.name)]
                for ctx in (made.source, made.to)
            }
        except Error as exc:
            doc["fences"] = str(exc)
    return doc


class Transfer:
    """Runs a plan phase by phase, saving each before the next (resumable)."""

    def __init__(
        self, made: Plan, say: Callable[[str], None] = lambda _: None, drain_s: float = 30.0
    ) -> None:
        self.plan, self.say, self.drain_s = made, say, drain_s
        path = Path(made.charter)
        current = model.load(path)
        if current.entities[made.entity].epoch >= made.epoch:
            self.new = current  # recorded already
        else:
            self.new = model.loads(_edited(path.read_text(), made), path)
        # The old charter's system (it knows the old owner's store); the new one's for the
        # new owner (its store gets the entity's table).
        self.old_system = System(current)
        self.new_system = System(self.new)
        self.entity_old = current.entities[made.entity]
        self.entity = self.new.entities[made.entity]

    def close(self) -> None:
        self.old_system.close()
        self.new_system.close()

    def _reached(self, phase: str) -> None:
        self.plan.phase = phase
        self.plan.history.append((phase, _now()))
        self._keep()
        self.say(f"{phase}: {self.plan.describe()}")
        if os.environ.get(KILL_AFTER) == phase:
            os.kill(os.getpid(), signal.SIGKILL)

    def _pause(self, seconds: float) -> None:
        """A wait while draining (a subclass on a simulated clock waits for nothing)."""
        time.sleep(seconds)

    def _keep(self) -> None:
        """The plan saved, as it is now (a subclass may keep it elsewhere: charter.sim)."""
        _save(self.plan)

    def _record(self) -> None:
        """The charter file gets the move (once: a resumed transfer finds it there)."""
        p = self.plan
        path = Path(p.charter)
        if model.load(path).entities[p.entity].epoch < p.epoch:
            text = _edited(path.read_text(), p)
            model.loads(text, path)  # it must load
            temporary = path.with_suffix(".transfer.tmp")
            temporary.write_text(text)
            os.replace(temporary, path)

    def _done(self, phase: str) -> bool:
        current = self.plan.phase
        return current in PHASES and PHASES.index(current) >= PHASES.index(phase)

    @property
    def _old(self) -> Store:
        return self.old_system.store(self.plan.source)

    @property
    def _new(self) -> Store:
        return self.new_system.store(self.plan.to)

    def _moving(self, store: Store, entity: Entity) -> dict[str, Row]:
        parts = set(self.plan.parts) if self.plan.parts is not None else None
        return {
            row["id"]: row
            for row in store.rows(entity)
            if parts is None or partition(row["id"], PARTITIONS) in parts
        }

    def run(self) -> Plan:
        p = self.plan
        if p.phase == ROLLED_BACK:
            raise TransferError(f"the transfer of {p.entity} was rolled back; plan it again")
        if not self._done("planned"):
            self._reached("planned")
        if not self._done("prepared"):
            self._new.fence(self.entity, p.parts, p.epoch, p.to, fencing.WAITING)
            self._reached("prepared")
        if not self._done("filled"):
            rows = self._moving(self._old, self.entity_old)
            self._new.promote(
                self.entity, p.parts, p.epoch, p.to, list(rows.values()), (), fencing.WAITING
            )
            p.records = len(rows)
            self._reached("filled")
        if not self._done("fenced"):
            self._old.fence(self.entity_old, p.parts, p.epoch, p.to, fencing.FENCED)
            self._reached("fenced")
        if not self._done("promoted"):
            # fenced again, the same: a rollback cut short by a crash may have lifted the
            # fence before this resume (found by charter.sim, seed 991)
            self._old.fence(self.entity_old, p.parts, p.epoch, p.to, fencing.FENCED)
            old = self._moving(self._old, self.entity_old)
            held = {i: r["version"] for i, r in self._moving(self._new, self.entity).items()}
            changed = [r for i, r in old.items() if held.get(i) != r["version"]]
            gone = [i for i in held if i not in old]
            self._new.promote(self.entity, p.parts, p.epoch, p.to, changed, gone)
            self._reached("promoted")
        if not self._done("drained"):
            self._drain()
            self._reached("drained")
        if not self._done("recorded"):
            self._record()
            self._reached("recorded")
        if not self._done("done"):
            self._reached("done")
        return p

    def _drain(self) -> None:
        """The old owner's last events onto the bus, then into every copy of the entity."""
        p, system = self.plan, self.old_system
        store, bus = self._old, system.bus
        owned = system.charter.owned_by(p.source)
        # with the copies of what it owns, as the Runner's relay: an entity under contract
        # visibility goes out once per copy, on the copy's topic (none at all without them)
        copies = [(c, e) for e in owned for c in system.charter.copies_of(e.name)]
        relay = Relay(p.source, store, bus, None, 1000, copies, owned)
        deadline = time.monotonic() + self.drain_s
        # The moving records are fenced: each of their events was committed before now.
        # Later ones are other partitions' writes, which may go on and need not be waited for.
        fenced_at = values.now_text()
        while _older(store.unrelayed(p.entity), fenced_at):
            if not relay.step():
                self._pause(0.005)  # another process's relay leads: it relays them
            if time.monotonic() > deadline:
                raise TransferError(
                    f"the old owner '{p.source}' still has {p.entity} events not on the bus "
                    f"after {self.drain_s:g}s: is its relay (charter run) stuck? Run "
                    f"`charter transfer {p.entity}` again once it moves"
                )
        relay.finish()
        # Every copy past the bus's head as it is now: the old owner's last event is
        # at or below it (writes to other records may go on; they need not be waited for).
        for copy in system.charter.copies_of(p.entity):
            copy_store = system.store(copy.context)
            head = bus.head(topic_of(self.entity_old, copy))
            while (copy_store.checkpoint(copy) or _NONE).position < head:
                if time.monotonic() > deadline:
                    raise TransferError(
                        f"copy '{copy.name}' in '{copy.context}' has not applied "
                        f"{p.entity}'s last events of epoch {p.epoch - 1} after "
                        f"{self.drain_s:g}s: is its projector (charter run) running? Run "
                        f"`charter transfer {p.entity}` again once it is"
                    )
                self._pause(0.002)

    def rollback(self) -> Plan:
        p = self.plan
        if self._done("promoted"):
            raise TransferError(
                f"the transfer of {p.entity} reached '{p.phase}': the new owner '{p.to}' may "
                f"have taken writes, so it cannot be undone; move it back instead: "
                f"charter transfer {p.entity} --to {p.source}"
                + (f" --partitions {' '.join(map(str, p.parts))}" if p.parts else "")
            )
        if self._done("fenced") or p.phase == "filled":
            self._old.unfence(self.entity_old, p.parts)
        if self._done("prepared"):
            held = list(self._moving(self._new, self.entity))
            self._new.promote(self.entity, p.parts, p.epoch, p.to, [], held, fencing.WAITING)
            self._new.unfence(self.entity, p.parts)
        p.phase = ROLLED_BACK
        p.history.append((ROLLED_BACK, _now()))
        self._keep()
        self.say(f"rolled back: {p.describe()}")
        return p


def _older(backlog: Backlog, moment: str) -> bool:
    """Whether events committed at or before `moment` are among those not on the bus."""
    return backlog.events > 0 and (backlog.oldest is None or backlog.oldest <= moment)


def command(
    path: Path,
    entity: str | None,
    to: str | None,
    parts: Sequence[int] | None,
    *,
    dry_run: bool = False,
    status: bool = False,
    rollback: bool = False,
    as_json: bool = False,
    say: Callable[[str], None] = print,
    drain_s: float = 30.0,
) -> Plan | None:
    """`charter transfer`'s body: plan, run or resume, show, roll back. Returns the plan
    that ran to `done` (so the caller runs `charter apply`), else None."""
    charter = model.load(path)
    if entity is None:
        raise ValidationError("name the entity to move: charter transfer ENTITY --to CONTEXT")
    saved = read_state(path, entity)
    if status:
        if saved is None:
            say(f"no transfer of {entity} was started (none in {state_path(path, entity)})")
            return None
        with System(charter) as system:
            doc = show(saved, system)
        if as_json:
            say(json.dumps(doc, indent=2))
        else:
            say(f"{saved.describe()}\nphase: {saved.phase}")
            for phase, when in saved.history:
                say(f"  {when}  {phase}")
            fences = doc.get("fences")
            if isinstance(fences, dict):
                for ctx, rows in fences.items():
                    for f in rows:
                        say(f"  fence in {ctx}: part {f['part']} {f['state']} epoch {f['epoch']}")
        return None
    unfinished = saved is not None and saved.phase not in ("done", ROLLED_BACK)
    if rollback:
        if saved is None or not unfinished:
            raise TransferError(f"no unfinished transfer of {entity} to roll back")
        assert saved is not None
        with _exclusive(path, entity):
            runner = Transfer(saved, say, drain_s)
            try:
                runner.rollback()
            finally:
                runner.close()
        return None
    if unfinished:
        assert saved is not None
        asked = (to, None if parts is None else sorted(set(parts)))
        if to is not None and asked != (saved.to, saved.parts):
            raise TransferError(
                f"a transfer of {entity} is unfinished ({saved.describe()}, at "
                f"'{saved.phase}'): resume it (the same command, or without --to), or "
                "--rollback it first"
            )
        made = saved
        say(f"resuming at '{made.phase}': {made.describe()}")
    else:
        if to is None:
            raise ValidationError(f"say where {entity} moves: --to CONTEXT")
        made, _ = plan(charter, entity, to, parts)
        with System(charter) as system:
            ent = charter.entities[entity]
            wanted = set(made.parts) if made.parts is not None else None
            made.records = sum(
                1
                for row in system.store(made.source).rows(ent)
                if wanted is None or partition(row["id"], PARTITIONS) in wanted
            )
        if dry_run:
            _print_plan(made, as_json, say)
            return None
    with _exclusive(path, entity):
        runner = Transfer(made, say, drain_s)
        try:
            return runner.run()
        finally:
            runner.close()


@contextmanager
def _exclusive(path: Path, entity: str) -> Iterator[None]:
    """One transfer of an entity at a time (a second one is refused, not queued)."""
    lock = state_path(path, entity).with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as held:
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TransferError(
                f"another `charter transfer {entity}` is running (it holds {lock})"
            ) from None
        yield


def _print_plan(made: Plan, as_json: bool, say: Callable[[str], None]) -> None:
    if as_json:
        say(json.dumps(show(made), indent=2))
        return
    say(f"plan: {made.describe()} ({made.records} records)")
    steps = [
        f"prepare: '{made.to}' gets {made.entity}'s table, fenced 'waiting' (refuses writes)",
        f"fill: the {made.records} records copied from '{made.source}' to '{made.to}', "
        "versions kept; writes go on meanwhile",
        f"fence: {made.source}'s own store refuses writes to them from this commit on",
        f"promote: what changed since the fill copied again; '{made.to}' owns them at epoch "
        f"{made.epoch}, in the same transaction",
        f"drain: {made.source}'s last events relayed; every copy of {made.entity} applies them",
        f"record: the charter gets the move (epoch {made.epoch})"
        + (f", owner: {made.to}" if made.parts is None else ""),
    ]
    if made.copies_retired:
        steps.append(
            f"retire: copies {', '.join(made.copies_retired)} in '{made.to}' leave the "
            "charter (it owns the records now)"
        )
    steps.append("apply: grants and NATS permissions follow the new charter (charter apply)")
    for number, step in enumerate(steps, 1):
        say(f"  {number}. {step}")
