"""Random manifests never crash the reader or the validator: accepted, or a clear error."""

from __future__ import annotations

import json
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from services.planner import compiling, manifests, validation
from tests.planner.conftest import catalog_with_nodes

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=5000),
    st.sampled_from(
        [
            "oob",
            "mgmt",
            "eth1",
            "eth2",
            "active-backup",
            "802.3ad",
            "fast",
            "x",
            "L2VlanNetwork",
            "UntaggedNetwork",
            "L2VlanTrunkNetwork",
            "",
            "Node-1",
        ]
    ),
)
keys = st.sampled_from(
    [
        "name",
        "clusterNetwork",
        "uplink",
        "nics",
        "bondOptions",
        "mode",
        "miimon",
        "lacpRate",
        "linkAttributes",
        "mtu",
        "txQLen",
        "vlan",
        "trunk",
        "minID",
        "maxID",
        "id",
        "vm",
        "node",
        "network",
        "mac",
        "nodeSelector",
        "ips",
        "type",
        "primary",
        "spec",
        "metadata",
        "bogus",
    ]
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)
documents = st.builds(
    lambda kind, name, fields: {"kind": kind, "name": name, **fields},
    st.sampled_from(
        ["ClusterNetwork", "VlanConfig", "Network", "HostNetwork", "VmNic", "Node", "Other"]
    ),
    st.sampled_from(["oob", "a", "vlan100", "n-1", "BAD", "x" * 20]),
    st.dictionaries(keys, values, max_size=5),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(documents, min_size=1, max_size=4), st.booleans())
def test_random_manifest_is_accepted_or_explained(
    docs: list[dict[str, Any]], as_json: bool
) -> None:
    text = json.dumps(docs) if as_json else yaml.safe_dump_all(docs)
    try:
        parsed = manifests.parse(text)
    except manifests.ManifestError as err:
        assert err.problems
        assert all(p.message for p in err.problems)
        return
    problems = [p for d in parsed for p in validation.check_object(d.spec)]
    for p in problems:
        assert p.kind and p.field and p.message
    if problems:
        return
    catalog = catalog_with_nodes("node-1", "node-2").with_changes(put=[d.spec for d in parsed])
    if not validation.check_catalog(catalog):
        for node in ("node-1", "node-2"):
            compiling.compile_node(catalog, node)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_text_never_crashes_the_reader(text: str) -> None:
    try:
        manifests.parse(text)
    except manifests.ManifestError as err:
        assert err.problems
