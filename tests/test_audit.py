"""`charter audit` on traffic charter did not write: pgbench (its own tables, a built-in
script and one of ours) under three roles and a superuser, with planted non-owner writes,
a cross-context join and a table nobody owns; and the SQL Django's ORM sends for its own
contrib apps. Every planted violation and every real cross-app access is found, the
declared paths give none, nothing is dropped unparsed; `--suggest` drafts a charter that
`charter check` accepts. The servers are PostgreSQLs of the tests' own (tests/audit_servers.py):
the shared one is never reconfigured."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from charter import model
from charter.audit import parse
from charter.audit import since as audit_since
from charter.audit.findings import (
    CROSS_JOIN,
    CROSS_READ,
    NON_OWNER_WRITE,
    SHARED_TABLE,
    UNKNOWN,
    UNOWNED,
)
from charter.audit.parse import Table
from charter.audit.sources import OBJECT, read_log
from charter.cli import main
from charter.system import System
from tests.audit_servers import Audited, audited
from tests.backends import POSTGRES
from tests.nats_servers import free_ports

# the tables in one place; `public.` because pgbench creates them there
ACCOUNTS, BRANCHES, TELLERS, HISTORY, NOTES = (
    f"public.pgbench_{t}" for t in ("accounts", "branches", "tellers", "history", "notes")
)

BANK = """\
charter: 1
name: bank
contexts:
  accounts: {{team: accounts-team, store: "{url}?schema=public"}}
  tellers: {{team: tellers-team, store: "{url}?schema=public"}}
entities:
  pgbench_accounts:
    owner: accounts
    fields: {{bid: integer, abalance: integer, filler: string}}
  pgbench_branches:
    owner: accounts
    fields: {{bbalance: integer, filler: string}}
  pgbench_history:
    owner: accounts
    fields: {{tid: integer, bid: integer, aid: integer, delta: integer, mtime: timestamp}}
  pgbench_tellers:
    owner: tellers
    fields: {{bid: integer, tbalance: integer, filler: string}}
"""

# the tellers' own work, with a join of another context's table and a write of it planted
TELLERS_SCRIPT = """\
\\set tid random(1, 10)
\\set delta random(-5000, 5000)
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
SELECT t.tbalance, sum(a.abalance) FROM pgbench_tellers t
  JOIN pgbench_accounts a ON a.bid = t.bid WHERE t.tid = :tid AND a.aid < 100 GROUP BY 1;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = 1;
