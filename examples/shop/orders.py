"""The orders context: owns Order, and keeps order_customers, a read-only copy of the
customer's name and e-mail.

Orders never asks customers at ordering time and never writes a customer: it reads
its own copy, which the customers' events keep within the 5 s window of the charter.
The name on an order is a snapshot (what the customer was called when ordering, on
purpose); the e-mail a confirmation goes to comes from the copy (the current one)."""

from __future__ import annotations

from charter import NotFoundError, Record, System

CONTEXT = "orders"


def customer(system: System, customer_id: str) -> Record:
    """The customer as orders knows them: from the copy, never from customers' store."""
    known = system.context(CONTEXT).copy("order_customers").get(customer_id)
    if known is None:
        raise NotFoundError(
            f"customer {customer_id} is not in order_customers: unknown, deleted, or so new "
            "that the copy has not caught up yet (is the runner running?)"
        )
    return known


def place_order(system: System, customer_id: str, total: float) -> Record:
    """An order, with the customer's name as it is now, taken from the copy."""
    name = customer(system, customer_id).name
    with system.context(CONTEXT).transaction() as tx:
        return tx.create("Order", customer_id=customer_id, customer_name=name, total=total)


def confirmation(system: System, order_id: str) -> str:
    """The confirmation e-mail: sent to the current address, greeting the name on the order.
    The contract says what goes wrong if the copy is late: an outdated e-mail address."""
    order = system.context(CONTEXT).get("Order", order_id)
    if order is None:
        raise NotFoundError(f"no order {order_id}")
    to = customer(system, order.customer_id)
    return (
        f"To: {to.email}\n"
        f"Dear {order.customer_name}, thank you for your order of {order.total:.2f} EUR."
    )
