"""One submission is one trace, checked at the wire: CLI → planner → executors in lab nodes →
auditor, parent-linked across NATS, as Jaeger would receive it.

A real OTLP/HTTP receiver on 127.0.0.1 decodes every ``/v1/traces`` export with
opentelemetry-proto. A lab of two user-mode Linux nodes runs the real executors; they get
``OTEL_EXPORTER_OTLP_ENDPOINT`` from ``Lab.up(environ=...)`` and export through the lab's
OTLP relay. The planner and the auditor run as real processes
(``python -m services.cli.main planner|auditor --nats URL``) with the same environment, and
the submission is ``l2net apply -f docs/examples/seed.yaml``, whose span is the root.
A lab that cannot boot fails this test: it never skips it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.lab import Lab
from shared.runtime import bus
from shared.wire import subjects
from tests.kit import stop_process, until
from tests.shared import otlp_receiver
from tests.shared.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "docs" / "examples" / "seed.yaml"
NODES = ("node-1", "node-2")
CLI = [sys.executable, "-m", "services.cli.main"]

PRODUCER = "SPAN_KIND_PRODUCER"
CONSUMER = "SPAN_KIND_CONSUMER"


@dataclass
class Fleet:
    """The lab, the receiver, and the environment every l2net process of the test gets."""

    lab: Lab
    receiver: OtlpReceiver
    env: dict[str, str]


def _env(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "NATS_"))}
    return env | {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_METRICS_EXPORTER": "none",
    }


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with otlp_receiver.running() as receiver:
        env = _env(receiver.endpoint)
        lab = Lab.up(
            directory=tmp_path_factory.mktemp("tracelab"), nodes=2, executor=True, environ=env
        )
        try:
            yield Fleet(lab, receiver, env)
        finally:
            lab.down()


def _start(role: str, fleet: Fleet, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CLI, role, "--nats", fleet.lab.nats_url],
        cwd=REPO,
        env=fleet.env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


async def _wait_for_services(url: str, procs: list[subprocess.Popen[bytes]]) -> None:
    """Until the planner answers ``l2.api.get`` and the auditor ``l2.auditor.history``."""
    nc = await bus.connect([url], name="trace-test-wait")
    try:
        for subject, body in ((subjects.API_GET, b""), (subjects.AUDITOR_HISTORY, b'{"node":"x"}')):

            async def answers(subject: str = subject, body: bytes = body) -> bool:
                assert all(p.poll() is None for p in procs), "a service exited"
                try:
                    await nc.request(subject, body, timeout=1)
                except Exception:
                    return False
                return True

            await until(answers, timeout=120, what=f"an answer on {subject}", every=0.2)
    finally:
        await nc.drain()


def _in_trace(receiver: OtlpReceiver) -> list[ReceivedSpan]:
    """The spans of the trace whose root is the CLI's ``send l2.api.apply`` (empty: none)."""
    spans = receiver.spans()
    roots = [s for s in spans if s.service == "l2net-cli" and s.name == "send l2.api.apply"]
    if len(roots) != 1:
        return []
    return [s for s in spans if s.trace_id == roots[0].trace_id]


def _complete(receiver: OtlpReceiver) -> bool:
    """Every node's executor ended its apply, the auditor checked each status it sent, and
    no span waits for its parent (see :func:`otlp_receiver.submission_done`)."""
    return otlp_receiver.submission_done(_in_trace(receiver), NODES)


