"""Sagas (issue 12): several owners changed in one business outcome, each step a command
to its owner with the command that compensates it. See declare.py for the API, moves.py
for the state machine, worker.py for the orchestrator the Runner runs, and listing.py for
`charter sagas`."""

from charter.sagas.declare import Saga, Step
from charter.sagas.state import Run, View

__all__ = ["Run", "Saga", "Step", "View"]
