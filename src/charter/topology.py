"""The map: the system as declared, drawn beside the system as it is. Each context with its
team; each entity at its owner; each copy an arrow from the entity to the context keeping
it, labelled with its fields and window and coloured by its live state (`charter status`:
OK, BREACH, DEGRADED, NEVER_SYNCED, GAP, UNKNOWN, and drift where status reports it); and,
given `charter audit --json`'s findings, the undeclared writers and readers in red.

One graph model (`graph`), then renderers: Graphviz dot, Mermaid and JSON need nothing;
SVG and PNG are dot's (`render`), and say so when it is not installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from charter.errors import Error
from charter.model import Charter
from charter.status import BREACH, DEGRADED, DRIFT, GAP, NEVER_SYNCED, OK, UNKNOWN, CopyStatus
from charter.tables import seconds

FINDING = "FINDING"
COLOURS = {
    OK: "#2e7d32",
    BREACH: "#c62828",
    DEGRADED: "#ef6c00",
    NEVER_SYNCED: "#757575",
    GAP: "#6a1b9a",
    UNKNOWN: "#9e9e9e",
    DRIFT: "#f9a825",
    FINDING: "#d50000",
    "": "#455a64",  # a copy whose state was not asked
}
FORMATS = ("svg", "png", "mermaid", "dot", "json")
SUFFIXES = {".svg": "svg", ".png": "png", ".mmd": "mermaid", ".mermaid": "mermaid"}
SUFFIXES |= {".dot": "dot", ".gv": "dot", ".json": "json"}


@dataclass(frozen=True)
class Node:
    id: str
    label: str
    kind: str  # context (the service itself), entity, copy, outsider (a role of no context), table
    context: str | None = None  # the context whose box it is in
    colour: str = COLOURS[""]


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    label: str
    kind: str  # copy, write, read, use (a table no context owns)
    state: str = ""  # a copy's live state; FINDING for what the audit found
    colour: str = COLOURS[""]
    declared: bool = True


@dataclass
class Graph:
    name: str
    contexts: list[dict[str, str]] = field(default_factory=list)  # name, team
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def node(self, node: Node) -> str:
        if all(n.id != node.id for n in self.nodes):
            self.nodes.append(node)
        return node.id

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "contexts": self.contexts,
            "nodes": [asdict(n) for n in self.nodes],
            "edges": [asdict(e) for e in self.edges],
            "notes": self.notes,
        }


def _id(kind: str, name: str) -> str:
    return f"{kind}_" + re.sub(r"[^A-Za-z0-9_]", "_", name)


def drift(status: CopyStatus) -> str:
    """What status says of a copy's drift at its last reconciliation: '' for none."""
    return f"drift {status.drift}" if status.drift else ""


def graph(
    charter: Charter,
    statuses: Iterable[CopyStatus] = (),
    findings: Iterable[Mapping[str, Any]] = (),
) -> Graph:
    """The map of `charter`; its copies coloured by `statuses`, `findings` (the `findings`
    of `charter audit --json`) drawn in red."""
    g = Graph(charter.name)
    for ctx in charter.contexts.values():
        g.contexts.append({"name": ctx.name, "team": ctx.team})
        g.node(Node(_id("context", ctx.name), ctx.name, "context", ctx.name))
    for entity in charter.entities.values():
        label = f"{entity.name}\n{len(entity.fields)} fields"
        if entity.moves:  # ownership moved (charter transfer): who owns which, each epoch
            label += "\n" + entity.ownership().replace("; ", "\n")
        g.node(Node(_id("entity", entity.name), label, "entity", entity.owner))
    by_copy = {s.copy: s for s in statuses}
    for copy in charter.copies.values():
        g.node(Node(_id("copy", copy.name), copy.name, "copy", copy.context))
        row = by_copy.get(copy.name)
        state, words = "", [", ".join(copy.fields), f"window {seconds(copy.window_s)}"]
        if row is not None:
            state = row.state
            lag = f" lag {row.lag_s:g}s" if row.state not in (UNKNOWN, NEVER_SYNCED) else ""
            words.append(f"{state}{lag}")
            drifting = drift(row)
            if drifting:
                words.append(drifting)
                state = DRIFT if state == OK else state
        g.edges.append(
            Edge(
                _id("entity", copy.of),
                _id("copy", copy.name),
                "\n".join(words),
                "copy",
                state,
                COLOURS.get(state, COLOURS[""]),
            )
        )
    _found(g, charter, findings)
    return g


