"""Request and reply bodies of the planner's ``l2.api.*`` subjects, and the spec records
stored in ``L2_SPECS``. Any NATS client can speak this: JSON in, JSON out.

``l2.api.apply``   body: the manifest text (YAML or JSON, one or more documents)
                   reply: :class:`ApplyReply`
``l2.api.delete``  body: :class:`DeleteRequest`   reply: :class:`ApplyReply`
``l2.api.get``     body: :class:`GetRequest` (or empty)   reply: :class:`GetReply`
``l2.api.nad``     body: :class:`NadRequest`   reply: :class:`NadReply`
``l2.api.switch``  body: :class:`SwitchRequest` (or empty)   reply: :class:`SwitchReply`
"""

from __future__ import annotations

from typing import Any

import msgspec


class Problem(msgspec.Struct, kw_only=True, rename="camel"):
    """One reason a submission was rejected, nmstate-style: where, and what is wrong."""

    message: str
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


class Change(msgspec.Struct, kw_only=True, rename="camel"):
    kind: str
    name: str
    action: str  # created | updated | unchanged | deleted
    revision: int = 0


class ApplyReply(msgspec.Struct, kw_only=True, rename="camel"):
    ok: bool
    changes: list[Change] = msgspec.field(default_factory=list)
    errors: list[Problem] = msgspec.field(default_factory=list)
    generations: dict[str, int] = msgspec.field(default_factory=dict)
    warnings: list[str] = msgspec.field(default_factory=list)


class DeleteRequest(msgspec.Struct, kw_only=True, rename="camel"):
    kind: str
    name: str


class GetRequest(msgspec.Struct, kw_only=True, rename="camel"):
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


class NadRequest(msgspec.Struct, kw_only=True, rename="camel"):
    network: str


class NadReply(msgspec.Struct, kw_only=True, rename="camel"):
    ok: bool
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    yaml: str = ""
    errors: list[Problem] = msgspec.field(default_factory=list)


class SwitchRequest(msgspec.Struct, kw_only=True, rename="camel"):
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
    at: float = 0.0
    created: float = 0.0
    """When the object was first created (VM NICs are numbered in creation order)."""
