"""docs/tracing.md, "See a trace of your own submission", followed as written with a lab.

A real OTLP/HTTP receiver (tests/shared/otlp_receiver.py, decoding with opentelemetry-proto)
stands in for Jaeger: its URL replaces ``http://localhost:4318`` in the commands. The trace
it receives must be the tree the page draws, span by span, kind by kind, parent by parent.
The ``docker run`` of Jaeger cannot run here (no Docker): it is checked against
deploy/compose/compose.yaml, which tests/deploy validates. A lab that cannot boot fails.
"""

from __future__ import annotations

import contextlib
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from services.lab import Lab
from services.lab.fleet import LabError
from tests.docs.session import DOCS, REPO, Shell, base_env, fenced, script
from tests.docs.test_quickstart import _answers
from tests.kit import until_sync
from tests.shared import otlp_receiver
from tests.shared.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

PAGE = DOCS / "tracing.md"
DOC_ENDPOINT = "http://localhost:4318"
NODES = ("node-1", "node-2")


@dataclass
class Row:
    """One line of the page's trace tree."""

    service: str
    column: int
    name: str
    kind: str
    parent: Row | None


def tree() -> list[Row]:
    """The trace tree the page draws (the plain block after "What the trace holds")."""
    text = PAGE.read_text()
    block = text.split("What the trace holds", 1)[1].split("```\n", 2)[1]
    rows: list[Row] = []
    for line in block.splitlines():
        service = line.split()[0]
        rest = line[len(service) :]
        column = len(service) + len(rest) - len(rest.lstrip())
        parts = re.split(r"\s{2,}", rest.strip())
        kind = parts[1] if len(parts) > 1 and parts[1] in ("PRODUCER", "CONSUMER") else ""
        parent = next((r for r in reversed(rows) if r.column < column), None)
        rows.append(Row(service, column, parts[0], kind, parent))
    return rows


def matching(spans: list[ReceivedSpan], row: Row) -> list[ReceivedSpan]:
    if row.name == "step <op>":
        return [s for s in spans if s.service == row.service and s.name.startswith("step ")]
    return [s for s in spans if s.service == row.service and s.name == row.name]


def the_trace(receiver: OtlpReceiver) -> list[ReceivedSpan]:
    spans = receiver.spans()
    roots = [s for s in spans if s.service == "l2net-cli" and s.name == "send l2.api.apply"]
    return [s for s in spans if roots and s.trace_id == roots[-1].trace_id]


def complete(receiver: OtlpReceiver) -> bool:
    """The trace is whole: see :func:`otlp_receiver.submission_done` (a check of each node
    alone can come a batch before the executor's apply span it hangs from)."""
    return otlp_receiver.submission_done(the_trace(receiver), NODES)


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    env = base_env(L2NET_STATE_DIR=str(tmp_path / "state"), L2NET_LAB_DIR=str(tmp_path / "lab"))
    sh = Shell(env=env, logs=tmp_path)
    try:
        yield sh
    finally:
        sh.stop_all()
        with contextlib.suppress(LabError):
            Lab.load(tmp_path / "lab").down()


def test_the_guide_gives_one_trace_through_planner_lab_executors_and_auditor(
    shell: Shell,
) -> None:
    activate, fleet, cleanup = fenced(PAGE, "bash")
    assert script(activate) == [". .venv/bin/activate"]
    assert (REPO / ".venv" / "bin" / "activate").exists()
    with otlp_receiver.running() as receiver:
        commands = script(fleet)
        assert commands[0] == f"export OTEL_EXPORTER_OTLP_ENDPOINT={DOC_ENDPOINT}"
        for command in commands:
            command = command.replace(DOC_ENDPOINT, receiver.endpoint)
            if command.endswith("&"):
                shell.background(command)
                subject, body = (
                    ("l2.api.get", b"")
                    if "planner" in command
                    else ("l2.auditor.history", b'{"node": "x"}')
                )
                until_sync(
                    lambda s=subject, b=body: _answers(shell.env["NATS_URL"], s, b),
                    timeout=60,
                    what=lambda c=command: f"{c}{shell.diagnostics()}",
                    every=0.3,
                )
                continue
            result = shell.run(command)
            assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
            if command.startswith('export "$(l2net lab up'):
                assert re.fullmatch(r"nats://127\.0\.0\.1:\d+", shell.env["NATS_URL"])
            if command.startswith("l2net apply"):
                assert "node node-2: generation 2" in result.stdout
        done = receiver.wait_for(complete, timeout=240)
        for command in script(cleanup):
            if command.startswith("kill "):
                shell.kill(command)  # %1 the planner, %2 the auditor
            else:
                result = shell.run(command)
                assert result.returncode == 0, f"{command}: {result.stderr}"
        assert done, f"no complete trace arrived{shell.diagnostics()}"
        assert all(p.returncode == 0 for p in shell.jobs), shell.diagnostics()
        spans = the_trace(receiver)

    # The page's tree, row by row: service, name, kind, and the parent it is drawn under.
    rows = tree()
    assert rows[0].name == "send l2.api.apply" and rows[0].parent is None
    for row in rows:
        found = matching(spans, row)
        assert found, f"{row.service}: {row.name} is not in the trace"
        for span in found:
            assert span.kind == f"SPAN_KIND_{row.kind or 'INTERNAL'}", (row.name, span.kind)
            if row.parent is None:
                assert span.parent_span_id == ""
            else:
                parents = {s.span_id for s in matching(spans, row.parent)}
                assert span.parent_span_id in parents, (row.name, row.parent.name)
    drawn = {(r.service, r.name) for r in rows}
    for span in spans:
        name = "step <op>" if span.name.startswith("step ") else span.name
        assert (span.service, name) in drawn, f"not on the page: {span.service}: {span.name}"
    # Once per node, where the page says so; the attributes it names.
    for row_name in ("process l2.intent.{node}", "l2net.auditor.check"):
        per_node = [s for s in spans if s.name == row_name]
        assert {s.resource.get("l2net.node") or s.attributes["l2net.node"] for s in per_node} == (
            set(NODES)
        )
    (validate,) = [s for s in spans if s.name == "l2net.planner.validate"]
    assert validate.attributes["l2net.cluster_network"] == "mgmt,oob"
    for s in spans:
        if s.name == "process l2.intent.{node}":
            assert s.attributes["l2net.netlink_writes"] > 0
        if s.name == "l2net.auditor.check":
            assert "l2net.drift.open" in s.attributes


def test_jaeger_docker_run_matches_the_validated_compose_file() -> None:
    """Needs Docker, so not run: the same image, ports and receiver settings as compose.yaml."""
    (block,) = [b for b in fenced(PAGE, "console") if "docker run" in b]
    words = shlex.split(block.replace("\\\n", " "))
    assert words[:2] == ["docker", "run"]
    ports = {words[i + 1] for i, w in enumerate(words) if w == "-p"}
    image = next(w for w in words if w.startswith("jaegertracing/jaeger:"))
    args = [w for w in words if w.startswith("--set=")]
    compose = yaml.safe_load((REPO / "deploy" / "compose" / "compose.yaml").read_text())
    jaeger = compose["services"]["jaeger"]
    assert image == jaeger["image"]
    assert ports == set(jaeger["ports"]) == {"16686:16686", "4317:4317", "4318:4318"}
    assert args == jaeger["command"]
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", image), "Jaeger v2"
    # The page's endpoint is Jaeger's OTLP/HTTP port, published above.
    assert f"export OTEL_EXPORTER_OTLP_ENDPOINT={DOC_ENDPOINT}" in PAGE.read_text()
