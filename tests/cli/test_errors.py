"""Errors the user reads: too big for the server, too many problems, a NIC claimed twice, a
service that failed. Each is one clear message, never a traceback or a decoder's words."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.micro import add_service
from nats.micro.request import Request

from services.planner.service import MAX_PROBLEMS
from shared.runtime import bus
from shared.runtime.natsserver import EmbeddedNats
from shared.wire import subjects
from tests.cli.test_cli import SEED, l2net, planner_process  # noqa: F401 (a fixture)

DECODER_WORDS = ("Traceback", "Input data was truncated", "MaxPayloadError", "DecodeError")


def many_vlan_configs(count: int) -> str:
    """``count`` VlanConfigs of one cluster network that all select every node: each one
    conflicts with every other, on every node."""
    docs = ["kind: ClusterNetwork\nname: oob\n"]
    docs += [
        f"kind: VlanConfig\nname: vc-{i:04d}\nclusterNetwork: oob\nuplink: {{nics: [eth1]}}\n"
        for i in range(count)
    ]
    return "---\n".join(docs)


@pytest.mark.usefixtures("planner_process")
def test_big_manifests_get_bounded_clear_answers(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    checks: dict[str, bool] = {}

    # 50 MB: refused by the CLI before sending, naming the size and the server's limit.
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"# padding\n" * 5_000_000)
    out = l2net("apply", "-f", str(huge), url=nats_server.url)
    lines = out.stderr.strip().splitlines()
    checks["50 MB manifest refused in one line"] = out.returncode == 1 and len(lines) == 1
    checks["the line names the size and the server's max_payload"] = (
        "50000000 bytes" in out.stderr and "1048576" in out.stderr and "max_payload" in out.stderr
    )

    # 3100 VlanConfigs under the planner's size limit: thousands of problems, a capped list.
    many = tmp_path / "many.yaml"
    many.write_text(many_vlan_configs(3100))
    out = l2net("apply", "-f", str(many), url=nats_server.url)
    problems = [line for line in out.stderr.splitlines() if line.startswith("  - ")]
    checks["3100 VlanConfigs: rejected, exit 1"] = out.returncode == 1 and "rejected" in out.stderr
    checks["at most 100 problems listed, then a count"] = (
        len(problems) == MAX_PROBLEMS + 1 and "more problems" in problems[-1]
    )
    checks["each problem names a bounded number of others"] = all(len(p) < 400 for p in problems)

    async def raw_reply() -> tuple[int, int]:
        nc = await bus.connect([nats_server.url], name="test")
        try:
            msg = await nc.request(subjects.API_APPLY, many.read_bytes(), timeout=60)
            return len(msg.data), nc.max_payload
        finally:
            await nc.close()

    size, limit = asyncio.run(raw_reply())
    checks["the reply fits the server's max_payload"] = size <= limit
    checks["no decoder words nor traceback anywhere"] = not any(
        w in out.stderr + out.stdout for w in DECODER_WORDS
    )
    out = l2net("get", "VlanConfig", url=nats_server.url)
    checks["nothing was stored"] = out.returncode == 0 and "vc-0000" not in out.stdout
    for what, ok in checks.items():
        print(f"  {'ok ' if ok else 'BAD'} {what}")
    print(f"big manifests answered clearly: {sum(checks.values())}/{len(checks)}")
    assert all(checks.values()), checks


@pytest.mark.usefixtures("planner_process")
def test_a_nic_conflict_names_both_documents(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    data = (
        "kind: ClusterNetwork\nname: data\n---\n"
        "kind: VlanConfig\nname: data-all\nclusterNetwork: data\nuplink:\n  nics: [eth2]\n"
    )
    checks: dict[str, bool] = {}
    # Both VlanConfigs in one submission: the seed's oob-all (document 2, line 7) and
    # data-all (document 7, line 36).
    both = tmp_path / "both.yaml"
    both.write_text(SEED.read_text() + "---\n" + data)
    out = l2net("apply", "-f", str(both), url=nats_server.url)
    line = next((x for x in out.stderr.splitlines() if "NIC eth2" in x), "")
    print(line)
    checks["both in the submission: refused"] = out.returncode == 1
    checks["both named, each with its document and line"] = (
        "VlanConfig oob-all (document 2, line 7)" in line
        and "VlanConfig data-all (document 7, line 36)" in line
    )
    # oob-all stored already: the submitted one is blamed, located, and the stored one named.
    assert l2net("apply", "-f", str(SEED), url=nats_server.url).returncode == 0
    new = tmp_path / "new.yaml"
    new.write_text(data)
    out = l2net("apply", "-f", str(new), url=nats_server.url)
    line = next((x for x in out.stderr.splitlines() if "NIC eth2" in x), "")
    print(line)
    checks["one stored: refused"] = out.returncode == 1
    checks["the submitted one located, the stored one named"] = (
        line.strip().startswith("- document 2, line 4: VlanConfig data-all")
        and "VlanConfig oob-all of cluster network oob" in line
    )
    for what, ok in checks.items():
        print(f"  {'ok ' if ok else 'BAD'} {what}")
    print(f"NIC conflicts naming both objects: {sum(checks.values())}/{len(checks)}")
    assert all(checks.values()), checks


@pytest.fixture
async def failing_planner(nats_server: EmbeddedNats) -> AsyncIterator[None]:
    """A NATS micro service on the planner's subjects whose handlers fail (as a planner's
    did when a reply was over the limit or another planner had written first)."""
    nc = await bus.connect([nats_server.url], name="failing")

    async def fail(req: Request) -> None:
        await req.respond_error("500", "RuntimeError('boom')")

    svc = await add_service(nc, name="l2net-planner", version="0.0.0", queue_group="x")
    await svc.add_endpoint(name="get", subject=subjects.API_GET, handler=fail)
    await bus.settle(nc)
    try:
        yield
    finally:
        await svc.stop()
        await nc.drain()


async def test_a_failed_service_is_named_not_decoded(
    nats_server: EmbeddedNats, failing_planner: None
) -> None:
    # In a thread: the service answers from this test's event loop meanwhile.
    out = await asyncio.to_thread(l2net, "get", url=nats_server.url)
    print(out.stderr.strip())
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "l2net: the planner failed on l2.api.get (error 500): RuntimeError('boom')"
    )
    assert not any(w in out.stderr for w in DECODER_WORDS)
