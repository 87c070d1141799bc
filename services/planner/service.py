"""The planner service: submissions in, stored specs and per-node intents out.

Any number of planners may run at once (the queue group ``l2net-planner`` spreads requests
among them); users run two for availability. Model of operation:

1. At start it creates (or updates to l2net's configuration) all six streams (executors'
   least-privilege NATS users may not), then follows three of them live with ordered
   consumers: ``L2_SPECS`` (the last record of every object, then every new one),
   ``L2_INTENTS`` (the last intent of every node, then every new one) and ``L2_NODES``.
   Everything it knows comes from these followers: the catalog, every subject's last stream
   sequence, every node's generation. It keeps nothing that JetStream does not hold, so two
   planners hold the same state.
2. Before it validates or answers (``get``, ``nad``, ``switch``), it waits until every
   follower has reached the end of its stream (:meth:`Planner.catch_up`): what another
   planner stored a moment ago is seen.
3. Every write expects its subject's last sequence (``Nats-Expected-Last-Subject-Sequence``):
   the spec records of a submission (one atomic batch) and each intent. When JetStream
   refuses one because another planner wrote first, the planner catches up, validates and
   compiles again against the new state and retries, at most :data:`MAX_ATTEMPTS` times, then
   answers a clear error. A submission is answered ``ok`` only once it is stored and every
   node's intent reflecting it is published (by this planner or, equal, by another).
4. A node's next generation is above every generation seen on its subject and above the
   ``appliedGeneration`` the node reports (so generations move forward even if
   ``L2_INTENTS`` was lost).
5. A message that does not decode (or whose body names another subject than its own) is
   logged once and skipped; its stream sequence still counts for the expectations above, and
   the last good message before it on the same subject stands.

``l2.api.plan`` validates a submission exactly as ``l2.api.apply`` does, then answers what
each node's executor would do with it (:mod:`services.planner.impact`), storing nothing and
publishing nothing; the lock is held for the validation only, not while it asks executors.

It registers as a NATS micro service (``nats micro ls`` shows ``l2net-planner``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from nats import errors as nats_errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError
from nats.micro.request import Request
from nats.micro.service import Service

from services.planner import compiling, impact, manifests, validation
from services.planner.catalog import Catalog, Entry
from shared.domain import model
from shared.domain.errors import Busy, Code
from shared.domain.l2state import (
    NodeL2State,
    Refusal,
    StateError,
    desired_state,
    state_from_observed,
)
from shared.runtime import bus, tracing
from shared.wire import api, signing, subjects

log = logging.getLogger("l2net.planner")

B = TypeVar("B")
R = TypeVar("R")

MAX_ATTEMPTS = 10
"""Tries of one write refused because another planner wrote first (each after catching up)."""

BACKOFF_S = 0.01
"""Longest random pause before the second try of a refused write; before try n, n times it."""

CATCH_UP_S = 15.0
"""How long a request may wait for the followers to reach the end of their streams."""

WATCH_S = 5.0
"""How often an idle planner makes sure its followers still follow (see ``_work``)."""

STREAMS_WAIT_S = 30.0
"""How long the planner tries to place its streams' replicas at start (a cluster forming)."""

INSUFFICIENT_RESOURCES = 10023
"""JetStream's error code for replicas it cannot place (too few servers, or not yet)."""

STALL_S = 2.0
"""How long a follower's consumer may claim, with nothing pending, a delivery this follower
has not handled before the follower makes a new consumer (see ``caught_up``)."""

MAX_PROBLEMS = 100
"""Problems listed in one reply; the rest are counted ("... and N more")."""

REPLY_MARGIN = 4096
"""Room left under the server's max_payload for a reply's headers (trace context)."""

MAX_BATCH = 1000
"""Records in one atomic JetStream batch (the server's limit): objects one submission changes."""

LIVE_STATE_S = 2.0
"""How long ``plan`` waits for a node's executor to answer its live state before it falls
back to the node's last observed state."""

GC_THRESHOLDS = (50_000, 20, 10)
"""The planner process's garbage collector thresholds (:func:`tune_gc`)."""


def tune_gc() -> None:
    """Collect garbage cycles every 50,000 allocations rather than Python's 700.

    A planner holds a large state for good (the catalog, every node's last intent) and
    makes thousands of objects per submission (an intent per node it touches): with the
    default thresholds the collector runs hundreds of times per submission of a 1000-node
    fleet and walks that state each time (about 0.1 s of 0.5, docs/benchmarks.md). The
    ``l2net planner`` process calls this at start; it is for a process, not a library.
    """
    gc.set_threshold(*GC_THRESHOLDS)


CONFLICT_MESSAGE = (
    "another planner kept changing the same objects or nodes at the same moment "
    f"({MAX_ATTEMPTS} tries, each after catching up with JetStream)"
)


@dataclass(frozen=True)
class Batch:
    """The spec records of one submission, ready to store (see :meth:`Planner._batch`)."""

    id: str
    keys: list[tuple[str, str]]
    messages: list[tuple[str, bytes, dict[str, str]]]


class Conflict(Busy):
    """Another writer got to a subject first: catch up, compile again, retry."""


class NotCaughtUp(bus.BusError):
    """A follower could not reach the end of its stream in time."""


