"""The executor on one node: follows its intents on NATS, converges the kernel, reports.

Concurrency model, in plain words. One executor serves one node, and everything that
touches its kernel runs under one lock, one thing at a time: applying an intent, a reconcile
asked for, a live-state read for the auditor, and publishing observed state after netlink
events.

**Start, with or without NATS.** The executor first reads its state directory
(:mod:`services.executor.nodestore`): the highest generation it has handled and the last
intent it applied. It converges the kernel to that intent at once, before and without NATS,
so that a node rebooted during a NATS outage gets its bonds, bridges, VLANs and VM NICs back;
the status of that convergence is kept and published once NATS answers. Then the
**session** task connects, for ever, with backoff (a server must answer the NATS handshake
before the client is started), and sets up: streams, the micro service, the node's
registration, the statuses kept, the last intent of ``l2.intent.<node>`` (a direct get,
``$JS.API.DIRECT.GET.L2_INTENTS.l2.intent.<node>``; on a restart only when it is above the
generation handled: the intent an executor was killed applying converges at once, not after
the consumer's ack wait), and the durable consumer ``executor-<node>``, created by name with
its filter (``$JS.API.CONSUMER.CREATE.L2_INTENTS.executor-<node>.l2.intent.<node>``) and
bound to.
A set-up step that fails is tried again with backoff; only a refusal while connected (the
node's NATS user may not read its stream) stops the executor. Once set up, these tasks run:

* the **intent follower**: each new message of the durable consumer. Generations only move
  forward: an intent whose generation is not above the one handled (kept on disk across
  restarts) is refused (acked, reported once as ``Failed``, never applied), except the very
  intent already handled (a redelivery, or the one converged to at start), which is acked.
  An intent that cannot be taken (bad JSON, another node's, a value of the wrong type or out
  of range) is a permanent failure: reported once (``Failed``) and terminated (``term()``),
  never redelivered. A message is acknowledged only after its status is stored in
  JetStream; only a temporary failure (the status could not be stored) is nak'd, with a
  growing delay. Connection trouble: the client reconnects by itself, for ever; the follower
  re-creates its consumer when NATS lost it;
* the **watcher**: netlink events (links, addresses, bridge VLANs); after a short quiet
  period it reads the state and, if the managed part changed, publishes it on
  ``l2.observed.<node>``. It never changes anything: a hand-made change is drift, shown,
  not hidden; the node converges again on a new intent or when asked;
* the **heartbeat**: the node's inventory (labels, NICs, link states) and the generation
  handled (``appliedGeneration``) on ``l2.node.<node>``;
* two **request/reply** subjects: ``l2.executor.<node>.state`` answers the live
  :class:`~shared.domain.model.ObservedState`; ``l2.executor.<node>.reconcile`` converges to the
  last intent again and answers the :class:`~shared.domain.model.NodeStatus`.

Every status about an intent carries its digest (:func:`shared.wire.intents.digest`), so that
the auditor compares the node with the intent it really runs.

NATS permissions. Everything above stays within what a least-privilege node user of
``deploy/nats`` may do: replies come on ``_INBOX.<node>`` (the connection's inbox prefix),
the JetStream API calls are those that name this node's stream subject or consumer, and
streams are only read (``STREAM.INFO``). Missing streams are created only when
``ExecutorConfig.create_streams`` (the default, for an unrestricted user: lab, tests, demo)
and the server allows it; otherwise the executor waits for them, saying which are missing
(the planner creates all six at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
from nats import errors as nats_errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamInfo
from nats.js.errors import BadRequestError, NotFoundError
from nats.micro.request import Request
from nats.micro.service import Service

from services.executor import mgmt
from services.executor.kernel import Kernel
from services.executor.nodestore import Loaded, NodeStore
from services.executor.planning import Step
from services.executor.reconciling import Outcome, converge, step_result
from shared.domain import names
from shared.domain.errors import Code, Refused, code_of
from shared.domain.l2state import (
    MAX_GENERATION,
    StateError,
    check_intent,
    desired_state,
    observed_from,
)
from shared.domain.model import Node, NodeIntent, NodeStatus, ObjectResult, ObservedState
from shared.runtime import bus, metrics, tracing
from shared.runtime.config import stream_replicas
from shared.wire import api, intents, signing, subjects

log = logging.getLogger("l2net.executor")

WRITE_STREAMS = (
    subjects.STREAM_STATUS,
    subjects.STREAM_OBSERVED,
    subjects.STREAM_NODES,
    subjects.STREAM_INTENTS,
)
"""Streams the executor needs at start: those it writes, and its input. It creates the
missing ones when allowed (``create_streams``), else waits for them; it never updates one."""

BACKOFF_MAX_S = 30.0
"""The longest wait between two tries of anything NATS-related (connect, set-up, nak)."""

Verdict = Literal["ack", "term"]
"""What becomes of an intent message once dealt with: acknowledged, or terminated (a
permanent failure, never redelivered)."""


def consumer_name(node: str) -> str:
    """The durable JetStream consumer of one node's executor."""
    return f"executor-{node}"


