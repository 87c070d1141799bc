"""docs/tracing.md and docs/deploy.md: their runnable commands and code, run as written.

Blocks fenced as ``sh`` or ``python`` are run; ``console`` blocks are the ones the docs mark
as needing what this machine lacks (Docker, a cluster, systemd as PID 1), and their files are
validated by the other tests in tests/deploy/.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.cli import demo
from shared.runtime import bus, natsserver
from shared.wire import signing, subjects
from tests.kit import stop_process, until
from tests.shared import otlp_receiver
from tests.shared.otlp_receiver import OtlpReceiver, ReceivedSpan

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
BIN = Path(sys.executable).parent


def blocks(doc: Path, lang: str) -> list[str]:
    """The fenced code blocks of ``doc`` tagged ``lang``, indentation removed."""
    found = re.findall(r"^( *)```" + lang + r"\n(.*?)^\1```", doc.read_text(), re.S | re.M)
    out = []
    for indent, body in found:
        lines = body.splitlines()
        out.append("\n".join(ln[len(indent) :] for ln in lines) + "\n")
    return out


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "NATS_"))}
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    return env | extra


@dataclass
class ControlPlane:
    nats: natsserver.EmbeddedNats
    receiver: OtlpReceiver
    planner: subprocess.Popen[str]

    def env(self, **extra: str) -> dict[str, str]:
        return base_env(
            NATS_URL=self.nats.url, OTEL_EXPORTER_OTLP_ENDPOINT=self.receiver.endpoint, **extra
        )


async def _register_nodes(url: str) -> None:
    nc = await bus.connect([url], name="test-nodes")
    js = nc.jetstream()
    await bus.ensure_streams(js, [subjects.STREAM_NODES])
    for name in demo.NODES:
        await js.publish(subjects.node(name), bus.encode(demo.demo_node(name)))
    await nc.drain()


async def _wait_for_planner(url: str, proc: subprocess.Popen[str]) -> None:
    nc = await bus.connect([url], name="test-wait")

    async def answers() -> bool:
        assert proc.poll() is None, "the planner exited"
        try:
            await nc.request(subjects.API_GET, b"", timeout=1)
        except Exception:
            return False
        return True

    try:
        await until(answers, timeout=60, what="the planner to answer on l2.api.get")
    finally:
        await nc.drain()


def commands_of(doc: Path) -> list[str]:
    """The ``l2net`` command lines of the tracing quick start (the second ``sh`` block)."""
    block = blocks(doc, "sh")[0]
    return [ln.strip() for ln in block.splitlines() if ln.strip().startswith("l2net ")]


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    """NATS, an OTLP receiver standing in for Jaeger, nodes registered, the docs' planner."""
    server = natsserver.start(tmp_path / "nats")
    planner: subprocess.Popen[str] | None = None
    try:
        asyncio.run(_register_nodes(server.url))
        with otlp_receiver.running() as receiver:
            cmds = commands_of(DOCS / "tracing.md")
            assert cmds[0] == "l2net up &", cmds  # here: the test's own server instead
            assert cmds[1] == "l2net planner &", cmds
            env = base_env(NATS_URL=server.url, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
            planner = subprocess.Popen(
                shlex.split(cmds[1].rstrip("&")),
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            asyncio.run(_wait_for_planner(server.url, planner))
            yield ControlPlane(server, receiver, planner)
    finally:
        if planner is not None:
            stop_process(planner, timeout=20)
        server.stop()


def stop_planner(cp: ControlPlane) -> None:
    """SIGTERM the planner (it flushes its spans on the way out)."""
    cp.planner.send_signal(signal.SIGTERM)
    out, _ = cp.planner.communicate(timeout=30)
    assert cp.planner.returncode == 0, out


def one(spans: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan:
    found = [s for s in spans if s.service == service and s.name == name]
    assert len(found) == 1, (service, name, [(s.service, s.name) for s in spans])
    return found[0]


def test_quick_start_gives_one_trace_from_the_cli_through_the_planner(
    control_plane: ControlPlane,
) -> None:
    cp = control_plane
    apply = commands_of(DOCS / "tracing.md")[2]
    assert apply == "l2net apply -f docs/examples/seed.yaml"
    result = subprocess.run(
        shlex.split(apply), env=cp.env(), cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    stop_planner(cp)

    spans = cp.receiver.spans()
    send = one(spans, "l2net-cli", "send l2.api.apply")
    trace = [s for s in spans if s.trace_id == send.trace_id]
    process = one(trace, "l2net-planner", "process l2.api.apply")
    assert process.parent_span_id == send.span_id
    assert send.kind == "SPAN_KIND_PRODUCER" and process.kind == "SPAN_KIND_CONSUMER"
    validate = one(trace, "l2net-planner", "l2net.planner.validate")
    assert validate.parent_span_id == process.span_id
    specs = one(trace, "l2net-planner", "send l2.spec.{kind}.{name}")
    intents = [s for s in trace if s.name == "send l2.intent.{node}"]
    compiles = [s for s in trace if s.name == "l2net.planner.compile"]
    assert {s.attributes["messaging.destination.name"] for s in intents} == {
        subjects.intent(n) for n in demo.NODES
    }
    assert {s.attributes["l2net.node"] for s in compiles} >= set(demo.NODES)
    ancestors = {s.span_id for s in otlp_receiver.iter_chain(trace, specs)}
    assert process.span_id in ancestors
    for s in intents:
        assert process.span_id in {a.span_id for a in otlp_receiver.iter_chain(trace, s)}
        assert s.attributes["messaging.system"] == "nats"
        assert s.attributes["messaging.destination.template"] == "l2.intent.{node}"


def test_console_exporter_command(control_plane: ControlPlane) -> None:
    (line,) = [ln for ln in blocks(DOCS / "tracing.md", "sh")[1].splitlines() if ln.strip()]
    assert line == "OTEL_TRACES_EXPORTER=console OTEL_METRICS_EXPORTER=none l2net get"
    env = base_env(NATS_URL=control_plane.nats.url)
    result = subprocess.run(
        ["bash", "-c", line], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert '"name": "send l2.api.get"' in result.stdout
    assert '"service.name": "l2net-cli"' in result.stdout


def test_own_client_snippet_joins_the_planners_trace(control_plane: ControlPlane) -> None:
    (snippet,) = blocks(DOCS / "tracing.md", "python")
    cp = control_plane
    result = subprocess.run(
        [sys.executable, "-c", snippet],
        env=cp.env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert '"ok":true' in result.stdout.replace(" ", "")
    stop_planner(cp)
    spans = cp.receiver.spans()
    root = one(spans, "my-rollout", "roll out the oob network")
    process = one(spans, "l2net-planner", "process l2.api.apply")
    assert process.trace_id == root.trace_id
    assert process.parent_span_id == root.span_id


def test_deploy_guide_commands_run_as_written(tmp_path: Path) -> None:
    """Every ``sh`` block of docs/deploy.md, in order, in a copy of deploy/."""
    shutil.copytree(REPO / "deploy", tmp_path / "deploy")
    script = "set -euo pipefail\n" + "".join(blocks(DOCS / "deploy.md", "sh"))
    result = subprocess.run(
        ["bash", "-c", script],
        env=base_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid" in result.stdout + result.stderr  # nats-server -t
    accounts = (tmp_path / "deploy" / "nats" / "accounts.conf").read_text()
    assert accounts == (REPO / "deploy" / "nats" / "accounts.conf").read_text()
    env_lines = (tmp_path / "nats.env").read_text().splitlines()
    assert len(env_lines) == 7 and all(
        re.fullmatch(r"L2NET_NATS_PASSWORD_[A-Z0-9_]+=[0-9a-f]{48}", ln) for ln in env_lines
    )
    assert oct((tmp_path / "nats.env").stat().st_mode & 0o777) == "0o600"
    # The planner's signing seed (a secret) and the public key the executors trust.
    seed = (tmp_path / "signing.seed").read_text().strip()
    assert oct((tmp_path / "signing.seed").stat().st_mode & 0o777) == "0o600"
    assert (tmp_path / "trusted-keys").read_text().split() == [signing.public_key(seed)]
    executor_env = (tmp_path / "executor-node-1.env").read_text()
    assert re.match(r"NATS_URL=tls://node-1:[0-9a-f]{48}@nats\.example\.com:4222\n", executor_env)
    san = subprocess.run(
        ["openssl", "x509", "-in", "tls/server.pem", "-noout", "-ext", "subjectAltName"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DNS:nats" in san and "IP Address:127.0.0.1" in san
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", "tls/ca.pem", "tls/server.pem"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stderr


def test_docs_name_only_files_that_exist() -> None:
    for doc in ("tracing.md", "deploy.md"):
        text = (DOCS / doc).read_text()
        for path in set(re.findall(r"`((?:deploy|docs|tests|shared)/[\w./@-]+)`", text)):
            assert (REPO / path.rstrip("/")).exists(), f"{doc}: {path}"
