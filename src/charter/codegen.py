"""Typed models for one context (`charter codegen --context NAME`): each context sees only
its own nouns. For what it owns, a frozen dataclass with every field (private ones too:
they are its own) and typed `create` / `update` / `delete` through its transactions; for
each copy it keeps, a frozen, read-only dataclass of only the copy's fields. Nothing of
another context's private fields is ever written, so no module describes them: the
shared library of everyone's records is never made.

The module is Python 3.11 and mypy --strict clean. Readers return its types when asked:
`context.copy("order_customers").get(id, as_=OrderCustomers)`,
`context.get("Customer", id, as_=Customer)` (a class with `from_record`, charter.owner)."""

from __future__ import annotations

import json
import keyword
import textwrap

from charter.errors import ValidationError
from charter.model import Charter, Copy, Entity, Field, _hint

# charter type → the Python type a reader gets
_PYTHON = {
    "string": "str",
    "text": "str",
    "integer": "int",
    "number": "float",
    "boolean": "bool",
    "uuid": "uuid.UUID",
    "timestamp": "datetime.datetime",
    "date": "datetime.date",
}
# names the module uses: a field by one of these names gets a trailing underscore as an
# attribute (its key in records and transactions stays the charter's name), and an entity
# or copy class by one of these names cannot be written
_MODULE_NAMES = frozenset(
    {"datetime", "uuid", "dataclass", "charter"}
    | {"ClassVar", "Literal", "NotRequired", "TypedDict", "Unpack"}
)
_CLASS_NAMES = frozenset({"ENTITY", "COPY", "from_record", "create", "update", "delete", "token"})
_BUILTINS = frozenset({"str", "int", "float", "bool", "None"})
LINE = 88  # the generated lines' length at most, as ruff format and black lay them out


def class_name(copy: Copy) -> str:
    """order_customers → OrderCustomers."""
    return _camel(copy.name)


def generate(charter: Charter, context: str) -> str:
    """The module of `context`'s nouns, as Python source."""
    if context not in charter.contexts:
        hint = _hint(context, tuple(charter.contexts)) or f"contexts: {', '.join(charter.contexts)}"
        raise ValidationError(f"no context '{context}' in the charter; {hint}")
    return _Module(charter, context).source()


def _attribute(name: str, taken: frozenset[str]) -> str:
    """A field's attribute name: its own, unless Python or the module already uses it."""
    if keyword.iskeyword(name) or name in _MODULE_NAMES | _CLASS_NAMES | _BUILTINS | taken:
        return name + "_"
    return name


def _docstring(text: str, indent: str) -> str:
    """A docstring wrapped within LINE, its closing quotes on a line of their own when it
    takes several."""
    text = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if len(indent) + len(text) + 6 <= LINE:
        return f'{indent}"""{text}"""'
    lines = textwrap.wrap(text, LINE - len(indent) - 3)
    body = "\n".join(indent + line for line in lines[1:])
    return f'{indent}"""{lines[0]}\n{body}\n{indent}"""'


def _wrapped(indent: str, opening: str, items: list[str], closing: str) -> str:
    """`opening items closing` as ruff format (and black) lays it out: on one line if it
    fits, else the items on one indented line, else one item a line."""
    inner = indent + "    "
    one = f"{indent}{opening}{', '.join(items)}{closing}"
    if len(one) <= LINE:
        return one
    hugged = f"{inner}{', '.join(items)}"
    if len(hugged) <= LINE:
        return f"{indent}{opening}\n{hugged}\n{indent}{closing}"
    listed = "".join(f"{inner}{item},\n" for item in items)
    return f"{indent}{opening}\n{listed}{indent}{closing}"


def _q(text: str) -> str:
    """A Python string literal as ruff format writes it: in double quotes (JSON's escapes
    are Python's too), unless the text holds one."""
    return repr(text) if '"' in text else json.dumps(text, ensure_ascii=False)


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


