"""OpenTelemetry for every l2net service: the one place that sets up tracing and metrics.

Every service calls :func:`setup` once at start and :func:`shutdown` on exit::

    from shared.runtime import tracing

    tracing.setup("executor", node="node-1")   # service.name l2net-executor, l2net.node node-1
    try:
        ...
    finally:
        tracing.shutdown()                      # flushes spans and metrics

The API (nothing else here is public):

``setup(service, *, node=None) -> None``
    Idempotent (a second call changes nothing). ``service.name`` is ``l2net-<service>``
    (``planner``, ``executor``, ``auditor``, ``cli``) unless ``OTEL_SERVICE_NAME`` is set;
    ``node`` becomes the resource attribute ``l2net.node``. Standard variables decide what is
    exported:

    - ``OTEL_EXPORTER_OTLP_ENDPOINT`` (base URL, e.g. ``http://jaeger:4318``), or the
      per-signal ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``..._METRICS_ENDPOINT`` (full URL);
    - ``OTEL_EXPORTER_OTLP_PROTOCOL`` (or ``..._TRACES_PROTOCOL`` / ``..._METRICS_PROTOCOL``):
      ``http/protobuf`` (default) or ``grpc`` (then the endpoint is e.g.
      ``http://jaeger:4317``);
    - ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``: ``otlp`` (default), ``console``
      (print to stdout, for debugging), ``none``, or a comma-separated list;
    - ``OTEL_SDK_DISABLED=true`` turns everything off;
    - ``OTEL_EXPORTER_OTLP_TIMEOUT``: how long an export may retry (exporter default 10 s;
      2 s for ``cli`` unless set, so that a command does not hang when the collector is down).

    With no endpoint and no console exporter nothing is installed: spans are the API's
    non-recording spans (near zero cost), nothing is exported, no port is opened. Spans go
    through a ``BatchSpanProcessor``; metrics are pushed over OTLP every
    ``OTEL_METRIC_EXPORT_INTERVAL`` ms (default 60000), never pulled from a listening port.
    A bad value raises :class:`TracingConfigError` naming the variable, before anything is
    installed.

``shutdown() -> None`` / ``force_flush() -> None``
    Export what is buffered (and, for ``shutdown``, stop; ``setup`` may then run again).

``tracer() -> Tracer``
    The ``l2net`` tracer (a no-op tracer before ``setup`` or when nothing is exported).

``meter() -> Meter``
    The ``l2net`` meter; the instruments operators expect are in :mod:`shared.runtime.metrics`.

``inject(headers) -> headers`` / ``extract(headers) -> Context``
    W3C ``traceparent``/``tracestate`` (the OTel propagators API, ``OTEL_PROPAGATORS``) into
    and out of NATS message headers. Trace context never travels in payloads.

``publish_span(subject, *, template=None, attributes=None)``
    Context manager: a PRODUCER span ``send <template>`` for one publish, with the OTel
    messaging attributes (``messaging.system=nats``, ``messaging.destination.name`` the
    subject, ``messaging.destination.template`` e.g. ``l2.intent.{node}``,
    ``messaging.operation.type=send``, ``messaging.operation.name=publish``). It yields the
    headers to send (a fresh dict holding the span's trace context)::

        with tracing.publish_span(subjects.intent(n), template="l2.intent.{node}") as headers:
            await js.publish(subject, payload, headers=headers)

``process_span(subject, headers, *, template=None, attributes=None)``
    Context manager: a CONSUMER span ``process <template>`` whose parent is the context
    extracted from a received message's headers (``msg.headers``, may be ``None``); yields
    the span.

``annotate(span=None, *, node=None, generation=None, cluster_network=None,
netlink_writes=None) -> None``
    Set the l2net attributes ``l2net.node``, ``l2net.generation``, ``l2net.cluster_network``,
    ``l2net.netlink_writes`` (those not ``None``) on ``span`` or the current span.

Exceptions leaving ``publish_span``/``process_span`` (or any ``tracer()`` span used as a
context manager) set the span status to ERROR and record the exception, then propagate.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from opentelemetry import metrics as otel_metrics
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

if TYPE_CHECKING:  # the SDK is imported when something is exported: a command starts faster
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
from shared.domain.errors import BadInput

__all__ = [
    "TracingConfigError",
    "annotate",
    "enabled",
    "extract",
    "force_flush",
    "inject",
    "meter",
    "process_span",
    "publish_span",
    "setup",
    "shutdown",
    "tracer",
]

INSTRUMENTATION_NAME: Final = "l2net"
SERVICES: Final = ("planner", "executor", "auditor", "cli")
PROTOCOLS: Final = ("http/protobuf", "grpc")
EXPORTERS: Final = ("otlp", "console", "none")
CLI_EXPORT_TIMEOUT_S: Final = 2.0

_TRUE = ("true", "1", "yes")


class TracingConfigError(BadInput, ValueError):
    """An OpenTelemetry environment variable or a ``setup`` argument has a bad value."""


@dataclass
class _State:
    service_name: str
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    readers: list[MetricReader] = field(default_factory=list)


_lock = threading.Lock()
_state: _State | None = None


def _version() -> str:
    try:
        return metadata.version("l2net")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        return "0"


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _exporters(signal: str) -> list[str]:
    """The exporters named by ``OTEL_<SIGNAL>_EXPORTER`` (default ``otlp``), validated."""
    var = f"OTEL_{signal}_EXPORTER"
    names = [part.strip().lower() for part in (_env(var) or "otlp").split(",") if part.strip()]
    for name in names:
        if name not in EXPORTERS:
            raise TracingConfigError(
                f"{var}={os.environ[var]!r}: unknown exporter {name!r} "
                f"(l2net supports {', '.join(EXPORTERS)})"
            )
    return [] if "none" in names else names


def _endpoint(signal: str) -> str | None:
    """The OTLP endpoint for one signal, or ``None`` when neither variable is set."""
    for var in (f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        value = _env(var)
        if value is None:
            continue
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TracingConfigError(
                f"{var}={value!r} is not an http:// or https:// URL with a host "
                "(example: http://localhost:4318)"
            )
        try:
            _ = parts.port
        except ValueError as exc:
            raise TracingConfigError(f"{var}={value!r}: bad port ({exc})") from None
        return value
    return None


def _protocol(signal: str) -> str:
    for var in (f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = _env(var)
        if value is None:
            continue
        if value not in PROTOCOLS:
            raise TracingConfigError(
                f"{var}={value!r}: l2net exports OTLP over {' or '.join(PROTOCOLS)}"
            )
        return value
    return "http/protobuf"


def _span_exporters(timeout: float | None) -> list[SpanExporter]:
    found: list[SpanExporter] = []
    for name in _exporters("TRACES"):
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            found.append(ConsoleSpanExporter(service_name=None))
        elif _endpoint("TRACES") is not None:
            if _protocol("TRACES") == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter as GrpcSpanExporter,
                )

                found.append(GrpcSpanExporter(timeout=timeout))
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter as HttpSpanExporter,
                )

                found.append(HttpSpanExporter(timeout=timeout))
    return found


def _metric_exporters(timeout: float | None) -> list[MetricExporter]:
    found: list[MetricExporter] = []
    for name in _exporters("METRICS"):
        if name == "console":
            from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

            found.append(ConsoleMetricExporter())
        elif _endpoint("METRICS") is not None:
            if _protocol("METRICS") == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                    OTLPMetricExporter as GrpcMetricExporter,
                )

                found.append(GrpcMetricExporter(timeout=timeout))
            else:
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                    OTLPMetricExporter as HttpMetricExporter,
                )

                found.append(HttpMetricExporter(timeout=timeout))
    return found


def _timeout(service: str, signal: str) -> float | None:
    """Export timeout: the variables when set; 2 s for the CLI (so that a command does not
    hang at exit when the collector is down); otherwise the exporter's default (10 s)."""
    if _env(f"OTEL_EXPORTER_OTLP_{signal}_TIMEOUT") or _env("OTEL_EXPORTER_OTLP_TIMEOUT"):
        return None
    return CLI_EXPORT_TIMEOUT_S if service == "cli" else None


