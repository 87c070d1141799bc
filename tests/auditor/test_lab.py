"""The auditor against real L2 kernels: two user-mode Linux nodes running real executors.

One lab for the module. Each drift kind is made by hand inside node-1 with ``ip``/``bridge``
and must be reported with its field path, while node-2 shows nothing; the heal policy puts a
node back, report-only leaves it alone; and ifupdown2's own checker (an outside oracle) agrees
with ``l2net audit`` on a converged node and on a node changed by hand. A lab that cannot
boot fails these tests: it never skips them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from services.auditor.demo import drift_and_heal
from services.auditor.service import Auditor, AuditorConfig
from services.auditor.view import Policy
from services.lab import Lab
from shared.domain.model import NodeStatus, ObservedState
from shared.runtime import bus
from shared.wire import subjects
from tests.auditor import oracle
from tests.auditor.conftest import auditor_factory
from tests.executor.helpers import final_status, publish_intent
from tests.executor.labkit import port_vids, seed_intent, sh
from tests.kit import lab_fixture, until

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

NODES = ["node-1", "node-2"]
REPO = Path(__file__).resolve().parents[2]
_generation = itertools.count(1)


lab = lab_fixture("auditlab", nodes=2, executor=True)


LabAuditors = Callable[..., Awaitable[Auditor]]


@pytest.fixture
async def auditors(lab: Lab) -> AsyncIterator[LabAuditors]:
    async with auditor_factory(lab.nats_url, name="auditor-lab") as start:
        yield start


async def reconcile(nc: Client, node: str) -> None:
    reply = await nc.request(subjects.executor_control(node, "reconcile"), b"", timeout=180)
    status = bus.decode(reply.data, NodeStatus)
    assert status.phase == "Applied", f"{node}: {status.phase}: {status.error}"


async def live_state(nc: Client, node: str) -> ObservedState:
    reply = await nc.request(subjects.executor_control(node, "state"), b"", timeout=30)
    return bus.decode(reply.data, ObservedState)


async def vm_veth(nc: Client, node: str, vm: str) -> str:
    return oracle.vm_port_names(await live_state(nc, node))[f"{vm}/eth0"]


def keys(items: list) -> set[tuple[str, str]]:  # type: ignore[type-arg]
    return {(i.object, i.path) for i in items}


async def clean(auditor: Auditor, node: str) -> bool:
    reply = await auditor.check(node)
    return reply.ok and reply.nodes[0].items == [] and reply.nodes[0].verified


async def test_a_converged_fleet_has_no_drift_and_ifupdown2_agrees(
    lab: Lab, labnc: Client, auditors: LabAuditors
) -> None:
    generation = next(_generation)
    for node in NODES:
        await publish_intent(labnc, seed_intent(node, generation))
    for node in NODES:

        async def done(n: str = node) -> NodeStatus | None:
            return await final_status(labnc, n, generation)

        await until(done, timeout=180)
        status = await done()
        assert status is not None and status.phase == "Applied", status
    auditor = await auditors()
    reply = await auditor.check()
    assert [(n.node, n.items, n.verified) for n in reply.nodes] == [(n, [], True) for n in NODES]
    ports = oracle.vm_port_names(await live_state(labnc, "node-1"))
    result = await oracle.ifquery_check(
        lab, "node-1", oracle.interfaces_file(seed_intent("node-1", generation), ports)
    )
    assert oracle.failures(result, ports) == set()
    assert {"oob-bo", "oob-br", "mgmt-bo", "eth1", "eth2"} <= set(result)
    assert all(len(attrs) > 0 for attrs in result.values())


# Each kind: the commands (``{vm200}``, ``{vmu}``: that VM's host veth), what must be reported.
KINDS: dict[str, tuple[list[list[str]], set[tuple[str, str]]]] = {
    "missing managed interface": ([["ip", "link", "del", "oob-br"]], {("oob-br", "")}),
    "extra managed interface": (
        [
            [
                "ip",
                "link",
                "add",
                "link",
                "oob-br",
                "name",
                "oob-br.30",
                "type",
                "vlan",
                "id",
                "30",
            ],
            ["ip", "link", "set", "oob-br.30", "alias", "l2net hostnet=stray"],
        ],
        {("oob-br.30", "")},
    ),
    "VID missing on the uplink": (
        [["bridge", "vlan", "del", "dev", "oob-bo", "vid", "200"]],
        {("oob-bo", "vlans")},
    ),
    "VID extra on the uplink": (
        [["bridge", "vlan", "add", "dev", "oob-bo", "vid", "300"]],
        {("oob-bo", "vlans")},
    ),
    "VID extra on a VM port": (
        [["bridge", "vlan", "add", "dev", "{vm200}", "vid", "300"]],
        {("vm/vm200/eth0", "vlans")},
    ),
    "VM NIC on the wrong VLAN": (
        [
            ["bridge", "vlan", "add", "dev", "{vm200}", "vid", "210", "pvid", "untagged"],
            ["bridge", "vlan", "del", "dev", "{vm200}", "vid", "200"],
        ],
        {("vm/vm200/eth0", "vlans")},
    ),
    "port released from the bond": (
        [["ip", "link", "set", "eth2", "nomaster"]],
        {("eth2", "master")},
    ),
    "bond released from the bridge": (
        [["ip", "link", "set", "oob-bo", "nomaster"]],
        {("oob-bo", "master")},
    ),
    "VM NIC released from the bridge": (
        [["ip", "link", "set", "{vmu}", "nomaster"]],
        {("vm/vmu/eth0", "bridge")},
    ),
    "changed bond option": (
        [["ip", "link", "set", "oob-bo", "type", "bond", "miimon", "250"]],
        {("oob-bo", "bond.options.miimon")},
    ),
    "changed bond mode": (
        [
            ["ip", "link", "set", "oob-bo", "down"],
            ["ip", "link", "set", "eth1", "nomaster"],
            ["ip", "link", "set", "eth2", "nomaster"],
            ["ip", "link", "set", "oob-bo", "type", "bond", "mode", "balance-xor"],
            ["ip", "link", "set", "oob-bo", "up"],
        ],
        {("oob-bo", "bond.mode")},
    ),
    "MTU difference": ([["ip", "link", "set", "oob-br", "mtu", "1400"]], {("oob-br", "mtu")}),
}


@pytest.mark.parametrize("kind", list(KINDS))
async def test_each_hand_made_drift_is_reported_with_its_field_path(
    kind: str, lab: Lab, labnc: Client, auditors: LabAuditors
) -> None:
    commands, expected = KINDS[kind]
    auditor = await auditors()
    assert await clean(auditor, "node-1"), (await auditor.check("node-1")).nodes
    names = {vm: await vm_veth(labnc, "node-1", vm) for vm in ("vm200", "vmu")}
    try:
        for argv in commands:
            await sh(lab, "node-1", *(a.format(**names) for a in argv))

        async def reported() -> bool:
            return expected <= keys((await auditor.check("node-1")).nodes[0].items)

        await until(reported, timeout=60)
        others = (await auditor.check("node-2")).nodes[0]
        assert others.items == [] and others.verified  # no false drift elsewhere
    finally:
        await reconcile(labnc, "node-1")
    await until(lambda: clean(auditor, "node-1"), timeout=60)


async def test_report_only_leaves_a_hand_made_change_alone(
    lab: Lab, labnc: Client, auditors: LabAuditors
) -> None:
    auditor = await auditors()
    await sh(lab, "node-2", "bridge", "vlan", "del", "dev", "oob-bo", "vid", "200")
    try:
        await until(lambda: ("oob-bo", "vlans") in keys(auditor.findings("node-2")), timeout=60)
        await asyncio.sleep(3)  # ticks pass: nothing puts it back
        assert await port_vids(lab, "node-2", "oob-bo") == ["1 PVID untagged"]
        assert auditor.heals("node-2") == 0
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.cli.main", "audit", "node-2", "--nats", lab.nats_url],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, result.stderr
        assert "- oob-bo.vlans: 200" in result.stdout
    finally:
        await reconcile(labnc, "node-2")


async def test_heal_policy_restores_a_node_and_counts_it(
    lab: Lab, labnc: Client, auditors: LabAuditors
) -> None:
    auditor = await auditors(AuditorConfig(heal={"oob"}))
    before = auditor.heals("node-2")
    await sh(lab, "node-2", "bridge", "vlan", "del", "dev", "oob-bo", "vid", "200")
    await until(lambda: auditor.heals("node-2") > before, timeout=120)

    async def restored() -> bool:
        return await port_vids(lab, "node-2", "oob-bo") == ["1 PVID untagged", "200"]

    await until(restored, timeout=60)
    await until(lambda: clean(auditor, "node-2"), timeout=60)
    assert auditor.heals("node-2") == before + 1


async def test_ifupdown2_and_the_audit_agree_on_what_a_hand_made_change_broke(
    lab: Lab, labnc: Client, auditors: LabAuditors
) -> None:
    auditor = await auditors()
    intent = seed_intent("node-1", 1)
    status = await final_status(labnc, "node-1", 1)
    assert status is not None  # the fleet is on generation 1 (first test)
    for argv in (
        ["bridge", "vlan", "del", "dev", "oob-bo", "vid", "200"],
        ["bridge", "vlan", "add", "dev", "mgmt-bo", "vid", "300"],
        ["ip", "link", "set", "oob-br", "mtu", "1400"],
        ["ip", "link", "set", "oob-bo", "type", "bond", "miimon", "300"],
    ):
        await sh(lab, "node-1", *argv)
    try:
        ports = oracle.vm_port_names(await live_state(labnc, "node-1"))
        result = await oracle.ifquery_check(lab, "node-1", oracle.interfaces_file(intent, ports))
        theirs = oracle.failures(result, ports)
        ours = keys((await auditor.check("node-1")).nodes[0].items)
        assert (
            theirs
            == ours
            == {
                ("oob-bo", "vlans"),
                ("mgmt-bo", "vlans"),
                ("oob-br", "mtu"),
                ("oob-bo", "bond.options.miimon"),
            }
        )
    finally:
        await reconcile(labnc, "node-1")
    await until(lambda: clean(auditor, "node-1"), timeout=60)
    ports = oracle.vm_port_names(await live_state(labnc, "node-1"))
    result = await oracle.ifquery_check(lab, "node-1", oracle.interfaces_file(intent, ports))
    assert oracle.failures(result, ports) == set()
    assert json.dumps(result)  # every attribute was checked and passed


async def test_the_demo_ending_catches_a_hand_made_drift_and_heals_it(
    lab: Lab, labnc: Client, auditors: LabAuditors
) -> None:
    auditor = await auditors()
    before = auditor.heals("node-1")
    lines: list[str] = []
    assert await drift_and_heal(labnc, node="node-1", run=lab.aexec, say=lines.append)
    text = "\n".join(lines)
    assert "- oob-bo.vlans: 200" in text and "exit code 2: drift" in text
    assert text.rstrip().endswith("exit code 0: no drift")
    assert await port_vids(lab, "node-1", "oob-bo") == ["1 PVID untagged", "200"]
    assert auditor.heals("node-1") == before + 1
    history = auditor.history("node-1")
    whats = [e.what for e in history.events]
    assert "drift" in whats and "resolved" in whats and "heal" in whats


async def test_l2net_audit_heal_reconverges_a_node_whatever_the_policy(
    lab: Lab, auditors: LabAuditors
) -> None:
    auditor = await auditors()
    before = auditor.heals("node-2")  # heals are counted over the whole history
    await sh(lab, "node-2", "ip", "link", "set", "oob-br", "mtu", "1400")

    def audit(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.cli.main", "audit", "node-2", *extra],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "NATS_URL": lab.nats_url},
        )

    first = await asyncio.to_thread(audit)
    assert first.returncode == 2 and "~ oob-br.mtu: desired 1500, actual 1400" in first.stdout
    healed = await asyncio.to_thread(audit, "--heal")
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert "node-2: no drift" in healed.stdout and f"healed {before + 1}x" in healed.stdout
    mtu = await sh(lab, "node-2", "cat", "/sys/class/net/oob-br/mtu")
    assert mtu.strip() == "1500"


async def test_a_stopped_executor_is_not_reporting_and_its_node_unverified(
    lab: Lab, labnc: Client, auditors: LabAuditors
) -> None:
    # Last in the module: node-2's executor stays stopped. Executors heartbeat every 10 s.
    auditor = await auditors(AuditorConfig(policy=Policy(silence_s=15.0)))
    assert await clean(auditor, "node-2")
    pid = (lab.node_dir("node-2") / "executor.pid").read_text().strip()
    assert pid.isdigit()
    await sh(lab, "node-2", "kill", pid)  # the pid the node recorded when it started it

    async def silent() -> bool:
        return not (await auditor.check("node-2")).nodes[0].reporting

    await until(silent, timeout=90)
    reply = await auditor.check()
    by_node = {n.node: n for n in reply.nodes}
    two, one = by_node["node-2"], by_node["node-1"]
    assert not two.verified and "stopped reporting" in two.note
    assert keys(two.items) == {("node/node-2", "heartbeat")}
    assert one.items == [] and one.verified and one.reporting  # no false drift elsewhere
