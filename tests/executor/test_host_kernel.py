"""The executor's kernel work in a host network namespace: bridge CNI, idempotency, rollback.

Everything here runs on the real host kernel inside a namespace made for the test (see
conftest). Packets between VMs are real: ping between VM namespaces over mgmt-br.
"""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from services.executor import dump
from services.executor.kernel import OWNED_NETNS_DIR, KernelError, NetlinkKernel
from services.executor.planning import Step
from services.executor.reconciling import converge
from shared.domain.l2state import NodeL2State, desired_state
from shared.domain.model import BondIntent, ClusterNetworkIntent, NodeIntent
from tests.executor.conftest import HostNode, intent, mgmt_cn, untagged_port


def run_in(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30
    )


def ping(ns: str, address: str) -> bool:
    return run_in(ns, "ping", "-c", "2", "-W", "1", "-i", "0.2", address).returncode == 0


def set_address(ns: str, address: str) -> None:
    assert run_in(ns, "ip", "addr", "add", address, "dev", "eth0").returncode == 0


def comparable(state: NodeL2State, node_ns: str) -> dict[str, object]:
    """The full dump as ``services.executor.dump`` gives it, with the VM namespaces of this
    node only (tests running beside this one make their own)."""
    out = dump.comparable(state)
    out["namespaces"] = [ns for ns in state.namespaces if ns.startswith(f"{node_ns}-")]
    return out


async def test_untagged_vms_are_plugged_by_bridge_cni_and_exchange_packets(
    host_node: HostNode, kernel: NetlinkKernel
) -> None:
    a, b = host_node.vm("a"), host_node.vm("b")
    desired, refused = desired_state(intent(host_node, 1, [untagged_port(a), untagged_port(b)]))
    outcome = await converge(kernel, desired, refused=refused)
    assert outcome.phase == "Applied", outcome.error
    state = await kernel.read()
    for vm in (a, b):
        port = state.vm_ports[f"{vm}/eth0"]
        assert port.bridge == "mgmt-br"
        assert state.links[port.host_ifname or ""].master == "mgmt-br"
        assert "eth0" in run_in(vm, "ip", "-br", "link").stdout
    set_address(a, "169.254.77.1/24")
    set_address(b, "169.254.77.2/24")
    assert ping(a, "169.254.77.2")


async def test_second_apply_of_the_same_intent_writes_nothing(
    host_node: HostNode, kernel: NetlinkKernel
) -> None:
    desired, _ = desired_state(intent(host_node, 1, [untagged_port(host_node.vm("a"))]))
    first = await converge(kernel, desired)
    assert first.phase == "Applied" and first.writes > 0
    before = kernel.writes
    second = await converge(kernel, desired)
    assert second.phase == "Applied"
    assert second.writes == 0
    assert kernel.writes == before


async def test_reads_and_steps_that_overlap_all_succeed(
    host_node: HostNode, kernel: NetlinkKernel
) -> None:
    """A heartbeat's NIC read, a state request and an apply can overlap in the executor;
    the kernel refuses a second dump on one netlink socket while the first runs (EBUSY)."""
    desired, _ = desired_state(intent(host_node, 1, [untagged_port(host_node.vm("a"))]))
    results = await asyncio.gather(
        converge(kernel, desired),
        *(kernel.read() for _ in range(6)),
        *(kernel.nics() for _ in range(3)),
    )
    assert results[0].phase == "Applied", results[0].error
    after = await kernel.read()
    assert comparable(after, kernel.netns) == comparable(await kernel.read(), kernel.netns)
    assert host_node.vm("a") in after.namespaces


async def test_deleted_vm_nic_is_unplugged_and_its_namespace_removed(
    host_node: HostNode, kernel: NetlinkKernel
) -> None:
    a, b = host_node.vm("a"), host_node.vm("b")
    desired, _ = desired_state(intent(host_node, 1, [untagged_port(a), untagged_port(b)]))
    assert (await converge(kernel, desired)).phase == "Applied"
    host_veth = (await kernel.read()).vm_ports[f"{b}/eth0"].host_ifname
    desired, _ = desired_state(intent(host_node, 2, [untagged_port(a)]))
    outcome = await converge(kernel, desired)
    assert outcome.phase == "Applied", outcome.error
    state = await kernel.read()
    assert f"{b}/eth0" not in state.vm_ports
    assert host_veth not in state.links
    assert b not in state.namespaces
    assert f"{a}/eth0" in state.vm_ports and a in state.namespaces


