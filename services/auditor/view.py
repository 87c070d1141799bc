"""The auditor's view of the fleet: a pure fold over the event history, no I/O.

Model, in plain words. Every node has a :class:`NodeView` built only from events, each
stamped with the time it happened (the time the event itself carries, else its JetStream
timestamp), never with the time the auditor read it. So the same events give the same
view, whoever replays them and whenever:

* an **intent** adds a generation (the desired state at that generation is kept);
* a **status** records an apply result;
* a **heartbeat** (``l2.node.<node>``) says the executor lives; a gap longer than the
  silence limit is a ``node/<node> heartbeat`` episode from ``last + silence`` to the next
  heartbeat, and makes the node *unverified* while it lasts;
* an **observed state** is judged against the intent *of its own generation* (so a rollout
  in progress is never drift): the one :func:`shared.domain.l2state.diff` turns the pair into
  differences, and each (object, field path) opens an episode that lasts until an observed
  state without it;
* :meth:`FleetView.tick` adds what only the passing of time shows: a node stopped
  reporting, a node stuck on an old generation (``node/<node> generation``, from the failed
  apply, or ``grace`` after the intent without an Applied status).

What a node runs is what its executor says it **really applied**: the last Applied status,
whose ``intentDigest`` names the very intent (:func:`shared.wire.intents.digest`). An observed state
is judged against that intent, and ``node/<node> generation`` is open whenever the node runs
anything but the latest generation published for it: an older one (stuck, or a stale intent
applied after a restart), one never published, or, when the view is given the planner's
public keys, when the latest generation (or the one it runs) is not signed by the planner.

Only nodes that registered (a message on ``l2.node.<node>``) are judged over time: an intent
for a node that never registered is a stray, shown by :meth:`FleetView.strays`, not drift.

An observed state whose intent has not been seen yet waits for it, so the order in which
the streams are replayed does not change the outcome; the generation finding is judged only
when the view is :attr:`FleetView.live` (after the replay), from the times the events carry.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from shared.domain.l2state import (
    Difference,
    Field,
    NodeL2State,
    ObjectKind,
    StateError,
    desired_state,
    diff,
    state_from_observed,
)
from shared.domain.model import DriftItem, Node, NodeIntent, NodeStatus, ObservedState
from shared.wire import intents, signing

NODE_PREFIX = "node/"
HEARTBEAT = "heartbeat"
GENERATION = "generation"
FINAL_PHASES = ("Applied", "Failed", "RolledBack")

Key = tuple[str, str]
"""An episode's identity on one node: (object, field path)."""


def node_object(node: str) -> str:
    """The object name of findings about the node itself: ``node/<node>``."""
    return f"{NODE_PREFIX}{node}"


def is_kernel_key(key: Key) -> bool:
    """True for findings about the kernel's state, False for ``node/<node>`` ones."""
    return not key[0].startswith(NODE_PREFIX)


def episode_id(node: str, item: DriftItem) -> str:
    """A stable identity of one episode (same events, same id): node, object, path, start."""
    return f"{node}|{item.object}|{item.path}|{item.first_seen:.6f}"


Desired = NodeL2State | StateError
"""What an intent asks of a node (:func:`desired_of`), or why it cannot be asked."""


def desired_of(intent: NodeIntent, *, mgmt_vlan: int | None) -> Desired:
    """The desired state of ``intent`` on a node whose mgmt VLAN is ``mgmt_vlan``."""
    try:
        return desired_state(intent, mgmt_vlan=mgmt_vlan)[0]
    except StateError as exc:
        return exc


def kernel_differences(
    intent: NodeIntent, observed: ObservedState, *, desired: Desired | None = None
) -> list[Difference]:
    """How ``observed`` differs from ``intent``: the one diff the executor also plans from.

    ``desired``: :func:`desired_of` the same intent and ``observed.mgmt_vlan`` when the
    caller kept it (the view does, per node), else computed here."""
    if desired is None:
        desired = desired_of(intent, mgmt_vlan=observed.mgmt_vlan)
    if isinstance(desired, StateError):
        return [
            Difference.changed(
                # Judged with the kernel's findings, so a later observed state ends it.
                ObjectKind.RECORD,
                "intent",
                Field.GENERATION,
                key=str(intent.generation),
                desired="an intent the node can apply",
                actual=str(desired),
            )
        ]
    try:
        actual = state_from_observed(observed)
    except (StateError, ValueError, TypeError, KeyError) as exc:
        # An observed state that does not read as a node's state: judged as one finding,
        # never a crash of the auditor (the executor's next report ends it).
        return [
            Difference.changed(
                ObjectKind.RECORD,
                "observed",
                Field.GENERATION,
                key=str(observed.generation),
                desired="a readable observed state",
                actual=f"{type(exc).__name__}: {exc}"[:300],
            )
        ]
    return diff(desired, actual)