class _Module:
    """One context's module, written part by part."""

    def __init__(self, charter: Charter, context: str) -> None:
        self.charter, self.context = charter, context
        self.owned = charter.owned_by(context)
        self.copies = charter.copies_in(context)
        self.classes = [e.name for e in self.owned] + [class_name(c) for c in self.copies]
        self.aliases: dict[tuple[str, str], str] = {}  # (entity, enum field) → its Literal
        self.helpers: set[str] = set()  # the Python types needing an optional converter
        self.typing: set[str] = set()  # names the module imports from typing
        self.typeddicts: list[str] = []  # the arguments of create and update, by name
        self.imports: set[str] = set()  # the modules the types come from

    # ----------------------------------------------------------------- the parts

    def source(self) -> str:
        body = [self._owned(e) for e in self.owned] + [self._copy(c) for c in self.copies]
        aliases = [
            _wrapped("", f"{alias} = Literal[", [_q(v) for v in self._field(e, f).values], "]")
            for (e, f), alias in self.aliases.items()
        ]
        names = [*self.classes, *self.aliases.values(), *self.typeddicts]
        clash = sorted(
            {n for n in names if names.count(n) > 1 or keyword.iskeyword(n)}
            | (set(names) & _MODULE_NAMES)
        )
        if clash:
            raise ValidationError(
                f"cannot write models for '{self.context}': the name '{clash[0]}' would "
                "stand for two things (an entity, a copy's class, an enum's or the "
                "arguments' type, or what the module imports); rename the copy"
            )
        typing_names = sorted(self.typing | {"ClassVar"} | ({"Literal"} if aliases else set()))
        imports = [
            *(f"import {name}" for name in sorted(self.imports & {"datetime", "uuid"})),
            "from dataclasses import dataclass",
            f"from typing import {', '.join(typing_names)}",
            "",
            "import charter",
            "",
        ]
        header = "\n".join(
            [
                f"# generated by charter codegen from {self.charter.name}; do not edit",
                _docstring(self._about(), ""),
                "",
                "from __future__ import annotations",
                "",
                *(imports if self.classes else []),
                *(
                    ["__all__ = [", *(f"    {_q(n)}," for n in sorted(names)), "]"]
                    if names
                    else ["__all__: list[str] = []"]
                ),
            ]
        )
        blocks = [header, *(["\n".join(aliases)] if aliases else [])]
        blocks += [self._helper(kind) for kind in sorted(self.helpers)]
        return "\n\n\n".join([*blocks, *body]) + "\n"

    def _about(self) -> str:
        owned = ", ".join(e.name for e in self.owned)
        kept = ", ".join(f"{class_name(c)} (copy {c.name})" for c in self.copies)
        return (
            f"The nouns of context '{self.context}' in charter '{self.charter.name}'. "
            + (
                f"It owns {owned}: written through its transactions. "
                if owned
                else "It owns nothing. "
            )
            + (
                f"It keeps {kept}: read-only, only the fields each keeps."
                if kept
                else "It keeps no copy."
            )
        )

    def _field(self, entity: str, name: str) -> Field:
        return self.charter.entities[entity].fields[name]

    def _type(self, entity: Entity, field: Field, writing: bool = False) -> str:
        """The annotation of `field`: what a reader gets, or (`writing`) what create and
        update take (a UUID's text too, as the transaction does)."""
        if field.type == "enum":
            key = (entity.name, field.name)
            alias = self.aliases.setdefault(key, entity.name + _camel(field.name))
            kind = alias
        else:
            kind = _PYTHON[field.type]
            self.imports.add(kind.partition(".")[0])
            if writing and field.type == "uuid":
                kind = "uuid.UUID | str"
        return kind if field.required else f"{kind} | None"

    def _read(self, field: Field, attribute: str) -> str:
        """`attribute=<the record's value, typed>` for from_record."""
        value = f"record[{_q(field.name)}]"
        if field.type == "uuid":
            if field.required:
                value = f"uuid.UUID({value})"
            else:
                self.helpers.add("uuid")
                value = f"_optional_uuid({value})"
        return f"{attribute}={value}"

    def _helper(self, kind: str) -> str:
        assert kind == "uuid"
        return (
            "def _optional_uuid(value: str | None) -> uuid.UUID | None:\n"
            "    return None if value is None else uuid.UUID(value)"
        )

    def _fields(self, entity: Entity, names: tuple[str, ...]) -> list[tuple[Field, str]]:
        fields = [entity.fields[n] for n in names]
        taken = frozenset(self.classes) | frozenset(self.aliases.values())
        taken |= frozenset(entity.name + _camel(f.name) for f in fields if f.type == "enum")
        return [(f, _attribute(f.name, taken)) for f in fields]

    def _dataclass(
        self,
        name: str,
        doc: str,
        classvars: dict[str, str],
        entity: Entity,
        fields: list[tuple[Field, str]],
        synced: bool,
    ) -> list[str]:
        """The class and its from_record, as lines (the caller adds methods)."""
        lines = ["@dataclass(frozen=True, slots=True)", f"class {name}:", _docstring(doc, "    ")]
        lines += [""] + [
            f"    {key}: ClassVar[str] = {_q(value)}" for key, value in classvars.items()
        ]
        lines += ["    id: str", "    version: int"]
        lines += [f"    {attr}: {self._type(entity, f)}" for f, attr in fields]
        reads = ["id=record.id", "version=record.version", *(self._read(f, a) for f, a in fields)]
        if synced:
            self.imports.add("datetime")
            lines.append("    synced_at: datetime.datetime")
            reads.append("synced_at=record.synced_at")
        lines += [
            "",
            "    @classmethod",
            _wrapped(
                "    ", "def from_record(", ["cls", "record: charter.Record"], f") -> {name}:"
            ),
            f'        """The {name} a reader read (what `as_={name}` does)."""',
            "        return cls(",
            *(f"            {r}," for r in reads),
            "        )",
        ]
        return lines

    def _owned(self, entity: Entity) -> str:
        fields = self._fields(entity, tuple(entity.fields))
        team = self.charter.contexts[self.context].team
        why = f": {entity.why}" if entity.why else ""
        doc = (
            f"{entity.name}, owned by '{self.context}' (team {team}){why}. Written only "
            f"through a transaction of '{self.context}': {entity.name}.create(tx, ...), "
            "then update(tx, ...) and delete(tx) of what you read."
        )
        new, changes = f"{entity.name}New", f"{entity.name}Changes"
        self.typeddicts += [new, changes]
        typed = [(f, self._type(entity, f, writing=True)) for f, _ in fields]
        name, quoted = entity.name, _q(entity.name)
        lines = self._dataclass(name, doc, {"ENTITY": name}, entity, fields, False)
        tx = "tx: charter.Transaction"
        refused = "refused (ConflictError) if it changed since it was read."
        lines += [
            "",
            "    @property",
            "    def token(self) -> str:",
            _docstring(
                "This version of this record as a read-your-writes token, as a Record's "
                "`.token` (valid once the transaction committed): `copy.wait_for(token)`.",
                "        ",
            ),
            f'        return f"{name}:{{self.id}}:{{self.version}}"',
            "",
            "    @classmethod",
            _wrapped(
                "    ", "def create(", ["cls", tx, "/", f"**values: Unpack[{new}]"], f") -> {name}:"
            ),
            f'        """A new {name}, committed with the transaction."""',
            _wrapped("        ", "return cls.from_record(tx.create(", [quoted, "**values"], "))"),
            "",
            _wrapped(
                "    ",
                "def update(",
                ["self", tx, "/", f"**changes: Unpack[{changes}]"],
                f") -> {name}:",
            ),
            _docstring(
                f"This record with `changes`, committed with the transaction; {refused}", "        "
            ),
            _wrapped(
                "        ",
                "record = tx.update(",
                [quoted, "self.id", "expected_version=self.version", "**changes"],
                ")",
            ),
            "        return self.from_record(record)",
            "",
            _wrapped("    ", "def delete(", ["self", tx, "/"], ") -> None:"),
            _docstring(f"This record deleted with the transaction; {refused}", "        "),
            _wrapped(
                "        ", "tx.delete(", [quoted, "self.id", "expected_version=self.version"], ")"
            ),
        ]
        return "\n\n\n".join(
            [
                self._typeddict(new, typed, True),
                self._typeddict(changes, typed, False),
                "\n".join(lines),
            ]
        )

    def _typeddict(self, name: str, typed: list[tuple[Field, str]], total: bool) -> str:
        """The keyword arguments of create (`total`: each required field must be given) or
        of update (any of them). In the functional form when a charter name cannot be a
        Python name there."""
        self.typing |= {"TypedDict", "Unpack"}
        entries = []
        for field, kind in typed:
            if total and not field.required:
                self.typing.add("NotRequired")
                kind = f"NotRequired[{kind}]"
            entries.append((field.name, kind))
        comment = f"# the keyword arguments of {'create' if total else 'update'}"
        if all(_attribute(key, frozenset()) == key for key, _ in entries):
            fields = [f"    {key}: {kind}" for key, kind in entries]
            return "\n".join([comment, f"class {name}(TypedDict, total={total}):", *fields])
        return "\n".join(
            [
                comment,
                f"{name} = TypedDict(",
                f"    {_q(name)},",
                "    {",
                *(f"        {_q(key)}: {kind}," for key, kind in entries),
                "    },",
                f"    total={total},",
                ")",
            ]
        )

    def _copy(self, copy: Copy) -> str:
        entity = self.charter.entities[copy.of]
        name = class_name(copy)
        breaks = f"; beyond that, {copy.breaks}" if copy.breaks else ""
        doc = (
            f"A row of copy '{copy.name}': {entity.name} as '{self.context}' keeps it, "
            f"read-only, fed by its owner '{entity.owner}'. At most {copy.window_s:g} s "
            f"behind{breaks}."
        )
        classvars = {"COPY": copy.name, "ENTITY": entity.name}
        return "\n".join(
            self._dataclass(name, doc, classvars, entity, self._fields(entity, copy.fields), True)
        )
