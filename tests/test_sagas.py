"""Sagas (issue 12 point 2): the checkout of examples/checkout, each step a command to its
owner with its compensation. In one process on every backend (completed, compensated in
reverse order, a semantic lock that parks, retries and the timeout while an owner is down,
a parked run resumed, `charter sagas`); across processes on SQLite and on PostgreSQL +
NATS, the orchestrator killed with SIGKILL at every step boundary, inside steps, and at
random moments: every run ends completed or compensated, the stock is never oversold, no
payment without its order, nothing half done."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

import charter
from charter.cli import main
from charter.commands import Request
from charter.sagas import Run, Saga, Step
from charter.system import System
from examples.checkout import handlers
from examples.checkout.handlers import CHECKOUT
from tests.backends import NATS, POSTGRES
from tests.conftest import charter_command
from tests.saga_setup import CRASH
from tests.workers import WorkerProcess

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "checkout" / "charter.yaml"
CONTEXTS = ("orders", "inventory", "payments")


@dataclass
class Setup:
    path: Path
    name: str
    prefix: str
    kind: str

    def cleanup(self) -> None:
        if self.kind == "postgres+nats":
            with psycopg.connect(POSTGRES, autocommit=True) as conn:
                for ctx in CONTEXTS:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{self.prefix}_{ctx}" CASCADE')
            from charter.buses.nats import NatsBus

            NatsBus.delete_stream(NATS, self.name)


def checkout_file(folder: Path, kind: str) -> Setup:
    """The example's charter with stores and a bus of this test's own."""
    text = EXAMPLE.read_text()
    prefix = "s" + uuid.uuid4().hex[:10]
    name = "checkout" if kind != "postgres+nats" else f"checkout_{prefix}"
    for ctx in CONTEXTS:
        url = {
            "sqlite": f"sqlite:///{folder}/{ctx}.db",
            "memory": f"memory://{prefix}/{ctx}",
            "postgres+nats": f"{POSTGRES}?schema={prefix}_{ctx}",
        }[kind]
        text = text.replace(f'"sqlite:///.charter/{ctx}.db"', f'"{url}"')
    bus = {
        "sqlite": f"sqlite:///{folder}/bus.db",
        "memory": f"memory://{prefix}/bus",
        "postgres+nats": NATS,
    }[kind]
    text = text.replace("bus: sqlite:///.charter/bus.db", f"bus: {bus}")
    text = text.replace("name: checkout", f"name: {name}")
    path = folder / "charter.yaml"
    path.write_text(text)
    return Setup(path, name, prefix, kind)


@pytest.fixture(params=["sqlite", "postgres+nats", "memory"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    made = checkout_file(tmp_path, request.param)
    yield made
    made.cleanup()


@pytest.fixture(params=["sqlite", "postgres+nats"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    """Stores and a bus that several processes share."""
    made = checkout_file(tmp_path, request.param)
    yield made
    made.cleanup()


@pytest.fixture
def shop(setup: Setup) -> Iterator[System]:
    system = charter.load(setup.path)
    handlers.register(system)
    CHECKOUT.at = None
    yield system
    CHECKOUT.at = None
    system.close()


def stock(system: System, available: int) -> str:
    with system.context("inventory").transaction() as tx:
        return tx.create("Stock", sku=f"lamp-{uuid.uuid4().hex[:8]}", available=available).id


def logged(system: System) -> list[str]:
    """Every command the owners apply or refuse, in order (each handler wrapped)."""
    seen: list[str] = []
    for context, table in handlers.HANDLERS.items():
        for command, handler in table.items():

            def wrapped(
                tx: charter.Transaction,
                cmd: Request,
                handler: object = handler,
                name: str = command,
            ) -> object:
                seen.append(name)
                return handler(tx, cmd)  # type: ignore[operator]

            system.context(context).handles(command)(wrapped)
    return seen


def test_a_checkout_completes_and_its_history_is_the_orchestrators_outbox(shop: System) -> None:
    lamp = stock(shop, 3)
    seen = logged(shop)
    with charter.Runner(shop):
        run_id = CHECKOUT.start(shop, customer="ada", total=40.0, stock=lamp, quantity=2)
        run = CHECKOUT.wait(shop, run_id)
    assert run.status == "completed", run.reason
    assert seen == ["PlaceOrder", "ReserveStock", "TakePayment", "ConfirmOrder"]
    order = shop.context("orders").get("Order", run.results["PlaceOrder"]["record"]["id"])
    assert order is not None and order.status == "confirmed"
    left = shop.context("inventory").get("Stock", lamp)
    assert left is not None and left.available == 1
    (payment,) = shop.context("payments").filter("Payment")
    assert payment.order_id == order.id and payment.status == "taken"
    # each change of the run is an event in orders' outbox: its history
    history = [
        row
        for row in shop.store("orders").outbox(0, 1000)
        if row.entity == "Checkout" and row.entity_id == run_id
    ]
    assert [h.version for h in history] == [1, 2, 3, 4, 5]
    assert run.version == 5


def test_a_run_started_in_an_owner_transaction_starts_only_if_it_commits(shop: System) -> None:
    lamp = stock(shop, 3)
    orders = shop.context("orders")
    with pytest.raises(RuntimeError), orders.transaction() as tx:
        CHECKOUT.start(tx, customer="ada", total=40.0, stock=lamp, quantity=1)
        raise RuntimeError("the rest of the transaction fails")
    assert orders.filter("Checkout") == []
    with orders.transaction() as tx:
        run_id = CHECKOUT.start(tx, customer="ada", total=40.0, stock=lamp, quantity=1)
    with charter.Runner(shop):
        assert CHECKOUT.wait(shop, run_id).status == "completed"


def test_a_declined_payment_is_compensated_in_reverse_order(shop: System) -> None:
    lamp = stock(shop, 3)
    seen = logged(shop)
    with charter.Runner(shop):
        run_id = CHECKOUT.start(shop, customer="grace", total=250.0, stock=lamp, quantity=2)
        run = CHECKOUT.wait(shop, run_id)
    assert run.status == "compensated"
    assert run.reason == "step TakePayment refused: ConstraintError: card declined for 250.00 EUR"
    assert seen == ["PlaceOrder", "ReserveStock", "TakePayment", "ReleaseStock", "CancelOrder"]
    (order,) = shop.context("orders").filter("Order")
    assert order.status == "cancelled"
    left = shop.context("inventory").get("Stock", lamp)
    assert left is not None and left.available == 3
    assert shop.context("payments").filter("Payment") == []


def test_the_inventory_never_oversells(shop: System) -> None:
    lamp = stock(shop, 5)
    with charter.Runner(shop):
        runs = [
            CHECKOUT.start(shop, customer=f"c{n}", total=10.0, stock=lamp, quantity=2)
            for n in range(6)
        ]
        ended = [CHECKOUT.wait(shop, r) for r in runs]
    assert sorted(r.status for r in ended) == ["compensated"] * 4 + ["completed"] * 2
    refused = [r.reason for r in ended if r.status == "compensated"]
    assert all(
        r and r.startswith("step ReserveStock refused: ConstraintError: only") for r in refused
    )
    left = shop.context("inventory").get("Stock", lamp)
    assert left is not None and left.available == 1


def test_a_compensation_whose_record_changed_parks_the_run(shop: System) -> None:
    """The semantic lock: CancelOrder names the version PlaceOrder left. Someone changes the
    order while the run is at the payment: the compensation is refused and the run parks
    with the owner's reason, saying the record changed; `charter sagas` shows it."""
    lamp = stock(shop, 3)

    def meddle(point: str, runs: list[Run]) -> None:
        for run in runs:
            if point == "recorded" and run.step_name() == "TakePayment":
                order_id = run.results["PlaceOrder"]["record"]["id"]
                with shop.context("orders").transaction() as tx:
                    tx.update("Order", order_id, total=999.0)

    CHECKOUT.at = meddle
    with charter.Runner(shop):
        run_id = CHECKOUT.start(shop, customer="ada", total=250.0, stock=lamp, quantity=1)
        run = CHECKOUT.wait(shop, run_id)
    assert run.status == "parked"
    assert run.reason is not None
    assert run.reason.startswith(
        "compensation CancelOrder of step PlaceOrder failed: ConflictError"
    )
    assert "someone else wrote it meanwhile" in run.reason
    left = shop.context("inventory").get("Stock", lamp)
    assert left is not None and left.available == 3, "the compensations before it did run"
    if not str(shop.charter.contexts["orders"].store).startswith("memory://"):
        out = CliRunner().invoke(main, ["sagas", "-f", str(shop.charter.path), "--json"])
        assert out.exit_code == 0, out.output
        (listed,) = json.loads(out.output)
        assert listed["status"] == "parked" and listed["step"] == "PlaceOrder"
        assert listed["reason"] == run.reason
        strict = CliRunner().invoke(main, ["sagas", "-f", str(shop.charter.path), "--strict"])
        assert strict.exit_code == 3 and "parked" in strict.output