REMEMBERED = 4
"""Kernel states remembered per node with their differences (see :class:`Judging`)."""


@dataclass
class Judging:
    """A node's observed states judged against one intent (with the node's mgmt VLAN).

    Not part of the view (a snapshot leaves it out): all of it follows from the intent and the
    observed states. Its desired state is built once; and since the differences are a pure
    function of the desired state and the kernel's state an observed state carries, the last
    few kernel states met are remembered with their differences. A node that reports the
    same state again (converged, or drifted the same way) costs a hash, not a diff."""

    intent: NodeIntent
    mgmt_vlan: int | None
    desired: Desired
    seen: dict[bytes, list[Difference]] = field(default_factory=dict)

    def differences(self, observed: ObservedState) -> list[Difference]:
        """:func:`kernel_differences` of the intent and ``observed``."""
        # Exactly what state_from_observed reads (the mgmt VLAN is this judging's own).
        state = (observed.node, observed.links, observed.vlans, observed.namespaces)
        key = hashlib.blake2b(_encoder.encode(state), digest_size=16).digest()
        found = self.seen.get(key)
        if found is None:
            found = kernel_differences(self.intent, observed, desired=self.desired)
            if len(self.seen) >= REMEMBERED:
                del self.seen[next(iter(self.seen))]  # the oldest
            self.seen[key] = found
        return found


_encoder = msgspec.json.Encoder()


