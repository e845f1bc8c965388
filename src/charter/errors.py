"""The errors charter raises. Each one says what was wrong and where, so the
person reading it can act without opening the source."""

from __future__ import annotations

from dataclasses import dataclass


class Error(Exception):
    """Base of every error charter raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a charter file, with where it is and how to fix it."""

    file: str
    line: int
    message: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}: {self.message}"
        return f"{text}\n    hint: {self.hint}" if self.hint else text


class CharterError(Error):
    """The charter file is not valid. Carries every problem found, not only the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        count = len(problems)
        head = f"{count} problem{'s' if count != 1 else ''} in the charter"
        super().__init__(head + ":\n" + "\n".join(str(p) for p in problems))


# What a refusal at commit adds (PostgreSQL sends an owner transaction's changes then): the
# owner's caller learns nothing was committed; a command's sender gets the refusal without it
ROLLED_BACK = "; the transaction was rolled back and nothing was committed"


class OwnershipError(Error):
    """A context tried to write an entity that another context owns (G1)."""

    def __init__(
        self,
        entity: str,
        owner: str,
        team: str,
        writer: str,
        commands: tuple[str, ...] = (),
        *,
        handling: str = "",
    ) -> None:
        """`commands`: those of the entity that `writer` may send its owner instead;
        `handling`: the command `writer` tried to register a handler of."""
        self.entity, self.owner, self.team, self.writer = entity, owner, team, writer
        self.commands = commands
        if handling:
            super().__init__(
                f"'{writer}' may not handle {handling}: it changes {entity}, owned by context "
                f"'{owner}' (team {team}). Register the handler on the owner: "
                f"system.context({owner!r}).handles({handling!r})."
            )
            return
        ask = (
            f"Send '{owner}' a command instead: "
            + " or ".join(f"ctx.send({name!r}, …)" for name in commands)
            if commands
            else f"Ask '{owner}' to make the change"
        )
        super().__init__(
            f"{entity} is owned by context '{owner}' (team {team}); '{writer}' may not write it. "
            f"{ask}, or keep a read-only copy fed by its events."
        )


class FencedError(OwnershipError):
    """A store refused a write to records whose ownership moved away from it, or has not
    reached it yet (G10: `charter transfer` fenced them)."""

    def __init__(self, entity: str, detail: str) -> None:
        self.entity, self.detail = entity, detail
        self.owner, self.team, self.writer, self.commands = "", "", "", ()
        Error.__init__(
            self,
            f"{entity}: this store refuses the write: {detail}. Its ownership is moving or "
            "moved (charter transfer); reload the charter to learn who owns it now.",
        )


class ValidationError(Error):
    """A value does not fit its field: wrong type, missing, or not one of the enum values."""


class ConflictError(Error):
    """An expected version no longer matches: someone else changed the record first."""


class ConstraintError(Error):
    """A write would break a `unique` field or a `no_overlap` constraint."""


class NotFoundError(Error):
    """No record with that id (or it was deleted)."""


class CommandTimeoutError(Error):
    """No answer came to a command in time (charter.commands). It may still be applied: it
    waits on the bus until its owner takes it. Sending it again with the same `key` is
    safe (a key is applied at most once) and answers with its outcome."""

    def __init__(self, command: str, owner: str, key: str, timeout: float) -> None:
        self.command, self.owner, self.key, self.timeout = command, owner, key, timeout
        super().__init__(
            f"no answer from '{owner}' to {command} (key {key!r}) within {timeout:g}s: it may "
            f"still be applied, once its owner takes it from the bus; to learn its outcome, "
            f"send it again with key={key!r} (a key is never applied twice)"
        )


class EventError(Error):
    """An event that cannot be read or applied. Names the event id and version."""


class BackfillError(Error):
    """A copy needs a first fill from its owner's current records, and they cannot be read
    from here (the projector's role or credentials do not reach the owner's store)."""


class SchemaChangeError(Error):
    """A charter change that would lose or corrupt data already in a store. `line`: the
    charter line of the field concerned."""

    def __init__(self, message: str, line: int = 0) -> None:
        self.line = line
        super().__init__(message)


class BackendError(Error):
    """A store or the bus failed (its driver raised): names which one (the context, or the
    bus), its server (the URL without its password) and what to try. Every driver error
    (sqlite3, psycopg, nats) reaches callers as one of these (charter.boundary)."""

    def __init__(self, message: str, *, what: str = "", server: str = "") -> None:
        self.what, self.server = what, server
        super().__init__(message)


class UnavailableError(BackendError):
    """The store or bus cannot be reached, or went away in the middle of an operation
    (stopped, restarting, refusing connections, timing out). Trying again may work, and
    `charter run` does, backing off."""


class MissingExtraError(Error):
    """A store or bus the charter names needs a driver that is not installed: `extra` is
    the charter extra that installs it (`pip install 'charter[postgres]'`)."""

    def __init__(self, message: str, *, extra: str, package: str) -> None:
        self.extra, self.package = extra, package
        super().__init__(message)


class StaleReadError(Error):
    """A copy did not get a change within the wait (`CopyReader.wait_for`): names the copy,
    what it waited for and what the copy holds, how far behind its owner the copy is (events
    and seconds, as `charter status` measures it; None when that could not be measured) and
    its window."""

    def __init__(
        self,
        message: str,
        *,
        copy: str,
        token: str,
        held: int,
        lag_events: int | None,
        lag_s: float | None,
        window_s: float,
        waited_s: float,
    ) -> None:
        self.copy, self.token, self.held = copy, token, held
        self.lag_events, self.lag_s, self.window_s = lag_events, lag_s, window_s
        self.waited_s = waited_s
        super().__init__(message)
