"""The planner: a submission's round trip, at the seed's size and at fleet scale, the pure
validate + compile of a change, and the service's memory.

The fleets come from :mod:`tests.bench.fleet` (1000 nodes, 10 cluster networks, 200 or 1000
VLAN networks; ``racks=10`` puts each node in one cluster network of ten). Baselines, in the
same run against the same nats-server:

* a round trip: a plain nats-py request of the same size to a responder that only echoes,
  plus as many plain JetStream publishes as the submission stores and publishes, of the same
  sizes and awaited together as the planner awaits its intents (the floor of any design
  that stores specs and intents in JetStream); the two take turns, so that a busy moment of
  the machine falls on both alike;
* validate + compile (in process, no NATS): msgspec-encoding the intents the change gives
  new generations (the floor of producing them);
* the resident memory of a plain nats-py client process that connects and waits.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.aio.client import Client

from services.cli.demo import demo_node
from services.planner import compiling, manifests, validation
from services.planner.catalog import Catalog
from services.planner.service import Planner, _new_problems, tune_gc
from shared.domain import model
from shared.domain.l2state import LinkState, desired_state, observed_from
from shared.runtime import bus, natsserver
from shared.wire import api, subjects
from tests import keys
from tests.bench import fleet
from tests.bench.common import Result, median_seconds, service_memory

SEED = Path(__file__).resolve().parents[2] / "docs" / "examples" / "seed.yaml"
NODES = [f"node-{i}" for i in range(1, 21)]
FLEET_NODES = 1000
CLUSTER_NETWORKS = 10
REPEAT = 5


async def _turns(fns: list[Callable[[], Awaitable[object]]], repeat: int) -> list[float]:
    """Median seconds of each, taking turns (after one round that is not counted)."""
    samples: list[list[float]] = [[] for _ in fns]
    for round in range(repeat + 1):
        for fn, out in zip(fns, samples, strict=True):
            start = time.perf_counter()
            await fn()
            if round:
                out.append(time.perf_counter() - start)
    return [statistics.median(times) for times in samples]


async def _apply(nc: Client, text: str) -> api.ApplyReply:
    reply = bus.decode(
        (await nc.request(subjects.API_APPLY, text.encode(), 120)).data, api.ApplyReply
    )
    assert reply.ok, reply.errors
    return reply


class _Plain:
    """The baseline's parts: an echo responder and a stream of its own."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.js = nc.jetstream()

    async def start(self) -> None:
        async def echo(msg: object) -> None:
            await msg.respond(msg.data)  # type: ignore[attr-defined]

        await self.nc.subscribe("bench.echo", cb=echo)
        await self.js.add_stream(name="BENCH", subjects=["bench.js.>"])

    async def round_trip(self, request: bytes, sizes: list[int], *, together: bool) -> None:
        """One request, then ``sizes`` publishes, each awaited before the next, or
        (``together``) the first (the spec records) alone and the rest (the intents)
        awaited together, as the planner does."""
        await self.nc.request("bench.echo", request, 120)
        if not together:
            for i, size in enumerate(sizes):
                await self.js.publish(f"bench.js.{i}", b"x" * size)
            return
        await self.js.publish("bench.js.spec", b"x" * sizes[0])
        await asyncio.gather(
            *(self.js.publish(f"bench.js.{i}", b"x" * size) for i, size in enumerate(sizes[1:]))
        )


