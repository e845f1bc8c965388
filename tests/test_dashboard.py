"""`charter serve`: the live dashboard. Every endpoint through Starlette's TestClient on a
real SQLite system (actions refused without the token, with a wrong one, and when started
read-only), then the whole thing in a real browser: `charter serve` and `charter run` as
processes, Debian's chromium driven by Playwright, a copy's state seen changing live and a
parked event retried from the page."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

import charter
from charter.cli import main
from charter.dashboard import create_app
from charter.dashboard.findings import Findings
from charter.records import Drift
from charter.status import BREACH, DEGRADED, DRIFT, OK
from charter.system import System
from charter.topology import COLOURS, FINDING
from tests.conftest import ROOT, SHOP, charter_command, edit
from tests.nats_servers import free_ports

TOKEN = "s3cret-token-for-tests"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
VIP = ("deleted]", "deleted, vip]")  # the owner's enum gains a value the copy does not know
WITH_STATUS = ("fields: [name, email]", "fields: [name, email, status]")
ARTEFACTS = ROOT / ".artefacts" / "dashboard"  # the browser test's screenshots


def shop_text(tmp_path: Path, name: str) -> str:
    stores = {c: f"sqlite:///{tmp_path}/{c}.db" for c in ("customers", "orders", "shipping")}
    stores["calendar"] = f"sqlite:///{tmp_path}/calendar.db"
    return SHOP.format(name=name, bus=f"sqlite:///{tmp_path}/bus.db", **stores)


@pytest.fixture
def shop_path(tmp_path: Path) -> Path:
    path = tmp_path / "charter.yaml"
    path.write_text(shop_text(tmp_path, "shop"))
    return path


def customer(system: System, name: str, **values: Any) -> str:
    with system.context("customers").transaction() as tx:
        made = tx.create("Customer", email=f"{name}@x.org", name=name, password_hash="h", **values)
    return made.id


def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Wait for `check()` to be true (the dashboard measures every 0.1 s here)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, "never came true"
            return value
        time.sleep(0.02)


@pytest.fixture
def client(shop_path: Path) -> Iterator[tuple[TestClient, System]]:
    with (
        System.load(shop_path) as system,
        TestClient(create_app(system, TOKEN, refresh_s=0.1)) as test_client,
    ):
        yield test_client, system


def copies(client: TestClient) -> dict[str, dict[str, Any]]:
    answer = client.get("/api/status")
    assert answer.status_code == 200, answer.text
    return {c["copy"]: c for c in answer.json()["copies"]}


def test_the_page_its_script_and_style_are_served_with_strict_headers(
    client: tuple[TestClient, System],
) -> None:
    http, _ = client
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/dashboard.js"' in page.text and 'id="copies"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    script = http.get("/dashboard.js")
    assert script.status_code == 200 and "text/javascript" in script.headers["content-type"]
    assert "/api/status" in script.text and "Bearer" in script.text
    assert http.get("/dashboard.css").headers["content-type"].startswith("text/css")
    assert http.get("/favicon.ico").status_code == 204
    assert http.get("/nothing-here").status_code == 404


def test_the_page_holds_what_it_shows_first_and_no_text_of_the_charter_runs(
    shop_path: Path,
) -> None:
    """The first snapshot is in the page (a JSON block, so the page needs no round trip to
    show the copies), with the map's address once it is drawn; a charter's text that looks
    like a closing tag stays text."""
    edit(shop_path, "breaks: parcels go to an old address", 'breaks: "</script><b>x</b>"')
    with System.load(shop_path) as system, TestClient(create_app(system, TOKEN)) as http:
        page = http.get("/").text
        boot = page.split('<script type="application/json" id="boot">', 1)[1]
        boot = boot.split("</script>", 1)[0]
        doc = json.loads(boot)
        assert doc["info"]["charter"] == "shop" and doc["info"]["read_only"] is False
        assert {c["copy"] for c in doc["status"]["copies"]} == {
            "order_customers",
            "shipping_customers",
        }
        assert {c["breaks"] for c in doc["status"]["copies"]} >= {"</script><b>x</b>"}
        assert "</script><b>" not in page
        if shutil.which("dot"):
            key = until(lambda: (d := http.get("/api/status").json()["map"]) and d)
            until(lambda: http.get("/map.svg").headers.get("x-map-key") == key)
            assert f'src="/map.svg?k={key}" data-key="{key}"' in http.get("/").text


def test_status_is_every_copy_against_its_window_and_follows_the_system(
    client: tuple[TestClient, System],
) -> None:
    http, system = client
    rows = copies(http)
    assert set(rows) == {"order_customers", "shipping_customers"}
    order = rows["order_customers"]
    assert order["state"] == "NEVER_SYNCED" and order["window_s"] == 5.0
    assert order["fields"] == ["name", "email"] and "outdated e-mail" in order["breaks"]
    assert order["drift"] is None and order["drift_text"] == ""
    ada = customer(system, "ada")
    charter.Runner(system).drain()  # the first sync is a fill: no latency counted
    with system.context("customers").transaction() as tx:
        tx.update("Customer", ada, name="Ada")
    charter.Runner(system).drain()
    until(lambda: copies(http)["order_customers"]["latency_p99_s"] is not None)
    rows = copies(http)
    assert rows["order_customers"]["lag_events"] == 0 and rows["order_customers"]["state"] == OK
    assert rows["order_customers"]["latency_p99_s"] is not None
    assert rows["order_customers"]["within_window_1h"] == 1.0
    with system.context("customers").transaction() as tx:
        tx.update("Customer", ada, name="Ada Lovelace")  # not drained: the copies lag
    until(lambda: copies(http)["order_customers"]["lag_events"] == 1)
    doc = http.get("/api/status").json()
    assert doc["charter"] == "shop" and doc["refresh_s"] == 0.1
    assert doc["counts"] == {OK: 2} and doc["parked"] == 0 and doc["findings"] is None
    before = doc["version"]
    until(lambda: http.get("/api/status").json()["version"] > before)  # measured again


def test_info_says_what_the_charter_holds_and_whether_actions_are_possible(
    client: tuple[TestClient, System],
) -> None:
    http, _ = client
    info = http.get("/api/info").json()
    assert info["charter"] == "shop" and info["read_only"] is False and info["audit"] is False
    assert {"name": "orders", "team": "order-team"} in info["contexts"]
    assert {"name": "Customer", "owner": "customers"} in info["entities"]
    assert {"name": "order_customers", "of": "Customer", "in": "orders", "window_s": 5.0} in info[
        "copies"
    ]
    assert http.get("/api/session").json()["actions"] is False
    assert http.get("/api/session", headers=BEARER).json() == {"actions": True, "why": ""}
    wrong = http.get("/api/session", headers={"Authorization": "Bearer guess"}).json()
    assert wrong["actions"] is False and "wrong token" in wrong["why"]


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_the_map_is_svg_coloured_by_state_and_redrawn_when_a_state_changes(
    client: tuple[TestClient, System],
) -> None:
    http, system = client
    first = until(lambda: (a := http.get("/map.svg")).status_code == 200 and a)
    assert first.headers["content-type"] == "image/svg+xml"
    assert "order_customers" in first.text and "window 5s" in first.text
    assert "NEVER_SYNCED" in first.text and COLOURS["NEVER_SYNCED"] in first.text
    customer(system, "ada")
    charter.Runner(system).drain()
    until(lambda: {c["state"] for c in copies(http).values()} == {OK})
    key = http.get("/api/status").json()["map"]
    drawn = until(lambda: (a := http.get("/map.svg")).headers.get("x-map-key") == key and a)
    assert COLOURS[OK] in drawn.text and "NEVER_SYNCED" not in drawn.text
    assert " lag " not in drawn.text  # the map says states; the table says lag
    assert drawn.headers["cache-control"] == "no-store"
    keyed = http.get("/map.svg", params={"k": key})
    assert keyed.headers["cache-control"] == "private, max-age=86400, immutable"


def test_a_copys_latency_minute_by_minute_over_the_last_hour(
    client: tuple[TestClient, System],
) -> None:
    http, system = client
    charter.Runner(system).drain()  # synced while empty: what follows is applied, not filled
    for n in range(3):
        customer(system, f"c{n}")
    charter.Runner(system).drain()
    doc = http.get("/api/copies/order_customers/latency").json()
    assert doc["copy"] == "order_customers" and doc["window_s"] == 5.0
    minutes = doc["minutes"]
    assert len(minutes) == 60 and minutes == sorted(minutes, key=lambda m: m["minute"])
    assert sum(m["events"] for m in minutes) == 3
    now = minutes[-1] if minutes[-1]["events"] else minutes[-2]  # a minute may have turned
    assert now["p50_s"] is not None and now["within_window"] == 1.0
    assert all(m["p99_s"] is None for m in minutes if not m["events"])
    unknown = http.get("/api/copies/order_customer/latency")
    assert (
        unknown.status_code == 404 and "did you mean 'order_customers'" in unknown.json()["error"]
    )


@pytest.fixture
def rollout(tmp_path: Path) -> Iterator[tuple[Path, Path, list[str]]]:
    """The owner starts using an enum value ('vip') before the copies' charter knows it: its
    events are parked for order_customers (which keeps `status`). `mended` is the charter
    that knows it, `old` the one the copies ran with; the ids: (vip, active)."""
    old, mended = tmp_path / "old.yaml", tmp_path / "charter.yaml"
    old.write_text(shop_text(tmp_path, "shop"))
    edit(old, *WITH_STATUS)
    mended.write_text(old.read_text().replace(*VIP, 1))
    with charter.load(mended) as owner, charter.load(old) as runner:
        vip, active = customer(owner, "vip"), customer(owner, "active")
        charter.Runner(runner).drain()
        with owner.context("customers").transaction() as tx:
            tx.update("Customer", vip, status="vip")  # parked by order_customers
        charter.Runner(runner).drain()
        spec = runner.charter.copies["order_customers"]
        assert [p.entity_id for p in runner.store("orders").parked(spec)] == [vip]
    yield old, mended, [vip, active]


def test_parked_events_are_listed_and_actions_need_the_token(
    rollout: tuple[Path, Path, list[str]],
) -> None:
    old, _, (vip, _) = rollout
    with System.load(old) as system, TestClient(create_app(system, TOKEN, refresh_s=0.1)) as http:
        listed = http.get("/api/parked").json()
        assert listed["total"] == 1 and listed["errors"] == []
        [event] = listed["events"]
        assert (event["copy"], event["id"], event["version"]) == ("order_customers", vip, 2)
        assert "vip" in event["reason"] and event["parked_at"] and '"status":"vip"' in event["body"]
        assert http.get("/api/parked?copy=shipping_customers").json()["total"] == 0
        assert copies(http)["order_customers"]["state"] == DEGRADED
        body = {"copy": "order_customers", "id": event["event_id"]}
        for path in ("/api/parked/retry", "/api/parked/drop"):
            refused = http.post(path, json=body)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert "token" in refused.json()["error"]
            wrong = http.post(path, json=body, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 403 and "wrong token" in wrong.json()["error"]
            assert http.get(path).status_code == 405  # actions are POSTs only
        assert http.get("/api/parked").json()["total"] == 1  # nothing was done
        # under the old charter, a retry keeps it parked, with its reason now
        kept = http.post("/api/parked/retry", json=body, headers=BEARER)
        assert kept.status_code == 200, kept.text
        [outcome] = kept.json()["events"]
        assert outcome["outcome"] == "parked" and "vip" in outcome["reason"]
        bad = http.post("/api/parked/retry", content=b"{not json", headers=BEARER)
        assert bad.status_code == 400 and "JSON" in bad.json()["error"]
        nameless = http.post("/api/parked/retry", json={"id": vip}, headers=BEARER)
        assert nameless.status_code == 400 and "name the copy" in nameless.json()["error"]
        unknown = http.post("/api/parked/drop", json={"copy": "orders"}, headers=BEARER)
        assert unknown.status_code == 404 and "no copy 'orders'" in unknown.json()["error"]
        dropped = http.post("/api/parked/drop", json={"copy": "order_customers"}, headers=BEARER)
        assert [e["outcome"] for e in dropped.json()["events"]] == ["dropped"]
        assert http.get("/api/parked").json()["total"] == 0
        assert copies(http)["order_customers"]["state"] == OK  # measured again at once


def test_a_retry_under_the_mended_charter_applies_the_parked_event(
    rollout: tuple[Path, Path, list[str]],
) -> None:
    _, mended, (vip, _) = rollout
    with System.load(mended) as system, TestClient(create_app(system, TOKEN)) as http:
        answer = http.post("/api/parked/retry", json={"copy": "order_customers"}, headers=BEARER)
        assert answer.status_code == 200, answer.text
        assert [(e["id"], e["outcome"]) for e in answer.json()["events"]] == [(vip, "resolved")]
        assert copies(http)["order_customers"]["state"] == OK and http.get(
            "/api/parked"
        ).json() == {"total": 0, "events": [], "errors": []}
        held = system.context("orders").copy("order_customers").get(vip)
        assert held is not None and held["status"] == "vip" and held.version == 2


def test_read_only_refuses_every_action_whatever_the_token(shop_path: Path) -> None:
    with System.load(shop_path) as system, TestClient(create_app(system, None)) as http:
        assert http.get("/api/info").json()["read_only"] is True
        session = http.get("/api/session", headers=BEARER).json()
        assert session["actions"] is False and "--read-only" in session["why"]
        for path in ("/api/parked/retry", "/api/parked/drop"):
            refused = http.post(path, json={"copy": "order_customers"}, headers=BEARER)
            assert refused.status_code == 403 and "--read-only" in refused.json()["error"]


def test_a_records_story_its_owners_versions_and_where_each_copy_is(
    client: tuple[TestClient, System],
) -> None:
    http, system = client
    ada = customer(system, "ada", address="1 Lane")
    charter.Runner(system).drain()
    with system.context("customers").transaction() as tx:
        tx.update("Customer", ada, name="Ada", password_hash="new")
    charter.Runner(system, ["customers", "orders"]).drain()  # shipping's projector is not run
    doc = http.get("/api/story", params={"entity": "Customer", "id": ada}).json()
    assert (doc["entity"], doc["id"], doc["owner"], doc["team"]) == (
        "Customer",
        ada,
        "customers",
        "customer-team",
    )
    assert doc["version"] == 2 and doc["deleted"] is False
    first, second = doc["versions"]
    assert (first["version"], first["op"], second["op"]) == (1, "created", "updated")
    assert first["values"]["name"] == "ada" and second["values"]["name"] == "Ada"
    assert second["changed"] == ["name"] and second["private_changed"] == ["password_hash"]
    assert all("password_hash" not in (v["values"] or {}) for v in doc["versions"])
    assert second["time"] > first["time"]
    where = {c["copy"]: c for c in doc["copies"]}
    order, shipping = where["order_customers"], where["shipping_customers"]
    assert (order["version"], order["where"], order["in"]) == (2, "current", "orders")
    assert order["values"] == {"name": "Ada", "email": "ada@x.org"} and order["synced_at"]
    assert (shipping["version"], shipping["where"]) == (1, "1 version behind")
    assert shipping["values"] == {"name": "ada", "address": "1 Lane"}
    with system.context("customers").transaction() as tx:
        tx.delete("Customer", ada)
    charter.Runner(system, ["customers", "orders"]).drain()
    doc = http.get("/api/story", params={"entity": "Customer", "id": ada}).json()
    where = {c["copy"]: c for c in doc["copies"]}
    assert doc["deleted"] is True and doc["versions"][-1]["values"] is None
    assert where["order_customers"]["where"] == "deleted, as at its owner"
    assert "its owner deleted it at version 3" in where["shipping_customers"]["where"]
    missing = http.get("/api/story", params={"entity": "Customer", "id": "no-such-id"})
    assert missing.status_code == 404 and "no Customer with id 'no-such-id'" in missing.text
    typo = http.get("/api/story", params={"entity": "Customomer", "id": ada})
    assert typo.status_code == 404 and "did you mean 'Customer'" in typo.json()["error"]
    assert http.get("/api/story", params={"entity": "Customer"}).status_code == 400


def test_metrics_are_the_copies_gauges_for_prometheus(client: tuple[TestClient, System]) -> None:
    http, system = client
    customer(system, "ada")
    charter.Runner(system).drain()
    answer = http.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    text = answer.text
    labels = 'copy="order_customers",in="orders",of="Customer",owner="customers"'
    assert f"charter_copy_up{{{labels}}} 1.0" in text
    assert f"charter_copy_window_seconds{{{labels}}} 5.0" in text
    assert f"charter_copy_lag_events{{{labels}}} 0.0" in text
    assert 'charter_outbox_unrelayed_events{of="Customer",owner="customers"} 0.0' in text
    # what a process applying events counts is the runners' own, not served here
    assert "charter_copy_events_applied" not in text and "propagation_latency" not in text
    promtool = shutil.which("promtool")
    if promtool:
        checked = subprocess.run([promtool, "check", "metrics"], input=answer.content)
        assert checked.returncode == 0


def test_drift_is_shown_as_the_copy_store_keeps_it(client: tuple[TestClient, System]) -> None:
    """Each copy's last reconciliation, as its store keeps it (charter_drift): the rows, when;
    a copy with drift is DRIFT, and amber on the map."""
    http, system = client
    customer(system, "ada")
    charter.Runner(system).drain()
    until(lambda: copies(http)["order_customers"]["state"] == OK)
    assert copies(http)["order_customers"]["drift"] is None  # never checked
    checked = Drift("order_customers", "2026-01-01T00:00:00Z", 0.2, {"missing": 2, "stale": 1}, {})
    system.store("orders").record_drift(checked)
    until(lambda: copies(http)["order_customers"]["state"] == DRIFT)
    order = copies(http)["order_customers"]
    assert order["drift"]["rows"] == 3 and order["drift"]["counts"] == {"missing": 2, "stale": 1}
    assert order["drift_text"] == "drift 3"
    if shutil.which("dot"):
        drawn = until(lambda: "drift 3" in (a := http.get("/map.svg")).text and a)
        assert COLOURS[DRIFT] in drawn.text


def test_on_every_backend_status_parked_events_a_story_and_metrics(shop: System) -> None:
    """The same dashboard on each store and bus: SQLite, PostgreSQL + NATS, memory."""
    ada = customer(shop, "ada")
    charter.Runner(shop).drain()
    with shop.context("customers").transaction() as tx:
        tx.update("Customer", ada, name="Ada")
    shop.bus.publish_raw("junk-1", "Customer", ada, b"{not json")
    charter.Runner(shop).drain()
    with TestClient(create_app(shop, TOKEN, refresh_s=0.1)) as http:
        assert {c["copy"]: c["state"] for c in copies(http).values()} == {
            "order_customers": DEGRADED,
            "shipping_customers": DEGRADED,
        }
        listed = http.get("/api/parked").json()
        assert listed["total"] == 2 and {e["event_id"] for e in listed["events"]} == {"junk-1"}
        retried = http.post("/api/parked/retry", json={"copy": "order_customers"}, headers=BEARER)
        assert [e["outcome"] for e in retried.json()["events"]] == ["parked"]
        for name in ("order_customers", "shipping_customers"):
            dropped = http.post(
                "/api/parked/drop", json={"copy": name, "id": "junk-1"}, headers=BEARER
            )
            assert [e["outcome"] for e in dropped.json()["events"]] == ["dropped"]
        assert {c["state"] for c in copies(http).values()} == {OK}
        story = http.get("/api/story", params={"entity": "Customer", "id": ada}).json()
        assert [v["version"] for v in story["versions"]] == [1, 2]
        assert {c["copy"]: c["where"] for c in story["copies"]} == {
            "order_customers": "current",
            "shipping_customers": "current",
        }
        assert "charter_copy_up" in http.get("/metrics").text


# -- audit findings ------------------------------------------------------------------------


def csvlog(path: Path, lines: list[tuple[str, str, str]]) -> None:
    """A PostgreSQL csvlog (26 columns) of these statements: (user, application, SQL)."""
    out = io.StringIO()
    writer = csv.writer(out)
    for n, (user, application, sql) in enumerate(lines, 1):
        row = [""] * 26
        row[0], row[1], row[2] = f"2026-01-01 00:00:{n:02d}.000 UTC", user, "shop"
        row[5], row[11], row[13], row[22] = f"s{user}", "LOG", f"statement: {sql}", application
        writer.writerow(row)
    path.write_text(out.getvalue())


def test_audit_findings_from_a_server_log_read_again_when_it_changes(shop_path: Path) -> None:
    pytest.importorskip("pglast")
    log = shop_path.parent / "server.csv"
    csvlog(log, [("app", "orders", "UPDATE customer SET name = 'x' WHERE id = '1'")])
    with System.load(shop_path) as system:
        found = Findings(system.charter, [log], check_s=0.05)
        with TestClient(create_app(system, TOKEN, findings=found, refresh_s=0.1)) as http:
            doc = until(lambda: (d := http.get("/api/findings").json())["findings"] and d)
            assert doc["files"] == [str(log)] and doc["statements"] == 1 and not doc["error"]
            [finding] = doc["findings"]
            assert (finding["kind"], finding["who"], finding["holds"]) == (
                "non_owner_write",
                "orders",
                "Customer",
            )
            assert http.get("/api/info").json()["audit"] is True
            if shutil.which("dot"):
                drawn = until(
                    lambda: "writes UPDATE" in (a := http.get("/map.svg")).text and a, timeout=10
                )
                assert COLOURS[FINDING] in drawn.text
            csvlog(
                log,
                [
                    ("app", "orders", "UPDATE customer SET name = 'x' WHERE id = '1'"),
                    ("app", "shipping", "SELECT * FROM customer JOIN order_customers USING (id)"),
                ],
            )
            later = until(lambda: (d := http.get("/api/findings").json())["statements"] == 2 and d)
            assert later["version"] > doc["version"]
            assert "cross_context_read" in {f["kind"] for f in later["findings"]}
            log.write_text("not a log\n")
            broken = until(lambda: (d := http.get("/api/findings").json())["error"] and d)
            assert "not a PostgreSQL csvlog line" in broken["error"]
            assert broken["statements"] == 2  # the last findings read stay shown
        found.stop()


def test_audit_findings_from_charter_audits_json(shop_path: Path) -> None:
    report = shop_path.parent / "audit.json"
    finding = {"kind": "unowned_table", "who": "orders", "tables": ["public.legacy"]}
    finding |= {"statements": 4, "contexts": ["orders"], "message": "legacy belongs to no one"}
    doc = {"sources": ["x.csv"], "statements": 4, "unknown": 0, "findings": [finding]}
    report.write_text(json.dumps(doc, indent=2))
    with System.load(shop_path) as system:
        found = Findings(system.charter, [report])
        assert found.reports == [report] and found.logs == []
        with TestClient(create_app(system, TOKEN, findings=found)) as http:
            got = until(lambda: (d := http.get("/api/findings").json())["findings"] and d)
            assert got["findings"] == [finding] and got["sources"] == ["x.csv"]
    with System.load(shop_path) as system, TestClient(create_app(system, TOKEN)) as http:
        absent = http.get("/api/findings")
        assert absent.status_code == 404 and "--audit" in absent.json()["error"]


# -- the command -------------------------------------------------------------------------


def serve(*args: str) -> Any:
    return CliRunner().invoke(main, ["serve", *args])


def test_serve_says_why_it_cannot_start(shop_path: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve("-f", str(shop_path), "--port", str(port))
    assert result.exit_code == 1, result.output
    assert f"cannot listen on 127.0.0.1:{port}" in result.output and "--port" in result.output
    assert "Traceback" not in result.output
    result = serve("-f", str(shop_path), "--read-only", "--token", "x", "--port", "0")
    assert result.exit_code == 1 and "--read-only or --token" in result.output
    result = serve("-f", str(tmp_path / "missing.yaml"))
    assert result.exit_code == 1 and "missing.yaml" in result.output
    result = serve("-f", str(shop_path), "--audit", str(tmp_path / "nope.csv"))
    assert result.exit_code == 2 and "nope.csv" in result.output
    result = serve("-f", str(shop_path), "--port", "70000")
    assert result.exit_code == 2 and "70000" in result.output


@pytest.mark.processes
def test_serve_as_a_process_prints_where_it_is_and_stops_cleanly(shop_path: Path) -> None:
    """`--port 0`: the port it got is in the address it prints; read-only, it says so; the
    page and the JSON answer; SIGINT stops it with exit status 0."""
    import urllib.error
    import urllib.request

    process = subprocess.Popen(
        charter_command("serve", "-f", str(shop_path), "--port", "0", "--read-only"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        match = re.search(r"dashboard of 'shop': (http://127\.0\.0\.1:(\d+)/)$", first.strip())
        assert match and int(match[2]) > 0, first
        assert "read-only (--read-only)" in process.stdout.readline()
        url = match[1]
        with urllib.request.urlopen(url + "api/status", timeout=30) as answer:
            assert json.loads(answer.read())["charter"] == "shop"
        with urllib.request.urlopen(url, timeout=30) as answer:
            assert b"dashboard.js" in answer.read()
        request = urllib.request.Request(
            url + "api/parked/retry", b'{"copy": "order_customers"}', BEARER, method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 403
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Traceback" not in err


def test_only_its_own_host_names_are_answered_on_loopback(shop_path: Path) -> None:
    """Bound to loopback, a page of another site that a viewer's browser was made to send
    here under another name (DNS rebinding) is refused."""
    with System.load(shop_path) as system:
        app = create_app(system, TOKEN, hosts=["127.0.0.1", "localhost"])
        with TestClient(app, base_url="http://evil.example") as http:
            assert http.get("/api/status").status_code == 400
        with TestClient(app, base_url="http://127.0.0.1:8800") as http:
            assert http.get("/api/status").status_code == 200


# -- a real browser ------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")


def _browser_reason() -> str:
    if not CHROMIUM.exists():
        return "Debian's chromium is not installed (/usr/bin/chromium; .ci/run installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ModuleNotFoundError:
        return "the playwright package is not installed (it is in the dev extra)"
    return ""


class Processes:
    """`charter run` and `charter serve` as processes of their own, stopped at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        out = (self.tmp_path / f"{name}.log").open("ab")
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(charter_command(*args), stdout=out, stderr=out, env=env)
        self.running[name] = process
        return process

    def stop(self, name: str) -> None:
        process = self.running.pop(name)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for name in list(self.running):
            self.stop(name)


