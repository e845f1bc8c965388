"""`charter demo` and examples/shop: what a newcomer sees first must be true."""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nats
import orjson
import psycopg
import pytest
from rich.console import Console

import charter
from charter.buses.nats import NatsBus, stream_name
from charter.demo import SHOP_CHARTER, Servers, compare_copies, run_demo, write_charter
from charter.errors import Error
from tests.backends import NATS, POSTGRES
from tests.conftest import ROOT, assert_converged

EXAMPLE = ROOT / "examples" / "shop"
MIXED = "charter.postgres-nats.yaml"
RUN = re.compile(r"demo_[0-9a-f]{8}", re.IGNORECASE)  # also in a stream's name


def _demo(
    folder: Path | None,
    changes: int = 300,
    *,
    postgres: str | None = None,
    nats: str | None = None,
    out: io.StringIO | None = None,
) -> str:
    out = out or io.StringIO()
    run_demo(
        Console(file=out, width=120), changes=changes, folder=folder, postgres=postgres, nats=nats
    )
    return out.getvalue()


def _schemas(prefix: str) -> list[str]:
    """The schemas in the test database whose name starts with `prefix`_."""
    with psycopg.connect(POSTGRES) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s) ORDER BY 1",
            (f"{prefix}_",),
        ).fetchall()
    return [str(row[0]) for row in rows]


def _stream_exists(system: str) -> bool:
    """Whether the NATS stream of the charter `system` exists (asked, never created)."""

    async def ask() -> bool:
        client = await nats.connect(NATS, connect_timeout=5, max_reconnect_attempts=1)
        try:
            reply = await client.request(f"$JS.API.STREAM.INFO.{stream_name(system)}", timeout=5)
        finally:
            await client.close()
        return "error" not in orjson.loads(reply.data)

    return asyncio.run(ask())


def test_demo_shows_every_refusal_and_convergence(tmp_path: Path) -> None:
    started = time.monotonic()
    text = _demo(tmp_path)
    assert time.monotonic() - started < 15
    assert "300 changes in" in text
    assert text.count("refused (OwnershipError)") == 2
    assert "team customer-team" in text
    assert "refused (ConstraintError): Appointment no_overlap" in text
    assert (
        "refused by SQLite (IntegrityError): charter: order_customers is a read-only copy" in text
    )
    assert "refused (ConstraintError): Customer.email must be unique" in text
    assert "NOT refused" not in text
    for copy in ("order_customers", "shipping_customers"):
        assert f"{copy}: " in text
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{copy}: "))
        assert line.rstrip().endswith("all equal to customers' current state"), line
    assert "password_hash (private) is in 0 of" in text
    assert "7. The owner's history of one customer" in text
    assert f"charter status -f {tmp_path / 'charter.yaml'}" in text
    assert "runner warning" not in text


def test_demo_folder_really_holds_converged_copies(tmp_path: Path) -> None:
    _demo(tmp_path, changes=200)
    with charter.load(tmp_path / "charter.yaml") as system:
        assert_converged(system)
        assert all(check.equal and check.rows > 0 for check in compare_copies(system))
        assert all(row.synced for row in charter.status(system))


def test_demo_runs_again_on_a_kept_folder(tmp_path: Path) -> None:
    _demo(tmp_path, changes=150)
    text = _demo(tmp_path, changes=150)
    assert "all equal to customers' current state" in text
    with charter.load(tmp_path / "charter.yaml") as system:
        assert_converged(system)


def test_demo_in_a_temporary_folder_leaves_nothing(tmp_path: Path) -> None:
    text = _demo(None, changes=50)
    assert "temporary folder, now removed" in text


def test_demo_refuses_a_folder_holding_another_system(tmp_path: Path) -> None:
    (tmp_path / "charter.yaml").write_text("charter: 1\nname: mine\n")
    with pytest.raises(Error, match="different charter"):
        write_charter(tmp_path)
    other = tmp_path / "other"
    (other / ".charter").mkdir(parents=True)
    with pytest.raises(Error, match="stores of another system"):
        write_charter(other)


