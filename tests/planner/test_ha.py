"""Two planners at once on one real nats-server: nothing accepted is lost, one catalog.

Both planners serve the queue group ``l2net-planner``; their state comes from JetStream and
every write expects its subject's last sequence, so a planner that loses a race catches up,
validates again and retries.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.planner import service
from services.planner.service import Planner
from shared.domain import model
from shared.runtime import bus, natsserver
from shared.runtime.natsserver import EmbeddedNats
from shared.wire import api, subjects
from tests import keys
from tests.kit import until
from tests.planner.conftest import make_node, register

NODES = ["node-1", "node-2", "node-3"]
SUBMISSIONS = 40
CLIENTS = 4


@pytest.fixture
async def two_planners(nats_server: EmbeddedNats) -> AsyncIterator[list[Planner]]:
    """Two planners, each on its own connection, both in the queue group."""
    conns = [await bus.connect([nats_server.url], name=f"planner-{i}") for i in (1, 2)]
    planners = [Planner(c, signing_seed=keys.SEED) for c in conns]
    try:
        for p in planners:
            await p.start()
        yield planners
    finally:
        for p in planners:
            await p.stop()
        for c in conns:
            await c.drain()


async def request(nc: Client, subject: str, body: bytes) -> bytes:
    return (await nc.request(subject, body, timeout=60)).data


async def all_intents(nc: Client) -> list[model.NodeIntent]:
    """Every intent L2_INTENTS holds, in stream order."""
    js = nc.jetstream()
    info = await js.stream_info(subjects.STREAM_INTENTS)
    sub = await js.pull_subscribe(
        subjects.ALL_INTENTS,
        stream=subjects.STREAM_INTENTS,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE),
    )
    out: list[model.NodeIntent] = []
    try:
        while len(out) < info.state.messages:
            for msg in await sub.fetch(256, timeout=5):
                out.append(bus.decode(msg.data, model.NodeIntent))
    finally:
        await sub.unsubscribe()
    return out


def covers(intent: model.NodeIntent, cluster_network: str, vid: int) -> bool:
    for cn in intent.cluster_networks:
        if cn.name == cluster_network:
            return any(r.vid <= vid <= r.last for r in cn.uplink_vlans)
    return False


async def test_two_planners_lose_no_accepted_submission(
    nats_server: EmbeddedNats, two_planners: list[Planner], seed_text: str
) -> None:
    clients = [await bus.connect([nats_server.url], name=f"client-{i}") for i in range(CLIENTS)]
    try:
        for name in NODES:
            await register(clients[0], make_node(name))
        for p in two_planners:
            await until(lambda p=p: all(n in p.intents for n in NODES))  # type: ignore[misc]
        reply = bus.decode(
            await request(clients[0], subjects.API_APPLY, seed_text.encode()), api.ApplyReply
        )
        assert reply.ok, reply.errors

        # 40 submissions, each a new Network on oob (VLAN 300+i), from 4 clients at once;
        # half of them also relabel nothing but re-send the seed (unchanged objects), so
        # submissions overlap on subjects too. A node changes its NICs meanwhile (the
        # planners recompile it on their own, racing the submissions for its intent).
        def manifest(i: int) -> bytes:
            net = f"kind: Network\nname: net-{i}\nclusterNetwork: oob\nvlan: {300 + i}\n"
            return (seed_text + "---\n" + net if i % 2 else net).encode()

        order = list(range(SUBMISSIONS))
        random.Random(9).shuffle(order)

        async def client(c: int) -> list[tuple[int, api.ApplyReply]]:
            out = []
            for i in order[c::CLIENTS]:
                data = await request(clients[c], subjects.API_APPLY, manifest(i))
                out.append((i, bus.decode(data, api.ApplyReply)))
            return out

        async def node_changes() -> None:
            for k in range(3):
                await register(clients[0], make_node("node-3", nics=3 + k % 2))
                await asyncio.sleep(0.05)

        results = await asyncio.gather(*(client(c) for c in range(CLIENTS)), node_changes())
        replies = [r for batch in results[:CLIENTS] for r in batch]  # type: ignore[union-attr]
        accepted = [i for i, r in replies if r.ok]
        refused = [(i, [str(e) for e in r.errors]) for i, r in replies if not r.ok]
        assert not refused, refused
        served = [p.served for p in two_planners]
        conflicts = sum(p.conflicts for p in two_planners)
        print(
            f"\ntwo planners: requests served {served[0]} + {served[1]}; writes refused "
            f"because the other planner was first, then retried: {conflicts}"
        )
        assert all(served), "the queue group did not use both planners"

        # Let the planners finish node-3's last change before reading the final state.
        for p in two_planners:
            await p.catch_up()
        await asyncio.sleep(0.5)
        js = clients[0].jetstream()
        last = {
            n: bus.decode(
                (await js.get_last_msg(subjects.STREAM_INTENTS, subjects.intent(n))).data or b"",
                model.NodeIntent,
            )
            for n in NODES
        }
        gets = []
        for p in two_planners:
            await p.catch_up()
            gets.append(p.get(None))
        applied = 0
        for i in accepted:
            in_catalogs = all(
                any(
                    it.kind == "Network" and it.name == f"net-{i}" and it.spec["vlan"] == 300 + i
                    for it in g.items
                )
                for g in gets
            )
            on_nodes = all(covers(last[n], "oob", 300 + i) for n in NODES)
            applied += in_catalogs and on_nodes
        print(f"two planners: accepted submissions applied {applied}/{len(accepted)}")
        assert len(accepted) == SUBMISSIONS
        assert applied == len(accepted), "accepted submissions lost"

        # Every node's generations in L2_INTENTS: unique and strictly increasing.
        per_node: dict[str, list[int]] = {}
        for intent in await all_intents(clients[0]):
            per_node.setdefault(intent.node, []).append(intent.generation)
        increasing = sum(
            all(a < b for a, b in itertools.pairwise(gens)) for gens in per_node.values()
        )
        print(
            f"two planners: nodes with unique, increasing generations {increasing}/{len(NODES)} "
            f"({', '.join(f'{n}: {len(g)}' for n, g in sorted(per_node.items()))} intents)"
        )
        assert increasing == len(NODES), per_node

        # One catalog: each planner's own answer, and answers through the queue group.
        answers = [bus.encode(g) for g in gets]
        for c in clients:
            for _ in range(3):
                answers.append(await request(c, subjects.API_GET, b""))
        agreeing = sum(a == answers[0] for a in answers)
        print(f"two planners: get answers agreeing {agreeing}/{len(answers)}")
        assert agreeing == len(answers)
    finally:
        for c in clients:
            await c.close()


class RacedPlanner(Planner):
    """A planner whose writes are each preceded, ``races`` times, by a rival's write."""

    def __init__(self, nc: Client, rival: Planner, before_store: str, races: int) -> None:
        super().__init__(nc, signing_seed=keys.SEED)
        self.rival = rival
        self.before_store = before_store
        self.races = races

    async def _store(self, batch: service.Batch) -> dict[tuple[str, str], int]:
        if self.races > 0:
            self.races -= 1
            text = self.before_store.replace("RACE", str(self.races))
            reply = (
                await self.rival.apply(text)
                if "kind" in text
                else await self.rival.delete(*text.split())
            )
            assert reply.ok, reply.errors
        return await super()._store(batch)