def _one(spans: list[ReceivedSpan], service: str, name: str, **attributes: object) -> ReceivedSpan:
    found = [
        s
        for s in spans
        if s.service == service
        and s.name == name
        and all(s.attributes.get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, (service, name, attributes, [(s.service, s.name) for s in spans])
    return found[0]


def _messaging(span: ReceivedSpan, subject: str, template: str | None, operation: str) -> None:
    """The OTel messaging attributes; ``template`` only for subjects that name a node."""
    assert span.attributes["messaging.system"] == "nats"
    assert span.attributes["messaging.destination.name"] == subject
    assert span.attributes.get("messaging.destination.template") == template
    assert span.attributes["messaging.operation.type"] == operation


def test_a_submission_is_one_trace_from_the_cli_through_lab_executors_to_the_auditor(
    fleet: Fleet, tmp_path: Path
) -> None:
    url = fleet.lab.nats_url
    planner = _start("planner", fleet, tmp_path / "planner.log")
    auditor = _start("auditor", fleet, tmp_path / "auditor.log")
    try:
        asyncio.run(_wait_for_services(url, [planner, auditor]))
        applied = subprocess.run(
            [*CLI, "apply", "-f", str(SEED), "--nats", url],
            cwd=REPO,
            env=fleet.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert "Network/vlan200 created" in applied.stdout
        complete = fleet.receiver.wait_for(_complete, timeout=240)
    finally:
        stop_process(planner)  # SIGTERM: each flushes its spans on the way out
        stop_process(auditor)
    logs = "".join(
        f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("*.log"))
    )
    assert complete, f"the trace never held every node's status and check{logs}"

    spans = _in_trace(fleet.receiver)
    assert {s.service for s in spans} == {
        "l2net-cli",
        "l2net-planner",
        "l2net-executor",
        "l2net-auditor",
    }
    by_id = {s.span_id: s for s in spans}
    for s in spans:  # every span hangs from one that arrived: no break in the chain
        assert s.parent_span_id == "" or s.parent_span_id in by_id, (s.service, s.name)

    # The CLI's request is the root.
    root = _one(spans, "l2net-cli", "send l2.api.apply")
    assert root.parent_span_id == "" and root.kind == PRODUCER
    _messaging(root, "l2.api.apply", None, "send")
    assert [s for s in spans if s.parent_span_id == ""] == [root]

    # The planner: process the request, validate, compile and publish per node.
    process = _one(spans, "l2net-planner", "process l2.api.apply")
    assert process.kind == CONSUMER and process.parent_span_id == root.span_id
    _messaging(process, "l2.api.apply", None, "process")
    validate = _one(spans, "l2net-planner", "l2net.planner.validate")
    assert validate.parent_span_id == process.span_id
    assert validate.attributes["l2net.cluster_network"] == "mgmt,oob"
    store = _one(spans, "l2net-planner", "send l2.spec.{kind}.{name}")
    assert store.kind == PRODUCER and store.parent_span_id == process.span_id
    intents: dict[str, ReceivedSpan] = {}
    for node in NODES:
        compile_ = _one(spans, "l2net-planner", "l2net.planner.compile", **{"l2net.node": node})
        assert compile_.parent_span_id == process.span_id
        assert set(compile_.attributes["l2net.cluster_network"].split(",")) == {"mgmt", "oob"}
        send = _one(spans, "l2net-planner", "send l2.intent.{node}", **{"l2net.node": node})
        assert send.kind == PRODUCER and send.parent_span_id == process.span_id
        _messaging(send, subjects.intent(node), "l2.intent.{node}", "send")
        assert send.attributes["l2net.generation"] >= 1
        intents[node] = send
    for s in spans:
        if s.service == "l2net-planner":
            assert "l2net.node" not in s.resource

    # Each executor, inside its lab node: consume, apply step by step, publish its status.
    for node in NODES:
        mine = [
            s
            for s in spans
            if s.service == "l2net-executor" and s.resource.get("l2net.node") == node
        ]
        consume = _one(mine, "l2net-executor", "process l2.intent.{node}")
        assert consume.kind == CONSUMER
        assert consume.parent_span_id == intents[node].span_id, "linked across NATS"
        _messaging(consume, subjects.intent(node), "l2.intent.{node}", "process")
        assert consume.attributes["l2net.node"] == node
        assert (
            consume.attributes["l2net.generation"] == intents[node].attributes["l2net.generation"]
        )
        writes = consume.attributes["l2net.netlink_writes"]
        assert writes > 0, "the seed creates a bond, a bridge and VLANs on a fresh node"
        steps = [s for s in mine if s.name.startswith("step ")]
        assert steps and all(s.parent_span_id == consume.span_id for s in steps)
        assert {"step link.create", "step vlan.add"} <= {s.name for s in steps}, [
            s.name for s in steps
        ]
        assert all(s.attributes["l2net.step"] for s in steps)
        # Diff (read + plan) before the steps, verify (read back) after, both in the apply.
        diff_span = _one(mine, "l2net-executor", "l2net.executor.diff")
        verify = _one(mine, "l2net-executor", "l2net.executor.verify")
        assert diff_span.parent_span_id == consume.span_id == verify.parent_span_id
        assert diff_span.attributes["l2net.steps"] == len(steps)
        assert verify.attributes["l2net.differences"] == 0
        # Confirm (the node still reaches NATS) after the verify, in the apply too.
        confirm = _one(mine, "l2net-executor", "l2net.executor.confirm")
        assert confirm.parent_span_id == consume.span_id
        assert confirm.attributes["l2net.confirmed"] is True
        assert all(s.status_code != 2 for s in mine), "no span of a good apply is an error"
        statuses = [s for s in mine if s.name == "send l2.status.{node}"]
        assert statuses and all(
            s.kind == PRODUCER and s.parent_span_id == consume.span_id for s in statuses
        )
        for s in statuses:
            _messaging(s, subjects.status(node), "l2.status.{node}", "send")

        # The auditor: processes each status (CONSUMER, child of the executor's PRODUCER)
        # and checks the node in that span.
        for status in statuses:
            (received,) = [
                s
                for s in spans
                if s.service == "l2net-auditor"
                and s.name == "process l2.status.{node}"
                and s.parent_span_id == status.span_id
            ]
            assert received.kind == CONSUMER
            _messaging(received, subjects.status(node), "l2.status.{node}", "process")
            (check,) = [s for s in spans if s.parent_span_id == received.span_id]
            assert check.name == "l2net.auditor.check" and check.service == "l2net-auditor"
            assert check.attributes["l2net.node"] == node
            chain = [s.name for s in otlp_receiver.iter_chain(spans, check)]
            assert chain == [
                "l2net.auditor.check",
                "process l2.status.{node}",
                "send l2.status.{node}",
                "process l2.intent.{node}",
                "send l2.intent.{node}",
                "process l2.api.apply",
                "send l2.api.apply",
            ]
        last = max(
            (
                s
                for s in spans
                if s.name == "l2net.auditor.check" and s.attributes["l2net.node"] == node
            ),
            key=lambda s: s.attributes["l2net.generation"],
        )
        assert last.attributes["l2net.generation"] == intents[node].attributes["l2net.generation"]
        assert last.attributes["l2net.drift.open"] == 0
