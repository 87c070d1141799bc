"""shared.runtime.tracing: span structure in memory, and what reaches a real OTLP receiver on
the wire.

The bus is a real nats-server (fixtures ``nats_server``/``nc``); the wire tests run each
service as its own process and decode the OTLP requests they POST.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from shared.runtime import bus, metrics, natsserver, tracing
from shared.wire import subjects
from tests.shared import otlp_receiver
from tests.shared.otlp_receiver import ReceivedSpan

PEER = Path(__file__).with_name("otel_peer.py")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}


@pytest.fixture(autouse=True)
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts without OTEL_* variables and without tracing set up."""
    for key in list(os.environ):
        if key.startswith("OTEL_"):
            monkeypatch.delenv(key)
    tracing.shutdown()
    yield
    tracing.shutdown()


@pytest.fixture
def memory() -> tuple[InMemorySpanExporter, InMemoryMetricReader]:
    spans = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    tracing.setup("planner", span_exporters=[spans], metric_readers=[reader])
    return spans, reader


def finished(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    tracing.force_flush()
    return list(exporter.get_finished_spans())


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"{name}: {[s.name for s in spans]}"
    return found[0]


# --- structure, in memory -------------------------------------------------------------------


async def test_producer_and_consumer_are_linked_across_jetstream(
    memory: tuple[InMemorySpanExporter, InMemoryMetricReader], nc: Client
) -> None:
    exporter, _ = memory
    js = nc.jetstream()
    await bus.ensure_streams(js, [subjects.STREAM_INTENTS])
    subject = subjects.intent("node-1")
    payload = b'{"generation": 4}'
    with tracing.publish_span(subject, template="l2.intent.{node}") as headers:
        tracing.annotate(node="node-1", generation=4)
        await js.publish(subject, payload, headers=headers)

    await js.add_consumer(
        subjects.STREAM_INTENTS,
        ConsumerConfig(
            name="executor-node-1", durable_name="executor-node-1", filter_subject=subject
        ),
    )
    sub = await js.pull_subscribe_bind("executor-node-1", stream=subjects.STREAM_INTENTS)
    msg = (await sub.fetch(1, timeout=10))[0]
    assert msg.data == payload, "trace context must not travel in the payload"
    assert msg.headers is not None and "traceparent" in msg.headers
    with tracing.process_span(msg.subject, msg.headers, template="l2.intent.{node}") as span:
        tracing.annotate(
            span, node="node-1", generation=4, cluster_network="provider", netlink_writes=5
        )
        await msg.ack()

    spans = finished(exporter)
    producer = one(spans, "send l2.intent.{node}")
    consumer = one(spans, "process l2.intent.{node}")
    assert producer.kind is SpanKind.PRODUCER
    assert consumer.kind is SpanKind.CONSUMER
    assert producer.context is not None and consumer.context is not None
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id
    assert consumer.parent.is_remote, "the parent came from the message headers"
    assert dict(producer.attributes or {}) == {
        "messaging.system": "nats",
        "messaging.destination.name": "l2.intent.node-1",
        "messaging.destination.template": "l2.intent.{node}",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "l2net.node": "node-1",
        "l2net.generation": 4,
    }
    cattrs = dict(consumer.attributes or {})
    assert cattrs["messaging.operation.type"] == "process"
    assert cattrs["messaging.destination.name"] == "l2.intent.node-1"
    assert cattrs["l2net.cluster_network"] == "provider"
    assert cattrs["l2net.netlink_writes"] == 5
    assert consumer.status.status_code is StatusCode.UNSET


async def test_request_reply_over_core_nats_keeps_the_trace(
    memory: tuple[InMemorySpanExporter, InMemoryMetricReader], nc: Client
) -> None:
    exporter, _ = memory

    async def respond(msg: Msg) -> None:
        with tracing.process_span(msg.subject, msg.headers, template="l2.executor.{node}.state"):
            await msg.respond(b"{}")

    await nc.subscribe(subjects.executor_control("node-2", "state"), cb=respond)
    with tracing.tracer().start_as_current_span("audit") as root:
        subject = subjects.executor_control("node-2", "state")
        with tracing.publish_span(subject, template="l2.executor.{node}.state") as headers:
            await nc.request(subject, b"", timeout=5, headers=headers)
    spans = finished(exporter)
    consumer = one(spans, "process l2.executor.{node}.state")
    producer = one(spans, "send l2.executor.{node}.state")
    assert consumer.parent is not None and producer.context is not None
    assert consumer.parent.span_id == producer.context.span_id
    assert (
        producer.parent is not None and producer.parent.span_id == root.get_span_context().span_id
    )


async def test_errors_set_status_and_record_the_exception(
    memory: tuple[InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    exporter, _ = memory
    with (
        pytest.raises(RuntimeError, match="bond mode refused"),
        tracing.process_span("l2.intent.node-3", None, template="l2.intent.{node}"),
    ):
        raise RuntimeError("bond mode refused")
    with (
        pytest.raises(ConnectionError),
        tracing.publish_span("l2.status.node-3", template="l2.status.{node}"),
    ):
        raise ConnectionError("nats gone")
    spans = finished(exporter)
    for span, exc_type in (
        (one(spans, "process l2.intent.{node}"), "RuntimeError"),
        (one(spans, "send l2.status.{node}"), "ConnectionError"),
    ):
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description is not None and exc_type in span.status.description
        events = [e for e in span.events if e.name == "exception"]
        assert len(events) == 1
        assert (events[0].attributes or {})["exception.type"] == exc_type


def test_consumer_without_headers_starts_a_new_trace(
    memory: tuple[InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    exporter, _ = memory
    with tracing.process_span("l2.intent.node-1", {"Nats-Msg-Id": "x"}):
        pass
    span = one(finished(exporter), "process l2.intent.node-1")
    assert span.parent is None


def test_metrics_instruments_record(
    memory: tuple[InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    _, reader = memory
    metrics.applies().add(2, {"l2net.node": "node-1", "l2net.result": "applied"})
    metrics.apply_failures().add(1, {"l2net.node": "node-1"})
    metrics.rollbacks().add(1, {"l2net.node": "node-1"})
    metrics.apply_duration().record(0.25, {"l2net.node": "node-1"})
    metrics.netlink_writes().add(7, {"l2net.node": "node-1"})
    metrics.drift_findings_open().set(3, {"l2net.node": "node-2"})
    metrics.nodes_reporting().set(3)
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, Any] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                found[m.name] = (m.unit, list(m.data.data_points))
    assert set(found) == {
        "l2net.applies",
        "l2net.apply.failures",
        "l2net.apply.rollbacks",
        "l2net.apply.duration",
        "l2net.netlink.writes",
        "l2net.drift.findings.open",
        "l2net.nodes.reporting",
    }
    assert found["l2net.applies"][1][0].value == 2
    assert found["l2net.netlink.writes"][1][0].value == 7
    assert found["l2net.apply.duration"][0] == "s"
    assert found["l2net.apply.duration"][1][0].count == 1
    assert found["l2net.drift.findings.open"][1][0].value == 3


# --- configuration ----------------------------------------------------------------------------


def test_service_name_default_override_and_node(monkeypatch: pytest.MonkeyPatch) -> None:
    spans = InMemorySpanExporter()
    tracing.setup("executor", node="node-9", span_exporters=[spans])
    with tracing.tracer().start_as_current_span("x"):
        pass
    (span,) = finished(spans)
    assert span.resource.attributes["service.name"] == "l2net-executor"
    assert span.resource.attributes["l2net.node"] == "node-9"
    tracing.shutdown()

    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-executor")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=lab")
    spans = InMemorySpanExporter()
    tracing.setup("executor", span_exporters=[spans])
    with tracing.tracer().start_as_current_span("y"):
        pass
    (span,) = finished(spans)
    assert span.resource.attributes["service.name"] == "edge-executor"
    assert span.resource.attributes["deployment.environment"] == "lab"
    assert "l2net.node" not in span.resource.attributes


def test_setup_is_idempotent() -> None:
    first = InMemorySpanExporter()
    second = InMemorySpanExporter()
    tracing.setup("auditor", span_exporters=[first])
    tracing.setup("planner", span_exporters=[second])
    with tracing.tracer().start_as_current_span("once"):
        pass
    tracing.force_flush()
    assert [s.resource.attributes["service.name"] for s in first.get_finished_spans()] == [
        "l2net-auditor"
    ]
    assert second.get_finished_spans() == ()


def test_without_endpoint_nothing_is_installed() -> None:
    tracing.setup("planner")
    assert not tracing.enabled()
    with tracing.publish_span("l2.intent.node-1", template="l2.intent.{node}") as headers:
        assert not tracing.tracer().start_span("x").is_recording()
    assert headers == {}, "no trace context to send when nothing is traced"
    # Metrics are no-ops too: recording must not fail.
    metrics.applies().add(1)
    metrics.nodes_reporting().set(1)


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318", "not an http:// or https:// URL"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://h:99999", "bad port"),
        ("OTEL_TRACES_EXPORTER", "zipkin", "unknown exporter 'zipkin'"),
        ("OTEL_METRICS_EXPORTER", "prometheus", "unknown exporter 'prometheus'"),
    ],
)
def test_bad_settings_are_refused_clearly(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, expected: str
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv(var, value)
    with pytest.raises(tracing.TracingConfigError, match=expected.replace("?", r"\?")) as err:
        tracing.setup("planner")
    assert var in str(err.value)
    assert not tracing.enabled(), "a refused setup installs nothing"


def test_unknown_service_is_refused() -> None:
    with pytest.raises(tracing.TracingConfigError, match="unknown l2net service 'planer'"):
        tracing.setup("planer")


# --- on the wire ------------------------------------------------------------------------------


def _peer(role: str, url: str, node: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(PEER), role, url, node],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "READY":
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"peer did not get ready: {line!r}\n{err}")


def _finish(procs: list[subprocess.Popen[str]]) -> None:
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=90)
            assert proc.returncode == 0, f"peer failed ({proc.args}):\n{out}\n{err}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def _create_streams(url: str) -> None:
    nc = await bus.connect([url], name="test-setup")
    await bus.ensure_streams(nc.jetstream(), [subjects.STREAM_INTENTS, subjects.STREAM_STATUS])
    await nc.drain()


def _run_three_services(url: str, env: dict[str, str]) -> None:
    executor = _peer("executor", url, "node-1", env)
    auditor = _peer("auditor", url, "node-1", env)
    procs = [executor, auditor]
    try:
        _wait_ready(executor)
        _wait_ready(auditor)
        procs.append(_peer("planner", url, "node-1", env))
    finally:
        _finish(procs)


def _by_name(spans: list[ReceivedSpan], name: str, service: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name and s.service == service]
    assert len(found) == 1, f"{service}/{name}: {[(s.service, s.name) for s in spans]}"
    return found[0]


async def test_one_trace_across_processes_at_the_otlp_http_receiver(
    nats_server: natsserver.EmbeddedNats,
) -> None:
    await _create_streams(nats_server.url)
    with otlp_receiver.running() as receiver:
        env = _clean_env() | {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
        await asyncio.to_thread(_run_three_services, nats_server.url, env)
        spans = receiver.spans()
        points = receiver.metric_points()

    assert {s.trace_id for s in spans} == {spans[0].trace_id}, "one submission, one trace"
    assert {s.service for s in spans} == {"l2net-planner", "l2net-executor", "l2net-auditor"}
    submit = _by_name(spans, "submit", "l2net-planner")
    send_intent = _by_name(spans, "send l2.intent.{node}", "l2net-planner")
    process_intent = _by_name(spans, "process l2.intent.{node}", "l2net-executor")
    apply = _by_name(spans, "apply", "l2net-executor")
    send_status = _by_name(spans, "send l2.status.{node}", "l2net-executor")
    process_status = _by_name(spans, "process l2.status.{node}", "l2net-auditor")
    check = _by_name(spans, "check", "l2net-auditor")

    assert submit.parent_span_id == ""
    assert send_intent.parent_span_id == submit.span_id
    assert process_intent.parent_span_id == send_intent.span_id
    assert apply.parent_span_id == process_intent.span_id
    assert send_status.parent_span_id == process_intent.span_id
    assert process_status.parent_span_id == send_status.span_id
    assert check.parent_span_id == process_status.span_id
    assert [s.name for s in otlp_receiver.iter_chain(spans, check)] == [
        "check",
        "process l2.status.{node}",
        "send l2.status.{node}",
        "process l2.intent.{node}",
        "send l2.intent.{node}",
        "submit",
    ]

    assert send_intent.kind == "SPAN_KIND_PRODUCER"
    assert process_intent.kind == "SPAN_KIND_CONSUMER"
    assert send_intent.attributes["messaging.system"] == "nats"
    assert send_intent.attributes["messaging.destination.name"] == "l2.intent.node-1"
    assert process_intent.attributes["l2net.generation"] == 7
    assert apply.attributes["l2net.netlink_writes"] == 3
    assert process_intent.resource["l2net.node"] == "node-1"
    assert "l2net.node" not in submit.resource

    # Metrics went to the same endpoint, from the executor's resource.
    (applied,) = points["l2net.applies"]
    assert applied[0]["service.name"] == "l2net-executor"
    assert applied[1] == {"l2net.node": "node-1", "l2net.result": "applied"}
    assert applied[2] == 1
    assert points["l2net.netlink.writes"][0][2] == 3
    assert points["l2net.apply.duration"][0][2] == 1
    assert points["l2net.drift.findings.open"][0][0]["service.name"] == "l2net-auditor"


class _GrpcCollector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_grpc_protocol_is_selectable(nats_server: natsserver.EmbeddedNats) -> None:
    await _create_streams(nats_server.url)
    collector = _GrpcCollector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        env = _clean_env() | {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_METRICS_EXPORTER": "none",
        }
        await asyncio.to_thread(_run_three_services, nats_server.url, env)
    finally:
        server.stop(grace=None)
    spans = [s for r in collector.requests for s in otlp_receiver.spans_of(r)]
    assert {s.service for s in spans} == {"l2net-planner", "l2net-executor", "l2net-auditor"}
    assert len({s.trace_id for s in spans}) == 1
    consumer = _by_name(spans, "process l2.intent.{node}", "l2net-executor")
    producer = _by_name(spans, "send l2.intent.{node}", "l2net-planner")
    assert consumer.parent_span_id == producer.span_id


def test_console_exporter_prints_spans(nats_server: natsserver.EmbeddedNats) -> None:
    asyncio.run(_create_streams(nats_server.url))
    env = _clean_env() | {"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "none"}
    out = subprocess.run(
        [sys.executable, str(PEER), "planner", nats_server.url, "node-1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert '"name": "send l2.intent.{node}"' in out
    assert '"service.name": "l2net-planner"' in out


def test_no_endpoint_exports_nothing_even_at_the_default_port(
    nats_server: natsserver.EmbeddedNats,
) -> None:
    """The OTLP exporter's own default is localhost:4318; l2net must not fall back to it."""
    asyncio.run(_create_streams(nats_server.url))
    try:
        ctx = otlp_receiver.running(port=4318)
        receiver = ctx.__enter__()
    except OSError as exc:
        pytest.fail(f"port 4318 is busy, cannot watch the OTLP default endpoint: {exc}")
    try:
        result = subprocess.run(
            [sys.executable, str(PEER), "planner", nats_server.url, "node-1"],
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == ""
        # The planner exited after tracing.shutdown(), which would have flushed any export.
        assert receiver.traces == [] and receiver.metrics == []
        assert receiver.other_paths == []
    finally:
        ctx.__exit__(None, None, None)
