"""A saga as its user declares it: steps that are commands to owners, each with the
command that undoes it (its compensation), and the context that orchestrates it, which the
charter names (`sagas: {Checkout: {in: orders}}`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from charter import clock
from charter.errors import ValidationError
from charter.model import Charter, _hint
from charter.owner import Record, Transaction
from charter.sagas.state import ENDED, Run, View, initial

if TYPE_CHECKING:
    from charter.system import ContextHandle, System

Args = Callable[[View], Mapping[str, Any]]
Point = Callable[[str, "list[Run]"], None]

DEFAULT_TIMEOUT_S = 60.0  # a run stops going forward this long after it started
DEFAULT_STEP_TIMEOUT_S = 5.0  # how long one try waits for the owner's answer
BACKOFF_S = (0.1, 5.0)  # the pause after the first try without an answer, and the longest
DEFAULT_TRIES = 20  # tries of a compensation without an answer before the run is parked


def wake_key(context: str) -> str:
    """The signal that wakes the orchestrator of `context`'s sagas in this process."""
    return f"sagas:{context}"


def _by_id(view: View, result: Any) -> Mapping[str, Any]:
    if isinstance(result, Record):
        return {"id": result.id}
    raise ValidationError("the step's result is not a record: give its undo undo_args")


@dataclass(frozen=True)
class Step:
    """One step: the command `command` sent to its owner with the arguments `args` makes of
    the run so far (`id=` names the record), and `undo`, the command that compensates it,
    with `undo_args` (by default the id of the record the step's command returned). A step
    without undo needs none (the last one, say, or one that changes nothing). A step is
    named by its command (`s.PlaceOrder`): a saga sends each command in one step only."""

    command: str
    args: Args
    undo: str | None = None
    undo_args: Args | None = None

    @property
    def name(self) -> str:
        return self.command

    def undo_arguments(self, view: View) -> Mapping[str, Any]:
        if self.undo_args is not None:
            return self.undo_args(view)
        return _by_id(view, view[self.name])


class Saga:
    """Steps run in order, each a command to its owner sent under a key of its own
    (`saga:<Saga>:<run id>:<step>:do`, `…:undo`), so a step resumed after a crash is never
    applied twice. A step its owner refuses, or a run past its `timeout`, is compensated:
    the undo of each step done, in reverse order. A try without an answer is tried again
    after a pause that doubles (`backoff`: first, longest); a compensation refused, or not
    answered after `tries`, parks the run with its reason."""

    def __init__(
        self,
        name: str,
        steps: list[Step],
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        step_timeout: float = DEFAULT_STEP_TIMEOUT_S,
        backoff: tuple[float, float] = BACKOFF_S,
        tries: int = DEFAULT_TRIES,
    ) -> None:
        if not steps:
            raise ValidationError(f"saga {name} has no steps")
        names = [s.name for s in steps]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValidationError(f"saga {name}: step {', '.join(twice)} appears twice")
        self.name, self.steps = name, list(steps)
        self.timeout, self.step_timeout = float(timeout), float(step_timeout)
        self.backoff, self.tries = backoff, tries
        # Called at each point of the orchestrator's work, with the runs in hand: "sent"
        # (their commands are on the bus), "answered" (the answers are in), "recorded"
        # (their new states committed). For tests (a kill -9 there) and tracing.
        self.at: Point | None = None

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps)

    def context(self, charter: Charter) -> str:
        """The context that orchestrates it; checks the charter declares it, and that the
        context may send every command of its steps."""
        context = charter.sagas.get(self.name)
        if context is None:
            hint = _hint(self.name, tuple(charter.sagas))
            raise ValidationError(
                f"no saga '{self.name}' in the charter; "
                + (hint or f"declare it: sagas: {{{self.name}: {{in: <context>}}}}")
            )
        for step in self.steps:
            for command in (step.command, step.undo):
                if command is None:
                    continue
                spec = charter.commands.get(command)
                if spec is None:
                    hint = _hint(command, tuple(charter.commands))
                    raise ValidationError(
                        f"saga {self.name}: no command '{command}' in the charter"
                        + (f"; {hint}" if hint else "")
                    )
                if context not in spec.senders:
                    raise ValidationError(
                        f"saga {self.name} runs in '{context}', which may not send {command} "
                        f"(its senders: {', '.join(spec.senders)}); add '{context}' to them"
                    )
        return context

    def register(self, system: System) -> Saga:
        """Let a Runner of `system` that runs the orchestrating context run this saga's
        orchestrator (`charter run --handlers` calls a function that does this)."""
        context = self.context(system.charter)
        system.sagas.setdefault(context, {})[self.name] = self
        return self

    def start(
        self,
        where: System | ContextHandle | Transaction,
        /,
        *,
        timeout: float | None = None,
        **input: Any,
    ) -> str:
        """Start a run with `input` (JSON values); returns its id. Given an owner
        transaction of the orchestrating context, the run starts when it commits, with the
        rest of it."""
        from charter.system import ContextHandle, System

        if isinstance(where, Transaction):
            return self._create(where, input, timeout)
        system = where if isinstance(where, System) else where.system
        context = self.context(system.charter)
        if isinstance(where, ContextHandle) and where.name != context:
            raise ValidationError(
                f"saga {self.name} runs in '{context}', not in '{where.name}': start it there"
            )
        with system.context(context).transaction(f"saga/{self.name}") as tx:
            run_id = self._create(tx, input, timeout)
        system.signals.notify(wake_key(context))
        return run_id

    def _create(self, tx: Transaction, input: dict[str, Any], timeout: float | None) -> str:
        fields = initial(
            self.name,
            input,
            self.step_names,
            clock.time_s(),
            self.timeout if timeout is None else timeout,
        )
        return tx.create(self.name, **fields).id

    def run(self, system: System, run_id: str) -> Run | None:
        """A run as its record says now (None: no such run)."""
        record = system.context(self.context(system.charter)).get(self.name, run_id)
        return None if record is None else Run.from_record(record)

    def wait(self, system: System, run_id: str, timeout: float = 30.0) -> Run:
        """Wait until the run has ended (completed, compensated or parked); the run then,
        or as it is after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(system, run_id)
            if run is None:
                raise ValidationError(f"no run {run_id} of saga {self.name}")
            if run.status in ENDED or time.monotonic() >= deadline:
                return run
            time.sleep(0.005)
