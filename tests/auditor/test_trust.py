"""Stray, forged and stale messages on a real nats-server: the auditor trusts subjects, judges
only registered nodes, and compares each node with the intent it really applied.

Every case runs on its own node, all against the same two auditors (one given the planner's
public key, one not): the findings each case must produce are known exactly, and a healthy
node beside them must stay clean (no false drift).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from services.auditor.service import Auditor, AuditorConfig
from services.auditor.view import Policy
from shared.domain.model import DriftItem, DriftReport, Node, NodeIntent, NodeStatus
from shared.runtime import bus, natsserver
from shared.wire import intents, subjects
from tests import keys
from tests.auditor.conftest import AuditorFactory, Bus, converged, heartbeat
from tests.auditor.test_service import T0, l2net, mtu_1400
from tests.executor.labkit import seed_intent
from tests.kit import until

pytestmark = pytest.mark.timeout(180)

GEN = ("node/{node}", "generation")


def applied(intent: NodeIntent, at: float, *, digest: str | None = None) -> NodeStatus:
    """The executor's Applied status for ``intent``, naming it by digest, as executors do."""
    return NodeStatus(
        node=intent.node,
        phase="Applied",
        observed_generation=intent.generation,
        at=at,
        intent_digest=digest or intents.digest(intent),
    )


async def unsigned(events: Bus, intent: NodeIntent, subject: str | None = None) -> None:
    """Publish ``intent`` as a forger would: unsigned, on any subject."""
    await events.js.publish(subject or subjects.intent(intent.node), bus.encode(intent))


async def converge(events: Bus, intent: NodeIntent, now: float) -> None:
    """``intent`` is published (signed), applied and observed converged."""
    await events.intent(intent)
    await events.status(applied(intent, now))
    await events.observed(converged(intent, at=now))


@dataclass
class Case:
    """``run`` publishes the case's events on ``node``; ``want`` the open findings (object,
    path) each auditor must show for it: ``keyed`` (given the planner's key), ``keyless``."""

    name: str
    run: Callable[[Bus, str, float], Awaitable[None]]
    keyed: set[tuple[str, str]]
    keyless: set[tuple[str, str]]
    actual_has: str = ""


async def healthy(events: Bus, node: str, now: float) -> None:
    await converge(events, seed_intent(node, 1), now - 5)


async def forged_high_generation(events: Bus, node: str, now: float) -> None:
    await converge(events, seed_intent(node, 1), now - 5)
    await unsigned(events, seed_intent(node, 1000, vlan200=None))


async def stale_applied_after_restart(events: Bus, node: str, now: float) -> None:
    gen1, gen2 = seed_intent(node, 1), seed_intent(node, 2, vlan200=210)
    await converge(events, gen1, now - 9)
    await converge(events, gen2, now - 8)
    # The executor restarted and applied generation 1 again, after generation 2 was
    # published: the node runs generation 1 (a step back, reported at once).
    later = time.time() + 0.01
    await events.status(applied(gen1, later))
    await events.observed(converged(gen1, at=later))


async def applied_an_intent_never_published(events: Bus, node: str, now: float) -> None:
    gen1 = seed_intent(node, 1)
    await converge(events, gen1, now - 5)
    await events.status(applied(gen1, now - 4, digest="f" * 64))


async def forged_twin_of_the_generation(events: Bus, node: str, now: float) -> None:
    real = seed_intent(node, 1)
    await converge(events, real, now - 5)
    await unsigned(events, seed_intent(node, 1, vlan200=None))  # same number, other content


async def judged_against_what_it_applied(events: Bus, node: str, now: float) -> None:
    # The node runs generation 1 and its kernel is that intent's state: no kernel drift,
    # although generation 2 (published, not applied yet) says otherwise; only the keyless
    # auditor, whose grace (1 s) passes, says the node is behind.
    gen1 = seed_intent(node, 1)
    await converge(events, gen1, now - 5)
    await events.intent(seed_intent(node, 2, vlan200=None))
    await events.observed(converged(gen1, at=now - 3))


async def body_names_another_node(events: Bus, node: str, now: float) -> None:
    other = f"{node}-other"
    await events.register(other)
    await converge(events, seed_intent(other, 1), now - 6)
    await converge(events, seed_intent(node, 1), now - 5)
    # Bodies that name `other` on `node`'s subjects: every one must be ignored.
    lie = seed_intent(other, 7, vlan200=None)
    await events.js.publish(subjects.intent(node), bus.encode(keys.sign(lie)))
    await events.js.publish(subjects.status(node), bus.encode(applied(lie, now - 4)))
    drifted = converged(seed_intent(other, 1), at=now - 3, change=mtu_1400)
    await events.js.publish(subjects.observed(node), bus.encode(drifted))
    await events.js.publish(subjects.node(node), bus.encode(heartbeat(other, now - 3)))


CASES = [
    Case("healthy", healthy, set(), set()),
    Case(
        "forged high generation",
        forged_high_generation,
        {GEN},
        {GEN},
        actual_has="not signed",
    ),
    Case("stale intent applied after a restart", stale_applied_after_restart, {GEN}, {GEN}),
    Case("an intent never published applied", applied_an_intent_never_published, {GEN}, {GEN}),
    Case("a forged twin of the generation", forged_twin_of_the_generation, {GEN}, {GEN}),
    Case("judged against what it applied", judged_against_what_it_applied, set(), {GEN}),
    Case("a body naming another node", body_names_another_node, set(), set()),
]


