"""What the auditor published in ``L2_DRIFT``, and what it must publish next: pure, no I/O.

Model, in plain words. ``L2_DRIFT`` is the record of drift: each report there carries one
episode change (an episode opened, or resolved). The :class:`Ledger` holds that record as the
auditor knows it, each episode (node, object, field path, start time) as last published,
whether this auditor published it or read it back from the stream (its own reports before a
restart, another auditor's). Comparing a node's view (:class:`~services.auditor.view.NodeView`)
with the ledger says what to publish, so that each change is published once:

* **Changes** (:meth:`Ledger.changes`): an episode the ledger does not hold, or one it holds
  open that has ended since. Nothing else, never on a timer.
* **Reports** (:meth:`Ledger.reports`): one report per change. An episode already over that
  nobody published (caught up after the fact) goes out opened, then resolved, as if followed
  live: another auditor following live but behind reads these reports before it reaches the
  episode, and then publishes nothing of it, so an end alone would lose the opening.
* **One episode, whoever saw it first** (:meth:`Ledger.align`): a live check may see a change
  a moment before (or after) the observed state that carries it into the stream. The episode
  published first is the record; one computed from the streams that overlaps it in time is
  that same episode and takes its start time. An episode the view has already matched is not
  matched twice: read open in ``L2_DRIFT`` (its end not read yet, or not published yet) it
  must not swallow a later episode of the same field.
* **Kept until an event ends it** (:meth:`Ledger.adopt`, after the replay): an episode
  published open that the streams alone do not show (a live check found it) stays open in
  the view; a node finding that ended while no auditor ran (heartbeat back, generation
  applied) is closed at the time the view shows it over.
* **Strays**: a node that never registered is never judged; an episode published open for it
  (by an older auditor) is closed at its own start, so that no reader of ``L2_DRIFT`` keeps
  it open for ever, the same time whoever closes it.
* **Heals** (:meth:`Ledger.heal`, :meth:`Ledger.record`) are counted once each, whether this
  auditor made the heal or read it in ``L2_DRIFT``.

Two auditors publish a change under the same :func:`report_id` (its ``Nats-Msg-Id``), made
of the episode's identity and its state, so JetStream drops the second copy; after the
duplicate window each has read the other's report and the ledger says there is nothing to
publish.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import msgspec

from services.auditor.view import (
    GENERATION,
    HEARTBEAT,
    FleetView,
    Key,
    NodeView,
    episode_id,
    is_kernel_key,
)
from shared.domain.model import DriftItem, DriftReport

Published = dict[tuple[str, Key], dict[float, DriftItem]]
"""(node, (object, path)) -> start time -> the episode as last published."""


def report_id(node: str, items: Iterable[DriftItem], *, note: str = "", at: float = 0.0) -> str:
    """The ``Nats-Msg-Id`` of a report: the same for the same episode change, whichever
    auditor publishes it (a report without items, a heal: its node, note and time)."""
    ids = ",".join(
        f"{episode_id(node, i)}:{'r' if i.resolved_at is not None else 'o'}" for i in items
    )
    return hashlib.sha256((ids or f"{node}:{note}:{at}").encode()).hexdigest()


class Ledger:
    """The episodes published in ``L2_DRIFT`` and the heals recorded there."""

    def __init__(
        self, published: Published | None = None, heal_notes: Iterable[tuple[str, float]] = ()
    ) -> None:
        self.published: Published = published if published is not None else {}
        """Read by the snapshot; changed only through the methods."""
        self.heal_notes: set[tuple[str, float]] = set(heal_notes)
        """(node, time) of every heal counted."""

    # -- what L2_DRIFT holds ----------------------------------------------------------------

    def record(self, report: DriftReport, view: FleetView) -> None:
        """A report read in ``L2_DRIFT`` (this auditor's or another's): its episodes are
        published, and a heal it records is counted once."""
        for item in report.items:
            episodes = self.published.setdefault((report.node, (item.object, item.path)), {})
            if item.resolved_at is not None or item.first_seen not in episodes:
                episodes[item.first_seen] = item
        if report.note.startswith("heal") and (report.node, report.at) not in self.heal_notes:
            self.heal_notes.add((report.node, report.at))
            view.node(report.node).heals.append((report.at, report.note))

    def heal(self, v: NodeView, note: str, *, at: float) -> None:
        """Count a heal this auditor made (its report, read back later, is not counted again)."""
        self.heal_notes.add((v.name, at))
        v.heals.append((at, note))

    def mark(self, node: str, item: DriftItem) -> None:
        """``item`` (a change :meth:`changes` gave) is published now."""
        self.published.setdefault((node, (item.object, item.path)), {})[item.first_seen] = item

    def episodes(self, node: str, key: Key) -> dict[float, DriftItem]:
        """The episodes of ``key`` on ``node`` as published, by start time (a copy)."""
        return dict(self.published.get((node, key), {}))

    # -- what to publish --------------------------------------------------------------------

    def changes(self, v: NodeView) -> list[DriftItem]:
        """The episodes of ``v`` that opened or resolved since last published, by start time
        (copies, to publish and then :meth:`mark`). Brings ``v`` in line with the record first:
        start times of episodes published already (:meth:`align`), a stray's episodes closed."""
        stray = not v.registered
        if stray:
            # Never judged; closed at its own start: it never was drift.
            for open_key, item in list(v.episodes.open.items()):
                if item.first_seen in self.published.get((v.name, open_key), {}):
                    v.episodes.resolve(open_key, item.first_seen)
        items: list[DriftItem] = []
        for item in v.episodes.all():
            self.align(v, item)
            episodes = self.published.get((v.name, (item.object, item.path)), {})
            if stray and item.first_seen not in episodes:
                continue
            if item.first_seen not in episodes or (
                item.resolved_at is not None and episodes[item.first_seen].resolved_at is None
            ):
                items.append(msgspec.structs.replace(item))
        return items

    def reports(self, node: str, item: DriftItem) -> list[DriftItem]:
        """The reports (one item each, in order) that publish the change ``item``: an episode
        over before anyone published it goes out opened first (see the module's docstring)."""
        if item.resolved_at is not None and item.first_seen not in self.published.get(
            (node, (item.object, item.path)), {}
        ):
            return [msgspec.structs.replace(item, resolved_at=None), item]
        return [item]

    def align(self, v: NodeView, item: DriftItem) -> None:
        """Give ``item`` (an episode of ``v``) the start time of the published episode it is
        the same as: one not matched yet that overlaps it in time."""
        key = (item.object, item.path)
        episodes = self.published.get((v.name, key))
        if not episodes or item.first_seen in episodes:
            return
        taken = {i.first_seen for i in v.episodes.all() if (i.object, i.path) == key}
        end = item.resolved_at if item.resolved_at is not None else float("inf")
        for first, known in episodes.items():
            if first in taken:
                continue
            known_end = known.resolved_at if known.resolved_at is not None else end
            if first <= end and item.first_seen <= known_end:
                item.first_seen = first
                return

    def adopt(self, view: FleetView) -> None:
        """After the replay: align every episode of ``view`` with the record, and keep open
        the episodes published open that the streams alone do not show, until an event ends
        them (one the view shows over already is ended then)."""
        for v in view.nodes.values():
            for item in v.episodes.all():
                self.align(v, item)
        for (node, key), episodes in self.published.items():
            v = view.node(node)
            computed = {i.first_seen for i in v.episodes.all() if (i.object, i.path) == key}
            for first, known in episodes.items():
                if known.resolved_at is not None or first in computed or key in v.episodes.open:
                    continue
                v.episodes.open[key] = msgspec.structs.replace(known)
                ended = ended_since(v, key, first)
                if ended is not None:
                    v.episodes.resolve(key, ended)


def ended_since(v: NodeView, key: Key, first: float) -> float | None:
    """When the view shows that an episode of ``key`` open since ``first`` is over (None: it
    may still be on). Used for episodes published open that the streams do not show."""
    if is_kernel_key(key):
        return v.observed_at if v.observed_at > first else None
    if key[1] == HEARTBEAT:
        return v.heartbeat_at if v.heartbeat_at is not None and v.heartbeat_at > first else None
    if (
        key[1] == GENERATION
        and v.latest_generation
        and (v.applied_generation >= v.latest_generation)
    ):
        return max(first, v.applied_at.get(v.latest_generation, first))
    return None