def inbox_prefix(node: str) -> str:
    """The inbox prefix of a node's connection: a node user may receive replies only there."""
    return f"_INBOX.{node}"


def backoff(attempt: int, *, first: float = 0.5) -> float:
    """Seconds to wait before try ``attempt`` (1, 2, ...): doubling, at most
    :data:`BACKOFF_MAX_S`."""
    return float(min(BACKOFF_MAX_S, first * 2 ** max(0, min(attempt - 1, 10))))


class IntentRefused(Refused, ValueError):
    """An intent message that cannot be taken, ever (bad JSON, another node's, a value of
    the wrong type or out of range): a permanent failure. ``intent`` is the decoded intent
    when it decoded."""

    def __init__(self, message: str, intent: NodeIntent | None = None) -> None:
        super().__init__(message)
        self.intent = intent


@dataclass
class ExecutorConfig:
    """How one executor runs. ``heartbeat_s``: node inventory period; ``quiet_s``: how long
    netlink must be quiet before observed state is read and published."""

    node: str
    servers: list[str]
    labels: dict[str, str] = field(default_factory=dict)
    heartbeat_s: float = 10.0
    quiet_s: float = 0.2
    ack_wait_s: float = 300.0
    create_streams: bool = True
    """Create missing streams (an unrestricted NATS user). False for a least-privilege node
    user (``--no-create-streams``, as in deploy/): wait for the planner to create them."""
    trusted_keys: list[str] = field(default_factory=list)
    """Public keys (nkeys ``N...``) whose signatures make an intent acceptable."""
    accept_unsigned: bool = False
    """Insecure, for a dev setup only: with no trusted key, apply intents unchecked. Without
    it an executor that trusts no key refuses every intent."""
    confirm_s: float = mgmt.DEFAULT_CONFIRM_S
    """After an apply, the time the node has to prove it still reaches NATS (and ``probes``)
    before it rolls back by itself; 0: no confirm."""
    probes: list[str] = field(default_factory=list)
    """``HOST:PORT`` TCP probes that must connect after an apply, besides NATS."""
    test_only_allow_mgmt_cuts: bool = False
    """Tests only: apply what would cut the management path (the confirm must roll it back)."""
    state_dir: Path | str | None = None
    """Where the generation handled and the last applied intent are kept across restarts
    (:mod:`services.executor.nodestore`); None keeps nothing (an executor embedded for a
    test that needs no restart). The command line's default is ``/var/lib/l2net/<node>``."""


