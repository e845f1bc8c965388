"""Where driver errors stop. Every method of the `Store` and `Bus` protocols (and of an
owner transaction's writes) is called through a guard that turns what sqlite3, psycopg or
nats-py raise into a charter error (`BackendError`, or `UnavailableError` when the server
is down or went away) naming the context or the bus, its server without the password,
and what to try. Charter's own errors pass as they are.

The guard sits on the instance (`guard(store, ...)` rebinds the protocol's methods), not
around it: the adapter stays itself for `isinstance` and its own attributes."""

from __future__ import annotations

import functools
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from charter import urls
from charter.errors import BackendError, Error, MissingExtraError, UnavailableError

T = TypeVar("T")

# a driver's top-level module: the charter extra that installs it
EXTRAS = {"psycopg": "postgres", "psycopg_pool": "postgres", "nats": "nats"}

# psycopg's words for a connection that went away or could not be made
_GONE = (
    "server closed the connection",
    "terminating connection",
    "consuming input failed",
    "connection is lost",
    "connection is closed",
    "the database system is",  # … starting up / shutting down / in recovery mode
    "connection to server",
    "connection failed",
    "could not connect",
    "timeout expired",
    "couldn't get a connection",
    "pool is closed",
)
_REFUSED_LOGIN = (
    "password authentication failed",
    "no password supplied",
    "does not exist",
    "no pg_hba.conf entry",
)


@contextmanager
def driver(what: str, url: str) -> Iterator[None]:
    """Around importing the module of a store or bus: its driver missing (charter installs
    neither psycopg nor nats-py by default) is a MissingExtraError naming the extra."""
    try:
        yield
    except ModuleNotFoundError as exc:
        package = (exc.name or "").partition(".")[0]
        extra = EXTRAS.get(package)
        if extra is None:
            raise
        raise MissingExtraError(
            f"{what} ({urls.redact(url)}) needs the {package} package, which is not "
            f"installed here: pip install 'charter[{extra}]'",
            extra=extra,
            package=package,
        ) from None


class Guard:
    """Turns a driver's exception from one store or bus into the charter error to raise."""

    def __init__(self, what: str, url: str, refusal: Callable[[], str] | None = None) -> None:
        self.what, self.url = what, url
        self.server = urls.server(url)
        self.refusal = refusal  # what this process's role may do (an adapter's `refusal`)

    def __repr__(self) -> str:
        return f"{self.what} ({urls.redact(self.url)})"

    def translate(self, exc: BaseException) -> Error | None:
        """The charter error for `exc`; None when it is not a driver's (it passes as it is)."""
        if isinstance(exc, Error):
            return None
        sqlite3 = sys.modules.get("sqlite3")
        psycopg = sys.modules.get("psycopg")
        nats_errors = sys.modules.get("nats.errors")
        if psycopg is not None and isinstance(exc, psycopg.Error):
            return self._postgres(exc, psycopg)
        if sqlite3 is not None and isinstance(exc, sqlite3.Error):
            return self._sqlite(exc)
        if (nats_errors is not None and isinstance(exc, nats_errors.Error)) or isinstance(
            exc, OSError
        ):
            return self._unavailable(f"{_reason(exc)}; is the server at {self.server} running?")
        return None

    def _made(self, kind: type[BackendError], text: str) -> BackendError:
        return kind(f"{self!r}: {text}", what=self.what, server=self.server)

    def _unavailable(self, text: str) -> BackendError:
        return self._made(UnavailableError, text)

    def _postgres(self, exc: BaseException, psycopg: types.ModuleType) -> BackendError:
        text = _first_line(exc)
        lowered = text.lower()
        at = f"PostgreSQL at {self.server}"
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            why = self.refusal() if self.refusal is not None else ""
            return self._made(
                BackendError,
                f"{at} refused: {text} ("
                + (
                    why
                    or "the role of this process may not; the README says which role "
                    "each process runs under"
                )
                + ")",
            )
        if isinstance(exc, psycopg.OperationalError) and any(w in lowered for w in _GONE):
            reason = _last_part(text)
            if any(w in reason.lower() for w in _REFUSED_LOGIN):
                return self._made(
                    BackendError,
                    f"{at} refused the login ({reason}); check the user, password and "
                    "database in the store URL",
                )
            if "connection refused" in lowered or "could not connect" in lowered:
                return self._unavailable(
                    f"cannot connect to PostgreSQL ({reason}); is PostgreSQL running at "
                    f"{self.server}?"
                )
            return self._unavailable(
                f"{at} is not answering ({reason}): stopped or restarting? Try again "
                "(`charter run` does, by itself)"
            )
        return self._made(BackendError, f"{at}: {text}")

    def _sqlite(self, exc: BaseException) -> BackendError:
        text = _first_line(exc)
        lowered = text.lower()
        if "locked" in lowered or "busy" in lowered:
            return self._unavailable(
                f"the SQLite file {self.server} is {text} (another process holds it); try again"
            )
        if "unable to open" in lowered or "readonly" in lowered or "disk i/o" in lowered:
            return self._made(
                BackendError,
                f"cannot use the SQLite file {self.server} ({text}); does its folder exist, "
                "and may this user write there?",
            )
        return self._made(BackendError, f"SQLite file {self.server}: {text}")


