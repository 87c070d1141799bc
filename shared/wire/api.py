"""Request and reply bodies of the planner's ``l2.api.*`` subjects, and the spec records
stored in ``L2_SPECS``. Any NATS client can speak this: JSON in, JSON out.

``l2.api.apply``   body: the manifest text (YAML or JSON, one or more documents)
                   reply: :class:`ApplyReply`
``l2.api.plan``    body: the manifest text, as for apply
                   reply: :class:`PlanReply` (stores nothing, publishes no intent)
``l2.api.delete``  body: :class:`DeleteRequest`   reply: :class:`ApplyReply`
``l2.api.get``     body: :class:`GetRequest` (or empty)   reply: :class:`GetReply`
``l2.api.nad``     body: :class:`NadRequest`   reply: :class:`NadReply`
``l2.api.switch``  body: :class:`SwitchRequest` (or empty)   reply: :class:`SwitchReply`
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypeVar

import msgspec

from shared.domain.errors import Code, code_of
from shared.domain.model import EpochSeconds

T = TypeVar("T")


class Problem(msgspec.Struct, kw_only=True, rename="camel"):
    """One reason a request failed, nmstate-style: where, and what is wrong.

    The one error shape of every service's replies (``ok: false``, ``errors: [Problem]``).
    ``code`` says what kind of failure it is (:class:`shared.domain.errors.Code`: ``bad-request``,
    ``invalid``, ``refused``, ``not-found``, ``unavailable``, ``conflict``, ``internal``);
    ``kind``/``name`` the object it is about, ``field`` the field (a dotted path),
    ``document``/``line`` where in a submitted manifest (1-based).
    """

    message: str
    code: str = Code.INVALID
    document: int | None = None
    line: int | None = None
    kind: str = ""
    name: str = ""
    field: str = ""

    def __str__(self) -> str:
        where: list[str] = []
        if self.document is not None:
            where.append(f"document {self.document}")
        if self.line is not None:
            where.append(f"line {self.line}")
        head = f"{', '.join(where)}: " if where else ""
        obj = f"{self.kind} {self.name}".strip()
        obj = f"{obj}: " if obj else ""
        field = f"{self.field}: " if self.field else ""
        return f"{head}{obj}{field}{self.message}"


_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]*)`")
_MISSING_FIELD = re.compile(r"missing required field `([^`]*)`")
_AT = re.compile(r" - at `\$(?:\.)?([^`]*)`$")


def bad_request(exc: msgspec.DecodeError, body_type: type | None = None) -> Problem:
    """The :class:`Problem` for a request body that does not decode: ``code`` bad-request,
    ``field`` the field msgspec names (unknown, missing or of the wrong type), a message
    without msgspec's ``$``-paths, listing the request's fields when one is unknown."""
    text = str(exc)
    field = ""
    at = _AT.search(text)
    if at:
        text, field = text[: at.start()], at.group(1)
    named = _UNKNOWN_FIELD.search(text) or _MISSING_FIELD.search(text)
    if named:
        field = f"{field}.{named.group(1)}" if field else named.group(1)
    if text == "Input data was truncated":
        text = "the body is not complete JSON (it ends too early)"
    elif text.startswith("Object contains unknown field"):
        known = ""
        if body_type is not None and named and field == named.group(1):
            names = [f.encode_name for f in msgspec.structs.fields(body_type)]
            known = f" (fields: {', '.join(names) or 'none'})"
        text = f"unknown field `{field}`{known}"
    elif text.startswith("Object missing required field"):
        text = f"missing required field `{field}`"
    elif field:
        text = f"{text} at `{field}`"
    return Problem(code=Code.BAD_REQUEST, field=field, message=f"bad request: {text}")


def decode_request(data: bytes, body_type: type[T]) -> T | Problem:
    """A request body as ``body_type`` (an empty body is ``{}``), or the :class:`Problem`
    saying why it does not decode."""
    try:
        return msgspec.json.decode(data if data.strip() else b"{}", type=body_type)
    except RecursionError:
        return Problem(code=Code.BAD_REQUEST, message="bad request: JSON nested too deeply")
    except UnicodeDecodeError as exc:
        return Problem(code=Code.BAD_REQUEST, message=f"bad request: invalid UTF-8 ({exc.reason})")
    except msgspec.DecodeError as exc:
        return bad_request(exc, body_type)


def problem_of(exc: BaseException, **where: Any) -> Problem:
    """A :class:`Problem` for an exception: its code from the error's kind (``internal``
    for anything that is not an l2net error), its text as the message."""
    return Problem(code=code_of(exc), message=str(exc), **where)


def not_found(kind: str, name: str, what: str = "not found") -> Problem:
    return Problem(code=Code.NOT_FOUND, kind=kind, name=name, message=what)


class ErrorReply(msgspec.Struct, kw_only=True, rename="camel"):
    """The reply of a request whose success reply has no ``errors`` (an executor's
    ``state`` and ``reconcile``): ``{"ok": false, "errors": [Problem]}``."""

    ok: bool = False
    errors: list[Problem] = msgspec.field(default_factory=list)


class EmptyRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The body of a request that takes no fields (an executor's ``state``, ``reconcile``):
    empty or ``{}``; any field is refused like every request's unknown fields."""


