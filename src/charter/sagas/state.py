"""A saga run as its record keeps it: the entity named after the saga (charter.model's
saga_entity), owned by the orchestrating context, one record per run. Its `data` field is
JSON: the input the run started with, the step names it started under and each step's
result (a Record result kept as the owner answered it, public fields only)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from charter.commands import _result
from charter.errors import ValidationError
from charter.model import Charter
from charter.owner import Record

RUNNING, COMPENSATING = "running", "compensating"
COMPLETED, COMPENSATED, PARKED = "completed", "compensated", "parked"
ACTIVE = (RUNNING, COMPENSATING)  # what an orchestrator still works on
ENDED = (COMPLETED, COMPENSATED, PARKED)


@dataclass(frozen=True)
class Run:
    """One run of a saga. `step` is the step to do next (running) or to compensate next
    (compensating; -1: none left); `unsure` a step sent but never answered, whose outcome
    is learnt (sent again under its key) before it is compensated."""

    saga: str
    id: str
    version: int
    status: str
    step: int
    attempts: int
    next_at: float
    deadline: float
    input: dict[str, Any]
    steps: tuple[str, ...]
    results: dict[str, Any] = field(default_factory=dict)  # step name -> answer, as JSON
    unsure: int | None = None
    reason: str | None = None
    # a compensation refused (parked: nothing applied) makes `resume` send the undos under
    # keys of a new round, since a key answers its first outcome, the refusal, for ever
    refused: bool = False
    round: int = 0

    @classmethod
    def from_record(cls, record: Record) -> Run:
        data = orjson.loads(record["data"])
        return cls(
            record.entity,
            record.id,
            record.version,
            record["status"],
            record["step"],
            record["attempts"],
            record["next_at"],
            record["deadline"],
            data["input"],
            tuple(data["steps"]),
            data.get("results") or {},
            data.get("unsure"),
            record.get("reason"),
            bool(data.get("refused", False)),
            int(data.get("round", 0)),
        )

    def data(self) -> str:
        doc: dict[str, Any] = {
            "input": self.input,
            "steps": list(self.steps),
            "results": self.results,
        }
        if self.unsure is not None:
            doc["unsure"] = self.unsure
        if self.refused:
            doc["refused"] = True
        if self.round:
            doc["round"] = self.round
        return orjson.dumps(doc).decode()

    def fields(self) -> dict[str, Any]:
        """What its record holds, as an owner update takes it."""
        return {
            "status": self.status,
            "step": self.step,
            "attempts": self.attempts,
            "next_at": self.next_at,
            "deadline": self.deadline,
            "data": self.data(),
            "reason": self.reason,
        }

    def but(self, **changes: Any) -> Run:
        return replace(self, **changes)

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    def step_name(self) -> str | None:
        """The step it is at, by name (None past the last, or before the first)."""
        return self.steps[self.step] if 0 <= self.step < len(self.steps) else None


def initial(
    saga: str, input: dict[str, Any], steps: tuple[str, ...], now: float, timeout: float
) -> dict[str, Any]:
    """The fields of a new run's record."""
    try:
        data = orjson.dumps({"input": input, "steps": list(steps), "results": {}}).decode()
    except TypeError as exc:
        raise ValidationError(f"saga {saga}: its input must be JSON ({exc})") from None
    return {
        "status": RUNNING,
        "step": 0,
        "attempts": 0,
        "next_at": now,
        "deadline": now + timeout,
        "data": data,
        "reason": None,
    }


class View:
    """What a step's arguments are made from: the run's input and the results of the steps
    done so far, by name, as attributes or items (`s.total`, `s.PlaceOrder.id`); a Record
    result comes back as a Record (its id, version and public fields). `s.saga_id` is the
    run's id."""

    __slots__ = ("_charter", "_run")

    def __init__(self, charter: Charter, run: Run) -> None:
        self._charter, self._run = charter, run

    @property
    def saga_id(self) -> str:
        return self._run.id

    def __getitem__(self, name: str) -> Any:
        if name in self._run.results:
            return _result(self._charter, self._run.results[name])
        if name in self._run.input:
            return self._run.input[name]
        known = [*self._run.input, *self._run.results]
        raise KeyError(
            f"saga {self._run.saga} has no input or step result '{name}' (it has: "
            f"{', '.join(known) or 'none'})"
        )

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(exc.args[0]) from None

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default
