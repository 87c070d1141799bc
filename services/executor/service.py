"""The executor on one node: follows its intents on NATS, converges the kernel, reports.

Concurrency model, in plain words. One executor serves one node, and everything that
touches its kernel runs under one lock, one thing at a time: applying an intent, a reconcile
asked for, a live-state read for the auditor, and publishing observed state after netlink
events. Four tasks feed it:

* the **intent follower**: on start the last intent of ``l2.intent.<node>`` (a direct get,
  ``$JS.API.DIRECT.GET.L2_INTENTS.l2.intent.<node>``), then each new one from the durable
  consumer ``executor-<node>``, created by name with its filter
  (``$JS.API.CONSUMER.CREATE.L2_INTENTS.executor-<node>.l2.intent.<node>``) and bound to.
  A message is acknowledged only after its status is stored in JetStream; a generation
  older than one already handled is acknowledged and ignored; a malformed one is
  terminated (never redelivered) and reported as a Failed status;
* the **watcher**: netlink events (links, addresses, bridge VLANs); after a short quiet
  period it reads the state and, if the managed part changed, publishes it on
  ``l2.observed.<node>``. It never changes anything: a hand-made change is drift, shown,
  not hidden; the node converges again on a new intent or when asked;
* the **heartbeat**: the node's inventory (labels, NICs, link states) on ``l2.node.<node>``;
* two **request/reply** subjects: ``l2.executor.<node>.state`` answers the live
  :class:`~shared.model.ObservedState`; ``l2.executor.<node>.reconcile`` converges to the
  last intent again and answers the :class:`~shared.model.NodeStatus`.

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamInfo
from nats.js.errors import BadRequestError, NotFoundError
from nats.micro.request import Request
from nats.micro.service import Service

from services.executor import mgmt
from services.executor.kernel import Kernel
from services.executor.planning import Step
from services.executor.reconciling import Outcome, converge
from shared import bus, metrics, names, signing, subjects, tracing
from shared.l2state import StateError, desired_state, observed_from
from shared.model import Node, NodeIntent, NodeStatus, ObjectResult, ObservedState

log = logging.getLogger("l2net.executor")

WRITE_STREAMS = (
    subjects.STREAM_STATUS,
    subjects.STREAM_OBSERVED,
    subjects.STREAM_NODES,
    subjects.STREAM_INTENTS,
)
"""Streams the executor needs at start: those it writes, and its input. It creates the
missing ones when allowed (``create_streams``), else waits for them; it never updates one."""


def consumer_name(node: str) -> str:
    """The durable JetStream consumer of one node's executor."""
    return f"executor-{node}"


