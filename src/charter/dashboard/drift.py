"""Reconciliation's drift per copy, shown when the stores keep it. `charter reconcile`
reports drift when it runs; a store that persists each copy's last result offers it as
`last_drift(copy)` (work in progress elsewhere): until a store has that method, the
dashboard has no drift to show and says so (`available`). Status rows that carry a `drift`
attribute (charter.topology.drift reads it) are shown as they are."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from charter.model import Copy
from charter.status import CopyStatus
from charter.stores import Store

METHOD = "last_drift"  # Store.last_drift(copy) -> the copy's last reconcile result, or None


def available(store: Store) -> bool:
    return callable(getattr(store, METHOD, None))


def last(store: Store, copy: Copy) -> dict[str, Any] | None:
    """The copy's last drift result as JSON-ready data; None when none is kept (or the
    store keeps none)."""
    method = getattr(store, METHOD, None)
    if not callable(method):
        return None
    return plain(method(copy))


def plain(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if hasattr(value, "as_json"):
        value = value.as_json()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    return {"drift": value if isinstance(value, int | float | str) else str(value)}


def rows_drifting(result: Mapping[str, Any] | None) -> int | None:
    """How many rows a drift result says are drifting: its `drift` or `rows` when a
    number, else the sum of its whole numbers (counts by class); None when it says none."""
    if not result:
        return None
    for key in ("drift", "rows", "drifted"):
        value = result.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    counts = result.get("classes") or result.get("counts") or result
    if isinstance(counts, Mapping):
        numbers = [v for v in counts.values() if isinstance(v, int) and not isinstance(v, bool)]
        return sum(numbers) if numbers else None
    return None


@dataclasses.dataclass(frozen=True)
class Drifting(CopyStatus):
    """A status row with the drift its store keeps, as charter.topology draws it."""

    drift: int = 0


def with_drift(row: CopyStatus, drifted: int | None) -> CopyStatus:
    if not drifted or hasattr(row, "drift"):
        return row
    cells = {f.name: getattr(row, f.name) for f in dataclasses.fields(CopyStatus)}
    return Drifting(**cells, drift=drifted)
