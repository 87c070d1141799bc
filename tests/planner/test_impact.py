"""The plan's classes: each step hitless or disruptive, and what a disruptive one affects.

The states are the executor's own: a node as installed, converged by the executor's code
(:func:`services.executor.reconciling.converge`) on the in-memory kernel to the seed plus a
few VM NICs and a host network, then planned against the intent a manifest would give it,
exactly as ``l2net plan`` does (:func:`services.planner.impact.node_plan`).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from services.executor.fakekernel import FakeKernel
from services.executor.planning import Step
from services.executor.reconciling import converge
from services.planner import compiling, impact, manifests
from services.planner.catalog import Catalog
from shared.domain.l2state import LinkState, NodeL2State, build_actual, desired_state
from shared.domain.model import VlanRange
from shared.wire import api
from tests.planner.conftest import SEED, make_node

RUNNING = """
kind: VmNic
name: web-eth0
vm: web
node: node-1
network: untagged-network
---
kind: VmNic
name: db-eth0
vm: db
node: node-1
network: vlan200
---
kind: VmNic
name: mon-eth0
vm: mon
node: node-1
network: vlan100
---
kind: HostNetwork
name: storage
clusterNetwork: oob
vlan: 300
ips:
  node-1: 169.254.30.1/24
"""
"""What runs on node-1 besides the seed: VM NICs on oob (untagged, VLAN 200) and on mgmt
(VLAN 100), and a host network on oob."""


def catalog_of(*texts: str) -> Catalog:
    catalog = Catalog().with_node(make_node("node-1"))
    for text in texts:
        specs = [d.spec for d in manifests.parse(text)]
        catalog = catalog.with_changes(put=specs, now=time.time())
    return catalog


def installed() -> NodeL2State:
    """node-1 before l2net: mgmt-br over mgmt-bo over eth0, and two free NICs."""
    links = [
        LinkState(name="eth0", kind="device", master="mgmt-bo", up=True),
        LinkState(name="mgmt-bo", kind="bond", master="mgmt-br", up=True, bond_mode="802.3ad"),
        LinkState(name="mgmt-br", kind="bridge", up=True, vlan_filtering=True),
        LinkState(name="eth1", kind="device", up=True, mac="52:54:00:00:00:01"),
        LinkState(name="eth2", kind="device", up=True, mac="52:54:00:00:00:02"),
    ]
    for link in links:
        link.mtu, link.txqlen, link.addresses = 1500, 1000, []
    one = [VlanRange(vid=1, pvid=True, untagged=True)]
    state = build_actual(
        node="node-1", links=links, vlans={"mgmt-br": one, "mgmt-bo": one}, namespaces=[]
    )
    return FakeKernel(state).state()


def running(catalog: Catalog) -> NodeL2State:
    """node-1 converged by the executor's code to what ``catalog`` compiles to."""
    kernel = FakeKernel(installed())
    desired, refused = desired_state(compiling.compile_node(catalog, "node-1"))
    assert refused == []
    outcome = asyncio.run(converge(kernel, desired))
    assert outcome.phase == "Applied", outcome.error
    return kernel.state()


def plan_of(now: list[str], manifest: str) -> api.NodePlan:
    """node-1's plan of ``manifest`` submitted on top of the manifests ``now``, which it
    runs."""
    intent = compiling.compile_node(catalog_of(*now, manifest), "node-1")
    desired, refused = desired_state(intent)
    return impact.node_plan(
        node="node-1",
        generation=1,
        desired=desired,
        refused=refused,
        actual=running(catalog_of(*now)),
        state="live",
    )


def classes(node: api.NodePlan) -> set[str]:
    return {s.impact for s in node.steps}


def disruptive(node: api.NodePlan) -> list[api.PlannedStep]:
    return [s for s in node.steps if s.impact == "disruptive"]


SEED_TEXT = SEED.read_text()


def test_adding_a_vlan_network_and_using_it_is_hitless() -> None:
    now = [SEED_TEXT, RUNNING]
    node = plan_of(
        now,
        "kind: Network\nname: vlan400\nclusterNetwork: oob\nvlan: 400\n---\n"
        "kind: VmNic\nname: app-eth0\nvm: app\nnode: node-1\nnetwork: vlan400\n",
    )
    assert node.error == "" and node.steps
    assert classes(node) == {"hitless"}, [(s.action, s.reason) for s in disruptive(node)]
    ops = [(s.operation, s.object) for s in node.steps]
    assert ("vlan.add", "oob-bo") in ops
    assert ("cni.add", "vm/app/eth0") in ops


def test_adding_a_host_network_is_hitless() -> None:
    node = plan_of(
        [SEED_TEXT, RUNNING],
        "kind: HostNetwork\nname: backup\nclusterNetwork: oob\nvlan: 310\n"
        "ips: {node-1: 169.254.31.1/24}\n",
    )
    assert node.steps and classes(node) == {"hitless"}
    assert {s.operation for s in node.steps} >= {"link.create", "addr.add"}


def test_a_bond_mode_change_is_disruptive_and_names_what_runs_on_its_bridge() -> None:
    now = [SEED_TEXT, RUNNING]
    node = plan_of(now, SEED_TEXT.replace("mode: active-backup", "mode: 802.3ad"))
    rebuild = [s for s in node.steps if "bondMode" in s.fields]
    assert len(rebuild) == 1 and rebuild[0].impact == "disruptive"
    assert "active-backup to 802.3ad" in rebuild[0].reason
    assert rebuild[0].vm_nics == ["db/eth0", "web/eth0"]  # on oob-br; mon/eth0 is on mgmt
    assert rebuild[0].host_networks == ["storage"]
    released = [s for s in node.steps if s.fields == {"master": None}]
    assert {s.object for s in released} == {"eth1", "eth2"}
    assert all(s.impact == "disruptive" for s in released)