async def _latency(url: str) -> list[Result]:
    nc = await bus.connect([url], name="bench")
    js = nc.jetstream()
    planner = Planner(nc, signing_seed=keys.SEED)
    await planner.start()
    await bus.ensure_streams(js, [subjects.STREAM_NODES])
    for n in NODES:
        await js.publish(subjects.node(n), bus.encode(demo_node(n)))
    while len(planner.catalog.nodes) < len(NODES):
        await asyncio.sleep(0.05)
    seed = SEED.read_text()
    toggle = [0]

    async def submit() -> None:
        # Alternate a VLAN so that every round stores one record and republishes 20 intents.
        toggle[0] ^= 1
        text = seed.replace("vlan: 200", f"vlan: {200 + toggle[0]}")
        msg = await nc.request(subjects.API_APPLY, text.encode(), 30)
        reply = bus.decode(msg.data, api.ApplyReply)
        assert reply.ok, reply.errors

    async def echo(msg: object) -> None:
        await msg.respond(msg.data)  # type: ignore[attr-defined]

    await nc.subscribe("bench.echo", cb=echo)
    await js.add_stream(name="BENCH", subjects=["bench.js.>"])

    async def plain() -> None:
        await nc.request("bench.echo", seed.encode(), 30)
        await js.publish("bench.js.spec", b"x" * 300)
        for n in NODES:
            await js.publish(f"bench.js.{n}", b"x" * 1500)

    await submit()
    l2 = await median_seconds(submit, repeat=30)
    base = await median_seconds(plain, repeat=30)
    await planner.stop()
    await nc.drain()
    return [
        Result(
            "apply seed, 20 nodes (round trip)",
            l2 * 1000,
            base * 1000,
            "plain request + 21 JetStream publishes",
            "ms",
        )
    ]


async def _fleet_round_trips(url: str, *, racks: int, vm_nics: bool) -> list[Result]:
    """One-VID changes to a 1000-node x 200-network fleet, submission to the reply (which
    comes once every node's intent is published); with ``vm_nics``, 1000 VM NICs added."""
    nc = await bus.connect([url], name="bench")
    thresholds = gc.get_threshold()
    tune_gc()  # as the l2net planner command does (the baseline runs in this process too)
    planner = Planner(nc, signing_seed=keys.SEED)
    await planner.start()
    plain = _Plain(nc)
    await plain.start()
    try:
        f = fleet.fleet(
            nodes=FLEET_NODES, cluster_networks=CLUSTER_NETWORKS, networks=200, racks=racks
        )
        js = nc.jetstream()
        for node in f.nodes:
            await js.publish(subjects.node(node.name), bus.encode(node))
        while len(planner.catalog.nodes) < FLEET_NODES:
            await asyncio.sleep(0.05)
        await _apply(nc, f.manifest())
        toggle = [0]

        def change() -> str:
            toggle[0] ^= 1
            return fleet.specs_yaml([fleet.network(7, CLUSTER_NETWORKS, vid=3000 + toggle[0])])

        touched = len((await _apply(nc, change())).changed)
        sizes = await _sizes(nc, touched, spec_subject=subjects.spec("Network", "net0007"))
        text = change().encode()
        l2, one_by_one, together = await _turns(
            [
                lambda: _apply(nc, change()),
                lambda: plain.round_trip(text, sizes, together=False),
                lambda: plain.round_trip(text, sizes, together=True),
            ],
            REPEAT,
        )
        spread = f"{touched} nodes touched" if racks else "every node touched"
        name = (
            f"one-VID change, {FLEET_NODES} nodes x 200 networks ({spread}), "
            "submission to last intent published"
        )
        publishes = f"plain request + {touched + 1} JetStream publishes"
        results = [
            Result(name, l2, one_by_one, f"{publishes} one by one", "s"),
            Result(name, l2, together, f"{publishes}, intents awaited together", "s"),
        ]
        if vm_nics:
            results += await _vm_nics_added(nc, plain, f)
        return results
    finally:
        await planner.stop()
        await nc.drain()
        gc.set_threshold(*thresholds)