async def test_a_refused_write_is_retried_against_the_new_state(
    nc: Client, nats_server: EmbeddedNats, seed_text: str
) -> None:
    """Between validating and storing, another planner writes: the store is refused
    (expected last sequence), the planner catches up, validates again and retries."""
    rival_nc = await bus.connect([nats_server.url], name="rival")
    rival = Planner(rival_nc, signing_seed=keys.SEED)
    await rival.start()
    planners: list[Planner] = []
    checks: list[bool] = []
    try:
        await register(nc, make_node("node-1"))
        await until(lambda: "node-1" in rival.intents)
        assert (await rival.apply(seed_text)).ok

        # 1. The rival changes the very object: ours is stored after it, on top of it.
        p = RacedPlanner(
            nc, rival, "kind: ClusterNetwork\nname: oob\ndescription: rival RACE\n", races=2
        )
        planners.append(p)
        reply = await p.apply("kind: ClusterNetwork\nname: oob\ndescription: ours\n")
        await p.catch_up()
        oob = p.catalog.get(model.ClusterNetwork, "oob")
        checks.append(reply.ok and oob is not None and oob.description == "ours")

        # 2. The rival deletes the network a VM NIC needs: validated again, refused clearly.
        p = RacedPlanner(nc, rival, "Network untagged-network", races=1)
        planners.append(p)
        reply = await p.apply(
            "kind: VmNic\nname: nic-a\nvm: vm-a\nnode: node-1\nnetwork: untagged-network\n"
        )
        checks.append(
            not reply.ok
            and "network 'untagged-network' does not exist" in str(reply.errors[0])
            and (await p.catch_up()) is None
            and ("VmNic", "nic-a") not in p.catalog.entries
        )

        # 3. The rival wins every time: after the last try, a clear error; nothing stored.
        p = RacedPlanner(
            nc,
            rival,
            "kind: Network\nname: vlan200\nclusterNetwork: oob\nvlan: 3RACE0\n",
            races=service.MAX_ATTEMPTS,
        )
        planners.append(p)
        reply = await p.apply("kind: Network\nname: vlan200\nclusterNetwork: oob\nvlan: 250\n")
        await p.catch_up()
        net = p.catalog.get(model.Network, "vlan200")
        checks.append(
            not reply.ok
            and "another planner kept changing" in reply.errors[0].message
            and "nothing was stored" in reply.errors[0].message
            and net is not None
            and net.vlan != 250
        )

        # 4. Intents: another planner publishes node-1's intent between our catch-up and
        # our publication; ours is refused, compiled again and published after it.
        class IntentRace(Planner):
            raced = False

            async def _publish_intent(self, intent: model.NodeIntent, expected_seq: int) -> int:
                if not self.raced:
                    self.raced = True
                    reply = await rival.apply(
                        "kind: Network\nname: vlan900\nclusterNetwork: oob\nvlan: 900\n"
                    )
                    assert reply.ok
                return await super()._publish_intent(intent, expected_seq)

        p = IntentRace(nc, signing_seed=keys.SEED)
        planners.append(p)
        reply = await p.apply("kind: Network\nname: vlan901\nclusterNetwork: oob\nvlan: 901\n")
        last = bus.decode(
            (await nc.jetstream().get_last_msg(subjects.STREAM_INTENTS, "l2.intent.node-1")).data
            or b"",
            model.NodeIntent,
        )
        checks.append(
            reply.ok
            and p.raced
            and covers(last, "oob", 900)
            and covers(last, "oob", 901)
            and reply.generations["node-1"] == last.generation
        )
        print(f"\nwrites refused by a concurrent planner, retried correctly: {sum(checks)}/4")
        assert checks == [True] * 4
    finally:
        for p in planners:
            await p.stop()
        await rival.stop()
        await rival_nc.drain()


