"""The `charter` command as a user meets it: status against contracts, history, run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import charter
from charter._sqlite import RUNNER_HEAP_BYTES
from charter.cli import main
from tests.backends import CONTEXTS
from tests.conftest import SHOP, assert_converged, charter_command

KEYS = [
    "copy",
    "of",
    "owner",
    "in",
    "window_s",
    "lag_events",
    "lag_s",
    "last_applied_at",
    "parked",
    "state",
    "lanes",
    "latency_p50_s",
    "latency_p99_s",
    "within_window_1h",
    "within_window_1d",
    "drift",  # the copy's last reconciliation (null: never checked)
]


def create(path: Path, count: int, prefix: str = "c") -> list[str]:
    with charter.load(path) as system, system.context("customers").transaction() as tx:
        return [
            tx.create("Customer", email=f"{prefix}{i}@x", name=f"N{i}", password_hash="h").id
            for i in range(count)
        ]


def status_json(path: Path, *extra: str) -> tuple[int, list[dict[str, object]]]:
    result = CliRunner().invoke(main, ["status", "-f", str(path), "--json", *extra])
    return result.exit_code, json.loads(result.output)


def test_status_goes_from_never_synced_to_ok(shop_file: Path) -> None:
    create(shop_file, 3)
    code, rows = status_json(shop_file)
    assert code == 0
    assert [list(r) for r in rows] == [KEYS, KEYS]
    assert {r["state"] for r in rows} == {"NEVER_SYNCED"}
    assert rows[0]["lag_events"] == 3 and rows[0]["window_s"] == 5.0
    CliRunner().invoke(main, ["run", "--once", "-f", str(shop_file)])
    code, rows = status_json(shop_file)
    assert {r["state"] for r in rows} == {"OK"}
    assert all(r["lag_events"] == 0 and r["last_applied_at"] for r in rows)


def test_a_copy_behind_its_window_is_a_breach_and_strict_exits_3(shop_file: Path) -> None:
    shop_file.write_text(shop_file.read_text().replace("window: 5s", "window: 50ms"))
    create(shop_file, 1)
    CliRunner().invoke(main, ["run", "--once", "-f", str(shop_file)])
    create(shop_file, 2, prefix="late")
    time.sleep(0.2)
    code, rows = status_json(shop_file, "--strict")
    by_copy = {r["copy"]: r for r in rows}
    assert code == 3
    assert by_copy["order_customers"]["state"] == "BREACH"
    assert by_copy["order_customers"]["lag_events"] == 2
    assert float(by_copy["order_customers"]["lag_s"]) >= 0.2  # type: ignore[arg-type]
    assert by_copy["shipping_customers"]["state"] == "OK"  # its window is a minute
    table = CliRunner().invoke(main, ["status", "-f", str(shop_file)])
    assert "BREACH" in table.output and table.exit_code == 0


def test_history_shows_the_owner_record(shop_file: Path) -> None:
    [cid] = create(shop_file, 1)
    with charter.load(shop_file) as system:
        with system.context("customers").transaction(actor="support:grace") as tx:
            tx.update("Customer", cid, name="Changed")
        with system.context("customers").transaction(actor="ada") as tx:
            tx.update("Customer", cid, password_hash="rotated")  # private fields only
    result = CliRunner().invoke(main, ["history", "Customer", cid, "-f", str(shop_file), "--json"])
    assert result.exit_code == 0
    history = json.loads(result.output)
    assert [(h["version"], h["op"], h["changed"], h["actor"]) for h in history] == [
        (1, "created", ["email", "name", "address", "status"], None),
        (2, "updated", ["name"], "support:grace"),
        (3, "updated", [], "ada"),
    ]
    assert [h["private_changed"] for h in history] == [["password_hash"], [], ["password_hash"]]
    public = {"email": "c0@x", "name": "N0", "address": None, "status": "active"}
    assert [h["state"] for h in history] == [
        public,
        {**public, "name": "Changed"},
        {**public, "name": "Changed"},
    ]
    assert "rotated" not in result.output and '"h"' not in result.output
    table = CliRunner().invoke(
        main, ["history", "Customer", cid, "-f", str(shop_file)], terminal_width=200
    )
    assert table.exit_code == 0
    for shown in ("name='N0'", "name: 'N0' → 'Changed'", "support:grace", "password_hash"):
        assert shown in table.output, table.output
    unknown = CliRunner().invoke(main, ["history", "Custmer", cid, "-f", str(shop_file)])
    assert unknown.exit_code != 0 and "did you mean 'Customer'?" in unknown.output


def test_history_of_an_unknown_id_exits_1_with_or_without_json(shop_file: Path) -> None:
    create(shop_file, 1)
    for extra in ([], ["--json"]):
        args = ["history", "Customer", "no-such-id", "-f", str(shop_file), *extra]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, result.output
        assert "no history for Customer no-such-id" in result.output


def test_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    missing = CliRunner().invoke(main, ["status", "-f", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 1
    assert "cannot read the charter" in missing.output and "Traceback" not in missing.output


HEAP_PROBE = """
import sqlite3, sys
from charter.cli import main
if int(sys.argv[2]):  # the application's own bound, set before charter runs
    sqlite3.connect(":memory:").execute(f"PRAGMA soft_heap_limit={sys.argv[2]}")
