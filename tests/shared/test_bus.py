"""shared.bus on a real nats-server: a service answers once ``serve`` returns."""

from __future__ import annotations

import tomllib
from pathlib import Path

from nats.aio.client import Client
from nats.micro.request import Request

from shared import bus, natsserver

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
