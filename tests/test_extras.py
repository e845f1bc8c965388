"""`pip install charter` installs neither psycopg nor nats-py (they are the extras
`charter[postgres]`, `charter[nats]`, `charter[all]`). Here each command runs in a
process whose imports of psycopg, psycopg_pool and nats fail as if they were not installed:
a SQLite or memory charter works and never tries them; a charter that needs one gets a
message naming the extra, exit 1, no traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.backends import NATS, POSTGRES
from tests.conftest import SHOP

DRIVERS = ("psycopg", "psycopg_pool", "nats")
OPTIONAL = ("opentelemetry", "starlette")  # charter[otel], charter[web]


def refusing(modules: tuple[str, ...]) -> str:
    """A script that runs the rest of its command line as `charter …` (or, after `-c`, as
    Python code) with `modules` refused; it prints which of them anything tried to import."""
    return textwrap.dedent(
        f"""
        import atexit, importlib.abc, sys

        tried = []

        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in {modules!r}:
                    tried.append(name)
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, Refuse())
        atexit.register(lambda: print("drivers tried:", sorted(set(tried)), file=sys.stderr))
        if sys.argv[1:2] == ["-c"]:
            exec(sys.argv[2])
        else:
            sys.argv = ["charter", *sys.argv[1:]]
            from charter.cli import main
            main()
        """
    )


WITHOUT_DRIVERS = refusing(DRIVERS)


def without_drivers(
    *args: str, cwd: Path, script: str = WITHOUT_DRIVERS
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def shop(folder: Path, store: str, bus: str) -> Path:
    """The shop charter with every store at `store` (a format taking the context's name)."""
    path = folder / "charter.yaml"
    stores = {name: store.format(name=name) for name in ("customers", "orders")}
    stores |= {name: store.format(name=name) for name in ("shipping", "calendar")}
    path.write_text(SHOP.format(name="extras", bus=bus, **stores))
    return path


def tried(result: subprocess.CompletedProcess[str]) -> str:
    return result.stderr.rpartition("drivers tried: ")[2].strip()


def test_nothing_imports_a_driver_when_charter_is_imported(tmp_path: Path) -> None:
    code = (
        "import charter, charter.cli, charter.boundary, charter.urls, charter.demo, "
        "charter.testing, charter.sim, charter.tables"
    )
    result = without_drivers("-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert tried(result) == "[]"


def test_a_sqlite_charter_runs_without_the_drivers(tmp_path: Path) -> None:
    shop(tmp_path, "sqlite:///.charter/{name}.db", "sqlite:///.charter/bus.db")
    write = (
        "import charter\n"
        "with charter.load('charter.yaml') as system:\n"
        "    with system.context('customers').transaction() as tx:\n"
        "        tx.create('Customer', email='a@x.org', name='A', password_hash='h')\n"
    )
    assert without_drivers("-c", write, cwd=tmp_path).returncode == 0
    for command in (["check"], ["run", "--once"], ["status", "--strict", "--json"]):
        result = without_drivers(*command, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert tried(result) == "[]", command
    assert '"order_customers"' in result.stdout and '"OK"' in result.stdout


def test_a_memory_charter_runs_without_the_drivers(tmp_path: Path) -> None:
    shop(tmp_path, "memory://{name}", "memory://bus")
    code = (
        "import charter\n"
        "with charter.load('charter.yaml') as system:\n"
        "    with system.context('customers').transaction() as tx:\n"
        "        tx.create('Customer', email='a@x.org', name='A', password_hash='h')\n"
        "    charter.Runner(system).drain()\n"
        "    assert len(system.context('orders').copy('order_customers')) == 1\n"
    )
    result = without_drivers("-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert tried(result) == "[]"


def test_the_demo_runs_without_the_drivers(tmp_path: Path) -> None:
    result = without_drivers("demo", "--changes", "20", "--keep", str(tmp_path / "d"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert tried(result) == "[]"


@pytest.mark.parametrize(
    ("store", "bus", "extra"),
    [
        (POSTGRES + "?schema=extras_{name}", "sqlite:///.charter/bus.db", "postgres"),
        ("sqlite:///.charter/{name}.db", NATS, "nats"),
    ],
    ids=["postgres", "nats"],
)
@pytest.mark.parametrize(
    "command",
    [["check"], ["run", "--once"], ["status"], ["apply", "--dry-run"]],
    ids=" ".join,
)
def test_a_charter_needing_a_missing_driver_names_the_extra(
    tmp_path: Path, store: str, bus: str, extra: str, command: list[str]
) -> None:
    shop(tmp_path, store, bus)
    result = without_drivers(*command, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"pip install 'charter[{extra}]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_offline_needs_no_driver(tmp_path: Path) -> None:
    shop(tmp_path, POSTGRES + "?schema=extras_{name}", NATS)
    result = without_drivers("check", "--offline", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout


def test_the_api_raises_a_charter_error_naming_the_extra(tmp_path: Path) -> None:
    shop(tmp_path, POSTGRES + "?schema=extras_{name}", "sqlite:///.charter/bus.db")
    code = (
        "import charter\n"
        "from charter.errors import MissingExtraError\n"
        "with charter.load('charter.yaml') as system:\n"
        "    try:\n"
        "        system.context('customers').get('Customer', 'x')\n"
        "    except MissingExtraError as exc:\n"
        "        assert isinstance(exc, charter.Error) and exc.extra == 'postgres', exc\n"
        "        print(exc)\n"
        "    else:\n"
        "        raise SystemExit('no error')\n"
    )
    result = without_drivers("-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "context 'customers'" in result.stdout
    assert "needs the psycopg package" in result.stdout


def test_without_opentelemetry_and_starlette_nothing_changes(tmp_path: Path) -> None:
    """charter[otel] and charter[web] not installed: `import charter` never looks for
    them, a change made and applied carries no trace context, and only charter.asgi says
    which extra it needs."""
    script = refusing(OPTIONAL)
    imported = without_drivers("-c", "import charter, charter.cli", cwd=tmp_path, script=script)
    assert imported.returncode == 0, imported.stderr
    assert tried(imported) == "[]"
    shop(tmp_path, "sqlite:///.charter/{name}.db", "sqlite:///.charter/bus.db")
    code = (
        "import charter, orjson\n"
        "from charter.errors import MissingExtraError\n"
        "with charter.load('charter.yaml') as system:\n"
        "    charter.Runner(system).drain()\n"
        "    with system.context('customers').transaction() as tx:\n"
        "        ada = tx.create('Customer', email='a@x.org', name='A', password_hash='h')\n"
        "    charter.Runner(system).drain()\n"
        "    assert system.context('orders').copy('order_customers').wait_for(ada.token)\n"
        "    (row,) = system.store('customers').history('Customer', ada.id)\n"
        "    assert 'traceparent' not in orjson.loads(row.body)\n"
        "try:\n"
        "    import charter.asgi\n"
        "except MissingExtraError as exc:\n"
        "    assert exc.extra == 'web', exc\n"
        "    print(exc)\n"
    )
    result = without_drivers("-c", code, cwd=tmp_path, script=script)
    assert result.returncode == 0, result.stderr
    assert "pip install 'charter[web]'" in result.stdout
    assert tried(result) == "['opentelemetry', 'starlette']"


@pytest.mark.parametrize("missing", ["starlette", "uvicorn"])
def test_charter_serve_without_the_web_extra_says_what_to_install(
    tmp_path: Path, missing: str
) -> None:
    shop(tmp_path, "sqlite:///.charter/{name}.db", "sqlite:///.charter/bus.db")
    result = without_drivers("serve", "--port", "0", cwd=tmp_path, script=refusing((missing,)))
    assert result.returncode == 1, result.stderr
    assert "pip install 'charter[web]'" in result.stderr and missing in result.stderr
    assert "Traceback" not in result.stderr
