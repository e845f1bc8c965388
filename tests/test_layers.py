"""The shape of the code, checked: a lower layer never imports a higher one, nothing imports
the faces, and charter's modules import each other in no cycle. Read from the source with
`ast`, so an import inside a function counts as much as one at the top of a module.

LAYERS is the one place the layer map is written down (docs/ARCHITECTURE.md mirrors it); a
new module goes into a layer here, or this test fails."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

WIRE = "model and wire"
BACKENDS = "backends"  # what stores and buses share
STORES = "stores"
BUSES = "buses"
PIPELINE = "owner, pipeline"
SYSTEM = "system"
OPERATIONS = "status, operations"
API = "api"  # the package's own namespace: charter/__init__.py
SIM = "sim"
TESTING = "testing"
# asgi: what a web service of the user's puts on; dashboard: `charter serve`
FACES = ("cli", "demo", "web", "asgi", "dashboard")

# layer: its modules, bottom up (a name stands for the module or package and everything in it)
LAYERS: dict[str, tuple[str, ...]] = {
    WIRE: (
        "charter.errors",
        "charter.clock",
        "charter.ids",
        "charter.lanes",
        "charter.values",
        "charter.digests",
        "charter.events",
        "charter.model",
        "charter.urls",
        "charter.records",
        "charter.roles",
        "charter.diff",  # two charters compared: what a change breaks
        "charter.visibility",
        "charter.latency",
        "charter.tokens",
    ),
    BACKENDS: ("charter.boundary", "charter._sqlite"),
    STORES: ("charter.stores",),
    BUSES: ("charter.buses", "charter.natsauth"),  # natsauth: NATS subjects and permissions
    PIPELINE: (
        "charter.owner",
        "charter.relay",
        "charter.projector",
        "charter.fills",
        "charter.signals",
        "charter.reports",
        "charter.tracing",
        "charter.lag",
        "charter.commands",  # commands to owners: the sender's request, the owner's worker
    ),
    SYSTEM: ("charter.system",),
    # the runner runs a whole System (and waits on its status), so it sits here, not below it
    OPERATIONS: (
        "charter.status",
        "charter.runner",
        "charter.parking",
        "charter.tables",
        "charter.grants",
        "charter.exports",  # the contract where tools read it: AsyncAPI, JSON Schema, ODCS
        "charter.codegen",  # each context's own nouns as typed models
        "charter.reconcile",
        "charter.diffing",  # charter diff's sides (a file or git:REF) and formats
        "charter.audit",  # what the database really saw, against the charter
        "charter.topology",  # the map: the charter drawn, with live states and findings
        "charter.metrics",
        "charter.alerts",
        "charter.sagas",  # sagas: steps as commands to owners, each with its compensation
        "charter.transfer",  # charter transfer: ownership moved with an epoch fence (G10)
    ),
    API: ("charter",),
    SIM: ("charter.sim",),
    TESTING: ("charter.testing",),
    **{face: (f"charter.{face}",) for face in FACES},
}

_UP_TO_SYSTEM = {WIRE, BACKENDS, STORES, BUSES, PIPELINE, SYSTEM}
# layer: the other layers its modules may import. Stores and buses are siblings: neither
# imports the other. `sim` builds on the pipeline and the memory backends (and checks
# status); `testing` on the store and bus protocols (driven by owner transactions). A face
# may import anything but another face, except that the cli starts the others (`charter
# demo`): nothing else imports a face.
USES: dict[str, set[str]] = {
    WIRE: set(),
    BACKENDS: {WIRE},
    STORES: {WIRE, BACKENDS},
    BUSES: {WIRE, BACKENDS},
    PIPELINE: {WIRE, BACKENDS, STORES, BUSES},
    SYSTEM: {WIRE, BACKENDS, STORES, BUSES, PIPELINE},
    OPERATIONS: _UP_TO_SYSTEM,
    API: _UP_TO_SYSTEM | {OPERATIONS},
    SIM: _UP_TO_SYSTEM | {OPERATIONS},
    TESTING: {WIRE, BACKENDS, STORES, BUSES, PIPELINE},
    **{face: set(LAYERS) - set(FACES) for face in FACES},
    "cli": set(LAYERS) - {"cli"},
}


@dataclass(frozen=True, slots=True)
class Import:
    source: str  # the importing module
    target: str  # the charter module imported
    line: int
    typing_only: bool  # under `if TYPE_CHECKING:`

    def __str__(self) -> str:
        kind = " (for type checking)" if self.typing_only else ""
        return f"{self.source} imports {self.target}{kind} at line {self.line}"


def modules() -> dict[str, Path]:
    """Every module of the charter package, by dotted name."""
    found = {}
    for path in sorted((SRC / "charter").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _typing_block(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(name: str, path: Path, known: dict[str, Path]) -> list[Import]:
    """The charter modules `name` imports, anywhere in it (`from charter import clock` is an
    import of charter.clock; `from charter.stores import open_store` one of charter.stores)."""
    found: list[Import] = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST, typing_only: bool) -> None:
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        for target in targets:
            while target and target not in known:  # import charter.x.y: the module charter.x.y
                target = target.rpartition(".")[0]
            imp = Import(name, target, getattr(node, "lineno", 0), typing_only)
            if target and target != name and imp not in found:
                found.append(imp)
        if isinstance(node, ast.If) and _typing_block(node):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, typing_only)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, typing_only)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def layer_of(module: str) -> str | None:
    """The layer of the longest name in LAYERS that is the module or a package holding it."""
    held = [
        (len(prefix), layer)
        for layer, names in LAYERS.items()
        for prefix in names
        if module == prefix or module.startswith(prefix + ".")
    ]
    return max(held)[1] if held else None


def all_imports() -> list[Import]:
    known = modules()
    return [i for name, path in known.items() for i in imports(name, path, known)]


def test_every_module_has_a_layer() -> None:
    unplaced = [name for name in modules() if layer_of(name) is None]
    assert not unplaced, f"put these in a layer in tests/test_layers.py (LAYERS): {unplaced}"


def test_no_layer_imports_a_higher_one() -> None:
    wrong = []
    for imp in all_imports():
        mine, theirs = layer_of(imp.source), layer_of(imp.target)
        if mine is None or theirs is None or mine == theirs:
            continue
        if theirs not in USES[mine]:
            wrong.append(f"{imp}: layer '{mine}' may not import layer '{theirs}'")
    assert not wrong, "\n".join(wrong)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected group of more than one module (Tarjan), as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(edges.get(node, ())):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return groups


def test_no_import_cycles() -> None:
    """Type-checking-only imports aside (they run at no import), no module imports itself
    through others."""
    edges: dict[str, set[str]] = {}
    for imp in all_imports():
        if not imp.typing_only:
            edges.setdefault(imp.source, set()).add(imp.target)
    found = _cycles(edges)
    where = [
        " ".join(str(i) for i in all_imports() if i.source in group and i.target in group)
        for group in found
    ]
    assert not found, "import cycles:\n" + "\n".join(where)


def test_no_two_modules_import_each_other_even_for_types() -> None:
    """Two modules that know each other are one idea in two files (or a third module is
    missing): say what one needs of the other as a Protocol beside it."""
    pairs = {(i.source, i.target): i for i in all_imports()}
    both = sorted(
        f"{pairs[a, b]} and {pairs[b, a]}" for (a, b) in pairs if (b, a) in pairs and a < b
    )
    assert not both, "\n".join(both)


def test_the_checker_sees_function_level_and_typing_imports(tmp_path: Path) -> None:
    """The parser itself: an import inside a function counts, one under TYPE_CHECKING is
    marked, `from package import module` names the module."""
    package = tmp_path / "charter"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "mod.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from charter import low\n"
        "if TYPE_CHECKING:\n    from charter.sub import other\n"
        "def f():\n    from . import other\n    import charter.low\n"
    )
    (package / "sub" / "other.py").write_text("")
    known = {
        "charter": package / "__init__.py",
        "charter.low": package / "low.py",
        "charter.sub": package / "sub" / "__init__.py",
        "charter.sub.mod": package / "sub" / "mod.py",
        "charter.sub.other": package / "sub" / "other.py",
    }
    found = [
        (i.target, i.line, i.typing_only)
        for i in imports("charter.sub.mod", known["charter.sub.mod"], known)
    ]
    assert found == [
        ("charter.low", 2, False),
        ("charter.sub.other", 4, True),
        ("charter.sub.other", 6, False),
        ("charter.low", 7, False),
    ]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
