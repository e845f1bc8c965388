"""python -m charter.sim: run many seeds, or replay one with its history."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click

from charter.errors import CharterError
from charter.model import Charter
from charter.sim.bugs import NAMES, planted
from charter.sim.charters import from_file, library
from charter.sim.simulation import STEPS, Outcome, run

HISTORY_LINES = 40  # of the run that failed, the steps that led to it


@functools.cache
def _charter(path: Path | None) -> Charter:
    """Read once per process: parsing a charter costs more than a simulated run."""
    return from_file(path) if path else library()


def _one(job: tuple[str | None, int, int]) -> Outcome:
    path, seed, steps = job
    return run(_charter(Path(path) if path else None), seed, steps)


_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TURNS = ("crashed", "compacted", "deployed", "lost", "rewound", "quiet", "VIOLATION", "transfer")


def replay_command(seed: int, path: Path | None, plant: str | None = None) -> str:
    where = f" --charter {path}" if path else ""
    bug = f" --plant {plant!r}" if plant else ""
    return f"python -m charter.sim --seed {seed}{where}{bug}"


def led_to(outcome: Outcome, lines: int = HISTORY_LINES) -> list[str]:
    """The lines of the run's history about the records the first violation names, and
    the turns of the world (crashes, compaction, deployments, losses, a transfer)."""
    ids = {found[-6:] for found in _ID.findall(outcome.violations[0])}
    picked = [
        line
        for line in outcome.history
        if any(i in line for i in ids) or any(t in line for t in _TURNS)
    ]
    return picked[-lines:]


def report(outcome: Outcome, path: Path | None, plant: str | None = None) -> str:
    """A failed run, readably: the seed, how to replay it, what broke, what led to it."""
    shown = led_to(outcome)
    return "\n".join(
        [
            f"seed {outcome.seed} FAILED: {outcome.violations[0]}",
            *(f"  and: {v}" for v in outcome.violations[1:3]),
            f"  replay (the whole history): {replay_command(outcome.seed, path, plant)}",
            f"  what led to it ({len(shown)} of {len(outcome.history)} steps: the records "
            "it names, crashes, compaction, deployments, losses, a transfer):",
            *(f"    {line}" for line in shown),
        ]
    )


@click.command()
@click.option("--seeds", type=int, default=1000, show_default=True, help="How many seeds.")
@click.option("--start", type=int, default=0, show_default=True, help="The first seed.")
@click.option("--seed", type=int, default=None, help="Replay this one seed, with its history.")
@click.option(
    "--charter",
    "path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Simulate this charter (its stores and bus moved into memory); default: a library.",
)
@click.option("--steps", type=int, default=STEPS, show_default=True, help="Actions per run.")
@click.option("--jobs", type=int, default=1, show_default=True, help="Processes to use.")
@click.option(
    "--plant",
    type=click.Choice(NAMES),
    default=None,
    help="Plant a known bug first, to see the checker catch it.",
)
def main(
    seeds: int,
    start: int,
    seed: int | None,
    path: Path | None,
    steps: int,
    jobs: int,
    plant: str | None,
) -> None:
    """Deterministic simulation of the whole pipeline: each seed is one reproducible run
    on a simulated clock, with crashes and bus faults, checked against the guarantees.
    Exit 1 when a seed fails (the first failure is printed with a replay command)."""
    try:
        spec = _charter(path)
    except CharterError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    if not spec.entities or not spec.copies:
        click.echo(f"{spec.path}: the charter declares no copies: nothing to simulate", err=True)
        sys.exit(1)
    with planted(plant) if plant else contextlib.nullcontext():
        if seed is not None:
            replay(spec, seed, steps, path, plant)
        else:
            many(seeds, start, steps, jobs, path, plant)


def replay(spec: Charter, seed: int, steps: int, path: Path | None, plant: str | None) -> None:
    """One seed, with its whole history."""
    outcome = run(spec, seed, steps)
    click.echo("\n".join(outcome.history))
    if outcome.ok:
        click.echo(f"seed {seed}: ok ({outcome.operations} operations)")
        return
    click.echo(report(outcome, path, plant))
    sys.exit(1)


def many(
    seeds: int, start: int, steps: int, jobs: int, path: Path | None, plant: str | None
) -> None:
    """Seeds start … start+seeds-1, in `jobs` processes; the first failure reported."""
    began = time.perf_counter()
    work = [(str(path) if path else None, n, steps) for n in range(start, start + seeds)]
    failed: list[Outcome] = []
    operations = 0
    with contextlib.ExitStack() as stack:
        if jobs > 1:
            pool = stack.enter_context(multiprocessing.get_context("fork").Pool(jobs))
            outcomes: Iterator[Outcome] = pool.imap(_one, work, chunksize=50)
        else:
            outcomes = map(_one, work)
        for outcome in outcomes:
            operations += outcome.operations
            if not outcome.ok:
                failed.append(outcome)
    took = time.perf_counter() - began
    click.echo(
        f"{seeds} seeds in {took:.1f} s ({seeds / took:.0f} seeds/s, "
        f"{operations / max(seeds, 1):.0f} operations per seed): {len(failed)} failed"
    )
    if failed:
        click.echo(report(failed[0], path, plant))
        others = ", ".join(str(o.seed) for o in failed[1:11])
        if others:
            click.echo(f"also failed: {others}{' …' if len(failed) > 11 else ''}")
        sys.exit(1)


if __name__ == "__main__":
    main()