class _Follower:
    """One ordered consumer on a stream: hands each message to ``handle``, never fails on
    one, and knows how far it got (:meth:`caught_up`)."""

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        subject: str,
        policy: DeliverPolicy,
        handle: Callable[[Msg], Awaitable[None]],
        *,
        track_stream: bool = False,
    ) -> None:
        self.js = js
        self.track_stream = track_stream
        """Keep :attr:`stream_seq` (one more request per catch-up)."""
        self.stream = stream
        self.subject = subject
        self.policy = policy
        self.handle = handle
        self.seq = 0
        """The stream sequence of the last message handled."""
        self.stream_seq = 0
        """The stream's last sequence when it was last found caught up: every message up to
        it is handled, or was deleted (then its sequence is still the stream's last)."""
        self._handled: tuple[str, int] = ("", 0)
        """The consumer (ordered consumers are recreated after a gap) and its delivery
        sequence of the last message handled."""
        self._progress = asyncio.Event()
        self._sub: Any = None

    async def start(self) -> None:
        """Follow from the start (``policy``), or from after the last message handled."""
        config = None
        if self.seq:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.seq + 1
            )
        self._sub = await self.js.subscribe(
            self.subject,
            stream=self.stream,
            cb=self._on_msg,
            ordered_consumer=True,
            config=config,
            deliver_policy=None if config else self.policy,
        )

    async def restart(self) -> None:
        """Follow again, from after the last message handled: the consumer is gone (it is
        ephemeral, and a restarted server forgets it)."""
        old, self._sub = self._sub, None
        if old is not None:
            with contextlib.suppress(Exception):
                await old.unsubscribe()
        log.info("%s: following again from sequence %d", self.stream, self.seq + 1)
        await self.start()

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.unsubscribe()

    async def _on_msg(self, msg: Msg) -> None:
        try:
            # A consumer made again may deliver what was handled already: never go back.
            if msg.metadata.sequence.stream > self.seq:
                await self.handle(msg)
        except Exception:  # a message from outside must never stop the follower
            log.exception(
                "%s: skipped a message on %s that could not be used", self.stream, msg.subject
            )
        finally:
            meta = msg.metadata
            self.seq = max(self.seq, meta.sequence.stream)
            self._handled = (meta.consumer or "", meta.sequence.consumer)
            self._progress.set()

    async def reached(self, seq: int, deadline: float) -> None:
        """Return once the message at stream sequence ``seq`` (or a later one) is handled."""
        loop = asyncio.get_running_loop()
        while self.seq < seq:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NotCaughtUp(f"stream {self.stream} not read up to sequence {seq}")
            self._progress.clear()
            if self.seq >= seq:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), min(0.2, remaining))

    async def caught_up(self, deadline: float) -> None:
        """Return once every message the stream held when this was called is handled.

        The consumer's own count is the measure (nothing pending, and the last message it
        delivered handled), so a deleted or purged last message does not make it wait.
        """
        loop = asyncio.get_running_loop()
        stalled_at: float | None = None
        while True:
            self._progress.clear()
            try:
                if self._sub is None:  # a restart below failed (NATS unreachable): again
                    await self.start()
                # Asked first: whatever the stream held then is delivered once the consumer
                # (asked after) has nothing pending.
                last = 0
                if self.track_stream:
                    last = (await self.js.stream_info(self.stream)).state.last_seq
                info = await self._sub.consumer_info()
            except NotFoundError:
                # Gone with a server restart: nats-py would notice only after missed
                # heartbeats (seconds); make it again now.
                reason: str = "its consumer was gone"
                with contextlib.suppress(Exception):
                    await self.restart()
                    continue
            except Exception as exc:  # e.g. no answer while NATS is unreachable
                reason = f"{type(exc).__name__}: {exc}"
            else:
                delivered = (info.delivered.consumer_seq if info.delivered else 0) or 0
                handled = self._handled[1] if self._handled[0] == info.name else 0
                if not info.num_pending and handled >= delivered:
                    self.stream_seq = max(self.stream_seq, last)
                    return
                reason = f"at sequence {self.seq}, {info.num_pending} pending"
                if info.num_pending:
                    stalled_at = None
                elif stalled_at is None:
                    stalled_at = loop.time()
                elif loop.time() - stalled_at > STALL_S:
                    # The consumer says it delivered what this follower never handled (seen
                    # once after an outage, under load: every request then waited in vain).
                    # A new consumer from the last handled message delivers it again.
                    log.warning(
                        "%s: consumer delivered %d, %d handled; following again",
                        self.stream,
                        delivered,
                        handled,
                    )
                    stalled_at = None
                    with contextlib.suppress(Exception):
                        await self.restart()
                        continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NotCaughtUp(f"could not catch up with stream {self.stream} ({reason})")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), min(0.2, remaining))


