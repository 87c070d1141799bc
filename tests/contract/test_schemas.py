"""The per-kind JSON schemas a client validates with before submitting (docs/kinds.md#schemas):
both forms of a document, the documented constraints, and the typed get reply."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from services.planner import manifests

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "reference" / "schemas"
SEED = SCHEMAS.parents[1] / "examples" / "seed.yaml"
FILES = {
    "ClusterNetwork": "cluster-network.json",
    "VlanConfig": "vlan-config.json",
    "Network": "network.json",
    "HostNetwork": "host-network.json",
    "VmNic": "vm-nic.json",
}


def valid(file: str, doc: Any) -> bool:
    schema = json.loads((SCHEMAS / file).read_text())
    return not list(jsonschema.Draft202012Validator(schema).iter_errors(doc))


def kubernetes_form(doc: dict[str, Any]) -> dict[str, Any]:
    fields = {k: v for k, v in doc.items() if k not in ("kind", "name")}
    return {
        "apiVersion": "network.harvesterhci.io/v1beta1",
        "kind": doc["kind"],
        "metadata": {"name": doc["name"], "labels": {"x": "y"}},
        "spec": fields,
        "status": {},
    }


def test_schemas_accept_both_forms_and_refuse_what_kinds_md_forbids() -> None:
    seed = [d for d in yaml.safe_load_all(SEED.read_text()) if d]
    checks: dict[str, bool] = {}
    for doc in seed:
        checks[f"flat {doc['kind']} {doc['name']} accepted"] = valid(FILES[doc["kind"]], doc)
        k8s = kubernetes_form(doc)
        manifests.parse(yaml.safe_dump(k8s))  # the planner takes it too
        checks[f"Kubernetes {doc['kind']} {doc['name']} accepted"] = valid(FILES[doc["kind"]], k8s)
    harvester = {
        "apiVersion": "network.harvesterhci.io/v1beta1",
        "kind": "VlanConfig",
        "metadata": {"name": "oob-vc", "labels": {"network.harvesterhci.io/clusternetwork": "oob"}},
        "spec": {
            "clusterNetwork": "oob",
            "uplink": {
                "nics": ["eth1", "eth2"],
                "linkAttributes": {"mtu": 0, "txQLen": -1},
                "bondOptions": {"mode": "active-backup", "miimon": -1},
            },
        },
        "status": {},
    }
    checks["kinds.md's Harvester VlanConfig accepted"] = valid("vlan-config.json", harvester)

    network = next(d for d in seed if d["kind"] == "Network" and d.get("vlan"))
    wrong: list[tuple[str, str, dict[str, Any]]] = [
        ("VLAN ID 5000", "network.json", {**network, "vlan": 5000}),
        ("VLAN ID 0", "network.json", {**network, "vlan": 0}),
        ("a name with capitals", "network.json", {**network, "name": "Vlan200"}),
        ("an unknown type", "network.json", {**network, "type": "VxlanNetwork"}),
        ("an unknown field", "network.json", {**network, "vlna": 5}),
        ("a trunk maxID 4095", "network.json", {**network, "trunk": [{"minID": 2, "maxID": 4095}]}),
        ("a 13-character cluster network", "cluster-network.json",
         {"kind": "ClusterNetwork", "name": "a" * 13}),
        ("Kubernetes form with VLAN 5000", "network.json",
         kubernetes_form({**network, "vlan": 5000})),
        ("an unknown apiVersion", "network.json",
         {**kubernetes_form(network), "apiVersion": "v1"}),
    ]  # fmt: skip
    for what, file, doc in wrong:
        checks[f"{what} refused"] = not valid(file, doc)
    bad_mtu = copy.deepcopy(harvester)
    bad_mtu["spec"]["uplink"]["linkAttributes"]["mtu"] = 100
    checks["MTU 100 refused"] = not valid("vlan-config.json", bad_mtu)
    bad_mode = copy.deepcopy(harvester)
    bad_mode["spec"]["uplink"]["bondOptions"]["mode"] = "fast"
    checks["bond mode `fast` refused"] = not valid("vlan-config.json", bad_mode)
    for number in (4, "4"):  # the planner reads a mode given by the kernel's number too
        by_number = copy.deepcopy(harvester)
        by_number["spec"]["uplink"]["bondOptions"]["mode"] = number
        checks[f"bond mode {number!r} (a number) accepted"] = valid("vlan-config.json", by_number)
    by_number["spec"]["uplink"]["bondOptions"]["mode"] = 7
    checks["bond mode 7 refused"] = not valid("vlan-config.json", by_number)

    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    print(f"schema checks: {sum(checks.values())}/{len(checks)}")
    assert all(checks.values()), [n for n, ok in checks.items() if not ok]


def test_get_reply_types_each_items_spec() -> None:
    item = {"kind": "Network", "name": "vlan200", "revision": 3,
            "spec": {"name": "vlan200", "clusterNetwork": "oob", "vlan": 200}}  # fmt: skip
    assert valid("get-reply.json", {"ok": True, "items": [item]})
    item["spec"] = {"name": "vlan200", "clusterNetwork": "oob", "vlan": 5000}
    assert not valid("get-reply.json", {"ok": True, "items": [item]})
