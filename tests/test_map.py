"""`charter map`: the charter drawn with each copy's live state, and audit findings in red;
dot, Mermaid and JSON with nothing installed, SVG and PNG through Graphviz's dot."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from charter import model, topology
from charter.audit.actors import Actors
from charter.audit.findings import findings
from charter.audit.sources import Seen, Who
from charter.audit.traffic import Traffic
from charter.cli import main
from charter.runner import Runner
from charter.status import BREACH, DEGRADED, DRIFT, GAP, NEVER_SYNCED, OK, UNKNOWN, CopyStatus
from charter.system import System
from tests.conftest import SHOP
from tests.nats_servers import free_ports


@pytest.fixture
def shop_path(tmp_path: Path) -> Path:
    path = tmp_path / "charter.yaml"
    stores = {c: f"sqlite:///{tmp_path}/{c}.db" for c in ("customers", "orders", "shipping")}
    stores["calendar"] = f"sqlite:///{tmp_path}/calendar.db"
    path.write_text(SHOP.format(name="shop", bus=f"sqlite:///{tmp_path}/bus.db", **stores))
    return path


def draw(*args: str, code: int = 0, env: dict[str, str] | None = None) -> str:
    result = CliRunner(env=env).invoke(main, ["map", *args])
    assert result.exit_code == code, result.output
    return result.output


def status_row(copy: str, state: str) -> CopyStatus:
    return CopyStatus(copy, "Customer", "customers", "orders", 5.0, 0, 0.5, None, 0, state)


def test_contexts_entities_and_copies_with_their_live_state(shop_path: Path) -> None:
    with System.load(shop_path) as shop:
        with shop.context("customers").transaction() as tx:
            tx.create("Customer", email="a@example.com", name="A", password_hash="x")
        with Runner(shop) as runner:
            runner.wait_until_synced()
    graph = json.loads(draw("-f", str(shop_path), "--format", "json"))
    assert [c["name"] for c in graph["contexts"]] == ["customers", "orders", "shipping", "calendar"]
    assert {"name": "orders", "team": "order-team"} in graph["contexts"]
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert nodes["entity_Customer"]["context"] == "customers"
    assert nodes["copy_order_customers"]["context"] == "orders"
    edges = {(e["source"], e["target"]): e for e in graph["edges"]}
    copy = edges[("entity_Customer", "copy_order_customers")]
    assert copy["state"] == OK and copy["colour"] == topology.COLOURS[OK]
    assert copy["label"].splitlines()[:2] == ["name, email", "window 5s"]
    mermaid = draw("-f", str(shop_path))
    assert mermaid.startswith("flowchart LR")
    assert "subgraph cluster_orders" in mermaid and "window 5s" in mermaid
    assert f"stroke:{topology.COLOURS[OK]}" in mermaid
    dot = draw("-f", str(shop_path), "--format", "dot")
    assert dot.startswith('digraph "shop"') and "cluster_context_customers" in dot


def test_every_state_has_its_colour_and_drift_shows_when_status_has_it(shop_path: Path) -> None:
    charter = model.load(shop_path)
    for state in (OK, BREACH, DEGRADED, NEVER_SYNCED, GAP, UNKNOWN):
        [edge, _] = topology.graph(charter, [status_row("order_customers", state)]).edges
        assert (edge.state, edge.colour) == (state, topology.COLOURS[state])
        assert state in edge.label
    drifting = dataclasses.replace(status_row("order_customers", DRIFT), drift=3)
    [edge, _] = topology.graph(charter, [drifting]).edges
    assert edge.state == DRIFT and "drift 3" in edge.label
    still = dataclasses.replace(status_row("order_customers", OK), drift=0)
    [edge, _] = topology.graph(charter, [still]).edges
    assert edge.state == OK and "drift" not in edge.label
    [edge, _] = topology.graph(charter, []).edges  # not asked: no state
    assert edge.state == "" and edge.colour == topology.COLOURS[""]


def audit_json() -> dict[str, object]:
    """What `charter audit --json` says of a little traffic against the shop on PostgreSQL
    (each context in its own schema): the orders service updating customers, a superuser
    writing a copy, shipping reading orders and a table nobody owns, one unparseable."""
    stores = {c: f"postgresql://h/shop?schema={c}" for c in ("customers", "orders", "shipping")}
    charter = model.loads(
        SHOP.format(name="shop", bus="sqlite:///bus.db", calendar="sqlite:///c.db", **stores)
    )

    def seen(user: str, app: str, sql: str) -> Seen:
        return Seen("2025-01-01 00:00:00.000 UTC", Who(user, "shop", app), "s", sql, "log")

    traffic = Traffic.collect(
        [
            seen("app", "orders", "UPDATE customers.customer SET name = 'x' WHERE id = 1"),
            seen("postgres", "psql", "UPDATE orders.order_customers SET name = 'y'"),
            seen("app", "shipping", 'SELECT o.total FROM orders."order" o WHERE o.id = 2'),
            seen("app", "shipping", "SELECT * FROM legacy_notes"),
            seen("app", "shipping", "SELEC nonsense"),
        ]
    )
    return findings(traffic, charter, Actors(charter)).as_json()


def test_audit_findings_are_drawn_in_red(shop_path: Path, tmp_path: Path) -> None:
    report = audit_json()
    (tmp_path / "audit.json").write_text(json.dumps(report))
    args = ["-f", str(shop_path), "--no-status", "--findings", str(tmp_path / "audit.json")]
    graph = json.loads(draw(*args, "--format", "json"))
    red = topology.COLOURS[topology.FINDING]
    undeclared = {
        (e["source"], e["target"], e["kind"]) for e in graph["edges"] if not e["declared"]
    }
    assert undeclared == {
        ("context_orders", "entity_Customer", "write"),
        ("outsider_role_postgres", "copy_order_customers", "write"),
        ("entity_Order", "context_shipping", "read"),
        ("context_shipping", "table_public_legacy_notes", "use"),
    }
    assert all(e["colour"] == red for e in graph["edges"] if not e["declared"])
    assert all(e["colour"] != red for e in graph["edges"] if e["declared"])
    assert graph["notes"] == ["shipping: 1 statements could not be parsed"]
    read = next(e for e in graph["edges"] if e["kind"] == "read")
    assert "reads directly (1)" in read["label"] and "total" in read["label"]
    mermaid = draw(*args)
    assert f"style outsider_role_postgres stroke:{red}" in mermaid
    assert "-.->" in mermaid  # undeclared: dotted
    stdin = CliRunner().invoke(
        main,
        ["map", "-f", str(shop_path), "--no-status", "--findings", "-", "--format", "dot"],
        input=json.dumps(report),
    )
    assert stdin.exit_code == 0 and "style=dashed" in stdin.output


def test_svg_and_png_through_graphviz(shop_path: Path, tmp_path: Path) -> None:
    if not any((Path(p) / "dot").exists() for p in os.environ["PATH"].split(os.pathsep)):
        pytest.skip("Graphviz's dot is not installed (apt-get install graphviz)")
    svg = draw("-f", str(shop_path), "--no-status", "--format", "svg")
    assert "<svg" in svg and "order_customers" in svg
    png = tmp_path / "map.png"
    assert "wrote" in draw("-f", str(shop_path), "--no-status", "-o", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_graphviz_svg_says_what_to_install_and_the_rest_still_work(
    shop_path: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {"PATH": str(empty)}
    out = draw("-f", str(shop_path), "--no-status", "--format", "svg", code=1, env=env)
    assert "apt-get install graphviz" in out and "Traceback" not in out
    assert draw("-f", str(shop_path), "--no-status", "--format", "mermaid", env=env)
    assert json.loads(draw("-f", str(shop_path), "--no-status", "--format", "json", env=env))


def test_bad_arguments_are_clear(shop_path: Path, tmp_path: Path) -> None:
    assert "needs -o" in draw("-f", str(shop_path), "--format", "png", code=2)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    out = draw("-f", str(shop_path), "--findings", str(bad), code=2)
    assert "charter audit --json" in out


def test_a_stopped_postgresql_draws_its_copies_unknown(tmp_path: Path) -> None:
    [port] = free_ports(1)
    url = f"postgresql://postgres:secret@127.0.0.1:{port}/test"
    stores = {c: f"{url}?schema={c}" for c in ("customers", "orders", "shipping")}
    path = tmp_path / "charter.yaml"
    bus = f"sqlite:///{tmp_path}/bus.db"
    path.write_text(
        SHOP.format(name="shop", bus=bus, calendar=f"sqlite:///{tmp_path}/c.db", **stores)
    )
    graph = json.loads(draw("-f", str(path), "--format", "json"))
    states = {e["state"] for e in graph["edges"] if e["kind"] == "copy"}
    assert states == {UNKNOWN}
    assert "secret" not in json.dumps(graph)