SELECT note FROM pgbench_notes WHERE id = :tid;
"""


@dataclass
class Bank:
    server: Audited
    charter: Path
    since: str


@pytest.fixture(scope="module")
def server() -> Iterator[Audited]:
    with audited() as pg:
        yield pg


@pytest.fixture(scope="module")
def bank(server: Audited, tmp_path_factory: pytest.TempPathFactory) -> Bank:
    """pgbench's tables; the accounts context (role bank_accounts, one of charter's) runs
    the built-in simple-update; tellers (bank_tellers) our script; an old role and the
    superuser each write a table they do not own."""
    folder = tmp_path_factory.mktemp("bank")
    server.pgbench("-i", "-s", "1", "-q")
    server.sql(
        "CREATE TABLE pgbench_notes (id int PRIMARY KEY, note text)",
        *(f"CREATE ROLE {role} LOGIN" for role in ("bank_accounts", "bank_tellers", "bank_old")),
        "GRANT ALL ON ALL TABLES IN SCHEMA public TO bank_accounts, bank_tellers, bank_old",
    )
    since = server.now()
    time.sleep(0.01)  # the log keeps milliseconds
    server.pgbench("-b", "simple-update", "-t", "30", "-n", user="bank_accounts")
    script = folder / "tellers.sql"
    script.write_text(TELLERS_SCRIPT)
    server.pgbench("-f", str(script), "-t", "10", "-n", user="bank_tellers")
    with server.as_role("bank_old") as conn:  # the extended protocol: "execute <unnamed>"
        conn.execute(
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
            "VALUES (%s, %s, %s, %s, now())",
            (1, 1, 1, 0),
        )
    server.sql("UPDATE pgbench_accounts SET abalance = 0 WHERE aid = 1")  # as the superuser
    server.flushed()
    path = folder / "charter.yaml"
    path.write_text(BANK.format(url=server.url))
    return Bank(server, path, since)


def audit(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, ["audit", *args])
    assert result.exit_code == code, result.output
    return result.output


def found(report: dict[str, object]) -> set[tuple[str, str, tuple[str, ...]]]:
    return {(f["kind"], f["who"], tuple(f["tables"])) for f in report["findings"]}  # type: ignore[attr-defined, index]


PLANTED = {
    (NON_OWNER_WRITE, "tellers", (BRANCHES,)),
    (NON_OWNER_WRITE, "role bank_old", (HISTORY,)),
    (NON_OWNER_WRITE, "role postgres", (ACCOUNTS,)),
    (SHARED_TABLE, "", (HISTORY,)),
    (SHARED_TABLE, "", (ACCOUNTS,)),
    (CROSS_READ, "tellers", (ACCOUNTS,)),
    (CROSS_JOIN, "tellers", (ACCOUNTS, TELLERS)),
    (UNOWNED, "", (NOTES,)),
}


@pytest.mark.parametrize("log", ["csv", "json"])
def test_pgbench_every_planted_violation_is_found_and_nothing_else(bank: Bank, log: str) -> None:
    path = bank.server.csv if log == "csv" else bank.server.json
    report = json.loads(audit("-f", str(bank.charter), str(path), "--since", bank.since, "--json"))
    assert found(report) == PLANTED  # so the accounts context's declared paths gave none
    assert report["unknown"] == 0
    sessions = report["sessions"]
    # 30 transactions of 5 statements, pgbench's look at pgbench_branches among them
    assert sessions["accounts"]["statements"] >= 150
    assert sessions["tellers"]["statements"] >= 10 * 4  # later tests add to the log
    by = {(f["kind"], f["who"]): f for f in report["findings"]}
    read = by[(CROSS_READ, "tellers")]
    assert read["columns"] == ["abalance", "aid", "bid"] and read["statements"] == 10
    assert by[(NON_OWNER_WRITE, "tellers")]["ops"] == ["UPDATE"]
    assert by[(NON_OWNER_WRITE, "role bank_old")]["ops"] == ["INSERT"]
    shared = {f["tables"][0]: f for f in report["findings"] if f["kind"] == SHARED_TABLE}
    assert set(shared[HISTORY]["writers"]) == {"accounts", "role bank_old"}


def test_since_leaves_out_what_came_before(bank: Bank) -> None:
    """Without --since, pgbench -i by the superuser is there: its DDL and COPY."""
    report = json.loads(audit("-f", str(bank.charter), str(bank.server.csv), "--json"))
    writes = {
        f["tables"][0]: f["ops"]
        for f in report["findings"]
        if f["kind"] == NON_OWNER_WRITE and f["who"] == "role postgres"
    }
    assert {"COPY", "DDL"} <= set(writes[ACCOUNTS])
    assert "DDL" in writes[TELLERS]


def test_a_mapping_on_the_command_line_places_a_role(bank: Bank) -> None:
    """The old role speaks for accounts: its insert is the owner's, and nothing is shared."""
    args = ["-f", str(bank.charter), str(bank.server.csv), "--since", bank.since, "--json"]
    report = json.loads(audit(*args, "--map", "bank_old=accounts"))
    assert (NON_OWNER_WRITE, "role bank_old", (HISTORY,)) not in found(report)
    assert (SHARED_TABLE, "", (HISTORY,)) not in found(report)
    assert report["sessions"]["accounts"]["roles"] == ["bank_accounts", "bank_old"]


