"""The executor's kernel work, against iproute2 and the CNI plugin driven by hand.

Measured in a private network namespace of the host kernel (bridges and veth only; bonds and
VLAN filtering need the lab, whose UML timings are in LAB-NOTES):

* **read + diff, nothing to do** (what every idle reconcile and every ``state`` request
  costs): the executor's netlink dumps and diff, against ``ip -d -j link show`` plus
  ``bridge -j vlan show`` run as programs;
* **plug VM NICs**: the executor converging an intent of 10 untagged VM NICs from nothing
  (namespaces, CNI ADD, alias, read-backs), against a shell loop of ``ip netns add`` and the
  same CNI ADD; both then undone, outside the timing.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import time

from pyroute2 import AsyncIPRoute
from pyroute2 import netns as pyroute2_netns

from services.executor.kernel import NetlinkKernel
from services.executor.reconciling import converge
from shared.l2state import desired_state, diff
from shared.model import ClusterNetworkIntent, NodeIntent, VlanRange, VmPortIntent
from tests.bench.common import Result, median_seconds

VMS = 10
CNI_CONFIG = {
    "cniVersion": "0.3.1",
    "name": "untagged",
    "type": "bridge",
    "bridge": "mgmt-br",
    "promiscMode": True,
    "ipam": {},
}


def _intent(ns: str, vms: list[str]) -> NodeIntent:
    return NodeIntent(
        node="bench",
        generation=1,
        cluster_networks=[
            ClusterNetworkIntent(
                name="mgmt",
                bridge="mgmt-br",
                bond_name="mgmt-bo",
                managed=False,
                bond=None,
                mtu=1500,
                uplink_vlans=[],
            )
        ],
        vm_ports=[
            VmPortIntent(
                name=vm,
                vm=vm,
                ifname="eth0",
                network="untagged",
                cluster_network="mgmt",
                bridge="mgmt-br",
                vlans=[VlanRange(vid=1, pvid=True, untagged=True)],
                mac=None,
                cni_config=CNI_CONFIG,
            )
            for vm in vms
        ],
    )


def _shell_plug(ns: str, vms: list[str]) -> None:
    for vm in vms:
        subprocess.run(["ip", "netns", "add", vm], check=True)
        subprocess.run(
            ["ip", "netns", "exec", ns, "/usr/lib/cni/bridge"],
            input=json.dumps(CNI_CONFIG).encode(),
            env={
                "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                "CNI_COMMAND": "ADD",
                "CNI_CONTAINERID": vm,
                "CNI_NETNS": f"/run/netns/{vm}",
                "CNI_IFNAME": "eth0",
                "CNI_PATH": "/usr/lib/cni",
            },
            check=True,
            capture_output=True,
        )


async def _bench(ns: str) -> list[Result]:
    ipr = AsyncIPRoute(netns=ns)
    await ipr.link("add", ifname="mgmt-br", kind="bridge")
    await ipr.link("add", ifname="mgmt-bo", kind="veth", peer={"ifname": "mgmt-up"})
    br = (await ipr.link_lookup(ifname="mgmt-br"))[0]
    bo = (await ipr.link_lookup(ifname="mgmt-bo"))[0]
    await ipr.link("set", index=bo, master=br, state="up")
    await ipr.link("set", index=br, state="up")
    ipr.close()
    kernel = NetlinkKernel("bench", netns=ns)
    results: list[Result] = []
    try:
        vms = [f"{ns}-vm{i}" for i in range(VMS)]
        desired, _ = desired_state(_intent(ns, vms))
        empty, _ = desired_state(_intent(ns, []))

        async def read_diff() -> None:
            diff(desired, await kernel.read())

        async def iproute2_read() -> None:
            for argv in (["ip", "-d", "-j", "link", "show"], ["bridge", "-j", "vlan", "show"]):
                proc = await asyncio.create_subprocess_exec(
                    "ip", "netns", "exec", ns, *argv, stdout=asyncio.subprocess.DEVNULL
                )
                await proc.wait()

        results.append(
            Result(
                name="read + diff, nothing to do",
                l2net=await median_seconds(read_diff, repeat=20),
                baseline=await median_seconds(iproute2_read, repeat=20),
                baseline_name="ip -d -j link + bridge -j vlan",
                unit="s",
            )
        )

        l2net_times, shell_times = [], []
        for _ in range(3):
            start = time.perf_counter()
            outcome = await converge(kernel, desired)
            l2net_times.append(time.perf_counter() - start)
            assert outcome.phase == "Applied", outcome.error
            assert (await converge(kernel, empty)).phase == "Applied"
            start = time.perf_counter()
            await asyncio.to_thread(_shell_plug, ns, vms)
            shell_times.append(time.perf_counter() - start)
            for vm in vms:
                pyroute2_netns.remove(vm)
        results.append(
            Result(
                name=f"plug {VMS} VM NICs (bridge CNI)",
                l2net=sorted(l2net_times)[1],
                baseline=sorted(shell_times)[1],
                baseline_name="ip netns add + CNI ADD by hand",
                unit="s",
            )
        )
    finally:
        await kernel.close()
    return results


def run() -> list[Result]:
    ns = f"l2t-bench-{secrets.token_hex(3)}"
    pyroute2_netns.create(ns)
    try:
        return asyncio.run(_bench(ns))
    finally:
        present = set(pyroute2_netns.listnetns())
        for name in [*(f"{ns}-vm{i}" for i in range(VMS)), ns]:
            if name in present:
                pyroute2_netns.remove(name)
