"""The planner over a real nats-server with JetStream: submit, reject, rebuild, node join."""

from __future__ import annotations

import json

import msgspec
import nats
from nats.aio.client import Client

from services.planner.service import Planner
from shared.domain import model
from shared.runtime import bus
from shared.runtime.natsserver import EmbeddedNats
from shared.wire import api, subjects
from tests import keys
from tests.kit import until
from tests.planner.conftest import make_node, register

VMS = "---\nkind: VmNic\nname: nic-a\nvm: vm-a\nnode: node-1\nnetwork: vlan200\n"


async def apply(nc: Client, text: str | bytes) -> api.ApplyReply:
    body = text.encode() if isinstance(text, str) else text
    msg = await nc.request(subjects.API_APPLY, body, timeout=10)
    return bus.decode(msg.data, api.ApplyReply)


async def last_intent(nc: Client, node: str) -> model.NodeIntent:
    msg = await nc.jetstream().get_last_msg(subjects.STREAM_INTENTS, subjects.intent(node))
    return bus.decode(msg.data or b"", model.NodeIntent)


async def stream_messages(nc: Client, stream: str) -> int:
    info = await nc.jetstream().stream_info(stream)
    return info.state.messages


async def test_any_nats_client_submits_without_l2net_code(
    nats_server: EmbeddedNats, planner: Planner, seed_text: str
) -> None:
    """A plain nats-py client, JSON in and out, no l2net import on its side."""
    plain = await nats.connect(nats_server.url)
    try:
        await register(plain, make_node("node-1"))
        await until(lambda: "node-1" in planner.catalog.nodes)
        reply = json.loads((await plain.request("l2.api.apply", seed_text.encode(), 10)).data)
        assert reply["ok"] is True
        assert {c["name"] for c in reply["changes"]} == {
            "oob",
            "oob-all",
            "vlan100",
            "vlan200",
            "untagged-network",
        }
        # Generation 1 was the joining node's (empty) intent; the seed is generation 2.
        assert reply["generations"] == {"node-1": 2}
        got = json.loads((await plain.request("l2.api.get", b'{"kind": "Network"}', 10)).data)
        assert [i["name"] for i in got["items"]] == ["untagged-network", "vlan100", "vlan200"]
        nad = json.loads((await plain.request("l2.api.nad", b'{"network": "vlan100"}', 10)).data)
        assert nad["config"]["bridge"] == "mgmt-br" and nad["config"]["vlan"] == 100
        intent = json.loads(
            (await plain.jetstream().get_last_msg("L2_INTENTS", "l2.intent.node-1")).data
        )
        assert intent["generation"] == 2
        assert [cn["name"] for cn in intent["clusterNetworks"]] == ["mgmt", "oob"]
    finally:
        await plain.close()


async def test_rejected_submission_stores_nothing_and_names_every_reason(
    nc: Client, planner: Planner, seed_text: str
) -> None:
    await register(nc, make_node("node-1"))
    await until(lambda: "node-1" in planner.catalog.nodes)
    bad = seed_text + (
        "---\nkind: Network\nname: big\nclusterNetwork: oob\nvlan: 4095\n"
        "---\nkind: Network\nname: lost\nclusterNetwork: nowhere\nvlan: 5\n"
    )
    reply = await apply(nc, bad)
    assert reply.ok is False
    text = [str(p) for p in reply.errors]
    assert any("document 6" in t and "Network big: vlan:" in t for t in text), text
    assert await stream_messages(nc, subjects.STREAM_SPECS) == 0
    assert planner.catalog.entries == {}
    # The cross-object problem is reported too once the per-object one is fixed.
    reply = await apply(nc, bad.replace("vlan: 4095", "vlan: 40"))
    assert [str(p) for p in reply.errors] == [
        "document 7, line 38: Network lost: clusterNetwork: "
        "cluster network 'nowhere' does not exist"
    ]
    assert await stream_messages(nc, subjects.STREAM_SPECS) == 0


async def test_reapplying_the_same_manifest_changes_nothing(
    nc: Client, planner: Planner, seed_text: str
) -> None:
    await register(nc, make_node("node-1"))
    await until(lambda: "node-1" in planner.catalog.nodes)
    first = await apply(nc, seed_text)
    assert first.ok and first.generations == {"node-1": 2}
    stored = await stream_messages(nc, subjects.STREAM_SPECS)
    again = await apply(nc, seed_text)
    assert again.ok
    assert {c.action for c in again.changes} == {"unchanged"}
    assert again.generations == {"node-1": 2}
    assert await stream_messages(nc, subjects.STREAM_SPECS) == stored
    assert await stream_messages(nc, subjects.STREAM_INTENTS) == 2


