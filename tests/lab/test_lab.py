"""The lab on real user-mode Linux kernels: boot, exec, NATS, switches, bonds and VLANs.

One lab (2 nodes, eth0..eth4) serves the whole module. VMs are network namespaces made by
hand inside the nodes (the executor's job later), with veths into VLAN-aware bridges.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import nats
import pytest

from services.lab import Lab, LabError
from tests.lab.conftest import BootedLab, lab_cli

pytestmark = pytest.mark.lab


def sh(lab: Lab, node: str, script: str, *, timeout: float = 60.0) -> str:
    """Run a shell script in a node; fail the test with its output if it fails."""
    rc, out, err = lab.exec(node, ["sh", "-ec", script], timeout=timeout)
    assert rc == 0, f"{node}: script failed (rc {rc}):\n{script}\n--- out\n{out}\n--- err\n{err}"
    return out


def ping(lab: Lab, node: str, netns: str, address: str, *, tries: int = 10) -> bool:
    """True if ``address`` answers a ping from ``netns`` in ``node`` within ``tries`` tries
    of one second each (a positive check returns at the first answer)."""
    script = (
        f"for i in $(seq {tries}); do "
        f"ip netns exec {netns} ping -c 1 -W 1 {address} >/dev/null && exit 0; done; exit 1"
    )
    rc, _, _ = lab.exec(node, ["sh", "-c", script], timeout=tries * 3 + 10)
    return rc == 0


def no_reply(lab: Lab, node: str, netns: str, address: str) -> bool:
    """True if ``address`` answers none of 5 pings from ``netns`` in ``node``."""
    argv = ["ip", "netns", "exec", netns, "ping", "-c", "5", "-i", "0.2", "-W", "1", address]
    rc, out, _ = lab.exec(node, argv, timeout=30)
    return rc != 0 and " 0 received" in out


def links(lab: Lab, node: str) -> dict[str, dict[str, Any]]:
    rc, out, err = lab.exec(node, ["ip", "-d", "-j", "link", "show"])
    assert rc == 0, err
    return {link["ifname"]: link for link in json.loads(out)}


# ---------------------------------------------------------------------------
# Boot and the node's own layout
# ---------------------------------------------------------------------------


def test_up_prints_nats_url_on_localhost_and_detaches(booted: BootedLab) -> None:
    # lab_cli captured stdout: it returned, so no lab process kept the stream open.
    lines = booted.up.stdout.splitlines()
    assert lines == [f"NATS_URL={booted.lab.nats_url}"]
    assert re.fullmatch(r"nats://127\.0\.0\.1:\d+", booted.lab.nats_url)

    async def roundtrip() -> bytes:
        nc = await nats.connect(booted.lab.nats_url)
        sub = await nc.subscribe("lab.test.echo")
        await nc.publish("lab.test.echo", b"hi")
        msg = await sub.next_msg(timeout=2)
        await nc.close()
        return bytes(msg.data)

    assert asyncio.run(roundtrip()) == b"hi"


def test_nodes_have_eth_nics_and_harvester_mgmt_layout(lab: Lab) -> None:
    assert lab.nodes == ["node-1", "node-2"]
    for node in lab.nodes:
        ls = links(lab, node)
        assert {f"eth{i}" for i in range(5)} <= set(ls)
        assert not [name for name in ls if name.startswith("vec")]
        bond = ls["mgmt-bo"]["linkinfo"]
        assert bond["info_kind"] == "bond"
        assert bond["info_data"]["mode"] == "active-backup"
        assert ls["eth0"]["master"] == "mgmt-bo"
        assert ls["mgmt-bo"]["master"] == "mgmt-br"
        assert ls["mgmt-br"]["linkinfo"]["info_data"]["vlan_filtering"] == 1
        rc, out, _ = lab.exec(node, ["ip", "-j", "-4", "addr", "show", "dev", "mgmt-br"])
        assert rc == 0
        addrs = [a["local"] for i in json.loads(out) for a in i["addr_info"]]
        assert addrs == [lab.node_address(node)]
        assert addrs[0].startswith("169.254.")
        assert lab.exec(node, ["hostname"]).out.strip() == node


def test_nodes_reach_nats_over_their_mgmt_address(lab: Lab) -> None:
    async def pings() -> list[Any]:
        return list(await asyncio.gather(*(lab.aping(n) for n in lab.nodes)))

    replies = asyncio.run(pings())
    assert [r.node for r in replies] == lab.nodes
    for node in lab.nodes:
        # The helper's connection leaves from the node address towards the relay.
        rc, out, _ = lab.exec(node, ["ss", "-Htn", "state", "established"])
        assert rc == 0
        assert f"{lab.node_address(node)}:" in out
        assert "169.254.0.1:4222" in out


def test_nothing_of_the_lab_in_the_root_namespace(lab: Lab) -> None:
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert lab.lab_id not in root_links
    root_addrs = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    for address in ["169.254.0.1", *(lab.node_address(n) for n in lab.nodes)]:
        assert f" {address}/" not in root_addrs
    # The relay listens inside the lab namespace, not in the root one.
    gateway_port = "0100FEA9:108E"  # 169.254.0.1:4222 as /proc/net/tcp writes it
    assert gateway_port not in Path("/proc/net/tcp").read_text()
    inside = subprocess.run(
        ["ip", "netns", "exec", lab.netns, "ss", "-Hltn"], capture_output=True, text=True
    ).stdout
    assert "169.254.0.1:4222" in inside


# ---------------------------------------------------------------------------
# lab exec
# ---------------------------------------------------------------------------


def test_exec_cli_returns_stdout_stderr_and_exit_code(lab: Lab) -> None:
    res = lab_cli(
        "exec", "--state-dir", str(lab.dir), "node-2", "--",
        "sh", "-c", "echo to-out; echo to-err >&2; exit 7",
    )  # fmt: skip
    assert (res.returncode, res.stdout, res.stderr) == (7, "to-out\n", "to-err\n")
    res = lab_cli(
        "exec", "--state-dir", str(lab.dir), "--stdin", "node-1", "--", "tr", "a-z", "A-Z",
        stdin="piped through node-1\n",
    )  # fmt: skip
    assert (res.returncode, res.stdout) == (0, "PIPED THROUGH NODE-1\n")


def test_exec_unknown_node_or_command_is_a_clear_error(lab: Lab) -> None:
    res = lab_cli("exec", "--state-dir", str(lab.dir), "node-9", "--", "true")
    assert res.returncode == 255
    assert "node-9" in res.stderr and "node-1, node-2" in res.stderr
    rc, _, err = lab.exec("node-1", ["no-such-command-l2net"])
    assert rc == 127 and "not found" in err
    with pytest.raises(LabError, match="no command"):
        lab.exec("node-1", [])


def test_exec_caps_output_and_refuses_oversized_stdin(lab: Lab) -> None:
    rc, out, _ = lab.exec("node-1", ["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' a"])
    assert rc == 0
    assert out.startswith("a" * 262144) and "[lab: output cut at 262144 bytes]" in out
    data = bytes(range(256)) * 1024  # 256 KiB of every byte value
    rc, out, _ = lab.exec("node-1", ["sha256sum"], stdin=data)
    assert out.split()[0] == hashlib.sha256(data).hexdigest()
    with pytest.raises(LabError, match="stdin"):
        lab.exec("node-1", ["cat"], stdin=b"x" * (1024 * 1024))


def test_exec_kills_a_command_at_its_timeout(lab: Lab) -> None:
    rc, _, err = lab.exec("node-1", ["sleep", "30"], timeout=1)
    assert rc == 124
    assert "killed after 1 s" in err


def test_exec_runs_commands_concurrently_on_one_node_and_many(lab: Lab) -> None:
    # On each node a waiter blocks until a releaser, sent after it, creates a file: with
    # one command at a time the waiter would block the releaser and be killed (rc 124).
    waiter = "while [ ! -e /run/lab-release ]; do sleep 0.05; done; echo released {node}"
    releaser = "touch /run/lab-release"

    async def run() -> list[Any]:
        nc = await nats.connect(lab.nats_url)
        try:
            waiters = [
                asyncio.create_task(
                    lab.aexec(n, ["sh", "-c", waiter.format(node=n)], timeout=20, nc=nc)
                )
                for n in lab.nodes
            ]
            extra = [
                asyncio.create_task(lab.aexec(n, ["echo", str(i)], nc=nc))
                for i in range(4)
                for n in lab.nodes
            ]
            await asyncio.sleep(0.5)
            releasers = [lab.aexec(n, ["sh", "-c", releaser], nc=nc) for n in lab.nodes]
            done = await asyncio.gather(*waiters, *extra, *releasers)
            return list(done)
        finally:
            await nc.close()

    try:
        results = asyncio.run(run())
    finally:
        for n in lab.nodes:
            lab.exec(n, ["rm", "-f", "/run/lab-release"])
    waited = results[: len(lab.nodes)]
    assert [(r.rc, r.out) for r in waited] == [(0, f"released {n}\n") for n in lab.nodes]
    assert all(r.rc == 0 for r in results)
    assert sorted(r.out for r in results[len(lab.nodes) : -len(lab.nodes)]) == sorted(
        f"{i}\n" for i in range(4) for _ in lab.nodes
    )


# ---------------------------------------------------------------------------
# Bonds, VLAN-aware bridges and VMs made by hand, across the lab switches
# ---------------------------------------------------------------------------

UPLINK = """
ip link add data-bo type bond mode active-backup miimon 100
ip link set eth1 down; ip link set eth1 master data-bo
ip link set eth2 down; ip link set eth2 master data-bo
ip link add data-br type bridge vlan_filtering 1
ip link set data-bo master data-br
for l in eth1 eth2 data-bo data-br; do ip link set $l up; done
bridge vlan add dev data-bo vid 100
bridge vlan add dev data-bo vid 200
"""


def vm(name: str, bridge: str, vid: int, address: str) -> str:
    """Shell lines making VM ``name``: a namespace, a veth into ``bridge`` on VLAN ``vid``."""
    vlan = "" if vid == 1 else f"bridge vlan del dev {name}-h vid 1\n"
    return f"""
