"""The planner: a submission's round trip and the service's memory.

Baselines, in the same run against the same nats-server:
* a plain nats-py request to a responder that only echoes, plus a plain JetStream publish of
  as many messages as the submission stores and publishes (the floor of any design that
  stores specs and intents in JetStream);
* the resident memory of a plain nats-py client process that connects and waits.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from services.cli.demo import demo_node
from services.planner.service import Planner
from shared.runtime import bus, natsserver
from shared.wire import api, subjects
from tests import keys
from tests.bench.common import Result, median_seconds, service_memory

SEED = Path(__file__).resolve().parents[2] / "docs" / "examples" / "seed.yaml"
NODES = [f"node-{i}" for i in range(1, 21)]


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


def _memory(url: str) -> list[Result]:
    return [service_memory("resident memory, idle", "planner", url, settle=4)]


def run() -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="l2net-bench-") as tmp:
        server = natsserver.start(Path(tmp) / "nats")
        try:
            results = asyncio.run(_latency(server.url))
            results += _memory(server.url)
        finally:
            server.stop()
    return results
