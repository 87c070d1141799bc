"""JSON Schemas of everything on the bus, generated from the msgspec structs.

``python -m services.cli.schemas docs/reference/schemas`` writes one file per message type;
a test checks that the committed files are what the code generates, so the reference never
drifts. It lives with the CLI because it reads the structs of every service.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from services.planner.manifests import API_VERSIONS
from shared.domain import model
from shared.domain.vocabulary import (
    BOND_MODE_NAMES,
    BOND_MODES,
    MAX_ARP_TARGETS,
    UPLINK_MTU_MAX,
    UPLINK_MTU_MIN,
    VID_MAX,
    VID_MIN,
)
from shared.runtime import bus
from shared.wire import api
from shared.wire import auditor_api as protocol

MESSAGES: dict[str, tuple[type[Any], str]] = {
    "node-intent": (model.NodeIntent, "l2.intent.<node> (stream L2_INTENTS), planner → executor"),
    "node-status": (model.NodeStatus, "l2.status.<node> (stream L2_STATUS), executor reports"),
    "observed-state": (
        model.ObservedState,
        "l2.observed.<node> (stream L2_OBSERVED), a node's actual managed L2 state",
    ),
    "node": (model.Node, "l2.node.<node> (stream L2_NODES), inventory and heartbeat"),
    "drift-report": (model.DriftReport, "l2.drift.<node> (stream L2_DRIFT), auditor findings"),
    "spec-record": (api.SpecRecord, "l2.spec.<kind>.<name> (stream L2_SPECS), accepted specs"),
    "apply-reply": (api.ApplyReply, "reply of l2.api.apply and l2.api.delete"),
    "plan-reply": (
        api.PlanReply,
        "reply of l2.api.plan and the output of `l2net plan --json` (its `version` says"
        " which shape)",
    ),
    "delete-request": (api.DeleteRequest, "request body of l2.api.delete"),
    "get-request": (api.GetRequest, "request body of l2.api.get"),
    "get-reply": (api.GetReply, "reply of l2.api.get"),
    "nad-request": (api.NadRequest, "request body of l2.api.nad"),
    "nad-reply": (api.NadReply, "reply of l2.api.nad"),
    "switch-request": (api.SwitchRequest, "request body of l2.api.switch"),
    "switch-reply": (api.SwitchReply, "reply of l2.api.switch"),
    "auditor-check-request": (protocol.CheckRequest, "request body of l2.auditor.check"),
    "auditor-check-reply": (protocol.CheckReply, "reply of l2.auditor.check"),
    "auditor-history-request": (protocol.HistoryRequest, "request body of l2.auditor.history"),
    "auditor-history-reply": (protocol.HistoryReply, "reply of l2.auditor.history"),
    "auditor-desired-request": (protocol.DesiredRequest, "request body of l2.auditor.desired"),
    "auditor-desired-reply": (protocol.DesiredReply, "reply of l2.auditor.desired"),
    "health": (
        bus.Health,
        "reply of l2.api.health, l2.auditor.health and l2.executor.<node>.health: a service's"
        " connection to NATS",
    ),
    "cluster-network": (model.ClusterNetwork, "manifest kind ClusterNetwork"),
    "vlan-config": (model.VlanConfig, "manifest kind VlanConfig"),
    "network": (model.Network, "manifest kind Network"),
    "host-network": (model.HostNetwork, "manifest kind HostNetwork"),
    "vm-nic": (model.VmNic, "manifest kind VmNic"),
}


VID = {"minimum": VID_MIN, "maximum": VID_MAX}
NAME = {"pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
MTU = {"anyOf": [{"const": 0}, {"minimum": UPLINK_MTU_MIN, "maximum": UPLINK_MTU_MAX}]}
CONSTRAINTS: dict[str, dict[str, dict[str, Any]]] = {
    # The constraints kinds.md documents that a schema can say and the structs' types do not
    # (fields typed by a set of values in shared/domain/vocabulary.py get their enum from msgspec);
    # the planner checks them all, and those across objects too. Harvester's -1 ("unset") is
    # allowed where it is.
    "ClusterNetwork": {"name": {**NAME, "maxLength": 12}},
    "VlanConfig": {"name": NAME},
    "Network": {"name": NAME, "vlan": VID},
    "TrunkRange": {"minID": VID, "maxID": VID, "id": VID},
    "HostNetwork": {"name": NAME, "vlan": VID},
    "VmNic": {"name": NAME, "vm": NAME},
    "LinkAttributes": {"mtu": MTU, "txQLen": {"minimum": -1}},
    "BondOptions": {
        # a manifest may give the mode by the kernel's number too (read into its name)
        "mode": {
            "anyOf": [
                {"enum": [*BOND_MODES, *(str(n) for n in BOND_MODE_NAMES)]},
                {"type": "integer", "minimum": 0, "maximum": max(BOND_MODE_NAMES)},
            ]
        },
        "arpIpTargets": {"maxItems": MAX_ARP_TARGETS},
    },
}


def _constrain(defs: dict[str, Any]) -> None:
    """Add :data:`CONSTRAINTS` to the struct definitions they name (an optional field's
    ``anyOf`` of the type and null keeps null, and the value gets the constraint)."""
    for name, fields in CONSTRAINTS.items():
        props = defs.get(name, {}).get("properties", {})
        for field, extra in fields.items():
            prop = props.get(field)
            if prop is None:
                continue
            options = prop.get("anyOf")
            if options and {"type": "null"} in options:
                typed = [o for o in options if o != {"type": "null"}]
                prop["anyOf"] = [{"allOf": [*typed, extra]}, {"type": "null"}]
            else:
                if "anyOf" in extra:  # the constraint widens what the struct's type says
                    prop.pop("enum", None)
                    prop.pop("type", None)
                prop.update(extra)


def _harvester_form(kind: str, body_ref: str, defs: dict[str, Any]) -> dict[str, Any]:
    """The Kubernetes form of a kind (as ``kubectl get -o yaml`` prints Harvester's objects):
    ``apiVersion``, ``metadata.name``, ``spec`` with the flat form's fields but ``name``."""
    body = defs[body_ref]
    spec = {
        **body,
        "properties": {k: v for k, v in body["properties"].items() if k not in ("kind", "name")},
        "required": [r for r in body.get("required", []) if r not in ("kind", "name")],
    }
    spec.pop("title", None)
    defs[f"{body_ref}Spec"] = spec
    required = ["apiVersion", "kind", "metadata"]
    if kind != "ClusterNetwork":  # a ClusterNetwork's spec is optional
        required.append("spec")
    return {
        "type": "object",
        "description": f"{kind} in Kubernetes form (Harvester's objects apply unchanged)",
        "properties": {
            "apiVersion": {"enum": list(API_VERSIONS)},
            "kind": {"const": kind},
            "metadata": {
                "type": "object",
                "properties": {"name": {"type": "string", **NAME}},
                "required": ["name"],
                "description": "only name is read; labels, annotations and the rest are ignored",
            },
            "spec": {"$ref": f"#/$defs/{body_ref}Spec"},
            "status": {"description": "ignored"},
        },
        "required": required,
        "additionalProperties": False,
    }


def _typed_items(schema: dict[str, Any]) -> None:
    """``items[].spec`` of the get reply: one of the kinds' fields (a Node's has its
    ``generation`` too)."""
    kinds: list[type[Any]] = [*model.USER_KINDS.values(), model.Node]
    _, components = msgspec.json.schema_components(kinds)
    schema["$defs"].update(components)
    node = schema["$defs"]["Node"]
    node["properties"]["generation"] = {
        "type": "integer",
        "description": "the node's newest intent generation (0: none yet)",
    }
    _constrain(schema["$defs"])
    item = schema["$defs"]["Item"]
    item["properties"]["kind"] = {"enum": [cls.__name__ for cls in kinds]}
    item["properties"]["spec"]["description"] = (
        "the object's fields, as its kind's schema says (without `kind`: the item has it)"
    )
    item["allOf"] = [
        {
            "if": {"properties": {"kind": {"const": cls.__name__}}},
            "then": {"properties": {"spec": {"$ref": f"#/$defs/{cls.__name__}"}}},
        }
        for cls in kinds
    ]


def schema_of(cls: type[Any], description: str) -> dict[str, Any]:
    schema: dict[str, Any] = msgspec.json.schema(cls)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = description
    kind = getattr(cls, "kind", "")
    if isinstance(kind, str) and kind and cls in model.USER_KINDS.values():
        # The manifest's `kind` is a class-level constant, not a struct field.
        ref = schema.pop("$ref").rsplit("/", 1)[-1]
        defs = schema["$defs"]
        body = defs[ref]
        body["properties"] = {"kind": {"const": kind}, **body["properties"]}
        body["required"] = ["kind", *body.get("required", [])]
        _constrain(defs)
        schema["anyOf"] = [{"$ref": f"#/$defs/{ref}"}, _harvester_form(kind, ref, defs)]
    if cls is api.GetReply:
        _typed_items(schema)
    return schema


def render_all() -> dict[str, str]:
    return {
        f"{name}.json": json.dumps(schema_of(cls, desc), indent=2, sort_keys=True) + "\n"
        for name, (cls, desc) in MESSAGES.items()
    }


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path("docs/reference/schemas")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render_all().items():
        (out / name).write_text(text)
    print(f"wrote {len(MESSAGES)} schemas to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