try:
    main(["run", "--once", "-f", sys.argv[1]])
except SystemExit:
    pass
print(sqlite3.connect(":memory:").execute("PRAGMA soft_heap_limit").fetchone()[0])
"""


def test_run_bounds_sqlite_page_caches_in_its_process(shop_file: Path) -> None:
    """Each SQLite connection may cache 8 MB (the guard's mark) and a runner holds about a
    dozen, so `charter run` grew from 36 to 74 MB over 1,000,000 changes: it bounds
    SQLite's heap for its whole process, unless the process has a bound already."""
    for own, expected in ((0, RUNNER_HEAP_BYTES), (64 << 20, 64 << 20)):
        probe = subprocess.run(
            [sys.executable, "-c", HEAP_PROBE, str(shop_file), str(own)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert probe.returncode == 0, probe.stderr
        assert "drained all contexts" in probe.stdout
        assert int(probe.stdout.split()[-1]) == expected


@pytest.mark.processes
def test_run_stops_cleanly_on_sigterm_and_sigint(shop_file: Path) -> None:
    create(shop_file, 50)
    for sig in (signal.SIGTERM, signal.SIGINT):
        process = subprocess.Popen(
            charter_command("run", "-f", str(shop_file)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        assert "running all contexts" in process.stdout.readline()
        process.send_signal(sig)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert "stopped cleanly" in out
    with charter.load(shop_file) as system:
        assert_converged(system)


@pytest.mark.processes
def test_processes_share_the_bus_file(shop_file: Path) -> None:
    owner = subprocess.Popen(charter_command("run", "-f", str(shop_file), "--context", "customers"))
    copies = subprocess.Popen(
        charter_command("run", "-f", str(shop_file), "--context", "orders", "--context", "shipping")
    )
    try:
        create(shop_file, 200)
        deadline = time.monotonic() + 30
        with charter.load(shop_file) as system:
            while time.monotonic() < deadline:
                if all(s.synced for s in charter.status(system)):
                    break
                time.sleep(0.05)
            assert_converged(system)
    finally:
        for process in (owner, copies):
            process.terminate()
            assert process.wait(timeout=30) == 0


def test_check_never_prints_a_password(tmp_path: Path) -> None:
    path = tmp_path / "charter.yaml"
    text = SHOP.format(
        name="shop",
        bus="nats://relay:s3cret@127.0.0.1:4222",
        **{ctx: f"postgresql://app:hunter2@127.0.0.1/test?schema={ctx}" for ctx in CONTEXTS},
    )
    path.write_text(text)
    result = CliRunner().invoke(main, ["check", "-f", str(path)])
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output and "hunter2" not in result.output
    assert "relay:***@" in result.output and "app:***@" in result.output


def test_a_command_on_a_memory_charter_says_it_sees_an_empty_system(tmp_path: Path) -> None:
    """memory:// lives in one process: a separate `charter status` cannot see it, and says
    so instead of showing an empty system as if it were the truth."""
    path = tmp_path / "charter.yaml"
    path.write_text(
        "charter: 1\nname: t\nbus: memory://t/bus\ncontexts:\n"
        "  a: {team: ta, store: memory://t/a}\n  b: {team: tb, store: memory://t/b}\n"
        "entities:\n  Thing:\n    owner: a\n    fields: {name: {type: string}}\n"
        "copies:\n  b_things: {in: b, of: Thing, fields: [name], window: 5s}\n"
    )
    done = subprocess.run(
        charter_command("status", "-f", str(path)), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr
    assert "memory://" in done.stderr and "empty system" in done.stderr


LIBRARY = """\
charter: 1
name: library
bus: {bus}
contexts:
  accounts: {{team: accounts-team, store: "sqlite:///.charter/accounts.db"}}
  lending:  {{team: lending-team,  store: "sqlite:///.charter/lending.db"}}
entities:
  Member:
    owner: accounts
    fields: {{email: {{type: string}}}}
    commands:
      ChangeEmail: {{senders: [lending], fields: [email]}}
sagas:
  LendBook: {{in: lending}}
copies:
  lending_members: {{in: lending, of: Member, fields: [email], window: 5s}}
"""

# The console script `pip install` writes: Python puts its own folder first on the path.
CONSOLE_SCRIPT = "import sys\nfrom charter.cli import main\nsys.exit(main())\n"


def test_run_finds_the_handlers_module_in_the_current_directory(tmp_path: Path) -> None:
    """`charter run --handlers myservice:register` from the service's folder, as a console
    script (not `python -m`, which puts the current directory on the path by itself)."""
    service, scripts = tmp_path / "service", tmp_path / "bin"
    service.mkdir()
    scripts.mkdir()
    (service / "charter.yaml").write_text(LIBRARY.format(bus="sqlite:///.charter/bus.db"))
    (service / "myservice.py").write_text(
        "from pathlib import Path\n\n"
        "def register(system):\n"
        "    Path('registered').write_text(system.charter.name)\n"
    )
    (scripts / "charter").write_text(CONSOLE_SCRIPT)
    done = subprocess.run(
        [
            sys.executable,
            str(scripts / "charter"),
            "run",
            "--once",
            "--handlers",
            "myservice:register",
        ],
        cwd=service,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (service / "registered").read_text() == "library"


def test_apply_says_what_it_enforces_and_counts_the_same_dry(tmp_path: Path) -> None:
    path = tmp_path / "charter.yaml"
    path.write_text(LIBRARY.format(bus="sqlite:///.charter/bus.db"))
    embedded = CliRunner().invoke(main, ["apply", "-f", str(path)])
    assert embedded.exit_code == 0, embedded.output
    assert "no store is PostgreSQL and the bus is not NATS" in embedded.output
    path.write_text(LIBRARY.format(bus="nats://127.0.0.1:4222"))  # apply only writes a file
    dry = CliRunner().invoke(main, ["apply", "-f", str(path), "--dry-run"])
    assert dry.exit_code == 0 and dry.output.endswith("would change 1 thing\n"), dry.output
    done = CliRunner().invoke(main, ["apply", "-f", str(path)])
    assert done.exit_code == 0 and done.output.endswith("changed 1 thing\n"), done.output
    again = CliRunner().invoke(main, ["apply", "-f", str(path), "--dry-run"])
    assert again.output.endswith("nothing to change\n"), again.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["Membr", "--status"], "no entity 'Membr' in the charter; did you mean 'Member'?"),
        (["Book", "--status"], "no entity 'Book' in the charter; its entities: Member"),
        (["LendBook", "--to", "accounts", "--dry-run"], "LendBook is the state of saga LendBook"),
        (["Member", "--to", "x", "--dry-run"], "no context 'x' in the charter; its contexts:"),
        (["Member", "--to", "lendin", "--dry-run"], "did you mean 'lending'?"),
    ],
)
def test_transfer_names_what_the_charter_has(tmp_path: Path, args: list[str], words: str) -> None:
    path = tmp_path / "charter.yaml"
    path.write_text(LIBRARY.format(bus="sqlite:///.charter/bus.db"))
    result = CliRunner().invoke(main, ["transfer", "-f", str(path), *args])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert words in result.output, result.output


def test_status_counts_what_a_partitions_new_owner_has_not_relayed(tmp_path: Path) -> None:
    """After `charter transfer --partitions`, both contexts own Member: an event still in
    the new owner's outbox is lag as much as one in the old owner's (G5: status never says
    less lag than there is)."""
    path = tmp_path / "charter.yaml"
    text = LIBRARY.format(bus="sqlite:///.charter/bus.db").replace(
        "contexts:\n",
        'contexts:\n  membership: {team: membership-team, store: "sqlite:///.charter/m.db"}\n',
    )
    path.write_text(text)
    parts = [arg for p in range(8) for arg in ("--partitions", str(p))]
    with charter.load(path) as system, charter.Runner(system):  # the copy drains the move
        moved = CliRunner().invoke(
            main, ["transfer", "-f", str(path), "Member", "--to", "membership", *parts]
        )
        assert moved.exit_code == 0, moved.output
    with charter.load(path) as system:  # the charter that records the move; nothing runs
        for context in ("accounts", "membership"):
            with system.context(context).transaction() as tx:
                tx.create("Member", email=f"{context}@example.org")
    code, (row,) = status_json(path)
    assert code == 0 and row["lag_events"] == 2, row


def test_an_unknown_context_is_named_with_the_contexts_there_are(tmp_path: Path) -> None:
    path = tmp_path / "charter.yaml"
    path.write_text(LIBRARY.format(bus="sqlite:///.charter/bus.db"))
    for command in (["status"], ["parked"], ["run", "--once"]):
        result = CliRunner().invoke(main, [*command, "-f", str(path), "--context", "nope"])
        assert result.exit_code == 1, result.output
        assert "no context 'nope' in the charter; its contexts: accounts, lending" in (
            result.output
        ), result.output


def test_check_says_there_are_no_copies_instead_of_an_empty_table(tmp_path: Path) -> None:
    path = tmp_path / "charter.yaml"
    path.write_text(LIBRARY.format(bus="sqlite:///.charter/bus.db").split("copies:")[0])
    result = CliRunner().invoke(main, ["check", "-f", str(path), "--offline"])
    assert result.exit_code == 0, result.output
    assert "copies: none" in result.output and "┃ copy" not in result.output


@pytest.mark.parametrize(
    "command",
    [
        ["alerts"],
        ["map", "--format", "mermaid", "--no-status"],
        ["export", "asyncapi"],
        ["codegen", "--context", "lending"],
    ],
)
def test_an_output_file_that_cannot_be_written_is_named(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "charter.yaml"
    path.write_text(LIBRARY.format(bus="sqlite:///.charter/bus.db"))
    target = tmp_path / "missing" / "out.txt"
    result = CliRunner().invoke(main, [*command, "-f", str(path), "-o", str(target)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert f"Could not open file '{target}'" in result.output, result.output
