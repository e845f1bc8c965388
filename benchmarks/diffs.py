"""`charter diff` on a large charter: 200 entities and 500 copies (20 contexts, 8 fields an
entity), against a new version with a change of every kind the diff knows on a tenth of
them. Three figures, each the median of several runs: comparing and rendering alone (all
three formats), the same after loading both files (what the command does in its process),
and the whole `charter diff` command as a process (interpreter, imports, both files read,
compared and printed), the figure a user waits for, in wall-clock and CPU seconds (the
machine is shared: others' work stretches the wall clock, much less the CPU time).

    .venv/bin/python benchmarks/diffs.py           # or: run.py --only diff
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from charter import model
from charter.diff import compare
from charter.diffing import Side, as_json, github, text

ENTITIES, COPIES, CONTEXTS, FIELDS = 200, 500, 20, 8
TARGET_S = 1.0
TYPES = ("string", "integer", "number", "timestamp", "uuid", "boolean", "date", "text")


def charter_text(changed: bool = False) -> str:
    """The big charter; `changed`: its new version (every tenth entity and copy changed)."""
    lines = ["charter: 1", "name: big", "bus: sqlite:///.charter/bus.db", "contexts:"]
    for c in range(CONTEXTS):
        team = f"team{c}-renamed" if changed and c % 10 == 3 else f"team{c}"
        lines.append(f'  c{c}: {{team: {team}, store: "sqlite:///.charter/c{c}.db"}}')
    lines.append("entities:")
    for e in range(ENTITIES):
        if changed and e % 50 == 49:
            continue  # removed, with its copies
        lines += [f"  E{e}:", f"    owner: c{e % CONTEXTS}", "    fields:"]
        for f in range(FIELDS):
            kind = TYPES[f]
            options = ""
            if changed and e % 10 == 1 and f == 1:
                kind = "string"  # retyped
            if changed and e % 10 == 2 and f == 0:
                options = ", required: false"  # made optional
            if changed and e % 10 == 4 and f == 6:
                options = ", deprecated: true"
            if changed and e % 10 == 5 and f == 7:
                continue  # removed: no copy keeps field 7
            lines.append(f"      f{f}: {{type: {kind}{options}}}")
        lines.append("      status: {type: enum, values: [a, b, c" + (", d]}" if changed else "]}"))
        if changed and e % 10 == 6:
            lines.append("      added: {type: string, required: false}")
    lines.append("copies:")
    for k in range(COPIES):
        e = k % ENTITIES
        if changed and e % 50 == 49:
            continue
        context = (e + 1 + k // ENTITIES) % CONTEXTS
        fields = ["f0", "f1", "f2", "status"] if k % 2 else ["f0", "f4", "f6"]
        window = "30s" if changed and k % 10 == 7 else "5s"
        lines += [
            f"  k{k}:",
            f"    in: c{context}",
            f"    of: E{e}",
            f"    fields: [{', '.join(fields)}]",
            f"    window: {window}",
            f"    breaks: what copy {k} feeds goes wrong",
        ]
    if changed:
        lines += ["  extra:", "    in: c1", "    of: E0", "    fields: [f3]", "    window: 1m"]
    return "\n".join(lines) + "\n"


def median_s(run: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()  # type: ignore[operator]
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def measure(repeats: int = 7) -> dict[str, float | int]:
    with tempfile.TemporaryDirectory(prefix="charter-bench-diff-") as name:
        folder = Path(name)
        (folder / "old.yaml").write_text(charter_text())
        (folder / "new.yaml").write_text(charter_text(changed=True))
        old = model.load(folder / "old.yaml")
        new = model.load(folder / "new.yaml")
        sides = Side("old.yaml", "old.yaml", old), Side("new.yaml", "new.yaml", new)
        changes = compare(old, new)

        def render_all() -> None:
            found = compare(old, new)
            for render in (text, as_json, github):
                render(found, *sides)

        def load_and_render() -> None:
            model.load(folder / "old.yaml")
            model.load(folder / "new.yaml")
            render_all()

        command = [sys.executable, "-m", "charter.cli", "diff", "old.yaml", "new.yaml"]
        command += ["--format", "json"]

        cpu: list[float] = []

        def process() -> None:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            done = subprocess.run(command, cwd=folder, capture_output=True, check=False)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            assert done.returncode == 4, done.stderr[-2000:]

        found: dict[str, float | int] = {
            "entities": len(old.entities),
            "copies": len(old.copies),
            "changes": len(changes),
            "breaking": sum(c.breaking for c in changes),
            "compare_render_s": median_s(render_all, repeats),
            "in_process_s": median_s(load_and_render, repeats),
            "process_s": median_s(process, repeats),
        }
        found["process_cpu_s"] = statistics.median(cpu)  # CPU: less moved by a busy machine
        return found


def main() -> int:
    found = measure()
    for key, value in found.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    verdict = "PASS" if found["process_s"] < TARGET_S else "MISS"
    print(f"target: the whole command under {TARGET_S:g} s: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
