"""The ``l2net`` command end to end: real processes, a real nats-server, the planner service."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cli.demo import demo_node
from shared.runtime import bus, natsserver
from shared.runtime.natsserver import EmbeddedNats
from shared.wire import subjects
from tests.kit import stop_process, until_sync

SEED = Path(__file__).resolve().parents[2] / "docs" / "examples" / "seed.yaml"
L2NET = [sys.executable, "-m", "services.cli.main"]


def l2net(*args: str, url: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NATS_URL": url}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    return subprocess.run(
        [*L2NET, *args], input=stdin, capture_output=True, text=True, timeout=60, env=env
    )


@pytest.fixture
def planner_process(nats_server: EmbeddedNats, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    log = (tmp_path / "planner.log").open("w")
    proc = subprocess.Popen(
        [*L2NET, "planner", "--nats", nats_server.url],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for_planner(nats_server.url)
        _register_nodes(nats_server.url, ("node-1", "node-2"))
        yield proc
    finally:
        stop_process(proc, timeout=10)
        log.close()


def _wait_for_planner(url: str) -> None:
    until_sync(
        lambda: l2net("get", "ClusterNetwork", url=url).returncode == 0,
        what="the planner to answer",
    )


def _register_nodes(url: str, names: tuple[str, ...]) -> None:
    import asyncio

    async def go() -> None:
        nc = await bus.connect([url], name="test")
        js = nc.jetstream()
        await bus.ensure_streams(js, [subjects.STREAM_NODES])
        for name in names:
            await js.publish(subjects.node(name), bus.encode(demo_node(name)))
        await nc.drain()

    asyncio.run(go())
    until_sync(
        lambda: all(n in l2net("get", "Node", url=url).stdout for n in names),
        what=f"nodes {', '.join(names)} to appear",
    )


def test_apply_get_nad_delete(nats_server: EmbeddedNats, planner_process: object) -> None:
    url = nats_server.url
    applied = l2net("apply", "-f", str(SEED), url=url)
    assert applied.returncode == 0, applied.stderr
    assert "Network/vlan200 created" in applied.stdout
    assert "node node-1: generation 2" in applied.stdout

    listed = l2net("get", url=url)
    assert listed.returncode == 0
    assert "ClusterNetwork:" in listed.stdout and "mgmt" in listed.stdout
    networks = l2net("get", "Network", url=url).stdout.splitlines()
    assert networks[0].split() == ["NAME", "CLUSTER-NETWORK", "TYPE", "VLAN"]
    assert ["vlan100", "mgmt", "L2VlanNetwork", "100"] in [line.split() for line in networks]

    nad = l2net("nad", "untagged-network", url=url)
    assert json.loads(nad.stdout) == {
        "cniVersion": "0.3.1",
        "name": "untagged-network",
        "type": "bridge",
        "bridge": "oob-br",
        "promiscMode": True,
        "ipam": {},
        "mtu": 1500,
    }
    nad_yaml = l2net("nad", "vlan100", "--yaml", url=url)
    assert "kind: NetworkAttachmentDefinition" in nad_yaml.stdout

    switch = l2net("switch-config", "node-1", url=url)
    assert switch.returncode == 0
    rows = [line.split() for line in switch.stdout.splitlines()]
    assert rows[2][:7] == ["node-1", "oob", "eth1,eth2", "active-backup", "none", "hybrid", "200"]

    as_json = json.loads(l2net("get", "VlanConfig", "-o", "json", url=url).stdout)
    assert as_json[0]["spec"]["uplink"]["nics"] == ["eth1", "eth2"]

    in_use = l2net("delete", "ClusterNetwork", "oob", url=url)
    assert in_use.returncode == 1
    assert "still in use by VlanConfig oob-all" in in_use.stderr
    deleted = l2net("delete", "Network", "vlan200", url=url)
    assert deleted.returncode == 0 and "Network/vlan200 deleted" in deleted.stdout
    assert "vlan200" not in l2net("get", "Network", url=url).stdout


def test_rejected_apply_prints_every_reason_and_exits_1(
    nats_server: EmbeddedNats, planner_process: object
) -> None:
    bad = SEED.read_text() + (
        "---\nkind: Network\nname: n1\nclusterNetwork: oob\nvlan: 0\n"
        "---\nkind: VmNic\nname: x\nvm: v\nnode: node-1\nnetwork: n1\nmac: nope\n"
    )
    result = l2net("apply", "-f", "-", url=nats_server.url, stdin=bad)
    assert result.returncode == 1
    assert "stdin: rejected, nothing was applied" in result.stderr
    first_line = len(SEED.read_text().splitlines()) + 2  # after the seed and a "---"
    assert (
        f"document 6, line {first_line}: Network n1: vlan: VLAN ID 0 is out of range 1-4094"
        in result.stderr
    )
    assert "VmNic x: mac: 'nope' is not a MAC address" in result.stderr
    assert "no objects" in l2net("get", "Network", url=nats_server.url).stdout or (
        "n1" not in l2net("get", "Network", url=nats_server.url).stdout
    )


def test_unreadable_file_and_unknown_objects(
    nats_server: EmbeddedNats, planner_process: object
) -> None:
    missing = l2net("apply", "-f", "/nonexistent/x.yaml", url=nats_server.url)
    assert missing.returncode == 1 and "cannot read /nonexistent/x.yaml" in missing.stderr
    nad = l2net("nad", "nope", url=nats_server.url)
    assert nad.returncode == 1 and "Network nope: not found" in nad.stderr
    get = l2net("get", "Bridge", url=nats_server.url)
    assert get.returncode == 1 and "unknown kind 'Bridge'" in get.stderr


def test_no_server_or_no_planner_is_explained(nats_server: EmbeddedNats) -> None:
    down = l2net("get", url=f"nats://127.0.0.1:{natsserver.free_port()}")
    assert down.returncode == 1 and "cannot reach NATS" in down.stderr
    no_planner = l2net("get", url=nats_server.url)
    assert no_planner.returncode == 1
    assert "no planner answers on l2.api.get: is `l2net planner` running?" in no_planner.stderr


def test_watch_prints_status_events(nats_server: EmbeddedNats) -> None:
    env = {**os.environ, "NATS_URL": nats_server.url}
    proc = subprocess.Popen(
        [*L2NET, "watch", "--for", "8"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        assert "watching" in proc.stdout.readline()
        import asyncio

        from shared.domain import model

        async def publish() -> None:
            nc = await bus.connect([nats_server.url], name="test")
            status = model.NodeStatus(
                node="node-7",
                phase="Applied",
                observed_generation=3,
                netlink_writes=12,
                duration_s=0.5,
            )
            await nc.publish(subjects.status("node-7"), bus.encode(status))
            await nc.drain()

        asyncio.run(publish())
        line = proc.stdout.readline()
        assert "node-7" in line and "gen 3" in line and "Applied" in line
        assert "12 netlink writes" in line
    finally:
        proc.wait(timeout=20)


def test_up_runs_the_embedded_server_and_records_its_url(tmp_path: Path) -> None:
    port = natsserver.free_port()
    env = {**os.environ, "L2NET_STATE_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [*L2NET, "up", "--port", str(port)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"NATS_URL=nats://127.0.0.1:{port}"
        assert (tmp_path / "nats" / "nats.url").read_text() == f"nats://127.0.0.1:{port}"
        # Without --nats or NATS_URL, commands use the recorded embedded server.
        env_no_url = {k: v for k, v in env.items() if k != "NATS_URL"}
        result = subprocess.run(
            [*L2NET, "get"], capture_output=True, text=True, env=env_no_url, timeout=30
        )
        assert "no planner answers" in result.stderr  # reached NATS, no planner yet
        second = subprocess.run(
            [*L2NET, "up", "--port", str(port)], capture_output=True, text=True, env=env, timeout=30
        )
        assert second.returncode == 1 and "already runs" in second.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    assert not natsserver.wait_for_port("127.0.0.1", port, timeout=0.5)


def test_bad_opentelemetry_setting_is_named_not_a_traceback(nats_server: EmbeddedNats) -> None:
    env = {**os.environ, "NATS_URL": nats_server.url, "OTEL_TRACES_EXPORTER": "carrier-pigeon"}
    result = subprocess.run([*L2NET, "get"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert "OTEL_TRACES_EXPORTER" in result.stderr
    assert "Traceback" not in result.stderr
