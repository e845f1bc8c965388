"""Each owner's command handlers, and the Checkout saga that orchestrates them.

`register(system)` is what `charter run --handlers examples.checkout.handlers:register`
calls: a Runner then serves the handlers of the contexts it runs, and orchestrates the
saga if it runs orders."""

from __future__ import annotations

from typing import Any

from charter import ConflictError, ConstraintError, NotFoundError, Record, System, Transaction
from charter.commands import Request
from charter.sagas import Saga, Step

DECLINED_ABOVE = 100.0  # the payment provider declines any amount above this

CHECKOUT = Saga(
    "Checkout",
    [
        Step(
            "PlaceOrder",
            lambda s: {"customer": s.customer, "total": s.total},
            undo="CancelOrder",  # a semantic lock: only the order as this saga left it
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
            undo="RefundPayment",  # undo_args by default: the id of the payment it made
        ),
        Step("ConfirmOrder", lambda s: {"id": s.PlaceOrder.id}),
    ],
    timeout=60,
)


# -- orders --------------------------------------------------------------------------------


def place_order(tx: Transaction, cmd: Request) -> Record:
    return tx.create("Order", customer=cmd.customer, total=cmd.total)


def confirm_order(tx: Transaction, cmd: Request) -> Record:
    order = _order(tx, cmd.id)
    if order.status == "cancelled":
        raise ConflictError(f"order {cmd.id} was cancelled: it cannot be confirmed")
    return tx.update("Order", cmd.id, status="confirmed")


def cancel_order(tx: Transaction, cmd: Request) -> Record:
    """Refused (ConflictError) when the order changed since the saga placed it."""
    _order(tx, cmd.id)
    return tx.update("Order", cmd.id, status="cancelled", expected_version=cmd.placed_version)


def _order(tx: Transaction, order_id: str) -> Record:
    order = tx.get("Order", order_id)
    if order is None:
        raise NotFoundError(f"no order {order_id}")
    return order


# -- inventory ------------------------------------------------------------------------------


def reserve_stock(tx: Transaction, cmd: Request) -> dict[str, Any]:
    """Never oversells: the count is read and written in one owner transaction at the
    version read, so two reservations cannot both take the last item."""
    stock = _stock(tx, cmd.id)
    if cmd.quantity <= 0:
        raise ConstraintError(f"reserve {cmd.quantity} of {stock.sku}: a quantity is positive")
    if stock.available < cmd.quantity:
        raise ConstraintError(
            f"only {stock.available} of {stock.sku} left, {cmd.quantity} asked for"
        )
    left = stock.available - cmd.quantity
    tx.update("Stock", cmd.id, available=left, expected_version=stock.version)
    return {"sku": stock.sku, "left": left}


def release_stock(tx: Transaction, cmd: Request) -> dict[str, Any]:
    stock = _stock(tx, cmd.id)
    left = stock.available + cmd.quantity
    tx.update("Stock", cmd.id, available=left, expected_version=stock.version)
    return {"sku": stock.sku, "left": left}


def _stock(tx: Transaction, stock_id: str) -> Record:
    stock = tx.get("Stock", stock_id)
    if stock is None:
        raise NotFoundError(f"no stock {stock_id}")
    return stock


# -- payments -------------------------------------------------------------------------------


def take_payment(tx: Transaction, cmd: Request) -> Record:
    if cmd.amount > DECLINED_ABOVE:
        raise ConstraintError(f"card declined for {cmd.amount:.2f} EUR")
    return tx.create("Payment", order_id=cmd.order_id, amount=cmd.amount)


def refund_payment(tx: Transaction, cmd: Request) -> Record:
    payment = tx.get("Payment", cmd.id)
    if payment is None:
        raise NotFoundError(f"no payment {cmd.id}")
    return tx.update("Payment", cmd.id, status="refunded")


HANDLERS = {
    "orders": {
        "PlaceOrder": place_order,
        "ConfirmOrder": confirm_order,
        "CancelOrder": cancel_order,
    },
    "inventory": {"ReserveStock": reserve_stock, "ReleaseStock": release_stock},
    "payments": {"TakePayment": take_payment, "RefundPayment": refund_payment},
}


def register(system: System) -> None:
    """Every owner's handlers, and the saga (a Runner uses those of the contexts it runs)."""
    for context, handlers in HANDLERS.items():
        for command, handler in handlers.items():
            system.context(context).handles(command)(handler)
    CHECKOUT.register(system)