def open_keys(auditor: Auditor, node: str) -> set[tuple[str, str]]:
    return {(i.object, i.path) for i in auditor.view.node(node).open_items()}


async def test_forged_stale_and_misaddressed_messages_are_judged_by_what_nodes_really_run(
    events: Bus, auditors: AuditorFactory, nats_server: natsserver.EmbeddedNats
) -> None:
    policy = Policy(grace_s=600, silence_s=600)  # findings here come from events, not time
    keyed = await auditors(AuditorConfig(policy=policy, trusted_keys={keys.PUBLIC}))
    keyless = await auditors(AuditorConfig(policy=Policy(grace_s=1, silence_s=600)))
    now = time.time()
    names = {}
    for i, case in enumerate(CASES):
        names[case.name] = node = f"case-{i}"
        await case.run(events, node, now)

    def want(auditor: Auditor, wanted: set[tuple[str, str]], node: str) -> set[tuple[str, str]]:
        return {(o.format(node=node), p) for o, p in wanted}

    def settled() -> bool:
        return all(
            open_keys(keyed, names[c.name]) == want(keyed, c.keyed, names[c.name])
            and open_keys(keyless, names[c.name]) == want(keyless, c.keyless, names[c.name])
            for c in CASES
        )

    with contextlib.suppress(AssertionError):  # the counts below say which case
        await until(settled, timeout=30)
    ok = 0
    for case in CASES:
        node = names[case.name]
        got = (open_keys(keyed, node), open_keys(keyless, node))
        expected = (want(keyed, case.keyed, node), want(keyless, case.keyless, node))
        good = got == expected
        if good and case.actual_has:
            (item,) = keyed.view.node(node).open_items()
            good = case.actual_has in str(item.actual)
        print(f"  {case.name}: {'ok' if good else f'FAILED: {got} != {expected}'}")
        ok += good
    print(f"messages judged by what nodes really run: {ok}/{len(CASES)}")
    assert ok == len(CASES)

    # The misaddressed bodies: no view of any node they named, 4 bad messages reported.
    lied = names["a body naming another node"]
    reply = await keyed.check(None, live=False)
    shown = {n.node for n in reply.nodes}
    assert f"{lied}-other" in shown  # registered on its own subject: judged, and clean
    assert not keyed.view.node(f"{lied}-other").open_items()
    assert keyed.bad_messages == keyless.bad_messages == 4

    # Defect 2's auditor half: `l2net audit` sees the step back and exits 2, naming it.
    stale = names["stale intent applied after a restart"]
    result = await asyncio.to_thread(l2net, "audit", stale, "--cached", url=nats_server.url)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"~ node/{stale}.generation: desired 2, actual 1" in result.stdout
    assert "generation 2 desired, 1 applied" in result.stdout


async def test_an_intent_for_a_node_that_never_registered_is_a_stray_reported_once(
    events: Bus, auditors: AuditorFactory, nats_server: natsserver.EmbeddedNats
) -> None:
    await events.register("node-1")
    await converge(events, seed_intent("node-1", 1), time.time() - 5)
    ghosts = [f"ghost-{i}" for i in range(5)]
    for ghost in ghosts:
        await events.intent(seed_intent(ghost, 3), register=False)
    # What an older auditor published for one of them: "stuck", open for ever.
    old = DriftReport(
        node="ghost-0",
        generation=3,
        items=[
            DriftItem(object="node/ghost-0", path="generation", desired=3, actual=0, first_seen=T0)
        ],
        at=T0,
        open=1,
    )
    await events.js.publish(subjects.drift("ghost-0"), bus.encode(old))
    auditor = await auditors(AuditorConfig(policy=Policy(grace_s=0.5)))
    await asyncio.sleep(0.6)  # past the grace: after a tick a judged node would be "stuck"
    await auditor.tick()
    late = await auditors(AuditorConfig(policy=Policy(grace_s=0.5)))  # replays them
    ok = 0
    for ghost in ghosts:
        reply = await auditor.check(None, live=False)
        one = await auditor.check(ghost, live=False)
        reported = [n for n in reply.notes if f"'{ghost}'" in n]
        good = (
            reply.ok
            and not reply.drift
            and ghost not in {n.node for n in reply.nodes}
            and len(reported) == 1
            and "never registered" in reported[0]
            and not one.ok
            and "never registered" in str(one.errors[0])
            and ghost in late.view.strays()
        )
        ok += good
    drift = [r for r in await events.drift_reports() if r.node.startswith("ghost")]
    print(f"strays reported once, never drift: {ok}/{len(ghosts)} (drift reports: {len(drift)})")
    assert ok == len(ghosts)
    # Nothing new opened for a stray; the old open finding was closed once, at its start.
    assert [(r.node, [(i.first_seen, i.resolved_at) for i in r.items]) for r in drift] == [
        ("ghost-0", [(T0, None)]),
        ("ghost-0", [(T0, T0)]),
    ]
    result = await asyncio.to_thread(l2net, "audit", "--cached", url=nats_server.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("note: stray") == len(ghosts)


async def test_a_heartbeat_body_naming_another_node_registers_nobody(
    events: Bus, auditors: AuditorFactory
) -> None:
    # Registration is by subject: a body that says "node-2" on l2.node.node-1 is ignored.
    await events.js.publish(
        subjects.node("node-1"), bus.encode(Node(name="node-2", heartbeat_at=time.time()))
    )
    auditor = await auditors()
    assert auditor.registered() == [] and auditor.bad_messages == 1