class Planner:
    """The planner on connection ``nc``; every intent it publishes is signed with
    ``signing_seed`` (an nkeys seed, :mod:`shared.wire.signing`), which executors verify.
    ``stream_replicas``: how many servers keep each stream (see :func:`bus.ensure_streams`;
    3 on a production cluster; None keeps what the streams have, one for a new stream)."""

    def __init__(
        self, nc: Client, *, signing_seed: str, stream_replicas: int | None = None
    ) -> None:
        self.signing_key = signing.public_key(signing_seed)  # a bad seed fails here, at once
        self._seed = signing_seed
        self._replicas = stream_replicas
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        # Everything below is what the followers read from JetStream.
        self._entries: dict[tuple[str, str], Entry] = {}
        self.nodes: dict[str, model.Node] = {}
        self.spec_seq: dict[tuple[str, str], int] = {}
        """Last stream sequence of each spec subject (a record that did not decode too)."""
        self.last_revision = 0
        self.intents: dict[str, model.NodeIntent] = {}
        """The last intent of each node that decoded (what its generation is counted from)."""
        self.intent_seq: dict[str, int] = {}
        """Last stream sequence of each node's intent subject (a bad message too)."""
        self.max_generation: dict[str, int] = {}
        """The highest generation seen on each node's subject."""
        self._current: dict[str, model.NodeIntent | None] = {}
        """The intent each node's subject ends with, None when that message is bad."""
        self.skipped: deque[tuple[str, int]] = deque(maxlen=1000)
        """The last messages skipped because they do not decode: (subject, stream sequence)."""
        self.served = 0
        """Requests answered (tests count how the queue group spread them)."""
        self.conflicts = 0
        """Writes JetStream refused because another writer was first (then retried)."""

        self._sent: dict[str, tuple[bytes, model.NodeIntent]] = {}
        """The last intent this planner published to each node (its bytes, and itself):
        when the follower reads those very bytes back, it takes the intent as it is."""
        self._agreed: dict[str, tuple[model.NodeIntent, model.NodeIntent]] = {}
        """Per node, its last intent and its compiled state, last found equal."""
        self._catalog: Catalog | None = None
        """:attr:`catalog`, until a follower changes ``_entries`` or ``nodes``."""
        self._compiler = compiling.IncrementalCompiler()
        """Recompiles only the nodes a change may affect (see :meth:`_publish_intents`)."""
        self._lock = asyncio.Lock()
        self._followers: list[_Follower] = []
        self._service: Service | None = None
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    @property
    def catalog(self) -> Catalog:
        """The current state as a value (a snapshot: later messages do not change it).

        The same value until a follower changes an object or a node, so that what is derived
        from it (its indexes, its validation, the compiler's parts) is computed once."""
        if self._catalog is None:
            self._catalog = Catalog(entries=dict(self._entries), nodes=dict(self.nodes))
        return self._catalog

    # -- start, follow, catch up --------------------------------------------------------

    async def start(self) -> None:
        """Follow the streams, catch up, publish what nodes lack, then answer requests."""
        await self._follow()
        self._worker = asyncio.create_task(self._work(), name="l2net-planner-intents")
        self._service = await bus.serve(
            self.nc,
            name="l2net-planner",
            description="Validates l2net submissions and compiles per-node intents",
            queue_group="l2net-planner",
            endpoints=[
                ("apply", subjects.API_APPLY, self._handle_apply),
                ("plan", subjects.API_PLAN, self._handle_plan),
                ("delete", subjects.API_DELETE, self._handle_delete),
                ("get", subjects.API_GET, self._handle_get),
                ("nad", subjects.API_NAD, self._handle_nad),
                ("switch", subjects.API_SWITCH, self._handle_switch),
            ],
        )
        log.info("planner ready: %d objects, %d nodes", len(self._entries), len(self.nodes))

    async def stop(self) -> None:
        """Stop answering and following (idempotent)."""
        service, self._service = self._service, None
        worker, self._worker = self._worker, None
        followers, self._followers = self._followers, []
        if service is not None:
            await service.stop()
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        for follower in followers:
            await follower.stop()

    async def _ensure_streams(self) -> None:
        """Create or update the six streams. A server still starting or a cluster still
        forming times out or answers 503: tried again with backoff, for ever (a planner
        started beside its servers must not die). JetStream refusing to place the replicas
        asked (``insufficient resources``: a cluster forming, or too few servers) is tried
        again for ``STREAMS_WAIT_S``, then is an error naming it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STREAMS_WAIT_S
        tries = 0
        while True:
            try:
                await bus.ensure_streams(self.js, list(bus.STREAMS), replicas=self._replicas)
                return
            except Exception as exc:
                placing = isinstance(exc, APIError) and exc.err_code == INSUFFICIENT_RESOURCES
                if placing and loop.time() >= deadline:
                    raise self._streams_error(exc) from exc
                if not placing and not bus.is_outage(exc):
                    if isinstance(exc, APIError):  # e.g. replicas on a server not clustered
                        raise self._streams_error(exc) from exc
                    raise
                wait = bus.reconnect_wait(tries)
                tries += 1
                log.warning("streams not ready (%s): again in %.1f s", exc, wait)
                await asyncio.sleep(wait)

    def _streams_error(self, exc: Exception) -> bus.BusError:
        return bus.BusError(
            f"cannot create or update the l2net streams ({self._replicas or 'keeping'}"
            f" replicas): {exc}"
        )

    async def _follow(self) -> None:
        """Create the streams and follow three of them, caught up (idempotent)."""
        if self._followers:
            return
        # All six streams, not only those it writes: under deploy/nats the executors' users
        # may not create streams, so a fleet works once the planner has started.
        await self._ensure_streams()
        last = DeliverPolicy.LAST_PER_SUBJECT
        followers = [  # L2_SPECS first: see _publish_intents
            _Follower(
                self.js,
                subjects.STREAM_SPECS,
                subjects.ALL_SPECS,
                last,
                self._on_spec,
                track_stream=True,
            ),
            _Follower(
                self.js, subjects.STREAM_INTENTS, subjects.ALL_INTENTS, last, self._on_intent
            ),
            _Follower(self.js, subjects.STREAM_NODES, subjects.ALL_NODES, last, self._on_node),
        ]
        try:
            for follower in followers:
                await follower.start()
        except BaseException:
            for follower in followers:
                with contextlib.suppress(Exception):
                    await follower.stop()
            raise
        self._followers = followers
        await self.catch_up()

    async def catch_up(self) -> None:
        """Wait until every follower has handled everything its stream held when called."""
        if not self._followers:
            await self._follow()
            return
        deadline = asyncio.get_running_loop().time() + CATCH_UP_S
        await asyncio.gather(*(f.caught_up(deadline) for f in self._followers))

    def _skip(self, msg: Msg, why: str) -> None:
        """Report a message that cannot be used, once (each message is handled once)."""
        seq = msg.metadata.sequence.stream
        self.skipped.append((msg.subject, seq))
        log.warning("skipping message %d on %s: %s", seq, msg.subject, why[:300])

    async def _history(self, stream: str, subject: str) -> list[Msg]:
        """Every message ``stream`` still holds on ``subject``, oldest first."""
        return await bus.read_stream(self.js, stream, subject)

    # -- the followers' handlers ------------------------------------------------------

    def _decode_spec(
        self, msg: Msg, *, report: bool = True
    ) -> tuple[bool, api.SpecRecord | None, model.Spec | None]:
        """(usable, record, spec; spec None for a tombstone): a record whose subject, kind or
        spec does not hold is not usable (trust the subject, not the body). ``report``: say
        so (False for history already reported)."""
        skip = self._skip if report else _quiet
        parts = msg.subject.split(".", 3)
        if len(parts) != 4:
            skip(msg, "not an l2.spec.<kind>.<name> subject")
            return False, None, None
        _, _, kind, name = parts
        try:
            record = bus.decode(msg.data, api.SpecRecord)
        except msgspec.DecodeError as exc:
            skip(msg, f"not a spec record: {exc}")
            return False, None, None
        if (record.kind, record.name) != (kind, name):
            skip(msg, f"the record names {record.kind} {record.name}, not its subject")
            return False, None, None
        if record.op == "delete":
            return True, record, None
        cls = model.USER_KINDS.get(kind)
        if record.op != "put" or record.spec is None or cls is None:
            skip(msg, f"unknown op {record.op!r} or kind {kind!r}, or no spec")
            return False, None, None
        try:
            spec = msgspec.convert(record.spec, type=cls)
        except msgspec.ValidationError as exc:
            skip(msg, f"the spec is not a {kind}: {exc}")
            return False, None, None
        if spec.name != name:
            skip(msg, f"the spec is named {spec.name!r}, not {name!r}")
            return False, None, None
        return True, record, spec

    async def _on_spec(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        usable, record, spec = self._decode_spec(msg)
        parts = msg.subject.split(".", 3)
        key = (parts[2], parts[3]) if len(parts) == 4 else ("", msg.subject)
        first_seen = key not in self.spec_seq
        self.spec_seq[key] = max(self.spec_seq.get(key, 0), seq)
        self.last_revision = max(self.last_revision, seq)
        if not usable:
            if first_seen:
                # Only the last record of the subject was delivered: the last good one
                # before it stands (a bad write must not delete an object from nodes).
                await self._recover_spec(key, msg.subject, seq)
            return
        assert record is not None
        self._put_record(key, seq, record, spec)

    def _put_record(
        self, key: tuple[str, str], seq: int, record: api.SpecRecord, spec: model.Spec | None
    ) -> None:
        self._catalog = None
        if spec is None:
            self._entries.pop(key, None)
        else:
            self._entries[key] = Entry(spec=spec, revision=seq, created=record.created)

    async def _recover_spec(self, key: tuple[str, str], subject: str, before: int) -> None:
        found = False
        for old in await self._history(subjects.STREAM_SPECS, subject):
            seq = old.metadata.sequence.stream
            if seq >= before:
                break
            usable, record, spec = self._decode_spec(old, report=False)
            if usable and record is not None:
                self._put_record(key, seq, record, spec)
                found = True
        log.warning(
            "%s: its last record does not decode; %s",
            subject,
            "the last good one before it stands" if found else "no good record before it",
        )

    def _decode_intent(self, msg: Msg, *, report: bool = True) -> model.NodeIntent | None:
        """The intent, or None when it does not decode or names another node than its
        subject does (trust the subject, not the body)."""
        skip = self._skip if report else _quiet
        node = subjects.last_token(msg.subject)
        try:
            intent = bus.decode(msg.data, model.NodeIntent)
        except msgspec.DecodeError as exc:
            skip(msg, f"not an intent: {exc}")
            return None
        if intent.node != node:
            skip(msg, f"the intent names node {intent.node!r}, not its subject's")
            return None
        return intent

    async def _on_intent(self, msg: Msg) -> None:
        node = subjects.last_token(msg.subject)
        seq = msg.metadata.sequence.stream
        first_seen = node not in self.intent_seq
        self.intent_seq[node] = max(self.intent_seq.get(node, 0), seq)
        mine = self._sent.pop(node, None)
        if mine is not None and mine[0] == msg.data:
            intent: model.NodeIntent | None = mine[1]  # the very bytes: no need to decode
        else:
            intent = self._decode_intent(msg)
        self._current[node] = intent
        if intent is None:
            if first_seen:
                await self._recover_intents(node, msg.subject, seq)
            return
        self._take_intent(node, intent)

    def _take_intent(self, node: str, intent: model.NodeIntent) -> None:
        self.intents[node] = intent
        self.max_generation[node] = max(self.max_generation.get(node, 0), intent.generation)

    async def _recover_intents(self, node: str, subject: str, before: int) -> None:
        """The last message of a node's subject is bad: count generations from the good
        ones before it, so that the next generation is above all of them."""
        for old in await self._history(subjects.STREAM_INTENTS, subject):
            if old.metadata.sequence.stream >= before:
                break
            intent = self._decode_intent(old, report=False)
            if intent is not None:
                self._take_intent(node, intent)

    async def _on_node(self, msg: Msg) -> None:
        name = subjects.last_token(msg.subject)
        try:
            node = bus.decode(msg.data, model.Node)
        except msgspec.DecodeError as exc:
            self._skip(msg, f"not a node: {exc}")
            return
        if node.name != name:
            self._skip(msg, f"the body names node {node.name!r}, not its subject's")
            return
        old = self.nodes.get(name)
        self.nodes[name] = node
        self._catalog = None
        changed = old is None or (old.labels, old.nics, old.mgmt_vlan) != (
            node.labels,
            node.nics,
            node.mgmt_vlan,
        )
        if changed:
            log.info("node %s %s", name, "changed" if old else "joined")
        if changed or node.applied_generation > self.max_generation.get(name, 0):
            # Published by the worker, never here: publishing catches up with this very
            # follower, which would wait for itself.
            self._dirty.add(name)
            self._wake.set()

    async def _work(self) -> None:
        """Publish the intents of nodes that joined or changed (retried until it works).

        When idle for :data:`WATCH_S`, it catches up: a follower whose consumer a restarted
        server forgot is made again then, not only at the next request (a node joining
        after an outage, with no submission since, still gets its intent)."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), WATCH_S)
            except TimeoutError:
                try:
                    async with self._lock:
                        await self.catch_up()
                except Exception as exc:  # NATS still away: again after the next WATCH_S
                    log.debug("idle catch-up: %s", exc)
                continue
            self._wake.clear()
            nodes, self._dirty = sorted(self._dirty), set()
            try:
                async with self._lock:
                    await self._publish_intents(nodes)
            except Exception as exc:  # never let the worker die: retry after a pause
                log.warning("intents of %s not published yet (%s); retrying", nodes, exc)
                self._dirty.update(nodes)
                await asyncio.sleep(1.0)
                self._wake.set()

    # -- requests ---------------------------------------------------------------------

    async def _respond(self, req: Request, reply: Any) -> None:
        """Send ``reply``, made to fit under the server's max_payload whatever it holds."""
        self.served += 1
        limit = max(self.nc.max_payload - REPLY_MARGIN, 1024)
        await req.respond(fit_reply(reply, limit))

    async def _answer(
        self,
        req: Request,
        subject: str,
        reply_type: Callable[..., R],
        answer: Callable[[], Awaitable[R]],
    ) -> None:
        """Answer a request; a failure to reach JetStream is an error reply naming it."""
        with tracing.process_span(subject, req.headers):
            try:
                reply = await answer()
            except (bus.BusError, OSError, TimeoutError, APIError) as exc:
                log.warning("%s: %s", subject, exc)
                problem = api.Problem(
                    code=Code.UNAVAILABLE,
                    message=f"the planner cannot use JetStream now: {exc}",
                )
                reply = reply_type(ok=False, errors=[problem])
        await self._respond(req, reply)

    async def _handle_apply(self, req: Request) -> None:
        await self._answer(req, subjects.API_APPLY, api.ApplyReply, lambda: self.apply(req.data))

    async def _handle_plan(self, req: Request) -> None:
        await self._answer(req, subjects.API_PLAN, api.PlanReply, lambda: self.plan(req.data))

    async def _serve(
        self,
        req: Request,
        subject: str,
        body_type: type[B],
        reply_type: Callable[..., Any],
        answer: Callable[[B], Awaitable[Any]],
    ) -> None:
        """Decode a JSON request body (empty: all defaults), answer it, reply in JSON; a body
        that does not decode (an unknown field included) gets ``reply_type(ok=False,
        errors=[...])`` naming what is wrong (:func:`shared.wire.api.bad_request`)."""

        async def run() -> Any:
            body = api.decode_request(req.data, body_type)
            if isinstance(body, api.Problem):
                return reply_type(ok=False, errors=[body])
            return await answer(body)

        await self._answer(req, subject, reply_type, run)

    async def _handle_delete(self, req: Request) -> None:
        async def answer(body: api.DeleteRequest) -> api.ApplyReply:
            return await self.delete(body.kind, body.name)

        await self._serve(req, subjects.API_DELETE, api.DeleteRequest, api.ApplyReply, answer)

    async def _handle_get(self, req: Request) -> None:
        async def answer(body: api.GetRequest) -> api.GetReply:
            await self.catch_up()
            return self.get(body.kind, body.name)

        await self._serve(req, subjects.API_GET, api.GetRequest, api.GetReply, answer)

    async def _handle_nad(self, req: Request) -> None:
        async def answer(body: api.NadRequest) -> api.NadReply:
            await self.catch_up()
            return self.nad(body.network)

        await self._serve(req, subjects.API_NAD, api.NadRequest, api.NadReply, answer)

    async def _handle_switch(self, req: Request) -> None:
        async def answer(body: api.SwitchRequest) -> api.SwitchReply:
            await self.catch_up()
            return self.switch_config(body.node)

        await self._serve(req, subjects.API_SWITCH, api.SwitchRequest, api.SwitchReply, answer)

    # -- the operations (also called directly by tests) ------------------------------

    async def _validate(
        self, text: bytes | str
    ) -> tuple[list[manifests.Document], list[api.Problem]]:
        """A submission's documents and its problems against the caught-up state (none:
        accepted): what apply and plan both refuse, in the same words. Call under the lock."""
        # One validate span for every check, each object alone then the whole state.
        with tracing.tracer().start_as_current_span("l2net.planner.validate") as span:
            try:
                docs = manifests.parse(text)
            except manifests.ManifestError as err:
                span.set_attribute("l2net.rejected", True)
                return [], err.problems
            networks = _cluster_networks(docs)
            if networks:
                tracing.annotate(span, cluster_network=",".join(networks))
            problems = self._check_documents(docs)
            if not problems:
                await self.catch_up()
                problems = self._state_problems(docs)
            if problems:
                span.set_attribute("l2net.rejected", True)
            return docs, problems

    async def apply(self, text: bytes | str) -> api.ApplyReply:
        """Validate a submission against the caught-up state, store it, publish intents."""
        async with self._lock:
            docs, problems = await self._validate(text)
            if problems:
                return refusal(problems)
            specs = [d.spec for d in docs]
            for attempt in range(MAX_ATTEMPTS):
                if attempt:
                    await _backoff(attempt)
                    # Another planner stored first: validate against what it stored.
                    await self.catch_up()
                    with tracing.tracer().start_as_current_span("l2net.planner.validate") as span:
                        problems = self._state_problems(docs)
                        if problems:
                            span.set_attribute("l2net.rejected", True)
                            return refusal(problems)
                changes, to_store = self._changes(specs)
                if len(to_store) > MAX_BATCH:
                    return refusal([too_many(len(to_store))])
                stored = 0
                if to_store:
                    try:
                        seqs = await self._store(
                            self._batch([(s.kind, s.name, s) for s in to_store])
                        )
                    except Conflict as exc:
                        self.conflicts += 1
                        log.info("submission: %s; catching up (try %d)", exc, attempt + 1)
                        continue
                    for change in changes:
                        change.revision = seqs.get((change.kind, change.name), change.revision)
                    stored = max(seqs.values())
                return await self._stored_reply(changes, stored=stored)
            return refusal(
                [
                    api.Problem(
                        code=Code.CONFLICT,
                        message=f"nothing was stored: {CONFLICT_MESSAGE}; submit again",
                    )
                ]
            )

    async def plan(self, text: bytes | str) -> api.PlanReply:
        """What :meth:`apply` of ``text`` would do, storing and publishing nothing: refused
        as apply refuses it, else each changed object and, for each node whose intent would
        change, the steps its executor would take against its actual state (asked from the
        executor, else its last observed state), each classified (:mod:`.impact`)."""
        async with self._lock:
            docs, problems = await self._validate(text)
            if problems:
                return api.PlanReply(ok=False, errors=cap_problems(problems))
            changes, to_store = self._changes([d.spec for d in docs])
            if len(to_store) > MAX_BATCH:
                return api.PlanReply(ok=False, errors=[too_many(len(to_store))])
            before = self.catalog
            after = before.with_changes(put=to_store, now=time.time())
            current = dict(self.intents)
        with tracing.tracer().start_as_current_span("l2net.planner.plan") as span:
            wanted = {
                node: compiling.compile_node(after, node)
                for node in sorted(compiling.affected_nodes(before, after) & set(after.nodes))
            }
            changed = [
                node
                for node, intent in wanted.items()
                if node not in current or not compiling.same_desired_state(current[node], intent)
            ]
            span.set_attribute("l2net.nodes", len(changed))
            # Every node's state first, then the pure work: planning nodes while the answers
            # of others wait would make their requests time out on a large fleet.
            states = await asyncio.gather(*(self._actual_state(n) for n in changed))
            nodes = [
                _plan_node(after.nodes[n], intent=wanted[n], current=current.get(n), state=st)
                for n, st in zip(changed, states, strict=True)
            ]
        return api.PlanReply(
            ok=True,
            changes=changes,
            nodes=nodes,
            summary=impact.summarize(nodes, objects=len(to_store)),
        )

    async def _actual_state(self, node: str) -> tuple[NodeL2State | None, api.StateSource, str]:
        """A node's actual state: asked from its executor now (``live``), else the last one
        it published on ``l2.observed.<node>`` (``observed``, with a note saying so), else
        none (``unknown``)."""
        try:
            reply = await self.nc.request(
                subjects.executor_control(node, "state"), b"", timeout=LIVE_STATE_S
            )
            return state_from_observed(bus.decode(reply.data, model.ObservedState)), "live", ""
        except Exception as exc:  # no executor, a timeout, an error reply: fall back
            why = _no_live_state(exc)
        try:
            raw = await self.js.get_last_msg(
                subjects.STREAM_OBSERVED, subjects.observed(node), direct=True
            )
            observed = bus.decode(raw.data or b"", model.ObservedState)
        except NotFoundError:
            return None, "unknown", f"no state known: {why}, and it never published one"
        except Exception as exc:  # a bad message, JetStream away: no state to plan from
            return None, "unknown", f"no state known: {why}, and its last one: {exc}"
        age = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(observed.at))
        note = f"{why}: planned against its last observed state, of {age}"
        return state_from_observed(observed), "observed", note

    async def delete(self, kind: str, name: str) -> api.ApplyReply:
        """Delete one object; ``kind`` in any case, singular or plural (``network``)."""
        kind = model.canonical_kind(kind) or kind
        async with self._lock:
            for attempt in range(MAX_ATTEMPTS):
                await _backoff(attempt)
                await self.catch_up()
                catalog = self.catalog
                problems = validation.check_delete(catalog, kind, name)
                if not problems:
                    candidate = catalog.with_changes(delete=[(kind, name)])
                    problems = _new_problems(catalog, candidate)
                if problems:
                    return refusal(problems)
                try:
                    seqs = await self._store(self._batch([(kind, name, None)]))
                except Conflict as exc:
                    self.conflicts += 1
                    log.info("delete: %s; catching up (try %d)", exc, attempt + 1)
                    continue
                change = api.Change(
                    kind=kind, name=name, action="deleted", revision=seqs[(kind, name)]
                )
                return await self._stored_reply([change], stored=change.revision)
            return refusal(
                [
                    api.Problem(
                        code=Code.CONFLICT,
                        message=f"nothing was deleted: {CONFLICT_MESSAGE}; try again",
                    )
                ]
            )

    async def _stored_reply(self, changes: list[api.Change], *, stored: int) -> api.ApplyReply:
        """Publish every node's intent now that the submission is stored (``stored``: its
        last stream sequence, 0 if nothing changed); ok only then."""
        try:
            generations, changed = await self._publish_intents(sorted(self.nodes), stored=stored)
        except (Conflict, bus.BusError, OSError, TimeoutError, APIError) as exc:
            # Stored, so not a refusal of the content; but not ok either: the nodes do not
            # have it yet. This planner's worker keeps trying; submitting again shows it.
            self._dirty.update(self.nodes)
            self._wake.set()
            why = CONFLICT_MESSAGE if isinstance(exc, Conflict) else str(exc)
            listed = ", ".join(f"{c.kind} {c.name} revision {c.revision}" for c in changes[:3])
            more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
            problem = api.Problem(
                code=Code.UNAVAILABLE,
                message=f"stored ({listed}{more}), but the nodes' intents are not all "
                f"published yet: {why}; the planner keeps trying (submit again to see "
                "every node's generation)",
            )
            return api.ApplyReply(ok=False, changes=changes, errors=[problem])
        return api.ApplyReply(ok=True, changes=changes, generations=generations, changed=changed)

    def _changes(self, specs: list[model.Spec]) -> tuple[list[api.Change], list[model.Spec]]:
        """Each submitted object's action against the current state, and those to store."""
        changes: list[api.Change] = []
        to_store: list[model.Spec] = []
        for spec in specs:
            current = self._entries.get((spec.kind, spec.name))
            if current is not None and current.spec == spec:
                changes.append(
                    api.Change(
                        kind=spec.kind,
                        name=spec.name,
                        action="unchanged",
                        revision=current.revision,
                    )
                )
                continue
            to_store.append(spec)
            action = "updated" if current is not None else "created"
            changes.append(api.Change(kind=spec.kind, name=spec.name, action=action))
        return changes, to_store

    def get(self, kind: str | None, name: str | None = None) -> api.GetReply:
        """The objects (and nodes) of the current state; call :meth:`catch_up` first.
        ``kind`` in any case, singular or plural, like kubectl (``network``, ``Networks``)."""
        if kind is not None:
            spelled = model.canonical_kind(kind)
            if spelled is None:
                known = ", ".join([*model.USER_KINDS, model.Node.kind])
                problem = api.Problem(
                    code=Code.INVALID,
                    field="kind",
                    message=f"unknown kind {kind!r} (known: {known})",
                )
                return api.GetReply(ok=False, errors=[problem])
            kind = spelled
        catalog = self.catalog
        items: list[api.Item] = []
        if kind in (None, model.ClusterNetwork.kind) and name in (None, model.MGMT):
            items.append(
                api.Item(
                    kind=model.ClusterNetwork.kind,
                    name=model.MGMT,
                    revision=0,
                    spec={"name": model.MGMT, "description": "built-in management network"},
                )
            )
        for (k, n), entry in catalog.items():
            if kind in (None, k) and name in (None, n):
                items.append(
                    api.Item(kind=k, name=n, revision=entry.revision, spec=_to_dict(entry.spec))
                )
        if kind in (None, model.Node.kind):
            for n, node in sorted(catalog.nodes.items()):
                if name in (None, n):
                    spec = _to_dict(node)
                    intent = self.intents.get(n)
                    spec["generation"] = intent.generation if intent else 0
                    items.append(api.Item(kind=model.Node.kind, name=n, revision=0, spec=spec))
        if name is not None and not items:
            return api.GetReply(
                ok=False,
                errors=[api.not_found(kind or "", name)],
            )
        return api.GetReply(ok=True, items=items)

    def nad(self, network: str) -> api.NadReply:
        catalog = self.catalog
        net = catalog.get(model.Network, network)
        if net is None:
            return api.NadReply(
                ok=False,
                errors=[api.not_found("Network", network)],
            )
        return api.NadReply(
            ok=True,
            config=compiling.nad_config(catalog, net),
            yaml=compiling.nad_yaml(catalog, net),
        )

    def switch_config(self, node: str | None) -> api.SwitchReply:
        catalog = self.catalog
        if node is not None and node not in catalog.nodes:
            return api.SwitchReply(ok=False, errors=[api.not_found("Node", node, "not registered")])
        nodes = [node] if node is not None else sorted(catalog.nodes)
        ports = [p for n in nodes for p in compiling.switch_config(catalog, n)]
        return api.SwitchReply(ok=True, ports=ports)

    # -- internals --------------------------------------------------------------------

    def _check_documents(self, docs: list[manifests.Document]) -> list[api.Problem]:
        problems: list[api.Problem] = []
        seen: dict[tuple[str, str], int] = {}
        for doc in docs:
            key = (doc.spec.kind, doc.spec.name)
            if key in seen:
                problems.append(
                    api.Problem(
                        document=doc.index,
                        line=doc.line,
                        kind=key[0],
                        name=key[1],
                        field="name",
                        message=f"appears twice in this submission (also document {seen[key]})",
                    )
                )
            seen.setdefault(key, doc.index)
            for problem in validation.check_object(doc.spec):
                problem.document, problem.line = doc.index, doc.line
                problems.append(problem)
        return problems

    def _state_problems(self, docs: list[manifests.Document]) -> list[api.Problem]:
        """Problems the submission would add to the current state, located in it."""
        catalog = self.catalog
        candidate = catalog.with_changes(put=[d.spec for d in docs], now=time.time())
        located = {(d.spec.kind, d.spec.name): (d.index, d.line) for d in docs}
        problems = _new_problems(catalog, candidate, located)
        _locate(problems, docs)
        return problems

    def _batch(self, changes: list[tuple[str, str, model.Spec | None]]) -> Batch:
        """The records of a submission, with what they expect of JetStream: call it right
        after validating, with no wait in between, so that the expectations are those of the
        state that was validated.

        Each record expects its subject's last sequence to be the one the followers saw, and
        the first one expects the stream's last sequence too: a submission is validated
        against the whole state (a VM NIC needs its network), so any write another planner
        made since makes the whole batch fail (:class:`Conflict`) rather than interleave.
        """
        submission = uuid.uuid4().hex
        now = time.time()
        messages: list[tuple[str, bytes, dict[str, str]]] = []
        for kind, name, spec in changes:
            key = (kind, name)
            entry = self._entries.get(key)
            record = api.SpecRecord(
                op="put" if spec is not None else "delete",
                kind=kind,
                name=name,
                submission=submission,
                spec=_to_dict(spec) if spec is not None else None,
                at=now,
                created=entry.created if entry is not None else now,
            )
            headers = {"Nats-Expected-Last-Subject-Sequence": str(self.spec_seq.get(key, 0))}
            if not messages:
                # The stream's last sequence as last caught up: above the last record seen
                # when trailing messages were deleted, so a deletion cannot refuse every batch.
                base = max(
                    self.last_revision, self._followers[0].stream_seq if self._followers else 0
                )
                headers["Nats-Expected-Last-Sequence"] = str(base)
            messages.append((subjects.spec(kind, name), bus.encode(record), headers))
        return Batch(id=submission, keys=[(k, n) for k, n, _ in changes], messages=messages)

    async def _store(self, batch: Batch) -> dict[tuple[str, str], int]:
        """Store a batch atomically; each object's new sequence (its revision)."""
        with tracing.publish_span(
            subjects.ALL_SPECS, template=subjects.spec("{kind}", "{name}")
        ) as th:
            messages = [(s, d, {**h, **th}) for s, d, h in batch.messages]
            try:
                last = await bus.publish_atomic(self.nc, messages, batch_id=batch.id)
            except bus.ConflictError as exc:
                raise Conflict(str(exc)) from exc
        first = last - len(batch.keys) + 1
        return {key: first + i for i, key in enumerate(batch.keys)}

    async def _publish_intents(
        self, nodes: list[str], *, stored: int = 0
    ) -> tuple[dict[str, int], list[str]]:
        """Bring each node's intent to the current state: compile it from the caught-up
        catalog and publish a new generation where it differs from the subject's last intent.

        ``stored``: the stream sequence of a batch this planner just stored; the first round
        then only waits for the specs follower to reach it (every record stored before it is
        then read too), and a stale view of the intents shows as refused publications.
        Returns each node's generation that holds the current state (published here, or
        already there), and the nodes given a new generation here. A node whose subject
        another planner wrote meanwhile is done again after catching up; :class:`Conflict`
        after :data:`MAX_ATTEMPTS` rounds.
        """
        generations: dict[str, int] = {}
        changed: list[str] = []
        todo = list(nodes)
        for attempt in range(MAX_ATTEMPTS):
            if stored and not attempt and self._followers:
                deadline = asyncio.get_running_loop().time() + CATCH_UP_S
                await self._followers[0].reached(stored, deadline)  # L2_SPECS
            else:
                await _backoff(attempt)
                await self.catch_up()
            catalog = self.catalog
            # Only the nodes the changes since the last compile may affect are compiled.
            compiled = self._compiler.compile(catalog, each=_traced_compile)
            ready: list[tuple[model.NodeIntent, int]] = []
            for node in todo:
                if node not in catalog.nodes:
                    continue
                # Never at or below a generation seen on the subject or applied by the node.
                floor = max(
                    self.max_generation.get(node, 0), catalog.nodes[node].applied_generation
                )
                current = self._current.get(node)
                if (
                    current is not None
                    and current.generation >= floor
                    and self._agrees(node, current, compiled[node])
                ):
                    generations[node] = current.generation
                    continue
                intent = msgspec.structs.replace(  # the compiler's own is kept as it is
                    compiled[node],
                    generation=floor + 1,
                    spec_revision=self.last_revision,
                    issued_at=time.time(),
                )
                ready.append((intent, self.intent_seq.get(node, 0)))
            # Nodes are independent: their acknowledgements are awaited together.
            results = await asyncio.gather(
                *(self._publish_intent(i, seq) for i, seq in ready), return_exceptions=True
            )
            again: list[str] = []
            for (intent, _), result in zip(ready, results, strict=True):
                if isinstance(result, Conflict):
                    self.conflicts += 1
                    log.info("node %s: %s; catching up", intent.node, result)
                    again.append(intent.node)
                elif isinstance(result, BaseException):
                    raise result
                else:
                    generations[intent.node] = intent.generation
                    changed.append(intent.node)
            if not again:
                return generations, sorted(changed)
            todo = again
        raise Conflict(f"the intents of {', '.join(todo)} kept being written by another planner")

    def _agrees(self, node: str, current: model.NodeIntent, compiled: model.NodeIntent) -> bool:
        """The node's last intent holds the compiled desired state; the same two objects
        found equal before are not compared again (a change leaves most nodes' alone)."""
        agreed = self._agreed.get(node)
        if agreed is not None and agreed[0] is current and agreed[1] is compiled:
            return True
        if not compiling.same_desired_state(current, compiled):
            return False
        self._agreed[node] = (current, compiled)  # held, so that their ids are not reused
        return True

    async def _publish_intent(self, intent: model.NodeIntent, expected_seq: int) -> int:
        """Publish one node's intent: the one place an intent leaves the planner.

        It expects the node's subject to end at ``expected_seq`` (0: no message yet), so an
        intent another planner published meanwhile makes this one fail (:class:`Conflict`)
        instead of both standing. Returns the intent's stream sequence.
        """
        node = intent.node
        subject = subjects.intent(node)
        with tracing.publish_span(
            subject,
            template=subjects.intent("{node}"),
            attributes={"l2net.node": node, "l2net.generation": intent.generation},
        ) as headers:
            headers["Nats-Msg-Id"] = f"intent:{node}:{intent.generation}"
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_seq)
            signed = signing.sign(intent, self._seed)
            data = bus.encode(signed)
            self._sent[node] = (data, signed)
            try:
                ack = await self.js.publish(subject, data, headers=headers)
            except APIError as exc:
                if exc.err_code == bus.WRONG_LAST_SEQUENCE:
                    raise Conflict(f"{subject} moved past sequence {expected_seq}") from exc
                raise
        if ack.duplicate:
            # This generation was published before (a message since lost or undecodable):
            # the next one must be above it.
            self.max_generation[node] = max(self.max_generation.get(node, 0), intent.generation)
            raise Conflict(f"generation {intent.generation} of {node} was published before")
        log.info("node %s: generation %d", node, intent.generation)
        return ack.seq


