"""The charter: contexts, entities, fields, copies. Loading checks everything and
reports every problem at once, each with its file, line and a hint."""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode

from charter import urls
from charter.errors import CharterError, Problem
from charter.lanes import PARTITIONS, partition

FIELD_TYPES = (
    "string",
    "text",
    "integer",
    "number",
    "boolean",
    "enum",
    "uuid",
    "timestamp",
    "date",
)
RESERVED_FIELDS = ("id", "version", "synced_at")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
DEFAULT_RETENTION_S = 7 * 86400.0
PUBLIC, CONTRACT = "public", "contract"  # who may read an entity's events (charter.visibility)
VISIBILITIES = (PUBLIC, CONTRACT)
DEFAULT_LATENCY_RETENTION_S = 86400.0  # how long each copy's latency histogram is kept
# the kinds of drift `repair:` may list (charter.reconcile.classify); `ahead` never: moving a
# copy back to an owner restored from a backup is the operator's call (--accept-owner)
REPAIRABLE = ("missing", "stale", "extra", "divergent")


@dataclass(frozen=True)
class Context:
    """A service with its own store and the team to call when its data is wrong."""

    name: str
    team: str
    store: str
    line: int = 0


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    required: bool = True
    unique: bool = False
    private: bool = False
    values: tuple[str, ...] = ()
    default: Any = None
    line: int = 0
    deprecated: bool = False  # still published; a copy should stop keeping it (charter diff)


@dataclass(frozen=True)
class NoOverlap:
    """No two records with the same `per` values may have intersecting [start, end) ranges;
    a record whose `unless` field holds one of its values (a cancelled one, say) is left
    out."""

    per: tuple[str, ...]
    start: str
    end: str
    line: int = 0
    unless: tuple[str, tuple[str, ...]] | None = None  # (field, values)

    def describe(self) -> str:
        """The rule in words, to compare what a store enforces with what the charter says."""
        text = f"per {','.join(self.per)} range {self.start},{self.end}"
        if self.unless is not None:
            text += f" unless {self.unless[0]} in {','.join(self.unless[1])}"
        return text


@dataclass(frozen=True)
class Command:
    """A request another context may send to an entity's owner (charter.commands): who may
    send it (`senders`), and its arguments besides the record's `id` (`fields`: the entity's
    own fields named in a list, or fields of its own declared as in an entity)."""

    name: str
    entity: str
    owner: str
    senders: tuple[str, ...]
    fields: dict[str, Field]
    line: int = 0


@dataclass(frozen=True)
class Move:
    """One move of ownership (`charter transfer`), as the charter records it: from `epoch`
    on, `to` owns the records of `parts` (partitions of the record id, as `lanes.partition`
    with `PARTITIONS`), or the whole entity when `parts` is None."""

    epoch: int
    to: str
    parts: tuple[int, ...] | None = None
    source: str = ""  # `from:`, the owner before (said, not needed to resolve)
    at: str = ""  # when it was recorded
    line: int = 0

    def describe(self) -> str:
        what = f"partitions {','.join(map(str, self.parts))}" if self.parts else "the whole entity"
        return f"epoch {self.epoch}: {what} to {self.to}"


@dataclass(frozen=True)
class Entity:
    """A kind of record, owned by exactly one context (per record, and per epoch, once
    ownership of some of its partitions moved: `moves`, `holder`)."""

    name: str
    owner: str
    fields: dict[str, Field]
    why: str = ""
    constraints: tuple[NoOverlap, ...] = ()
    line: int = 0
    visibility: str = PUBLIC  # its own, or the charter's (charter.visibility)
    # not in repr: commands shape no table (a store's fingerprint is made of the repr)
    commands: dict[str, Command] = field(default_factory=dict, repr=False)
    # not in repr either: a move changes who writes, not the shape of any table
    moves: tuple[Move, ...] = field(default=(), repr=False)

    @property
    def table(self) -> str:
        return snake_case(self.name)

    @cached_property
    def epoch(self) -> int:
        """The entity's newest epoch (1 until ownership of any of it moved)."""
        return max((m.epoch for m in self.moves), default=1)

    @cached_property
    def _holders(self) -> tuple[tuple[str, int], ...]:
        """(owner, epoch) of each partition: the whole entity's last move, then the
        partition moves after it, in epoch order."""
        base = max((m.epoch for m in self.moves if m.parts is None), default=1)
        held = [(self.owner, base)] * PARTITIONS
        for move in sorted(self.moves, key=lambda m: m.epoch):
            if move.parts is not None and move.epoch > base:
                for part in move.parts:
                    held[part] = (move.to, move.epoch)
        return tuple(held)

    @property
    def partitioned(self) -> bool:
        """Whether records of this entity have different owners (a partition moved)."""
        return len({owner for owner, _ in self._holders}) > 1

    def holder(self, entity_id: str) -> tuple[str, int]:
        """The context that owns the record `entity_id`, and its epoch."""
        if not self.moves:
            return self.owner, 1
        return self._holders[partition(entity_id, PARTITIONS)]

    def parts_of(self, context: str) -> tuple[int, ...]:
        """The partitions `context` owns."""
        return tuple(p for p, (owner, _) in enumerate(self._holders) if owner == context)

    def ownership(self) -> str:
        """Who owns which records, in words: `legacy`, or after moves e.g. `legacy (epoch
        1); partitions 0,3: customers (epoch 2)`."""
        if not self.moves:
            return self.owner
        runs: dict[tuple[str, int], list[int]] = {}
        for part, held in enumerate(self._holders):
            runs.setdefault(held, []).append(part)
        if len(runs) == 1:
            (owner, epoch), _ = next(iter(runs.items()))
            return f"{owner} (epoch {epoch})"
        return "; ".join(
            f"partitions {','.join(map(str, parts))}: {owner} (epoch {epoch})"
            for (owner, epoch), parts in runs.items()
        )

    @cached_property
    def owners(self) -> tuple[str, ...]:
        """Every context that owns some of its records: the owner first."""
        rest = sorted({o for o, _ in self._holders} - {self.owner})
        return (self.owner, *rest) if self.owner in {o for o, _ in self._holders} else tuple(rest)

    @cached_property
    def public_fields(self) -> list[Field]:
        return [f for f in self.fields.values() if not f.private]

    @cached_property
    def public_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.public_fields)


