"""Reading the auditor's input: one stream message in, one event out, or :class:`BadMessage`.

Every message the auditor reads is outside data, possibly hostile. :func:`decode_event` is
the one place that turns it into an event, and it trusts the **subject**, never the body: a
message on ``l2.intent.node-1`` is about ``node-1``, and a body naming another node is a bad
message (reported once by the caller, then ignored), never a finding about that other node.
Pure: no I/O, so it is fuzzed in-process (tests/fuzz).
"""

from __future__ import annotations

from typing import Any

import msgspec

from shared.domain import names
from shared.domain.errors import BadInput
from shared.domain.model import DriftReport, Node, NodeIntent, NodeStatus, ObservedState
from shared.runtime import bus
from shared.wire import subjects

MAX_MESSAGE = 8 * 1024 * 1024
"""Larger than NATS's own limit (1 MiB by default, 8 MiB at most): never a real event."""

# What each stream carries, and where the node's name is in the body.
_TYPES: dict[str, type[Any]] = {
    subjects.STREAM_INTENTS: NodeIntent,
    subjects.STREAM_STATUS: NodeStatus,
    subjects.STREAM_OBSERVED: ObservedState,
    subjects.STREAM_NODES: Node,
    subjects.STREAM_DRIFT: DriftReport,
}


class BadMessage(BadInput, ValueError):
    """A message that is not an event the auditor can use (permanent: the same bytes never
    become good). The text says what is wrong, naming the subject."""


def node_of(subject: str) -> str:
    """The node a message is about: its subject's last token, when that is a node name."""
    token = subjects.last_token(subject)
    error = names.node_name_error(token, what="subject's node")
    if error is not None:
        raise BadMessage(f"{subject[:200]}: {error}")
    return token


def body_node(event: Any) -> str:
    """The node the body names (``name`` for a Node, ``node`` otherwise)."""
    value: str = event.name if isinstance(event, Node) else event.node
    return value


def decode_event(stream: str, subject: str, data: bytes) -> Any:
    """The event in ``data`` read from ``stream`` on ``subject``; L2_SPECS carries nothing the
    auditor judges (None). Raises :class:`BadMessage` for anything else."""
    kind = _TYPES.get(stream)
    if kind is None:
        return None
    node = node_of(subject)
    if len(data) > MAX_MESSAGE:
        raise BadMessage(f"{subject}: {len(data)} bytes, more than any event")
    try:
        event = bus.decode(data, kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadMessage(f"{subject}: not a {kind.__name__}: {str(exc)[:300]}") from None
    except (RecursionError, MemoryError, ValueError, TypeError) as exc:
        raise BadMessage(f"{subject}: not a {kind.__name__}: {type(exc).__name__}") from None
    said = body_node(event)
    if said != node:
        raise BadMessage(
            f"{subject}: the body names node {said[:80]!r}, the subject {node!r}"
            " (the subject is the node: ignored)"
        )
    return event
