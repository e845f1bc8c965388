"""Real NATS servers for tests: one, or a JetStream cluster of three, on free loopback
ports in a temporary folder, stopped (and the folder removed) at the end.

    with nats_servers.cluster(3) as servers:
        bus = NatsBus(servers.url + "?replicas=3", "shop")
        servers.kill(1)      # SIGKILL, as a crash or a lost machine
        servers.restart(1)   # the same node again: same ports, same data
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

NATS_SERVER = os.environ.get("CHARTER_NATS_SERVER", "/usr/sbin/nats-server")
HOST = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on right now (held open together, so all different)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Node:
    name: str
    port: int
    cluster_port: int | None
    http_port: int
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None


class Servers:
    """Running nats-server processes; `url` names all of them (comma-separated)."""

    def __init__(
        self, size: int, cluster: bool, extra: str = "", env: dict[str, str] | None = None
    ) -> None:
        """`extra` is appended to every node's config (e.g. an authorization block);
        `env` adds environment variables for the servers (e.g. passwords it names)."""
        self.extra, self.env = extra, env or {}
        if not Path(NATS_SERVER).exists():
            raise RuntimeError(f"no nats-server at {NATS_SERVER} (set CHARTER_NATS_SERVER)")
        self.folder = Path(tempfile.mkdtemp(prefix="charter-nats-"))
        ports = free_ports(size * 3)
        self.nodes = [
            Node(
                name=f"n{i}",
                port=ports[3 * i],
                cluster_port=ports[3 * i + 1] if cluster else None,
                http_port=ports[3 * i + 2],
                config=self.folder / f"n{i}.conf",
                log=self.folder / f"n{i}.log",
            )
            for i in range(size)
        ]
        for node in self.nodes:
            node.config.write_text(self._config(node))
        self._stopped = False
        atexit.register(self.stop)
        try:
            for node in self.nodes:
                self._start(node)
            for node in self.nodes:
                self._wait_ready(node)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return "nats://" + ",".join(f"{HOST}:{node.port}" for node in self.nodes)

    def node_url(self, i: int) -> str:
        return f"nats://{HOST}:{self.nodes[i].port}"

    def _config(self, node: Node) -> str:
        store = self.folder / node.name
        lines = [
            f"server_name: {node.name}",
            f"listen: {HOST}:{node.port}",
            f"http: {HOST}:{node.http_port}",
            "jetstream {",
            f'  store_dir: "{store}"',
            "  max_memory_store: 256MB",
            "  max_file_store: 2GB",
            "}",
        ]
        if node.cluster_port is not None:
            routes = ", ".join(
                f"nats-route://{HOST}:{other.cluster_port}"
                for other in self.nodes
                if other is not node
            )
            lines += [
                "cluster {",
                "  name: charter-test",
                f"  listen: {HOST}:{node.cluster_port}",
                f"  routes: [{routes}]",
                "}",
            ]
        return "\n".join(lines) + "\n" + self.extra

    def _start(self, node: Node) -> None:
        with node.log.open("ab") as log:
            node.process = subprocess.Popen(
                [NATS_SERVER, "-c", str(node.config)],
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_ready(self, node: Node, timeout: float = 20.0) -> None:
        """Until the node answers its health check (JetStream up, and in a cluster its meta
        group has a leader). Not that every stream and consumer replica on it has caught
        up: after a restart that can take nats-server 2.9 many seconds, and the bus copes."""
        deadline = time.monotonic() + timeout
        base = f"http://{HOST}:{node.http_port}"
        while time.monotonic() < deadline:
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"nats-server {node.name} exited:\n{node.log.read_text()}")
            try:
                health = f"{base}/healthz?js-server-only=true"
                with urllib.request.urlopen(health, timeout=1) as response:
                    healthy = response.status == 200
                if healthy and node.cluster_port is None:
                    return
                if healthy:
                    with urllib.request.urlopen(f"{base}/jsz", timeout=1) as response:
                        meta = json.load(response).get("meta_cluster") or {}
                    if meta.get("leader") and meta.get("cluster_size") == len(self.nodes):
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError(
            f"nats-server {node.name} not ready in {timeout}s:\n{node.log.read_text()}"
        )

    def kill(self, i: int) -> None:
        """SIGKILL node i: no goodbye, no flush."""
        process = self.nodes[i].process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)

    def restart(self, i: int) -> None:
        """Start node i again (after kill), with its ports and data."""
        self.kill(i)
        self._start(self.nodes[i])
        self._wait_ready(self.nodes[i])

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(5)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait(5)
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def single(extra: str = "", env: dict[str, str] | None = None) -> Servers:
    """One nats-server with JetStream (and `extra` config, e.g. an authorization block)."""
    return Servers(1, cluster=False, extra=extra, env=env)


def cluster(size: int = 3) -> Servers:
    """`size` nats-servers with JetStream in one cluster ('charter-test'), routes to each other."""
    return Servers(size, cluster=True)
