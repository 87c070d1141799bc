"""Hostile messages sent to the live services on a real nats-server: the planner, the auditor
and an executor (in a namespace node) answer every request, still answer a good one after, and
a poison message on a JetStream subject is refused once (an executor terminates it: never
redelivered), never crashing a service, at start either.

Fewer cases than the in-process tests (each crosses the bus): every request subject gets
``REQUESTS`` bodies, every stream subject ``POISON`` messages. Counts are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout

from services.auditor.service import Auditor, AuditorConfig
from services.executor.service import Executor, consumer_name
from services.planner.service import Planner
from shared.domain.model import NodeIntent
from shared.runtime import bus, natsserver
from shared.wire import api, subjects
from shared.wire import auditor_api as protocol
from tests import keys
from tests.executor.conftest import ExecutorFactory, HostNode
from tests.fuzz.hostile import arbitrary_bytes, mutated
from tests.fuzz.test_decoders import INTENTS, NODES, OBSERVED, SEED_DOCS, STATUSES, plain
from tests.kit import until

pytestmark = pytest.mark.timeout(300)

SCALE = float(os.environ.get("L2NET_FUZZ_SCALE", "1"))
REQUESTS = max(5, int(40 * SCALE))
POISON = max(5, int(25 * SCALE))
SPEC_RECORD = {"op": "put", "kind": "Network", "name": "fuzz", "submission": "x", "spec": {}}
MAX_BODY = 900 * 1024  # under NATS's 1 MiB payload limit: the client refuses bigger itself


def draw(strategy: st.SearchStrategy[bytes], count: int) -> list[bytes]:
    """``count`` inputs drawn from ``strategy`` (hypothesis generates, the test sends)."""
    out: list[bytes] = []

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(data: bytes) -> None:
        if len(data) <= MAX_BODY:
            out.append(data)

    collect()
    return out


def hostile(valid: list[Any]) -> st.SearchStrategy[bytes]:
    m = mutated(valid, huge=1000)
    return st.one_of(m, m, arbitrary_bytes())


@pytest.fixture
async def fleet(
    nats_server: natsserver.EmbeddedNats,
    nc: Client,
    host_node: HostNode,
    executors: ExecutorFactory,
) -> AsyncIterator[tuple[Planner, Auditor, Executor]]:
    """A planner, an auditor and an executor, each on its own connection."""
    conns = [await bus.connect([nats_server.url], name=f"fuzz-{i}") for i in range(2)]
    planner = Planner(conns[0], signing_seed=keys.SEED)
    await planner.start()
    auditor = Auditor(conns[1], AuditorConfig())
    await auditor.start()
    executor = await executors(host_node)
    try:
        yield planner, auditor, executor
    finally:
        await auditor.stop()
        await planner.stop()
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.drain()


async def answers(nc: Client, subject: str, body: bytes, timeout: float = 15.0) -> bool:
    """True when something answers ``body`` on ``subject`` (any reply, even an error)."""
    try:
        await nc.request(subject, body, timeout=timeout)
    except NatsTimeout:
        return False
    return True


async def test_live_services_answer_hostile_requests_and_refuse_poison_once(
    fleet: tuple[Planner, Auditor, Executor], nc: Client
) -> None:
    _planner, auditor, executor = fleet
    node = executor.node
    good = {
        "planner": (subjects.API_GET, b""),
        "auditor": (subjects.AUDITOR_CHECK, bus.encode(protocol.CheckRequest(live=False))),
        "executor": (subjects.executor_control(node, "state"), b""),
    }

    async def all_answer() -> bool:
        ok = [await answers(nc, s, b) for s, b in good.values()]
        return all(ok)

    # -- requests -----------------------------------------------------------------------------
    manifests = hostile([*SEED_DOCS, SEED_DOCS])
    requests = {
        ("planner", subjects.API_APPLY): manifests,
        ("planner", subjects.API_PLAN): manifests,
        ("planner", subjects.API_DELETE): hostile([plain(api.DeleteRequest(kind="Network", name="x"))]),  # noqa: E501
        ("planner", subjects.API_GET): hostile([plain(api.GetRequest(kind="Network"))]),
        ("planner", subjects.API_NAD): hostile([plain(api.NadRequest(network="vlan200"))]),
        ("planner", subjects.API_SWITCH): hostile([plain(api.SwitchRequest(node=node))]),
        ("auditor", subjects.AUDITOR_CHECK): hostile([plain(protocol.CheckRequest(live=False))]),
        ("auditor", subjects.AUDITOR_HISTORY): hostile([plain(protocol.HistoryRequest(node=node))]),
        ("auditor", subjects.AUDITOR_DESIRED): hostile(
            [plain(protocol.DesiredRequest(node=node, generation=1))]
        ),
        ("executor", subjects.executor_control(node, "state")): hostile([{}]),
        ("executor", subjects.executor_control(node, "reconcile")): hostile([{}]),
    }  # fmt: skip
    sent = answered = 0
    unanswered: list[str] = []
    for (service, subject), strategy in requests.items():
        for body in draw(strategy, REQUESTS):
            sent += 1
            if await answers(nc, subject, body):
                answered += 1
            else:
                unanswered.append(f"{subject} <- {body[:120]!r}")
        if not await all_answer():
            unanswered.append(f"{service} stopped answering after {subject}")
    print(f"live requests answered: {answered}/{sent}; unanswered: {len(unanswered)}")
    for line in unanswered[:5]:
        print(f"  {line}")
    assert answered == sent and not unanswered

    # -- poison on the streams ------------------------------------------------------------------
    js = nc.jetstream()

    def not_for_this_node(data: bytes) -> bool:
        """Poison that cannot reach the kernel: undecodable, or for another node."""
        try:
            return bus.decode(data, NodeIntent).node != node
        except msgspec.DecodeError:
            return True

    poison = {
        subjects.intent(node): [
            d for d in draw(hostile([plain(INTENTS[0])]), POISON * 2) if not_for_this_node(d)
        ][:POISON],
        subjects.status(node): draw(hostile([plain(s) for s in STATUSES]), POISON),
        subjects.observed(node): draw(hostile([plain(o) for o in OBSERVED]), POISON),
        subjects.node(node): draw(hostile([plain(x) for x in NODES]), POISON),
        subjects.node("fuzz-ghost"): draw(hostile([plain(x) for x in NODES]), POISON),
        subjects.drift(node): draw(hostile([{"node": node, "generation": 1, "items": []}]), POISON),
        subjects.spec("Network", "fuzz"): draw(hostile([SPEC_RECORD]), POISON),
    }  # fmt: skip
    published = 0
    intent_seqs: list[int] = []
    for subject, bodies in poison.items():
        for body in bodies:
            ack = await js.publish(subject, body)
            published += 1
            if subject == subjects.intent(node):
                intent_seqs.append(ack.seq)
    # The executor's durable consumer: every poison intent handled (terminated), none again.
    consumer = consumer_name(node)

    async def all_handled() -> bool:
        info = await js.consumer_info(subjects.STREAM_INTENTS, consumer)
        return info.delivered.stream_seq >= max(intent_seqs) and info.num_ack_pending == 0

    await until(all_handled, timeout=60, what="the executor to handle them", every=0.2)
    await asyncio.sleep(3)  # longer than a nak's redelivery delay (2 s): a loop would show
    info = await js.consumer_info(subjects.STREAM_INTENTS, consumer)
    loops = info.num_redelivered
    alive = await all_answer()
    print(
        f"live poison messages: {published} published on {len(poison)} subjects;"
        f" intents terminated once: {len(intent_seqs) - loops}/{len(intent_seqs)};"
        f" redelivery loops: {loops}; services answering after: {'3/3' if alive else 'NO'};"
        f" auditor bad messages reported: {auditor.bad_messages}"
    )
    assert loops == 0 and alive and info.num_ack_pending == 0

    # -- and at start, with poison as the last message of every subject ------------------------
    restarted = 0
    for make in (
        lambda c: Planner(c, signing_seed=keys.SEED),
        lambda c: Auditor(c, AuditorConfig()),
    ):
        conn = await bus.connect([nc.connected_url.geturl()], name="fuzz-restart")  # type: ignore[union-attr]
        service = make(conn)
        try:
            await asyncio.wait_for(service.start(), timeout=60)
            restarted += 1
        finally:
            with contextlib.suppress(Exception):
                await service.stop()
            await conn.drain()
    print(f"services starting over poison last messages: {restarted}/2")
    assert restarted == 2
