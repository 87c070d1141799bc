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

from services.auditor import protocol
from shared import api, bus, model

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


def schema_of(cls: type[Any], description: str) -> dict[str, Any]:
    schema: dict[str, Any] = msgspec.json.schema(cls)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = description
    kind = getattr(cls, "kind", "")
    if isinstance(kind, str) and kind and cls in model.USER_KINDS.values():
        # The manifest's `kind` is a class-level constant, not a struct field.
        ref = schema["$ref"].rsplit("/", 1)[-1]
        body = schema["$defs"][ref]
        body["properties"] = {"kind": {"const": kind}, **body["properties"]}
        body["required"] = ["kind", *body.get("required", [])]
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
