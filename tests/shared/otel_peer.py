"""A separate process that plays one l2net service over real NATS, traced with
shared.runtime.tracing.

Used by the wire-level tracing tests: ``python otel_peer.py ROLE NATS_URL [NODE]``.

- ``executor NODE``: durable consumer ``executor-<node>`` on L2_INTENTS; processes one intent
  in a CONSUMER span, records metrics, publishes its status in a PRODUCER span, acks.
- ``auditor NODE``: consumes that status in a CONSUMER span and runs a ``check`` span.
- ``planner NODE``: a ``submit`` span that publishes one intent in a PRODUCER span.

Consumers print ``READY`` once subscribed; every role flushes telemetry before exiting 0.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from nats.js.api import ConsumerConfig, DeliverPolicy

from shared.runtime import bus, metrics, tracing
from shared.wire import subjects


async def planner(url: str, node: str) -> None:
    nc = await bus.connect([url], name="peer-planner")
    js = nc.jetstream()
    with tracing.tracer().start_as_current_span("submit") as root:
        tracing.annotate(root, cluster_network="provider")
        payload = json.dumps({"node": node, "generation": 7}).encode()
        with tracing.publish_span(subjects.intent(node), template="l2.intent.{node}") as headers:
            tracing.annotate(node=node, generation=7)
            await js.publish(subjects.intent(node), payload, headers=headers)
    await nc.drain()


async def executor(url: str, node: str) -> None:
    nc = await bus.connect([url], name=f"peer-executor-{node}")
    js = nc.jetstream()
    durable = f"executor-{node}"
    await js.add_consumer(
        subjects.STREAM_INTENTS,
        ConsumerConfig(
            name=durable,
            durable_name=durable,
            filter_subject=subjects.intent(node),
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        ),
    )
    sub = await js.pull_subscribe_bind(durable, stream=subjects.STREAM_INTENTS)
    print("READY", flush=True)
    msgs = await sub.fetch(1, timeout=60)
    msg = msgs[0]
    started = time.monotonic()
    with tracing.process_span(msg.subject, msg.headers, template="l2.intent.{node}") as span:
        intent = json.loads(msg.data)
        tracing.annotate(span, node=node, generation=intent["generation"])
        with tracing.tracer().start_as_current_span("apply") as apply:
            tracing.annotate(apply, netlink_writes=3, cluster_network="provider")
            metrics.netlink_writes().add(3, {"l2net.node": node})
        status = json.dumps({"node": node, "phase": "Applied", "observedGeneration": 7})
        with tracing.publish_span(subjects.status(node), template="l2.status.{node}") as headers:
            await js.publish(subjects.status(node), status.encode(), headers=headers)
        await msg.ack()
    metrics.applies().add(1, {"l2net.node": node, "l2net.result": "applied"})
    metrics.apply_duration().record(time.monotonic() - started, {"l2net.node": node})
    await nc.drain()


async def auditor(url: str, node: str) -> None:
    nc = await bus.connect([url], name="peer-auditor")
    got: asyncio.Future[tuple[str, dict[str, str] | None]] = asyncio.Future()

    async def on_status(msg: object) -> None:
        m = msg  # nats Msg
        if not got.done():
            got.set_result((m.subject, m.headers))  # type: ignore[attr-defined]

    await nc.subscribe(subjects.status(node), cb=on_status)
    await bus.settle(nc)
    print("READY", flush=True)
    subject, headers = await asyncio.wait_for(got, timeout=60)
    with tracing.process_span(subject, headers, template="l2.status.{node}"):
        tracing.annotate(node=node)
        with tracing.tracer().start_as_current_span("check"):
            metrics.drift_findings_open().set(0, {"l2net.node": node})
    await nc.drain()


def main() -> None:
    role, url, node = sys.argv[1], sys.argv[2], sys.argv[3]
    tracing.setup(role, node=node if role == "executor" else None)
    try:
        run = {"planner": planner, "executor": executor, "auditor": auditor}[role]
        asyncio.run(run(url, node))
    finally:
        tracing.shutdown()


if __name__ == "__main__":
    main()
