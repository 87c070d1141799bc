"""Every NATS subject and JetStream stream name l2net uses: the one place that builds them."""

from __future__ import annotations

API_PREFIX = "l2.api"
API_APPLY = "l2.api.apply"
API_PLAN = "l2.api.plan"
"""Request/reply into the planner: what an apply of a manifest would do (stores nothing)."""
API_DELETE = "l2.api.delete"
API_GET = "l2.api.get"
API_NAD = "l2.api.nad"
API_SWITCH = "l2.api.switch"
API_RECONCILE = "l2.api.reconcile"
API_HEALTH = "l2.api.health"
"""Request/reply into the planner: its connection health (see :func:`health`)."""

AUDITOR_CHECK = "l2.auditor.check"
"""Request/reply into the auditor: check nodes (live first) and answer their findings."""
AUDITOR_HISTORY = "l2.auditor.history"
"""Request/reply into the auditor: a node's generations, apply results and drift episodes."""
AUDITOR_DESIRED = "l2.auditor.desired"
"""Request/reply into the auditor: a node's desired state at a generation."""

STREAM_SPECS = "L2_SPECS"
STREAM_INTENTS = "L2_INTENTS"
STREAM_STATUS = "L2_STATUS"
STREAM_OBSERVED = "L2_OBSERVED"
STREAM_NODES = "L2_NODES"
STREAM_DRIFT = "L2_DRIFT"


def spec(kind: str, name: str) -> str:
    """Accepted spec of one object: ``l2.spec.<kind>.<name>`` (stream L2_SPECS)."""
    return f"l2.spec.{kind}.{name}"


def intent(node: str) -> str:
    """Compiled desired state of one node (stream L2_INTENTS)."""
    return f"l2.intent.{node}"


def status(node: str) -> str:
    """Executor reports for one node (stream L2_STATUS)."""
    return f"l2.status.{node}"


def observed(node: str) -> str:
    """Actual L2 state of one node (stream L2_OBSERVED)."""
    return f"l2.observed.{node}"


def node(name: str) -> str:
    """Inventory and heartbeat of one node (stream L2_NODES)."""
    return f"l2.node.{name}"


def drift(node: str) -> str:
    """Auditor findings for one node (stream L2_DRIFT)."""
    return f"l2.drift.{node}"


def executor_control(node: str, verb: str) -> str:
    """Request/reply into one node's executor (``reconcile``, ``state``)."""
    return f"l2.executor.{node}.{verb}"


def lab_helper(lab: str, node: str, verb: str) -> str:
    """Request/reply into the helper of one lab node (``exec``, ``ping``; see services/lab):
    ``l2.lab.<lab>.<node>.<verb>``."""
    return f"l2.lab.{lab}.{node}.{verb}"


def health(service: str, *, node: str | None = None) -> str:
    """Request/reply into a running service: its :class:`~shared.runtime.bus.Health`. Each subject
    lies within what that service's NATS user may already subscribe to (deploy/nats):
    ``l2.api.health`` (the planner), ``l2.auditor.health``, ``l2.executor.<node>.health``."""
    if node is not None:
        return executor_control(node, "health")
    short = service.removeprefix("l2net-")
    return API_HEALTH if short == "planner" else f"l2.{short}.health"


def last_token(subject: str) -> str:
    return subject.rsplit(".", 1)[-1]


ALL_SPECS = "l2.spec.>"
ALL_INTENTS = "l2.intent.*"
ALL_STATUS = "l2.status.*"
ALL_OBSERVED = "l2.observed.*"
ALL_NODES = "l2.node.*"
ALL_DRIFT = "l2.drift.*"