async def test_generations_stay_above_what_the_node_applied(nc: Client, planner: Planner) -> None:
    """L2_INTENTS lost (purged): the node's reported appliedGeneration is the floor."""
    await register(nc, make_node("node-1"))
    await until(lambda: "node-1" in planner.intents)
    await planner.stop()
    await nc.jetstream().purge_stream(subjects.STREAM_INTENTS)
    node = make_node("node-1")
    node.applied_generation = 41
    await register(nc, node)
    again = Planner(nc, signing_seed=keys.SEED)
    await again.start()
    try:
        await until(lambda: "node-1" in again.intents)
        assert again.intents["node-1"].generation == 42
        # A node that reports having applied more than the stream shows (a lost or forged
        # intent) gets a new generation above it.
        node.applied_generation = 50
        await register(nc, node)
        await until(lambda: again.intents["node-1"].generation == 51)
    finally:
        await again.stop()


async def test_stored_but_not_published_is_never_ok(nc: Client, seed_text: str) -> None:
    """Another writer moves node-1's intent subject before each of our publications, every
    round: the submission is stored, the answer says so and is not ok; the planner's own
    worker publishes once the subject is left alone."""

    class Outrun(Planner):
        armed = 0

        async def _publish_intent(self, intent: model.NodeIntent, expected_seq: int) -> int:
            if self.armed:
                self.armed -= 1
                other = msgspec.structs.replace(
                    intent, generation=intent.generation + 100, cluster_networks=[]
                )
                await nc.jetstream().publish(
                    subjects.intent(intent.node), bus.encode(keys.sign(other))
                )
            return await super()._publish_intent(intent, expected_seq)

    planner = Outrun(nc, signing_seed=keys.SEED)
    await planner.start()
    try:
        await register(nc, make_node("node-1"))
        await until(lambda: "node-1" in planner.intents)  # the join's generation 1
        planner.armed = service.MAX_ATTEMPTS  # outrun every round of the next publication
        reply = await planner.apply(seed_text)
        stored = [c for c in reply.changes if c.revision]
        assert planner.armed == 0 and not reply.ok and len(stored) == 5, reply
        print(f"\nstored, not yet published: {reply.errors[0].message[:120]}...")
        assert "not all published yet" in reply.errors[0].message
        await until(lambda: covers(planner.intents["node-1"], "oob", 200))
        last = await nc.jetstream().get_last_msg(subjects.STREAM_INTENTS, "l2.intent.node-1")
        assert covers(bus.decode(last.data or b"", model.NodeIntent), "oob", 200)
    finally:
        await planner.stop()