def _found(g: Graph, charter: Charter, findings: Iterable[Mapping[str, Any]]) -> None:
    red = COLOURS[FINDING]
    for f in findings:
        kind, who, count = f.get("kind"), str(f.get("who") or ""), f.get("statements", 0)
        if kind == "unknown_statements":
            g.notes.append(f"{who}: {count} statements could not be parsed")
            continue
        if kind == "unowned_table":
            table = g.node(
                Node(
                    _id("table", f["tables"][0]),
                    f"{f['tables'][0]}\n(no owner)",
                    "table",
                    None,
                    red,
                )
            )
            for user in f.get("contexts", []):
                g.edges.append(
                    Edge(
                        _actor(g, charter, user),
                        table,
                        f"uses ({count})",
                        "use",
                        FINDING,
                        red,
                        False,
                    )
                )
            continue
        if kind not in ("non_owner_write", "cross_context_read", "would_be_refused"):
            continue  # shared tables and joins are drawn by their writes and reads
        target = _held(g, charter, f)
        actor = _actor(g, charter, who)
        ops = ", ".join(f.get("ops", []))
        if kind == "cross_context_read" or (kind == "would_be_refused" and ops == "READ"):
            columns = ", ".join(f.get("columns", []))
            what = "would be refused: reads" if kind == "would_be_refused" else "reads directly"
            label = f"{what} ({count})" + (f"\n{columns}" if columns else "")
            g.edges.append(Edge(target, actor, label, "read", FINDING, red, False))
        else:
            what = "would be refused: " if kind == "would_be_refused" else "writes "
            g.edges.append(
                Edge(actor, target, f"{what}{ops} ({count})", "write", FINDING, red, False)
            )


def _held(g: Graph, charter: Charter, finding: Mapping[str, Any]) -> str:
    """The node of the table a finding is about: its entity, its copy, or (charter's own
    bookkeeping, or a table the charter does not know) a node of its own."""
    holds, owner = str(finding.get("holds") or ""), str(finding.get("owner") or "")
    if holds in charter.entities:
        return _id("entity", holds)
    if holds in charter.copies:
        return _id("copy", holds)
    table = str((finding.get("tables") or ["?"])[0])
    return g.node(Node(_id("table", table), table, "table", owner or None))


def _actor(g: Graph, charter: Charter, who: str) -> str:
    if who in charter.contexts:
        return _id("context", who)
    return g.node(
        Node(_id("outsider", who), f"{who}\n(no context)", "outsider", None, COLOURS[FINDING])
    )


# renderers


