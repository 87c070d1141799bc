"""Messages that do not decode, as the last of a spec, an intent and a node subject: the
planner starts, serves, and counts generations forward past them."""

from __future__ import annotations

from nats.aio.client import Client

from services.planner.service import Planner
from shared.domain import model
from shared.runtime import bus
from shared.wire import api, subjects
from tests import keys
from tests.kit import until
from tests.planner.conftest import make_node, register

POISON: list[tuple[str, bytes]] = [
    ("l2.spec.Network.vlan200", b"\x00\xffnot json"),
    ("l2.spec.VlanConfig.oob-all", b'{"op": "put", "kind": "VlanConfig", "name": "oob-all"}'),
    ("l2.spec.ClusterNetwork.oob", b'{"op": "put", "kind": "Network", "name": "x", "spec": {}}'),
    ("l2.intent.node-1", b"{truncated"),
    # Decodes, but names another node than its subject: trust the subject.
    ("l2.intent.node-2", b'{"type": "NodeIntent", "node": "node-1", "generation": 999}'),
    ("l2.node.node-2", b"[1, 2, 3]"),
    ("l2.node.node-3", b'{"name": "node-1"}'),
]


async def poison(nc: Client) -> None:
    js = nc.jetstream()
    for subject, data in POISON:
        await js.publish(subject, data)


async def last_generation(nc: Client, node: str) -> int:
    """The highest generation a decodable intent of ``node`` carries in L2_INTENTS."""
    js = nc.jetstream()
    best = 0
    info = await js.stream_info(subjects.STREAM_INTENTS)
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(subjects.STREAM_INTENTS, seq)
        except Exception:
            continue
        if msg.subject != subjects.intent(node):
            continue
        try:
            intent = bus.decode(msg.data or b"", model.NodeIntent)
        except Exception:
            continue
        if intent.node == node:
            best = max(best, intent.generation)
    return best


async def test_poison_last_messages_neither_stop_nor_mislead_the_planner(
    nc: Client, seed_text: str
) -> None:
    first = Planner(nc, signing_seed=keys.SEED)
    await first.start()
    for name in ("node-1", "node-2", "node-3"):
        await register(nc, make_node(name))
    await until(lambda: all(n in first.intents for n in ("node-1", "node-2", "node-3")))
    assert (await first.apply(seed_text)).ok
    before = {n: first.intents[n].generation for n in ("node-1", "node-2", "node-3")}
    await first.stop()

    await poison(nc)
    checks: dict[str, bool] = {}
    planner = Planner(nc, signing_seed=keys.SEED)
    try:
        await planner.start()  # raised before: a bad last intent crashed the start
        checks["starts with poison last messages"] = True
        await planner.catch_up()
        got = planner.get("Network", "vlan200")
        checks["a bad last spec record leaves the last good one standing"] = (
            got.ok and got.items[0].spec["vlan"] == 200
        )
        checks["every bad last message reported, once each"] = sorted(
            s for s, _ in planner.skipped
        ) == sorted(s for s, _ in POISON)

        # Serving: a submission touching the poisoned subjects is stored (their sequence
        # counts for the expected last sequence) and published with forward generations.
        msg = await nc.request(
            subjects.API_APPLY,
            seed_text.replace("vlan: 200", "vlan: 210").encode(),
            timeout=30,
        )
        reply = bus.decode(msg.data, api.ApplyReply)
        checks["serves a submission over the poisoned spec subject"] = reply.ok
        checks["node-1's generation moves forward past a bad last intent"] = (
            reply.generations.get("node-1", 0) > before["node-1"]
        )
        # node-2's and node-3's last node messages are bad: unknown until they report again.
        await register(nc, make_node("node-2"))
        await register(nc, make_node("node-3"))
        await until(
            lambda: (
                planner.intents.get("node-3", model.NodeIntent(node="", generation=0)).generation
                > before["node-3"]
            )
        )
        await until(
            lambda: (
                planner.intents.get("node-2", model.NodeIntent(node="", generation=0)).generation
                > before["node-2"]
            )
        )
        checks["a node's generation moves forward past an intent naming another node"] = (
            await last_generation(nc, "node-2") == planner.intents["node-2"].generation
        )

        # While following: the same poison again, live; the planner goes on answering.
        await poison(nc)
        await planner.catch_up()
        msg = await nc.request(subjects.API_GET, b"", timeout=30)
        checks["answers get after live poison"] = bus.decode(msg.data, api.GetReply).ok
        msg = await nc.request(subjects.API_APPLY, seed_text.encode(), timeout=30)
        live = bus.decode(msg.data, api.ApplyReply)
        checks["serves a submission after live poison"] = live.ok and all(
            live.generations[n] > reply.generations.get(n, 0) for n in ("node-1", "node-2")
        )
    finally:
        await planner.stop()
    for what, ok in checks.items():
        print(f"  {'ok ' if ok else 'BAD'} {what}")
    passed = sum(checks.values())
    print(f"poison last messages: planner started and served {passed}/{len(checks)}")
    assert passed == len(checks), checks


async def test_a_deleted_last_record_does_not_refuse_every_submission(
    nc: Client, planner: Planner, seed_text: str
) -> None:
    """The stream's last record deleted by hand (an operator's API call): batches expect the
    stream's last sequence, which still counts it; they are not refused for ever."""
    assert (await planner.apply(seed_text)).ok
    js = nc.jetstream()
    last = (await js.stream_info(subjects.STREAM_SPECS)).state.last_seq
    await js.delete_msg(subjects.STREAM_SPECS, last)
    # A planner that never saw the deleted record (started after the deletion).
    fresh = Planner(nc, signing_seed=keys.SEED)
    await fresh.start()
    try:
        reply = await fresh.apply(seed_text.replace("vlan: 200", "vlan: 220"))
    finally:
        await fresh.stop()
    assert reply.ok, reply.errors
    assert {c.name: c.revision for c in reply.changes}["vlan200"] > last
