"""The auditor service: replays the history, follows it live, publishes drift, heals.

This module is the wiring: the NATS subscriptions, the request handlers, start and stop. What
it decides lives beside it: :mod:`services.auditor.view` (events folded into drift episodes,
pure), :mod:`services.auditor.ledger` (what ``L2_DRIFT`` holds, so what to publish and what
not to publish twice, pure) and :mod:`services.auditor.healing` (the heal policy, pure, and
the heals it schedules).

Model of operation, in order:

1. **Replay.** At start it notes the last sequence of every stream it reads, then replays
   each from its first message (or from just after the snapshot it wrote, see
   :mod:`services.auditor.snapshot`) with an ordered consumer: ``L2_DRIFT`` (what was published
   already, by itself before a restart or by another auditor), ``L2_SPECS``, ``L2_INTENTS``,
   ``L2_STATUS``, ``L2_NODES`` and ``L2_OBSERVED``. Every event goes into the pure
   :class:`~services.auditor.view.FleetView`; nothing is published while replaying.
2. **Catch up.** When every stream has reached its noted sequence, the view is complete: time
   is applied once (:meth:`FleetView.tick`), then every episode not yet in ``L2_DRIFT`` (or
   still open there but resolved since) is published; one already over is published opened,
   then resolved, like one followed live (the ledger says which). A restarted auditor thus
   misses nothing and repeats nothing; two auditors over the same streams find the same
   episodes, with the same start times, because times come from the events, not from the
   auditor's clock.
3. **Follow.** The same consumers keep delivering new events; after each one, what opened
   or resolved is published at once on ``l2.drift.<node>`` (one report per change, never
   per tick). A timer applies time every ``tick_s`` (stopped reporting, stuck generation).
4. **Certainty.** A check (``l2.auditor.check``, ``l2net audit``) and every heal first ask
   the node's executor for its live state (``l2.executor.<node>.state``) rather than trust
   the last report.
5. **Heal.** For cluster networks under the heal policy, a newly opened finding makes the
   auditor ask the node's executor to re-converge (``l2.executor.<node>.reconcile``), one
   heal at a time per node; each heal is counted and recorded in ``L2_DRIFT``. Under the
   default policy (report only) the auditor never changes anything
   (:class:`~services.auditor.healing.Healer`).

Trust. Every message is outside data (:mod:`services.auditor.events`): the node is the
subject's token, a body naming another node is a bad message (reported once, ignored), and a
message that does not decode is reported once and ignored; nothing a message holds stops the
replay or the service. Only nodes that registered (``l2.node.<node>``) are judged; anything
published for another node is a *stray*, reported once (log, and the ``notes`` of a check), not
drift. A node is judged against the intent it really applied (its status's ``intentDigest``).

Two auditors (for availability) publish each finding once: one report per episode change,
with a ``Nats-Msg-Id`` made of the episode's identity and its state (open or resolved,
:func:`~services.auditor.ledger.report_id`), so JetStream drops the second copy; after the
duplicate window each auditor has read the other's report in ``L2_DRIFT`` and does not
publish it again.

It registers as the NATS micro service ``l2net-auditor``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StreamInfo
from nats.js.errors import BadRequestError, NotFoundError
from nats.micro.request import Request
from nats.micro.service import Service
from opentelemetry import trace

from services.auditor import events, snapshot
from services.auditor.healing import HEAL_ALL, Healer, cluster_network_of
from services.auditor.ledger import Ledger, report_id
from services.auditor.view import (
    FleetView,
    NodeView,
    Policy,
    is_kernel_key,
    iso,
)
from shared.domain.errors import Code
from shared.domain.model import DriftItem, DriftReport, Node, NodeIntent, NodeStatus, ObservedState
from shared.runtime import bus, metrics, tracing
from shared.runtime.config import stream_replicas
from shared.wire import api, subjects
from shared.wire import auditor_api as protocol

log = logging.getLogger("l2net.auditor")

SERVICE_NAME = "l2net-auditor"
CHECK_SPAN = "l2net.auditor.check"
"""The span of the check that follows a live status, child of its CONSUMER span."""

READ_STREAMS: tuple[tuple[str, str], ...] = (
    (subjects.STREAM_DRIFT, subjects.ALL_DRIFT),
    (subjects.STREAM_SPECS, subjects.ALL_SPECS),
    (subjects.STREAM_INTENTS, subjects.ALL_INTENTS),
    (subjects.STREAM_STATUS, subjects.ALL_STATUS),
    (subjects.STREAM_NODES, subjects.ALL_NODES),
    (subjects.STREAM_OBSERVED, subjects.ALL_OBSERVED),
)


__all__ = [
    "CHECK_SPAN",
    "HEAL_ALL",
    "READ_STREAMS",
    "SERVICE_NAME",
    "Auditor",
    "AuditorConfig",
    "cluster_network_of",  # the heal policy's, in services.auditor.healing
]


@dataclass
class AuditorConfig:
    """``heal``: cluster networks under the heal policy (``*``: all); the rest report only.
    ``tick_s``: how often time is applied; ``live_timeout_s``: wait for an executor's live
    state; ``reconcile_timeout_s``: wait for a heal's re-converge; ``snapshot``: where to
    keep a snapshot of the view, written every ``snapshot_every_s`` and at stop."""

    heal: set[str] = field(default_factory=set)
    policy: Policy = field(default_factory=Policy)
    tick_s: float = 1.0
    live_timeout_s: float = 5.0
    reconcile_timeout_s: float = 120.0
    snapshot: Path | None = None
    """A file to keep a snapshot of the view in (None: always replay from the start)."""
    snapshot_every_s: float = 30.0
    trusted_keys: set[str] = field(default_factory=set)
    """The planner's public keys (nkeys ``N...``): an intent they did not sign is reported as
    ``node/<node> generation`` drift when it is the latest, or what a node runs. Empty: any."""


class Auditor:
    """The auditor. ``await start()`` … ``await stop()``; operations are also methods."""

    def __init__(self, nc: Client, config: AuditorConfig | None = None) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.config = config or AuditorConfig()
        self.view = FleetView(self.config.policy, self.config.trusted_keys)
        self.view.live = False  # until the replay is complete
        self.replaying = True
        self._ledger = Ledger()
        self._healer = Healer(
            nc,
            self.view,
            heal=self.config.heal,
            reconcile_timeout_s=self.config.reconcile_timeout_s,
            check_live=self.check_live,
            record=self._record_heal,
        )
        self._live_failed: set[str] = set()
        self._flush_lock = asyncio.Lock()
        self._subs: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._service: Service | None = None
        self._targets: dict[str, int] = {}
        self._reached: dict[str, asyncio.Event] = {}
        self.ready = asyncio.Event()
        self.published_reports = 0
        self.duplicates_dropped = 0
        """Reports JetStream dropped as already published (by another auditor)."""
        self.events_applied = 0
        """Stream messages applied to the view (a restart from a snapshot applies fewer)."""
        self.restored_from: float | None = None
        """When the snapshot this auditor started from was taken (None: full replay)."""
        self._marks: dict[str, snapshot.StreamMark] = {}
        self._dirty = False
        self.bad_messages = 0
        """Messages reported and ignored: undecodable, or a body that contradicts its subject."""
        self._strays_reported: set[str] = set()

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Replay every stream, publish what is new, then follow live and serve requests."""
        # The one it writes: created when missing and allowed, else waited for. Never
        # updated: under deploy/nats only the planner may change a stream (an update can add
        # a republish into l2.intent.*), and it brings all six to l2net's configuration.
        await self._stream_info(subjects.STREAM_DRIFT)
        infos = {stream: await self._stream_info(stream) for stream, _ in READ_STREAMS}
        for stream, info in infos.items():
            created = info.created.isoformat() if info.created else ""
            self._marks[stream] = snapshot.StreamMark(created=created, seq=0)
        self._restore(infos)
        for stream, filter_subject in READ_STREAMS:
            info = infos[stream]
            after = self._marks[stream].seq
            self._targets[stream] = info.state.last_seq if info.state.messages else 0
            self._reached[stream] = asyncio.Event()
            if self._targets[stream] <= after:
                self._reached[stream].set()
            config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
            if after:
                config = ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1
                )
            sub = await self.js.subscribe(
                filter_subject,
                stream=stream,
                cb=self._handler(stream),
                ordered_consumer=True,
                config=config,
            )
            self._subs.append(sub)
        await asyncio.gather(*(ev.wait() for ev in self._reached.values()))
        self._ledger.adopt(self.view)
        self.replaying = False
        self.view.live = True
        self.view.tick(time.time())
        self._report_strays()
        await self.flush()
        self.save_snapshot()
        self._service = await bus.serve(
            self.nc,
            name=SERVICE_NAME,
            description="Replays l2net's history, reports drift and heals it by policy",
            queue_group=SERVICE_NAME,
            endpoints=[
                ("check", subjects.AUDITOR_CHECK, self._handle_check),
                ("history", subjects.AUDITOR_HISTORY, self._handle_history),
                ("desired", subjects.AUDITOR_DESIRED, self._handle_desired),
            ],
        )  # answering before "ready"
        self._tasks.append(asyncio.create_task(self._ticker(), name="auditor-tick"))
        self.ready.set()
        self._schedule_heals()
        log.info(
            "auditor ready: %d nodes, %d findings open, heal policy %s",
            len(self.view.nodes),
            sum(len(v.episodes.open) for v in self.view.nodes.values()),
            ", ".join(sorted(self.config.heal)) or "report only",
        )

    async def _stream_info(self, stream: str) -> StreamInfo:
        """The stream's info; a stream no service created yet is created with l2net's
        configuration when this user may, else waited for (its writer creates it). JetStream
        not answering yet (a server starting, a cluster forming) is waited for too."""
        warned = False
        while True:
            try:
                return await self.js.stream_info(stream)
            except NotFoundError:
                pass
            except Exception as exc:  # a server starting, a cluster forming: again
                if not bus.is_outage(exc):
                    raise
                if not warned:
                    log.warning("waiting for JetStream to answer about %s (%s)", stream, exc)
                    warned = True
                await asyncio.sleep(1.0)
                continue
            try:
                return await self.js.add_stream(
                    bus.stream_config(stream, replicas=stream_replicas())
                )
            except BadRequestError:
                continue  # created meanwhile by its writer
            except Exception as exc:  # not allowed to create it: wait for its writer
                if not warned:
                    log.warning("waiting for stream %s to be created (%s)", stream, exc)
                    warned = True
                await asyncio.sleep(1.0)

    def _restore(self, infos: dict[str, StreamInfo]) -> None:
        """Start from the snapshot when it is of these very streams and none went back."""
        path = self.config.snapshot
        snap = snapshot.load(path) if path is not None else None
        if snap is None:
            return
        for stream, info in infos.items():
            mark = snap.streams.get(stream)
            if (
                mark is None
                or mark.created != self._marks[stream].created
                or mark.seq > info.state.last_seq
            ):
                log.info("snapshot %s is not of these streams (%s): full replay", path, stream)
                return
        self._ledger = Ledger(snapshot.restore(snap, self.view), snap.heal_notes)
        self._marks = {
            name: snapshot.StreamMark(created=m.created, seq=m.seq)
            for name, m in snap.streams.items()
            if name in infos
        }
        self.restored_from = snap.at
        log.info("starting from the snapshot of %s in %s", iso(snap.at), path)

    def save_snapshot(self) -> None:
        """Write the view to the snapshot file (if one is configured)."""
        if self.config.snapshot is None:
            return
        snap = snapshot.take(
            self.view,
            streams=self._marks,
            published=self._ledger.published,
            heal_notes=self._ledger.heal_notes,
            at=time.time(),
        )
        try:
            snapshot.save(self.config.snapshot, snap)
            self._dirty = False
        except OSError as exc:
            log.warning("cannot write the snapshot %s: %s", self.config.snapshot, exc)

    async def stop(self) -> None:
        """Stop following, serving and healing (idempotent)."""
        service, self._service = self._service, None
        if service is not None:
            await service.stop()
        # Under the flush lock: a report being published is finished first, never cut between
        # JetStream storing it and this auditor recording it (unsubscribing cancels the
        # handler in the middle of its callback); a flush still waiting is cancelled instead.
        async with self._flush_lock:
            for sub in self._subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            self._subs.clear()
            tasks = [*self._tasks, *self._healer.tasks()]
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._tasks.clear()
            self._healer.forget()
        if self.ready.is_set() and not self.replaying:
            self.save_snapshot()

    # -- events -----------------------------------------------------------------------------

    def _handler(self, stream: str) -> Callable[[Msg], Awaitable[None]]:
        async def on_msg(msg: Msg) -> None:
            if stream != subjects.STREAM_STATUS or self.replaying:
                await on_event(msg)
                return
            # A status, live: the executor's apply goes on in the submission's trace with
            # this auditor's check of it (what it judged, what it published).
            with (
                tracing.process_span(msg.subject, msg.headers, template=subjects.status("{node}")),
                tracing.tracer().start_as_current_span(CHECK_SPAN),
            ):
                await on_event(msg)

        async def on_event(msg: Msg) -> None:
            meta = msg.metadata  # parsed from the reply subject on each read: read once
            try:
                changed = self._apply(stream, msg, at=meta.timestamp.timestamp())
            except events.BadMessage as exc:
                # Reported once (each message is read once per replay), then ignored.
                self.bad_messages += 1
                log.warning("ignoring a bad message on %s: %s", stream, exc)
                changed = {}
            except Exception as exc:  # never fatal: the replay and the service go on
                self.bad_messages += 1
                log.error("cannot judge the message on %s: %r", msg.subject[:200], exc)
                changed = {}
            seq = meta.sequence.stream
            self._marks[stream].seq = max(self._marks[stream].seq, seq)
            self.events_applied += 1
            self._dirty = True
            if not self._reached[stream].is_set() and seq >= self._targets[stream]:
                self._reached[stream].set()
            if not self.replaying:
                self._report_strays()
                if changed:
                    await self.flush(changed)
                    self._schedule_heals()

        return on_msg

    def _apply(self, stream: str, msg: Msg, *, at: float) -> dict[str, list[DriftItem]]:
        """Fold the message into the view; ``at``: when JetStream stored it."""
        event = events.decode_event(stream, msg.subject, msg.data)
        if isinstance(event, NodeIntent):
            return self.view.on_intent(event, at)
        if isinstance(event, NodeStatus):
            status = event
            tracing.annotate(node=status.node, generation=status.observed_generation)
            changed = self.view.on_status(status, at)
            trace.get_current_span().set_attribute(
                "l2net.drift.open", len(self.view.node(status.node).episodes.open)
            )
            return changed
        if isinstance(event, Node):
            return self.view.on_heartbeat(event, at)
        if isinstance(event, ObservedState):
            return self.view.on_observed(event, at)
        if isinstance(event, DriftReport):
            self._ledger.record(event, self.view)
        # L2_SPECS: replayed so that the view starts from the whole history; the intents
        # compiled from the specs are what nodes are judged against.
        return {}

    def _report_strays(self) -> None:
        """Say once, for each node that never registered, that what was published for it is
        ignored (an intent for a node that does not exist is a stray, not drift)."""
        for name in self.view.strays():
            if name not in self._strays_reported:
                self._strays_reported.add(name)
                log.warning("%s", self._stray_note(name))

    def _stray_note(self, name: str) -> str:
        v = self.view.nodes[name]
        what = f"intent generation {v.latest_generation}" if v.intents else "statuses"
        return (
            f"stray: {what} published for node {name!r}, which never registered"
            f" (no {subjects.node(name)}): not judged"
        )

    # -- publishing -------------------------------------------------------------------------

    async def flush(self, nodes: Iterable[str] | None = None) -> None:
        """Publish every episode of ``nodes`` (default: all) that opened or resolved since it
        was last published (what the :class:`~services.auditor.ledger.Ledger` says is due)."""
        async with self._flush_lock:
            names = sorted(self.view.nodes) if nodes is None else sorted(set(nodes))
            for name in names:
                v = self.view.node(name)
                for item in self._ledger.changes(v):
                    # One report per episode change: its Nats-Msg-Id is then the same
                    # whichever auditor publishes it (see the module's docstring).
                    for report in self._ledger.reports(name, item):
                        await self._publish(v, [report])
                    self._ledger.mark(name, item)
                metrics.drift_findings_open().set(len(v.episodes.open), {"l2net.node": name})
            reporting = sum(1 for v in self.view.nodes.values() if v.heartbeat_at and not v.silent)
            metrics.nodes_reporting().set(reporting)

    async def _publish(self, v: NodeView, items: list[DriftItem], note: str = "") -> None:
        report = DriftReport(
            node=v.name,
            generation=v.latest_generation,
            items=items,
            at=time.time(),
            open=len(v.episodes.open),
            unverified=v.silent,
            heals=len(v.heals),
            note=note,
        )
        msg_id = report_id(v.name, items, note=note, at=report.at)
        subject = subjects.drift(v.name)
        with tracing.publish_span(subject, template=subjects.drift("{node}")) as headers:
            tracing.annotate(node=v.name, generation=v.latest_generation)
            headers["Nats-Msg-Id"] = msg_id
            ack = await self.js.publish(subject, bus.encode(report), headers=headers)
        if ack.duplicate:
            self.duplicates_dropped += 1
            return  # another auditor published this very change first
        self.published_reports += 1
        for item in items:
            state = "resolved" if item.resolved_at is not None else "open"
            where = f"{item.object}.{item.path}" if item.path else item.object
            log.info(
                "%s: drift %s %s (desired %r, actual %r)",
                v.name,
                state,
                where,
                item.desired,
                item.actual,
            )

    # -- time -------------------------------------------------------------------------------

    async def _ticker(self) -> None:
        saved = time.monotonic()
        while True:
            await asyncio.sleep(self.config.tick_s)
            if self._dirty and time.monotonic() - saved >= self.config.snapshot_every_s:
                self.save_snapshot()
                saved = time.monotonic()
            try:
                await self.tick()
            except Exception as exc:  # NATS trouble: nats-py reconnects; try next tick
                log.warning("tick: %s", exc)

    async def tick(self) -> list[asyncio.Task[None]]:
        """Apply time once, as the timer does every ``tick_s``: publish what opened or resolved
        with it (a node stopped reporting, a generation stuck) and start the heals now due.

        Returns those heals (the timer does not wait for them; a test may, to see one tick
        whole instead of sleeping through a few).
        """
        changed = self.view.tick(time.time())
        if changed:
            await self.flush(changed)
        return self._schedule_heals()

    # -- certainty --------------------------------------------------------------------------

    async def check_live(self, node: str) -> bool:
        """Ask ``node``'s executor for its state now and judge it; False if it did not answer."""
        try:
            reply = await self.nc.request(
                subjects.executor_control(node, "state"),
                b"",
                timeout=self.config.live_timeout_s,
            )
            observed = events.decode_event(
                subjects.STREAM_OBSERVED, subjects.observed(node), reply.data
            )
        except (NoRespondersError, NatsTimeout, events.BadMessage) as exc:
            log.info("%s: no live state (%s: %s)", node, type(exc).__name__, exc)
            self._live_failed.add(node)
            return False
        self._live_failed.discard(node)
        changed = self.view.on_observed(observed, observed.at or time.time())
        if changed:
            await self.flush(changed)
        return True

    async def check(
        self, node: str | None = None, *, live: bool = True, heal: bool = False
    ) -> protocol.CheckReply:
        """Where ``node`` (or every node) stands, after a live check unless ``live`` is False.

        ``heal``: whatever the policy, ask each drifting node's executor to re-converge now
        (counted and recorded like a policy heal), then answer from a fresh live check.
        """
        registered = self.registered()
        strays = self.view.strays()
        if node is not None and node not in registered:
            known = ", ".join(registered) or "none"
            why = self._stray_note(node) if node in strays else f"unknown node {node!r}"
            problem = api.not_found("Node", node, f"{why} (nodes known: {known})")
            return protocol.CheckReply(ok=False, errors=[problem])
        names = [node] if node is not None else registered
        if live or heal:
            await asyncio.gather(*(self.check_live(n) for n in names))
        if heal:
            for n in names:
                kernel = [
                    i for i in self.view.node(n).open_items() if is_kernel_key((i.object, i.path))
                ]
                if kernel and n not in self._live_failed:
                    await self.heal(n, kernel)
        self.view.tick(time.time())
        await self.flush(names)
        self._schedule_heals()
        return protocol.CheckReply(
            ok=True,
            nodes=[self.node_audit(n, live=live) for n in names],
            at=time.time(),
            notes=[self._stray_note(n) for n in strays] if node is None else [],
        )

    def applied_up_to(self, stream: str) -> int:
        """The last sequence of ``stream`` (one it reads) applied to the view (0: none)."""
        mark = self._marks.get(stream)
        return mark.seq if mark is not None else 0

    def registered(self) -> list[str]:
        """The nodes that registered (``l2.node.<node>``): the only ones judged."""
        return sorted(n for n, v in self.view.nodes.items() if v.registered)

    def node_audit(self, name: str, *, live: bool = False) -> protocol.NodeAudit:
        """Where ``name`` stands now, from the view (``live``: a live check was asked for)."""
        v = self.view.node(name)
        note = ""
        answered = not (live and name in self._live_failed)
        if v.silent:
            note = "stopped reporting: its last known state is shown, unverified"
        elif not answered:
            note = "its executor did not answer a live check: last reported state shown"
        return protocol.NodeAudit(
            node=name,
            desired_generation=v.latest_generation,
            applied_generation=v.applied_generation,
            applied_digest=v.applied_digest,
            observed_generation=v.observed.generation if v.observed else 0,
            reporting=v.heartbeat_at is not None and not v.silent,
            verified=not v.silent and answered and v.observed is not None,
            heartbeat_at=v.heartbeat_at,
            observed_at=v.observed_at or None,
            items=[msgspec.structs.replace(i) for i in v.open_items()],
            matching_since=v.matching_since,
            last_matched=v.last_matched,
            heals=len(v.heals),
            note=note,
        )

    def findings(self, node: str) -> list[DriftItem]:
        """The open findings of ``node`` (empty for an unknown node)."""
        v = self.view.nodes.get(node)
        return [msgspec.structs.replace(i) for i in v.open_items()] if v else []

    def history(self, node: str) -> protocol.HistoryReply:
        """``node``'s generations, apply results, drift episodes and heals, oldest first."""
        v = self.view.nodes.get(node)
        if v is None or not v.registered:
            problem = api.not_found("Node", node, f"unknown node {node!r}")
            return protocol.HistoryReply(ok=False, node=node, errors=[problem])
        events = [
            protocol.HistoryEvent(at=e.at, what=e.what, generation=e.generation, text=e.text)
            for e in v.history()
        ]
        return protocol.HistoryReply(
            ok=True,
            node=node,
            events=events,
            matching_since=v.matching_since,
            last_matched=v.last_matched,
        )

    def desired(self, node: str, generation: int | None) -> protocol.DesiredReply:
        """``node``'s desired state at ``generation`` (the newest if None), and when it matched."""
        v = self.view.nodes.get(node)
        if v is None or not v.registered:
            problem = api.not_found("Node", node, f"unknown node {node!r}")
            return protocol.DesiredReply(ok=False, errors=[problem])
        gen = generation if generation is not None else v.latest_generation
        intent = v.desired_at(gen)
        if intent is None:
            known = ", ".join(str(g) for g in sorted(v.intents)) or "none"
            return protocol.DesiredReply(
                ok=False,
                errors=[
                    api.Problem(
                        code=Code.NOT_FOUND,
                        kind="Node",
                        name=node,
                        field="generation",
                        message=f"node {node!r} has no generation {gen} "
                        f"(generations known: {known})",
                    )
                ],
            )
        return protocol.DesiredReply(
            ok=True,
            intent=intent,
            matching_since=v.matching_since,
            last_matched=v.last_matched,
        )

    # -- heal -------------------------------------------------------------------------------

    def heals(self, node: str) -> int:
        """How often this node was asked to re-converge (from the history, all auditors)."""
        v = self.view.nodes.get(node)
        return len(v.heals) if v else 0

    def _schedule_heals(self) -> list[asyncio.Task[None]]:
        return [] if self.replaying else self._healer.schedule()

    async def heal(self, node: str, items: list[DriftItem]) -> str:
        """Ask ``node``'s executor to re-converge because of ``items``; count and record it.

        Returns the note recorded in ``L2_DRIFT`` (what was healed, and the executor's answer).
        """
        return await self._healer.heal(node, items)

    async def _record_heal(self, node: str, note: str, at: float) -> None:
        v = self.view.node(node)
        self._ledger.heal(v, note, at=at)
        log.info("%s", note)
        await self._publish_heal(v, note, at)

    async def _publish_heal(self, v: NodeView, note: str, at: float) -> None:
        report = DriftReport(
            node=v.name,
            generation=v.latest_generation,
            items=[],
            at=at,
            open=len(v.episodes.open),
            unverified=v.silent,
            heals=len(v.heals),
            note=note,
        )
        subject = subjects.drift(v.name)
        with tracing.publish_span(subject, template=subjects.drift("{node}")) as headers:
            await self.js.publish(subject, bus.encode(report), headers=headers)

    # -- requests ---------------------------------------------------------------------------

    # Each body decodes as its request (an empty body as ``{}``); one that does not, an
    # unknown field included, is answered ``ok: false`` with a bad-request Problem.

    async def _handle_check(self, req: Request) -> None:
        body = api.decode_request(req.data, protocol.CheckRequest)
        if isinstance(body, api.Problem):
            reply = protocol.CheckReply(ok=False, errors=[body])
        else:
            with tracing.process_span(subjects.AUDITOR_CHECK, req.headers) as span:
                tracing.annotate(span, node=body.node)
                reply = await self.check(body.node, live=body.live, heal=body.heal)
        await req.respond(bus.encode(reply))

    async def _handle_history(self, req: Request) -> None:
        body = api.decode_request(req.data, protocol.HistoryRequest)
        if isinstance(body, api.Problem):
            reply = protocol.HistoryReply(ok=False, errors=[body])
        else:
            reply = self.history(body.node)
        await req.respond(bus.encode(reply))

    async def _handle_desired(self, req: Request) -> None:
        body = api.decode_request(req.data, protocol.DesiredRequest)
        if isinstance(body, api.Problem):
            desired = protocol.DesiredReply(ok=False, errors=[body])
        else:
            desired = self.desired(body.node, body.generation)
        await req.respond(bus.encode(desired))