def _plan_node(
    node: model.Node,
    *,
    intent: model.NodeIntent,
    current: model.NodeIntent | None,
    state: tuple[NodeL2State | None, api.StateSource, str],
) -> api.NodePlan:
    """One node's plan: its desired state as its executor builds it (with the mgmt VLAN and
    management path it reports), against its actual ``state`` (with where it came from)."""
    actual, source, note = state
    desired: NodeL2State | StateError
    refused: list[Refusal] = []
    try:
        desired, refused = desired_state(intent, mgmt_vlan=node.mgmt_vlan, mgmt=node.mgmt)
    except StateError as exc:
        desired = exc
    return impact.node_plan(
        node=node.name,
        generation=current.generation if current is not None else 0,
        desired=desired,
        refused=refused,
        actual=actual,
        state=source,
        note=note,
    )


def _no_live_state(exc: BaseException) -> str:
    """Why a node's executor gave no live state, in a few words."""
    if isinstance(exc, nats_errors.NoRespondersError):
        return "its executor does not answer (not running?)"
    if isinstance(exc, nats_errors.TimeoutError | TimeoutError):
        return f"its executor did not answer within {LIVE_STATE_S:g}s"
    return f"its executor gave no state ({type(exc).__name__}: {str(exc)[:200]})"


def _traced_compile(node: str, make: Callable[[], model.NodeIntent]) -> model.NodeIntent:
    """Compile one node in its span, which names the node and its cluster networks."""
    with tracing.tracer().start_as_current_span(
        "l2net.planner.compile", attributes={"l2net.node": node}
    ) as span:
        intent = make()
        names = ",".join(cn.name for cn in intent.cluster_networks)
        if names:
            tracing.annotate(span, cluster_network=names)
    return intent


