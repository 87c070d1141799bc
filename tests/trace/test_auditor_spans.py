"""The auditor's part of a submission's trace, in memory, on a real nats-server.

A status an executor publishes live carries the executor's trace context; the auditor
processes it in a CONSUMER span (child of that context) and checks the node in a
``l2net.auditor.check`` span. Statuses it replays at start belong to old traces: they get
no spans.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import pytest
from nats.aio.client import Client
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.auditor.service import CHECK_SPAN, Auditor
from shared.domain.model import NodeStatus
from shared.runtime import bus, tracing
from shared.wire import subjects
from tests.auditor.conftest import applied
from tests.executor.labkit import seed_intent
from tests.kit import until
from tests.trace.conftest import in_memory_spans

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    with in_memory_spans(monkeypatch, "auditor") as exporter:
        yield exporter


def finished(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    tracing.force_flush()
    return list(exporter.get_finished_spans())


def traceparent() -> tuple[str, str, dict[str, str]]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, {"traceparent": f"00-{trace_id}-{span_id}-01"}


async def publish_status(nc: Client, status: NodeStatus, headers: dict[str, str]) -> None:
    js = nc.jetstream()
    await js.publish(subjects.status(status.node), bus.encode(status), headers=headers)


async def test_a_live_status_is_checked_in_the_executors_trace_and_replay_makes_no_spans(
    nc: Client, spans: InMemorySpanExporter
) -> None:
    js = nc.jetstream()
    await bus.ensure_streams(js, list(bus.STREAMS))
    await js.publish(subjects.intent("node-1"), bus.encode(seed_intent("node-1", 1)))
    old_trace, _, old_headers = traceparent()
    await publish_status(nc, applied("node-1", 1, 1.0), old_headers)

    auditor = Auditor(nc)
    await auditor.start()
    try:
        await js.publish(subjects.intent("node-1"), bus.encode(seed_intent("node-1", 2)))
        trace_id, parent_id, headers = traceparent()
        await publish_status(nc, applied("node-1", 2, 2.0), headers)

        async def checked() -> bool:
            await asyncio.sleep(0)
            return any(s.name == CHECK_SPAN for s in finished(spans))

        await until(checked, timeout=30)
    finally:
        await auditor.stop()

    found = finished(spans)
    assert all(f"{s.context.trace_id:032x}" != old_trace for s in found if s.context), (
        "a replayed status is history, not part of a live trace"
    )
    (process,) = [s for s in found if s.name == "process l2.status.{node}"]
    (check,) = [s for s in found if s.name == CHECK_SPAN]
    assert process.kind is SpanKind.CONSUMER
    assert process.context is not None and process.parent is not None
    assert f"{process.context.trace_id:032x}" == trace_id
    assert f"{process.parent.span_id:016x}" == parent_id, "child of the executor's PRODUCER"
    attrs = process.attributes or {}
    assert attrs["messaging.system"] == "nats"
    assert attrs["messaging.destination.name"] == "l2.status.node-1"
    assert attrs["messaging.destination.template"] == "l2.status.{node}"
    assert check.parent is not None and check.parent.span_id == process.context.span_id
    check_attrs = check.attributes or {}
    assert check_attrs["l2net.node"] == "node-1"
    assert check_attrs["l2net.generation"] == 2
    assert check_attrs["l2net.drift.open"] == 0
