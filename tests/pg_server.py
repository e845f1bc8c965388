"""A PostgreSQL server of a test's own (initdb + pg_ctl in a temporary folder, on a free
loopback port, trust authentication), so that a test can stop and restart it without
touching the shared one:

    with pg_server.server() as pg:
        url = pg.url + "?schema=x"
        pg.stop()    # fast shutdown: sessions are terminated (AdminShutdown)
        pg.start()   # the same folder and port again

initdb refuses to run as root: as root, the server runs as the `postgres` user."""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.nats_servers import HOST, free_ports

BIN = Path(os.environ.get("CHARTER_PG_BIN", "/usr/lib/postgresql/15/bin"))


class Server:
    def __init__(self, settings: Mapping[str, str] | None = None) -> None:
        if not (BIN / "initdb").exists():
            raise RuntimeError(f"no initdb in {BIN} (set CHARTER_PG_BIN)")
        self.folder = Path(tempfile.mkdtemp(prefix="charter-pg-"))
        self.data = self.folder / "data"
        self.port = free_ports(1)[0]
        self.url = f"postgresql://postgres@{HOST}:{self.port}/postgres"
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        self._run(
            str(BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync"
        )
        options = (
            f"-p {self.port} -c listen_addresses={HOST} -c unix_socket_directories={self.folder} "
            "-c fsync=off -c max_connections=100"
        )
        for name, value in (settings or {}).items():  # e.g. {"log_destination": "csvlog"}
            options += f" -c {name}={shlex.quote(value)}"
        (self.folder / "options").write_text(options)

    def _run(self, *command: str) -> None:
        if self._user:
            command = ("runuser", "-u", self._user, "--", *command)
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = (self.folder / "options").read_text()
        log = str(self.folder / "log")
        self._run(
            str(BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", log, "-w", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def server(settings: Mapping[str, str] | None = None) -> Iterator[Server]:
    pg = Server(settings)
    try:
        pg.start()
        yield pg
    finally:
        pg.remove()