def test_an_owner_down_is_retried_then_the_timeout_compensates_once_its_outcome_is_known(
    shop: System,
) -> None:
    """Payments is down: TakePayment is tried again and again (backoff) until the run's
    timeout; it then compensates, but first learns TakePayment's outcome, since the command
    waits on the bus: payments comes back, takes the payment, and the run refunds it,
    releases the stock and cancels the order."""
    lamp = stock(shop, 3)
    quick = Saga("Checkout", CHECKOUT.steps, timeout=1.0, step_timeout=0.2, backoff=(0.05, 0.2))
    shop.sagas["orders"]["Checkout"] = quick
    with charter.Runner(shop, ["orders", "inventory"]):
        run_id = quick.start(shop, customer="ada", total=40.0, stock=lamp, quantity=1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            run = quick.run(shop, run_id)
            assert run is not None
            if run.status == "compensating":
                break
            time.sleep(0.02)
        assert run.status == "compensating" and run.unsure == 2, run
        assert run.reason == "timed out after 1 s at step TakePayment (no answer from its owner)"
        with charter.Runner(shop, ["payments"]):
            run = quick.wait(shop, run_id)
    assert run.status == "compensated", run.reason
    (payment,) = shop.context("payments").filter("Payment")
    assert payment.status == "refunded"
    (order,) = shop.context("orders").filter("Order")
    assert order.status == "cancelled"
    left = shop.context("inventory").get("Stock", lamp)
    assert left is not None and left.available == 3


def test_a_compensation_without_an_answer_parks_then_resumes(shop: System, setup: Setup) -> None:
    """Inventory goes down after the reservation: ReleaseStock gets no answer in the
    saga's tries and the run parks, saying so; once inventory is back, `charter sagas
    --resume` sends it on, and it ends compensated."""
    if setup.kind == "memory":
        pytest.skip("memory: `charter sagas --resume` runs in a process of its own")
    lamp = stock(shop, 3)
    quick = Saga("Checkout", CHECKOUT.steps, step_timeout=0.2, backoff=(0.05, 0.1), tries=3)
    shop.sagas["orders"]["Checkout"] = quick
    with charter.Runner(shop, ["orders", "inventory"]) as inventory_up:
        run_id = quick.start(shop, customer="ada", total=250.0, stock=lamp, quantity=1)
        deadline = time.monotonic() + 20
        while (run := quick.run(shop, run_id)) and run.step < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        inventory_up.stop()
    with charter.Runner(shop, ["orders", "payments"]):
        run = quick.wait(shop, run_id)
    assert run.status == "parked"
    assert run.reason is not None and "compensation ReleaseStock: no answer" in run.reason
    out = CliRunner().invoke(main, ["sagas", "-f", str(setup.path), "--resume", run_id])
    assert out.exit_code == 0 and "compensating again" in out.output, out.output
    with charter.Runner(shop):
        run = quick.wait(shop, run_id)
    assert run.status == "compensated", run.reason
    left = shop.context("inventory").get("Stock", lamp)
    assert left is not None and left.available == 3


def test_a_refused_compensation_parks_then_resumes_once_mended(shop: System, setup: Setup) -> None:
    """ReleaseStock is refused (the shelf locked): the run parks with the owner's reason.
    Once mended, `charter sagas --resume` sends the undo again under a key of its own (the
    refused key would answer the refusal again), and the run ends compensated, the stock
    released once."""
    if setup.kind == "memory":
        pytest.skip("memory: `charter sagas --resume` runs in a process of its own")
    lamp = stock(shop, 3)
    locked = [True]
    release = handlers.HANDLERS["inventory"]["ReleaseStock"]

    def guarded(tx: charter.Transaction, cmd: Request) -> object:
        if locked[0]:
            raise charter.ConstraintError("the shelf is locked")
        return release(tx, cmd)

    shop.context("inventory").handles("ReleaseStock")(guarded)
    with charter.Runner(shop):
        run_id = CHECKOUT.start(shop, customer="ada", total=250.0, stock=lamp, quantity=2)
        run = CHECKOUT.wait(shop, run_id)
        assert run.status == "parked", run.reason
        assert run.reason == (
            "compensation ReleaseStock of step ReserveStock failed: ConstraintError: the shelf "
            "is locked"
        )
        locked[0] = False
        out = CliRunner().invoke(main, ["sagas", "-f", str(setup.path), "--resume", run_id])
        assert out.exit_code == 0 and "compensating again" in out.output, out.output
        run = CHECKOUT.wait(shop, run_id)
    assert run.status == "compensated", run.reason
    assert run.reason == "resumed after: compensation ReleaseStock of step ReserveStock " + (
        "failed: ConstraintError: the shelf is locked"
    )
    left = shop.context("inventory").get("Stock", lamp)
    assert left is not None and left.available == 3
    (order,) = shop.context("orders").filter("Order")
    assert order.status == "cancelled"


def test_a_saga_is_checked_against_the_charter(shop: System) -> None:
    with pytest.raises(
        charter.ValidationError, match="no saga 'Chekout' in the charter; did you mean 'Checkout'"
    ):
        Saga("Chekout", CHECKOUT.steps).register(shop)
    with pytest.raises(charter.ValidationError, match="no command 'ReserveStok'"):
        Saga("Checkout", [Step("ReserveStok", lambda s: {})]).register(shop)
    with pytest.raises(charter.ValidationError, match="input must be JSON"):
        CHECKOUT.start(shop, customer=object())
    with pytest.raises(charter.ValidationError, match="runs in 'orders', not in 'payments'"):
        CHECKOUT.start(shop.context("payments"), customer="x")


def test_charter_check_lists_the_sagas(setup: Setup) -> None:
    if setup.kind == "memory":
        pytest.skip("memory: charter check runs in a process of its own")
    out = CliRunner().invoke(main, ["check", "-f", str(setup.path)])
    assert out.exit_code == 0, out.output
    assert "sagas" in out.output and "records of Checkout in orders" in out.output


def test_charter_sagas_says_what_is_wrong_without_a_traceback(shop: System, setup: Setup) -> None:
    if setup.kind == "memory":
        pytest.skip("memory: charter sagas runs in a process of its own")
    lamp = stock(shop, 3)
    with charter.Runner(shop):
        done = CHECKOUT.wait(
            shop, CHECKOUT.start(shop, customer="a", total=1.0, stock=lamp, quantity=1)
        )
    for args, said in [
        (["--saga", "Chekout"], "no saga 'Chekout' in the charter (its sagas: Checkout)"),
        (["--resume", "nope"], "no run nope in any saga of the charter"),
        (["--resume", done.id], f"run {done.id} of saga Checkout is completed, not parked"),
    ]:
        out = CliRunner().invoke(main, ["sagas", "-f", str(setup.path), *args])
        assert out.exit_code == 1, out.output
        assert said in " ".join(out.output.split()) and "Traceback" not in out.output


def test_a_saga_section_with_mistakes_is_a_charter_problem(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace(
        "Checkout: {in: orders, why:", "Order: {in: ordres, colour: red, why:"
    )
    path = tmp_path / "charter.yaml"
    path.write_text(text)
    with pytest.raises(charter.CharterError) as caught:
        charter.load(path)
    said = str(caught.value)
    assert "saga 'Order': unknown key 'colour'" in said
    assert "saga 'Order' is orchestrated by unknown context 'ordres'" in said
    assert "did you mean 'orders'" in said


# -- across processes, with the orchestrator killed ---------------------------------------


def _owners(setup: Setup) -> WorkerProcess:
    args = ("run", "-f", str(setup.path), "--context", "inventory", "--context", "payments")
    args += ("--concurrency", "4")
    process = WorkerProcess(charter_command(*args, "--handlers", "tests.saga_setup:register"))
    process.wait_for(lambda line: line.startswith("running"))
    return process


def _orchestrator(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, crash: str | None
) -> WorkerProcess:
    if crash is None:
        monkeypatch.delenv(CRASH, raising=False)
    else:
        monkeypatch.setenv(CRASH, crash)
    args = ("run", "-f", str(setup.path), "--context", "orders", "--concurrency", "2")
    return WorkerProcess(charter_command(*args, "--handlers", "tests.saga_setup:register"))


def _runs(system: System) -> list[Run]:
    return [Run.from_record(r) for r in system.context("orders").filter("Checkout")]


def _start(system: System, lamp: str, rng: random.Random, count: int) -> None:
    for n in range(count):
        total = rng.choice([20.0, 45.0, 80.0, 150.0])  # 150: declined
        CHECKOUT.start(
            system, customer=f"c{n}", total=total, stock=lamp, quantity=rng.randint(1, 3)
        )


def _crashed(process: WorkerProcess, system: System, timeout: float = 60) -> bool:
    """Whether the orchestrator killed itself (True) before every run had ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(line.startswith("crashing") for line in process.lines):
            return True
        if process.process.poll() is not None:
            raise AssertionError(f"the orchestrator ended:\n{process.output}")
        if _all_ended(system):
            return False
        time.sleep(0.05)
    raise AssertionError(f"no progress in {timeout:g} s:\n{process.output}")


def _all_ended(system: System) -> bool:
    return all(r.ended for r in _runs(system))


@pytest.mark.processes
def test_the_orchestrator_killed_at_every_step_boundary_and_inside_steps(
    shared: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owners run in one process; the orchestrator (orders: its handlers and the
    saga, two orchestrators sharing the runs) in another, which kills itself with SIGKILL
    at the first time it reaches a point: its commands sent ("sent"), their answers in
    hand ("answered"), the new states committed ("recorded", a step boundary), and is
    started again, until every
    run has ended; then it is killed from outside at random moments. Checked at the end:
    every run completed or compensated, the stock never below zero and exactly what the
    completed runs took, one order per run, a payment taken for each completed run and for
    no other, nothing half done."""
    system = charter.load(shared.path)
    rng = random.Random(12)
    owners = _owners(shared)
    kills = 0
    try:
        lamp = stock(system, 12)
        for point, nth in (("recorded", "1"), ("sent", "1"), ("answered", "1")):
            _start(system, lamp, rng, 6)
            for _ in range(30):
                process = _orchestrator(shared, monkeypatch, f"{point}:{nth}")
                if _crashed(process, system):
                    assert process.finish() == -9, process.output
                    kills += 1
                else:
                    process.kill()
                if _all_ended(system):
                    break
            assert _all_ended(system), f"{point}: runs left active"
        _start(system, lamp, rng, 10)
        for _ in range(8):  # killed from outside, at random moments
            process = _orchestrator(shared, monkeypatch, None)
            process.wait_for(lambda line: line.startswith("running"))
            time.sleep(rng.uniform(0.0, 0.4))
            process.kill()
            kills += 1
        process = _orchestrator(shared, monkeypatch, None)
        deadline = time.monotonic() + 90
        while not _all_ended(system) and time.monotonic() < deadline:
            time.sleep(0.05)
        process.kill()
    finally:
        owners.kill()
    assert kills >= 12
    _check_outcomes(system, lamp, 12)
    system.close()


def _check_outcomes(system: System, lamp: str, initial: int) -> None:
    runs = _runs(system)
    assert runs and all(r.status in ("completed", "compensated") for r in runs), [
        (r.status, r.reason) for r in runs if r.status not in ("completed", "compensated")
    ]
    orders = {o.id: o for o in system.context("orders").filter("Order")}
    payments = system.context("payments").filter("Payment")
    left = system.context("inventory").get("Stock", lamp)
    assert left is not None
    taken = sum(r.input["quantity"] for r in runs if r.status == "completed")
    assert left.available >= 0 and left.available == initial - taken, "oversold, or applied twice"
    assert len(orders) == len(runs), "an order placed twice, or lost"
    by_order = {p.order_id: p for p in payments}
    assert len(by_order) == len(payments)
    assert set(by_order) <= set(orders), "a payment without an order"
    for run in runs:
        order = orders[run.results["PlaceOrder"]["record"]["id"]]
        payment = by_order.get(order.id)
        if run.status == "completed":
            assert order.status == "confirmed"
            assert payment is not None and payment.status == "taken"
            assert payment.amount == run.input["total"]
        else:
            assert order.status == "cancelled", run
            assert payment is None or payment.status == "refunded", run