class Executor:
    """One node's executor. ``await run()`` until ``stop()``; or ``start()``/``stop()``."""

    def __init__(
        self,
        config: ExecutorConfig,
        kernel: Kernel,
        *,
        before_step: Callable[[Step], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.node = names.check_node_name(config.node)  # a subject token and a NATS user
        self.kernel = kernel
        self.before_step = before_step
        self.lock = asyncio.Lock()
        self.store = NodeStore(config.state_dir) if config.state_dir is not None else None
        self.intent: NodeIntent | None = None
        self._intent_raw: bytes | None = None  # the message bytes of ``intent``
        self.handled_generation = 0
        self.handled_digest: str | None = None
        self._fresh = True  # no state on disk: take the stream's last intent at start
        self._start_seq: int | None = None  # stream sequence of the intent taken at start
        self._start_verdict: Verdict = "ack"
        self._pending: list[NodeStatus] = []  # final statuses not yet stored in JetStream
        self.last_observed: ObservedState | None = None
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._session_task: asyncio.Task[None] | None = None
        self._service: Service | None = None
        self._intent_sub: JetStreamContext.PullSubscription | None = None
        self._ready = asyncio.Event()
        self._stopped = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, *, wait_connected: bool = True) -> None:
        """Converge to the intent kept on disk (without NATS), start the watcher and the
        session (connect for ever, set up, follow). ``wait_connected``: return only once
        the session is set up (raises what stopped it, e.g. BusError for a NATS user that
        may not read its stream); False returns at once (the command line)."""
        loaded = (
            self.store.load()
            if self.store is not None
            else Loaded(handled_generation=0, handled_digest=None, intent_raw=None, fresh=True)
        )
        self.handled_generation = loaded.handled_generation
        self.handled_digest = loaded.handled_digest
        self._fresh = loaded.fresh
        if loaded.intent_raw is not None:
            await self._converge_from_disk(loaded.intent_raw)
        watcher = self.kernel.events()
        self._tasks.append(asyncio.create_task(self._watch(watcher), name="watch"))
        self._session_task = asyncio.create_task(self._session(), name="session")
        if wait_connected:
            await self.wait_ready()

    async def wait_ready(self) -> None:
        """Return once the session is set up; raise what ended it if it ended before."""
        assert self._session_task is not None, "start() first"
        ready = asyncio.create_task(self._ready.wait())
        try:
            await asyncio.wait({ready, self._session_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if not self._ready.is_set():
            self._session_task.result()  # raises the session's error
            raise bus.BusError("the executor stopped before it was connected")

    @property
    def connected(self) -> bool:
        """Set up on NATS (streams, consumer) and the connection is up now."""
        return self._ready.is_set() and self.nc is not None and self.nc.is_connected

    async def stop(self) -> None:
        self._stopped.set()
        tasks = [*self._tasks, *([self._session_task] if self._session_task else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._intent_sub is not None:
            # Unsubscribed, not drained: a pull request cut short by the cancel above may still
            # get its answer (a 408 status) queued with no fetch left to take it, and a drain
            # would wait for that queue until its timeout.
            with contextlib.suppress(Exception):
                await self._intent_sub.unsubscribe()
            self._intent_sub = None
        if self._service is not None:
            with contextlib.suppress(Exception):
                await self._service.stop()
            self._service = None
        if self.nc is not None and not self.nc.is_closed:
            if self.nc.is_connected:
                with contextlib.suppress(Exception):
                    await self.nc.drain()
            else:  # reconnecting: a drain would wait for a server that is not there
                with contextlib.suppress(Exception):
                    await self.nc.close()
        await self.kernel.close()

    async def run(self) -> None:
        """Start and serve until :meth:`stop` is called (or the task is cancelled)."""
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            await self.stop()

    # -- the session: connect for ever, set up, follow ----------------------------------

    async def _session(self) -> None:
        await self._wait_for_nats()
        self.nc = await bus.connect(
            self.config.servers,
            name=f"l2net-executor-{self.node}",
            inbox_prefix=inbox_prefix(self.node),
            attempts=-1,  # reconnect for ever: a node must never give up on its control plane
        )
        self.js = self.nc.jetstream()
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._setup()
                break
            except bus.BusError as exc:
                if self.nc.is_connected:
                    raise  # connected, and still refused: a permission, not an outage
                delay = backoff(attempt)
                log.warning("NATS went away during set-up (%s); again in %.1f s", exc, delay)
                await asyncio.sleep(delay)
            except Exception as exc:  # a boundary: whatever set-up met, try again, logged
                delay = backoff(attempt)
                log.warning(
                    "setting up on NATS: %s: %s; again in %.1f s", type(exc).__name__, exc, delay
                )
                await asyncio.sleep(delay)
        self._ready.set()
        self._tasks.append(asyncio.create_task(self._follow(), name="follow"))
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="heartbeat"))
        where = ", ".join(bus.redact(s) for s in self.config.servers)
        log.info("executor for %s ready on %s", self.node, where)

    async def _wait_for_nats(self) -> None:
        """Return once some server answers the NATS handshake (its ``INFO`` line), waiting
        with backoff: the client is started only then, so that an outage at start costs a
        probe now and then, not a reconnect attempt (and a logged error) every half second."""
        attempt = 0
        while True:
            attempt += 1
            for server in self.config.servers:
                if await _nats_answers(server):
                    if attempt > 1:
                        log.info("NATS answers at %s", bus.redact(server))
                    return
            delay = backoff(attempt)
            if attempt == 1 or (delay >= BACKOFF_MAX_S and attempt % 10 == 0):
                where = ", ".join(bus.redact(s) for s in self.config.servers)
                log.warning(
                    "NATS at %s does not answer; the node runs on the intent kept on disk "
                    "(generation %d); trying again with backoff (up to %.0f s)",
                    where,
                    self.intent.generation if self.intent else 0,
                    BACKOFF_MAX_S,
                )
            await asyncio.sleep(delay)

    async def _setup(self) -> None:
        """Everything the executor needs on NATS; safe to run again after a failure."""
        assert self.js is not None and self.nc is not None
        streams = await self._streams()
        if self._service is None:
            # A NATS micro service instance per node: `nats micro ls` lists every executor.
            self._service = await bus.serve(
                self.nc,
                name="l2net-executor",
                description="Converges one node's kernel to its l2net intent",
                metadata={"node": self.node},
                queue_group=f"l2net-executor-{self.node}",
                endpoints=[
                    (verb, subjects.executor_control(self.node, verb), handler)
                    for verb, handler in (
                        ("state", self._on_state_request),
                        ("reconcile", self._on_reconcile_request),
                    )
                ],
            )
        # Registered once its endpoints answer: whoever waits for the registration may ask
        # the executor at once.
        await self._publish_node()
        await self._flush_pending()
        # A first start takes the last intent whatever it is. A restart takes it only when it
        # is newer than the generation handled: an executor killed in the middle of an apply
        # (whose message is then unacknowledged, redelivered only after ack_wait) converges
        # at once; anything else is the durable consumer's to deliver, and report, once.
        await self._take_last_intent(
            direct=bool(streams[subjects.STREAM_INTENTS].config.allow_direct),
            only_newer=not self._fresh,
        )
        if self._fresh:
            self._fresh = False
            self._save_state()
        await self._ensure_consumer()
        if self._intent_sub is None:
            self._intent_sub = await self.js.pull_subscribe_bind(
                consumer_name(self.node), stream=subjects.STREAM_INTENTS
            )
        await self.publish_observed("executor started")

    async def _ensure_consumer(self) -> None:
        """Create (or find again, identical) this node's durable consumer. Created by name
        with its filter: the API subject then names both, which is what a node user may."""
        assert self.js is not None
        durable = consumer_name(self.node)
        await self.js.add_consumer(
            subjects.STREAM_INTENTS,
            ConsumerConfig(
                name=durable,
                durable_name=durable,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.config.ack_wait_s,
                filter_subject=subjects.intent(self.node),
            ),
        )

    async def _streams(self) -> dict[str, StreamInfo]:
        """The info of every stream in :data:`WRITE_STREAMS`; missing ones are created when
        ``create_streams`` and the NATS user may, else waited for with a warning naming them."""
        assert self.js is not None
        refused: list[str] = []
        if self.config.create_streams:
            for name in WRITE_STREAMS:
                if refused:  # refused once: this user may not, do not ask again per stream
                    break
                try:
                    await self.js.stream_info(name)
                    continue
                except NotFoundError:
                    pass
                try:
                    await self.js.add_stream(bus.stream_config(name, replicas=stream_replicas()))
                except BadRequestError:
                    pass  # created meanwhile by another service
                except Exception as exc:  # e.g. no answer: this user may not create streams
                    log.warning(
                        "could not create stream %s (%s: %s)", name, type(exc).__name__, exc
                    )
                    refused.append(name)

        def missing(names: list[str]) -> None:
            if refused:
                why = "could not create them (a node's NATS user may not)"
            elif self.config.create_streams:
                why = "not created yet"
            else:
                why = "this executor does not create streams (--no-create-streams)"
            log.warning(
                "waiting for stream(s) %s: %s; start the planner first, it creates all l2net "
                "streams",
                ", ".join(names),
                why,
            )

        return await bus.wait_for_streams(self.js, WRITE_STREAMS, on_missing=missing)

    # -- intents ------------------------------------------------------------------------

    async def _converge_from_disk(self, raw: bytes) -> None:
        """Converge to the last applied intent kept on disk, without NATS; its status is
        kept and published once NATS answers."""
        where = self.store.dir if self.store is not None else "?"
        try:
            intent = self._accept(raw, subjects.intent(self.node))
        except IntentRefused as exc:
            log.error("ignoring the intent kept in %s: %s", where, exc)
            return
        digest = intents.digest(intent)
        if intent.generation > self.handled_generation:
            # A crash between writing intent.json and state.json: the intent is the newer.
            self.handled_generation, self.handled_digest = intent.generation, digest
        self.intent, self._intent_raw = intent, raw
        # No message, so no process span: one span of its own holds this apply's diff,
        # steps and verify together (else each would be a trace of its own).
        with tracing.tracer().start_as_current_span("l2net.executor.start") as span:
            tracing.annotate(span, node=self.node, generation=intent.generation)
            status = await self._apply(intent)
            tracing.annotate(span, netlink_writes=status.netlink_writes)
        status.results.insert(
            0,
            ObjectResult(
                object=f"node/{self.node}",
                action=f"converged at start to generation {intent.generation} kept in "
                f"{where}, before NATS was reached",
            ),
        )
        log.info(
            "converged at start to generation %d kept on disk: %s", intent.generation, status.phase
        )
        self._pending.append(status)

    async def _take_last_intent(self, *, direct: bool, only_newer: bool) -> None:
        """Take the last intent stored for this node, if any (``only_newer``: only if it is
        a good intent above the generation handled; else leave it to the consumer).
        ``direct``: the stream allows direct gets (l2net's configuration), the only way a
        node user may read it."""
        assert self.js is not None
        subject = subjects.intent(self.node)
        try:
            raw = await self.js.get_last_msg(subjects.STREAM_INTENTS, subject, direct=direct)
        except NotFoundError:
            return
        except TimeoutError as exc:
            hint = (
                ""
                if direct
                else " (L2_INTENTS does not allow direct gets: restart the planner, it brings"
                " the streams to l2net's configuration)"
            )
            raise bus.BusError(f"no answer reading the last intent of {subject}{hint}") from exc
        if raw.data is None:
            return
        if only_newer:
            try:
                newer = self._accept(raw.data, raw.subject or subject).generation
            except IntentRefused:
                return  # the consumer delivers it, and it is reported once, then
            if newer <= self.handled_generation:
                return
        self._start_verdict = await self._take(
            raw.data, raw.subject or subject, headers=raw.headers, where=f"seq {raw.seq}"
        )
        self._start_seq = raw.seq

    def _accept(self, data: bytes, subject: str) -> NodeIntent:
        """The intent in ``data`` if it can be taken at all, else :class:`IntentRefused`
        saying why (the one place every intent passes, from the bus or from the disk): it
        decodes, is this node's (subject and body), is signed by a trusted key (whoever
        published it), and every value is of its type and in range."""
        try:
            intent = bus.decode(data, NodeIntent)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise IntentRefused(f"{subject}: {exc}") from exc
        if subject != subjects.intent(self.node) or intent.node != self.node:
            raise IntentRefused(
                f"{subject}: intent for node {intent.node!r}, this is {self.node!r}", intent
            )
        if not self.config.trusted_keys:
            if not self.config.accept_unsigned:
                raise IntentRefused(
                    f"{subject}: this executor trusts no signing key (--trust-key)", intent
                )
        else:  # with no key trusted and --insecure-accept-unsigned: a dev setup, unchecked
            try:
                signing.verify(intent, self.config.trusted_keys)
            except signing.SignatureError as exc:
                raise IntentRefused(f"{subject}: {exc}", intent) from None
        try:
            check_intent(intent)
        except StateError as exc:
            raise IntentRefused(str(exc), intent) from exc
        return intent

    async def _take(
        self, data: bytes, subject: str, *, headers: dict[str, str] | None, where: str
    ) -> Verdict:
        """Deal with one intent message; what to do with it. An exception means a temporary
        failure (a status could not be stored): the message is to be redelivered later."""
        try:
            intent = self._accept(data, subject)
        except IntentRefused as exc:
            await self._report_refused(exc, where)
            return "term"
        digest = intents.digest(intent)
        if intent.generation <= self.handled_generation:
            if intent.generation == self.handled_generation and digest == self.handled_digest:
                # The intent already handled: a redelivery (after a crash, or of the one
                # converged to at start). Not applied again; its status, if not yet stored.
                await self._flush_pending()
                return "ack"
            error = (
                f"stale intent refused, not applied: generation {intent.generation} is not "
                f"above generation {self.handled_generation}, which this node has handled"
            )
            log.warning("%s (%s)", error, where)
            await self._publish_status(
                NodeStatus(
                    node=self.node,
                    phase="Failed",
                    observed_generation=intent.generation,
                    error=error,
                    at=time.time(),
                    intent_digest=digest,
                ),
                keep=False,
            )
            return "ack"
        await self.handle_intent(intent, headers=headers, raw=data)
        return "ack"

    async def _follow(self) -> None:
        assert self.nc is not None
        reconnects = self.nc.stats["reconnects"]
        idle = 0
        failures = 0
        while not self._stopped.is_set():
            assert self._intent_sub is not None
            if self.nc.stats["reconnects"] != reconnects and self.nc.is_connected:
                # Back after an outage: the server may be a new one, with an empty store.
                reconnects = self.nc.stats["reconnects"]
                log.info("reconnected to NATS")
                await self._recover()
            try:
                msgs = await self._intent_sub.fetch(1, timeout=5)
                failures = 0
            except TimeoutError:
                idle += 1
                if idle % 12 == 0:  # a quiet minute: make sure the consumer still exists
                    await self._recover()
                continue
            except Exception as exc:  # connection trouble: the client reconnects by itself
                failures += 1
                delay = backoff(failures)
                log.warning("fetching intents: %s; again in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                await self._recover()
                continue
            for msg in msgs:
                await self._handle_msg(msg)

    async def _handle_msg(self, msg: Msg) -> None:
        """One delivered intent message, to its end (acked, terminated or nak'd)."""
        wait = 1.0
        while True:
            try:
                await self._on_intent_msg(msg)
                return
            except Exception as exc:  # a boundary: one message must never stop the follower
                if bus.is_outage(exc) and not self._stopped.is_set():
                    # NATS went away while handling it (its status not stored): a nak would
                    # not get through either, and JetStream would redeliver it only after
                    # ack_wait. Take it again once NATS is back (idempotent), so that its
                    # status is stored and it is acked.
                    log.warning(
                        "intent (stream sequence %s): %s; again in %g s",
                        _seq(msg),
                        exc or type(exc).__name__,
                        wait,
                    )
                    await asyncio.sleep(wait)
                    wait = min(wait * 2, 10.0)
                    continue
                # Temporary otherwise too (its status could not be stored): JetStream
                # redelivers it after a growing delay; taking it again is idempotent.
                delay = backoff(_deliveries(msg), first=2.0)
                log.error(
                    "intent (stream sequence %s) not done, again in %.0f s: %s: %s",
                    _seq(msg),
                    delay,
                    type(exc).__name__,
                    exc,
                )
                with contextlib.suppress(Exception):
                    await msg.nak(delay=delay)
                return

    async def _recover(self) -> None:
        """Make sure the streams and this node's consumer exist (NATS may have lost them:
        a server started again with a new store), and store what waits to be published."""
        try:
            await self._streams()
            await self._ensure_consumer()
            await self._flush_pending()
            await self._publish_node()
        except Exception as exc:  # tried again at the next trouble or quiet minute
            log.warning("recovering on NATS: %s: %s", type(exc).__name__, exc)

    async def _on_intent_msg(self, msg: Msg) -> None:
        """Take one intent message; ack (or term) after its status is stored (see module)."""
        seq = msg.metadata.sequence.stream
        if seq == self._start_seq:  # the very message taken at start
            verdict = self._start_verdict
        else:
            verdict = await self._take(
                msg.data, msg.subject, headers=msg.headers, where=f"seq {seq}"
            )
        if verdict == "term":
            await msg.term()
        else:
            await msg.ack()

    async def _report_refused(self, exc: IntentRefused, where: str) -> None:
        log.error("intent refused (%s): %s", where, exc)
        await self._publish_status(
            NodeStatus(
                node=self.node,
                phase="Failed",
                # A generation out of range is named in the error, not repeated here.
                observed_generation=exc.intent.generation
                if exc.intent and 0 <= exc.intent.generation <= MAX_GENERATION
                else 0,
                error=f"{'intent refused' if exc.intent else 'malformed intent'}, not applied: "
                f"{exc}",
                at=time.time(),
                intent_digest=intents.digest(exc.intent) if exc.intent else None,
            ),
            keep=False,
        )

    async def handle_intent(
        self,
        intent: NodeIntent,
        *,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> NodeStatus:
        """Converge to ``intent``, keep it on disk (``raw``: the message's bytes) when it
        applied, publish its status (stored), then observed state."""
        with tracing.process_span(
            subjects.intent(self.node), headers, template=subjects.intent("{node}")
        ) as span:
            tracing.annotate(span, node=self.node, generation=intent.generation)
            if raw is None:
                raw = self._intent_raw if intent is self.intent else None
            self.intent, self._intent_raw = intent, raw
            status = await self._apply(intent)
            if intent.generation >= self.handled_generation:
                self.handled_generation = intent.generation
                self.handled_digest = status.intent_digest
            self._save(intent, raw if raw is not None else bus.encode(intent), status)
            tracing.annotate(span, netlink_writes=status.netlink_writes)
            await self._publish_status(status)
        try:
            await self.publish_observed(f"applied generation {intent.generation}")
        except Exception as exc:  # the status is stored: observed state follows on events
            log.warning("publishing observed state: %s", exc)
        return status

    def _save(self, intent: NodeIntent, raw: bytes, status: NodeStatus) -> None:
        """Keep the generation handled, and the intent if it applied (see nodestore)."""
        if self.store is None:
            return
        try:
            if status.phase == "Applied":
                self.store.save_intent(raw)
            self._save_state()
        except OSError as exc:  # the node works on; a restart may then take an older intent
            log.error("cannot keep generation %d in %s: %s", intent.generation, self.store.dir, exc)
            status.results.append(
                ObjectResult(
                    object=str(self.store.dir), action="keep state", ok=False, error=str(exc)
                )
            )

    def _save_state(self) -> None:
        if self.store is not None:
            self.store.save_state(
                handled_generation=self.handled_generation, handled_digest=self.handled_digest
            )

    async def reconcile(self) -> NodeStatus:
        """Converge again to the last intent (the auditor's heal, ``l2net reconcile``)."""
        if self.intent is None:
            status = NodeStatus(
                node=self.node,
                phase="Failed",
                observed_generation=0,
                error="no intent received yet: nothing to reconcile to",
                at=time.time(),
            )
            await self._publish_status(status, keep=False)
            return status
        return await self.handle_intent(self.intent)

    async def _apply(self, intent: NodeIntent) -> NodeStatus:
        started = time.monotonic()
        digest = intents.digest(intent)
        confirmer: mgmt.Confirmer | None = None
        async with self.lock:
            try:
                desired, refused = desired_state(
                    intent,
                    mgmt_vlan=self._mgmt_vlan(),
                    mgmt=await mgmt.node_mgmt_path(self.kernel, self.nc),
                    guard_mgmt=not self.config.test_only_allow_mgmt_cuts,
                )
            except Exception as exc:  # StateError; anything else is a bug, never fatal
                outcome = Outcome(phase="Failed", error=f"intent cannot be applied: {exc}")
            else:

                async def progressing(steps: list[Step]) -> None:
                    status = NodeStatus(
                        node=self.node,
                        phase="Progressing",
                        observed_generation=intent.generation,
                        results=[step_result(s, prefix="planned: ") for s in steps],
                        at=time.time(),
                        intent_digest=digest,
                    )
                    try:
                        await self._publish_status(status, keep=False)
                    except Exception as exc:  # informative only: the apply goes on
                        log.warning("publishing Progressing: %s", exc)

                confirmer = mgmt.Confirmer(
                    self.nc,
                    intent.generation,
                    timeout_s=self.config.confirm_s,
                    probes=list(self.config.probes),
                )
                outcome = await converge(
                    self.kernel,
                    desired,
                    refused=refused,
                    before_step=self.before_step,
                    on_planned=progressing,
                    confirm=confirmer if confirmer.enabled() else None,
                )
        if confirmer is not None and confirmer.lost:
            await confirmer.wait_back()  # report once the path is back (outside the lock)
        attrs = {"l2net.node": self.node, "result": outcome.phase}
        metrics.applies().add(1, attrs)
        metrics.netlink_writes().add(outcome.writes, {"l2net.node": self.node})
        metrics.apply_duration().record(time.monotonic() - started, attrs)
        if outcome.phase == "RolledBack":
            metrics.rollbacks().add(1, attrs)
        if outcome.phase in ("RolledBack", "Failed"):
            metrics.apply_failures().add(1, attrs)
            log.error("generation %d: %s: %s", intent.generation, outcome.phase, outcome.error)
        else:
            log.info(
                "generation %d: %s (%d writes)", intent.generation, outcome.phase, outcome.writes
            )
        return NodeStatus(
            node=self.node,
            phase=outcome.phase,
            observed_generation=intent.generation,
            results=outcome.results,
            error=outcome.error,
            netlink_writes=outcome.writes,
            duration_s=outcome.duration_s,
            at=time.time(),
            intent_digest=digest,
        )

    def _mgmt_vlan(self) -> int | None:
        value = getattr(self.kernel, "mgmt_vlan", None)
        return value if isinstance(value, int) else None

    # -- publishing ---------------------------------------------------------------------

    async def _publish(self, subject: str, template: str, obj: Any) -> None:
        if self.js is None:
            raise bus.BusError("not connected to NATS yet")
        with tracing.publish_span(subject, template=template) as headers:
            await self.js.publish(subject, bus.encode(obj), headers=headers)

    async def _publish_status(self, status: NodeStatus, *, keep: bool = True) -> None:
        """Store ``status`` in JetStream. ``keep``: a final status that must reach the bus
        even if this fails (kept and published again with the next chance)."""
        try:
            await self._publish(subjects.status(self.node), subjects.status("{node}"), status)
        except Exception:  # kept whatever the failure, and raised on
            if keep:
                self._pending.append(status)
            raise

    async def _flush_pending(self) -> None:
        """Store the statuses kept while NATS did not answer, oldest first."""
        while self._pending:
            await self._publish_status(self._pending[0], keep=False)
            self._pending.pop(0)

    async def _publish_node(self) -> None:
        nics = await self.kernel.nics()
        node = Node(
            name=self.node,
            labels=dict(self.config.labels),
            nics=nics,
            mgmt_vlan=self._mgmt_vlan(),
            mgmt=await mgmt.node_mgmt_path(self.kernel, self.nc),
            heartbeat_at=time.time(),
            executor_version=bus.VERSION,
            applied_generation=self.handled_generation,
        )
        await self._publish(subjects.node(self.node), subjects.node("{node}"), node)

    async def live_state(self, reason: str) -> ObservedState:
        """The node's managed L2 state, read now."""
        async with self.lock:
            state = await self.kernel.read()
        return observed_from(
            state, generation=self.handled_generation, reason=reason, at=time.time()
        )

    async def publish_observed(self, reason: str, *, only_if_changed: bool = False) -> None:
        observed = await self.live_state(reason)
        if only_if_changed and self.last_observed is not None:
            before = (self.last_observed.links, self.last_observed.vlans)
            if before == (observed.links, observed.vlans) and (
                self.last_observed.namespaces == observed.namespaces
            ):
                return
        await self._publish(subjects.observed(self.node), subjects.observed("{node}"), observed)
        self.last_observed = observed  # only once published: a change seen offline goes later

    # -- tasks --------------------------------------------------------------------------

    async def _watch(self, events: Any) -> None:
        """Publish observed state shortly after the kernel reports changes (never revert)."""
        queue: asyncio.Queue[str] = asyncio.Queue()

        async def pump() -> None:
            stream = events
            while True:
                try:
                    async for name in stream:
                        queue.put_nowait(name)
                except Exception as exc:  # e.g. ENOBUFS: events were lost, read afresh
                    log.warning("netlink events: %s; resubscribing", exc)
                    await asyncio.sleep(1.0)
                    stream = self.kernel.events()
                    queue.put_nowait("*")

        pumper = asyncio.create_task(pump())
        try:
            while True:
                first = await queue.get()
                names = {first}
                while True:  # wait for a quiet moment: one publish per burst of events
                    try:
                        names.add(await asyncio.wait_for(queue.get(), self.config.quiet_s))
                    except TimeoutError:
                        break
                try:
                    await self.publish_observed(
                        "kernel event: " + ", ".join(sorted(names))[:200], only_if_changed=True
                    )
                except Exception as exc:  # a boundary: the pump lives on; next event retries
                    log.warning("publishing observed state: %s", exc)
        finally:
            pumper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pumper

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            try:
                await self._publish_node()
            except Exception as exc:  # a boundary: the next heartbeat tries again
                log.warning("heartbeat: %s", exc)

    async def _on_state_request(self, req: Request) -> None:
        body = api.decode_request(req.data, api.EmptyRequest)
        if isinstance(body, api.Problem):
            await req.respond(bus.encode(api.ErrorReply(errors=[body])))
            return
        try:
            observed = await self.live_state("requested")
        except Exception as exc:  # a boundary: the client gets the error, the executor goes on
            log.error("state request: %s", exc)
            problem = api.Problem(
                code=Code.UNAVAILABLE,
                kind="Node",
                name=self.node,
                message=f"reading the kernel failed: {exc}",
            )
            await req.respond(bus.encode(api.ErrorReply(errors=[problem])))
            return
        await req.respond(bus.encode(observed))

    async def _on_reconcile_request(self, req: Request) -> None:
        body = api.decode_request(req.data, api.EmptyRequest)
        if isinstance(body, api.Problem):
            await req.respond(bus.encode(api.ErrorReply(errors=[body])))
            return
        try:
            status = await self.reconcile()
        except Exception as exc:  # a boundary: the client gets the error, the executor goes on
            log.error("reconcile request: %s", exc)
            code = Code.UNAVAILABLE if bus.is_outage(exc) else code_of(exc)
            problem = api.Problem(code=code, kind="Node", name=self.node, message=str(exc))
            await req.respond(bus.encode(api.ErrorReply(errors=[problem])))
            return
        await req.respond(bus.encode(status))


async def _nats_answers(server: str, *, timeout: float = 3.0) -> bool:
    """A NATS server answers at ``server``: it sends its ``INFO`` line on a new connection
    (before any TLS). A relay that accepts but has no server behind it does not count."""
    url = server if "://" in server else f"nats://{server}"
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port or 4222
    except ValueError:
        return True  # cannot tell: let the client try
    if not host or parts.scheme not in ("nats", "tls"):
        return True  # e.g. websocket: no INFO on a bare connection
    writer: asyncio.StreamWriter | None = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        line = await asyncio.wait_for(reader.readline(), timeout)
        return line.startswith(b"INFO")
    except (OSError, TimeoutError, ValueError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _deliveries(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except (nats_errors.Error, ValueError, IndexError):  # not a JetStream message (no metadata)
        return 1


def _seq(msg: Msg) -> object:
    try:
        return msg.metadata.sequence.stream
    except (nats_errors.Error, ValueError, IndexError):
        return "?"
