"""The simulation's speed: how many seeds per second, how many operations per seed, with
one process and with two (the project's machines have two cores), against the issue's
target of 10,000 seeds in at most 3 minutes.

    .venv/bin/python benchmarks/sim.py [--seeds 10000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from charter.sim import run
from charter.sim.charters import library

TARGET_SEEDS, TARGET_S = 10_000, 180.0


def one_process(seeds: int) -> tuple[float, float]:
    """Seconds for `seeds` seeds in this process, and operations per seed."""
    charter, operations = library(), 0
    began = time.perf_counter()
    for seed in range(seeds):
        operations += run(charter, seed).operations
    return time.perf_counter() - began, operations / seeds


def two_processes(seeds: int) -> float:
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "charter.sim", "--seeds", str(seeds), "--jobs", "2"],
        capture_output=True,
        text=True,
    )
    took = time.perf_counter() - began
    if done.returncode != 0:
        print(done.stdout[-2000:], file=sys.stderr)
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=TARGET_SEEDS)
    seeds = parser.parse_args().seeds
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    sample = max(seeds // 10, 100)
    alone, per_seed = one_process(sample)
    both = two_processes(seeds)
    rate = seeds / both
    verdict = "PASS" if both * TARGET_SEEDS / seeds <= TARGET_S else "MISS"
    print(f"one process:   {sample / alone:7.0f} seeds/s ({per_seed:.0f} operations per seed)")
    print(
        f"two processes: {rate:7.0f} seeds/s: {seeds} seeds in {both:.1f} s "
        f"(target {TARGET_SEEDS} in ≤ {TARGET_S:.0f} s): {verdict}"
    )


if __name__ == "__main__":
    main()