@pytest.mark.processes
@pytest.mark.skipif(bool(_browser_reason()), reason=_browser_reason() or "-")
def test_in_a_real_browser_a_copy_goes_red_live_and_a_parked_event_is_retried(
    tmp_path: Path,
) -> None:
    """`charter serve` and `charter run` as processes against a SQLite system, the page in
    Debian's chromium: the map and the copies render; with the runner stopped, a write turns
    its copy's lag to 1 within 2 s and the copy red within 3 s of its window (1 s) passing;
    a parked event (a value the runner's charter does not know yet) is retried from the page
    with the token (the dashboard runs the mended charter) and resolved; a page opened
    without the token offers no action. Screenshots are kept in .artefacts/dashboard/."""
    from playwright.sync_api import expect, sync_playwright

    old, mended = tmp_path / "old.yaml", tmp_path / "charter.yaml"
    old.write_text(shop_text(tmp_path, "shop").replace("window: 5s", "window: 1s", 1))
    edit(old, *WITH_STATUS)
    mended.write_text(old.read_text().replace(*VIP, 1))
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    (port,) = free_ports(1)
    processes = Processes(tmp_path)
    with charter.load(mended) as owner:
        ada = customer(owner, "ada")
        charter.Runner(owner).drain()
    try:
        processes.start("run", "run", "-f", str(old))
        serving = processes.start(
            "serve", "serve", "-f", str(mended), "--port", str(port), "--token", TOKEN
        )
        url = f"http://127.0.0.1:{port}/"
        until(
            lambda: (
                serving.poll() is not None
                or f"dashboard of 'shop': {url}" in processes.log("serve")
            ),
            timeout=30,
        )
        assert serving.poll() is None, processes.log("serve")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + f"#token={TOKEN}")
            expect(page.locator("body")).to_have_attribute("data-ready", "1", timeout=10_000)
            assert TOKEN not in page.url  # taken out of the address bar
            expect(page.locator("#mode")).to_have_text("actions enabled")
            order = page.locator('#copies tr[data-copy="order_customers"]')
            expect(order).to_have_attribute("data-state", OK, timeout=10_000)
            expect(page.locator("#copies tbody tr")).to_have_count(2)
            until(lambda: page.eval_on_selector("#map-img", "i => i.naturalWidth > 0"))
            page.screenshot(path=str(ARTEFACTS / "1-ok.png"), full_page=True)

            # the runner stops; a write; the page sees it within 2 s, red after the window
            processes.stop("run")
            with charter.load(mended) as owner, owner.context("customers").transaction() as tx:
                tx.update("Customer", ada, name="Ada")
            expect(order.locator("td").nth(4)).to_have_text("1", timeout=2_000)
            expect(order).to_have_attribute("data-state", BREACH, timeout=1_000 + 3_000)
            expect(order.locator(".state")).to_have_css("background-color", "rgb(198, 40, 40)")
            page.screenshot(path=str(ARTEFACTS / "2-breach.png"), full_page=True)

            # the runner again: green; then an owner's value its charter does not know: parked
            processes.start("run", "run", "-f", str(old))
            expect(order).to_have_attribute("data-state", OK, timeout=15_000)
            with charter.load(mended) as owner, owner.context("customers").transaction() as tx:
                tx.update("Customer", ada, status="vip")
            expect(order).to_have_attribute("data-state", DEGRADED, timeout=15_000)
            parked = page.locator('#parked tr[data-copy="order_customers"]')
            expect(parked).to_have_count(1, timeout=10_000)
            expect(parked.locator(".reason")).to_contain_text("vip")

            # read-only without the token: the same list, no button
            viewer = browser.new_context().new_page()
            viewer.goto(url)
            expect(viewer.locator("#mode")).to_have_text("read-only: no token", timeout=10_000)
            expect(viewer.locator('#parked tr[data-copy="order_customers"]')).to_have_count(
                1, timeout=10_000
            )
            assert viewer.locator("#parked button").count() == 0
            viewer.close()

            parked.locator("button.retry").click()
            expect(page.locator("#action-result")).to_have_attribute("data-outcome", "resolved")
            expect(parked).to_have_count(0, timeout=5_000)
            expect(order).to_have_attribute("data-state", OK, timeout=5_000)

            # its story: the owner's three versions, and the copy holding the third
            page.select_option("#story-entity", "Customer")
            page.fill("#story-id", ada)
            page.click("#story-form button")
            expect(page.locator("#story-versions tbody tr")).to_have_count(3)
            held = page.locator('#story-copies tr[data-copy="order_customers"]')
            expect(held).to_have_attribute("data-version", "3", timeout=5_000)
            page.screenshot(path=str(ARTEFACTS / "3-retried.png"), full_page=True)
            assert errors == []
            browser.close()
    finally:
        processes.close()
    assert serving.returncode == 0, processes.log("serve")  # SIGTERM: a clean stop
    assert "Traceback" not in processes.log("serve"), processes.log("serve")
    assert "resolved on retry" in processes.log("serve")
