"""deploy/nats is least privilege in fact: every forbidden JetStream trick is denied.

A real nats-server runs the shipped configuration (``tests/deploy/test_nats.py``'s
``secured`` fixture: TLS, the accounts rendered for node-1 and node-2). Each user tries what
it must not be able to do; a denial is the server's own permissions violation for that
subject, and at the end nothing it tried is visible: no new stream, the executors' durable
consumers still there, every stream whole, ``L2_INTENTS`` holding only what the planner
published.

What each user needs (and so keeps) is proven by the services themselves running as those
users: tests/deploy/test_executor_permissions.py, tests/auditor/test_permissions.py and
test_nats.py's reading and submitting tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig

from shared.runtime import bus
from shared.wire import subjects
from tests.deploy.test_nats import SecuredNats, planner, secured  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(180)

INTENTS = subjects.STREAM_INTENTS
DURABLE_1 = "executor-node-1"
DURABLE_2 = "executor-node-2"


def _stream(name: str, **extra: Any) -> bytes:
    config = {"name": name, "subjects": [f"{name.lower()}.>"], "storage": "memory"} | extra
    return json.dumps(config).encode()


def _intents_with(**extra: Any) -> bytes:
    config = bus.STREAMS[INTENTS].as_dict() | extra
    return json.dumps(config).encode()


SOURCE_WITH_TRANSFORM = [
    {
        "name": subjects.STREAM_DRIFT,
        "subject_transforms": [{"src": "l2.drift.>", "dest": "l2.intent.>"}],
    }
]
PUSH_INTO_INTENTS = json.dumps(
    {
        "stream_name": subjects.STREAM_DRIFT,
        "config": {"deliver_subject": "l2.intent.node-1", "ack_policy": "none"},
    }
).encode()
HIJACK = json.dumps(
    {
        "stream_name": INTENTS,
        "config": {
            "name": DURABLE_1,
            "durable_name": DURABLE_1,
            "filter_subject": "l2.intent.node-1",
            "ack_policy": "explicit",
            "deliver_policy": "last_per_subject",
            "max_deliver": 1,
        },
    }
).encode()
API = "$JS.API"


@dataclass(frozen=True)
class Attempt:
    user: str
    what: str
    subject: str
    body: bytes = b""
    request: bool = True
    """A JetStream API request (answered when allowed); else a plain publish."""


def _everyone_but_the_planner(what: str, subject: str, body: bytes = b"") -> list[Attempt]:
    return [Attempt(u, what, subject, body) for u in ("operator", "auditor", "node-1")]


ATTEMPTS: list[Attempt] = [
    # The reported injection: a stream sourcing into L2_INTENTS with a subject transform.
    *_everyone_but_the_planner(
        "add a transformed source to L2_INTENTS",
        f"{API}.STREAM.UPDATE.{INTENTS}",
        _intents_with(sources=SOURCE_WITH_TRANSFORM),
    ),
    *_everyone_but_the_planner(
        "create a stream sourcing with a subject transform",
        f"{API}.STREAM.CREATE.SNEAK",
        _stream("SNEAK", sources=SOURCE_WITH_TRANSFORM),
    ),
    *_everyone_but_the_planner(
        "create a stream republishing into l2.intent",
        f"{API}.STREAM.CREATE.ECHO",
        _stream("ECHO", republish={"src": "echo.>", "dest": "l2.intent.>"}),
    ),
    Attempt(
        "auditor",
        "update L2_DRIFT to republish into l2.intent",
        f"{API}.STREAM.UPDATE.{subjects.STREAM_DRIFT}",
        json.dumps(
            bus.STREAMS[subjects.STREAM_DRIFT].as_dict()
            | {"republish": {"src": "l2.drift.>", "dest": "l2.intent.>"}}
        ).encode(),
    ),
    # Consumers: deleting, hijacking or draining an executor's durable consumer.
    *_everyone_but_the_planner(
        "delete node-1's executor consumer", f"{API}.CONSUMER.DELETE.{INTENTS}.{DURABLE_1}"
    ),
    Attempt("node-2", "delete node-1's consumer", f"{API}.CONSUMER.DELETE.{INTENTS}.{DURABLE_1}"),
    Attempt("planner", "delete a consumer", f"{API}.CONSUMER.DELETE.{INTENTS}.{DURABLE_2}"),
    Attempt(
        "operator",
        "redefine node-1's consumer",
        f"{API}.CONSUMER.CREATE.{INTENTS}.{DURABLE_1}.l2.intent.node-1",
        HIJACK,
    ),
    Attempt(
        "auditor",
        "redefine node-1's consumer",
        f"{API}.CONSUMER.CREATE.{INTENTS}.{DURABLE_1}.l2.intent.node-1",
        HIJACK,
    ),
    Attempt(
        "auditor",
        "create a durable consumer (legacy subject)",
        f"{API}.CONSUMER.DURABLE.CREATE.{INTENTS}.sneaky",
    ),
    Attempt("operator", "pull node-1's intents", f"{API}.CONSUMER.MSG.NEXT.{INTENTS}.{DURABLE_1}"),
    Attempt("auditor", "pull node-1's intents", f"{API}.CONSUMER.MSG.NEXT.{INTENTS}.{DURABLE_1}"),
    Attempt("node-2", "pull node-1's intents", f"{API}.CONSUMER.MSG.NEXT.{INTENTS}.{DURABLE_1}"),
    Attempt(
        "auditor",
        "ack on node-1's consumer",
        f"$JS.ACK.{INTENTS}.{DURABLE_1}.1.1.1.0.0",
        request=False,
    ),
    Attempt(
        "operator",
        "create a push consumer delivering into l2.intent",
        f"{API}.CONSUMER.CREATE.{subjects.STREAM_DRIFT}",
        PUSH_INTO_INTENTS,
    ),
    Attempt(
        "node-1",
        "create a push consumer delivering into l2.intent",
        f"{API}.CONSUMER.CREATE.{subjects.STREAM_DRIFT}",
        PUSH_INTO_INTENTS,
    ),
    # Deleting and purging streams or messages: no one, the planner included.
    *[
        Attempt(user, f"{verb} {stream}", f"{API}.STREAM.{verb}.{stream}", body)
        for user in ("operator", "auditor", "node-1", "planner")
        for verb, stream, body in (
            ("DELETE", INTENTS, b""),
            ("PURGE", INTENTS, b""),
            ("MSG.DELETE", INTENTS, b'{"seq": 1}'),
            ("PURGE", subjects.STREAM_STATUS, b'{"filter": "l2.status.node-2"}'),
            ("DELETE", subjects.STREAM_SPECS, b""),
        )
    ],
    # Publishing intents: only the planner.
    *[
        Attempt(user, "publish an intent", subjects.intent(node), b"{}", request=False)
        for user in ("operator", "auditor", "node-1", "node-2")
        for node in ("node-1", "node-2")
    ],
]


async def _violations(errors: list[str], subject: str) -> int:
    wanted = f'permissions violation for publish to "{subject.lower()}"'
    return sum(wanted in e.lower() for e in errors)


async def _try(server: SecuredNats, nc: Client, attempt: Attempt) -> bool:
    """Whether the server denied ``attempt``: its own violation for that subject, and no
    answer (a request is given up as soon as the violation is seen: no answer can follow)."""
    errors = server.errors.setdefault(attempt.user, [])
    before = await _violations(errors, attempt.subject)
    answer: asyncio.Task[Any] | None = None
    if attempt.request:
        answer = asyncio.create_task(nc.request(attempt.subject, attempt.body, timeout=5))
    else:
        await nc.publish(attempt.subject, attempt.body)
        await nc.flush()
    try:
        for _ in range(250):  # -ERR arrives asynchronously
            if answer is not None and answer.done() and answer.exception() is None:
                return False  # answered: the server served it
            if await _violations(errors, attempt.subject) > before:
                return True
            await asyncio.sleep(0.02)
        return False
    finally:
        if answer is not None and not answer.done():
            answer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await answer


@pytest.fixture
async def users(
    secured: SecuredNats,  # noqa: F811
    planner: Client,  # noqa: F811
) -> AsyncIterator[dict[str, Client]]:
    """A connection per user, once each executor made its durable consumer."""
    conns = {"planner": planner}
    for user in ("operator", "auditor", "node-1", "node-2"):
        conns[user] = await secured.connect(user)
    for node, durable in (("node-1", DURABLE_1), ("node-2", DURABLE_2)):
        await (
            conns[node]
            .jetstream(timeout=5)
            .add_consumer(
                INTENTS,
                ConsumerConfig(
                    name=durable, durable_name=durable, filter_subject=subjects.intent(node)
                ),
            )
        )
    try:
        yield conns
    finally:
        for user, nc in conns.items():
            if user != "planner":
                await nc.close()


async def test_every_forbidden_jetstream_trick_is_denied(
    secured: SecuredNats,  # noqa: F811
    users: dict[str, Client],
) -> None:
    held = 0
    for attempt in ATTEMPTS:
        if await _try(secured, users[attempt.user], attempt):
            held += 1
        else:
            print(f"NOT DENIED: {attempt.user}: {attempt.what} ({attempt.subject})")

    # Nothing any of them tried is visible.
    js = users["planner"].jetstream(timeout=5)
    names = {s.config.name for s in await js.streams_info()}
    intents = await js.stream_info(INTENTS, subjects_filter=">")
    consumers = {c.name for c in await js.consumers_info(INTENTS)}
    status = await js.stream_info(subjects.STREAM_STATUS)
    whole = (
        names == set(bus.STREAMS)
        and intents.state.subjects == {"l2.intent.node-1": 1, "l2.intent.node-2": 1}
        and intents.config.sources is None
        and {DURABLE_1, DURABLE_2} <= consumers
        and status.config.name == subjects.STREAM_STATUS
    )
    print(f"expected permission denials hold: {held}/{len(ATTEMPTS)}")
    assert whole, (names, intents.state.subjects, intents.config.sources, consumers)
    assert held == len(ATTEMPTS)


async def test_only_the_planner_creates_and_updates_streams(
    secured: SecuredNats,  # noqa: F811
    users: dict[str, Client],
) -> None:
    js = users["planner"].jetstream(timeout=5)
    await bus.ensure_streams(js, list(bus.STREAMS))  # update of all six: allowed
    # What it may not do either: delete (retention is the streams' own limits).
    assert await _try(
        secured, users["planner"], Attempt("planner", "delete", f"{API}.STREAM.DELETE.L2_NODES")
    )
    assert subjects.STREAM_NODES in {s.config.name for s in await js.streams_info()}


async def test_the_auditors_ephemeral_consumers_never_make_an_intent(
    secured: SecuredNats,  # noqa: F811
    users: dict[str, Client],
) -> None:
    """What the auditor keeps (ephemeral consumers, to read) cannot put a message on another
    node's ``l2.intent.<node>`` subject: a push consumer's copies keep their own subjects
    (l2.drift.* copies are never on an executor's filter; an intent's copy is that same
    signed intent again), or the server refuses the consumer as a cycle."""
    auditor = users["auditor"]
    ajs = auditor.jetstream(timeout=5)
    await ajs.publish(subjects.drift("node-1"), b'{"forged": "via a consumer"}')
    copies = await auditor.subscribe("l2.intent.node-1")  # interest: a push consumer delivers
    made = 0
    for stream, filter_subject in (
        (subjects.STREAM_DRIFT, subjects.drift("node-1")),
        (INTENTS, subjects.intent("node-2")),
    ):
        try:
            await ajs.add_consumer(
                stream,
                ConsumerConfig(deliver_subject="l2.intent.node-1", filter_subject=filter_subject),
            )
        except Exception as exc:
            print(f"{stream}: refused ({exc})")
            continue
        made += 1
        copy = await copies.next_msg(timeout=10)  # delivered (so stored, if anywhere)
        print(f"{stream}: a copy of {copy.subject} delivered to l2.intent.node-1")
    js = users["planner"].jetstream()
    for _ in range(100):  # the drift report's copy is stored, under its own subject
        held = (await js.stream_info(INTENTS, subjects_filter=">")).state.subjects or {}
        if held.get(subjects.drift("node-1")) or not made:
            break
        await asyncio.sleep(0.1)
    print(f"L2_INTENTS subjects after {made} push consumer(s): {held}")
    assert held.get("l2.intent.node-1") == 1  # only the planner's
    last = await js.get_last_msg(INTENTS, "l2.intent.node-1")
    assert json.loads(last.data or b"") == {"node": "node-1"}