def test_example_charter_is_the_demo_charter() -> None:
    assert (EXAMPLE / "charter.yaml").read_text(encoding="utf-8") == SHOP_CHARTER


def test_example_scenario_runs_to_completion(tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    shutil.copytree(EXAMPLE, shop, ignore=shutil.ignore_patterns(".charter", "__pycache__"))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    for _ in range(2):  # and again on the same stores
        done = subprocess.run(
            [sys.executable, str(shop / "run.py")],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        assert "scenario complete" in done.stdout
    out = done.stdout
    assert "refused: Customer" in out and "not the expected 1" in out  # stale form
    assert "Dear Ada Lovelace" in out and "To: ada.king+" in out  # snapshot vs copy
    assert "refused: Appointment no_overlap" in out
    assert "cannot ship to Ada" in out
    assert (shop / ".charter" / "customers.db").exists()  # relative to the charter file
    with charter.load(shop / "charter.yaml") as system:
        assert_converged(system)


def test_demo_charter_on_servers_differs_only_in_urls_and_name() -> None:
    assert Servers().charter() == SHOP_CHARTER
    servers = Servers(POSTGRES, NATS)
    assert RUN.fullmatch(servers.run)
    assert Servers(POSTGRES, NATS).run != servers.run  # one per run: runs never collide
    changed = [
        (old, new)
        for old, new in zip(SHOP_CHARTER.splitlines(), servers.charter().splitlines(), strict=True)
        if old != new
    ]
    assert [old.split(":")[0].strip() for old, _ in changed] == [
        "name",
        "bus",
        "customers",
        "orders",
        "shipping",
        "calendar",
    ]
    assert changed[0][1] == f"name: {servers.name}" and servers.name == f"shop_{servers.run}"
    assert changed[1][1] == f'bus: "{NATS}"'
    for (_, new), context in zip(
        changed[2:], ("customers", "orders", "shipping", "calendar"), strict=True
    ):
        assert f'store: "{POSTGRES}?schema={servers.run}_{context}"' in new, new
    assert Servers(POSTGRES).name == "shop"  # the name matters only for the stream


def test_demo_refuses_bad_server_urls() -> None:
    with pytest.raises(Error, match="not a PostgreSQL URL"):
        run_demo(Console(file=io.StringIO()), postgres="mysql://localhost/shop")
    with pytest.raises(Error, match="names a schema"):
        run_demo(Console(file=io.StringIO()), postgres=f"{POSTGRES}?schema=mine")
    with pytest.raises(Error, match="NATS bus URL"):
        run_demo(Console(file=io.StringIO()), nats="nats://127.0.0.1:4222?bad=1")


@pytest.mark.parametrize(
    ("postgres", "nats_url"),
    [(POSTGRES, NATS), (POSTGRES, None), (None, NATS)],
    ids=["postgres+nats", "postgres", "nats"],
)
def test_demo_on_servers_refuses_converges_and_leaves_nothing(
    postgres: str | None, nats_url: str | None
) -> None:
    out = io.StringIO()
    started = time.monotonic()
    try:
        text = _demo(None, changes=200, postgres=postgres, nats=nats_url, out=out)
    except BaseException:  # the run's id is in its first lines: remove what it made
        if found := RUN.search(out.getvalue()):
            Servers(postgres, nats_url, run=found.group().lower()).remove()
        raise
    found = RUN.search(text)
    assert found, text
    run = found.group().lower()
    servers = Servers(postgres, nats_url, run=run)
    flat = " ".join(text.split())  # the console wraps long lines
    try:
        assert time.monotonic() - started < 30
        assert "200 changes in" in text
        assert text.count("refused (OwnershipError)") == 2
        assert "refused (ConstraintError): Appointment no_overlap" in text
        assert "refused (ConstraintError): Customer.email must be unique" in text
        if postgres:
            assert f"SET search_path TO {run}_orders; UPDATE order_customers" in flat
            assert (
                "refused by PostgreSQL (InsufficientPrivilege): charter: order_customers is a "
                "read-only copy" in flat
            )
            assert f"its PostgreSQL schemas {run}_* dropped" in flat
        else:
            assert "refused by SQLite (IntegrityError): charter: order_customers" in flat
        if nats_url:
            assert f"a NATS JetStream bus (stream {servers.stream} at {nats_url})" in flat
            assert f"its NATS stream {servers.stream} deleted" in flat
        assert "NOT refused" not in text
        for copy in ("order_customers", "shipping_customers"):
            line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{copy}: "))
            assert line.rstrip().endswith("all equal to customers' current state"), line
        assert "password_hash (private) is in 0 of" in text
        assert "runner warning" not in text and "not removed" not in text
        assert "temporary folder, now removed" in text
        # nothing left behind: no schema of the run, no stream
        assert _schemas(run) == []
        assert not _stream_exists(servers.name)
    finally:
        servers.remove()


def test_demo_kept_on_servers_says_what_is_left_and_continues(tmp_path: Path) -> None:
    text = _demo(tmp_path, changes=100, postgres=POSTGRES, nats=NATS)
    found = RUN.search(text)
    assert found, text
    servers = Servers(POSTGRES, NATS, run=found.group().lower())
    try:
        assert (tmp_path / "charter.yaml").read_text(encoding="utf-8") == servers.charter()
        assert _schemas(servers.run) == sorted(servers.schemas)
        assert _stream_exists(servers.name)
        flat = " ".join(text.split())  # the console wraps long lines
        assert "DROP SCHEMA" in flat and f"stream rm -f {servers.stream}" in flat
        # again on the kept folder: the same run's schemas and stream, one more load
        again = _demo(tmp_path, changes=100, postgres=POSTGRES, nats=NATS)
        assert {run.lower() for run in RUN.findall(again)} == {servers.run}
        assert "all equal to customers' current state" in again
        with charter.load(tmp_path / "charter.yaml") as system:
            assert_converged(system)
        with pytest.raises(Error, match="different charter"):  # not with other servers
            _demo(tmp_path, changes=10, postgres=POSTGRES)
    finally:
        assert servers.remove() == []
    assert _schemas(servers.run) == [] and not _stream_exists(servers.name)


def test_example_scenario_runs_on_postgres_and_nats(tmp_path: Path) -> None:
    """examples/shop/run.py against a copy of the mixed charter, with schemas and a
    name (so a stream) of this test's own."""
    shop = tmp_path / "shop"
    shutil.copytree(EXAMPLE, shop, ignore=shutil.ignore_patterns(".charter", "__pycache__"))
    prefix = "t" + uuid.uuid4().hex[:10]
    name = f"shop_{prefix}"
    text = (shop / MIXED).read_text(encoding="utf-8")
    for old, new in (
        ("name: shop_mixed\n", f"name: {name}\n"),
        ("?schema=shop_", f"?schema={prefix}_"),
        ("postgresql://postgres@127.0.0.1:5432/test", POSTGRES),
        ('"nats://127.0.0.1:4222"', f'"{NATS}"'),
    ):
        assert old in text, old
        text = text.replace(old, new)
    (shop / MIXED).write_text(text, encoding="utf-8")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        for _ in range(2):  # and again on the same stores
            done = subprocess.run(
                [sys.executable, str(shop / "run.py"), "-f", str(shop / MIXED)],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )
            assert done.returncode == 0, done.stderr
            assert "scenario complete" in done.stdout
        out = done.stdout
        assert "refused: Customer" in out and "not the expected 1" in out
        assert "Dear Ada Lovelace" in out and "To: ada.king+" in out
        assert "refused: Appointment no_overlap" in out
        assert "cannot ship to Ada" in out
        assert _schemas(prefix) == [f"{prefix}_calendar", f"{prefix}_customers"]
        assert (shop / ".charter" / "postgres-nats" / "orders.db").exists()
        assert not (shop / ".charter" / "orders.db").exists()  # apart from charter.yaml's
        with charter.load(shop / MIXED) as system:
            assert system.charter.bus == NATS
            assert_converged(system)
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            for context in ("customers", "calendar"):
                conn.execute(f'DROP SCHEMA IF EXISTS "{prefix}_{context}" CASCADE')
        NatsBus.delete_stream(NATS, name)
    assert _schemas(prefix) == [] and not _stream_exists(name)
