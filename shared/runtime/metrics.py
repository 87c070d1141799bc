"""The metrics operators expect from l2net, pushed over OTLP by
:func:`shared.runtime.tracing.setup`.

Each getter returns the instrument from the meter that ``tracing.setup`` installed (a no-op
instrument before that, or when no metrics exporter is configured), so services record
unconditionally::

    from shared.runtime import metrics

    metrics.applies().add(1, {"l2net.node": node, "l2net.result": "applied"})
    metrics.apply_duration().record(seconds, {"l2net.node": node})

Instruments (name, kind, unit; the attributes callers should use):

- ``l2net.applies`` counter ``{apply}``: intents an executor applied (``l2net.node``,
  ``l2net.result`` = applied | failed | rolled_back | noop).
- ``l2net.apply.failures`` counter ``{apply}``: applies that failed (``l2net.node``).
- ``l2net.apply.rollbacks`` counter ``{apply}``: applies undone (``l2net.node``).
- ``l2net.apply.duration`` histogram ``s``: time from intent received to status published.
- ``l2net.netlink.writes`` counter ``{request}``: netlink requests that change the kernel.
- ``l2net.drift.findings.open`` gauge ``{finding}``: drift findings open now, per node
  (``l2net.node``), set by the auditor after each check.
- ``l2net.nodes.reporting`` gauge ``{node}``: nodes whose heartbeat the auditor saw recently.
"""

from __future__ import annotations

from opentelemetry import metrics as otel_metrics

from shared.runtime import tracing


def _meter() -> otel_metrics.Meter:
    # The SDK returns the same instrument for the same name, so getters are cheap to call.
    return tracing.meter()


def applies() -> otel_metrics.Counter:
    """Counter ``l2net.applies``: intents applied, by node and result."""
    return _meter().create_counter(
        "l2net.applies", unit="{apply}", description="Intents applied by executors"
    )


def apply_failures() -> otel_metrics.Counter:
    """Counter ``l2net.apply.failures``: applies that failed."""
    return _meter().create_counter(
        "l2net.apply.failures", unit="{apply}", description="Applies that failed"
    )


def rollbacks() -> otel_metrics.Counter:
    """Counter ``l2net.apply.rollbacks``: applies undone to the state read before."""
    return _meter().create_counter(
        "l2net.apply.rollbacks", unit="{apply}", description="Applies rolled back"
    )


def apply_duration() -> otel_metrics.Histogram:
    """Histogram ``l2net.apply.duration`` in seconds."""
    return _meter().create_histogram(
        "l2net.apply.duration",
        unit="s",
        description="Time from intent received to status published",
    )


def netlink_writes() -> otel_metrics.Counter:
    """Counter ``l2net.netlink.writes``: netlink requests that changed the kernel."""
    return _meter().create_counter(
        "l2net.netlink.writes", unit="{request}", description="Netlink write requests"
    )


def drift_findings_open() -> otel_metrics._Gauge:
    """Gauge ``l2net.drift.findings.open``: open drift findings per node."""
    return _meter().create_gauge(
        "l2net.drift.findings.open", unit="{finding}", description="Open drift findings"
    )


def nodes_reporting() -> otel_metrics._Gauge:
    """Gauge ``l2net.nodes.reporting``: nodes with a recent heartbeat."""
    return _meter().create_gauge(
        "l2net.nodes.reporting", unit="{node}", description="Nodes reporting heartbeats"
    )