ip netns add {name}
ip link add {name}-h type veth peer name eth0 netns {name}
ip link set {name}-h master {bridge}
ip link set {name}-h up
{vlan}bridge vlan add dev {name}-h vid {vid} pvid untagged
ip -n {name} link set lo up
ip -n {name} addr add {address}/24 dev eth0
ip -n {name} link set eth0 up
"""


def nic_netns(nic: str, address: str) -> str:
    """Move a raw NIC into namespace ``<nic>ns`` with an address."""
    return f"""
ip netns add {nic}ns
ip link set {nic} netns {nic}ns
ip -n {nic}ns addr add {address}/24 dev {nic}
ip -n {nic}ns link set {nic} up
"""


@pytest.fixture(scope="module")
def fabric(lab: Lab) -> Lab:
    """data-bo (eth1+eth2) under data-br on both nodes, and VMs:

    node-1: vm-a VLAN 100 .100.1, vm-e VLAN 200 .100.5, vm-p data VLAN 1 .77.1,
            vm-n on mgmt-br VLAN 1 .77.6, eth3 in ns .78.1 and .77.5
    node-2: vm-b VLAN 100 .100.2, vm-c VLAN 200 .100.3, vm-d data VLAN 1 .77.3,
            vm-m on mgmt-br VLAN 1 .77.2, eth3 in ns .77.4 and .78.2
    """
    sh(
        lab,
        "node-1",
        UPLINK
        + vm("vm-a", "data-br", 100, "169.254.100.1")
        + vm("vm-e", "data-br", 200, "169.254.100.5")
        + vm("vm-p", "data-br", 1, "169.254.77.1")
        + vm("vm-n", "mgmt-br", 1, "169.254.77.6")
        + nic_netns("eth3", "169.254.78.1")
        + "ip -n eth3ns addr add 169.254.77.5/24 dev eth3\n",
    )
    sh(
        lab,
        "node-2",
        UPLINK
        + vm("vm-b", "data-br", 100, "169.254.100.2")
        + vm("vm-c", "data-br", 200, "169.254.100.3")
        + vm("vm-d", "data-br", 1, "169.254.77.3")
        + vm("vm-m", "mgmt-br", 1, "169.254.77.2")
        + nic_netns("eth3", "169.254.77.4")
        + "ip -n eth3ns addr add 169.254.78.2/24 dev eth3\n",
    )
    return lab


def test_vlan100_vms_on_two_nodes_reach_each_other_over_bond_and_switch(fabric: Lab) -> None:
    assert ping(fabric, "node-1", "vm-a", "169.254.100.2")
    assert ping(fabric, "node-2", "vm-b", "169.254.100.1")
    # `lab exec --vm` runs inside the VM's namespace.
    res = lab_cli("exec", "--state-dir", str(fabric.dir), "--vm", "vm-b", "node-2", "--",
                  "ip", "-o", "-4", "addr", "show", "dev", "eth0")  # fmt: skip
    assert res.returncode == 0 and "169.254.100.2/24" in res.stdout


def test_vlan200_vm_cannot_reach_vlan100_vm(fabric: Lab) -> None:
    assert ping(fabric, "node-1", "vm-a", "169.254.100.2")  # the path itself works
    assert no_reply(fabric, "node-1", "vm-a", "169.254.100.3")
    assert no_reply(fabric, "node-2", "vm-c", "169.254.100.1")
    assert ping(fabric, "node-1", "vm-e", "169.254.100.3")  # vm-c answers on VLAN 200


def test_nic_groups_are_on_separate_switches(fabric: Lab) -> None:
    # Same data switch (eth1/eth2 of both nodes): reachable.
    assert ping(fabric, "node-1", "vm-p", "169.254.77.3")
    # Frames leaving node-1 on eth1/eth2 never reach node-2's eth0 (mgmt switch) ...
    assert no_reply(fabric, "node-1", "vm-p", "169.254.77.2")
    # ... nor its eth3 (third switch), which itself reaches node-1's eth3.
    assert no_reply(fabric, "node-1", "vm-p", "169.254.77.4")
    assert ping(fabric, "node-1", "eth3ns", "169.254.78.2")
    # Both targets answer on their own switch.
    assert ping(fabric, "node-1", "vm-n", "169.254.77.2")
    assert ping(fabric, "node-1", "eth3ns", "169.254.77.4")


def test_bond_fails_over_and_vlan_traffic_still_passes(fabric: Lab) -> None:
    sh(fabric, "node-1", "ip link set eth1 down")
    try:
        out = sh(
            fabric,
            "node-1",
            "for i in $(seq 50); do grep -q 'Currently Active Slave: eth2' "
            "/proc/net/bonding/data-bo && break; sleep 0.1; done; cat /proc/net/bonding/data-bo",
        )
        assert "Currently Active Slave: eth2" in out
        assert ping(fabric, "node-1", "vm-a", "169.254.100.2")
    finally:
        sh(fabric, "node-1", "ip link set eth1 up")


def test_status_reports_every_node_running_and_answering(lab: Lab) -> None:
    res = lab_cli("status", "--state-dir", str(lab.dir))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"NATS_URL={lab.nats_url}" in res.stdout
    for node in lab.nodes:
        line = next(x for x in res.stdout.splitlines() if x.startswith(node + " "))
        assert "running" in line and " ok " in line


def test_a_second_lab_coexists_and_its_down_leaves_the_first_alone(
    lab: Lab, tmp_path: Path
) -> None:
    other = Lab.up(directory=tmp_path / "other", nodes=1, data_nics=0, executor=False)
    try:
        assert other.lab_id != lab.lab_id and other.netns != lab.netns
        assert other.nats_url != lab.nats_url
        # Same node names and addresses, separate worlds.
        assert other.exec("node-1", ["hostname"]).out.strip() == "node-1"
        assert other.node_address("node-1") == lab.node_address("node-1")
        rc, out, _ = other.exec("node-1", ["ip", "-br", "link"])
        assert rc == 0 and "eth1" not in out
    finally:
        other.down()
    assert not Path("/run/netns", other.netns).exists()
    assert Path("/run/netns", lab.netns).exists()
    for node in lab.nodes:
        assert lab.exec(node, ["true"]).rc == 0
