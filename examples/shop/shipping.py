"""The shipping context: owns nothing, keeps shipping_customers, a read-only copy of
the customer's name and address.

Shipping reads only its copy. Before trusting it for something that costs money,
it asks charter how stale the copy is against its contract (1 m): beyond that,
parcels go to an old address."""

from __future__ import annotations

import charter
from charter import NotFoundError, Record, System

CONTEXT = "shipping"
COPY = "shipping_customers"


class CannotShip(Exception):
    """The copy has no address for this customer."""


def within_contract(system: System) -> bool:
    """True while shipping_customers is no staler than its window (state OK)."""
    return any(row.copy == COPY and row.state == "OK" for row in charter.status(system))


def label(system: System, customer_id: str) -> str:
    """A parcel label from the copy, saying when that address was last synced."""
    customer: Record | None = system.context(CONTEXT).copy(COPY).get(customer_id)
    if customer is None:
        raise NotFoundError(f"customer {customer_id} is not in {COPY} (yet)")
    if not customer.address:
        raise CannotShip(f"{customer.name} has given no address")
    synced = customer.synced_at.strftime("%H:%M:%S") if customer.synced_at else "?"
    return f"{customer.name}, {customer.address}  (address as of {synced} UTC)"


def without_address(system: System) -> list[str]:
    """Customers shipping cannot send to: a query on the copy, not a call to customers."""
    return [str(c.name) for c in system.context(CONTEXT).copy(COPY).filter(address=None)]
