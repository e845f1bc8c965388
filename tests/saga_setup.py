"""The checkout example's handlers and saga, registered for the saga tests; in a process of
its own (`charter run --handlers tests.saga_setup:register`), CHARTER_TEST_SAGA_CRASH
(`POINT:N`) makes the orchestrator kill itself with SIGKILL at the N-th time it reaches
POINT: "sent" (its commands on the bus, their answers not yet in) and "answered" (the
answers in, not yet recorded), counted once the process has moved a run, so that each
process makes progress; "recorded" (the runs' new states committed: a step boundary)."""

from __future__ import annotations

import os
import signal

from charter.sagas import Run
from charter.system import System
from examples.checkout import handlers

CRASH = "CHARTER_TEST_SAGA_CRASH"


def register(system: System) -> None:
    handlers.register(system)
    spec = os.environ.get(CRASH)
    if not spec:
        handlers.CHECKOUT.at = None
        return
    point, _, nth = spec.partition(":")
    seen = [0]
    moved = [point == "recorded"]  # inside a step: only once this process moved a run

    def at(where: str, runs: list[Run]) -> None:
        if where == "recorded":
            moved[0] = True
        if where == point and moved[0]:
            seen[0] += 1
            if seen[0] >= int(nth or 1):
                print(f"crashing at {where} #{seen[0]} ({len(runs)} runs)", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

    handlers.CHECKOUT.at = at
