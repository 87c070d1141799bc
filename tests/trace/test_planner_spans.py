"""The planner's validate span, in memory: the cluster networks a submission names, and
``l2net.rejected`` whether a document is bad alone or only against the stored state."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from nats.aio.client import Client
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.planner.service import Planner
from shared.runtime import tracing
from tests import keys
from tests.trace.conftest import in_memory_spans


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    with in_memory_spans(monkeypatch, "planner") as exporter:
        yield exporter


@pytest.mark.parametrize(
    ("manifest", "why"),
    [
        ("kind: Network\nname: n1\nclusterNetwork: oob\nvlan: 0\n", "out of range"),
        ("kind: Network\nname: n1\nclusterNetwork: nowhere\nvlan: 10\n", "nowhere"),
    ],
    ids=["bad-alone", "bad-against-the-state"],
)
async def test_a_rejected_submission_is_marked_on_its_validate_span(
    nc: Client, spans: InMemorySpanExporter, manifest: str, why: str
) -> None:
    reply = await Planner(nc, signing_seed=keys.SEED).apply(manifest)
    assert not reply.ok and why in str(reply.errors)
    tracing.force_flush()
    (validate,) = [s for s in spans.get_finished_spans() if s.name == "l2net.planner.validate"]
    attrs = validate.attributes or {}
    assert attrs["l2net.rejected"] is True
    assert attrs["l2net.cluster_network"] in ("oob", "nowhere")
