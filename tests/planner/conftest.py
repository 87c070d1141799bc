"""Planner fixtures: the seed manifest, registered nodes, a running planner on real NATS."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from services.planner.catalog import Catalog
from services.planner.service import Planner
from shared.domain import model
from shared.runtime import bus
from shared.wire import subjects
from tests import keys

SEED = Path(__file__).resolve().parents[2] / "docs" / "examples" / "seed.yaml"


def make_node(name: str, *, labels: dict[str, str] | None = None, nics: int = 2) -> model.Node:
    return model.Node(
        name=name,
        labels=labels or {},
        nics=[model.Nic(name="eth0", state="up", master="mgmt-bo")]
        + [model.Nic(name=f"eth{i}", state="up") for i in range(1, nics + 1)],
        heartbeat_at=time.time(),
    )


def catalog_with_nodes(*names: str, nics: int = 2) -> Catalog:
    catalog = Catalog()
    for name in names:
        catalog = catalog.with_node(make_node(name, nics=nics))
    return catalog


@pytest.fixture
def seed_text() -> str:
    return SEED.read_text()


async def register(nc: Client, node: model.Node) -> None:
    js = nc.jetstream()
    await bus.ensure_streams(js, [subjects.STREAM_NODES])
    await js.publish(subjects.node(node.name), bus.encode(node))


@pytest.fixture
async def planner(nc: Client) -> AsyncIterator[Planner]:
    p = Planner(nc, signing_seed=keys.SEED)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()
