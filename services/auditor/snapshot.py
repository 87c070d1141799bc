"""Snapshots of the auditor's view, so that a restart replays only what came after.

A snapshot is a cache of what JetStream holds, never a source of truth: the whole
:class:`~services.auditor.view.FleetView`, what was published to ``L2_DRIFT``, and for each
stream the sequence of the last message the view includes (with the stream's creation time,
so that a snapshot of another server's, or of a re-created, stream is never used). A missing,
unreadable or foreign snapshot means a full replay, which reaches the same view.

It is written as one JSON file, atomically (a temporary file renamed over the old one).
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from services.auditor.view import Episodes, FleetView, NodeView
from shared.domain.model import DriftItem, Node, NodeIntent, NodeStatus, ObservedState

VERSION = 2


class StreamMark(msgspec.Struct, kw_only=True):
    """Where a stream stood: its creation time and the last sequence the view includes."""

    created: str
    seq: int


class NodeSnapshot(msgspec.Struct, kw_only=True):
    """One :class:`~services.auditor.view.NodeView`, field for field."""

    name: str
    intents: list[NodeIntent]
    intent_at: dict[int, float]
    latest_generation: int
    by_digest: dict[str, NodeIntent]
    statuses: list[tuple[float, NodeStatus]]
    applied_generation: int
    applied_digest: str | None
    running_at: float
    failed_at: dict[int, float]
    applied_at: dict[int, float]
    observed: ObservedState | None
    observed_at: float
    pending: list[tuple[float, ObservedState]]
    inventory: Node | None
    heartbeat_at: float | None
    silent: bool
    open: list[DriftItem]
    closed: list[DriftItem]
    matching_since: float | None
    last_matched: float | None
    heals: list[tuple[float, str]]


class Published(msgspec.Struct, kw_only=True):
    node: str
    item: DriftItem


class Snapshot(msgspec.Struct, kw_only=True):
    version: int = VERSION
    at: float
    streams: dict[str, StreamMark]
    nodes: list[NodeSnapshot]
    published: list[Published]
    heal_notes: list[tuple[str, float]]


def node_snapshot(v: NodeView) -> NodeSnapshot:
    """A node's view as plain data."""
    return NodeSnapshot(
        name=v.name,
        intents=list(v.intents.values()),
        intent_at=dict(v.intent_at),
        latest_generation=v.latest_generation,
        by_digest=dict(v.by_digest),
        statuses=list(v.statuses),
        applied_generation=v.applied_generation,
        applied_digest=v.applied_digest,
        running_at=v.running_at,
        failed_at=dict(v.failed_at),
        applied_at=dict(v.applied_at),
        observed=v.observed,
        observed_at=v.observed_at,
        pending=list(v.pending),
        inventory=v.inventory,
        heartbeat_at=v.heartbeat_at,
        silent=v.silent,
        open=list(v.episodes.open.values()),
        closed=list(v.episodes.closed),
        matching_since=v.matching_since,
        last_matched=v.last_matched,
        heals=list(v.heals),
    )


def node_view(s: NodeSnapshot) -> NodeView:
    """The node's view back from plain data."""
    return NodeView(
        name=s.name,
        intents={i.generation: i for i in s.intents},
        intent_at=dict(s.intent_at),
        latest_generation=s.latest_generation,
        by_digest=dict(s.by_digest),
        statuses=list(s.statuses),
        applied_generation=s.applied_generation,
        applied_digest=s.applied_digest,
        running_at=s.running_at,
        failed_at=dict(s.failed_at),
        applied_at=dict(s.applied_at),
        observed=s.observed,
        observed_at=s.observed_at,
        pending=list(s.pending),
        inventory=s.inventory,
        heartbeat_at=s.heartbeat_at,
        silent=s.silent,
        episodes=Episodes(open={(i.object, i.path): i for i in s.open}, closed=list(s.closed)),
        matching_since=s.matching_since,
        last_matched=s.last_matched,
        heals=list(s.heals),
    )


def take(
    view: FleetView,
    *,
    streams: dict[str, StreamMark],
    published: dict[tuple[str, tuple[str, str]], dict[float, DriftItem]],
    heal_notes: set[tuple[str, float]],
    at: float,
) -> Snapshot:
    """A snapshot of ``view`` that includes each stream up to ``streams[...].seq``."""
    return Snapshot(
        at=at,
        streams=dict(streams),
        nodes=[node_snapshot(v) for _, v in sorted(view.nodes.items())],
        published=[
            Published(node=node, item=item)
            for (node, _key), episodes in sorted(published.items())
            for item in episodes.values()
        ],
        heal_notes=sorted(heal_notes),
    )


def restore(
    snap: Snapshot, view: FleetView
) -> dict[tuple[str, tuple[str, str]], dict[float, DriftItem]]:
    """Put the snapshot's nodes into ``view``; the published record it carried."""
    view.nodes = {s.name: node_view(s) for s in snap.nodes}
    published: dict[tuple[str, tuple[str, str]], dict[float, DriftItem]] = {}
    for p in snap.published:
        published.setdefault((p.node, (p.item.object, p.item.path)), {})[p.item.first_seen] = p.item
    return published


def save(path: Path, snap: Snapshot) -> None:
    """Write ``snap`` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(msgspec.json.encode(snap))
    os.replace(tmp, path)


def load(path: Path) -> Snapshot | None:
    """The snapshot in ``path``; None if there is none or it cannot be used."""
    try:
        snap = msgspec.json.decode(path.read_bytes(), type=Snapshot)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    return snap if snap.version == VERSION else None
