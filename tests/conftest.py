"""Fixtures shared by the whole suite. Every conformance test takes `shop_file` or
`shop` and so runs once per backend (store + bus combination) in BACKENDS."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import charter
from charter.system import System
from tests.backends import BACKENDS, CONTEXTS, Backend

ROOT = Path(__file__).resolve().parent.parent

SHOP = """\
charter: 1
name: {name}
bus: "{bus}"
retention: 1h
contexts:
  customers: {{team: customer-team, store: "{customers}"}}
  orders:    {{team: order-team,    store: "{orders}"}}
  shipping:  {{team: logistics,     store: "{shipping}"}}
  calendar:  {{team: scheduling,    store: "{calendar}"}}
entities:
  Customer:
    owner: customers
    why: creates accounts; keeps e-mail addresses unique
    fields:
      email:   {{type: string, unique: true}}
      name:    {{type: string}}
      address: {{type: string, required: false}}
      status:  {{type: enum, values: [active, suspended, deleted], default: active}}
      password_hash: {{type: string, private: true}}
  Order:
    owner: orders
    fields:
      customer_id:   {{type: uuid}}
      customer_name: {{type: string}}
      total:         {{type: number}}
  Appointment:
    owner: calendar
    fields:
      user_id:   {{type: uuid}}
      starts_at: {{type: timestamp}}
      ends_at:   {{type: timestamp}}
      status:    {{type: enum, values: [booked, cancelled], default: booked}}
    constraints:
      - no_overlap: {{per: [user_id], range: [starts_at, ends_at], unless: {{status: [cancelled]}}}}
copies:
  order_customers:
    in: orders
    of: Customer
    fields: [name, email]
    window: 5s
    breaks: order confirmations go to an outdated e-mail address
  shipping_customers:
    in: shipping
    of: Customer
    fields: [name, address]
    window: 1m
    breaks: parcels go to an old address
"""


__all__ = ["CONTEXTS", "Backend"]


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.param  # type: ignore[no-any-return]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "processes: needs stores and a bus several processes share")
    config.addinivalue_line("markers", "sql: writes to a store with plain SQL, past charter")
    config.addinivalue_line("markers", "races: needs threads that interleave inside the store")


def _unsupported(request: pytest.FixtureRequest, backend: Backend) -> str:
    """Why this test cannot run on `backend` (empty: it can)."""
    if backend.processes:
        return ""
    if request.node.get_closest_marker("processes"):
        return f"{backend.name}: its stores and bus live in one process"
    if request.node.get_closest_marker("sql"):
        return f"{backend.name}: no SQL, and no way past charter's API"
    if request.node.get_closest_marker("races"):
        return f"{backend.name}: under the GIL its operations never interleave mid-way"
    return ""


@pytest.fixture
def shop_file(tmp_path: Path, backend: Backend, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A charter file for the shop, its stores and bus fresh for this test."""
    reason = _unsupported(request, backend)
    if reason:
        pytest.skip(reason)
    path = tmp_path / "charter.yaml"
    urls = backend.urls(tmp_path)
    path.write_text(SHOP.format(**urls))
    yield path
    backend.cleanup(urls)


@pytest.fixture
def shop(shop_file: Path) -> Iterator[System]:
    system = charter.load(shop_file)
    yield system
    system.close()


def public_state(system: System, entity: str) -> dict[str, tuple[int, dict[str, object]]]:
    """id → (version, public fields) as the owner holds them."""
    spec = system.charter.entities[entity]
    rows = system.store(spec.owner).rows(spec)
    return {r["id"]: (r["version"], {n: r[n] for n in spec.public_names}) for r in rows}


def assert_converged(system: System) -> None:
    """Every copy equals its owner's public state row by row, versions included."""
    for copy in system.charter.copies.values():
        owner = public_state(system, copy.of)
        expected = {i: (v, {f: s[f] for f in copy.fields}) for i, (v, s) in owner.items()}
        rows = system.store(copy.context).copy_rows(copy)
        actual = {r["id"]: (r["version"], {f: r[f] for f in copy.fields}) for r in rows}
        missing = expected.keys() - actual.keys()
        extra = actual.keys() - expected.keys()
        differ = [i for i in expected.keys() & actual.keys() if expected[i] != actual[i]]
        assert not (missing or extra or differ), (
            f"copy {copy.name}: {len(missing)} missing, {len(extra)} extra, "
            f"{len(differ)} differ (e.g. {differ[:1] and (expected[differ[0]], actual[differ[0]])})"
        )


def edit(path: Path, old: str, new: str) -> None:
    """Change a charter file as its maintainer would: the first `old` becomes `new`."""
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def charter_command(*args: str) -> list[str]:
    """The `charter` command as a separate process, from this test's interpreter."""
    return [sys.executable, "-m", "charter.cli", *args]
