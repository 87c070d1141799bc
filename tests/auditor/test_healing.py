"""The heal policy, pure: which findings a policy heals (the scheduling and the executor's
re-converge are proven on a real bus in test_service.py and test_host.py)."""

from __future__ import annotations

from services.auditor.healing import cluster_network_of, in_heal_scope
from services.auditor.view import FleetView, NodeView
from shared.domain.model import DriftItem, HostVlanIntent
from tests.auditor.conftest import converged
from tests.executor.labkit import seed_intent

NODE = "node-1"


def running_seed() -> NodeView:
    """A node whose observed state is of the seed's generation 1, with a host VLAN on oob."""
    host = HostVlanIntent(
        name="oob-br.30", host_network="storage", cluster_network="oob", bridge="oob-br", vlan=30
    )
    intent = seed_intent(NODE, 1, host_vlans=[host])
    view = FleetView()
    view.on_intent(intent, 1.0)
    view.on_observed(converged(intent, at=2.0), 2.0)
    return view.node(NODE)


def finding(obj: str, path: str = "") -> DriftItem:
    return DriftItem(object=obj, path=path, desired=1, actual=2, first_seen=3.0)


def test_a_finding_belongs_to_the_cluster_network_of_its_object() -> None:
    intent = running_seed().intents[1]
    networks = {
        obj: cluster_network_of(finding(obj), intent)
        for obj in ("oob-br", "oob-bo", "eth1", "oob-br.30", "vm/vmu/eth0", "netns/vm100")
    }
    assert networks == {
        "oob-br": "oob",
        "oob-bo": "oob",
        "eth1": "oob",
        "oob-br.30": "oob",
        "vm/vmu/eth0": "oob",
        "netns/vm100": "mgmt",
    }
    assert cluster_network_of(finding("oob-veth9"), intent) == "oob"  # an extra link: its name
    assert cluster_network_of(finding("oob-br.40"), None) == "oob"  # no intent: by its name
    assert cluster_network_of(finding("node/node-1", "generation"), intent) is None


def test_a_policy_heals_kernel_findings_of_the_networks_it_names() -> None:
    v = running_seed()
    oob, mgmt = finding("oob-br", "mtu"), finding("vm/vm100/eth0", "vlans")
    stuck = finding("node/node-1", "generation")
    assert [in_heal_scope(v, i, heal={"oob"}) for i in (oob, mgmt, stuck)] == [True, False, False]
    assert [in_heal_scope(v, i, heal={"*"}) for i in (oob, mgmt, stuck)] == [True, True, False]
    assert [in_heal_scope(v, i, heal=set()) for i in (oob, mgmt, stuck)] == [False, False, False]