async def _backoff(attempt: int) -> None:
    """Before try ``attempt`` (0: none): a short random pause, growing, so that two planners
    that refused each other's writes do not meet again in step."""
    if attempt:
        await asyncio.sleep(random.uniform(0, BACKOFF_S * attempt))


def _quiet(msg: Msg, why: str) -> None:
    """Skip without a report (history whose bad messages were reported before)."""


def too_many(objects: int) -> api.Problem:
    """The problem of a submission over JetStream's atomic batch limit."""
    return api.Problem(
        code=Code.INVALID,
        message=f"the submission changes {objects} objects; at most {MAX_BATCH} are stored "
        "at once (JetStream's atomic batch limit): split it into several submissions",
    )


def refusal(problems: list[api.Problem]) -> api.ApplyReply:
    """A rejected submission's reply: the first :data:`MAX_PROBLEMS` problems, then a count."""
    return api.ApplyReply(ok=False, errors=cap_problems(problems))


def cap_problems(problems: list[api.Problem], limit: int = MAX_PROBLEMS) -> list[api.Problem]:
    if len(problems) <= limit:
        return problems
    rest = len(problems) - limit
    return [*problems[:limit], api.Problem(message=f"... and {rest} more problems")]


def fit_reply(reply: Any, limit: int) -> bytes:
    """``reply`` encoded in at most ``limit`` bytes.

    A reply over it keeps fewer problems (each message cut short), or fewer listed changes;
    a reply that still does not fit (``get`` of a huge catalog) becomes an error saying so.
    """
    data = bus.encode(reply)
    if len(data) <= limit:
        return data
    errors: list[api.Problem] = list(getattr(reply, "errors", []))
    if errors:
        short = [msgspec.structs.replace(p, message=p.message[:300]) for p in errors]
        keep = len(short)
        while keep > 1:
            rest = len(short) - keep
            tail = [api.Problem(message=f"... and {rest} more problems")] if rest else []
            data = bus.encode(msgspec.structs.replace(reply, errors=short[:keep] + tail))
            if len(data) <= limit:
                return data
            keep //= 2
    changes: list[api.Change] = list(getattr(reply, "changes", []))
    if isinstance(reply, api.ApplyReply) and reply.ok and len(changes) > MAX_PROBLEMS:
        warning = f"{len(changes) - MAX_PROBLEMS} more changes not listed (the reply's limit)"
        data = bus.encode(
            msgspec.structs.replace(
                reply, changes=changes[:MAX_PROBLEMS], warnings=[*reply.warnings, warning]
            )
        )
        if len(data) <= limit:
            return data
    too_big = api.Problem(
        message=f"the answer is {len(bus.encode(reply))} bytes, over the NATS server's limit "
        f"of {limit} bytes for a reply: ask for less (one kind, one object)"
    )
    if isinstance(reply, api.ApplyReply) and reply.ok:
        return bus.encode(
            api.ApplyReply(ok=True, generations=reply.generations, warnings=[too_big.message])
        )
    return bus.encode(type(reply)(ok=False, errors=[too_big]))