async def test_planner_rebuilds_from_jetstream_after_restart(
    nc: Client, planner: Planner, seed_text: str
) -> None:
    await register(nc, make_node("node-1"))
    await until(lambda: "node-1" in planner.catalog.nodes)
    assert (await apply(nc, seed_text + VMS)).ok
    assert (await apply(nc, seed_text.replace("vlan: 200", "vlan: 201"))).ok
    await planner.stop()

    restarted = Planner(nc, signing_seed=keys.SEED)
    await restarted.start()
    try:
        assert set(restarted.catalog.entries) == set(planner.catalog.entries)
        net = restarted.catalog.get(model.Network, "vlan200")
        assert net is not None and net.vlan == 201
        await until(lambda: "node-1" in restarted.catalog.nodes)
        assert restarted.intents["node-1"].generation == 3
        # Generations continue where they were.
        reply = await apply(nc, seed_text.replace("vlan: 200", "vlan: 202"))
        assert reply.generations == {"node-1": 4}
        assert (await last_intent(nc, "node-1")).cluster_networks[1].uplink_vlans[1].vid == 202
    finally:
        await restarted.stop()


async def test_node_join_and_label_change_recompile(
    nc: Client, planner: Planner, seed_text: str
) -> None:
    selective = seed_text.replace("uplink:", "nodeSelector: {rack: a}\nuplink:")
    await register(nc, make_node("node-1", labels={"rack": "a"}))
    await until(lambda: "node-1" in planner.catalog.nodes)
    assert (await apply(nc, selective)).ok

    await register(nc, make_node("node-2", labels={"rack": "b"}))
    await until(lambda: "node-2" in planner.intents)
    assert [cn.name for cn in (await last_intent(nc, "node-2")).cluster_networks] == ["mgmt"]

    # A heartbeat (same labels and NICs) publishes nothing new.
    await register(nc, make_node("node-2", labels={"rack": "b"}))
    await register(nc, make_node("node-2", labels={"rack": "a"}))
    await until(lambda: planner.intents["node-2"].generation == 2)
    intent = await last_intent(nc, "node-2")
    assert [cn.name for cn in intent.cluster_networks] == ["mgmt", "oob"]
    assert intent.generation == 2
    assert await stream_messages(nc, subjects.STREAM_INTENTS) == 4  # 2 per node


async def test_delete_refuses_objects_in_use_and_removes_the_rest(
    nc: Client, planner: Planner, seed_text: str
) -> None:
    await register(nc, make_node("node-1"))
    await until(lambda: "node-1" in planner.catalog.nodes)
    assert (await apply(nc, seed_text + VMS)).ok

    async def delete(kind: str, name: str) -> api.ApplyReply:
        body = bus.encode(api.DeleteRequest(kind=kind, name=name))
        return bus.decode((await nc.request(subjects.API_DELETE, body, 10)).data, api.ApplyReply)

    refused = await delete("Network", "vlan200")
    assert not refused.ok and "still in use by VmNic nic-a" in str(refused.errors[0])
    assert not (await delete("ClusterNetwork", "mgmt")).ok
    # Removing the uplink under a VM NIC would strand it: refused, naming the NIC.
    stranded = await delete("VlanConfig", "oob-all")
    assert not stranded.ok
    assert "VmNic nic-a: network: node node-1 is not in cluster network oob" in str(
        stranded.errors[0]
    )
    assert (await delete("VmNic", "nic-a")).ok
    done = await delete("Network", "vlan200")
    assert done.ok and done.changes[0].action == "deleted"
    intent = await last_intent(nc, "node-1")
    assert [v.vid for v in intent.cluster_networks[1].uplink_vlans] == [1]
    assert intent.vm_ports == []
    # The tombstone keeps the history replayable.
    msg = await nc.jetstream().get_last_msg(subjects.STREAM_SPECS, "l2.spec.Network.vlan200")
    assert bus.decode(msg.data or b"", api.SpecRecord).op == "delete"


async def test_mgmt_cannot_be_touched(nc: Client, planner: Planner) -> None:
    reply = await apply(nc, "kind: ClusterNetwork\nname: mgmt\ndescription: mine\n")
    assert not reply.ok and "built-in cluster network" in str(reply.errors[0])
    reply = await apply(
        nc, "kind: VlanConfig\nname: m\nclusterNetwork: mgmt\nuplink: {nics: [eth1]}\n"
    )
    assert not reply.ok and "clusterNetwork" in str(reply.errors[0])


async def test_bad_request_bodies_get_clear_errors(nc: Client, planner: Planner) -> None:
    msg = await nc.request(subjects.API_DELETE, b"not json", timeout=10)
    reply = bus.decode(msg.data, api.ApplyReply)
    assert not reply.ok and "bad request" in reply.errors[0].message
    msg = await nc.request(subjects.API_GET, b'{"kind": "Bridge"}', timeout=10)
    assert "unknown kind 'Bridge'" in bus.decode(msg.data, api.GetReply).errors[0].message
    msg = await nc.request(subjects.API_APPLY, b"\x00" * 10, timeout=10)
    assert not bus.decode(msg.data, api.ApplyReply).ok


async def test_planner_is_discoverable_as_a_nats_micro_service(
    nc: Client, planner: Planner
) -> None:
    msg = await nc.request("$SRV.INFO.l2net-planner", b"", timeout=5)
    info = msgspec.json.decode(msg.data)
    assert info["name"] == "l2net-planner"
    assert {e["subject"] for e in info["endpoints"]} >= {
        "l2.api.apply",
        "l2.api.delete",
        "l2.api.get",
        "l2.api.nad",
    }
