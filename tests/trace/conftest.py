"""Spans in memory for one service, with the OTel variables of the environment cleared."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.runtime import tracing


@contextmanager
def in_memory_spans(
    monkeypatch: pytest.MonkeyPatch, service: str
) -> Iterator[InMemorySpanExporter]:
    """Set up ``service``'s tracing to export into memory; shut it down afterwards."""
    for key in list(os.environ):
        if key.startswith("OTEL_"):
            monkeypatch.delenv(key)
    tracing.shutdown()
    exporter = InMemorySpanExporter()
    tracing.setup(service, span_exporters=[exporter])
    try:
        yield exporter
    finally:
        tracing.shutdown()
