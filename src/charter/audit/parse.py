"""One SQL statement → the tables it reads and writes, by PostgreSQL's own parser (pglast,
which is libpg_query): CTEs (a CTE's name is no table), subqueries, joins, `INSERT … SELECT`,
`UPDATE … FROM`, `DELETE … USING`, `MERGE`, `COPY`, `TRUNCATE`, DDL, and the functions a
statement calls (what they touch inside is out of sight: they are named, not followed).

Parsing is the cost, so `Parser` keeps what it found by the statement's normalised text
(libpg_query's normalisation: constants become $1, $2, as in pg_stat_statements), and the
tree is read as libpg_query's JSON (several times faster than building pglast's node
objects). A statement the parser refuses is `None`: the caller counts it as unknown."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from pglast import parser as pg

SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast"})


class Table(NamedTuple):
    """A table as a statement names it: its schema when the statement says one."""

    schema: str | None
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    @property
    def system(self) -> bool:
        """A catalog of the server's own (pg_class, information_schema.tables, …)."""
        return self.schema in SYSTEM_SCHEMAS or (self.schema is None and self.name[:3] == "pg_")


@dataclass(frozen=True, slots=True)
class Access:
    """What one statement touches. `writes`: table → the kinds of write (INSERT, UPDATE,
    DELETE, MERGE, COPY, TRUNCATE, DDL); `columns`: table → the columns it reads ('*' for
    all); `written`: table → the columns it sets."""

    command: str
    reads: frozenset[Table]
    writes: dict[Table, frozenset[str]]
    columns: dict[Table, frozenset[str]]
    written: dict[Table, frozenset[str]]
    functions: frozenset[str]

    @property
    def tables(self) -> frozenset[Table]:
        return self.reads | self.writes.keys()


def analyse(sql: str) -> tuple[Access, ...] | None:
    """Every statement in `sql` (one query string may hold several), or None when
    PostgreSQL's parser refuses it."""
    try:
        tree = orjson.loads(pg.parse_sql_json(sql))
    except pg.ParseError:
        return None
    return tuple(_statement(raw.get("stmt") or {}) for raw in tree.get("stmts", ()))


def normalise(sql: str) -> str | None:
    """The statement with its constants as $1, $2 … (None: the parser refuses it)."""
    try:
        return str(pg.normalize(sql))
    except pg.ParseError:
        return None


class Parser:
    """`analyse` remembered by normalised text, and by the exact text before that (a
    prepared statement's text repeats exactly, so it is not even normalised again)."""

    EXACT_LIMIT = 200_000  # exact texts remembered before starting again (bounded memory)

    def __init__(self) -> None:
        self._exact: dict[str, str | None] = {}
        self._found: dict[str, tuple[Access, ...] | None] = {}

    def key(self, sql: str) -> str | None:
        """The normalised text of `sql`: what statements that differ only in constants share."""
        exact = self._exact
        if sql in exact:
            return exact[sql]
        if len(exact) >= self.EXACT_LIMIT:
            exact.clear()
        key = exact[sql] = normalise(sql)
        return key

    def accesses(self, key: str) -> tuple[Access, ...] | None:
        """What the statement(s) of a normalised text touch; None when unparseable."""
        found = self._found
        if key not in found:
            found[key] = analyse(key)
        return found[key]


_DDL = frozenset(
    {
        "CreateStmt",
        "AlterTableStmt",
        "IndexStmt",
        "CreateTableAsStmt",
        "ViewStmt",
        "DropStmt",
        "RenameStmt",
        "CreateTrigStmt",
        "RuleStmt",
    }
)
_COMMANDS = {
    "SelectStmt": "SELECT",
    "InsertStmt": "INSERT",
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "MergeStmt": "MERGE",
    "CopyStmt": "COPY",
    "TruncateStmt": "TRUNCATE",
    "TransactionStmt": "TRANSACTION",
    "VariableSetStmt": "SET",
    "ExplainStmt": "EXPLAIN",
}
_DROPPED = frozenset({"OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_FOREIGN_TABLE"})
_UNTOUCHED = frozenset({"GrantStmt", "CommentStmt", "VacuumStmt", "SecLabelStmt"})


def _statement(stmt: dict[str, Any]) -> Access:
    walk = _Walk()
    (kind, node), *_ = stmt.items() or [("", {})]
    command = _COMMANDS.get(kind) or ("DDL" if kind in _DDL else kind.removesuffix("Stmt").upper())
    walk.node(kind, node, _Scope(None))
    return Access(
        command,
        frozenset(walk.reads),
        {t: frozenset(ops) for t, ops in walk.writes.items()},
        {t: frozenset(cols) for t, cols in walk.columns.items()},
        {t: frozenset(cols) for t, cols in walk.written.items()},
        frozenset(walk.functions),
    )


@dataclass
class _Scope:
    """The names a part of a statement sees: its CTEs, and what each name in its FROM
    stands for (a table, or None for a subquery, a CTE or a function)."""

    parent: _Scope | None
    ctes: set[str] = field(default_factory=set)
    names: dict[str, Table | None] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    opaque: int = 0  # sources in FROM that are not tables

    def cte(self, name: str) -> bool:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.ctes:
                return True
            scope = scope.parent
        return False

    def lookup(self, name: str) -> tuple[bool, Table | None]:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.names:
                return True, scope.names[name]
            scope = scope.parent
        return False, None