async def _vm_nics_added(nc: Client, plain: _Plain, f: fleet.Fleet) -> list[Result]:
    """1000 VM NICs (one per node) in one submission, a new 1000 each round (the YAML is
    written before the clock starts)."""
    nics = fleet.vm_nic_specs(FLEET_NODES, f.nodes, CLUSTER_NETWORKS, 200)
    texts = [
        fleet.specs_yaml(
            [
                model.VmNic(
                    name=f"r{r}-{n.name}", vm=f"r{r}-{n.vm}", node=n.node, network=n.network
                )
                for n in nics
                if isinstance(n, model.VmNic)
            ]
        )
        for r in range(1, 5)
    ]

    async def add() -> None:
        await _apply(nc, texts.pop(0))

    await add()
    sizes = await _sizes(nc, FLEET_NODES, spec_subject=subjects.spec("VmNic", "r1-vm00000-nic0"))
    sizes = [sizes[0]] * FLEET_NODES + sizes[1:]  # a record per VM NIC, then the intents
    text = texts[0].encode()
    l2, one_by_one, together = await _turns(
        [
            add,
            lambda: plain.round_trip(text, sizes, together=False),
            lambda: plain.round_trip(text, sizes, together=True),
        ],
        2,
    )
    name = f"{FLEET_NODES} VM NICs added to a {FLEET_NODES}-node fleet (one submission)"
    publishes = f"plain request + {2 * FLEET_NODES} JetStream publishes"
    return [
        Result(name, l2, one_by_one, f"{publishes} one by one", "s"),
        Result(name, l2, together, f"{publishes}, awaited together", "s"),
    ]


async def _sizes(nc: Client, intents: int, *, spec_subject: str) -> list[int]:
    """The size of a spec record, then of ``intents`` intents as published."""
    js = nc.jetstream()
    spec = await js.get_last_msg(subjects.STREAM_SPECS, spec_subject)
    intent = await js.get_last_msg(subjects.STREAM_INTENTS, subjects.intent(fleet.node_name(1)))
    return [len(spec.data or b"")] + [len(intent.data or b"")] * intents


def _validate_and_compile(networks: int, *, racks: int = 0, vm_nics: int = 0) -> Result:
    """What the planner does for a submission apart from JetStream: parse, check each object,
    check the state it would produce, compile the nodes it may affect and compare each node
    with its last intent. The change: one network's VID, or ``vm_nics`` VM NICs added."""
    f = fleet.fleet(
        nodes=FLEET_NODES, cluster_networks=CLUSTER_NETWORKS, networks=networks, racks=racks
    )
    catalog = Catalog(nodes={n.name: n for n in f.nodes}).with_changes(put=f.specs)
    compiler = compiling.IncrementalCompiler()
    current = compiler.compile(catalog)
    if vm_nics:
        texts = [fleet.specs_yaml(fleet.vm_nic_specs(vm_nics, f.nodes, CLUSTER_NETWORKS, networks))]
    else:
        texts = [
            fleet.specs_yaml([fleet.network(7, CLUSTER_NETWORKS, vid=3000 + i)])
            for i in range(REPEAT)
        ]
    l2: list[float] = []
    base: list[float] = []
    for text in texts:
        start = time.perf_counter()
        docs = manifests.parse(text)
        assert not [p for d in docs for p in validation.check_object(d.spec)]
        candidate = catalog.with_changes(put=[d.spec for d in docs], now=time.time())
        located = {(d.spec.kind, d.spec.name): (d.index, d.line) for d in docs}
        assert not _new_problems(catalog, candidate, located)
        compiled = compiler.compile(candidate)
        new = [i for n, i in compiled.items() if not compiling.same_desired_state(current[n], i)]
        l2.append(time.perf_counter() - start)
        start = time.perf_counter()
        for intent in new:
            bus.encode(intent)
        base.append(time.perf_counter() - start)
        catalog, current = candidate, compiled
    what = f"{vm_nics} VM NICs added" if vm_nics else "one-VID change"
    spread = f", {racks} racks" if racks else ""
    return Result(
        f"validate + compile, {what}, {FLEET_NODES} nodes x {networks} networks{spread} "
        f"({compiler.recompiled} nodes compiled, {len(new)} changed)",
        statistics.median(l2) * 1000,
        statistics.median(base) * 1000,
        f"encoding the {len(new)} changed intents",
        "ms",
    )