def test_an_application_name_that_is_a_context_places_a_session(bank: Bank) -> None:
    since = bank.server.now()
    time.sleep(0.01)
    with bank.server.as_role("bank_old", application="tellers") as conn:
        conn.execute("UPDATE pgbench_tellers SET tbalance = 0 WHERE tid = 1")
        conn.execute("SELECT abalance FROM pgbench_accounts WHERE aid = 1")
    bank.server.flushed()
    args = ["-f", str(bank.charter), str(bank.server.json), "--since", since, "--json"]
    report = json.loads(audit(*args))
    assert found(report) == {(CROSS_READ, "tellers", (ACCOUNTS,))}


def test_text_report_and_strict(bank: Bank) -> None:
    args = ["-f", str(bank.charter), str(bank.server.csv), "--since", bank.since]
    text = audit(*args, "--strict", code=3)
    assert "writes by non-owners: 3" in text
    assert "tellers writes public.pgbench_branches" in text
    assert "public.pgbench_notes belongs to no context" in text


def test_pg_stat_statements_live(bank: Bank) -> None:
    """The same traffic from pg_stat_statements (normalised, with calls, no times)."""
    bank.server.sql("SELECT pg_stat_statements_reset()")
    bank.server.pgbench("-b", "simple-update", "-t", "5", "-n", user="bank_accounts")
    script = bank.charter.parent / "tellers.sql"
    bank.server.pgbench("-f", str(script), "-t", "3", "-n", user="bank_tellers")
    bank.server.sql("UPDATE pgbench_accounts SET abalance = 0 WHERE aid = 2")
    url = bank.server.url
    report = json.loads(audit("-f", str(bank.charter), "--stat-statements", url, "--json"))
    assert {
        (NON_OWNER_WRITE, "tellers", (BRANCHES,)),
        (NON_OWNER_WRITE, "role postgres", (ACCOUNTS,)),
        (CROSS_JOIN, "tellers", (ACCOUNTS, TELLERS)),
        (UNOWNED, "", (NOTES,)),
    } <= found(report)
    assert report["sessions"]["tellers"]["statements"] == 3 * 4
    assert report["unknown"] == 0


def test_statements_it_cannot_see_or_parse_are_counted_as_unknown(bank: Bank) -> None:
    """A role that may not read other roles' statements in pg_stat_statements gets
    '<insufficient privilege>' for them: counted as unknown, never dropped."""
    bank.server.sql("SELECT pg_stat_statements_reset()", "SELECT count(*) FROM pgbench_notes")
    with bank.server.as_role("bank_old") as conn:
        conn.execute("SELECT note FROM pgbench_notes")
    url = bank.server.url.replace("postgres@", "bank_old@")
    report = json.loads(audit("-f", str(bank.charter), "--stat-statements", url, "--json"))
    assert report["unknown"] >= 2 and report["statements"] > report["unknown"]
    unknown = [f for f in report["findings"] if f["kind"] == UNKNOWN]
    assert unknown and unknown[0]["who"] == "role postgres"
    assert "<insufficient privilege>" in unknown[0]["sample"]


def test_suggest_drafts_a_charter_from_pgbench_traffic(bank: Bank, tmp_path: Path) -> None:
    draft = tmp_path / "charter.yaml"
    url = bank.server.url
    args = [str(bank.server.csv), "--since", bank.since, "--suggest", "--columns-from", url]
    audit(*args, "-o", str(draft))
    charter = model.load(draft)
    owners = {name: e.owner for name, e in charter.entities.items()}
    assert owners["pgbench_accounts"] == "bank_accounts"  # 30 updates against 1
    assert owners["pgbench_history"] == "bank_accounts"  # 30 inserts against 1
    assert owners["pgbench_tellers"] == "bank_tellers"
    text = draft.read_text()
    assert "# CONFLICT: public.pgbench_history is written by 2 contexts" in text
    copy = charter.copies["bank_tellers_pgbench_accounts"]
    assert (copy.context, copy.of, copy.fields) == (
        "bank_tellers",
        "pgbench_accounts",
        ("abalance", "aid", "bid"),
    )
    assert charter.entities["pgbench_accounts"].fields["abalance"].type == "integer"
    assert re.fullmatch(
        r"writes public.pgbench_history: \d+ INSERT", charter.entities["pgbench_history"].why
    )
    check = CliRunner().invoke(main, ["check", "-f", str(draft)])
    assert check.exit_code == 0, check.output
    audit(*args, "-o", str(draft), code=2)  # it never overwrites a file