def guard(target: T, what: str, url: str, protocol: type) -> T:
    """`target` with every method of `protocol` raising charter errors only. Returns it.
    A target with a `refusal()` method says with it, in a refusal, what its role may do."""
    checker = Guard(what, url, getattr(target, "refusal", None))
    for name, member in vars(protocol).items():
        if name.startswith("_") or not callable(member):
            continue
        method = getattr(target, name, None)
        if method is not None:
            setattr(target, name, _guarded(method, checker, name == "transaction"))
    return target


def _guarded(method: Callable[..., Any], checker: Guard, transaction: bool) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            result = method(*args, **kwargs)
        except Exception as exc:
            mapped = checker.translate(exc)
            if mapped is None:
                raise
            raise mapped from exc
        if isinstance(result, types.GeneratorType):
            return _iterate(result, checker)
        if transaction:
            return _Transaction(result, checker)
        return result

    return call


def _iterate(rows: Iterator[T], checker: Guard) -> Iterator[T]:
    try:
        yield from rows
    except Exception as exc:
        mapped = checker.translate(exc)
        if mapped is None:
            raise
        raise mapped from exc


class _Transaction:
    """An owner transaction whose driver errors, at BEGIN, in a write or at COMMIT, are
    charter errors."""

    __slots__ = ("_checker", "_inner")

    def __init__(self, inner: Any, checker: Guard) -> None:
        self._inner, self._checker = inner, checker

    def __enter__(self) -> Any:
        try:
            writes = self._inner.__enter__()
        except Exception as exc:
            mapped = self._checker.translate(exc)
            if mapped is None:
                raise
            raise mapped from exc
        return _Writes(writes, self._checker)

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> Any:
        try:
            return self._inner.__exit__(kind, value, traceback)
        except Exception as exc:
            mapped = self._checker.translate(exc)
            if mapped is None or exc is value:
                raise
            raise mapped from exc


class _Writes:
    """An owner transaction's writes (a class with slots on the hot path: wrapped, not
    rebound); what it does not know it hands to the store's writes as they are."""

    __slots__ = ("_checker", "_inner")

    def __init__(self, inner: Any, checker: Guard) -> None:
        self._inner, self._checker = inner, checker

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _call(self, method: Callable[..., T], *args: Any) -> T:
        try:
            return method(*args)
        except Exception as exc:
            mapped = self._checker.translate(exc)
            if mapped is None:
                raise
            raise mapped from exc

    def fetch(self, *args: Any) -> Any:
        return self._call(self._inner.fetch, *args)

    def insert(self, *args: Any) -> Any:
        return self._call(self._inner.insert, *args)

    def update(self, *args: Any) -> Any:
        return self._call(self._inner.update, *args)

    def delete(self, *args: Any) -> Any:
        return self._call(self._inner.delete, *args)

    def append(self, *args: Any) -> Any:
        return self._call(self._inner.append, *args)

    def command(self, *args: Any) -> Any:
        return self._call(self._inner.command, *args)

    def record_command(self, *args: Any) -> Any:
        return self._call(self._inner.record_command, *args)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _last_part(text: str) -> str:
    """'connection failed: connection to server at …, port 5432 failed: Connection refused'
    → 'connection refused': what libpq says last is the reason."""
    part = text.rsplit("failed:", 1)[-1].strip().removeprefix("FATAL:").strip()
    return part[:1].lower() + part[1:] if part else text


def _reason(exc: BaseException) -> str:
    return _first_line(exc) if str(exc).strip() else repr(exc)
