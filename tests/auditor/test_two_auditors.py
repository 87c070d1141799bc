"""Two auditors at once (run for availability) on a real nats-server: under a stream of
drift-causing and healing events, every finding is published exactly once, none is lost, and
requests get the same answer whichever auditor takes them."""

from __future__ import annotations

import asyncio
from collections import Counter

import msgspec
import pytest
from nats.aio.client import Client

from services.auditor.service import READ_STREAMS, AuditorConfig
from services.auditor.view import Policy, episode_id
from shared.runtime import bus
from shared.wire import auditor_api as protocol
from shared.wire import subjects
from tests.auditor.conftest import AuditorFactory, Bus, converged, stop
from tests.auditor.test_service import T0, mtu_1400, no_vid_200
from tests.executor.labkit import seed_intent
from tests.kit import until

pytestmark = pytest.mark.timeout(180)

NODES = [f"node-{i}" for i in range(1, 5)]
CYCLES = 9


def both(links: dict, vlans: dict) -> None:  # type: ignore[type-arg]
    mtu_1400(links, vlans)
    no_vid_200(links, vlans)


CHANGES = [
    (no_vid_200, [("oob-bo", "vlans")]),
    (mtu_1400, [("oob-br", "mtu")]),
    (both, [("oob-bo", "vlans"), ("oob-br", "mtu")]),  # two findings in one event
]


async def drift_and_heal(events: Bus, node: str) -> set[tuple[str, str, str, float, float]]:
    """``CYCLES`` times: the node drifts (VID 200, MTU, or both, by turns), then heals.
    Returns the episodes this must give: (node, object, path, first seen, resolved)."""
    intent = seed_intent(node, 1)
    await events.intent(intent)
    await events.observed(converged(intent, at=T0))
    expected = set()
    for k in range(CYCLES):
        start = T0 + 10 * (k + 1)
        change, found = CHANGES[k % len(CHANGES)]
        await events.observed(converged(intent, at=start, change=change))
        await events.observed(converged(intent, at=start + 1, change=change))  # still on
        await events.observed(converged(intent, at=start + 2))
        expected |= {(node, obj, path, start, start + 2) for obj, path in found}
        await asyncio.sleep(0.05)  # a stream over time, so that restarts fall inside it
    return expected


async def test_two_auditors_publish_every_finding_once_and_answer_alike(
    events: Bus, auditors: AuditorFactory, nc: Client
) -> None:
    config = AuditorConfig(policy=Policy(silence_s=600, grace_s=600))
    first = await auditors(config)
    second = await auditors(AuditorConfig(policy=Policy(silence_s=600, grace_s=600)))
    stream = asyncio.gather(*(drift_and_heal(events, n) for n in NODES))
    # Mid-stream the second auditor restarts (it replays, and publishes what it finds
    # missing in one catch-up while the first publishes live): the hardest interleaving.
    await asyncio.sleep(0.3)
    await stop(second)
    await asyncio.sleep(0.3)
    third = await auditors(AuditorConfig(policy=Policy(silence_s=600, grace_s=600)))
    expected: set[tuple[str, str, str, float, float]] = set()
    for found in await stream:
        expected |= found

    async def settled() -> bool:
        closed = {
            (r.node, i.object, i.path, i.first_seen, i.resolved_at)
            for r in await events.drift_reports()
            for i in r.items
            if i.resolved_at is not None
        }
        return closed >= expected

    await until(settled, timeout=60)
    alive = (first, third)

    async def caught_up() -> bool:
        # Every message of every stream they read applied to both views (under load the
        # restarted one can still be working through its backlog when the reports are in).
        for stream, _ in READ_STREAMS:
            last = (await events.js.stream_info(stream)).state.last_seq
            if any(a.applied_up_to(stream) < last for a in alive):
                return False
        return True

    await until(caught_up, timeout=60)
    for auditor in alive:  # time passes: nothing more may be published
        await auditor.tick()
    reports = await events.drift_reports()
    opened = Counter(
        episode_id(r.node, i) for r in reports for i in r.items if i.resolved_at is None
    )
    resolved = Counter(
        episode_id(r.node, i) for r in reports for i in r.items if i.resolved_at is not None
    )
    ids = {f"{n}|{o}|{p}|{s:.6f}" for n, o, p, s, _ in expected}
    once = sum(1 for e in ids if opened[e] == 1 and resolved[e] == 1)
    lost = sum(1 for e in ids if not opened[e] or not resolved[e])
    extra = set(opened) | set(resolved)
    print(
        f"two auditors: findings published exactly once (opened once, resolved once): "
        f"{once}/{len(ids)}; lost {lost}; unexpected {len(extra - ids)};"
        f" copies dropped by JetStream {sum(a.duplicates_dropped for a in alive)}"
    )
    assert once == len(ids) and lost == 0 and extra == ids
    published = sum(a.published_reports for a in (first, second, third))
    assert published == len(reports) == 2 * len(ids)
    seen = [
        {
            (n, i.object, i.path, i.first_seen, i.resolved_at)
            for n, v in a.view.nodes.items()
            for i in v.episodes.all()
        }
        for a in alive
    ]
    assert seen[0] == seen[1] == expected  # not contradictory: the same episodes, same times

    # Requests (a queue group: either auditor answers) get the same answer.
    answers = set()
    for _ in range(20):
        body = bus.encode(protocol.CheckRequest(live=False))
        reply = await nc.request(subjects.AUDITOR_CHECK, body, timeout=10)
        decoded = bus.decode(reply.data, protocol.CheckReply)
        answers.add(msgspec.json.encode(msgspec.structs.replace(decoded, at=0.0)))
    print(f"two auditors: distinct answers to 20 identical checks: {len(answers)}")
    assert len(answers) == 1
