"""Reading manifests: both document shapes, Harvester's defaults, and errors that say where."""

from __future__ import annotations

import json

import pytest

from services.planner import manifests
from shared.domain import model, vocabulary


def problems_of(text: str | bytes) -> list[str]:
    with pytest.raises(manifests.ManifestError) as info:
        manifests.parse(text)
    return [str(p) for p in info.value.problems]


def test_seed_manifest_reads_every_kind(seed_text: str) -> None:
    docs = manifests.parse(seed_text)
    assert [(d.spec.kind, d.spec.name) for d in docs] == [
        ("ClusterNetwork", "oob"),
        ("VlanConfig", "oob-all"),
        ("Network", "vlan100"),
        ("Network", "vlan200"),
        ("Network", "untagged-network"),
    ]
    vc = docs[1].spec
    assert isinstance(vc, model.VlanConfig)
    assert vc.uplink.nics == ["eth1", "eth2"]
    assert vc.uplink.bond_options.miimon == 100


HARVESTER_VLANCONFIG = """
apiVersion: network.harvesterhci.io/v1beta1
kind: VlanConfig
metadata:
  name: oob-vc
  labels: {network.harvesterhci.io/clusternetwork: oob}
  annotations: {some: thing}
  resourceVersion: "12345"
spec:
  clusterNetwork: oob
  nodeSelector:
    kubernetes.io/hostname: node-1
  uplink:
    nics: [eth1, eth2]
    linkAttributes: {mtu: 0, txQLen: -1}
    bondOptions: {mode: 802.3ad, miimon: -1, lacpRate: fast}
status:
  conditions: []
"""


def test_harvester_objects_apply_unchanged_with_crd_defaults() -> None:
    docs = manifests.parse(
        "apiVersion: network.harvesterhci.io/v1beta1\nkind: ClusterNetwork\n"
        "metadata: {name: oob}\n---\n" + HARVESTER_VLANCONFIG
    )
    cn, vc = (d.spec for d in docs)
    assert isinstance(cn, model.ClusterNetwork) and cn.name == "oob"
    assert isinstance(vc, model.VlanConfig)
    assert vc.name == "oob-vc"
    assert vc.node_selector == {"kubernetes.io/hostname": "node-1"}
    # -1 is Harvester's "unset": the kernel default applies.
    assert vc.uplink.bond_options.miimon is None
    assert vc.uplink.link_attributes.tx_q_len is None
    assert vc.uplink.bond_options.lacp_rate == "fast"


@pytest.mark.parametrize(("number", "name"), list(enumerate(vocabulary.BOND_MODES)))
def test_bond_mode_by_kernel_number(number: int, name: str) -> None:
    text = (
        "kind: VlanConfig\nname: v\nclusterNetwork: oob\nuplink:\n  nics: [eth1]\n"
        f"  bondOptions: {{mode: {number}}}\n"
    )
    spec = manifests.parse(text)[0].spec
    assert isinstance(spec, model.VlanConfig)
    assert spec.uplink.bond_options.mode == name


def test_json_array_and_kubernetes_list_are_streams_of_documents() -> None:
    docs = [{"kind": "ClusterNetwork", "name": "a"}, {"kind": "ClusterNetwork", "name": "b"}]
    assert [d.spec.name for d in manifests.parse(json.dumps(docs))] == ["a", "b"]
    listed = {"apiVersion": "v1", "kind": "List", "items": docs}
    assert [d.spec.name for d in manifests.parse(json.dumps(listed))] == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "kind: Network\nname: n\nclusterNetwork: oob\nvlan: 10\ncolour: red\n",
            "document 1, line 5: Network n: colour: unknown field colour",
        ),
        (
            "kind: VlanConfig\nname: v\nclusterNetwork: oob\nuplink:\n  nics: [eth1]\n"
            "  linkAttributes:\n    mtu: big\n",
            "document 1, line 7: VlanConfig v: uplink.linkAttributes.mtu: expected int, got str",
        ),
        (
            "kind: VlanConfig\nname: v\nclusterNetwork: oob\nuplink: {}\n",
            "VlanConfig v: uplink.nics: missing required field nics",
        ),
        ("kind: Bridge\nname: b\n", "unknown kind 'Bridge'"),
        ("name: b\n", "missing `kind`"),
        ("kind: Network\nclusterNetwork: oob\n", "missing `name`"),
        ("kind: Node\nname: node-1\n", "reported by each node's executor"),
        ("- 1\n- 2\n", "a document must be a mapping"),
        ("apiVersion: v9\nkind: ClusterNetwork\nmetadata: {name: a}\n", "unsupported apiVersion"),
        (
            "apiVersion: network.harvesterhci.io/v1beta1\nkind: VlanConfig\nmetadata: {name: a}\n",
            "VlanConfig a: spec: missing `spec`",
        ),
        ("", "holds no document"),
    ],
)
def test_bad_documents_are_named_with_field_and_line(text: str, expected: str) -> None:
    assert any(expected in p for p in problems_of(text)), problems_of(text)


def test_malformed_yaml_reports_line_and_column() -> None:
    (problem,) = problems_of("kind: Network\nname: n\nvlan: [1, 2\n")
    assert problem.startswith("line 4: malformed YAML/JSON at column"), problem
    with pytest.raises(manifests.ManifestError) as info:
        manifests.parse("kind: Network\nname: n\nvlan: [1, 2\n")
    assert info.value.problems[0].line == 4 and info.value.problems[0].code == "bad-request"


def test_malformed_json_reports_line_and_column() -> None:
    (problem,) = problems_of('{"kind": "Network",\n "name": "n",,}')
    assert problem.startswith("line 2: ") and "column" in problem


def test_every_bad_document_is_reported_at_once() -> None:
    text = "kind: Bridge\nname: a\n---\nkind: Network\nname: n\nfoo: 1\n"
    problems = problems_of(text)
    assert len(problems) == 2
    assert problems[0].startswith("document 1") and problems[1].startswith("document 2")


def test_oversized_payload_is_refused_before_parsing() -> None:
    big = b"# " + b"x" * manifests.MAX_MANIFEST_BYTES
    (problem,) = problems_of(big)
    assert "the limit is" in problem


def test_non_utf8_is_refused() -> None:
    (problem,) = problems_of(b"kind: Network\nname: \xff\n")
    assert "not UTF-8" in problem


def test_unquoted_mac_address_stays_a_string() -> None:
    spec = manifests.parse(
        "kind: VmNic\nname: n\nvm: vm1\nnode: node-1\nnetwork: x\nmac: 52:54:00:12:34:56\n"
    )[0].spec
    assert isinstance(spec, model.VmNic)
    assert spec.mac == "52:54:00:12:34:56"


def test_yaml_aliases_are_refused() -> None:
    (problem,) = problems_of("a: &x [1, 2]\nb: *x\n")
    assert "aliases" in problem and "line 2" in problem