def _service_name(service: str) -> str:
    if service not in SERVICES:
        raise TracingConfigError(
            f"unknown l2net service {service!r} (one of {', '.join(SERVICES)})"
        )
    return _env("OTEL_SERVICE_NAME") or f"l2net-{service}"


def _periodic_readers(exporters: list[MetricExporter]) -> list[MetricReader]:
    """A reader pushing to each exporter every ``OTEL_METRIC_EXPORT_INTERVAL`` ms."""
    if not exporters:
        return []
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    return [PeriodicExportingMetricReader(e) for e in exporters]


def setup(
    service: str,
    *,
    node: str | None = None,
    span_exporters: Sequence[SpanExporter] | None = None,
    metric_readers: Sequence[MetricReader] | None = None,
) -> None:
    """Install tracing and metrics for ``service`` (idempotent); see the module docstring.

    ``span_exporters``/``metric_readers`` replace the ones chosen from the environment (the
    tests pass in-memory ones); services leave them out.
    """
    global _state
    with _lock:
        if _state is not None:
            return
        name = _service_name(service)
        if node is not None and not node.strip():
            raise TracingConfigError("setup(node=...) must be a non-empty node name")
        disabled = (_env("OTEL_SDK_DISABLED") or "").lower() in _TRUE
        if span_exporters is None:
            span_exporters = [] if disabled else _span_exporters(_timeout(service, "TRACES"))
        if metric_readers is None:
            metric_exporters = [] if disabled else _metric_exporters(_timeout(service, "METRICS"))
            metric_readers = _periodic_readers(metric_exporters)
        state = _State(service_name=name)
        if span_exporters or metric_readers:
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            attributes: dict[str, AttributeValue] = {
                "service.name": name,
                "service.namespace": "l2net",
                "service.version": _version(),
            }
            if node is not None:
                attributes["l2net.node"] = node
            # OTEL_RESOURCE_ATTRIBUTES is merged in; ours win.
            resource = Resource.create(attributes)
            if span_exporters:
                provider = TracerProvider(resource=resource)
                for exporter in span_exporters:
                    provider.add_span_processor(BatchSpanProcessor(exporter))
                state.tracer_provider = provider
            if metric_readers:
                state.readers = list(metric_readers)
                state.meter_provider = MeterProvider(
                    resource=resource, metric_readers=state.readers
                )
        _state = state