def iso(at: float | None) -> str:
    """``at`` (seconds since the epoch) as ISO 8601 UTC (``2026-12-01T03:04:05Z``, with
    milliseconds when it has them); ``-`` for none, and the number itself when it is not a
    time a calendar can show (a hostile value is printed, never a crash)."""
    if at is None or at == 0:
        return "-"
    try:
        # Rounded to the millisecond first: .9996 s is the next second, not this one.
        whole, millis = divmod(round(at * 1000), 1000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    except (OverflowError, OSError, ValueError, TypeError):
        return repr(at)
    return f"{stamp}.{millis:03d}Z" if millis else f"{stamp}Z"


@dataclass
class Episodes:
    """Open and closed drift episodes of one node."""

    open: dict[Key, DriftItem] = field(default_factory=dict)
    closed: list[DriftItem] = field(default_factory=list)

    def update(self, current: Iterable[Difference], *, at: float, kernel: bool) -> list[DriftItem]:
        """Open what is new, resolve what is gone (kernel keys, or node keys), at ``at``."""
        seen: dict[Key, Difference] = {(d.object, d.path): d for d in current}
        changed: list[DriftItem] = []
        for key, d in seen.items():
            item = self.open.get(key)
            if item is None:
                item = DriftItem(
                    object=d.object, path=d.path, desired=d.desired, actual=d.actual, first_seen=at
                )
                self.open[key] = item
                changed.append(item)
            else:  # the same finding, its values as they are now (not a new episode)
                item.desired, item.actual = d.desired, d.actual
        for key in [k for k in self.open if is_kernel_key(k) == kernel and k not in seen]:
            changed.append(self.resolve(key, at))
        return changed

    def open_one(self, key: Key, *, desired: Any, actual: Any, at: float) -> DriftItem | None:
        """Open ``key`` at ``at`` unless open (then update its values); the new episode or None."""
        if key in self.open:
            self.open[key].actual = actual
            self.open[key].desired = desired
            return None
        item = DriftItem(object=key[0], path=key[1], desired=desired, actual=actual, first_seen=at)
        self.open[key] = item
        return item

    def resolve(self, key: Key, at: float) -> DriftItem:
        """End the open episode of ``key`` at ``at`` (never before it started)."""
        item = self.open.pop(key)
        item.resolved_at = max(at, item.first_seen)
        self.closed.append(item)
        return item

    def all(self) -> list[DriftItem]:
        """Every episode, closed and open, by start time."""
        return sorted([*self.closed, *self.open.values()], key=lambda i: (i.first_seen, i.object))


@dataclass
class HistoryEntry:
    """One line of a node's history (``l2net history``)."""

    at: float
    what: str
    generation: int | None = None
    text: str = ""


@dataclass
class NodeView:
    """Everything the auditor knows about one node, from events only."""

    name: str
    intents: dict[int, NodeIntent] = field(default_factory=dict)
    intent_at: dict[int, float] = field(default_factory=dict)
    latest_generation: int = 0
    by_digest: dict[str, NodeIntent] = field(default_factory=dict)
    """Every intent published for this node, by :func:`shared.wire.intents.digest`."""
    statuses: list[tuple[float, NodeStatus]] = field(default_factory=list)
    applied_generation: int = 0
    """The generation the node runs: that of its last Applied status (not the highest)."""
    applied_digest: str | None = None
    """The digest of the intent the node runs (its last Applied status says), if it said."""
    running_at: float = 0.0
    """When the node's last Applied status was made."""
    failed_at: dict[int, float] = field(default_factory=dict)
    applied_at: dict[int, float] = field(default_factory=dict)
    observed: ObservedState | None = None
    observed_at: float = 0.0
    pending: list[tuple[float, ObservedState]] = field(default_factory=list)
    inventory: Node | None = None
    heartbeat_at: float | None = None
    silent: bool = False
    episodes: Episodes = field(default_factory=Episodes)
    matching_since: float | None = None
    last_matched: float | None = None
    heals: list[tuple[float, str]] = field(default_factory=list)

    @property
    def registered(self) -> bool:
        """True once the node's executor registered (a message on ``l2.node.<node>``)."""
        return self.heartbeat_at is not None

    def running_intent(self) -> NodeIntent | None:
        """The intent the node really applied last (by its digest; else by generation)."""
        if self.applied_digest is not None:
            return self.by_digest.get(self.applied_digest)
        return self.intents.get(self.applied_generation)

    @property
    def kernel_open(self) -> list[DriftItem]:
        """Open findings about the kernel's state (not about the node itself)."""
        return [i for k, i in self.episodes.open.items() if is_kernel_key(k)]

    def open_items(self) -> list[DriftItem]:
        """Open findings, by object and path."""
        return sorted(self.episodes.open.values(), key=lambda i: (i.object, i.path))

    def desired_at(self, generation: int) -> NodeIntent | None:
        """The desired state of this node at ``generation`` (None if never seen)."""
        return self.intents.get(generation)

    def history(self) -> list[HistoryEntry]:
        """Generations, apply results, drift episodes and heals, oldest first."""
        out: list[HistoryEntry] = []
        for gen, at in self.intent_at.items():
            out.append(HistoryEntry(at=at, what="intent", generation=gen, text="new generation"))
        for at, st in self.statuses:
            if st.phase not in FINAL_PHASES:
                continue
            text = f"{st.phase} ({st.netlink_writes} netlink writes, {st.duration_s:.2f}s)"
            if st.error:
                text += f": {st.error}"
            out.append(
                HistoryEntry(at=at, what="apply", generation=st.observed_generation, text=text)
            )
        for item in self.episodes.all():
            where = f"{item.object}.{item.path}" if item.path else item.object
            values = f"desired {item.desired!r}, actual {item.actual!r}"
            out.append(HistoryEntry(at=item.first_seen, what="drift", text=f"{where}: {values}"))
            if item.resolved_at is not None:
                out.append(HistoryEntry(at=item.resolved_at, what="resolved", text=where))
        for at, text in self.heals:
            out.append(HistoryEntry(at=at, what="heal", text=text))
        out.sort(key=lambda e: (e.at, e.what))
        return out


@dataclass
class Policy:
    """How the auditor judges time: ``silence_s`` without a heartbeat is "not reporting";
    ``grace_s`` after an intent without an Applied status is "stuck on an old generation"."""

    silence_s: float = 30.0
    grace_s: float = 60.0


class FleetView:
    """Every node's view; each method returns the episodes it opened or resolved, by node.

    ``trusted_keys``: the planner's public keys (nkeys ``N...``); when given, an intent they
    did not sign is never what a node should run (``node/<node> generation`` says so)."""

    def __init__(self, policy: Policy | None = None, trusted_keys: Collection[str] = ()) -> None:
        self.policy = policy or Policy()
        self.nodes: dict[str, NodeView] = {}
        self.trusted_keys = frozenset(trusted_keys)
        self.live = True
        """False while replaying: the generation finding waits for the whole history."""
        self._unsigned: dict[str, str | None] = {}
        self._judging: dict[str, Judging] = {}

    def judging(self, node: str, intent: NodeIntent, *, mgmt_vlan: int | None) -> Judging:
        """What ``node``'s observed states are judged against: built once per intent and
        mgmt VLAN (the last one is kept: a node runs one intent at a time)."""
        kept = self._judging.get(node)
        if kept is None or kept.intent is not intent or kept.mgmt_vlan != mgmt_vlan:
            desired = desired_of(intent, mgmt_vlan=mgmt_vlan)
            kept = Judging(intent=intent, mgmt_vlan=mgmt_vlan, desired=desired)
            self._judging[node] = kept
        return kept

    def unsigned(self, intent: NodeIntent) -> str | None:
        """Why ``intent`` is not the planner's (None: it is, or no keys were given)."""
        if not self.trusted_keys:
            return None
        key = intents.digest(intent) + (intent.signature or "")
        if key not in self._unsigned:
            try:
                signing.verify(intent, self.trusted_keys)
                self._unsigned[key] = None
            except signing.SignatureError as exc:
                self._unsigned[key] = str(exc)
        return self._unsigned[key]

    def strays(self) -> list[str]:
        """Nodes something was published for that never registered (not judged)."""
        return sorted(
            n for n, v in self.nodes.items() if not v.registered and (v.intents or v.statuses)
        )

    def node(self, name: str) -> NodeView:
        """The view of ``name`` (created empty on first mention)."""
        view = self.nodes.get(name)
        if view is None:
            view = self.nodes[name] = NodeView(name=name)
        return view

    # -- events ---------------------------------------------------------------------------

    def on_intent(self, intent: NodeIntent, at: float) -> dict[str, list[DriftItem]]:
        """A new generation; observed states that waited for it are judged now."""
        v = self.node(intent.node)
        v.intents[intent.generation] = intent
        v.by_digest.setdefault(intents.digest(intent), intent)
        v.intent_at.setdefault(intent.generation, at)
        v.latest_generation = max(v.latest_generation, intent.generation)
        changed: list[DriftItem] = []
        waiting, v.pending = v.pending, []
        for obs_at, obs in waiting:
            changed += self._judge(v, obs, obs_at)
        changed += self._judge_generation(v, at)
        return {v.name: changed} if changed else {}

    def on_status(self, status: NodeStatus, at: float) -> dict[str, list[DriftItem]]:
        """An apply result: the last Applied status says what the node runs now (an older
        generation applied after a newer one is a step back, not "still the newer one")."""
        v = self.node(status.node)
        at = status.at or at
        v.statuses.append((at, status))
        gen = status.observed_generation
        if status.phase == "Applied":
            if at >= v.running_at:
                v.applied_generation = gen
                v.applied_digest = status.intent_digest
                v.running_at = at
            v.applied_at.setdefault(gen, at)
        elif status.phase in ("Failed", "RolledBack") and gen > v.applied_generation:
            v.failed_at.setdefault(gen, at)
        changed = self._judge_generation(v, at)
        return {v.name: changed} if changed else {}

    def on_heartbeat(self, node: Node, at: float) -> dict[str, list[DriftItem]]:
        """A heartbeat: ends a silence (or records one seen in a gap between heartbeats)."""
        v = self.node(node.name)
        at = node.heartbeat_at or at
        changed: list[DriftItem] = []
        key = (node_object(v.name), HEARTBEAT)
        if v.heartbeat_at is not None and at - v.heartbeat_at > self.policy.silence_s:
            # A gap: an episode from "last + silence" to now (opened by tick, or seen in replay).
            start = v.heartbeat_at + self.policy.silence_s
            item = v.episodes.open_one(
                key, desired="reporting", actual=_silent_text(v.heartbeat_at), at=start
            )
            if item is not None:
                changed.append(item)
        if key in v.episodes.open:
            changed.append(v.episodes.resolve(key, at))
        if v.heartbeat_at is None or at >= v.heartbeat_at:
            v.heartbeat_at = at
            v.inventory = node
        v.silent = False
        changed += self._judge_generation(v, at)
        return {v.name: _dedupe(changed)} if changed else {}

    def on_observed(self, observed: ObservedState, at: float) -> dict[str, list[DriftItem]]:
        """A node's actual state, judged against the intent of its own generation."""
        v = self.node(observed.node)
        at = observed.at or at
        if at < v.observed_at:
            return {}  # older than what was judged already (a live read came first)
        if observed.generation and observed.generation not in v.intents:
            v.pending.append((at, observed))
            return {}
        changed = self._judge(v, observed, at)
        return {v.name: changed} if changed else {}

    def _judge(self, v: NodeView, observed: ObservedState, at: float) -> list[DriftItem]:
        if at < v.observed_at:
            return []
        v.observed, v.observed_at = observed, at
        # The intent the node really applied (its status's digest) when it is of this
        # generation: a second intent with the same generation (forged) is not the desired one.
        intent = v.running_intent()
        if intent is None or intent.generation != observed.generation:
            intent = v.intents.get(observed.generation)
        if intent is None:
            return []  # no intent yet: nothing is desired of this node
        judging = self.judging(v.name, intent, mgmt_vlan=observed.mgmt_vlan)
        changed = v.episodes.update(judging.differences(observed), at=at, kernel=True)
        if v.kernel_open:
            if v.matching_since is not None:
                v.last_matched = at
            v.matching_since = None
        elif v.matching_since is None:
            v.matching_since = at
        return changed

    # -- time -----------------------------------------------------------------------------

    def tick(self, now: float) -> dict[str, list[DriftItem]]:
        """Findings that only the passing of time shows (stopped reporting, stuck)."""
        out: dict[str, list[DriftItem]] = {}
        for v in self.nodes.values():
            changed: list[DriftItem] = []
            if v.heartbeat_at is not None and now - v.heartbeat_at > self.policy.silence_s:
                v.silent = True
                item = v.episodes.open_one(
                    (node_object(v.name), HEARTBEAT),
                    desired="reporting",
                    actual=_silent_text(v.heartbeat_at),
                    at=v.heartbeat_at + self.policy.silence_s,
                )
                if item is not None:
                    changed.append(item)
            changed += self._judge_generation(v, now, ticking=True)
            if changed:
                out[v.name] = changed
        return out

    def generation_finding(self, v: NodeView) -> tuple[Any, Any, float] | None:
        """``(desired, actual, since)`` when the node runs anything but its latest intent."""
        if not v.registered or not v.intents:
            return None
        latest = v.latest_generation
        newest = v.intents[latest]
        bad = self.unsigned(newest)
        if bad is not None:
            return (
                f"generation {latest} signed by the planner",
                f"generation {latest}: {bad}",
                v.intent_at.get(latest, 0.0),
            )
        if v.applied_digest is not None:
            running = v.by_digest.get(v.applied_digest)
            short = v.applied_digest[:12]
            if running is None:
                actual = f"an intent never published (digest {short}...)"
                return (latest, actual, v.running_at)
            bad = self.unsigned(running)
            if bad is not None:
                return (latest, f"generation {running.generation}: {bad}", v.running_at)
            if running.generation == latest and intents.digest(newest) != v.applied_digest:
                # Same number, other content: a second intent of that generation.
                actual = f"generation {latest} with other content (digest {short}...)"
                return (latest, actual, v.running_at)
        if v.applied_generation >= latest:
            return None
        since = v.failed_at.get(latest)
        published = v.intent_at.get(latest, 0.0)
        start = published + self.policy.grace_s
        if since is not None:
            start = min(start, since)
        if v.running_at > published:
            # It applied an older generation after the latest was published: a step back.
            start = min(start, v.running_at)
        return (latest, v.applied_generation, start)

    def _judge_generation(
        self, v: NodeView, now: float, *, ticking: bool = False
    ) -> list[DriftItem]:
        """Open, update or end the ``node/<node> generation`` finding as of ``now``."""
        if not (self.live or ticking) or not v.registered:
            return []  # replaying: judged after; a stray: never judged
        key = (node_object(v.name), GENERATION)
        found = self.generation_finding(v)
        if found is None:
            return [v.episodes.resolve(key, now)] if key in v.episodes.open else []
        desired, actual, since = found
        if key in v.episodes.open:
            v.episodes.open_one(key, desired=desired, actual=actual, at=since)
            return []
        if now < since:
            return []
        item = v.episodes.open_one(key, desired=desired, actual=actual, at=since)
        return [item] if item is not None else []

    # -- answers ----------------------------------------------------------------------------

    def unverified(self, name: str) -> bool:
        """True while ``name`` is not reporting (its last known state may be stale)."""
        v = self.nodes.get(name)
        return v is not None and v.silent


def _silent_text(last: float) -> str:
    return f"no heartbeat since {iso(last)}"


def _dedupe(items: list[DriftItem]) -> list[DriftItem]:
    seen: set[int] = set()
    out: list[DriftItem] = []
    for item in items:
        if id(item) not in seen:
            seen.add(id(item))
            out.append(item)
    return out


def merge(into: dict[str, list[DriftItem]], more: dict[str, list[DriftItem]]) -> None:
    """Add ``more`` changed episodes to ``into`` (by node)."""
    for node, items in more.items():
        into.setdefault(node, []).extend(items)
