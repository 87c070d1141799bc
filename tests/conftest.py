"""Fixtures every test area shares: a real nats-server with JetStream on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from shared import bus, natsserver


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[natsserver.EmbeddedNats]:
    """A fresh nats-server (JetStream, temp store) per test; stopped by its own pid."""
    server = natsserver.start(tmp_path / "nats")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nc(nats_server: natsserver.EmbeddedNats) -> AsyncIterator[Client]:
    client = await bus.connect([nats_server.url], name="l2net-test")
    try:
        yield client
    finally:
        await client.drain()
