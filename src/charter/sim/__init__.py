"""Deterministic simulation of the whole pipeline: one seed is one reproducible run of
owners writing, relays, projectors, lanes, fills, compaction and a schema change, on a
simulated clock, with crashes and bus faults; a checker then asserts the guarantees.

    python -m charter.sim --seeds 10000
    python -m charter.sim --seed 4711          # replay one, with its history
"""

from charter.sim.simulation import Config, Outcome, Simulation, run

__all__ = ["Config", "Outcome", "Simulation", "run"]
