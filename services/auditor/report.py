"""Readable drift, like ``terraform plan`` or ``netplan status --diff``: pure formatting.

Each finding becomes one or more lines, marked as in a diff from the intent to the node:

* ``-`` only in the intent: an object missing on the node, or a VID the port lacks;
* ``+`` only on the node: an extra managed object, or an extra VID;
* ``~`` changed: a field whose value differs (``desired X, actual Y``).

Every line names the object and field path (``oob-bo.bond.mode``), as nmstate's errors do.
"""

from __future__ import annotations

from typing import Any

from services.auditor.view import iso
from shared.domain.l2state import ABSENT, PRESENT
from shared.domain.model import DriftItem
from shared.wire.auditor_api import CheckReply, HistoryReply, NodeAudit

__all__ = ["clock", "diff_lines", "format_audit", "format_history", "format_node", "iso", "where"]


def clock(at: float | None) -> str:
    """A time as ISO 8601 UTC (``2026-12-01T21:03:04Z``), or ``-``: every time the auditor
    and the CLI print reads the same way."""
    return iso(at)


def where(item: DriftItem) -> str:
    """``object.path`` (or the object alone, for its presence)."""
    return f"{item.object}.{item.path}" if item.path else item.object


def _value(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(str(x) for x in v) + "]"
    return repr(v)


def diff_lines(item: DriftItem) -> list[str]:
    """The diff lines of one finding (without indentation)."""
    if not item.path and item.desired == PRESENT and item.actual == ABSENT:
        return [f"- {item.object}  (in the intent, missing on the node)"]
    if not item.path and item.desired == ABSENT and item.actual == PRESENT:
        return [f"+ {item.object}  (on the node, not in the intent)"]
    if item.path == "vlans" and isinstance(item.desired, list) and isinstance(item.actual, list):
        lines = [f"- {where(item)}: {v}" for v in item.desired if v not in item.actual]
        lines += [f"+ {where(item)}: {v}" for v in item.actual if v not in item.desired]
        if lines:
            return lines
    if item.path == "master" and item.desired is None:
        return [f"+ {where(item)}: {_value(item.actual)}  (enslaved, not in the intent)"]
    return [f"~ {where(item)}: desired {_value(item.desired)}, actual {_value(item.actual)}"]


def format_node(audit: NodeAudit) -> list[str]:
    """A node's heading line and its findings."""
    state = []
    state.append(
        f"generation {audit.desired_generation} desired, {audit.applied_generation} applied"
    )
    state.append("reporting" if audit.reporting else "NOT REPORTING")
    if not audit.verified:
        state.append("UNVERIFIED")
    if audit.heals:
        state.append(f"healed {audit.heals}x")
    count = len(audit.items)
    verdict = "no drift" if not count else f"{count} finding{'s' if count > 1 else ''}"
    lines = [f"{audit.node}: {verdict} ({', '.join(state)})"]
    if audit.note:
        lines.append(f"  note: {audit.note}")
    for item in audit.items:
        for line in diff_lines(item):
            lines.append(f"  {line}  [since {clock(item.first_seen)}]")
    return lines


def format_audit(reply: CheckReply) -> str:
    """The whole ``l2net audit`` output."""
    if not reply.ok:
        return "\n".join(f"error: {e}" for e in reply.errors)
    out: list[str] = []
    if not reply.nodes:
        out.append("no nodes known to the auditor yet")
    for audit in reply.nodes:
        out += format_node(audit)
    out += [f"note: {note}" for note in reply.notes]
    return "\n".join(out)


def format_history(reply: HistoryReply) -> str:
    """``l2net history NODE``: one event per line, oldest first."""
    if not reply.ok:
        return "\n".join(f"error: {e}" for e in reply.errors)
    lines = [f"history of {reply.node}:"]
    for e in reply.events:
        stamp = _stamp(e.at)
        gen = f"gen {e.generation}" if e.generation is not None else ""
        lines.append(f"  {stamp}  {e.what:8} {gen:7} {e.text}".rstrip())
    if reply.matching_since is not None:
        lines.append(f"matches its desired state since {_stamp(reply.matching_since)}")
    elif reply.last_matched is not None:
        lines.append(f"does not match its desired state; last matched {_stamp(reply.last_matched)}")
    else:
        lines.append("has not matched its desired state yet (or was never observed)")
    return "\n".join(lines)


def _stamp(at: float) -> str:
    return iso(at)