def _dot_text(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_DOT_SHAPES = {
    "context": "box",
    "entity": "ellipse",
    "copy": "note",
    "outsider": "box",
    "table": "cylinder",
}


def to_dot(g: Graph) -> str:
    lines = [
        f"digraph {_dot_text(g.name)} {{",
        "  rankdir=LR; compound=true; fontname=Helvetica;",
        "  node [fontname=Helvetica, fontsize=11]; edge [fontname=Helvetica, fontsize=9];",
    ]
    if g.notes:
        lines.append(f"  label={_dot_text(chr(10).join(g.notes))}; labelloc=b;")

    def node_line(n: Node) -> str:
        style = "rounded,filled" if n.kind == "context" else "filled"
        fill = "#eceff1" if n.kind == "context" else "white"
        if n.kind in ("outsider", "table") and n.colour == COLOURS[FINDING]:
            fill = "#ffebee"
        return (
            f"    {n.id} [label={_dot_text(n.label)}, shape={_DOT_SHAPES[n.kind]}, "
            f'style="{style}", fillcolor="{fill}", color="{n.colour}"];'
        )

    for ctx in g.contexts:
        lines.append(f"  subgraph cluster_{_id('context', ctx['name'])} {{")
        lines.append(
            f"    label={_dot_text(ctx['name'] + ' · team ' + ctx['team'])}; labelloc=t; "
            "style=rounded;"
        )
        lines += [node_line(n) for n in g.nodes if n.context == ctx["name"]]
        lines.append("  }")
    lines += [node_line(n).replace("    ", "  ", 1) for n in g.nodes if n.context is None]
    for e in g.edges:
        style = "solid" if e.declared else "dashed"
        width = "2" if e.kind == "copy" else "1.5"
        lines.append(
            f'  {e.source} -> {e.target} [label={_dot_text(e.label)}, color="{e.colour}", '
            f'fontcolor="{e.colour}", style={style}, penwidth={width}];'
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_text(text: str) -> str:
    return '"' + text.replace('"', "#quot;").replace("\n", "<br/>") + '"'


_MERMAID_SHAPES = {
    "context": ("[", "]"),
    "entity": ("([", "])"),
    "copy": ("[/", "/]"),
    "outsider": ("{{", "}}"),
    "table": ("[(", ")]"),
}


def to_mermaid(g: Graph) -> str:
    lines = ["flowchart LR"]

    def node_line(n: Node, indent: str) -> str:
        left, right = _MERMAID_SHAPES[n.kind]
        return f"{indent}{n.id}{left}{_mermaid_text(n.label)}{right}"

    for ctx in g.contexts:
        title = _mermaid_text(f"{ctx['name']} · team {ctx['team']}")
        lines.append(f"  subgraph {_id('cluster', ctx['name'])}[{title}]")
        lines += [node_line(n, "    ") for n in g.nodes if n.context == ctx["name"]]
        lines.append("  end")
    lines += [node_line(n, "  ") for n in g.nodes if n.context is None]
    for e in g.edges:
        arrow = "==>" if e.kind == "copy" else "-.->"
        lines.append(f"  {e.source} {arrow}|{_mermaid_text(e.label)}| {e.target}")
    for n, e in enumerate(g.edges):
        lines.append(f"  linkStyle {n} stroke:{e.colour},color:{e.colour}")
    for node in g.nodes:
        if node.colour == COLOURS[FINDING]:
            lines.append(f"  style {node.id} stroke:{node.colour},fill:#ffebee")
    for note in g.notes:
        lines.append(f"  %% {note}")
    return "\n".join(lines) + "\n"


def to_json(g: Graph) -> str:
    return json.dumps(g.as_json(), indent=2) + "\n"


def render(g: Graph, fmt: str) -> bytes:
    """The map in `fmt` (FORMATS); SVG and PNG by Graphviz's dot."""
    if fmt == "dot":
        return to_dot(g).encode()
    if fmt == "mermaid":
        return to_mermaid(g).encode()
    if fmt == "json":
        return to_json(g).encode()
    if fmt not in ("svg", "png"):
        raise Error(f"no map format {fmt!r}; formats: {', '.join(FORMATS)}")
    dot = shutil.which("dot")
    if dot is None:
        raise Error(
            f"--format {fmt} needs Graphviz's `dot`, which is not installed here "
            "(Debian: apt-get install graphviz); --format mermaid, dot and json need nothing"
        )
    done = subprocess.run(
        [dot, f"-T{fmt}"], input=to_dot(g).encode(), capture_output=True, timeout=60
    )
    if done.returncode != 0:
        raise Error(f"Graphviz's dot failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def format_of(fmt: str | None, output: str | None) -> str:
    """--format, else what -o's suffix says, else mermaid."""
    if fmt:
        return fmt
    for suffix, name in SUFFIXES.items():
        if output and output.lower().endswith(suffix):
            return name
    return "mermaid"