def enabled() -> bool:
    """Whether spans are recorded and exported (``setup`` found an exporter)."""
    state = _state
    return state is not None and state.tracer_provider is not None


def tracer() -> trace.Tracer:
    """The ``l2net`` tracer (no-op until ``setup`` installed an exporter)."""
    state = _state
    if state is None or state.tracer_provider is None:
        return trace.NoOpTracer()
    return state.tracer_provider.get_tracer(INSTRUMENTATION_NAME, _version())


def meter() -> otel_metrics.Meter:
    """The ``l2net`` meter (no-op until ``setup`` installed a metrics exporter)."""
    state = _state
    if state is None or state.meter_provider is None:
        return otel_metrics.NoOpMeter(INSTRUMENTATION_NAME)
    return state.meter_provider.get_meter(INSTRUMENTATION_NAME, _version())


def force_flush(timeout_millis: int = 30_000) -> None:
    """Export every buffered span and metric now."""
    state = _state
    if state is None:
        return
    if state.tracer_provider is not None:
        state.tracer_provider.force_flush(timeout_millis)
    if state.meter_provider is not None:
        state.meter_provider.force_flush(timeout_millis)


def shutdown() -> None:
    """Flush and stop exporting; a service calls this on exit. ``setup`` may run again."""
    global _state
    with _lock:
        state, _state = _state, None
    if state is None:
        return
    if state.tracer_provider is not None:
        state.tracer_provider.shutdown()
    if state.meter_provider is not None:
        state.meter_provider.shutdown()


def inject(headers: dict[str, str]) -> dict[str, str]:
    """Add the current trace context (``traceparent``, ``tracestate``) to NATS headers."""
    propagate.inject(headers)
    return headers


def extract(headers: Mapping[str, str] | None) -> Context:
    """The trace context carried by a received message's headers (empty when none)."""
    return propagate.extract(dict(headers) if headers else {})


def _template(subject: str, template: str | None) -> str:
    return template or subject


def _messaging_attributes(
    subject: str, template: str | None, operation_type: str, operation_name: str
) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {
        "messaging.system": "nats",
        "messaging.destination.name": subject,
        "messaging.operation.type": operation_type,
        "messaging.operation.name": operation_name,
    }
    if template is not None:
        attributes["messaging.destination.template"] = template
    return attributes


def _fail(span: Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


@contextmanager
def publish_span(
    subject: str,
    *,
    template: str | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Iterator[dict[str, str]]:
    """A PRODUCER span around one publish; yields the headers (with trace context) to send."""
    attrs = _messaging_attributes(subject, template, "send", "publish")
    if attributes:
        attrs.update(attributes)
    with tracer().start_as_current_span(
        f"send {_template(subject, template)}",
        kind=SpanKind.PRODUCER,
        attributes=attrs,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield inject({})
        except Exception as exc:
            _fail(span, exc)
            raise


@contextmanager
def process_span(
    subject: str,
    headers: Mapping[str, str] | None,
    *,
    template: str | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Iterator[Span]:
    """A CONSUMER span processing one received message, child of the sender's span."""
    attrs = _messaging_attributes(subject, template, "process", "process")
    if attributes:
        attrs.update(attributes)
    with tracer().start_as_current_span(
        f"process {_template(subject, template)}",
        context=extract(headers),
        kind=SpanKind.CONSUMER,
        attributes=attrs,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except Exception as exc:
            _fail(span, exc)
            raise


def annotate(
    span: Span | None = None,
    *,
    node: str | None = None,
    generation: int | None = None,
    cluster_network: str | None = None,
    netlink_writes: int | None = None,
) -> None:
    """Set the l2net attributes that are not ``None`` on ``span`` (default: current span)."""
    target = span if span is not None else trace.get_current_span()
    values: dict[str, AttributeValue | None] = {
        "l2net.node": node,
        "l2net.generation": generation,
        "l2net.cluster_network": cluster_network,
        "l2net.netlink_writes": netlink_writes,
    }
    target.set_attributes({k: v for k, v in values.items() if v is not None})
