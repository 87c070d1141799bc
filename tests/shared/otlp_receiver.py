"""A real OTLP/HTTP receiver for tests: decodes what exporters POST to /v1/traces, /v1/metrics.

Listens on 127.0.0.1 (a free port unless one is given) in a thread; every request body is
decoded with the opentelemetry-proto messages, exactly as a collector or Jaeger would.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan


def any_value(v: AnyValue) -> Any:
    """The Python value of an OTLP AnyValue."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    return getattr(v, kind)


def attrs(kvs: Any) -> dict[str, Any]:
    """OTLP key-value list as a dict."""
    out: dict[str, Any] = {}
    kv: KeyValue
    for kv in kvs:
        out[kv.key] = any_value(kv.value)
    return out


@dataclass
class ReceivedSpan:
    """One exported span, with the resource it came from."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status_code: int
    events: list[str]

    @property
    def service(self) -> str:
        return str(self.resource.get("service.name"))


def spans_of(req: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    """Flatten one export request into spans."""
    out: list[ReceivedSpan] = []
    for rs in req.resource_spans:
        resource = attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    ReceivedSpan(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        kind=PbSpan.SpanKind.Name(s.kind),
                        attributes=attrs(s.attributes),
                        resource=resource,
                        status_code=s.status.code,
                        events=[e.name for e in s.events],
                    )
                )
    return out


@dataclass
class OtlpReceiver:
    """What an OTLP/HTTP endpoint received; ``endpoint`` is the base URL for exporters."""

    host: str
    port: int
    traces: list[ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[ExportMetricsServiceRequest] = field(default_factory=list)
    other_paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def spans(self) -> list[ReceivedSpan]:
        with self.lock:
            reqs = list(self.traces)
        return [s for r in reqs for s in spans_of(r)]

    def metric_points(self) -> dict[str, list[tuple[dict[str, Any], dict[str, Any], float]]]:
        """Metric name -> [(resource, point attributes, value)] (sums, gauges, histo counts)."""
        out: dict[str, list[tuple[dict[str, Any], dict[str, Any], float]]] = {}
        with self.lock:
            reqs = list(self.metrics)
        for req in reqs:
            for rm in req.resource_metrics:
                resource = attrs(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        kind = m.WhichOneof("data")
                        points: list[tuple[dict[str, Any], dict[str, Any], float]] = []
                        if kind in ("sum", "gauge"):
                            for p in getattr(m, kind).data_points:
                                value = p.as_int if p.HasField("as_int") else p.as_double
                                points.append((resource, attrs(p.attributes), float(value)))
                        elif kind == "histogram":
                            for p in m.histogram.data_points:
                                points.append((resource, attrs(p.attributes), float(p.count)))
                        out.setdefault(m.name, []).extend(points)
        return out

    def wait_for(self, predicate: Callable[[OtlpReceiver], bool], timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.1)
        return predicate(self)


def _handler(receiver: OtlpReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            reply: bytes
            with receiver.lock:
                if self.path == "/v1/traces":
                    treq = ExportTraceServiceRequest()
                    treq.ParseFromString(body)
                    receiver.traces.append(treq)
                    reply = ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    mreq = ExportMetricsServiceRequest()
                    mreq.ParseFromString(body)
                    receiver.metrics.append(mreq)
                    reply = ExportMetricsServiceResponse().SerializeToString()
                else:
                    receiver.other_paths.append(self.path)
                    self.send_response(404)
                    self.end_headers()
                    return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    return Handler


class running:
    """Context manager: an :class:`OtlpReceiver` served until exit."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> OtlpReceiver:
        receiver = OtlpReceiver(self._host, 0)
        self._server = ThreadingHTTPServer((self._host, self._port), _handler(receiver))
        receiver.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return receiver

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def iter_chain(spans: list[ReceivedSpan], leaf: ReceivedSpan) -> Iterator[ReceivedSpan]:
    """From ``leaf`` up through its parents (as far as they were received)."""
    by_id = {s.span_id: s for s in spans}
    current: ReceivedSpan | None = leaf
    while current is not None:
        yield current
        current = by_id.get(current.parent_span_id)


def submission_done(spans: list[ReceivedSpan], nodes: Iterable[str]) -> bool:
    """Whether the spans of one submission's trace are all in: every node's executor ended
    its ``process l2.intent.{node}`` span, every status it sent was checked by the auditor,
    and every span's parent arrived.

    A service exports its spans in batches (every 5 s, and at exit): a child that ended early
    (the executor's diff, its Progressing status, the auditor's check of it) can arrive a
    batch before its parent, the apply's CONSUMER span, which ends last. Waiting for a
    check of each node is not enough then; and a lab node's executor sends nothing more once
    ``l2net lab down`` stopped it."""
    by_id = {s.span_id: s for s in spans}
    if any(s.parent_span_id and s.parent_span_id not in by_id for s in spans):
        return False
    applied = {
        s.resource.get("l2net.node")
        for s in spans
        if s.service == "l2net-executor" and s.name == "process l2.intent.{node}"
    }
    if not applied >= set(nodes):
        return False
    processed = {
        s.span_id: s.parent_span_id
        for s in spans
        if s.service == "l2net-auditor" and s.name == "process l2.status.{node}"
    }
    checked = {
        processed[s.parent_span_id]
        for s in spans
        if s.name == "l2net.auditor.check" and s.parent_span_id in processed
    }
    sent = {
        s.span_id
        for s in spans
        if s.service == "l2net-executor" and s.name == "send l2.status.{node}"
    }
    return sent <= checked