def inbox_prefix(node: str) -> str:
    """The inbox prefix of a node's connection: a node user may receive replies only there."""
    return f"_INBOX.{node}"


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
        self.intent: NodeIntent | None = None
        self.handled_generation = 0
        self._start_seq: int | None = None  # stream sequence of the intent applied at start
        self.last_observed: ObservedState | None = None
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._service: Service | None = None
        self._intent_sub: JetStreamContext.PullSubscription | None = None
        self._stopped = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, find (or create) streams, register, converge to the last intent, start
        the tasks."""
        self.nc = await bus.connect(
            self.config.servers,
            name=f"l2net-executor-{self.node}",
            inbox_prefix=inbox_prefix(self.node),
            attempts=-1,  # a service: connect and reconnect for ever (see bus.connect)
        )
        self.js = self.nc.jetstream()
        streams = await self._streams()
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
        watcher = self.kernel.events()
        self._tasks.append(asyncio.create_task(self._watch(watcher), name="watch"))
        await self._converge_to_last_intent(
            direct=bool(streams[subjects.STREAM_INTENTS].config.allow_direct)
        )
        # Created (or updated) by name with its filter: the API subject then names both,
        # which is what a node user is allowed; then bound to, never looked up otherwise.
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
        sub = await self.js.pull_subscribe_bind(durable, stream=subjects.STREAM_INTENTS)
        self._intent_sub = sub
        self._tasks.append(asyncio.create_task(self._follow(sub), name="follow"))
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="heartbeat"))
        await self.publish_observed("executor started")
        where = ", ".join(bus.redact(s) for s in self.config.servers)
        log.info("executor for %s ready on %s", self.node, where)

    async def stop(self) -> None:
        self._stopped.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
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
            with contextlib.suppress(Exception):
                await self.nc.drain()
        await self.kernel.close()

    async def run(self) -> None:
        """Start and serve until :meth:`stop` is called (or the task is cancelled)."""
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            await self.stop()

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
                    await self.js.add_stream(bus.STREAMS[name])
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

    async def _converge_to_last_intent(self, *, direct: bool) -> None:
        """Converge to the last intent stored for this node, if any. ``direct``: the stream
        allows direct gets (l2net's configuration), the only way a node user may read it."""
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
        self._start_seq = raw.seq
        try:
            intent = self._decode_intent(raw.data, raw.subject or subjects.intent(self.node))
        except ValueError as exc:
            await self._report_malformed(f"last intent (stream sequence {raw.seq}): {exc}")
            return
        await self.handle_intent(intent, headers=raw.headers)

    def _decode_intent(self, data: bytes, subject: str) -> NodeIntent:
        """The intent in ``data``, or ValueError saying what is wrong with it: not this
        node's subject or node, or not signed by a trusted key (whoever published it)."""
        try:
            intent = bus.decode(data, NodeIntent)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValueError(f"{subject}: {exc}") from exc
        if subject != subjects.intent(self.node) or intent.node != self.node:
            raise ValueError(f"{subject}: intent for node {intent.node!r}, this is {self.node!r}")
        if not self.config.trusted_keys:
            if self.config.accept_unsigned:  # insecure dev setup (--insecure-accept-unsigned)
                return intent
            raise ValueError(f"{subject}: this executor trusts no signing key (--trust-key)")
        try:
            signing.verify(intent, self.config.trusted_keys)
        except signing.SignatureError as exc:
            raise ValueError(f"{subject}: {exc}") from None
        return intent

    async def _follow(self, sub: JetStreamContext.PullSubscription) -> None:
        while not self._stopped.is_set():
            try:
                msgs = await sub.fetch(1, timeout=5)
            except TimeoutError:
                continue
            except Exception as exc:  # connection trouble: nats-py reconnects by itself
                log.warning("fetching intents: %s", exc)
                await asyncio.sleep(1)
                continue
            for msg in msgs:
                wait = 1.0
                while True:
                    try:
                        await self._on_intent_msg(msg)
                    except Exception as exc:
                        if bus.is_outage(exc) and not self._stopped.is_set():
                            # NATS went away while handling it (its status not stored): a nak
                            # would not get through either, and JetStream would redeliver it
                            # only after ack_wait. Handle it again once NATS is back (applying
                            # is idempotent), so that its status is stored and it is acked.
                            log.warning(
                                "handling intent (stream sequence %s): %s; again in %g s",
                                _seq(msg),
                                exc or type(exc).__name__,
                                wait,
                            )
                            await asyncio.sleep(wait)
                            wait = min(wait * 2, 10.0)
                            continue
                        # Not acked: JetStream redelivers it; applying is idempotent.
                        log.error("handling intent (stream sequence %s): %s", _seq(msg), exc)
                        with contextlib.suppress(Exception):
                            await msg.nak(delay=2.0)
                    break

    async def _on_intent_msg(self, msg: Msg) -> None:
        """Apply one intent message; ack after its status is stored (see module)."""
        if msg.metadata.sequence.stream == self._start_seq:
            await msg.ack()  # the very message converged to at start
            return
        try:
            intent = self._decode_intent(msg.data, msg.subject)
        except ValueError as exc:
            await self._report_malformed(str(exc))
            await msg.term()
            return
        if intent.generation < self.handled_generation:
            log.info(
                "ignoring stale intent generation %d (handled %d)",
                intent.generation,
                self.handled_generation,
            )
            await msg.ack()
            return
        await self.handle_intent(intent, headers=msg.headers)
        await msg.ack()

    async def _report_malformed(self, what: str) -> None:
        log.error("malformed intent: %s", what)
        await self._publish_status(
            NodeStatus(
                node=self.node,
                phase="Failed",
                observed_generation=self.handled_generation,
                error=f"malformed intent, not applied: {what}",
                at=time.time(),
            )
        )

    async def handle_intent(
        self, intent: NodeIntent, *, headers: dict[str, str] | None = None
    ) -> NodeStatus:
        """Converge to ``intent``, publish its status (stored), then observed state."""
        with tracing.process_span(
            subjects.intent(self.node), headers, template="l2.intent.{node}"
        ) as span:
            tracing.annotate(span, node=self.node, generation=intent.generation)
            self.intent = intent
            self.handled_generation = max(self.handled_generation, intent.generation)
            status = await self._apply(intent)
            tracing.annotate(span, netlink_writes=status.netlink_writes)
            await self._publish_status(status)
        await self.publish_observed(f"applied generation {intent.generation}")
        return status

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
            await self._publish_status(status)
            return status
        return await self.handle_intent(self.intent)

    async def _apply(self, intent: NodeIntent) -> NodeStatus:
        started = time.monotonic()
        confirmer: mgmt.Confirmer | None = None
        async with self.lock:
            try:
                desired, refused = desired_state(
                    intent,
                    mgmt_vlan=self._mgmt_vlan(),
                    mgmt=await mgmt.node_mgmt_path(self.kernel, self.nc),
                    guard_mgmt=not self.config.test_only_allow_mgmt_cuts,
                )
            except StateError as exc:
                outcome = Outcome(phase="Failed", error=f"intent cannot be applied: {exc}")
            else:

                async def progressing(steps: list[Step]) -> None:
                    await self._publish_status(
                        NodeStatus(
                            node=self.node,
                            phase="Progressing",
                            observed_generation=intent.generation,
                            results=[
                                ObjectResult(object=s.target, action=f"planned: {s.describe()}")
                                for s in steps
                            ],
                            at=time.time(),
                        )
                    )

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
        )

    def _mgmt_vlan(self) -> int | None:
        value = getattr(self.kernel, "mgmt_vlan", None)
        return value if isinstance(value, int) else None

    # -- publishing ---------------------------------------------------------------------

    async def _publish(self, subject: str, template: str, obj: Any) -> None:
        assert self.js is not None
        with tracing.publish_span(subject, template=template) as headers:
            await self.js.publish(subject, bus.encode(obj), headers=headers)

    async def _publish_status(self, status: NodeStatus) -> None:
        await self._publish(subjects.status(self.node), "l2.status.{node}", status)

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
        )
        await self._publish(subjects.node(self.node), "l2.node.{node}", node)

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
        self.last_observed = observed
        await self._publish(subjects.observed(self.node), "l2.observed.{node}", observed)

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
                except Exception as exc:
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
            except Exception as exc:
                log.warning("heartbeat: %s", exc)

    async def _on_state_request(self, req: Request) -> None:
        try:
            observed = await self.live_state("requested")
        except Exception as exc:
            log.error("state request: %s", exc)
            await req.respond_error("500", f"reading the kernel failed: {exc}")
            return
        await req.respond(bus.encode(observed))

    async def _on_reconcile_request(self, req: Request) -> None:
        status = await self.reconcile()
        await req.respond(bus.encode(status))


def _seq(msg: Msg) -> object:
    try:
        return msg.metadata.sequence.stream
    except Exception:
        return "?"