def test_no_source_or_a_bad_one_is_a_clear_error(bank: Bank, tmp_path: Path) -> None:
    assert "give a server log" in audit("-f", str(bank.charter), code=2)
    text = tmp_path / "not-a-log.csv"
    text.write_text("a,b,c\n")
    out = audit("-f", str(bank.charter), str(text), code=1)
    assert "not a PostgreSQL csvlog line" in out and "Traceback" not in out
    out = audit("-f", str(bank.charter), str(tmp_path / "missing.csv"), code=1)
    assert "cannot read the log" in out
    out = audit("-f", str(bank.charter), str(bank.server.csv), "--map", "x=nowhere", code=1)
    assert "names no context" in out
    out = audit("-f", str(bank.charter), str(bank.server.csv), "--since", "yesterday", code=1)
    assert "--since" in out
    [port] = free_ports(1)
    stopped = f"postgresql://postgres:secret@127.0.0.1:{port}/test"
    out = audit("-f", str(bank.charter), "--stat-statements", stopped, code=1)
    assert f"is PostgreSQL running at 127.0.0.1:{port}?" in out and "secret" not in out


# the parser, statement by statement


def tables(sql: str) -> tuple[set[str], dict[str, set[str]]]:
    accesses = parse.analyse(sql)
    assert accesses is not None
    reads = {str(t) for a in accesses for t in a.reads}
    writes: dict[str, set[str]] = {}
    for a in accesses:
        for t, ops in a.writes.items():
            writes.setdefault(str(t), set()).update(ops)
    return reads, writes


@pytest.mark.parametrize(
    ("sql", "reads", "writes"),
    [
        ("SELECT * FROM a JOIN s.b ON a.id = b.id LEFT JOIN c USING (id)", {"a", "s.b", "c"}, {}),
        ("WITH x AS (SELECT * FROM a) SELECT * FROM x, b", {"a", "b"}, {}),
        (
            "WITH w AS (INSERT INTO a (v) VALUES (1) RETURNING id) SELECT * FROM w",
            set(),
            {"a": {"INSERT"}},
        ),
        (
            "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r) SELECT * FROM r",
            set(),
            {},
        ),
        (
            "SELECT (SELECT max(v) FROM a) FROM b WHERE id IN (SELECT id FROM c)",
            {"a", "b", "c"},
            {},
        ),
        ("SELECT * FROM (SELECT * FROM a) AS sub, LATERAL (SELECT * FROM b) l", {"a", "b"}, {}),
        (
            "INSERT INTO h (v) SELECT v FROM a WHERE EXISTS (SELECT 1 FROM b)",
            {"a", "b"},
            {"h": {"INSERT"}},
        ),
        ("UPDATE a SET v = b.v FROM b WHERE a.id = b.id", {"b"}, {"a": {"UPDATE"}}),
        ("DELETE FROM a USING b WHERE a.id = b.id", {"b"}, {"a": {"DELETE"}}),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v "
            "WHEN NOT MATCHED THEN INSERT (id, v) VALUES (s.id, s.v)",
            {"s"},
            {"t": {"MERGE", "UPDATE", "INSERT"}},
        ),
        ("COPY a (x, y) FROM STDIN", set(), {"a": {"COPY"}}),
        ("COPY (SELECT x FROM a) TO STDOUT", {"a"}, {}),
        ("COPY a TO STDOUT", {"a"}, {}),
        ("SELECT f(x), nextval('s') FROM generate_series(1, 3) g, a", {"a"}, {}),
        ("SELECT v FROM a UNION SELECT v FROM b EXCEPT SELECT v FROM c", {"a", "b", "c"}, {}),
        ("TRUNCATE a, s.b", set(), {"a": {"TRUNCATE"}, "s.b": {"TRUNCATE"}}),
        ("CREATE TABLE n AS SELECT * FROM a", {"a"}, {"n": {"DDL"}}),
        ("ALTER TABLE a ADD COLUMN z int", set(), {"a": {"DDL"}}),
        ("DROP TABLE a, s.b", set(), {"a": {"DDL"}, "s.b": {"DDL"}}),
        (
            "INSERT INTO a (k) VALUES (1) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            set(),
            {"a": {"INSERT"}},
        ),
        ("SELECT * FROM a FOR UPDATE", {"a"}, {}),
        ("BEGIN; UPDATE a SET v = 1; COMMIT", set(), {"a": {"UPDATE"}}),
        ("EXPLAIN SELECT * FROM a", set(), {}),
        ("GRANT SELECT ON a TO someone", set(), {}),
        ("SET search_path = x", set(), {}),
    ],
)
def test_the_tables_a_statement_reads_and_writes(
    sql: str, reads: set[str], writes: dict[str, set[str]]
) -> None:
    assert tables(sql) == (reads, writes)


