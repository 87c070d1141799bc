"""Request and reply bodies of the auditor's ``l2.auditor.*`` subjects (JSON, any client).

``l2.auditor.check``    body: :class:`CheckRequest` (or empty: every node, live first)
                        reply: :class:`CheckReply`
``l2.auditor.history``  body: :class:`HistoryRequest`   reply: :class:`HistoryReply`
``l2.auditor.desired``  body: :class:`DesiredRequest`   reply: :class:`DesiredReply`

Requests refuse unknown fields; a failed request is answered ``ok: false`` with ``errors``,
a list of :class:`shared.wire.api.Problem` like every other service's.
"""

from __future__ import annotations

import msgspec

from shared.domain.model import DriftItem, EpochSeconds, NodeIntent
from shared.wire.api import Problem


class CheckRequest(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """Check ``node`` (every node the auditor knows if None). ``live``: ask each executor for
    its state now, rather than trusting the last report. ``heal``: see below."""

    node: str | None = None
    live: bool = True
    heal: bool = False
    """Ask drifting nodes' executors to re-converge now, whatever the heal policy."""


class NodeAudit(msgspec.Struct, kw_only=True, rename="camel"):
    """Where one node stands: its generations, whether it reports, its open findings."""

    node: str
    desired_generation: int
    applied_generation: int
    """The generation the node runs: that of its executor's last Applied status."""
    observed_generation: int
    reporting: bool
    verified: bool
    """False when the node stopped reporting or did not answer a live check."""
    heartbeat_at: EpochSeconds | None
    observed_at: EpochSeconds | None
    items: list[DriftItem] = msgspec.field(default_factory=list)
    matching_since: EpochSeconds | None = None
    last_matched: EpochSeconds | None = None
    heals: int = 0
    note: str = ""
    applied_digest: str | None = None
    """The digest (:func:`shared.wire.intents.digest`) of the intent the node really applied."""


class CheckReply(msgspec.Struct, kw_only=True, rename="camel"):
    """The answer of ``l2.auditor.check``: one :class:`NodeAudit` per node asked about."""

    ok: bool
    nodes: list[NodeAudit] = msgspec.field(default_factory=list)
    errors: list[Problem] = msgspec.field(default_factory=list)
    at: EpochSeconds = 0.0
    notes: list[str] = msgspec.field(default_factory=list)
    """Not drift, worth knowing: e.g. strays (intents for a node that never registered)."""

    @property
    def drift(self) -> bool:
        """True when any node asked about has an open finding."""
        return any(n.items for n in self.nodes)


class HistoryRequest(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """Body of ``l2.auditor.history``."""

    node: str


class HistoryEvent(msgspec.Struct, kw_only=True, rename="camel"):
    """``what``: intent | apply | drift | resolved | heal."""

    at: EpochSeconds
    what: str
    generation: int | None = None
    text: str = ""


class HistoryReply(msgspec.Struct, kw_only=True, rename="camel"):
    """The answer of ``l2.auditor.history``."""

    ok: bool
    node: str = ""
    events: list[HistoryEvent] = msgspec.field(default_factory=list)
    errors: list[Problem] = msgspec.field(default_factory=list)
    matching_since: EpochSeconds | None = None
    """The node matches its desired state now, since this time."""
    last_matched: EpochSeconds | None = None
    """The last time the node stopped matching its desired state."""


class DesiredRequest(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """The desired state of ``node`` at ``generation`` (the latest if None)."""

    node: str
    generation: int | None = None


class DesiredReply(msgspec.Struct, kw_only=True, rename="camel"):
    """The answer of ``l2.auditor.desired``."""

    ok: bool
    intent: NodeIntent | None = None
    matching_since: EpochSeconds | None = None
    """The node matches its desired state, since this time (None: it does not now)."""
    last_matched: EpochSeconds | None = None
    """The last time it stopped matching (None: never stopped, or never matched)."""
    errors: list[Problem] = msgspec.field(default_factory=list)