@dataclass(frozen=True)
class Copy:
    """A read-only, derivative table of an entity in another context, with its contract."""

    name: str
    context: str
    of: str
    fields: tuple[str, ...]
    window_s: float
    breaks: str = ""
    line: int = 0
    # continuous reconciliation (`charter run`): how often (0: never) and which kinds of
    # drift the runner repairs by itself; not in repr: neither shapes a table
    reconcile_s: float = field(default=0.0, repr=False)
    repair: tuple[str, ...] = field(default=(), repr=False)

    @property
    def table(self) -> str:
        return self.name


@dataclass(frozen=True)
class Charter:
    """The whole system as declared: who owns what, who copies what, how stale it may get."""

    name: str
    bus: str
    contexts: dict[str, Context]
    entities: dict[str, Entity]
    copies: dict[str, Copy]
    path: Path = field(default_factory=lambda: Path("charter.yaml"))
    retention_s: float = DEFAULT_RETENTION_S
    visibility: str = PUBLIC  # each entity's, unless it says otherwise
    latency_retention_s: float = DEFAULT_LATENCY_RETENTION_S  # 0: latencies not recorded
    sagas: dict[str, str] = field(default_factory=dict)  # saga -> the context orchestrating it
    reconcile_s: float = 0.0  # each copy's default (Copy.reconcile_s); 0: not scheduled
    repair: tuple[str, ...] = ()  # each copy's default (Copy.repair)

    def owned_by(self, context: str) -> list[Entity]:
        """The entities `context` owns, wholly or some partitions of (after a move)."""
        return [e for e in self.entities.values() if context in e.owners]

    def copies_in(self, context: str) -> list[Copy]:
        return [c for c in self.copies.values() if c.context == context]

    def copies_of(self, entity: str) -> list[Copy]:
        return [c for c in self.copies.values() if c.of == entity]

    @cached_property
    def commands(self) -> dict[str, Command]:
        """Every command, by name (names are unique in a charter)."""
        return {n: c for e in self.entities.values() for n, c in e.commands.items()}


SAGA_STATUSES = ("running", "compensating", "completed", "compensated", "parked")


def saga_entity(name: str, context: str, why: str = "", line: int = 0) -> Entity:
    """The entity a saga's state is kept in (charter.sagas): one record per saga run, changed
    only by its orchestrator, each change an event in the orchestrator's outbox."""
    fields = (
        Field("status", "enum", values=SAGA_STATUSES, default="running", line=line),
        Field("step", "integer", line=line),  # the step to do next, or to compensate
        Field("attempts", "integer", line=line),  # tries of that step so far
        Field("next_at", "number", line=line),  # not tried again before (epoch seconds)
        Field("deadline", "number", line=line),  # going forward stops then (epoch seconds)
        Field("data", "text", line=line),  # JSON: the input and each step's result
        Field("reason", "text", required=False, line=line),  # why it compensates, or parked
    )
    return Entity(name, context, {f.name: f for f in fields}, why, line=line)


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def parse_duration(text: object) -> float | None:
    """'5s', '500ms', '2m', '1h', '7d' or a bare number of seconds; None if unreadable."""
    if isinstance(text, bool):
        return None
    if isinstance(text, int | float):
        return float(text) if text >= 0 else None
    match = _DURATION.match(str(text))
    if not match:
        return None
    return float(match.group(1)) * _UNITS[match.group(2)]


def resolve_url(url: str, base: Path) -> str:
    """Make a relative sqlite:/// path relative to the charter file's folder."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        relative = url[len("sqlite:///") :]
        if relative != ":memory:":
            return "sqlite:///" + str((base / relative).resolve())
    return url


def load(path: str | Path) -> Charter:
    """Read and check a charter file. Raises CharterError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CharterError(
            [Problem(str(path), 0, f"cannot read the charter: {exc.strerror}")]
        ) from None
    return loads(text, path)