class Change(msgspec.Struct, kw_only=True, rename="camel"):
    kind: str
    name: str
    action: str  # created | updated | unchanged | deleted
    revision: int = 0


class ApplyReply(msgspec.Struct, kw_only=True, rename="camel"):
    """``generations``: every node's generation that holds the submission (unchanged nodes
    at their current one); ``changed``: the nodes given a new intent by this request, each of
    which will publish a new status for its generation (the others will not)."""

    ok: bool
    changes: list[Change] = msgspec.field(default_factory=list)
    errors: list[Problem] = msgspec.field(default_factory=list)
    generations: dict[str, int] = msgspec.field(default_factory=dict)
    changed: list[str] = msgspec.field(default_factory=list)
    warnings: list[str] = msgspec.field(default_factory=list)


PLAN_VERSION = 1
"""The version of :class:`PlanReply`'s shape (``version``): a field removed or changed in
meaning makes it 2; fields added keep it."""

Impact = Literal["hitless", "disruptive"]
"""What a planned step does to traffic already flowing: nothing (``hitless``), or it may
stop or reset some (``disruptive``)."""

StateSource = Literal["live", "observed", "unknown"]
"""Where a node's plan took its actual state from: its executor, asked now (``live``); its
last ``l2.observed.<node>`` (``observed``: the executor did not answer); none known."""


class PlannedStep(msgspec.Struct, kw_only=True, rename="camel"):
    """One step a node's executor would take, in its order. ``operation``, ``object``,
    ``fields`` and ``action`` read as the executor's status results
    (:class:`~shared.domain.model.ObjectResult`) will once it took the step. ``impact`` and
    ``reason`` classify it; a disruptive step names what runs on what it touches: VM NICs
    (``<vm>/<ifname>``) and host networks (by name)."""

    operation: str
    object: str
    action: str
    fields: dict[str, Any] = msgspec.field(default_factory=dict)
    impact: Impact
    reason: str
    vm_nics: list[str] = msgspec.field(default_factory=list)
    host_networks: list[str] = msgspec.field(default_factory=list)


class NodePlan(msgspec.Struct, kw_only=True, rename="camel"):
    """A node whose intent the submission would change: its steps against its actual state.

    ``generation``: the node's current generation (the submission would make the next one).
    ``state``: where its actual state came from (``note`` says more: how old a fallback is,
    or why there is none; then ``steps`` is empty, not "nothing to do"). ``refused``: parts of
    the intent the executor would leave out (its management-path guards, with its words).
    ``error``: the executor could not plan this intent on this node (it would fail the
    generation, writing nothing)."""

    node: str
    generation: int = 0
    state: StateSource
    note: str = ""
    steps: list[PlannedStep] = msgspec.field(default_factory=list)
    refused: list[str] = msgspec.field(default_factory=list)
    error: str = ""


