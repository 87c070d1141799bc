"""An apply is one trace: checked at the wire, with a real OTLP receiver decoding the export.

The executor runs as its own process (``python -m services.executor``), as on a node,
working inside the test's namespace; the intent arrives with a W3C ``traceparent`` header
as the planner sends it.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client

from shared.runtime import bus, natsserver
from shared.wire import subjects
from tests import keys
from tests.executor.conftest import HostNode, intent, untagged_port
from tests.executor.helpers import final_status
from tests.kit import stop_process, until
from tests.shared.otlp_receiver import OtlpReceiver, running

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]


async def test_an_apply_is_one_trace_from_the_planners_publish_to_each_kernel_step(
    host_node: HostNode, nc: Client, nats_server: natsserver.EmbeddedNats, tmp_path: Path
) -> None:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    with running() as receiver:
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
        }

        def start(log: Path) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "services.executor",
                    "--node",
                    host_node.node,
                    "--nats",
                    nats_server.url,
                    "--netns",
                    host_node.ns,
                    "--state-dir",
                    str(tmp_path / "executor-state"),
                ],
                cwd=REPO,
                env=env,
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
            )

        proc = start(tmp_path / "executor.log")
        try:
            js = nc.jetstream()

            async def registered() -> bool:
                try:
                    await js.get_last_msg(subjects.STREAM_NODES, subjects.node(host_node.node))
                except Exception:
                    return False
                return True

            await until(registered)
            it = intent(host_node, 1, [untagged_port(host_node.vm("a"))])
            await js.publish(
                subjects.intent(host_node.node),
                bus.encode(keys.sign(it)),
                headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
            )
            await until(lambda: final_status(nc, host_node.node, 1))
        finally:
            stop_process(proc)  # SIGTERM: the executor flushes its spans on the way out
        assert proc.returncode == 0, (tmp_path / "executor.log").read_text()

        def has_steps(r: OtlpReceiver) -> bool:
            return any(s.name.startswith("step cni.add") for s in r.spans())

        assert receiver.wait_for(has_steps)
        spans = [s for s in receiver.spans() if s.trace_id == trace_id]
        by_name = {s.name: s for s in spans}
        process = by_name["process l2.intent.{node}"]
        assert process.parent_span_id == parent_id
        assert process.service == "l2net-executor"
        assert process.attributes["l2net.node"] == host_node.node
        assert process.attributes["l2net.generation"] == 1
        assert process.attributes["l2net.netlink_writes"] > 0
        steps = [s for s in spans if s.name.startswith("step ")]
        assert {s.name for s in steps} >= {"step netns.add", "step cni.add", "step vm.vlans"}
        assert all(s.parent_span_id == process.span_id for s in steps)
        # Diff, verify and confirm of this apply, each once, in its process span.
        for name in ("l2net.executor.diff", "l2net.executor.verify", "l2net.executor.confirm"):
            (one,) = [s for s in spans if s.name == name]
            assert one.parent_span_id == process.span_id, name
        assert by_name["l2net.executor.confirm"].attributes["l2net.confirmed"] is True
        status = by_name["send l2.status.{node}"]
        assert status.parent_span_id == process.span_id
        applies = receiver.metric_points().get("l2net.applies", [])
        assert any(attrs.get("result") == "Applied" for _, attrs, _ in applies)

        # Started again, it converges to the intent kept on disk before NATS: no message,
        # so that apply is a trace of its own, its diff under one l2net.executor.start span.
        proc = start(tmp_path / "executor-again.log")
        try:

            def started(r: OtlpReceiver) -> bool:
                return any(s.name == "l2net.executor.start" for s in r.spans())

            assert receiver.wait_for(started), (tmp_path / "executor-again.log").read_text()
        finally:
            stop_process(proc)
        (begin,) = [s for s in receiver.spans() if s.name == "l2net.executor.start"]
        assert begin.parent_span_id == "" and begin.trace_id != trace_id
        assert begin.attributes["l2net.generation"] == 1
        assert begin.attributes["l2net.netlink_writes"] == 0, "already converged"
        again = [s for s in receiver.spans() if s.trace_id == begin.trace_id]
        assert [s.name for s in again if s.parent_span_id == begin.span_id] == [
            "l2net.executor.diff"
        ]
