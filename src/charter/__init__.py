"""charter: one owner per record, read-only copies with contracts, enforced and measured.

The public names are imported on first use (module `__getattr__`), not with the package:
`import charter.model` or the `charter` command must not pay for the owner, the runner and
every store. Type checkers read the imports under TYPE_CHECKING."""

from __future__ import annotations

import sys
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from charter.errors import (
        BackendError,
        CharterError,
        CommandTimeoutError,
        ConflictError,
        ConstraintError,
        Error,
        EventError,
        FencedError,
        NotFoundError,
        OwnershipError,
        SchemaChangeError,
        StaleReadError,
        UnavailableError,
        ValidationError,
    )
    from charter.owner import Record, Transaction
    from charter.runner import Runner
    from charter.status import CopyStatus, status
    from charter.system import ContextHandle, CopyReader, System, load

_WHERE = {
    "charter.errors": (
        "BackendError",
        "CharterError",
        "CommandTimeoutError",
        "ConflictError",
        "ConstraintError",
        "Error",
        "EventError",
        "FencedError",
        "NotFoundError",
        "OwnershipError",
        "SchemaChangeError",
        "StaleReadError",
        "UnavailableError",
        "ValidationError",
    ),
    "charter.owner": ("Record", "Transaction"),
    "charter.runner": ("Runner",),
    "charter.status": ("CopyStatus", "status"),
    "charter.system": ("ContextHandle", "CopyReader", "System", "load"),
}
_MODULE = {name: module for module, names in _WHERE.items() for name in names}

__all__ = [
    "BackendError",
    "CharterError",
    "CommandTimeoutError",
    "ConflictError",
    "ConstraintError",
    "ContextHandle",
    "CopyReader",
    "CopyStatus",
    "Error",
    "EventError",
    "FencedError",
    "NotFoundError",
    "OwnershipError",
    "Record",
    "Runner",
    "SchemaChangeError",
    "StaleReadError",
    "System",
    "Transaction",
    "UnavailableError",
    "ValidationError",
    "load",
    "status",
]


def __getattr__(name: str) -> object:
    """A public name, imported from its module the first time it is asked for; or a
    submodule (`charter.model` after `import charter`, as when the package imported it)."""
    module = _MODULE.get(name)
    if module is None:
        try:
            return import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise  # the submodule is there; something it imports is not
        raise AttributeError(f"module 'charter' has no attribute {name!r}") from None
    value = getattr(import_module(module), name)
    globals()[name] = value  # asked once: later reads do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(ModuleType):
    """`charter.status` is the function, as when the package imported it eagerly: importing
    the submodule `charter.status` (which sets the package's attribute to the module) keeps
    the function there."""

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, ModuleType) and name in _MODULE and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