class PlanSummary(msgspec.Struct, kw_only=True, rename="camel"):
    """Counts over every node plan; ``disruptive_nodes``: nodes with a disruptive step;
    ``unknown_nodes``: nodes whose steps could not be planned (no state known, or an error)."""

    objects: int = 0
    """Objects the submission would create or update."""
    nodes: int = 0
    steps: int = 0
    hitless: int = 0
    disruptive: int = 0
    disruptive_nodes: list[str] = msgspec.field(default_factory=list)
    unknown_nodes: list[str] = msgspec.field(default_factory=list)


class PlanReply(msgspec.Struct, kw_only=True, rename="camel"):
    """The reply of ``l2.api.plan``: ``ok`` false with ``errors`` for what apply refuses
    (the same problems, word for word); else ``changes`` (each object as apply would report
    it, revision 0 for one not stored yet), the plan of each node whose intent would change,
    and a ``summary``. ``version``: :data:`PLAN_VERSION`."""

    ok: bool
    version: int = PLAN_VERSION
    changes: list[Change] = msgspec.field(default_factory=list)
    nodes: list[NodePlan] = msgspec.field(default_factory=list)
    summary: PlanSummary = msgspec.field(default_factory=PlanSummary)
    errors: list[Problem] = msgspec.field(default_factory=list)
    warnings: list[str] = msgspec.field(default_factory=list)

    @property
    def changes_anything(self) -> bool:
        """Something would be stored, or some node's kernel changed (exit 2 of ``plan``)."""
        return bool(self.summary.objects or self.summary.steps or self.summary.unknown_nodes)


class DeleteRequest(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    kind: str
    name: str


class GetRequest(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """``kind`` in any case, singular or plural (``network``, ``Networks``), like kubectl."""

    kind: str | None = None
    name: str | None = None


class Item(msgspec.Struct, kw_only=True, rename="camel"):
    kind: str
    name: str
    revision: int
    spec: dict[str, Any]


class GetReply(msgspec.Struct, kw_only=True, rename="camel"):
    ok: bool
    items: list[Item] = msgspec.field(default_factory=list)
    errors: list[Problem] = msgspec.field(default_factory=list)


class NadRequest(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    network: str


class NadReply(msgspec.Struct, kw_only=True, rename="camel"):
    ok: bool
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    yaml: str = ""
    errors: list[Problem] = msgspec.field(default_factory=list)


class SwitchRequest(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    node: str | None = None


class SwitchPort(msgspec.Struct, kw_only=True, rename="camel"):
    """What the switch ports facing one NIC group of one node must be configured as."""

    node: str
    cluster_network: str
    nics: list[str]
    bond_mode: str
    link_aggregation: str
    port_mode: str
    allowed_vlans: str
    native_vlan: str


class SwitchReply(msgspec.Struct, kw_only=True, rename="camel"):
    ok: bool
    ports: list[SwitchPort] = msgspec.field(default_factory=list)
    errors: list[Problem] = msgspec.field(default_factory=list)


class SpecRecord(msgspec.Struct, kw_only=True, rename="camel"):
    """One stored change of one object on ``l2.spec.<kind>.<name>``.

    ``op`` is ``put`` (``spec`` holds the object) or ``delete`` (a tombstone, so that the
    history of every object replays in order). ``submission`` groups the records of one
    atomic submission.
    """

    op: str
    kind: str
    name: str
    submission: str
    spec: dict[str, Any] | None = None
    at: EpochSeconds = 0.0
    created: EpochSeconds = 0.0
    """When the object was first created (VM NICs are numbered in creation order)."""