def _new_problems(
    before: Catalog,
    candidate: Catalog,
    located: dict[tuple[str, str], tuple[int, int]] | None = None,
) -> list[api.Problem]:
    """Problems the candidate state has that the current one has not.

    A problem that exists already (a node relabelled under a VM NIC, say) is not the fault
    of an unrelated submission and does not block it. Both states are described with the
    same document locations, so the same problem reads the same in both.
    """
    # Most often the candidate has no problem at all (with locations or without: they only
    # name where an object comes from); then the current state need not be checked.
    if not candidate.memo("validation.problems", lambda: validation.check_catalog(candidate)):
        return []
    existing = {str(p) for p in validation.check_catalog(before, located)}
    return [p for p in validation.check_catalog(candidate, located) if str(p) not in existing]


def _to_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(obj)
    return out


def _cluster_networks(docs: list[manifests.Document]) -> list[str]:
    """The cluster networks a submission names (its ClusterNetworks and clusterNetwork
    fields), sorted: the span attribute ``l2net.cluster_network``, comma-separated."""
    found: set[str] = set()
    for doc in docs:
        if isinstance(doc.spec, model.ClusterNetwork):
            found.add(doc.spec.name)
        network = getattr(doc.spec, "cluster_network", None)
        if isinstance(network, str):
            found.add(network)
    return sorted(found)


def _locate(problems: list[api.Problem], docs: list[manifests.Document]) -> None:
    """Point catalog-wide problems at the document that submitted the object, if any."""
    where = {(d.spec.kind, d.spec.name): d for d in docs}
    for problem in problems:
        doc = where.get((problem.kind, problem.name))
        if doc is not None:
            problem.document, problem.line = doc.index, doc.line
