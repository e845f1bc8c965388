"""`charter` starts fast: the command module and the package import only what a command
needs, when it runs (a charter diff of 500 copies must answer in under a second, and 0.4 s of
that went to importing the runner and every store). Imports are counted, never timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import charter
from charter import cli, diffing, exports
from charter.reconcile.report import MAX_DIFFS

# Modules no `charter --help` or `charter diff` needs: the runtime, stores, buses, drivers.
HEAVY = (
    "charter.owner",
    "charter.runner",
    "charter.system",
    "charter.status",
    "charter.stores",
    "charter.buses",
    "charter.projector",
    "charter.relay",
    "charter.reconcile",
    "sqlite3",
    "psycopg",
    "nats",
    "rich.console",
)

DIFF_CHARTER = """\
charter: 1
name: clinic
bus: sqlite:///.charter/bus.db
contexts:
  patients: {team: front-desk, store: "sqlite:///.charter/patients.db"}
  billing: {team: money, store: "sqlite:///.charter/billing.db"}
entities:
  Patient:
    owner: patients
    fields:
      name: {type: string}
      phone: {type: string}
copies:
  billing_patients: {in: billing, of: Patient, fields: [name], window: 5s, breaks: bills}
"""


def loaded_after(code: str, cwd: Path | None = None) -> set[str]:
    """The modules a fresh interpreter holds after running `code`."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=cwd
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith(HEAVY))


def test_the_options_offer_what_their_modules_do() -> None:
    assert cli.DIFF_FORMATS == diffing.FORMATS
    assert cli.EXPORT_KINDS == exports.KINDS
    assert cli.EXPORT_FORMATS == exports.FORMATS
    assert cli.MAX_DIFFS == MAX_DIFFS


def test_importing_the_package_or_the_command_imports_no_runtime() -> None:
    modules = loaded_after("import charter, charter.cli")
    assert heavy(modules) == []


def test_help_imports_no_runtime() -> None:
    code = "from charter.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    assert heavy(loaded_after(code)) == []


def test_diff_imports_no_runtime(tmp_path: Path) -> None:
    (tmp_path / "old.yaml").write_text(DIFF_CHARTER)
    (tmp_path / "new.yaml").write_text(
        DIFF_CHARTER.replace("phone: {type: string}", "phone: {type: integer}")
    )
    code = (
        "from charter.cli import main\ntry:\n"
        "    main(['diff', 'old.yaml', 'new.yaml', '--format', 'json'])\n"
        "except SystemExit as exc:\n    assert exc.code == 0, exc.code"
    )
    assert heavy(loaded_after(code, cwd=tmp_path)) == []


def test_the_public_names_load_on_first_use_and_status_stays_the_function() -> None:
    code = "import charter.status, charter\nassert callable(charter.status), charter.status"
    loaded_after(code)  # raises CalledProcessError if charter.status is the module
    assert charter.load.__module__ == "charter.system"
    assert "Runner" in dir(charter)


def test_a_submodule_is_an_attribute_of_the_package_as_before() -> None:
    loaded_after("import charter\nassert callable(charter.model.load)")


def test_each_command_imports_what_it_uses_beyond_the_type_checker() -> None:
    """A name cli.py imports only for type checkers (under TYPE_CHECKING) is absent when a
    command runs: each function using it at run time must import it itself (a merge once
    left `charter transfer` using `model` without importing it)."""
    import ast

    tree = ast.parse(Path(cli.__file__).read_text())

    def bound(nodes: list[ast.stmt] | ast.AST) -> set[str]:
        found = nodes if isinstance(nodes, list) else [nodes]
        return {
            (alias.asname or alias.name).split(".")[0]
            for node in found
            for inner in ast.walk(node)
            if isinstance(inner, ast.Import | ast.ImportFrom)
            for alias in inner.names
        }

    for_types = set().union(
        *(
            bound(n)
            for n in tree.body
            if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"
        )
    )
    at_runtime = bound([n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)])
    only_for_types = for_types - at_runtime
    missing = {}
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef):
            continue
        annotations = {
            id(inner)
            for node in ast.walk(function)
            for part in ("annotation", "returns")
            if (note := getattr(node, part, None)) is not None
            for inner in ast.walk(note)
        }
        used = {
            node.id
            for node in ast.walk(function)
            if isinstance(node, ast.Name)
            and isinstance(node.ctx, ast.Load)
            and id(node) not in annotations
        }
        lacking = (used & only_for_types) - bound(function)
        if lacking:
            missing[function.name] = sorted(lacking)
    assert only_for_types and not missing
