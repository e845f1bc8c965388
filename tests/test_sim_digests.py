"""Incremental digests in the deterministic simulation (charter.sim.digesting): along the
way, with crashes, bus faults, compaction and schema changes about, and after quiet, the
buckets each memory store keeps equal a recomputation, and an incremental check finds the
same differences, kind by kind, as a full one; a stale bucket is caught, by each half of
that check alone."""

from __future__ import annotations

import pytest

from charter.sim import Simulation, digesting, run
from charter.sim.bugs import planted
from charter.sim.charters import library

SEEDS = 200


def test_kept_digests_and_incremental_checks_hold_in_every_seed() -> None:
    along, final, turns = 0, 0, set()
    for seed in range(SEEDS):
        simulation = Simulation(library(), seed)
        outcome = simulation.run()
        assert outcome.ok, "\n".join(outcome.violations + outcome.history[-20:])
        along += simulation.digests.checks.count("along the way")
        final += simulation.digests.checks.count("after quiet")
        history = "\n".join(outcome.history)
        turns |= {t for t in ("crashed", "compacted", "deployed", "lost") if t in history}
    assert final == SEEDS, "every run ends with a check"
    assert along >= SEEDS // 2, f"only {along} checks along the way in {SEEDS} seeds"
    assert turns == {"crashed", "compacted", "deployed", "lost"}, turns


@pytest.mark.parametrize("half", ["_kept", "_same_findings"])
def test_a_stale_bucket_is_caught_by_each_half_of_the_check(
    half: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one half of the check turned off, the other still catches a bucket that no
    write marks dirty: kept against recomputed, and incremental against full."""
    monkeypatch.setattr(digesting.Digests, half, lambda *args: None)
    with planted("a bucket left stale"):
        for seed in range(100):
            outcome = run(library(), seed)
            if not outcome.ok:
                other = "differ from a recomputation" if half != "_kept" else "incrementally"
                assert any(other in v for v in outcome.violations), outcome.violations
                return
    pytest.fail("a stale bucket was not caught in 100 seeds")
