"""The pure core's algebra, proved on a kernel in memory (services.executor.fakekernel).

Random pairs of states: a node that applied one random intent and then drifted (links
downed, released, deleted or half-made, VIDs and addresses changed, VM NICs unplugged,
namespaces half-made), and another random intent to apply to it. For each pair, with the
executor's own transaction (:func:`~services.executor.reconciling.converge`):

* applying ``plan(desired, actual)`` leaves ``diff(desired, result)`` empty;
* a second plan over the result is empty;
* a kernel that refuses any one step of the plan is rolled back to ``actual`` exactly.

The lab tests prove the real kernel behaves as the fake one does; these prove the algebra
over thousands of states in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.executor.dump import comparable
from services.executor.fakekernel import FakeKernel
from services.executor.kernel import KernelError
from services.executor.planning import Step, plan
from services.executor.reconciling import converge
from shared.domain.l2state import (
    DEFAULT_PVID,
    UNFINISHED_ALIAS,
    LinkState,
    NodeL2State,
    build_actual,
    desired_state,
    diff,
    is_vm_port,
    port_key,
)
from shared.domain.model import (
    BondIntent,
    ClusterNetworkIntent,
    HostVlanIntent,
    NodeIntent,
    VlanRange,
    VmPortIntent,
)

EXAMPLES = 1500
PROPERTIES = 3
NICS = ("eth1", "eth2", "eth3")
CLUSTER_NETWORKS = ("a", "b")
VIDS = (10, 20, 30, 100, 200)
MODES = ("balance-rr", "active-backup", "balance-xor", "802.3ad", "balance-alb")
MACS = ("02:00:00:00:0a:01", "02:00:00:00:0b:01")
ADDRESSES = ("10.0.0.1/24", "10.0.0.2/24", "10.1.0.1/24", "fd00::1/64")
VMS = ("vm1", "vm2", "vm3")
MGMT_VLAN = 50

_counts = {"examples": 0}
_loop = asyncio.new_event_loop()


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    module = request.node.nodeid
    passed = [r for r in reporter.stats.get("passed", []) if r.nodeid.startswith(module)]
    line = f"fake-kernel properties: {len(passed)}/{PROPERTIES}, {_counts['examples']} examples"
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.ensure_newline()
        reporter.write_line(line)


def run(coro: Any) -> Any:
    return _loop.run_until_complete(coro)


# ---------------------------------------------------------------------------
# Strategies: intents as the planner compiles them, and kernels that drifted
# ---------------------------------------------------------------------------


def vr(vid: int, end: int = 0, *, pvid: bool = False, untagged: bool = False) -> VlanRange:
    return VlanRange(vid=vid, vid_end=end, pvid=pvid, untagged=untagged)


UNTAGGED = vr(1, pvid=True, untagged=True)

# Strategies are built once (a strategy built inside a draw costs more than the example).
bond_options = st.fixed_dictionaries(
    {},
    optional={
        "miimon": st.sampled_from([0, 100, 200]),
        "updelay": st.sampled_from([0, 200]),
        "downdelay": st.sampled_from([0, 200]),
        "xmit_hash_policy": st.sampled_from(["layer2", "layer3+4", "layer2+3"]),
        "lacp_rate": st.sampled_from(["slow", "fast"]),
        "ad_select": st.sampled_from(["stable", "bandwidth"]),
    },
)
vid_ranges = st.lists(st.sampled_from(VIDS), unique=True, max_size=3).map(
    lambda vids: [vr(v) for v in sorted(vids)]
)
bonds = st.tuples(
    st.sampled_from(MODES),
    bond_options,
    st.sampled_from([1500, 9000]),
    st.sampled_from([None, 500, 1000]),
    st.sampled_from([None, *MACS]),
    vid_ranges,
)
nic_owners = st.lists(st.sampled_from([None, *CLUSTER_NETWORKS]), min_size=3, max_size=3)
host_vlans = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.sampled_from(VIDS),
        st.lists(st.sampled_from(ADDRESSES), unique=True, max_size=3),
    ),
    unique_by=lambda hv: hv[0],
    max_size=2,
)
vm_nics = st.lists(
    st.tuples(
        st.sampled_from(VMS),
        st.sampled_from(["eth0", "eth1"]),
        st.integers(0, 2),
        st.sampled_from(["untagged", "access", "trunk"]),
        st.sampled_from(VIDS),
        st.sampled_from([0, 5]),
        st.sampled_from([None, "02:00:00:00:00:99"]),
    ),
    unique_by=lambda p: (p[0], p[1]),
    max_size=3,
)


def cluster_network(name: str, nics: list[str], bond: tuple[Any, ...]) -> ClusterNetworkIntent:
    mode, options, mtu, txqlen, hwaddr, vids = bond
    return ClusterNetworkIntent(
        name=name,
        bridge=f"{name}-br",
        bond_name=f"{name}-bo",
        managed=True,
        bond=BondIntent(
            name=f"{name}-bo",
            ports=nics,
            mode=mode,
            options=options,
            mtu=mtu,
            txqlen=txqlen,
            hwaddr=hwaddr,
        ),
        mtu=mtu,
        uplink_vlans=[UNTAGGED, *vids],
    )


def vm_port(nic: tuple[Any, ...], bridges: list[str]) -> VmPortIntent:
    """A VM NIC as the planner compiles it (the NAD's bridge CNI config and its VIDs)."""
    vm, ifname, which, network, vid, width, mac = nic
    bridge = bridges[which % len(bridges)]
    config: dict[str, Any] = {
        "cniVersion": "0.3.1",
        "name": network,
        "type": "bridge",
        "bridge": bridge,
        "promiscMode": True,
        "ipam": {},
    }
    vlans = [UNTAGGED]
    if network == "access":
        config["vlan"] = vid
        vlans = [vr(vid, pvid=True, untagged=True)]
    elif network == "trunk":
        config["vlanTrunk"] = [{"minID": vid, "maxID": vid + width}]
        vlans = [vr(vid, vid + width if width else 0)]
    return VmPortIntent(
        name=f"{vm}-{ifname}",
        vm=vm,
        ifname=ifname,
        network=network,
        cluster_network=bridge.removesuffix("-br"),
        bridge=bridge,
        vlans=vlans,
        mac=mac,
        cni_config=config,
    )


@st.composite
def intents(draw: st.DrawFn) -> NodeIntent:
    """A node intent as the planner compiles it: mgmt, up to two cluster networks with
    bonds over distinct NICs, host VLAN interfaces, VM NICs on those bridges."""
    owners = draw(nic_owners)
    networks = [
        ClusterNetworkIntent(
            name="mgmt",
            bridge="mgmt-br",
            bond_name="mgmt-bo",
            managed=False,
            bond=None,
            mtu=1500,
            uplink_vlans=draw(vid_ranges),
        )
    ]
    for name in CLUSTER_NETWORKS:
        nics = [nic for nic, owner in zip(NICS, owners, strict=True) if owner == name]
        if nics:
            networks.append(cluster_network(name, nics, draw(bonds)))
    bridges = [cn.bridge for cn in networks]
    vlans = []
    for which, vid, addresses in draw(host_vlans):
        bridge = bridges[which % len(bridges)]
        vlans.append(
            HostVlanIntent(
                name=f"{bridge}.{vid}",
                host_network=f"h{vid}",
                cluster_network=bridge.removesuffix("-br"),
                bridge=bridge,
                vlan=vid,
                addresses=addresses,
            )
        )
    unique = {hv.name: hv for hv in vlans}
    return NodeIntent(
        node="node-1",
        generation=1,
        cluster_networks=networks,
        host_vlans=list(unique.values()),
        vm_ports=[vm_port(nic, bridges) for nic in draw(vm_nics)],
    )


def bare_node(
    *, mgmt_vlan: int | None, nics_up: list[bool], aliases: list[str | None]
) -> NodeL2State:
    """A node before l2net: mgmt (bridge, bond on eth0, mgmt VLAN interface) and free NICs."""
    mgmt_vids = [DEFAULT_PVID, *([vr(mgmt_vlan)] if mgmt_vlan else [])]
    links = [
        LinkState(name="eth0", kind="device", master="mgmt-bo", up=True),
        LinkState(
            name="mgmt-bo",
            kind="bond",
            master="mgmt-br",
            up=True,
            bond_mode="active-backup",
            bond_options={"miimon": 100},
        ),
        LinkState(name="mgmt-br", kind="bridge", up=True, vlan_filtering=True),
    ]
    if mgmt_vlan:
        links.append(
            LinkState(
                name=f"mgmt-br.{mgmt_vlan}",
                kind="vlan",
                up=True,
                vlan_id=mgmt_vlan,
                vlan_link="mgmt-br",
            )
        )
    for i, (nic, up, alias) in enumerate(zip(NICS, nics_up, aliases, strict=True)):
        links.append(LinkState(name=nic, kind="device", up=up, alias=alias))
        links[-1].mac = f"52:54:00:00:00:{i + 1:02x}"
    for link in links:
        link.mtu, link.txqlen, link.addresses = 1500, 1000, []
    state = build_actual(
        node="node-1",
        links=links,
        vlans={"mgmt-br": mgmt_vids, "mgmt-bo": mgmt_vids},
        namespaces=[],
        mgmt_vlan=mgmt_vlan,
    )
    return FakeKernel(state).state()  # as the (fake) kernel reads it back


_DRIFT_LINKS = (
    *NICS,
    "a-br",
    "a-bo",
    "b-br",
    "b-bo",
    *(f"{b}.{v}" for b in ("a-br", "b-br", "mgmt-br") for v in VIDS),
)
_VM_KEYS = tuple(port_key(vm, ifname) for vm in VMS for ifname in ("eth0", "eth1"))
_DRIFTS = (
    "mtu",
    "down",
    "up",
    "release",
    "delete",
    "vid-del",
    "vid-add",
    "filtering",
    "options",
    "address",
    "unfinished",
    "unplug",
    "half-netns",
    "netns-del",
)


def drift_step(name: str, kind: str, vid: int, vm_key: str) -> Step:
    """One change made to a node behind l2net's back (or by an executor that died)."""
    vm, ifname = vm_key.split("/")
    vids = {"ranges": [vr(vid)], "self": name.endswith("-br")}
    if kind == "mtu":
        return Step(op="link.set", target=name, args={"mtu": 1400})
    if kind in ("down", "up"):
        return Step(op="link.set", target=name, args={"up": kind == "up"})
    if kind == "delete" and name not in NICS:  # a NIC is never deleted
        return Step(op="link.delete", target=name)
    if kind in ("vid-del", "vid-add"):
        return Step(op=f"vlan.{kind[4:]}", target=name, args=vids)
    if kind == "filtering":
        return Step(op="link.set", target=name, args={"vlan_filtering": False})
    if kind == "options":
        return Step(op="link.set", target=name, args={"bond_options": {"miimon": 7}})
    if kind == "address":
        return Step(op="addr.add", target=name, args={"address": "10.9.0.1/24"})
    if kind == "unfinished":  # made by an executor that died before naming it
        return Step(op="link.create", target=name, args=_unfinished(name))
    if kind in ("release", "delete"):
        return Step(op="link.set", target=name, args={"master": None})
    if kind == "unplug":
        return Step(op="cni.del", target=f"vm/{vm_key}", args={"vm": vm, "ifname": ifname})
    return Step(op="netns.add" if kind == "half-netns" else "netns.del", target=vm)


def _unfinished(name: str) -> dict[str, Any]:
    """The creating request of ``name`` (its kind from its name), before it is named."""
    args: dict[str, Any] = {"alias": UNFINISHED_ALIAS, "kind": "device"}
    if name.endswith("-br"):
        args.update(kind="bridge", vlan_filtering=True)
    elif name.endswith("-bo"):
        args.update(kind="bond", bond_mode="balance-rr")
    elif "." in name:
        bridge, vid = name.split(".")
        args.update(kind="vlan", vlan_link=bridge, vlan_id=int(vid))
    return args


drifts = st.lists(
    st.tuples(
        st.sampled_from(_DRIFT_LINKS),
        st.sampled_from(_DRIFTS),
        st.sampled_from((1, *VIDS)),
        st.sampled_from(_VM_KEYS),
    ),
    max_size=4,
)
bare_nodes = st.tuples(
    st.sampled_from([None, MGMT_VLAN]),
    st.lists(st.booleans(), min_size=3, max_size=3),
    st.lists(st.sampled_from([None, "uplink"]), min_size=3, max_size=3),
)


@st.composite
def pairs(draw: st.DrawFn) -> tuple[NodeL2State, NodeL2State]:
    """(desired, actual): a node that applied one intent and drifted, and another intent."""
    mgmt_vlan, nics_up, aliases = draw(bare_nodes)
    bare = bare_node(mgmt_vlan=mgmt_vlan, nics_up=nics_up, aliases=aliases)
    before, _ = desired_state(draw(intents()), mgmt_vlan=mgmt_vlan)
    kernel = FakeKernel(bare)
    for step in plan(before, bare):
        kernel.run(step)
    assert diff(before, kernel.state()) == []
    for drift in draw(drifts):
        with contextlib.suppress(KernelError):  # a change this node cannot take: no drift
            kernel.run(drift_step(*drift))
    # A VM NIC whose bridge was deleted by hand is unplugged with it: once unplugged, no
    # rollback could plug it back (the bridge CNI plugin needs a bridge).
    for key, port in kernel.state().vm_ports.items():
        if port.bridge is None:
            vm, ifname = key.split("/")
            kernel.run(Step(op="cni.del", target=f"vm/{key}", args={"vm": vm, "ifname": ifname}))
    desired, _ = desired_state(draw(intents()), mgmt_vlan=mgmt_vlan)
    return desired, kernel.state()


def restorable(state: NodeL2State) -> dict[str, object]:
    """What a rollback restores exactly: the dump (services.executor.dump) with VM NICs as VM
    NICs (a NIC plugged again gets a new host veth, the CNI plugin's choice) and without the
    namespaces l2net made that no VM NIC is in (half-made ones: deleted, never restored)."""
    vm_links = {n for n, lk in state.links.items() if is_vm_port(lk)}
    vm_namespaces = {p.vm for p in state.vm_ports.values()}
    kept = msgspec.structs.replace(
        state,
        links={n: lk for n, lk in state.links.items() if n not in vm_links},
        vlans={n: v for n, v in state.vlans.items() if n not in vm_links},
        namespaces=[
            ns for ns in state.namespaces if ns in vm_namespaces or ns not in state.owned_namespaces
        ],
    )
    return msgspec.to_builtins(comparable(kept))


def _changed(before: Any, after: Any, path: str = "") -> list[str]:
    """Where two dumps differ, as ``path: before -> after`` lines (assertion messages)."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [
            line
            for key in sorted(set(before) | set(after))
            for line in _changed(before.get(key), after.get(key), f"{path}.{key}")
        ]
    return [] if before == after else [f"{path}: {before!r} -> {after!r}"]


# ---------------------------------------------------------------------------
# The properties
# ---------------------------------------------------------------------------

PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@PROPERTY
@given(pairs())
def test_applying_the_plan_leaves_no_difference(pair: tuple[NodeL2State, NodeL2State]) -> None:
    desired, actual = pair
    kernel = FakeKernel(actual)
    outcome = run(converge(kernel, desired))
    assert outcome.phase == "Applied", (outcome.error, [s.describe() for s in outcome.steps])
    assert diff(desired, kernel.state()) == []
    _counts["examples"] += 1


@PROPERTY
@given(pairs())
def test_a_second_plan_is_empty(pair: tuple[NodeL2State, NodeL2State]) -> None:
    desired, actual = pair
    kernel = FakeKernel(actual)
    for step in plan(desired, actual):
        kernel.run(step)
    assert plan(desired, kernel.state()) == []
    _counts["examples"] += 1


@PROPERTY
@given(pairs(), st.integers(min_value=0))
def test_a_refused_step_rolls_back_to_the_snapshot_exactly(
    pair: tuple[NodeL2State, NodeL2State], cut: int
) -> None:
    desired, actual = pair
    steps = plan(desired, actual)
    if not steps:
        _counts["examples"] += 1
        return
    refused = steps[cut % len(steps)]
    seen: list[Step] = []

    def fail(step: Step) -> str | None:
        seen.append(step)
        # The first time the plan reaches that step (not when the rollback does).
        if len(seen) == cut % len(steps) + 1:
            assert step == refused
            return "refused by the test"
        return None

    kernel = FakeKernel(actual, fail=fail)
    outcome = run(converge(kernel, desired))
    assert outcome.phase == "RolledBack", (
        outcome.error,
        [s.describe() for s in steps],
        [s.describe() for s in kernel.applied],
    )
    after, before = restorable(kernel.state()), restorable(actual)
    assert after == before, (_changed(before, after), [s.describe() for s in kernel.applied])
    _counts["examples"] += 1