def loads(text: str, path: str | Path = "charter.yaml") -> Charter:
    return _Reader(text, Path(path)).read()


def _compose(text: str) -> Any:
    """The YAML's node tree: by libyaml when it takes the text, else by ruamel's own parser.
    libyaml refuses a ':' inside a plain scalar in a flow mapping (`{store: sqlite:///x.db}`,
    which the charter's own examples write), so such a text is parsed again the slow way."""
    try:
        return YAML(typ="safe").compose(text)
    except MarkedYAMLError:
        return YAML(typ="safe", pure=True).compose(text)


class _Reader:
    """Turns YAML into a Charter, collecting problems instead of stopping at the first."""

    def __init__(self, text: str, path: Path) -> None:
        self.text = text
        self.path = path
        self.problems: list[Problem] = []
        self.visibility = PUBLIC  # the charter's, once read: each entity's default
        self.reconcile_s = 0.0  # the charter's, once read: each copy's default
        self.repair: tuple[str, ...] = ()

    def problem(self, line: int, message: str, hint: str = "") -> None:
        self.problems.append(Problem(str(self.path), line, message, hint))

    def read(self) -> Charter:
        yaml = YAML(typ="rt")
        yaml.allow_duplicate_keys = True
        try:
            # Parsed once, by libyaml when ruamel.yaml.clib is there (several times faster
            # than the round-trip parser, which also gathers comments: the parse is most of
            # a load's time); then built into mappings that know their lines.
            node = _compose(self.text)
            self._find_duplicates(node)
            doc = yaml.constructor.construct_document(node) if node is not None else None
        except MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 0
            if line > len(self.text.splitlines()) and exc.context_mark:  # end of file: say where
                line = exc.context_mark.line + 1  # the unfinished thing began
            what = str(exc.problem or "")
            if exc.context and exc.context_mark:
                what += f" ({exc.context}, which started at line {exc.context_mark.line + 1})"
            raise CharterError(
                [
                    Problem(
                        str(self.path),
                        line,
                        f"not valid YAML: {what or exc}",
                        "check indentation, colons and quotes on this line and the next",
                    )
                ]
            ) from None
        if not isinstance(doc, dict):
            raise CharterError(
                [
                    Problem(
                        str(self.path),
                        1,
                        "the charter must be a YAML mapping",
                        "a charter starts with 'charter: 1', then contexts:, entities:, copies:",
                    )
                ]
            )
        charter = self._charter(doc)
        if self.problems:
            self.problems.sort(key=lambda p: p.line)
            raise CharterError(self.problems)
        assert charter is not None
        return charter

    def _find_duplicates(self, node: Node | None, where: str = "") -> None:
        if isinstance(node, MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                name = str(key.value)
                line = key.start_mark.line + 1
                if name in seen:
                    what = f"{where.strip()} '{name}'" if where.strip() else f"'{name}'"
                    self.problem(
                        line,
                        f"{what} is declared twice (first at line {seen[name]})",
                        "each name may appear once; merge the two declarations",
                    )
                else:
                    seen[name] = line
                self._find_duplicates(value, _singular(name) + " ")
        elif isinstance(node, SequenceNode):
            for item in node.value:
                self._find_duplicates(item, where)

    @staticmethod
    def _line(mapping: Any, key: Any) -> int:
        try:
            return int(mapping.lc.key(key)[0]) + 1
        except (AttributeError, KeyError, TypeError):
            return int(getattr(getattr(mapping, "lc", None), "line", 0) or 0) + 1

    def _mapping(self, value: Any, line: int, what: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(line, f"{what} must be a mapping (name: settings)")
            return {}
        return value

    def _unknown_keys(self, mapping: dict[str, Any], allowed: tuple[str, ...], what: str) -> None:
        for key in mapping:
            if key not in allowed:
                self.problem(
                    self._line(mapping, key), f"{what}: unknown key '{key}'", _hint(key, allowed)
                )

    def _charter(self, doc: dict[str, Any]) -> Charter | None:
        keys: tuple[str, ...] = ("charter", "name", "bus", "retention", "contexts", "entities")
        keys += ("copies", "visibility", "latency_retention", "sagas", "reconcile", "repair")
        self._unknown_keys(doc, keys, "charter")
        if doc.get("charter") != 1:
            self.problem(
                self._line(doc, "charter"),
                f"unsupported charter version {doc.get('charter')!r}",
                "start the file with 'charter: 1'",
            )
        base = self.path.parent
        name = str(doc.get("name") or self.path.parent.resolve().name)
        bus = self._url(doc, "bus", "sqlite:///.charter/bus.db", base, "bus")
        retention = parse_duration(doc.get("retention", DEFAULT_RETENTION_S))
        if retention is None:
            self.problem(
                self._line(doc, "retention"),
                f"retention {doc.get('retention')!r} is not a duration",
                "write it like 1h, 7d or 30m",
            )
            retention = DEFAULT_RETENTION_S
        self.visibility = self._visibility(doc, PUBLIC, "charter")
        self.reconcile_s = self._reconcile(doc, 0.0, "charter")
        self.repair = self._repair(doc, (), "charter")
        contexts = self._contexts(
            self._mapping(doc.get("contexts"), self._line(doc, "contexts"), "contexts"), base
        )
        entities = self._entities(
            self._mapping(doc.get("entities"), self._line(doc, "entities"), "entities"), contexts
        )
        sagas = self._sagas(
            self._mapping(doc.get("sagas"), self._line(doc, "sagas"), "sagas"), contexts, entities
        )
        copies = self._copies(
            self._mapping(doc.get("copies"), self._line(doc, "copies"), "copies"),
            contexts,
            entities,
        )
        if not contexts and "contexts" not in doc:
            self.problem(1, "the charter declares no contexts", "add a 'contexts:' section")
        charter = Charter(
            name, bus, contexts, entities, copies, self.path, retention, self.visibility
        )
        charter = dataclasses.replace(charter, reconcile_s=self.reconcile_s, repair=self.repair)
        return self._latency_retention(doc, dataclasses.replace(charter, sagas=sagas))

    def _sagas(
        self, raw: dict[str, Any], contexts: dict[str, Context], entities: dict[str, Entity]
    ) -> dict[str, str]:
        """`sagas: {Checkout: {in: orders}}`: each saga's state is an entity of that name,
        owned by the context that orchestrates it (charter.sagas), added to `entities`."""
        sagas: dict[str, str] = {}
        for name, spec in raw.items():
            name, line = str(name), self._line(raw, name)
            self._check_name(name, line, "saga")
            spec = self._mapping(spec, line, f"saga '{name}'")
            self._unknown_keys(spec, ("in", "why"), f"saga '{name}'")
            context = str(spec.get("in") or "")
            if context not in contexts:
                self.problem(
                    self._line(spec, "in") if "in" in spec else line,
                    f"saga '{name}' is orchestrated by unknown context '{context}'",
                    _hint(context, tuple(contexts)) or "in: <the context that runs it>",
                )
                continue
            if name in entities:
                self.problem(
                    line,
                    f"saga '{name}' has the name of entity '{name}'",
                    "a saga's state is an entity of its name: give the saga another",
                )
                continue
            why = str(spec.get("why") or f"the state of the {name} saga (charter.sagas)")
            entities[name] = saga_entity(name, context, why, line)
            sagas[name] = context
        return sagas

    def _reconcile(self, mapping: dict[str, Any], default: float, what: str) -> float:
        """`reconcile:` (a duration; 0 or off: never), or `default` when it is not there."""
        if "reconcile" not in mapping:
            return default
        value = mapping["reconcile"]
        every = 0.0 if value in ("off", False) else parse_duration(value)
        if every is None:
            self.problem(
                self._line(mapping, "reconcile"),
                f"{what}: reconcile {value!r} is not a duration",
                "how often `charter run` checks the copy against its owner: 1h, 10m, 30s "
                "(0 or off: never)",
            )
            return default
        return every

    def _repair(
        self, mapping: dict[str, Any], default: tuple[str, ...], what: str
    ) -> tuple[str, ...]:
        """`repair:` (the kinds of drift the runner mends by itself), or `default`."""
        if "repair" not in mapping:
            return default
        value, line = mapping["repair"], self._line(mapping, "repair")
        if value is None:
            return ()
        if not isinstance(value, list):
            self.problem(
                line,
                f"{what}: repair must be a list of kinds of drift",
                f"repair: [missing, stale, extra] (any of {', '.join(REPAIRABLE)}; [] for none)",
            )
            return default
        kinds: list[str] = []
        for index, item in enumerate(value):
            try:
                at = int(value.lc.item(index)[0]) + 1  # type: ignore[attr-defined]
            except (AttributeError, KeyError):
                at = line
            kind = str(item)
            if kind == "ahead":
                self.problem(
                    at,
                    f"{what}: repair cannot list 'ahead'",
                    "a copy ahead of its owner means the owner went back (a restored backup): "
                    "move it back only by hand, `charter reconcile --repair --accept-owner`",
                )
            elif kind == "in_flight":
                self.problem(
                    at, f"{what}: repair cannot list 'in_flight'", "in flight is not drift"
                )
            elif kind not in REPAIRABLE:
                self.problem(
                    at,
                    f"{what}: repair: unknown kind of drift {item!r}",
                    _hint(kind, REPAIRABLE) or f"kinds: {', '.join(REPAIRABLE)}",
                )
            elif kind not in kinds:
                kinds.append(kind)
        return tuple(kinds)

    def _visibility(self, mapping: dict[str, Any], default: str, what: str) -> str:
        """`visibility:` (public or contract), or `default` when it is not there."""
        value = mapping.get("visibility", default)
        if value not in VISIBILITIES:
            self.problem(
                self._line(mapping, "visibility"),
                f"{what}: visibility {value!r} is neither {' nor '.join(VISIBILITIES)}",
                "public: every context may read the whole public event; contract: each copy "
                "gets only its own fields",
            )
            return default
        return str(value)

    def _latency_retention(self, doc: dict[str, Any], charter: Charter) -> Charter:
        """`latency_retention` (default 24h): how long each copy keeps its latency
        histogram (charter.latency); 0 records none."""
        if "latency_retention" not in doc:
            return charter
        kept = parse_duration(doc["latency_retention"])
        if kept is None:
            self.problem(
                self._line(doc, "latency_retention"),
                f"latency_retention {doc['latency_retention']!r} is not a duration",
                "write it like 24h, 7d or 0 (no latencies recorded)",
            )
            return charter
        return dataclasses.replace(charter, latency_retention_s=kept)

    def _url(self, mapping: dict[str, Any], key: str, default: str, base: Path, role: str) -> str:
        url = str(mapping.get(key) or default)
        for message, hint in urls.problems(url, role):
            self.problem(self._line(mapping, key), message, hint)
        return resolve_url(url, base)

    def _contexts(self, raw: dict[str, Any], base: Path) -> dict[str, Context]:
        contexts: dict[str, Context] = {}
        for name, spec in raw.items():
            line = self._line(raw, name)
            self._check_name(str(name), line, "context")
            spec = self._mapping(spec, line, f"context '{name}'")
            self._unknown_keys(spec, ("team", "store"), f"context '{name}'")
            if not spec.get("team"):
                self.problem(line, f"context '{name}' has no team", "say who to call: team: <name>")
            store = self._url(spec, "store", f"sqlite:///.charter/{name}.db", base, "store")
            contexts[str(name)] = Context(str(name), str(spec.get("team") or ""), store, line)
        return contexts

    def _entities(self, raw: dict[str, Any], contexts: dict[str, Context]) -> dict[str, Entity]:
        entities: dict[str, Entity] = {}
        for name, spec in raw.items():
            line = self._line(raw, name)
            self._check_name(str(name), line, "entity")
            spec = self._mapping(spec, line, f"entity '{name}'")
            keys = ("owner", "why", "fields", "constraints", "visibility", "commands", "moves")
            self._unknown_keys(spec, keys, f"entity '{name}'")
            owner = str(spec.get("owner") or "")
            if not owner:
                self.problem(
                    line, f"entity '{name}' has no owner", "name the one context that writes it"
                )
            elif owner not in contexts:
                self.problem(
                    self._line(spec, "owner"),
                    f"entity '{name}' is owned by unknown context '{owner}'",
                    _hint(owner, tuple(contexts)) or "declare it under contexts:",
                )
            fields = self._fields(
                str(name), self._mapping(spec.get("fields"), self._line(spec, "fields"), "fields")
            )
            constraints = self._constraints(str(name), spec, fields)
            commands = self._commands(str(name), owner, spec, fields, contexts, entities)
            moves = self._moves(str(name), owner, spec, contexts)
            entities[str(name)] = Entity(
                str(name),
                owner,
                fields,
                str(spec.get("why") or ""),
                constraints,
                line,
                commands=commands,
                visibility=self._visibility(spec, self.visibility, f"entity '{name}'"),
                moves=moves,
            )
        return entities

    def _moves(
        self, entity: str, owner: str, spec: dict[str, Any], contexts: dict[str, Context]
    ) -> tuple[Move, ...]:
        """`moves:` (written by `charter transfer`): each ownership move, oldest first, with
        its epoch; the last move of the whole entity went to `owner`."""
        if "moves" not in spec:
            return ()
        raw = spec["moves"]
        if not isinstance(raw, list):
            self.problem(
                self._line(spec, "moves"),
                f"entity '{entity}': moves must be a list",
                "- {epoch: 2, from: legacy, to: customers}  (one item per move, oldest first)",
            )
            return ()
        moves: list[Move] = []
        last = 1
        for index, item in enumerate(raw):
            try:
                line = int(raw.lc.item(index)[0]) + 1  # type: ignore[attr-defined]
            except (AttributeError, KeyError):
                line = self._line(spec, "moves")
            what = f"entity '{entity}', move {index + 1}"
            if not isinstance(item, dict):
                self.problem(line, f"{what} must be a mapping", "{epoch: 2, to: <context>}")
                continue
            self._unknown_keys(item, ("epoch", "to", "from", "partitions", "at"), what)
            epoch = item.get("epoch")
            if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch <= last:
                self.problem(
                    self._line(item, "epoch") if "epoch" in item else line,
                    f"{what}: epoch {epoch!r} must be a whole number above {last}",
                    "epochs start at 1 (before any move) and grow by each move, oldest first",
                )
                epoch = last + 1
            last = epoch
            to = str(item.get("to") or "")
            if to not in contexts:
                self.problem(
                    self._line(item, "to") if "to" in item else line,
                    f"{what}: moves to unknown context '{to}'",
                    _hint(to, tuple(contexts)) or "to: <a context declared under contexts:>",
                )
            source = str(item.get("from") or "")
            if source and source not in contexts:
                self.problem(
                    self._line(item, "from"),
                    f"{what}: moves from unknown context '{source}'",
                    _hint(source, tuple(contexts)),
                )
            parts = self._parts(item, what, line)
            moves.append(Move(epoch, to, parts, source, str(item.get("at") or ""), line))
        whole = [m for m in moves if m.parts is None]
        if whole and whole[-1].to != owner and whole[-1].to in contexts:
            self.problem(
                self._line(spec, "owner"),
                f"entity '{entity}' is owned by '{owner}', but its last move of the whole "
                f"entity (epoch {whole[-1].epoch}) went to '{whole[-1].to}'",
                "owner: says who owns it today: the last whole move's 'to'",
            )
        return tuple(moves)

    def _parts(self, item: dict[str, Any], what: str, line: int) -> tuple[int, ...] | None:
        """A move's `partitions:` (a list of partitions, 0 to PARTITIONS - 1), or None."""
        if "partitions" not in item:
            return None
        raw = item["partitions"]
        ok = (
            isinstance(raw, list)
            and raw
            and all(
                isinstance(p, int) and not isinstance(p, bool) and 0 <= p < PARTITIONS for p in raw
            )
        )
        if not ok or len(set(raw)) != len(raw):
            self.problem(
                self._line(item, "partitions"),
                f"{what}: partitions {raw!r} must list distinct partitions from 0 to "
                f"{PARTITIONS - 1}",
                f"a record's partition is crc32(id) % {PARTITIONS}, as on the bus",
            )
            return None
        return tuple(sorted(raw))

    def _commands(
        self,
        entity: str,
        owner: str,
        spec: dict[str, Any],
        fields: dict[str, Field],
        contexts: dict[str, Context],
        before: dict[str, Entity],
    ) -> dict[str, Command]:
        """An entity's `commands: {Name: {senders: [contexts], fields: [...] or {...}}}`."""
        raw = self._mapping(spec.get("commands"), self._line(spec, "commands"), "commands")
        taken = {n: e.name for e in before.values() for n in e.commands}
        commands: dict[str, Command] = {}
        for name, body in raw.items():
            name, line = str(name), self._line(raw, name)
            self._check_name(name, line, "command")
            if name in taken:
                self.problem(
                    line,
                    f"command '{name}' is declared on {taken[name]} and on {entity}",
                    "a command's name is how a sender names it: give each its own",
                )
            body = self._mapping(body, line, f"command '{name}'")
            self._unknown_keys(body, ("senders", "fields"), f"command '{name}'")
            senders = body.get("senders")
            if not isinstance(senders, list) or not senders:
                self.problem(
                    line,
                    f"command '{name}' names no senders",
                    "senders: [the contexts that may send it]",
                )
                senders = []
            for sender in map(str, senders):
                if sender not in contexts:
                    self.problem(
                        self._line(body, "senders"),
                        f"command '{name}' is sent by unknown context '{sender}'",
                        _hint(sender, tuple(contexts)) or "declare it under contexts:",
                    )
            arguments = self._command_fields(entity, name, body, fields, line)
            commands[name] = Command(name, entity, owner, tuple(map(str, senders)), arguments, line)
        return commands

    def _command_fields(
        self, entity: str, name: str, body: dict[str, Any], fields: dict[str, Field], line: int
    ) -> dict[str, Field]:
        """A list names fields of the entity (their types, and whether they are required);
        a mapping declares arguments of the command's own, as an entity's fields are."""
        raw = body.get("fields")
        if raw is None:
            return {}
        if isinstance(raw, dict):
            declared = self._fields(name, raw)
        elif isinstance(raw, list):
            declared = {}
            for item in map(str, raw):
                if item not in fields:
                    self.problem(
                        self._line(body, "fields"),
                        f"command '{name}' takes unknown field {entity}.{item}",
                        _hint(item, tuple(fields))
                        or "list fields of the entity, or declare them: fields: {qty: integer}",
                    )
                else:
                    declared[item] = fields[item]
        else:
            self.problem(
                self._line(body, "fields"),
                f"command '{name}': fields must be a list of {entity}'s fields or a mapping",
            )
            return {}
        for reserved in sorted(set(declared) & {"key", "timeout"}):
            self.problem(
                line,
                f"command '{name}': '{reserved}' is reserved",
                "ctx.send takes key and timeout itself; pick another name",
            )
        return declared

    def _fields(self, entity: str, raw: dict[str, Any]) -> dict[str, Field]:
        fields: dict[str, Field] = {}
        for name, spec in raw.items():
            line = self._line(raw, name)
            self._check_name(str(name), line, "field")
            if str(name) in RESERVED_FIELDS or str(name).startswith("charter_"):
                self.problem(
                    line,
                    f"{entity}.{name}: '{name}' is reserved",
                    "charter adds id, version and synced_at itself; pick another name",
                )
            short_form = isinstance(spec, str)
            if short_form:
                spec = {"type": spec}
            spec = self._mapping(spec, line, f"field {entity}.{name}")
            keys = ("type", "required", "unique", "private", "values", "default", "deprecated")
            self._unknown_keys(spec, keys, f"field {entity}.{name}")
            kind = str(spec.get("type") or "")
            if not kind:
                self.problem(
                    line,
                    f"{entity}.{name} has no type",
                    f"add type: <one of {', '.join(FIELD_TYPES)}>",
                )
            elif kind not in FIELD_TYPES:
                self.problem(
                    line if short_form else self._line(spec, "type"),
                    f"{entity}.{name} has unknown type '{kind}'",
                    _hint(kind, FIELD_TYPES) or f"use one of: {', '.join(FIELD_TYPES)}",
                )
            values: tuple[str, ...] = ()
            if kind == "enum":
                raw_values = spec.get("values")
                if not isinstance(raw_values, list) or not raw_values:
                    self.problem(line, f"enum {entity}.{name} has no values", "values: [a, b, c]")
                else:
                    values = tuple(str(v) for v in raw_values)
            default = _plain(spec.get("default"))
            if default is not None and values and str(default) not in values:
                self.problem(
                    self._line(spec, "default"),
                    f"{entity}.{name}: default '{default}' is not one of {list(values)}",
                )
            expected = _default_unfit(kind, default)
            if expected:
                self.problem(
                    self._line(spec, "default"),
                    f"{entity}.{name}: default {default!r} is not {expected}",
                    _DEFAULT_HINTS[kind].format(default),
                )
            required = bool(spec.get("required", default is None))
            fields[str(name)] = Field(
                str(name),
                kind,
                required=required,
                unique=bool(spec.get("unique", False)),
                private=bool(spec.get("private", False)),
                values=values,
                default=default,
                line=line,
                deprecated=bool(spec.get("deprecated", False)),
            )
        return fields

    def _constraints(
        self, entity: str, spec: dict[str, Any], fields: dict[str, Field]
    ) -> tuple[NoOverlap, ...]:
        raw = spec.get("constraints") or []
        if not isinstance(raw, list):
            self.problem(
                self._line(spec, "constraints"),
                f"{entity}: constraints must be a list",
                "write each as an item: constraints: [{no_overlap: {per: [...], range: [a, b]}}]",
            )
            return ()
        result: list[NoOverlap] = []
        for index, item in enumerate(raw):
            try:
                line = int(raw.lc.item(index)[0]) + 1  # type: ignore[attr-defined]
            except (AttributeError, KeyError):
                line = self._line(spec, "constraints")
            if not isinstance(item, dict) or list(item) != ["no_overlap"]:
                self.problem(
                    line,
                    f"{entity}: unknown constraint",
                    "supported: no_overlap: {per: [...], range: [start, end]}",
                )
                continue
            body = item["no_overlap"] if isinstance(item["no_overlap"], dict) else {}
            self._unknown_keys(body, ("per", "range", "unless"), f"{entity}: no_overlap")
            per = tuple(str(f) for f in (body.get("per") or []))
            bounds = tuple(str(f) for f in (body.get("range") or []))
            if len(bounds) != 2:
                self.problem(line, f"{entity}: no_overlap needs range: [start_field, end_field]")
                continue
            for name in (*per, *bounds):
                if name not in fields:
                    self.problem(
                        line,
                        f"{entity}: constraint no_overlap names unknown field '{name}'",
                        _hint(name, tuple(fields)) or f"fields are: {', '.join(fields)}",
                    )
            unless = self._unless(entity, body, fields, line)
            result.append(NoOverlap(per, bounds[0], bounds[1], line, unless))
        return tuple(result)

    def _unless(
        self, entity: str, body: dict[str, Any], fields: dict[str, Field], line: int
    ) -> tuple[str, tuple[str, ...]] | None:
        """no_overlap's `unless: {field: [values]}`: one string or enum field, its values."""
        if "unless" not in body:
            return None
        raw = body["unless"]
        line = self._line(body, "unless")
        example = "unless: {status: [cancelled]}"
        if not isinstance(raw, dict) or len(raw) != 1:
            message = f"{entity}: no_overlap unless takes one field and its values"
            self.problem(line, message, example)
            return None
        [(name, values)] = raw.items()
        name = str(name)
        field = fields.get(name)
        if field is None:
            self.problem(
                line,
                f"{entity}: no_overlap unless names unknown field '{name}'",
                _hint(name, tuple(fields)) or f"fields are: {', '.join(fields)}",
            )
            return None
        if field.type not in ("enum", "string"):
            self.problem(
                line,
                f"{entity}: no_overlap unless needs an enum or string field; "
                f"{name} is {field.type}",
            )
            return None
        if not isinstance(values, list) or not values:
            self.problem(line, f"{entity}: no_overlap unless {name} lists no values", example)
            return None
        listed = tuple(str(v) for v in values)
        for value in listed:
            if field.type == "enum" and value not in field.values:
                self.problem(
                    line,
                    f"{entity}: no_overlap unless {name}: '{value}' is not one of "
                    f"{list(field.values)}",
                    _hint(value, field.values),
                )
        return name, listed

    def _copies(
        self, raw: dict[str, Any], contexts: dict[str, Context], entities: dict[str, Entity]
    ) -> dict[str, Copy]:
        copies: dict[str, Copy] = {}
        for name, spec in raw.items():
            line = self._line(raw, name)
            self._check_name(str(name), line, "copy")
            spec = self._mapping(spec, line, f"copy '{name}'")
            self._unknown_keys(
                spec,
                ("in", "of", "fields", "window", "breaks", "reconcile", "repair"),
                f"copy '{name}'",
            )
            context, of = str(spec.get("in") or ""), str(spec.get("of") or "")
            if context not in contexts:
                self.problem(
                    self._line(spec, "in"),
                    f"copy '{name}' is kept in unknown context '{context}'",
                    _hint(context, tuple(contexts)) or "in: <a context declared under contexts:>",
                )
            entity = entities.get(of)
            if entity is None:
                self.problem(
                    self._line(spec, "of"),
                    f"copy '{name}' is of unknown entity '{of}'",
                    _hint(of, tuple(entities)) or "of: <an entity declared under entities:>",
                )
            elif entity.owner == context:
                self.problem(
                    self._line(spec, "in"),
                    f"copy '{name}' is placed in '{context}', which owns {of}",
                    "the owner reads its own records; copies live in other contexts",
                )
            names = spec.get("fields") or []
            if not isinstance(names, list) or not names:
                self.problem(
                    line, f"copy '{name}' lists no fields", "fields: [the fields it depends on]"
                )
                names = []
            for index, field_name in enumerate(names):
                try:
                    field_line = int(names.lc.item(index)[0]) + 1  # type: ignore[attr-defined]
                except (AttributeError, KeyError):
                    field_line = self._line(spec, "fields")
                if entity is None:
                    continue
                found = entity.fields.get(str(field_name))
                if found is None:
                    self.problem(
                        field_line,
                        f"copy '{name}' depends on unknown field {of}.{field_name}",
                        _hint(str(field_name), entity.public_names)
                        or f"public fields of {of}: {', '.join(entity.public_names)}",
                    )
                elif found.private:
                    self.problem(
                        field_line,
                        f"copy '{name}' depends on {of}.{field_name}, which is private",
                        f"private fields never leave '{entity.owner}'",
                    )
            window = parse_duration(spec.get("window"))
            if "window" not in spec:
                self.problem(
                    line,
                    f"copy '{name}' has no window",
                    "say how stale it may get: window: 5s (or 500ms, 10m, 1h, 1d)",
                )
                window = 0.0
            elif window is None:
                self.problem(
                    self._line(spec, "window") if "window" in spec else line,
                    f"copy '{name}': window {spec.get('window')!r} is not a duration",
                    "write it like 500ms, 5s, 10m, 1h or 1d",
                )
                window = 0.0
            copies[str(name)] = Copy(
                str(name),
                context,
                of,
                tuple(str(n) for n in names),
                window,
                str(spec.get("breaks") or ""),
                line,
                self._reconcile(spec, self.reconcile_s, f"copy '{name}'"),
                self._repair(spec, self.repair, f"copy '{name}'"),
            )
        return copies

    def _check_name(self, name: str, line: int, what: str) -> None:
        if not _NAME.match(name):
            self.problem(
                line,
                f"{what} name '{name}' is not a plain name",
                "use letters, digits and underscores, starting with a letter",
            )


def _singular(word: str) -> str:
    return {"contexts": "context", "entities": "entity", "copies": "copy", "fields": "field"}.get(
        word, word
    )


_DEFAULTS: dict[str, tuple[tuple[type, ...], str]] = {
    "string": ((str,), "a string"),
    "text": ((str,), "a string"),
    "integer": ((int,), "a whole number"),
    "number": ((int, float), "a number"),
    "boolean": ((bool,), "true or false"),
}


def _plain(value: Any) -> Any:
    """A YAML scalar as the plain Python value: the round-trip loader's ScalarInt and
    ScalarFloat (subclasses that keep how the number was written) are no value a safe YAML
    dumper can write (`charter export` of a `default: 0`), nor JSON's, elsewhere."""
    if isinstance(value, bool) or value is None:
        return value
    for plain in (int, float, str):
        if isinstance(value, plain):
            return plain(value)
    return value


_DEFAULT_HINTS = {
    "string": 'quote it: default: "{}"',
    "text": 'quote it: default: "{}"',
    "integer": "unquoted: default: 0",
    "number": "unquoted: default: 0.5",
    "boolean": "default: true or default: false, unquoted",
}


def _default_unfit(kind: str, default: Any) -> str:
    """What a field's `default` should have been, when it is not of the field's type ("" when
    it fits, or when only a write can tell: dates, timestamps, uuids). A write that takes it
    would otherwise be refused, far from the line that is wrong."""
    if default is None or kind not in _DEFAULTS:
        return ""
    types, expected = _DEFAULTS[kind]
    fits = isinstance(default, types) and (kind == "boolean" or not isinstance(default, bool))
    return "" if fits else expected


def _hint(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean '{close[0]}'?" if close else ""