def test_the_columns_read_follow_aliases() -> None:
    [access] = parse.analyse(
        "SELECT u.name, l.at FROM auth_user u JOIN log l ON l.user_id = u.id WHERE u.active"
    ) or [None]
    assert access is not None
    assert access.columns[Table(None, "auth_user")] == {"name", "id", "active"}
    assert access.columns[Table(None, "log")] == {"at", "user_id"}
    [one] = parse.analyse("SELECT name FROM auth_user WHERE id = 1") or [None]
    assert one is not None and one.columns[Table(None, "auth_user")] == {"name", "id"}


def test_a_statement_the_parser_refuses_is_none() -> None:
    assert parse.analyse("SELEC 1") is None
    assert parse.normalise("SELECT * FROM") is None
    assert parse.normalise("SELECT 1 FROM a WHERE b = 'x'") == "SELECT $1 FROM a WHERE b = $2"


# Django's contrib apps: each app a context, its sessions told apart by application name

DJANGO_CHARTER = """\
charter: 1
name: site
contexts:
  auth: {{team: auth-team, store: "{url}?schema=public"}}
  admin: {{team: admin-team, store: "{url}?schema=public"}}
  sessions: {{team: sessions-team, store: "{url}?schema=public"}}
  contenttypes: {{team: contenttypes-team, store: "{url}?schema=public"}}
entities:
{entities}
"""
OWNED = {
    "auth": (
        "auth_user",
        "auth_group",
        "auth_permission",
        "auth_user_groups",
        "auth_group_permissions",
        "auth_user_user_permissions",
    ),
    "admin": ("django_admin_log",),
    "sessions": ("django_session",),
    "contenttypes": ("django_content_type",),
}


