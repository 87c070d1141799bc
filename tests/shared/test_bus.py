"""shared.runtime.bus on a real nats-server: a service answers once ``serve`` returns; services wait
for NATS and come back after an outage by themselves, and say so; one-shot commands fail
clearly."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import tomllib
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client
from nats.micro.request import Request

from shared.runtime import bus, natsserver
from shared.wire import subjects
from tests.kit import until

REPO = Path(__file__).resolve().parents[2]


def test_services_announce_the_package_version() -> None:
    """``nats micro ls`` and the node registrations show the version that is installed."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["version"] == bus.VERSION


async def test_a_service_answers_another_connection_as_soon_as_serve_returns(
    nats_server: natsserver.EmbeddedNats, nc: Client
) -> None:
    """Whoever is told "ready" may ask at once: no "no responders" from a subscription the
    server has not seen yet (without any wait in ``serve`` every start fails here). The
    narrower race of a single nats-py flush() showed over TLS only, about one start in ten:
    tests/deploy/test_nats.py met it in CI."""
    server = await bus.connect([nats_server.url], name="l2net-test-service")

    async def echo(req: Request) -> None:
        await req.respond(req.data)

    try:
        for i in range(20):
            service = await bus.serve(
                server,
                name=f"echo-{i}",
                description="echo",
                queue_group=f"echo-{i}",
                endpoints=[("echo", f"test.echo.{i}", echo)],
            )
            reply = await nc.request(f"test.echo.{i}", b"%d" % i, timeout=5)
            assert reply.data == b"%d" % i
            await service.stop()
    finally:
        await server.close()


def test_reconnection_waits_double_up_to_a_cap_with_jitter() -> None:
    first, cap = bus.BACKOFF_S
    for tries in range(40):
        ceiling = min(cap, first * 2**tries)
        waits = [bus.reconnect_wait(tries) for _ in range(50)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits), (tries, waits)
        assert len(set(waits)) > 1  # jitter: a fleet does not reconnect in step
    assert max(bus.reconnect_wait(t) for t in range(100)) <= cap


async def test_a_one_shot_command_fails_with_a_clear_error_when_nats_is_down(
    nats_server: natsserver.EmbeddedNats,
) -> None:
    nats_server.stop()
    with pytest.raises(bus.BusError) as err:
        await bus.connect([nats_server.url], name="l2net-cli")
    assert f"cannot reach NATS at {nats_server.url}: ConnectionRefusedError" in str(err.value)


async def test_a_service_waits_for_nats_at_its_first_connection_saying_so(
    nats_server: natsserver.EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    """Started before NATS: it tries again (a log line per try) until NATS is there."""
    nats_server.stop()
    caplog.set_level(logging.WARNING, logger="l2net.bus")
    task = asyncio.create_task(bus.connect([nats_server.url], name="l2net-planner", attempts=-1))

    def tries() -> int:
        return sum("l2net-planner: cannot reach NATS" in r.getMessage() for r in caplog.records)

    await until(lambda: tries() >= 2)
    assert not task.done()
    nats_server.start_again()
    server = await asyncio.wait_for(task, 60)
    try:
        health = bus.health(server, service="l2net-planner")
        assert health.connected and health.outages == 0
        assert any("connected to NATS" in r.getMessage() for r in caplog.records)
    finally:
        await server.close()


async def test_a_service_comes_back_after_an_outage_and_its_health_says_so(
    nats_server: natsserver.EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    """Reconnected by itself, its endpoints answer again, the outage is logged once when it
    begins and once when it ends, and its health (own subject and $SRV.STATS) counts it."""
    caplog.set_level(logging.DEBUG, logger="l2net.bus")
    server = await bus.connect([nats_server.url], name="l2net-auditor", attempts=-1)

    async def echo(req: Request) -> None:
        await req.respond(req.data)

    await bus.serve(
        server,
        name="l2net-auditor",
        description="test",
        queue_group="l2net-auditor",
        endpoints=[("echo", "test.echo", echo)],
    )
    nats_server.stop()
    await asyncio.sleep(2.0)  # the outage: several reconnection tries
    nats_server.start_again()
    await until(lambda: server.is_connected, timeout=60)
    client = await bus.connect([nats_server.url], name="l2net-test")
    try:
        assert (await client.request("test.echo", b"hi", timeout=5)).data == b"hi"
        reply = await client.request(subjects.health("l2net-auditor"), b"", timeout=5)
        health = msgspec.json.decode(reply.data, type=bus.Health)
        assert health.service == "l2net-auditor" and health.connected
        assert health.outages == 1
        assert health.last_outage_seconds is not None and health.last_outage_seconds >= 2.0
        stats = json.loads((await client.request("$SRV.STATS.l2net-auditor", b"", timeout=5)).data)
        assert {e["data"]["outages"] for e in stats["endpoints"]} == {1}
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.levelno >= logging.WARNING and r.getMessage().startswith("l2net-auditor:")
        ]
        assert [m for m in warnings if "lost the connection" in m] == [warnings[0]]
        assert len(warnings) == 2 and "reconnected to NATS" in warnings[1], warnings
        assert "after an outage of" in warnings[1]
    finally:
        await client.close()
        await server.close()


async def test_stream_replicas_are_set_when_given_and_kept_when_not(nc: Client) -> None:
    js = nc.jetstream()
    await bus.ensure_streams(js, [subjects.STREAM_NODES])  # new, none given: one
    assert (await js.stream_info(subjects.STREAM_NODES)).config.num_replicas == 1
    await bus.ensure_streams(js, [subjects.STREAM_NODES], replicas=1)
    assert (await js.stream_info(subjects.STREAM_NODES)).config.num_replicas == 1
    # One server cannot keep three copies: JetStream refuses, and the stream is unchanged.
    with pytest.raises(Exception, match=r"(?i)insufficient|replicas|resources|peers"):
        await bus.ensure_streams(js, [subjects.STREAM_NODES], replicas=3)
    assert (await js.stream_info(subjects.STREAM_NODES)).config.num_replicas == 1
    with pytest.raises(ValueError, match="1 to 5"):
        bus.stream_config(subjects.STREAM_NODES, replicas=6)


def test_stream_replicas_come_from_the_option_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shared.runtime import config

    monkeypatch.delenv(config.STREAM_REPLICAS_ENV, raising=False)
    assert config.stream_replicas() is None
    assert config.stream_replicas(3) == 3
    monkeypatch.setenv(config.STREAM_REPLICAS_ENV, "3")
    assert config.stream_replicas() == 3
    assert config.stream_replicas(1) == 1
    for bad in ("three", "0", "7"):
        monkeypatch.setenv(config.STREAM_REPLICAS_ENV, bad)
        with pytest.raises(
            ValueError, match=config.STREAM_REPLICAS_ENV if bad == "three" else "1 to 5"
        ):
            config.stream_replicas()


def test_a_planner_asked_for_more_replicas_than_the_servers_keep_stops_saying_why(
    nats_server: natsserver.EmbeddedNats,
) -> None:
    def planner(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "services.cli.main",
                "planner",
                "--nats",
                nats_server.url,
                *extra,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    one_server = planner("--stream-replicas", "3")
    assert one_server.returncode == 1, one_server
    assert "l2net planner: cannot create or update the l2net streams (3 replicas)" in (
        one_server.stdout
    )
    assert "non-clustered" in one_server.stdout and "Traceback" not in one_server.stderr
    too_many = planner("--stream-replicas", "9")
    assert too_many.returncode == 2
    assert "stream replicas must be 1 to 5" in too_many.stdout
