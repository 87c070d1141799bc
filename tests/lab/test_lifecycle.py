"""Lab lifecycle on real kernels: a management VLAN, OTLP relayed into the lab, a lab killed
with ``kill -9`` and booted again, and ``lab down`` leaving nothing behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from services.lab import Lab, LabError
from services.lab import state as labstate
from shared.runtime.natsserver import EmbeddedNats, free_port
from tests.lab.conftest import lab_cli

pytestmark = pytest.mark.lab


class OtlpSink:
    """A TCP listener on 127.0.0.1 standing for an OTLP collector: records what arrives."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port: int = self.sock.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            while data := conn.recv(4096):
                self.received += data

    def close(self) -> None:
        self.sock.close()


def leftovers(lab: Lab, *, state_dir: bool = True) -> list[str]:
    """Everything of ``lab`` still present on the host: processes, namespace, taps, files."""
    found = []
    for proc in lab.processes():
        if labstate.alive(proc):
            found.append(f"process {proc.pid} ({proc.exe})")
    for node in lab.state.nodes:
        if node.proc is not None:
            found += [f"UML process {p}" for p in labstate.session_members(node.proc)]
        if (Path.home() / ".uml" / node.umid).exists():
            found.append(f"~/.uml/{node.umid}")
    if Path("/run/netns", lab.netns).exists():
        found.append(f"netns {lab.netns}")
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    if lab.lab_id in root_links:
        found.append(f"a link named after {lab.lab_id} in the root namespace")
    if state_dir and lab.dir.exists():
        found.append(f"state dir {lab.dir}: {sorted(p.name for p in lab.dir.iterdir())}")
    return found