def put_eth1_in_a_foreign_bridge(node: HostNode) -> None:
    """A bridge ``other-br`` made by someone else, with eth1 as its port."""
    assert run_in(node.ns, "ip", "link", "add", "other-br", "type", "bridge").returncode == 0
    assert run_in(node.ns, "ip", "link", "set", "eth1", "master", "other-br").returncode == 0


async def test_links_l2net_does_not_own_are_never_touched(
    host_node: HostNode, kernel: NetlinkKernel
) -> None:
    put_eth1_in_a_foreign_bridge(host_node)
    before = comparable(await kernel.read(), kernel.netns)
    a = host_node.vm("a")
    desired, _ = desired_state(intent(host_node, 1, [untagged_port(a)]))
    assert (await converge(kernel, desired)).phase == "Applied"
    desired, _ = desired_state(intent(host_node, 2, []))
    assert (await converge(kernel, desired)).phase == "Applied"
    after = comparable(await kernel.read(), kernel.netns)
    assert after == before


async def test_intent_that_would_take_a_nic_from_another_bridge_changes_nothing(
    host_node: HostNode, kernel: NetlinkKernel
) -> None:
    # eth1 sits in a bridge l2net does not own: enslaving it elsewhere would steal it.
    put_eth1_in_a_foreign_bridge(host_node)
    before = comparable(await kernel.read(), kernel.netns)
    bad = NodeIntent(
        node=host_node.node,
        generation=1,
        cluster_networks=[
            mgmt_cn(),
            ClusterNetworkIntent(
                name="oob",
                bridge="oob-br",
                bond_name="oob-bo",
                managed=True,
                bond=BondIntent(name="oob-bo", ports=["eth1"], mode="active-backup"),
                mtu=1500,
                uplink_vlans=[],
            ),
        ],
    )
    desired, _ = desired_state(bad)
    outcome = await converge(kernel, desired)
    assert outcome.phase == "Failed"
    assert outcome.error is not None and "eth1" in outcome.error and "other-br" in outcome.error
    assert outcome.writes == 0
    assert comparable(await kernel.read(), kernel.netns) == before


async def test_mgmt_is_protected_whatever_the_intent_says(
    host_node: HostNode, kernel: NetlinkKernel
) -> None:
    before = comparable(await kernel.read(), kernel.netns)
    hostile = NodeIntent(
        node=host_node.node,
        generation=1,
        cluster_networks=[
            ClusterNetworkIntent(
                name="mgmt",
                bridge="mgmt-br",
                bond_name="mgmt-bo",
                managed=True,
                bond=BondIntent(name="mgmt-bo", ports=["eth1"], mode="802.3ad", mtu=9000),
                mtu=9000,
                uplink_vlans=[],
            )
        ],
    )
    desired, refused = desired_state(hostile)
    outcome = await converge(kernel, desired, refused=refused)
    assert outcome.phase == "Applied"
    assert outcome.writes == 0
    assert any(r.action == "refused" and "mgmt-br" in (r.error or "") for r in outcome.results)
    assert comparable(await kernel.read(), kernel.netns) == before


async def test_failure_at_a_step_rolls_back_to_the_exact_prior_state(
    host_node: HostNode, kernel: NetlinkKernel
) -> None:
    a, b, c = host_node.vm("a"), host_node.vm("b"), host_node.vm("c")
    desired, _ = desired_state(intent(host_node, 1, [untagged_port(a)]))
    assert (await converge(kernel, desired)).phase == "Applied"
    before = comparable(await kernel.read(), kernel.netns)
    seen: list[Step] = []

    async def fail_on_second_plug(step: Step) -> None:
        seen.append(step)
        if step.op == "cni.add" and sum(s.op == "cni.add" for s in seen) == 2:
            raise KernelError(step, "injected failure")

    desired, _ = desired_state(
        intent(host_node, 2, [untagged_port(a), untagged_port(b), untagged_port(c)])
    )
    outcome = await converge(kernel, desired, before_step=fail_on_second_plug)
    assert outcome.phase == "RolledBack", outcome.error
    assert outcome.error is not None and "injected failure" in outcome.error
    assert any(s.op == "cni.add" for s in outcome.steps)  # something was applied, then undone
    assert comparable(await kernel.read(), kernel.netns) == before