async def _plan_vs_apply(url: str) -> list[Result]:
    """``l2net plan`` of a one-VID change to the 1000-node fleet (every node touched) against
    the apply of the same change, taking turns. No executor runs: each node's state is its
    last observed state (published once, as its executor would after converging), so the plan
    also pays a live-state request that finds no responder and a direct get per node."""
    nc = await bus.connect([url], name="bench")
    thresholds = gc.get_threshold()
    tune_gc()
    planner = Planner(nc, signing_seed=keys.SEED)
    await planner.start()
    try:
        f = fleet.fleet(nodes=FLEET_NODES, cluster_networks=CLUSTER_NETWORKS, networks=200)
        js = nc.jetstream()
        for node in f.nodes:
            await js.publish(subjects.node(node.name), bus.encode(node))
        while len(planner.catalog.nodes) < FLEET_NODES:
            await asyncio.sleep(0.05)
        await _apply(nc, f.manifest())
        for name, intent in compiling.compile_all(planner.catalog).items():
            state = desired_state(intent)[0]  # the node converged, with what it installed:
            state.links["mgmt-br"] = LinkState(name="mgmt-br", kind="bridge", up=True)
            state.links["mgmt-bo"] = LinkState(name="mgmt-bo", kind="bond", master="mgmt-br")
            observed = observed_from(state, generation=1, reason="bench", at=time.time())
            await js.publish(subjects.observed(name), bus.encode(observed))
        vid = [3000]

        def change(v: int) -> str:
            return fleet.specs_yaml([fleet.network(7, CLUSTER_NETWORKS, vid=v)])

        await _apply(nc, change(vid[0]))

        async def plan() -> None:
            msg = await nc.request(subjects.API_PLAN, change(vid[0] ^ 1).encode(), 120)
            reply = bus.decode(msg.data, api.PlanReply)
            assert reply.ok and reply.summary.nodes == FLEET_NODES, reply.errors
            assert reply.summary.unknown_nodes == [], reply.nodes[0]

        async def apply() -> None:
            vid[0] ^= 1
            await _apply(nc, change(vid[0]))

        planned, applied = await _turns([plan, apply], REPEAT)
        name = f"plan of a one-VID change, {FLEET_NODES} nodes x 200 networks (every node)"
        return [Result(name, planned, applied, "apply of the same change", "s")]
    finally:
        await planner.stop()
        await nc.drain()
        gc.set_threshold(*thresholds)


def _memory(url: str) -> list[Result]:
    return [service_memory("resident memory, idle", "planner", url, settle=4)]


def _with_server(run: Callable[[str], Awaitable[list[Result]]]) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="l2net-bench-") as tmp:
        server = natsserver.start(Path(tmp) / "nats")
        try:
            return asyncio.run(run(server.url))
        finally:
            server.stop()


def run() -> list[Result]:
    return _rows(fleet_only=False)


def _rows(*, fleet_only: bool) -> list[Result]:
    if fleet_only:
        return _with_server(lambda url: _fleet_round_trips(url, racks=0, vm_nics=False))
    results = [
        _validate_and_compile(200),
        _validate_and_compile(1000),
        _validate_and_compile(200, racks=10),
        _validate_and_compile(200, vm_nics=FLEET_NODES),
    ]
    results += _with_server(_latency)
    results += _with_server(lambda url: _fleet_round_trips(url, racks=0, vm_nics=True))
    results += _with_server(lambda url: _fleet_round_trips(url, racks=10, vm_nics=False))
    results += _with_server(_plan_vs_apply)
    with tempfile.TemporaryDirectory(prefix="l2net-bench-") as tmp:
        server = natsserver.start(Path(tmp) / "nats")
        try:
            results += _memory(server.url)
        finally:
            server.stop()
    return results


if __name__ == "__main__":  # python -m tests.bench.planner_bench [--fleet-only | --plan-only]
    import sys

    if "--plan-only" in sys.argv:
        rows = _with_server(_plan_vs_apply)
    else:
        rows = _rows(fleet_only="--fleet-only" in sys.argv)
    for r in rows:
        print(r.line())