def _nodes(value: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """The nodes of a list of wrapped nodes ({"RangeVar": {…}} …)."""
    for item in value or ():
        if isinstance(item, dict):
            yield from item.items()


def _strings(value: Any) -> list[str]:
    return [str(inner["sval"]) for kind, inner in _nodes(value) if kind == "String"]


class _Walk:
    def __init__(self) -> None:
        self.reads: set[Table] = set()
        self.writes: dict[Table, set[str]] = {}
        self.columns: dict[Table, set[str]] = {}
        self.written: dict[Table, set[str]] = {}
        self.functions: set[str] = set()

    # the generic walk: every field of every node, wrapped nodes dispatched by type
    def value(self, value: Any, scope: _Scope) -> None:
        if isinstance(value, dict):
            if len(value) == 1:
                (kind, inner), *_ = value.items()
                if kind[:1].isupper() and isinstance(inner, dict):
                    self.node(kind, inner, scope)
                    return
            for item in value.values():
                if isinstance(item, dict | list):
                    self.value(item, scope)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict | list):
                    self.value(item, scope)

    def fields(self, node: dict[str, Any], scope: _Scope, skip: Iterable[str] = ()) -> None:
        skipped = set(skip)
        for key, item in node.items():
            if key not in skipped and isinstance(item, dict | list):
                self.value(item, scope)

    def node(self, kind: str, node: dict[str, Any], scope: _Scope) -> None:
        handler = getattr(self, "_" + kind, None)
        if handler is not None:
            handler(node, scope)
        elif kind in _DDL:
            self._ddl(kind, node, scope)
        elif kind not in _UNTOUCHED:
            self.fields(node, scope)

    # tables
    def table(self, rangevar: dict[str, Any]) -> Table:
        return Table(rangevar.get("schemaname") or None, str(rangevar.get("relname", "")))

    def wrote(self, table: Table, op: str) -> None:
        self.writes.setdefault(table, set()).add(op)

    def source(self, kind: str, node: dict[str, Any], scope: _Scope) -> None:
        """One item of a FROM (or USING, or MERGE's source): named in `scope`."""
        if kind == "RangeVar":
            alias = (node.get("alias") or {}).get("aliasname")
            name = str(node.get("relname", ""))
            if not node.get("schemaname") and scope.cte(name):
                scope.names[alias or name] = None
                scope.opaque += 1
                return
            table = self.table(node)
            self.reads.add(table)
            scope.names[alias or name] = table
            scope.tables.append(table)
        elif kind == "JoinExpr":
            for side in ("larg", "rarg"):
                for inner_kind, inner in _nodes([node.get(side)]):
                    self.source(inner_kind, inner, scope)
            self.value(node.get("quals"), scope)
        elif kind == "RangeSubselect":
            self.value(node.get("subquery"), _Scope(scope))
            self._opaque(node, scope)
        elif kind == "RangeFunction":
            self.fields(node, scope, skip=("alias",))
            self._opaque(node, scope)
        else:  # RangeTableSample, XMLTABLE, …: its tables are read
            self.node(kind, node, scope)

    @staticmethod
    def _opaque(node: dict[str, Any], scope: _Scope) -> None:
        alias = (node.get("alias") or {}).get("aliasname")
        if alias:
            scope.names[alias] = None
        scope.opaque += 1

    def sources(self, items: Any, scope: _Scope) -> None:
        for kind, node in _nodes(items):
            self.source(kind, node, scope)

    def target(self, node: dict[str, Any], scope: _Scope, op: str) -> Table:
        """The table an INSERT, UPDATE, DELETE or MERGE writes."""
        rangevar = node.get("relation") or {}
        table = self.table(rangevar)
        self.wrote(table, op)
        alias = (rangevar.get("alias") or {}).get("aliasname")
        scope.names[alias or table.name] = table
        scope.tables.append(table)
        return table

    def with_clause(self, node: dict[str, Any], parent: _Scope) -> _Scope:
        scope = _Scope(parent)
        clause = node.get("withClause") or {}
        ctes = [inner for _, inner in _nodes(clause.get("ctes"))]
        scope.ctes = {str(cte.get("ctename", "")) for cte in ctes}
        for cte in ctes:
            self.value(cte.get("ctequery"), _Scope(scope))
        return scope

    def set_columns(self, table: Table, targets: Any, scope: _Scope) -> None:
        """ResTargets that name the columns of `table` being set (SET a = …, INSERT (a, b))."""
        for kind, target in _nodes(targets):
            if kind == "ResTarget":
                if target.get("name"):
                    self.written.setdefault(table, set()).add(str(target["name"]))
                self.value(target.get("val"), scope)
            else:
                self.node(kind, target, scope)

    # statements
    def _SelectStmt(self, node: dict[str, Any], parent: _Scope) -> None:
        scope = self.with_clause(node, parent)
        for side in ("larg", "rarg"):  # UNION / INTERSECT / EXCEPT: each a select of its own
            if node.get(side):
                self._SelectStmt(node[side], _Scope(scope))
        self.sources(node.get("fromClause"), scope)
        self.fields(node, scope, skip=("withClause", "fromClause", "larg", "rarg"))

    def _InsertStmt(self, node: dict[str, Any], parent: _Scope) -> None:
        scope = self.with_clause(node, parent)
        self.value(node.get("selectStmt"), _Scope(scope))  # it does not see the target
        table = self.target(node, scope, "INSERT")
        self.set_columns(table, node.get("cols"), scope)
        conflict = node.get("onConflictClause") or {}
        self.set_columns(table, conflict.get("targetList"), scope)
        self.fields(conflict, scope, skip=("targetList",))
        self.fields(node, scope, skip=("withClause", "selectStmt", "relation", "cols"))

    def _UpdateStmt(self, node: dict[str, Any], parent: _Scope) -> None:
        scope = self.with_clause(node, parent)
        table = self.target(node, scope, "UPDATE")
        self.sources(node.get("fromClause"), scope)
        self.set_columns(table, node.get("targetList"), scope)
        self.fields(node, scope, skip=("withClause", "relation", "fromClause", "targetList"))

    def _DeleteStmt(self, node: dict[str, Any], parent: _Scope) -> None:
        scope = self.with_clause(node, parent)
        self.target(node, scope, "DELETE")
        self.sources(node.get("usingClause"), scope)
        self.fields(node, scope, skip=("withClause", "relation", "usingClause"))

    def _MergeStmt(self, node: dict[str, Any], parent: _Scope) -> None:
        scope = self.with_clause(node, parent)
        table = self.target(node, scope, "MERGE")
        self.sources([node.get("sourceRelation")], scope)
        self.value(node.get("joinCondition"), scope)
        for _, when in _nodes(node.get("mergeWhenClauses")):
            command = str(when.get("commandType", ""))
            if command in ("CMD_UPDATE", "CMD_INSERT", "CMD_DELETE"):
                self.wrote(table, command.removeprefix("CMD_"))
            self.set_columns(table, when.get("targetList"), scope)
            self.fields(when, scope, skip=("targetList",))
        self.fields(node, scope, skip=("withClause", "relation", "sourceRelation", "joinCondition"))

    def _CopyStmt(self, node: dict[str, Any], scope: _Scope) -> None:
        if node.get("relation"):
            table = self.table(node["relation"])
            columns = set(_strings(node.get("attlist"))) or {"*"}
            if node.get("is_from"):
                self.wrote(table, "COPY")
                self.written.setdefault(table, set()).update(columns - {"*"})
            else:
                self.reads.add(table)
                self.columns.setdefault(table, set()).update(columns)
        self.value(node.get("query"), _Scope(scope))

    def _TruncateStmt(self, node: dict[str, Any], _scope: _Scope) -> None:
        for _, rangevar in _nodes(node.get("relations")):
            self.wrote(self.table(rangevar), "TRUNCATE")

    def _ExplainStmt(self, node: dict[str, Any], scope: _Scope) -> None:
        options = [str(inner.get("defname")) for _, inner in _nodes(node.get("options"))]
        if "analyze" in options:  # only EXPLAIN ANALYZE runs the statement
            self.value(node.get("query"), scope)

    def _ddl(self, kind: str, node: dict[str, Any], scope: _Scope) -> None:
        """A change of a table's shape (or its creation, or its end) is a write of it."""
        if kind == "DropStmt":
            if node.get("removeType") in _DROPPED:
                for _, names in _nodes(node.get("objects")):
                    parts = _strings(names.get("items"))
                    if parts:
                        schema = parts[-2] if len(parts) > 1 else None
                        self.wrote(Table(schema, parts[-1]), "DDL")
            return
        relation = node.get("relation") or node.get("view") or (node.get("into") or {}).get("rel")
        if relation:
            self.wrote(self.table(relation), "DDL")
        self.value(node.get("query"), _Scope(scope))

    # inside expressions
    def _RangeVar(self, node: dict[str, Any], scope: _Scope) -> None:
        if not (not node.get("schemaname") and scope.cte(str(node.get("relname", "")))):
            self.reads.add(self.table(node))  # LOCK TABLE, a table in an odd place: a read

    def _FuncCall(self, node: dict[str, Any], scope: _Scope) -> None:
        self.functions.add(".".join(_strings(node.get("funcname"))))
        self.fields(node, scope, skip=("funcname",))

    def _ColumnRef(self, node: dict[str, Any], scope: _Scope) -> None:
        parts = node.get("fields") or []
        names = _strings(parts)
        star = any("A_Star" in part for part in parts if isinstance(part, dict))
        column = "*" if star else (names[-1] if names else "")
        qualifier = names[-1] if star and names else (names[-2] if len(names) >= 2 else None)
        if qualifier is not None:
            known, table = scope.lookup(qualifier)
            if known and table is not None:
                self.columns.setdefault(table, set()).add(column)
            return
        if len(scope.tables) == 1 and not scope.opaque:
            self.columns.setdefault(scope.tables[0], set()).add(column)