async def test_kernel_error_text_is_reported(host_node: HostNode, kernel: NetlinkKernel) -> None:
    with pytest.raises(KernelError) as info:
        await kernel.apply(Step(op="link.set", target="mgmt-br", args={"mtu": 100000}))
    assert "mtu greater than device maximum" in str(info.value)


async def test_a_missing_cni_plugin_fails_clearly_and_changes_nothing(
    host_node: HostNode,
) -> None:
    kernel = NetlinkKernel(host_node.node, netns=host_node.ns, cni_path="/nonexistent")
    try:
        before = comparable(await kernel.read(), kernel.netns)
        a = host_node.vm("a")
        desired, _ = desired_state(intent(host_node, 1, [untagged_port(a)]))
        outcome = await converge(kernel, desired)
        assert outcome.phase == "RolledBack"
        assert outcome.error is not None
        assert "'bridge' not found in /nonexistent" in outcome.error
        assert comparable(await kernel.read(), kernel.netns) == before
        assert a not in (await kernel.read()).namespaces
    finally:
        await kernel.close()


async def test_a_vm_nic_gets_the_mac_its_vmnic_asks_for(
    host_node: HostNode, kernel: NetlinkKernel
) -> None:
    a = host_node.vm("a")
    port = untagged_port(a)
    port.mac = "02:00:5e:10:20:30"
    desired, _ = desired_state(intent(host_node, 1, [port]))
    assert (await converge(kernel, desired)).phase == "Applied"
    assert "02:00:5e:10:20:30" in run_in(a, "ip", "link", "show", "eth0").stdout


async def test_a_vm_nic_whose_plugging_was_cut_short_is_plugged_again(
    host_node: HostNode, kernel: NetlinkKernel
) -> None:
    a = host_node.vm("a")
    desired, _ = desired_state(intent(host_node, 1, [untagged_port(a)]))
    assert (await converge(kernel, desired)).phase == "Applied"
    veth = (await kernel.read()).vm_ports[f"{a}/eth0"].host_ifname or ""
    # What an executor killed between the plugin's ADD and naming the veth leaves: eth0 in
    # the VM, a veth on the bridge without l2net's alias (a retried ADD would fail with
    # "already exists").
    assert run_in(host_node.ns, "ip", "link", "set", "dev", veth, "alias", "").returncode == 0
    outcome = await converge(NetlinkKernel(host_node.node, netns=host_node.ns), desired)
    assert outcome.phase == "Applied", outcome.error
    state = await kernel.read()
    assert veth not in state.links  # the half-plugged pair is gone, a new one plugged
    assert [p.vm for p in state.vm_ports.values()] == [a]
    on_bridge = [n for n, lk in state.links.items() if n.startswith("veth")]
    assert on_bridge == [state.vm_ports[f"{a}/eth0"].host_ifname]


async def test_a_namespace_left_half_made_is_made_again_or_removed(
    host_node: HostNode, kernel: NetlinkKernel
) -> None:
    a, b = host_node.vm("a"), host_node.vm("b")
    # An executor killed inside netns.add: l2net's record, an empty file and no namespace
    # ("unknown FS magic" for anyone using it).
    for vm in (a, b):
        os.makedirs(OWNED_NETNS_DIR, exist_ok=True)
        with open(os.path.join(OWNED_NETNS_DIR, vm), "w") as f:
            f.write(host_node.node)
        open(f"/run/netns/{vm}", "w").close()
    assert a not in (await kernel.read()).namespaces
    desired, _ = desired_state(intent(host_node, 1, [untagged_port(a)]))
    outcome = await converge(kernel, desired)
    assert outcome.phase == "Applied", outcome.error
    state = await kernel.read()
    assert a in state.namespaces and f"{a}/eth0" in state.vm_ports
    # b, no longer wanted, is gone: file and record.
    assert not os.path.lexists(f"/run/netns/{b}")
    assert state.owned_namespaces == [a]
