"""A node booted with a mgmt VLAN keeps it, whatever an intent says (real UML node)."""

from __future__ import annotations

import json

import pytest
from nats.aio.client import Client

from services.lab import Lab
from shared.domain.model import HostVlanIntent, Node, NodeIntent, ObservedState
from shared.runtime import bus
from shared.wire import subjects
from tests.executor.helpers import final_status, publish_intent
from tests.executor.labkit import port_vids, seed_intent, sh
from tests.kit import lab_fixture, until

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]

MGMT_VLAN = 10


lab = lab_fixture("exlab-vlan", nodes=1, mgmt_vlan=MGMT_VLAN, executor=True)


def hostile_intent(generation: int) -> NodeIntent:
    """The seed, plus attempts to take over mgmt: its VLAN interface and its bond."""
    it = seed_intent(
        "node-1",
        generation,
        host_vlans=[
            HostVlanIntent(
                name=f"mgmt-br.{MGMT_VLAN}",
                host_network="takeover",
                cluster_network="mgmt",
                bridge="mgmt-br",
                vlan=MGMT_VLAN,
                addresses=["169.254.99.9/24"],
                mtu=1400,
            )
        ],
    )
    mgmt = it.cluster_networks[0]
    mgmt.managed = True
    mgmt.bond = it.cluster_networks[1].bond
    return it


async def test_mgmt_vlan_interface_survives_an_intent_that_tries_to_change_it(
    lab: Lab, labnc: Client
) -> None:
    vif = f"mgmt-br.{MGMT_VLAN}"
    raw = await labnc.jetstream().get_last_msg(subjects.STREAM_NODES, subjects.node("node-1"))
    assert raw.data is not None
    assert bus.decode(raw.data, Node).mgmt_vlan == MGMT_VLAN
    before = json.loads(await sh(lab, "node-1", "ip", "-j", "-d", "addr", "show", "dev", vif))

    await publish_intent(labnc, hostile_intent(1))
    await until(lambda: final_status(labnc, "node-1", 1), timeout=180)
    status = await final_status(labnc, "node-1", 1)
    assert status is not None and status.phase == "Applied", status
    refused = [r for r in status.results if r.action == "refused"]
    assert any(vif in (r.error or "") for r in refused)
    assert any("mgmt-br" in (r.error or "") for r in refused)

    after = json.loads(await sh(lab, "node-1", "ip", "-j", "-d", "addr", "show", "dev", vif))
    assert [a["local"] for a in after[0]["addr_info"]] == [
        a["local"] for a in before[0]["addr_info"]
    ]
    assert after[0]["mtu"] == before[0]["mtu"]
    # The mgmt VLAN stays on mgmt-bo beside the networks placed on mgmt; mgmt-bo keeps eth0.
    assert await port_vids(lab, "node-1", "mgmt-bo") == ["1 PVID untagged", "10", "100"]
    slaves = await sh(lab, "node-1", "cat", "/sys/class/net/mgmt-bo/bonding/slaves")
    assert slaves.split() == ["eth0"]
    # And the node still talks over its mgmt VLAN: the executor answers a live-state request.
    reply = await labnc.request(subjects.executor_control("node-1", "state"), b"", timeout=60)
    observed = bus.decode(reply.data, ObservedState)
    assert observed.mgmt_vlan == MGMT_VLAN
    assert vif in {link["name"] for link in observed.links}
