"""The auditor: replaying the history at start, the latency of a finding, and memory.

Baselines, in the same run against the same nats-server:
* replay: plain nats-py ordered consumers that read and JSON-decode the same messages
  (inputs and the drift already published: the floor of any design that rebuilds its view
  from JetStream), against an auditor's start (replay, judge every observed state with the
  one diff, compare with what was published);
* finding latency: a JetStream publish seen by a plain core-NATS subscriber (the floor of
  "an executor reports, someone hears it"), against an executor's report of a hand-made
  change reaching ``l2.drift.<node>`` as a finding;
* memory: a plain nats-py client process that connects and waits.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

from nats.aio.client import Client
from nats.js.api import DeliverPolicy

from services.auditor.service import Auditor
from shared.domain.model import DriftReport
from shared.runtime import bus, natsserver
from shared.wire import subjects
from tests.auditor.conftest import applied, converged, heartbeat
from tests.bench.common import Result, median_seconds, service_memory
from tests.executor.labkit import seed_intent

NODES = [f"node-{i}" for i in range(1, 21)]
OBSERVED_PER_NODE = 100


def _drift(links: dict, vlans: dict) -> None:  # type: ignore[type-arg]
    vlans["oob-bo"] = [v for v in vlans["oob-bo"] if v.vid != 200]


async def _history(nc: Client) -> int:
    """20 nodes, each with an intent, a status, heartbeats and 100 observed states (half of
    them drifted: 50 episodes per node). Returns the number of messages."""
    js = nc.jetstream()
    await bus.ensure_streams(js, list(bus.STREAMS))
    count = 0
    t0 = time.time() - 3600
    for node in NODES:
        intent = seed_intent(node, 1)
        await js.publish(subjects.intent(node), bus.encode(intent))
        await js.publish(subjects.status(node), bus.encode(applied(node, 1, t0)))
        await js.publish(subjects.node(node), bus.encode(heartbeat(node, time.time())))
        count += 3
        for i in range(OBSERVED_PER_NODE):
            change = _drift if i % 2 else None
            obs = converged(intent, at=t0 + i, change=change)
            await js.publish(subjects.observed(node), bus.encode(obs))
            count += 1
    return count


async def _plain_replay(nc: Client, expected: int) -> None:
    js = nc.jetstream()
    seen = 0
    done = asyncio.Event()

    async def on_msg(msg: object) -> None:
        nonlocal seen
        json.loads(msg.data)  # type: ignore[attr-defined]
        seen += 1
        if seen >= expected:
            done.set()

    subs = []
    for stream, filt in (
        (subjects.STREAM_DRIFT, subjects.ALL_DRIFT),
        (subjects.STREAM_INTENTS, subjects.ALL_INTENTS),
        (subjects.STREAM_STATUS, subjects.ALL_STATUS),
        (subjects.STREAM_NODES, subjects.ALL_NODES),
        (subjects.STREAM_OBSERVED, subjects.ALL_OBSERVED),
    ):
        subs.append(
            await js.subscribe(
                filt,
                stream=stream,
                cb=on_msg,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.ALL,
            )
        )
    await done.wait()
    for sub in subs:
        await sub.unsubscribe()


async def _replay(url: str) -> tuple[list[Result], int]:
    nc = await bus.connect([url], name="bench")
    count = await _history(nc)
    # The first auditor publishes every episode; later ones only replay (what a restart does).
    first = Auditor(await bus.connect([url], name="bench-auditor"))
    await first.start()
    await first.stop()

    async def audit() -> None:
        conn = await bus.connect([url], name="bench-auditor")
        auditor = Auditor(conn)
        await auditor.start()
        await auditor.stop()
        await conn.drain()

    drift = (await nc.jetstream().stream_info(subjects.STREAM_DRIFT)).state.messages
    count += drift  # what was published already is replayed too
    l2 = await median_seconds(audit, repeat=5)
    base = await median_seconds(lambda: _plain_replay(nc, count), repeat=5)
    await nc.drain()
    return [
        Result(
            f"replay at start, {count} events of {len(NODES)} nodes",
            l2,
            base,
            "plain ordered consumers reading them",
            "s",
        )
    ], count


async def _latency(url: str) -> list[Result]:
    nc = await bus.connect([url], name="bench-latency")
    js = nc.jetstream()
    await bus.ensure_streams(js, list(bus.STREAMS))
    intent = seed_intent("node-1", 1)
    await js.publish(subjects.intent("node-1"), bus.encode(intent))
    auditor = Auditor(await bus.connect([url], name="bench-auditor"))
    await auditor.start()
    heard: asyncio.Queue[DriftReport] = asyncio.Queue()

    async def on_drift(msg: object) -> None:
        heard.put_nowait(bus.decode(msg.data, DriftReport))  # type: ignore[attr-defined]

    await nc.subscribe(subjects.drift("node-1"), cb=on_drift)
    await bus.settle(nc)
    state = [False]

    async def finding() -> None:
        state[0] = not state[0]
        obs = converged(intent, at=time.time(), change=_drift if state[0] else None)
        await js.publish(subjects.observed("node-1"), bus.encode(obs))
        await asyncio.wait_for(heard.get(), 30)

    await js.add_stream(name="BENCH", subjects=["bench.obs"])
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_plain(msg: object) -> None:
        got.put_nowait(msg.data)  # type: ignore[attr-defined]

    await nc.subscribe("bench.obs", cb=on_plain)
    payload = bus.encode(converged(intent, at=time.time()))

    async def plain() -> None:
        await js.publish("bench.obs", payload)
        await asyncio.wait_for(got.get(), 30)

    await finding()
    await finding()
    l2 = await median_seconds(finding, repeat=30)
    base = await median_seconds(plain, repeat=30)
    await auditor.stop()
    await nc.drain()
    return [
        Result(
            "observed change to published finding",
            l2 * 1000,
            base * 1000,
            "JetStream publish to a plain subscriber",
            "ms",
        )
    ]


def _memory(url: str, count: int) -> list[Result]:
    return [
        service_memory(f"resident memory after replaying {count} events", "auditor", url, settle=6)
    ]


def run() -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="l2net-bench-") as tmp:
        server = natsserver.start(Path(tmp) / "nats")
        try:
            results, count = asyncio.run(_replay(server.url))
            results += _memory(server.url, count)
        finally:
            server.stop()
        server = natsserver.start(Path(tmp) / "nats2")
        try:
            results += asyncio.run(_latency(server.url))
        finally:
            server.stop()
    return results
