"""charter: one owner per record, read-only copies with contracts, enforced and measured."""

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
