"""Test cases every backend must pass, shipped with charter (as the `eventsourcing`
library ships its recorder test cases).

A new store or bus is one module plus these passing on it::

    from charter.testing import StoreContract

    class TestMyStore(StoreContract):
        def make_store(self, name: str) -> Store:
            return MyStore(f"mydb://localhost/{name}")

Each test asks for fresh, empty stores or buses under new names and closes them after;
override `drop_store` / `drop_bus` to remove what they left behind. Needs pytest."""

from charter.testing.bus_contract import BusContract
from charter.testing.store_contract import StoreContract

__all__ = ["BusContract", "StoreContract"]
