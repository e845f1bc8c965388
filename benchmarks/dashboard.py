"""`charter serve` with 50 copies (issue 11, point 5): its status endpoint under 20
concurrent clients (`wrk`, Debian's package), beside a raw floor on the same server (a
static Starlette response of the same bytes: what uvicorn and Starlette cost alone), and
the page in Debian's chromium (Playwright): from navigation to every copy's row and the map
shown. Targets: the status endpoint's p99 under 50 ms, the page usable within 1 s.

The system is real and live while it is measured: 10 contexts on SQLite, an entity each,
every entity copied into 5 other contexts (50 copies), a SQLite bus; a writer changes
records (about 20 a second) and `charter run` applies them, so every snapshot the
dashboard takes (every 0.5 s, whatever the number of clients) has something to measure.

    .venv/bin/python benchmarks/dashboard.py [--seconds 10] [--loads 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CONTEXTS, COPIES_PER_ENTITY, RECORDS = 10, 5, 100
COPIES = CONTEXTS * COPIES_PER_ENTITY
CLIENTS, TARGET_P99_MS, TARGET_PAGE_S = 20, 50.0, 1.0
CHROMIUM = "/usr/bin/chromium"
TOKEN = "bench-token"
ROWS = (  # every copy's row is shown
    "() => document.body.dataset.ready === '1' && "
    f"document.querySelectorAll('#copies tbody tr').length === {COPIES}"
)
MAP = "() => document.getElementById('map-img').complete && "
MAP += "document.getElementById('map-img').naturalWidth > 0"  # and the map


def charter_text(folder: Path) -> str:
    lines = ["charter: 1", "name: fifty", f'bus: "sqlite:///{folder}/bus.db"', "contexts:"]
    lines += [
        f'  c{c}: {{team: team{c}, store: "sqlite:///{folder}/c{c}.db"}}' for c in range(CONTEXTS)
    ]
    lines.append("entities:")
    for e in range(CONTEXTS):
        lines += [
            f"  E{e}:",
            f"    owner: c{e}",
            "    fields:",
            "      name: {type: string}",
            "      email: {type: string}",
            "      score: {type: integer}",
        ]
    lines.append("copies:")
    for e in range(CONTEXTS):
        for k in range(1, COPIES_PER_ENTITY + 1):
            lines += [
                f"  e{e}_in_c{(e + k) % CONTEXTS}:",
                f"    in: c{(e + k) % CONTEXTS}",
                f"    of: E{e}",
                "    fields: [name, email]" if k % 2 else "    fields: [name, score]",
                f"    window: {k}s",
                f"    breaks: what copy {k} of E{e} feeds goes stale",
            ]
    return "\n".join(lines) + "\n"


def prepare(folder: Path) -> tuple[Path, dict[int, list[str]]]:
    """The charter written, each entity's records made and copied (a fill), then changed
    once and applied (so each copy has latencies to show)."""
    import charter

    path = folder / "charter.yaml"
    path.write_text(charter_text(folder))
    ids: dict[int, list[str]] = {}
    with charter.load(path) as system:
        for e in range(CONTEXTS):
            with system.context(f"c{e}").transaction() as tx:
                ids[e] = [
                    tx.create(f"E{e}", name=f"n{n}", email=f"{n}@x", score=n).id
                    for n in range(RECORDS)
                ]
        charter.Runner(system).drain()
        for e in range(CONTEXTS):
            with system.context(f"c{e}").transaction() as tx:
                for n, ident in enumerate(ids[e][:10]):
                    tx.update(f"E{e}", ident, score=n + 1000)
        charter.Runner(system).drain()
    return path, ids


def serve(path: str, port: int) -> None:
    """In a process of its own: `charter serve`'s app and a floor route (`/floor`: the first
    status body, kept as a static response) on one uvicorn server."""
    import uvicorn
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from charter.dashboard.app import create_app
    from charter.dashboard.serve import bind
    from charter.system import System

    system = System.load(path)
    app = create_app(system, TOKEN)
    kept: list[Response] = []

    async def floor(_request: Request) -> Response:
        if not kept:
            snap = app.state.watcher.snapshot
            kept.append(Response(snap.body, media_type="application/json"))
        return kept[0]

    blank = Response(
        b"<!doctype html><title>floor</title><body data-ready=1>", media_type="text/html"
    )

    async def floor_page(_request: Request) -> Response:
        return blank

    app.router.routes.append(Route("/floor", floor))
    app.router.routes.append(Route("/floor-page", floor_page))
    sock = bind("127.0.0.1", port)
    print("serving", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wrk(url: str, seconds: int) -> dict[str, float]:
    """`wrk` with CLIENTS connections on 2 threads: requests/s and latency percentiles (ms)."""
    done = subprocess.run(
        ["wrk", "-t2", f"-c{CLIENTS}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    )
    out = done.stdout
    found: dict[str, float] = {}
    for pct in ("50", "75", "90", "99"):
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        assert match, out
        value, unit = float(match[1]), match[2]
        found[f"p{pct}"] = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    found["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    found["errors"] = float(errors[1]) if errors else 0.0
    return found


def page_loads(url: str, loads: int, *ready: str) -> list[list[float]]:
    """Seconds from navigation until each of `ready` is true in turn, each load in a fresh
    browser context (nothing cached)."""
    from playwright.sync_api import sync_playwright

    times: list[list[float]] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for _ in range(loads + 1):
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            started = time.perf_counter()
            page.goto(url)
            marks = []
            for check in ready:
                page.wait_for_function(check, polling="raf", timeout=30_000)
                marks.append(time.perf_counter() - started)
            times.append(marks)
            context.close()
        browser.close()
    return times[1:]  # the first warms the browser itself up


def writer(path: Path, ids: dict[int, list[str]], stop: threading.Event) -> None:
    import charter

    n = 0
    with charter.load(path) as system:
        while not stop.is_set():
            e = n % CONTEXTS
            with system.context(f"c{e}").transaction() as tx:
                tx.update(f"E{e}", ids[e][n % RECORDS], score=n)
            n += 1
            stop.wait(0.05)


def snapshot_costs(url: str, count: int = 20) -> list[float]:
    import json
    import urllib.request

    costs, seen = [], set()
    while len(costs) < count:
        with urllib.request.urlopen(url + "api/status") as answer:
            doc = json.loads(answer.read())
        if doc["version"] not in seen:
            seen.add(doc["version"])
            costs.append(doc["took_s"])
        time.sleep(0.2)
    return costs


def map_cost(path: Path) -> float:
    import charter
    from charter import topology
    from charter.status import status

    with charter.load(path) as system:
        rows = status(system)
        started = time.perf_counter()
        topology.render(topology.graph(system.charter, rows), "svg")
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="each wrk run")
    parser.add_argument("--loads", type=int, default=7, help="page loads measured")
    parser.add_argument("--serve", nargs=2, metavar=("CHARTER", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    for tool in ("wrk", "dot"):
        if shutil.which(tool) is None:
            sys.exit(
                f"needs `{tool}` (Debian: apt-get install {'graphviz' if tool == 'dot' else tool})"
            )
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="charter-dashboard-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        path, ids = prepare(folder)
        took = time.perf_counter() - started
        print(f"prepared {COPIES} copies of {CONTEXTS} entities in {took:.1f} s")
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(path), str(port)],
            stdout=subprocess.PIPE,
            env=env,
        )
        runner = subprocess.Popen(
            [sys.executable, "-m", "charter.cli", "run", "-f", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        stop = threading.Event()
        writing = threading.Thread(target=writer, args=(path, ids, stop), daemon=True)
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == b"serving"
            time.sleep(2)  # the first snapshot and the map
            writing.start()
            runs: dict[str, list[dict[str, float]]] = {"floor": [], "status": []}
            for _ in range(2):  # alternating, so both see the same machine
                runs["floor"].append(wrk(url + "floor", args.seconds))
                runs["status"].append(wrk(url + "api/status", args.seconds))
            costs = snapshot_costs(url)
            marks = page_loads(url, args.loads, ROWS, MAP)
            rows, loads = [m[0] for m in marks], [m[1] for m in marks]
            blank = [m[0] for m in page_loads(url + "floor-page", args.loads, "() => 1")]
        finally:
            stop.set()
            for process in (runner, server):
                process.terminate()
                process.wait(20)
        drawing = map_cost(path)
    load_after = os.getloadavg()[0]
    report(runs, costs, rows, loads, blank, drawing, load_before, load_after, args)


def report(
    runs: dict[str, list[dict[str, float]]],
    costs: list[float],
    rows: list[float],
    loads: list[float],
    blank: list[float],
    drawing: float,
    load_before: float,
    load_after: float,
    args: Any,
) -> None:
    def cell(r: dict[str, float]) -> str:
        return f"p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, {r['rps']:,.0f} req/s" + (
            f", {r['errors']:.0f} errors" if r["errors"] else ""
        )

    worst = max(r["p99"] for r in runs["status"])
    floor = max(r["p99"] for r in runs["floor"])
    page = max(loads)
    print()
    print(
        f"Machine: {os.cpu_count()} cores, {platform.platform()}, Python "
        f"{platform.python_version()}; 1-minute load average {load_before:.1f} before, "
        f"{load_after:.1f} after. wrk -t2 -c{CLIENTS} -d{args.seconds}s, twice each, alternating."
    )
    print()
    print("| figure | raw floor (same server) | charter serve | ratio | target | result |")
    print("|---|---|---|---|---|---|")
    for n, (low, high) in enumerate(zip(runs["floor"], runs["status"], strict=True), 1):
        print(
            f"| `/api/status`, {COPIES} copies, {CLIENTS} clients, run {n} | {cell(low)} | "
            f"{cell(high)} | p99 {high['p99'] / low['p99']:.2f}x | p99 < {TARGET_P99_MS:g} ms | "
            f"{'PASS' if high['p99'] < TARGET_P99_MS else '**MISS**'} |"
        )
    print(
        f"| the page usable ({COPIES} rows and the map), {len(loads)} fresh loads | "
        f"a static page: median {statistics.median(blank):.3f} s, max {max(blank):.3f} s | "
        f"median {statistics.median(loads):.3f} s, max {page:.3f} s | "
        f"{statistics.median(loads) / statistics.median(blank):.1f}x | < {TARGET_PAGE_S:g} s | "
        f"{'PASS' if page < TARGET_PAGE_S else '**MISS**'} |"
    )
    print(
        f"| the page's {COPIES} rows shown (the map follows) | "
        f"a static page: median {statistics.median(blank):.3f} s | "
        f"median {statistics.median(rows):.3f} s, max {max(rows):.3f} s | "
        f"{statistics.median(rows) / statistics.median(blank):.1f}x | — | — |"
    )
    print()
    print(
        f"- one snapshot of {COPIES} copies (status, with p50/p99 and shares): median "
        f"{statistics.median(costs) * 1000:.1f} ms, max {max(costs) * 1000:.1f} ms "
        f"({len(costs)} snapshots, taken every 0.5 s whatever the clients)"
    )
    print(f"- the map of {COPIES} copies drawn by dot: {drawing:.2f} s (only when a state changes)")
    print(f"- worst p99: status {worst:.2f} ms against the floor's {floor:.2f} ms")


if __name__ == "__main__":
    main()