async def test_the_planner_follows_again_after_a_nats_restart(
    tmp_path: Path, seed_text: str
) -> None:
    """A restarted server forgets the followers' (ephemeral) consumers: the first request
    after it is answered from a state followed again, not refused for want of it."""
    server = natsserver.start(tmp_path / "nats")
    back: natsserver.EmbeddedNats | None = None
    nc = await bus.connect([server.url], name="planner", attempts=-1)
    planner = Planner(nc, signing_seed=keys.SEED)
    client: Client | None = None
    checks: dict[str, bool] = {}
    try:
        await planner.start()
        await register(nc, make_node("node-1"))
        await until(lambda: "node-1" in planner.intents)
        assert (await planner.apply(seed_text)).ok
        server.stop()
        back = natsserver.start(tmp_path / "nats", port=server.port)
        client = await bus.connect([back.url], name="client")
        for _ in range(200):  # until the planner has reconnected and serves again
            try:
                await client.request("$SRV.PING.l2net-planner", b"", timeout=0.5)
                break
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                await asyncio.sleep(0.1)
        changed = seed_text.replace("vlan: 200", "vlan: 201").encode()
        reply = bus.decode(await request(client, subjects.API_APPLY, changed), api.ApplyReply)
        checks["the first submission after the restart is accepted"] = reply.ok
        got = bus.decode(
            await request(client, subjects.API_GET, b'{"kind": "Network", "name": "vlan200"}'),
            api.GetReply,
        )
        checks["get answers the new state"] = got.ok and got.items[0].spec["vlan"] == 201
        last = await client.jetstream().get_last_msg(subjects.STREAM_INTENTS, "l2.intent.node-1")
        intent = bus.decode(last.data or b"", model.NodeIntent)
        checks["node-1's intent holds it, one generation on"] = (
            covers(intent, "oob", 201) and intent.generation == reply.generations["node-1"] == 3
        )
    finally:
        await planner.stop()
        await nc.close()
        if client is not None:
            await client.close()
        for s in (back, server):
            if s is not None:
                s.stop()
    print(f"\nplanner after a NATS restart: {sum(checks.values())}/{len(checks)}")
    assert all(checks.values()), checks


async def test_a_follower_that_lost_track_of_its_consumer_follows_again(
    nc: Client, planner: Planner, seed_text: str
) -> None:
    """A follower whose consumer claims deliveries the follower never handled (seen once
    after an outage under load: every request then waited for good) makes a new consumer
    within seconds, and the planner answers again."""
    await register(nc, make_node("node-1"))
    await until(lambda: "node-1" in planner.intents)
    for follower in planner._followers:
        follower._handled = ("a consumer that is gone", 0)  # what it lost track of
    started = asyncio.get_running_loop().time()
    reply = msgspec.json.decode(
        await request(nc, subjects.API_APPLY, seed_text.encode()), type=api.ApplyReply
    )
    took = asyncio.get_running_loop().time() - started
    print(f"planner answering after its followers lost track: {int(reply.ok)}/1 ({took:.1f} s)")
    assert reply.ok, reply.errors
