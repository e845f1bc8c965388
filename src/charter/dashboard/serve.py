"""`charter serve`: the dashboard on uvicorn, on loopback unless told otherwise. It binds
its socket before it says where it is (so `--port 0` prints the port it got, and a port in
use is a clear error), prints the address with the token actions need, and serves until
SIGINT or SIGTERM."""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from charter.dashboard.app import create_app
from charter.dashboard.auth import new_token
from charter.dashboard.findings import Findings
from charter.errors import Error, MissingExtraError
from charter.system import System

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket at host:port, or an Error saying why not."""
    bare = host.strip("[]")
    try:
        infos = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise Error(f"--host {host}: not an address this machine can listen on ({exc})") from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise Error(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} "
            "(another process has the port? choose another with --port, 0 for any free one)"
        ) from None
    sock.set_inheritable(True)
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(
    path: Path,
    host: str = "127.0.0.1",
    port: int = 8800,
    token: str | None = None,
    read_only: bool = False,
    audit: Sequence[Path] = (),
    mapping: Mapping[str, str] | None = None,
    out: TextIO = sys.stdout,
) -> None:
    """Serve the dashboard of the charter at `path` until stopped."""
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise MissingExtraError(
            "charter serve needs uvicorn, which is not installed here: pip install 'charter[web]'",
            extra="web",
            package="uvicorn",
        ) from None
    if read_only and token:
        raise Error("--read-only or --token, not both")
    system = System.load(path)
    try:
        findings = Findings(system.charter, audit, mapping) if audit else None
        given = token is not None
        if not read_only and not token:
            token = new_token()
        sock = bind(host, port)
        hosts = [*LOOPBACK_HOSTS, host] if loopback(host) else None
        app = create_app(system, None if read_only else token, findings=findings, hosts=hosts)
        _logging()
        where = url(sock)
        print(f"charter dashboard of '{system.charter.name}': {where}", file=out)
        if read_only:
            print("read-only (--read-only): no retry or drop of parked events", file=out)
        elif given:
            print(f"actions (retry, drop) need the --token given: {where}#token=…", file=out)
        else:
            print(f"actions (retry, drop) with this token: {where}#token={token}", file=out)
        if not loopback(host):
            print(
                f"note: listening on {host}, beyond this machine, without TLS: anyone who "
                "reaches the port sees the dashboard (actions still need the token)",
                file=out,
            )
        if any(c.store.startswith("memory://") for c in system.charter.contexts.values()):
            print(
                "note: this charter keeps its data in memory://, which lives in one process: "
                "the dashboard sees an empty system",
                file=out,
            )
        out.flush()
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        for number in (signal.SIGINT, signal.SIGTERM):
            # uvicorn stops gracefully on these, then raises them again: here, a clean exit
            signal.signal(number, _stopped)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        system.close()


def _stopped(_signum: int, _frame: object) -> None:
    """The signal that stopped the server, raised again by uvicorn once it has: done."""


def _logging() -> None:
    """What an action does (charter.parking's notes) and what fails, on stderr."""
    logger = logging.getLogger("charter")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
