"""Sagas in the simulated world (issue 12): a checkout across three owners of their own
(charters.with_sagas), orchestrated by charter.sagas' SagaWorker, each step a command to
its owner's command worker; the orchestrator and the owners crash wherever the world
decides, and the orchestrator also at each point of its work ("sent": its commands on the
bus, no answer in; "answered": the answers in, nothing recorded; "recorded": a step
boundary). A try waits for no answer (the world is one thread): each step is sent again
under its key until its answer is in, so every step is a retry of the one before.

What the saga world's owners and orchestrator commit is credited to the model as the
stores show it once quiet, so the checker's outbox check (G2) covers their events too. Checked along
the way: stock never below zero (never oversold), no payment without its order. After
quiet: every run ended (completed, compensated, or parked with a reason), and nothing half
done: a completed run's order confirmed and paid once, its stock held once; a compensated
run's order cancelled (or never placed), its payment refunded (or never taken), its stock
given back; every order some run's; each SKU's stock its start less what the runs hold.

Its choices come from a generator of its own (salted by the seed), so that a seed without
sagas runs exactly as it did before they existed."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import orjson

from charter.commands import CommandWorker, Handler, Request
from charter.errors import ConflictError, ConstraintError, Error, NotFoundError
from charter.model import Charter
from charter.owner import Record, Transaction, record_from_row
from charter.sagas import Run, Saga, Step
from charter.sagas.state import COMPENSATED, COMPLETED, ENDED, PARKED
from charter.sagas.worker import SagaWorker
from charter.sim.checker import Change, Checker, Model
from charter.sim.world import Crash, World
from charter.stores.memory import MemoryStore
from charter.system import System

SAGA, ORCHESTRATOR = "Checkout", "shop"
OWNERS = ("shop", "stockroom", "till")
ENTITIES = ("Order", "Stock", "Payment", SAGA)
SHARE = 0.3  # of a saga world's steps, those that start, orchestrate or handle
DECLINED_ABOVE = 100.0  # the till declines any amount above this
SKUS = 3

CHARTER = """\
charter: 1
name: shop
bus: memory://sim/bus
contexts:
  shop:      {team: shop-desk,   store: memory://sim/shop}
  stockroom: {team: stockroom,   store: memory://sim/stockroom}
  till:      {team: till-desk,   store: memory://sim/till}
entities:
  Order:
    owner: shop
    fields:
      customer: {type: string}
      total:    {type: number}
      status:   {type: enum, values: [placed, confirmed, cancelled], default: placed}
    commands:
      PlaceOrder:   {senders: [shop], fields: [customer, total]}
      ConfirmOrder: {senders: [shop]}
      CancelOrder:  {senders: [shop], fields: {placed_version: {type: integer}}}
  Stock:
    owner: stockroom
    fields:
      sku:       {type: string, unique: true}
      available: {type: integer}
    commands:
      ReserveStock: {senders: [shop], fields: {quantity: {type: integer}}}
      ReleaseStock: {senders: [shop], fields: {quantity: {type: integer}}}
  Payment:
    owner: till
    fields:
      order_id: {type: uuid, unique: true}
      amount:   {type: number}
      status:   {type: enum, values: [taken, refunded], default: taken}
    commands:
      TakePayment:   {senders: [shop], fields: [order_id, amount]}
      RefundPayment: {senders: [shop]}
copies:
  till_orders:
    in: till
    of: Order
    fields: [status, total]
    window: 10s
sagas:
  Checkout: {in: shop}
"""


def checkout(timeout: float) -> Saga:
    """The examples/checkout saga, with a try that waits for nothing (the world steps the
    owners) and tries enough that no compensation parks for want of an answer."""
    return Saga(
        SAGA,
        [
            Step(
                "PlaceOrder",
                lambda s: {"customer": s.customer, "total": s.total},
                undo="CancelOrder",  # a semantic lock: only the order as this run left it
                undo_args=lambda s: {"id": s.PlaceOrder.id, "placed_version": s.PlaceOrder.version},
            ),
            Step(
                "ReserveStock",
                lambda s: {"id": s.stock, "quantity": s.quantity},
                undo="ReleaseStock",
                undo_args=lambda s: {"id": s.stock, "quantity": s.quantity},
            ),
            Step(
                "TakePayment",
                lambda s: {"order_id": s.PlaceOrder.id, "amount": s.total},
                undo="RefundPayment",
            ),
            Step("ConfirmOrder", lambda s: {"id": s.PlaceOrder.id}),
        ],
        timeout=timeout,
        step_timeout=0.0,
        backoff=(0.01, 0.1),
        tries=10**6,
    )


# -- the owners' handlers (as examples/checkout's) -------------------------------------------


def place_order(tx: Transaction, cmd: Request) -> Record:
    return tx.create("Order", customer=cmd.customer, total=cmd.total)


def confirm_order(tx: Transaction, cmd: Request) -> Record:
    order = _get(tx, "Order", _id(cmd))
    if order.status == "cancelled":
        raise ConflictError(f"order {cmd.id} was cancelled: it cannot be confirmed")
    return tx.update("Order", _id(cmd), status="confirmed")


def cancel_order(tx: Transaction, cmd: Request) -> Record:
    _get(tx, "Order", _id(cmd))
    return tx.update("Order", _id(cmd), status="cancelled", expected_version=cmd.placed_version)


def reserve_stock(tx: Transaction, cmd: Request) -> dict[str, Any]:
    stock = _get(tx, "Stock", _id(cmd))
    if stock.available < cmd.quantity:
        raise ConstraintError(f"only {stock.available} of {stock.sku} left, {cmd.quantity} asked")
    left = stock.available - cmd.quantity
    tx.update("Stock", _id(cmd), available=left, expected_version=stock.version)
    return {"left": left}


def release_stock(tx: Transaction, cmd: Request) -> dict[str, Any]:
    stock = _get(tx, "Stock", _id(cmd))
    left = stock.available + cmd.quantity
    tx.update("Stock", _id(cmd), available=left, expected_version=stock.version)
    return {"left": left}


def take_payment(tx: Transaction, cmd: Request) -> Record:
    if cmd.amount > DECLINED_ABOVE:
        raise ConstraintError(f"card declined for {cmd.amount:.2f}")
    return tx.create("Payment", order_id=cmd.order_id, amount=cmd.amount)


def refund_payment(tx: Transaction, cmd: Request) -> Record:
    _get(tx, "Payment", _id(cmd))
    return tx.update("Payment", _id(cmd), status="refunded")


def _id(cmd: Request) -> str:
    if cmd.id is None:
        raise NotFoundError(f"{cmd.name}: which record? (no id)")
    return cmd.id


def _get(tx: Transaction, entity: str, entity_id: str) -> Record:
    record = tx.get(entity, entity_id)
    if record is None:
        raise NotFoundError(f"no {entity} {entity_id}")
    return record


HANDLERS: dict[str, dict[str, Handler]] = {
    "shop": {"PlaceOrder": place_order, "ConfirmOrder": confirm_order, "CancelOrder": cancel_order},
    "stockroom": {"ReserveStock": reserve_stock, "ReleaseStock": release_stock},
    "till": {"TakePayment": take_payment, "RefundPayment": refund_payment},
}


class Sagas:
    """The checkouts, their orchestrator and the three owners' command workers of one run."""

    def __init__(self, world: World, model: Model, checker: Checker, seed: int) -> None:
        self.world, self.model, self.checker = world, model, checker
        self.rng = random.Random(f"sagas:{seed}")
        self.saga = checkout(self.rng.choice((0.5, 2.0, 60.0, 60.0)))
        self.crash_at = self.rng.choice((0.0, 0.05, 0.2))  # at each point of the orchestrator
        self.saga.at = self._at
        self.stock: dict[str, int] = {}  # id → how many it started with
        self.started = 0
        self.orchestrator: SagaWorker | None = None
        self.workers: dict[str, CommandWorker | None] = {}
        self.charter: Charter | None = None
        self.system: System | None = None

    @property
    def on(self) -> bool:
        return self.charter is not None and SAGA in self.charter.sagas

    def open(self, charter: Charter, system: System) -> None:
        """Every process starts again (the world's start, or a deployment)."""
        self.charter, self.system = charter, system
        if not self.on:
            return
        self.orchestrator = None
        self.workers = dict.fromkeys(OWNERS)
        if not self.stock:
            self._stock_up()

    def others(self, charter: Charter) -> Charter:
        """The charter without the saga world's entities: what the rest of the world
        writes and commands (the saga world's records change only through its sagas)."""
        if SAGA not in charter.sagas:
            return charter
        entities = {n: e for n, e in charter.entities.items() if n not in ENTITIES}
        return dataclasses.replace(charter, entities=entities)

    def _stock_up(self) -> None:
        """The stockroom's shelves, before any checkout (no crash: the world's start)."""
        assert self.system is not None
        chance, self.world.crash_chance = self.world.crash_chance, 0.0
        try:
            with self.system.context("stockroom").transaction() as tx:
                for n in range(SKUS):
                    count = 3 + self.rng.randrange(8)
                    self.stock[tx.create("Stock", sku=f"sku-{n}", available=count).id] = count
        finally:
            self.world.crash_chance = chance
        self.observe()
        self.world.note(f"stockroom stocked {sorted(self.stock.values())}")

    # -- the world's steps -----------------------------------------------------------

    def act(self) -> bool:
        """Perhaps start, orchestrate or handle at this step; False when it did neither."""
        if not self.on or self.rng.random() >= SHARE:
            return False
        roll = self.rng.random()
        if roll < 0.3:
            self._start()
        elif roll < 0.6:
            self._orchestrate()
        else:
            self._handle(self.rng.choice(OWNERS))
        self._along_the_way()
        return True

    def _start(self) -> None:
        assert self.system is not None
        rng = self.rng
        stock = rng.choice(sorted(self.stock))
        total = round(rng.uniform(5, 130), 2)  # above DECLINED_ABOVE: declined
        quantity = 1 + rng.randrange(3)
        try:
            run_id = self.saga.start(
                self.system,
                customer=f"c{rng.randrange(9)}",
                total=total,
                stock=stock,
                quantity=quantity,
            )
        except Crash as crash:
            self.world.note(f"a checkout crashed starting at {crash}")
            return
        self.started += 1
        self.world.note(f"checkout {run_id[-6:]} started: {quantity} of {stock[-6:]}, {total}")

    def _at(self, point: str, runs: list[Run]) -> None:
        """The orchestrator dies here, now and then: its commands sent, answers in, or its
        runs' new states just recorded."""
        if self.crash_at and self.rng.random() < self.crash_at:
            raise Crash(f"saga {point}")

    def _orchestrate(self) -> int:
        assert self.system is not None
        if self.orchestrator is None:
            self.orchestrator = SagaWorker(self.system, ORCHESTRATOR, {SAGA: self.saga})
        try:
            moved = self.orchestrator.step()
        except Crash as crash:
            self.orchestrator = None
            self.world.note(f"saga orchestrator crashed at {crash}")
            return 0
        except Error as exc:
            self.world.note(f"saga orchestrator: {exc}")
            return 0
        if moved:
            self.world.note(f"saga orchestrator moved {moved} runs")
        return moved

    def _handle(self, owner: str) -> int:
        assert self.charter is not None and self.system is not None
        worker = self.workers.get(owner)
        if worker is None:
            system = self.system
            worker = CommandWorker(
                owner,
                self.charter,
                system.bus,
                partial(system.store, owner),
                system.context(owner).transaction,
                HANDLERS[owner],
            )
            worker.wait = 0.0
            self.workers[owner] = worker
        try:
            handled = worker.step()
        except Crash as crash:
            self.workers[owner] = None
            self.world.note(f"commands of {owner} crashed at {crash}")
            return 0
        except Error as exc:
            self.world.note(f"commands of {owner}: {exc}")
            return 0
        if handled:
            self.world.note(f"commands of {owner} handled {handled}")
        return handled

    # -- what the stores show ----------------------------------------------------------

    def _rows(self, entity: str) -> list[dict[str, Any]]:
        assert self.charter is not None and self.system is not None
        spec = self.charter.entities[entity]
        store = self.system.store(spec.owner)
        assert isinstance(store, MemoryStore)
        with _quiet(store):
            return list(store.rows(spec))

    def observe(self) -> None:
        """Credit the model with each version the saga world's stores hold that it lacks:
        their outboxes must then hold exactly those events (G2, the checker's)."""
        if not self.on:
            return
        assert self.charter is not None
        for entity in ENTITIES:
            owner = self.charter.entities[entity].owner
            done: list[Change] = []
            for row in self._rows(entity):
                known = self.model.version(entity, row["id"]) or 0
                for version in range(known + 1, row["version"] + 1):
                    done.append(
                        (entity, row["id"], version, "created" if version == 1 else "updated")
                    )
            if done:
                self.model.committed(owner, done)

    def _along_the_way(self) -> None:
        orders = {r["id"] for r in self._rows("Order")}
        for stock in self._rows("Stock"):
            if stock["available"] < 0:
                self.checker.fail(f"stock {stock['id']} oversold: {stock['available']} left")
        for payment in self._rows("Payment"):
            if payment["order_id"] not in orders:
                self.checker.fail(
                    f"payment {payment['id']} for order {payment['order_id']}, which no one placed"
                )

    # -- quiet ------------------------------------------------------------------------

    def settle_step(self) -> int:
        """A quiet round: the orchestrator steps, then every owner's command worker."""
        if not self.on:
            return 0
        self.crash_at = 0.0
        return self._orchestrate() + sum(self._handle(owner) for owner in OWNERS)

    def waiting(self) -> bool:
        """Runs not yet ended."""
        return self.on and any(r["status"] not in ENDED for r in self._rows(SAGA))

    def final(self) -> None:
        if not self.on:
            return
        self._along_the_way()
        runs = [_run(r, self.charter) for r in self._rows(SAGA)]
        orders = {r["id"]: r for r in self._rows("Order")}
        payments = {r["order_id"]: r for r in self._rows("Payment")}
        held = {i: 0 for i in self.stock}
        placed: set[str] = set()
        keys = self._applied()
        for run in runs:
            where = f"checkout {run.id}"
            if run.status not in ENDED:
                self.checker.fail(f"{where} is still {run.status} after quiet")
                continue
            if run.status == PARKED and not run.reason:
                self.checker.fail(f"{where} parked without a reason")
            order_id = (run.results.get("PlaceOrder") or {}).get("record", {}).get("id")
            if order_id is not None:
                placed.add(order_id)
            stock, quantity = run.input["stock"], run.input["quantity"]
            if run.status == PARKED:  # as it was left, with its reason: what its keys did
                holds = keys.get((run.id, 1, "do"), 0) - keys.get((run.id, 1, "undo"), 0)
                held[stock] += holds * quantity
                continue
            self._ended(where, run, order_id, orders, payments, held)
        for order_id in orders.keys() - placed:
            self.checker.fail(f"order {order_id} was placed, and no checkout holds it")
        stocks = {r["id"]: r["available"] for r in self._rows("Stock")}
        for stock, start in self.stock.items():
            if start - stocks[stock] != held[stock]:
                self.checker.fail(
                    f"stock {stock}: {start} at the start, {stocks[stock]} now, but the "
                    f"checkouts hold {held[stock]}"
                )
        for (run_id, index, way), count in keys.items():
            if count > 1:
                self.checker.fail(f"checkout {run_id}: step {index} ({way}) applied {count} times")

    def _ended(
        self,
        where: str,
        run: Run,
        order_id: str | None,
        orders: dict[str, dict[str, Any]],
        payments: dict[str, dict[str, Any]],
        held: dict[str, int],
    ) -> None:
        """A completed or compensated run: all of it done, or none of it left."""
        order = orders.get(order_id) if order_id else None
        payment = payments.get(order_id) if order_id else None
        if run.status == COMPLETED:
            held[run.input["stock"]] += run.input["quantity"]
            if order is None or order["status"] != "confirmed":
                self.checker.fail(f"{where} completed, its order {order_id} is {_said(order)}")
            if payment is None or payment["status"] != "taken":
                self.checker.fail(f"{where} completed, its payment is {_said(payment)}")
            elif payment["amount"] != run.input["total"]:
                self.checker.fail(f"{where} completed, paid {payment['amount']}")
            return
        assert run.status == COMPENSATED
        if order is not None and order["status"] != "cancelled":
            self.checker.fail(f"{where} compensated, its order {order_id} is {order['status']}")
        if payment is not None and payment["status"] != "refunded":
            self.checker.fail(f"{where} compensated, its payment {payment['id']} is taken")

    def _applied(self) -> dict[tuple[str, int, str], int]:
        """How many times each run's step (or its undo) was applied, by the keys the owners
        recorded with an answer that is no refusal."""
        assert self.system is not None
        counted: dict[tuple[str, int, str], int] = {}
        for owner in OWNERS:
            store = self.system.store(owner)
            assert isinstance(store, MemoryStore)
            for key, done in store.recorded_commands().items():
                parts = key.split(":")
                if len(parts) < 5 or parts[0] != "saga" or _refused(done.result):
                    continue
                step = (parts[2], int(parts[3]), parts[4])
                counted[step] = counted.get(step, 0) + 1
        return counted


def _run(row: dict[str, Any], charter: Charter | None) -> Run:
    assert charter is not None
    return Run.from_record(record_from_row(charter.entities[SAGA], row))


def _said(row: dict[str, Any] | None) -> str:
    return "missing" if row is None else str(row.get("status"))


def _refused(answer: bytes) -> bool:
    try:
        return "refused" in orjson.loads(answer)
    except orjson.JSONDecodeError:
        return False


@contextmanager
def _quiet(store: MemoryStore) -> Iterator[None]:
    """The checker reads: no crash is drawn for it."""
    fault, store.fault = store.fault, None
    try:
        yield
    finally:
        store.fault = fault
