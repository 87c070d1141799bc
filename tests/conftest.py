"""Fixtures every test area shares: a real nats-server with JetStream on a free port, the
tests' intent signing key in the environment of every l2net process a test starts, and a NATS
client on a module's lab (the lab itself: :func:`tests.kit.lab_fixture`)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from nats.aio.client import Client

from shared.runtime import bus, natsserver
from tests import keys

if TYPE_CHECKING:
    from services.lab import Lab


@pytest.fixture(scope="session", autouse=True)
def signing_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Planners started as processes sign with the tests' key (``$L2NET_SIGNING_KEY_FILE``);
    executors started as processes, and every lab's, also trust it (``$L2NET_TRUST_KEYS``),
    so intents published by hand with :func:`tests.keys.sign` are accepted. In-process
    planners and executors are given the key by their fixtures."""
    seed = tmp_path_factory.mktemp("keys") / "signing.seed"
    seed.write_text(keys.SEED + "\n")
    seed.chmod(0o600)
    saved = {k: os.environ.get(k) for k in ("L2NET_SIGNING_KEY_FILE", "L2NET_TRUST_KEYS")}
    os.environ["L2NET_SIGNING_KEY_FILE"] = str(seed)
    os.environ["L2NET_TRUST_KEYS"] = keys.PUBLIC
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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


@pytest.fixture
async def labnc(lab: Lab) -> AsyncIterator[Client]:
    """A NATS client on the lab's server; ``lab`` is the requesting module's own lab. A test
    may close it early (before stopping the lab's server, say)."""
    client = await bus.connect([lab.nats_url], name="l2net-lab-test")
    try:
        yield client
    finally:
        if not client.is_closed:
            await client.drain()
