"""The public names, pinned: adding one to (or taking one from) `charter`, `charter.testing`
or `charter.sim` is a decision, made here in the same change. Everything else is reachable
by its module (charter.errors, charter.records, …) and may change without notice."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "charter": {
        # the front door
        "load",
        "System",
        "ContextHandle",
        "CopyReader",
        "Transaction",
        "Record",
        "Runner",
        "status",
        "CopyStatus",
        # what a caller catches (every one derives from Error)
        "Error",
        "CharterError",
        "OwnershipError",
        "FencedError",
        "ValidationError",
        "ConflictError",
        "ConstraintError",
        "NotFoundError",
        "CommandTimeoutError",
        "EventError",
        "SchemaChangeError",
        "BackendError",
        "UnavailableError",
        "StaleReadError",
    },
    "charter.testing": {"StoreContract", "BusContract"},
    "charter.sim": {"Config", "Outcome", "Simulation", "run"},
    "charter.audit": {"audit", "read", "require", "since"},
    "charter.sagas": {"Saga", "Step", "Run", "View"},
    "charter.dashboard": {"create_app", "serve"},
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_the_public_names_are_exactly_these(module: str) -> None:
    names = importlib.import_module(module).__all__
    assert sorted(names) == sorted(PUBLIC[module])
    assert len(names) == len(set(names)), "a name listed twice"


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_every_public_name_is_there(module: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {module} import *", namespace)
    missing = [name for name in PUBLIC[module] if name not in namespace]
    assert not missing


def test_every_public_error_is_a_charter_error() -> None:
    import charter

    errors = [getattr(charter, name) for name in PUBLIC["charter"] if name.endswith("Error")]
    assert all(issubclass(error, charter.Error) for error in errors)
