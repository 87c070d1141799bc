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
  in progress is never drift): the one :func:`shared.l2state.diff` turns the pair into
  differences, and each (object, field path) opens an episode that lasts until an observed
  state without it;
* :meth:`FleetView.tick` adds what only the passing of time shows: a node stopped
  reporting, a node stuck on an old generation (``node/<node> generation``, from the failed
  apply, or ``grace`` after the intent without an Applied status).

An observed state whose intent has not been seen yet waits for it, so the order in which
the streams are replayed does not change the outcome.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from shared.l2state import Difference, StateError, desired_state, diff, state_from_observed
from shared.model import DriftItem, Node, NodeIntent, NodeStatus, ObservedState

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


def kernel_differences(intent: NodeIntent, observed: ObservedState) -> list[Difference]:
    """How ``observed`` differs from ``intent``: the one diff the executor also plans from."""
    try:
        desired, _refused = desired_state(intent, mgmt_vlan=observed.mgmt_vlan)
    except StateError as exc:
        return [
            Difference(
                # Judged with the kernel's findings, so a later observed state ends it.
                object="intent",
                path=f"generation {intent.generation}",
                desired="an intent the node can apply",
                actual=str(exc),
            )
        ]
    return diff(desired, state_from_observed(observed))


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
    statuses: list[tuple[float, NodeStatus]] = field(default_factory=list)
    applied_generation: int = 0
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
    """Every node's view; each method returns the episodes it opened or resolved, by node."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy or Policy()
        self.nodes: dict[str, NodeView] = {}

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
        v.intent_at.setdefault(intent.generation, at)
        v.latest_generation = max(v.latest_generation, intent.generation)
        changed: list[DriftItem] = []
        waiting, v.pending = v.pending, []
        for obs_at, obs in waiting:
            changed += self._judge(v, obs, obs_at)
        return {v.name: changed} if changed else {}

    def on_status(self, status: NodeStatus, at: float) -> dict[str, list[DriftItem]]:
        """An apply result; an Applied newest generation ends a stuck episode."""
        v = self.node(status.node)
        at = status.at or at
        v.statuses.append((at, status))
        gen = status.observed_generation
        if status.phase == "Applied":
            v.applied_generation = max(v.applied_generation, gen)
            v.applied_at.setdefault(gen, at)
        elif status.phase in ("Failed", "RolledBack") and gen > v.applied_generation:
            v.failed_at.setdefault(gen, at)
        key = (node_object(v.name), GENERATION)
        if key in v.episodes.open and v.applied_generation >= v.latest_generation:
            return {v.name: [v.episodes.resolve(key, at)]}
        return {}

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
        intent = v.intents.get(observed.generation)
        if intent is None:
            return []  # no intent yet: nothing is desired of this node
        changed = v.episodes.update(kernel_differences(intent, observed), at=at, kernel=True)
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
            gen = v.latest_generation
            if gen and v.applied_generation < gen:
                since = v.failed_at.get(gen)
                due = v.intent_at.get(gen, now) + self.policy.grace_s
                start = min(since, due) if since is not None else due
                if now >= start:
                    item = v.episodes.open_one(
                        (node_object(v.name), GENERATION),
                        desired=gen,
                        actual=v.applied_generation,
                        at=start,
                    )
                    if item is not None:
                        changed.append(item)
            if changed:
                out[v.name] = changed
        return out

    # -- answers ----------------------------------------------------------------------------

    def unverified(self, name: str) -> bool:
        """True while ``name`` is not reporting (its last known state may be stale)."""
        v = self.nodes.get(name)
        return v is not None and v.silent


def _silent_text(last: float) -> str:
    return f"no heartbeat since {last:.3f}"


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