def test_mgmt_vlan_lab_otlp_relay_restart_after_kill_and_clean_down(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    directory = tmp_path / "vlanlab"
    sink = OtlpSink()
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.port}",
        "OTEL_SERVICE_NAME": "l2net-lab-test",
    }
    first = Lab.up(directory=directory, nodes=1, data_nics=0, mgmt_vlan=42, executor=False,
                   environ=environ)  # fmt: skip
    second: Lab | None = None
    try:
        # The node address sits on mgmt-br.42; mgmt-bo and mgmt-br itself carry VID 42.
        rc, out, _ = first.exec("node-1", ["ip", "-o", "-4", "addr", "show"])
        assert rc == 0
        assert f"mgmt-br.42    inet {first.node_address('node-1')}/16" in out
        rc, out, _ = first.exec("node-1", ["bridge", "vlan", "show"])
        mgmt_bo = out.split("mgmt-bo", 1)[1].split("mgmt-br", 1)[0]
        assert "42" in mgmt_bo and "42" in out.split("mgmt-br", 1)[1]
        # The OTLP endpoint reaches the nodes rewritten to the relay, and the relay carries
        # bytes (over the tagged mgmt VLAN) to the host-side collector.
        rc, out, _ = first.exec("node-1", ["sh", "-c", "echo $OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert out.strip() == "http://169.254.0.1:4318"
        rc, out, _ = first.exec("node-1", ["sh", "-c", "echo $OTEL_SERVICE_NAME"])
        assert out.strip() == "l2net-lab-test"
        script = (
            "import os, socket, urllib.parse as u\n"
            "p = u.urlsplit(os.environ['OTEL_EXPORTER_OTLP_ENDPOINT'])\n"
            "s = socket.create_connection((p.hostname, p.port), timeout=10)\n"
            "s.sendall(b'otlp-bytes-from-node-1'); s.close()\n"
        )
        rc, _, err = first.exec("node-1", [sys.executable, "-c", script], timeout=60)
        assert rc == 0, err
        sink.thread.join(timeout=10)
        assert sink.received == b"otlp-bytes-from-node-1"

        # A second `lab up` while the lab runs refuses and changes nothing.
        res = lab_cli("up", "--nodes", "1", "--no-executor", "--state-dir", str(directory))
        assert res.returncode == 1 and "still running" in res.stderr
        assert Lab.load(directory).lab_id == first.lab_id

        # kill -9 of every recorded pid, then `lab up` again in the same directory, this
        # time on a NATS server of the caller's (--nats).
        for proc in first.processes():
            os.kill(proc.pid, signal.SIGKILL)
        res = lab_cli(
            "up", "--nodes", "2", "--data-nics", "0", "--mgmt-vlan", "42", "--no-executor",
            "--nats", nats_server.url, "--state-dir", str(directory),
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        second = Lab.load(directory)
        assert second.lab_id != first.lab_id
        assert res.stdout == f"NATS_URL={nats_server.url}\n"
        assert leftovers(first, state_dir=False) == []  # the killed lab was cleaned up
        rc, out, _ = second.exec("node-2", ["ping", "-c", "1", "-W", "2", "169.254.1.1"])
        assert rc == 0, out

        # `lab down` leaves nothing: no process, namespace, tap, ~/.uml entry or state.
        res = lab_cli("down", "--state-dir", str(directory))
        assert res.returncode == 0, res.stderr
        assert leftovers(second) == []
        assert nats_server.process.poll() is None  # not the lab's: still running
        assert lab_cli("status", "--state-dir", str(directory)).returncode == 1
        with pytest.raises(LabError, match="no lab"):
            Lab.load(directory)
    finally:
        sink.close()
        for lab in (second, first):
            if lab is not None:
                lab.down()


def test_up_with_bad_parameters_names_them_and_creates_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "bad"
    for args, word in (
        (["--nodes", "0"], "--nodes"),
        (["--nodes", "2", "--mgmt-vlan", "5000"], "--mgmt-vlan"),
        (["--nodes", "2", "--data-nics", "9"], "--data-nics"),
        (["--nodes", "1", "--mem", "8"], "--mem"),
        (["--nats", "nats://127.0.0.1:x"], "invalid port"),
        (["--nats", f"nats://127.0.0.1:{free_port()}"], "cannot reach NATS"),
    ):
        res = lab_cli("up", *args, "--no-executor", "--state-dir", str(directory))
        assert res.returncode == 1, res.stderr
        assert word in res.stderr
        assert not directory.exists()


def test_a_node_that_does_not_come_up_fails_with_its_console_and_stops_everything(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "slow"
    # No guest gets its Python helper answering within 0.2 s: the wait fails on purpose.
    with pytest.raises(LabError) as info:
        Lab.up(directory=directory, nodes=1, data_nics=0, executor=False, timeout=0.2)
    message = str(info.value)
    assert "node-1 did not come up: no answer within 0.2 s" in message
    failed = Lab.load(directory)
    console = failed.node_dir("node-1") / "console.log"
    assert f"--- {console} (tail) ---" in message
    assert failed.state.phase == "failed"
    assert leftovers(failed, state_dir=False) == []
    assert (failed.node_dir("node-1") / "console.log").exists()  # kept for the user
    assert lab_cli("down", "--state-dir", str(directory)).returncode == 0
    assert leftovers(failed) == []


def test_lab_up_stopped_by_sigterm_while_booting_leaves_nothing_running(tmp_path: Path) -> None:
    directory = tmp_path / "term"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.lab", "up", "--nodes", "2", "--no-executor",
         "--state-dir", str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        while True:  # until both UML kernels are recorded, then interrupt the boot
            st = labstate.load(directory) if (directory / "lab.json").exists() else None
            if st is not None and all(n.proc is not None for n in st.nodes) and st.nodes:
                break
            assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "NATS_URL" not in out
    stopped = Lab.load(directory)
    assert stopped.state.phase == "failed"
    assert leftovers(stopped, state_dir=False) == []
    assert lab_cli("down", "--state-dir", str(directory)).returncode == 0
    assert leftovers(stopped) == []