def test_an_mtu_change_on_the_uplink_is_disruptive_for_every_vm_nic_on_it() -> None:
    now = [SEED_TEXT, RUNNING]
    node = plan_of(
        now,
        SEED_TEXT.replace("    miimon: 100\n", "    miimon: 100\n  linkAttributes: {mtu: 9000}\n"),
    )
    mtu = [s for s in node.steps if "mtu" in s.fields]
    assert mtu and all(s.impact == "disruptive" for s in mtu)
    bridge = next(s for s in mtu if s.object == "oob-br")
    assert "MTU 1500 to 9000" in bridge.reason
    assert bridge.vm_nics == ["db/eth0", "web/eth0"]
    assert bridge.host_networks == ["storage"]


def test_a_port_removed_from_the_bond_is_disruptive() -> None:
    now = [SEED_TEXT, RUNNING]
    node = plan_of(now, SEED_TEXT.replace("nics: [eth1, eth2]", "nics: [eth1]"))
    release = next(
        s for s in node.steps if s.object == "eth2" and s.fields.get("master", 1) is None
    )
    assert release.impact == "disruptive"
    assert "released from oob-bo" in release.reason
    assert release.vm_nics == ["db/eth0", "web/eth0"]


def test_a_port_added_to_the_bond_is_hitless() -> None:
    one_nic = SEED_TEXT.replace("nics: [eth1, eth2]", "nics: [eth1]")
    node = plan_of([one_nic, RUNNING], SEED_TEXT)
    assert node.steps and classes(node) == {"hitless"}
    assert ("eth2", {"master": "oob-bo"}) in [(s.object, s.fields) for s in node.steps]


def test_nothing_new_plans_no_step() -> None:
    node = plan_of([SEED_TEXT, RUNNING], SEED_TEXT)
    assert node.steps == [] and node.error == ""


# The table itself, one row per rule, on the running seed.
ROWS: list[tuple[Step, str]] = [
    (Step(op="link.create", target="x-br", args={"kind": "bridge"}), "hitless"),
    (Step(op="link.delete", target="oob-br"), "disruptive"),
    (Step(op="addr.add", target="oob-br.300", args={"address": "169.254.9.1/24"}), "hitless"),
    (Step(op="addr.del", target="oob-br.300", args={"address": "169.254.30.1/24"}), "disruptive"),
    (Step(op="vlan.add", target="oob-bo", args={"ranges": [VlanRange(vid=5)]}), "hitless"),
    (Step(op="vlan.del", target="oob-bo", args={"ranges": [VlanRange(vid=200)]}), "disruptive"),
    (Step(op="netns.add", target="new"), "hitless"),
    (Step(op="netns.del", target="web"), "disruptive"),
    (Step(op="cni.add", target="vm/new/eth0"), "hitless"),
    (Step(op="cni.del", target="vm/web/eth0"), "disruptive"),
    (Step(op="link.set", target="eth1", args={"master": None}), "disruptive"),
    (Step(op="link.set", target="eth3", args={"master": "oob-bo"}), "hitless"),
    (Step(op="link.set", target="oob-br", args={"up": True}), "hitless"),
    (Step(op="link.set", target="oob-bo", args={"up": False}), "disruptive"),
    (Step(op="link.set", target="oob-bo", args={"mtu": 9000}), "disruptive"),
    (Step(op="link.set", target="oob-bo", args={"bond_mode": "802.3ad"}), "disruptive"),
    (Step(op="link.set", target="oob-bo", args={"bond_options": {"miimon": 50}}), "disruptive"),
    (Step(op="link.set", target="oob-bo", args={"mac": "52:54:00:00:00:09"}), "disruptive"),
    (Step(op="link.set", target="oob-bo", args={"txqlen": 2000}), "hitless"),
    (Step(op="link.set", target="oob-bo", args={"txqlen": 2000, "mtu": 9000}), "disruptive"),
    (
        Step(
            op="vm.vlans",
            target="vm/db/eth0",
            args={"vlans": [VlanRange(vid=200, pvid=True, untagged=True), VlanRange(vid=201)]},
        ),
        "hitless",
    ),
    (Step(op="vm.vlans", target="vm/db/eth0", args={"vlans": [VlanRange(vid=201)]}), "disruptive"),
    (Step(op="link.set", target="oob-bo", args={"some_new_field": 1}), "disruptive"),
    (Step(op="some.new", target="oob-bo"), "disruptive"),
]


@pytest.mark.parametrize(("step", "expected"), ROWS, ids=[s.describe() for s, _ in ROWS])
def test_each_rule_of_the_table(step: Step, expected: str) -> None:
    actual = running(catalog_of(SEED_TEXT, RUNNING))
    assert impact.classify(step, actual)[0] == expected


def test_removing_a_vid_names_only_what_carries_it() -> None:
    actual = running(catalog_of(SEED_TEXT, RUNNING))
    step = Step(op="vlan.del", target="oob-bo", args={"ranges": [VlanRange(vid=300)]})
    assert impact.affected(step, actual) == ([], ["storage"])
    step = Step(op="vlan.del", target="oob-bo", args={"ranges": [VlanRange(vid=200)]})
    assert impact.affected(step, actual) == (["db/eth0"], [])
