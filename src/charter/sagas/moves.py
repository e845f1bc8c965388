"""What a run does next, and what an answer makes of it: the saga's state machine, pure
(no store, no bus), so the orchestrator (worker.py) only sends and records.

running, step i: send step i (key `…:i:do`). Its result → step i+1 (completed after the
last). Refused → compensating from step i-1. No answer → tried again after a pause that
doubles; past the deadline → compensating from step i, which is `unsure`: its command may
still be applied, so it is sent again under its key until its outcome is known (done: it
is compensated too; refused: not).
compensating, step j: send the undo of step j (key `…:j:undo`); its answer → step j-1
(compensated below the first). Refused → parked with the owner's reason; no answer after
the saga's tries → parked. A run parked by a refusal and resumed sends its undos under keys
of a new round (`…:j:undo:1`): the refusal applied nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from charter import errors
from charter.model import Charter
from charter.sagas.declare import Saga, Step
from charter.sagas.state import COMPENSATED, COMPENSATING, COMPLETED, PARKED, RUNNING, Run, View


@dataclass(frozen=True)
class Send:
    """A command to send for a run: step `index`'s (`undo`: its compensation's)."""

    index: int
    undo: bool
    command: str
    key: str
    args: dict[str, Any]


@dataclass(frozen=True)
class Answer:
    """What came back: the result (ok), the owner's refusal, or nothing in time."""

    ok: bool = False
    result: Any = None
    refused: Exception | None = None

    @property
    def none(self) -> bool:
        return not self.ok and self.refused is None


NO_ANSWER = Answer()


def key(run: Run, index: int, undo: bool) -> str:
    """A step's key; an undo's after a refused compensation was resumed (round 1, 2, …)
    ends in its round: the refused key would answer the refusal again, and a refusal
    applied nothing, so sending it anew under another key applies it at most once."""
    round = f":{run.round}" if undo and run.round else ""
    return f"saga:{run.saga}:{run.id}:{index}:{'undo' if undo else 'do'}{round}"


def said(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


def plan(saga: Saga, charter: Charter, run: Run, now: float) -> tuple[Run, Send | None]:
    """The run after the moves that need no owner (its deadline passing, a step without
    undo skipped, the end), and the command it must send next (None: nothing now)."""
    while True:
        if run.ended or run.next_at > now:
            return run, None
        if run.status == RUNNING:
            if run.step >= len(saga.steps):
                return run.but(status=COMPLETED, attempts=0), None
            if now >= run.deadline:
                reason = f"timed out after {saga.timeout:g} s at step {saga.steps[run.step].name}"
                run = run.but(status=COMPENSATING, unsure=run.step, attempts=0, reason=reason)
                continue
            step = saga.steps[run.step]
            try:
                args = dict(step.args(View(charter, run)))
            except Exception as exc:  # the user's function: a refusal of the saga's own
                return _refused(run, step, exc, undo=False), None
            return run, _send(run, run.step, False, step.command, args)
        # compensating
        if run.step < 0:
            return run.but(status=COMPENSATED, attempts=0), None
        step = saga.steps[run.step]
        if run.unsure == run.step:  # learn its outcome first: sent again under its key
            try:
                args = dict(step.args(View(charter, run)))
            except Exception:  # it could not have been sent: not done
                run = run.but(unsure=None, step=run.step - 1)
                continue
            return run, _send(run, run.step, False, step.command, args)
        if step.undo is None:
            run = run.but(step=run.step - 1)
            continue
        try:
            args = dict(step.undo_arguments(View(charter, run)))
        except Exception as exc:
            return _refused(run, step, exc, undo=True), None
        return run, _send(run, run.step, True, step.undo, args)


def _send(run: Run, index: int, undo: bool, command: str, args: dict[str, Any]) -> Send:
    return Send(index, undo, command, key(run, index, undo), args)


def after(saga: Saga, run: Run, sent: Send, answer: Answer, now: float) -> Run:
    """The run once `sent` was answered (or not)."""
    step = saga.steps[sent.index]
    if answer.none:
        return _again(saga, run, sent, now)
    if not sent.undo and run.status == RUNNING:
        if answer.ok:
            results = {**run.results, step.name: answer.result}
            done = sent.index + 1 >= len(saga.steps)
            return run.but(
                results=results,
                step=sent.index + 1,
                attempts=0,
                next_at=now,
                status=COMPLETED if done else RUNNING,
            )
        assert answer.refused is not None
        return _refused(run, step, answer.refused, undo=False)
    if not sent.undo:  # the unsure step's outcome, learnt while compensating
        if answer.ok:
            results = {**run.results, step.name: answer.result}
            return run.but(results=results, unsure=None, attempts=0, next_at=now)
        return run.but(unsure=None, step=sent.index - 1, attempts=0, next_at=now)
    if answer.ok:
        left = sent.index - 1
        return run.but(
            step=left, attempts=0, next_at=now, status=COMPENSATED if left < 0 else COMPENSATING
        )
    assert answer.refused is not None
    return _refused(run, step, answer.refused, undo=True)


def _refused(run: Run, step: Step, exc: Exception, *, undo: bool) -> Run:
    if undo:
        reason = f"compensation {step.undo} of step {step.name} failed: {said(exc)}"
        if isinstance(exc, errors.ConflictError):
            reason += " (the record changed since the step: someone else wrote it meanwhile)"
        return run.but(status=PARKED, attempts=0, reason=reason, refused=True)
    reason = f"step {step.name} refused: {said(exc)}"
    return run.but(status=COMPENSATING, step=run.step - 1, attempts=0, reason=reason)


def _again(saga: Saga, run: Run, sent: Send, now: float) -> Run:
    """No answer in time: try again after a pause; a compensation (or an unsure step's
    outcome) that saw no answer in all the saga's tries parks the run."""
    attempts = run.attempts + 1
    first, longest = saga.backoff
    pause = min(first * 2 ** (attempts - 1), longest)
    if run.status == COMPENSATING and attempts >= saga.tries:
        owner = "its owner"
        what = f"compensation {sent.command}" if sent.undo else f"step {sent.command}'s outcome"
        reason = f"{what}: no answer from {owner} after {attempts} tries (key {sent.key})"
        return run.but(status=PARKED, attempts=attempts, reason=reason)
    if run.status == RUNNING and now + pause >= run.deadline:
        reason = (
            f"timed out after {saga.timeout:g} s at step {sent.command} (no answer from its owner)"
        )
        return run.but(
            status=COMPENSATING, unsure=sent.index, attempts=0, next_at=now, reason=reason
        )
    return run.but(attempts=attempts, next_at=now + pause)