@pytest.fixture(scope="module")
def django_site(server: Audited, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The Django traffic (tests/django_traffic.py) in a database of its own; the charter
    that gives each contrib app its own tables; the moment after the migrations."""
    pytest.importorskip("django")
    folder = tmp_path_factory.mktemp("django")
    server.sql("CREATE DATABASE site")
    url = server.url.rsplit("/", 1)[0] + "/site"
    script = Path(__file__).parent / "django_traffic.py"
    result = subprocess.run(
        [sys.executable, str(script), url],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=folder,
    )
    assert result.returncode == 0, result.stderr
    since = result.stdout.strip().splitlines()[-1]
    server.flushed()
    entities = "\n".join(f"  {t}: {{owner: {app}}}" for app, ts in OWNED.items() for t in ts)
    path = folder / "charter.yaml"
    path.write_text(DJANGO_CHARTER.format(url=url, entities=entities))
    return path, since


def test_django_cross_app_accesses_are_found_and_declared_paths_are_not(
    server: Audited, django_site: tuple[Path, str]
) -> None:
    path, since = django_site
    report = json.loads(audit("-f", str(path), str(server.csv), "--since", since, "--json"))
    got = found(report)
    user, log, types = "public.auth_user", "public.django_admin_log", "public.django_content_type"
    assert {
        (NON_OWNER_WRITE, "sessions", (user,)),  # a login updates auth_user.last_login
        (NON_OWNER_WRITE, "admin", (user,)),  # the admin changes a user
        (CROSS_READ, "admin", (user,)),
        (CROSS_JOIN, "admin", (user, log, types)),  # the admin log, about users
        (CROSS_READ, "sessions", (user,)),  # a request's session loads its user
        (CROSS_READ, "auth", (types,)),  # permissions are named by content type
        (SHARED_TABLE, "", (user,)),
    } <= got
    own = {(app, f"public.{t}") for app, ts in OWNED.items() for t in ts}
    for kind, who, tables_ in got:  # no finding for an app touching its own tables
        if kind in (NON_OWNER_WRITE, CROSS_READ):
            assert (who, tables_[0]) not in own, (kind, who, tables_)
    assert report["unknown"] == 0
    assert not [f for f in report["findings"] if f["kind"] == UNOWNED], "every table declared"


def test_django_suggested_charter_puts_each_apps_tables_with_that_app(
    server: Audited, django_site: tuple[Path, str], tmp_path: Path
) -> None:
    path, since = django_site
    draft = tmp_path / "draft.yaml"
    url = model.load(path).contexts["auth"].store.split("?")[0]
    audit(str(server.json), "--since", since, "--suggest", "--columns-from", url, "-o", str(draft))
    charter = model.load(draft)
    owners = {name: e.owner for name, e in charter.entities.items()}
    assert owners == {t: app for app, ts in OWNED.items() for t in ts}
    assert "# CONFLICT: public.auth_user is written by 3 contexts" in draft.read_text()
    admin_users = charter.copies["admin_auth_user"]
    assert {"username"} <= set(admin_users.fields)
    check = CliRunner().invoke(main, ["check", "-f", str(draft)])
    assert check.exit_code == 0, check.output


# charter apply --audit-only: what enforcement would refuse, logged by pgAudit and refused to none

TRIAL = """\
charter: 1
name: trial
bus: "sqlite:///{folder}/bus.db"
contexts:
  customers: {{team: customer-team, store: "{url}?schema=customers"}}
  orders: {{team: order-team, store: "{url}?schema=orders"}}
entities:
  Customer:
    owner: customers
    fields: {{email: string, name: string}}
  Order:
    owner: orders
    fields: {{customer_id: uuid, total: number}}
copies:
  order_customers: {{in: orders, of: Customer, fields: [name], window: 5s}}
"""

# what the orders service might send, each tagged; the ones enforcement refuses are marked
TRIAL_STATEMENTS = {
    "own-read": ('SELECT total FROM orders."order"', False),
    "own-write": ('UPDATE orders."order" SET total = 1 WHERE false', False),
    "copy-read": ("SELECT name FROM orders.order_customers", False),
    "copy-write": ("UPDATE orders.order_customers SET name = 'x' WHERE false", True),
    "bookkeeping-read": ("SELECT * FROM orders.charter_checkpoint", False),
    "bookkeeping-write": ("DELETE FROM orders.charter_checkpoint WHERE false", True),
    "other-read": ("SELECT email FROM customers.customer", True),
    "other-write": ("UPDATE customers.customer SET name = 'x' WHERE false", True),
    "join": (
        'SELECT o.total, c.name FROM orders."order" o '
        "JOIN customers.customer c ON c.id::text = o.customer_id::text",
        True,
    ),
}


def run_tagged(conn: psycopg.Connection[tuple[object, ...]]) -> set[str]:
    """Send every statement (tagged /* tag */); the tags of those refused."""
    conn.execute("SET charter.guard = 'open'")  # past charter's own trigger: grants are tried
    refused = set()
    for tag, (sql, _) in TRIAL_STATEMENTS.items():
        try:
            conn.execute(f"/* {tag} */ {sql}")  # type: ignore[arg-type]
        except psycopg.errors.InsufficientPrivilege:
            refused.add(tag)
    return refused


def test_audit_only_logs_exactly_what_enforcement_would_refuse(
    server: Audited, tmp_path: Path
) -> None:

    server.sql("CREATE DATABASE trial")
    url = server.url.rsplit("/", 1)[0] + "/trial"
    path = tmp_path / "charter.yaml"
    path.write_text(TRIAL.format(url=url, folder=tmp_path))
    with System.load(path) as system:  # the tables, as the system has them today
        system.store("customers")
        system.store("orders")
    with psycopg.connect(
        url, autocommit=True
    ) as conn:  # the role the orders service uses today: may do all
        conn.execute("CREATE ROLE trial_legacy LOGIN")
        conn.execute("GRANT USAGE ON SCHEMA customers, orders TO trial_legacy")
        conn.execute("GRANT ALL ON ALL TABLES IN SCHEMA customers, orders TO trial_legacy")
    args = ["apply", "-f", str(path), "--audit-only", "--map", "trial_legacy=orders"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "trial_orders_service_audit" in first.output and "pgaudit.role" in first.output
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "nothing to change" in again.output, again.output

    since = server.now()
    time.sleep(0.01)
    legacy = url.replace("postgres@", "trial_legacy@")
    with psycopg.connect(legacy, autocommit=True) as conn:
        assert run_tagged(conn) == set()  # refused to none
    server.flushed()
    logged = {
        seen.text.split("*/")[0].strip("/* ")
        for seen in read_log(server.csv, audit_since(since))
        if seen.source == OBJECT
    }
    expected = {tag for tag, (_, refused) in TRIAL_STATEMENTS.items() if refused}
    assert logged == expected

    report = json.loads(
        audit(
            "-f",
            str(path),
            str(server.csv),
            "--since",
            since,
            "--json",
            "--map",
            "trial_legacy=orders",
        )
    )
    would = {
        (f["tables"][0], tuple(f["ops"]))
        for f in report["findings"]
        if f["kind"] == "would_be_refused"
    }
    assert would == {
        ("customers.customer", ("READ", "WRITE")),
        ("orders.order_customers", ("WRITE",)),
        ("orders.charter_checkpoint", ("WRITE",)),
    }

    # now enforce: charter's own orders role is refused exactly those
    enforce = CliRunner().invoke(main, ["apply", "-f", str(path)])
    assert enforce.exit_code == 0, enforce.output
    with psycopg.connect(url.replace("postgres@", "trial_orders@"), autocommit=True) as conn:
        assert run_tagged(conn) == expected


def test_audit_only_says_when_pgaudit_is_not_loaded(tmp_path: Path) -> None:
    """The shared server has no pgAudit: a clear message, nothing changed."""
    path = tmp_path / "charter.yaml"
    path.write_text(TRIAL.format(url=POSTGRES.split("?")[0], folder=tmp_path))
    result = CliRunner().invoke(main, ["apply", "-f", str(path), "--audit-only"])
    assert result.exit_code == 1
    assert "pgAudit is not loaded" in result.output and "shared_preload_libraries" in result.output


def test_without_pglast_the_command_names_the_extra(tmp_path: Path) -> None:
    refuse = (
        "import sys, importlib.abc\n"
        "class Refuse(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] == 'pglast':\n"
        "            raise ModuleNotFoundError(name=name)\n"
        "sys.meta_path.insert(0, Refuse())\n"
        "sys.argv = ['charter', *sys.argv[1:]]\n"
        "from charter.cli import main\n"
        "main()\n"
    )
    log = tmp_path / "server.csv"
    log.write_text("")
    path = tmp_path / "charter.yaml"
    path.write_text(BANK.format(url="postgresql://127.0.0.1/x"))
    done = subprocess.run(
        [sys.executable, "-c", refuse, "audit", "-f", str(path), str(log)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "pip install 'charter[audit]'" in done.stderr and "Traceback" not in done.stderr
