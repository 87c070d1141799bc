"""The L2 vocabulary: one table per word, and every user of it agrees with it."""

from __future__ import annotations

import msgspec
import pytest

from services.executor.kernel import _bond_spec
from services.planner import manifests
from shared.domain import l2state, model, vocabulary
from shared.domain.model import VlanRange, VmPortIntent


def test_bond_mode_numbers_are_the_kernels() -> None:
    # include/uapi/linux/if_bonding.h: BOND_MODE_ROUNDROBIN 0 ... BOND_MODE_ALB 6
    assert vocabulary.BOND_MODE_NAMES[0] == "balance-rr"
    assert vocabulary.BOND_MODE_NAMES[4] == "802.3ad"
    assert vocabulary.BOND_MODE_NAMES[6] == "balance-alb"
    assert all(vocabulary.BOND_MODE_NAMES[n] == m for m, n in vocabulary.BOND_MODE_NUMBERS.items())
    assert set(vocabulary.LINK_AGGREGATION) == set(vocabulary.BOND_MODES)


def test_the_enumerated_bond_options_number_every_name_the_model_accepts() -> None:
    by_option = {
        "lacp_rate": vocabulary.LACP_RATES,
        "ad_select": vocabulary.AD_SELECTS,
        "arp_validate": vocabulary.ARP_VALIDATES,
        "xmit_hash_policy": vocabulary.XMIT_HASH_POLICIES,
    }
    assert set(by_option) == set(vocabulary.BOND_ENUMS)
    for option, names in by_option.items():
        assert sorted(vocabulary.BOND_ENUMS[option].values()) == sorted(names), option


def test_the_executor_writes_the_kernels_numbers() -> None:
    spec = _bond_spec("802.3ad", {"lacp_rate": "fast", "xmit_hash_policy": "layer3+4"})
    assert spec == {"bond_mode": 4, "bond_ad_lacp_rate": 1, "bond_xmit_hash_policy": 1}


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("eth0", True),
        ("a" * 15, True),
        ("a" * 16, False),
        ("", False),
        ("a b", False),
        ("a/b", False),
        ("a:b", False),
        (".", False),
        ("..", False),
        ("a\x00", False),
    ],
)
def test_one_interface_name_rule(name: str, ok: bool) -> None:
    assert (vocabulary.ifname_error(name) is None) == ok


def test_the_least_bridge_cni_config_passes_the_executors_check() -> None:
    port = VmPortIntent(
        name="vm1/eth0",
        vm="vm1",
        ifname="eth0",
        network="untagged",
        cluster_network="oob",
        bridge="oob-br",
        vlans=[VlanRange(vid=1, pvid=True, untagged=True)],
        mac=None,
        cni_config=vocabulary.bridge_cni_config(network="untagged", bridge="oob-br"),
    )
    l2state.check_cni_config(port)  # raises StateError if not


@pytest.mark.parametrize(
    ("document", "field", "message"),
    [
        (
            "kind: VlanConfig\nname: v\nclusterNetwork: oob\n"
            "uplink: {nics: [eth1], bondOptions: {mode: fast-rr}}\n",
            "uplink.bondOptions.mode",
            "unknown bond mode 'fast-rr' (one of balance-rr, active-backup, balance-xor,"
            " broadcast, 802.3ad, balance-tlb, balance-alb, or 0-6)",
        ),
        (
            "kind: VlanConfig\nname: v\nclusterNetwork: oob\n"
            "uplink: {nics: [eth1], bondOptions: {mode: 802.3ad, xmitHashPolicy: l9}}\n",
            "uplink.bondOptions.xmitHashPolicy",
            "'l9' is not one of layer2, layer2+3, layer3+4, encap2+3, encap3+4, vlan+srcmac",
        ),
        (
            "kind: Network\nname: n\nclusterNetwork: oob\ntype: Overlay\n",
            "type",
            "unknown network type 'Overlay' (one of L2VlanNetwork, UntaggedNetwork,"
            " L2VlanTrunkNetwork)",
        ),
    ],
)
def test_a_value_outside_the_vocabulary_is_refused_as_the_manifest_is_read(
    document: str, field: str, message: str
) -> None:
    with pytest.raises(manifests.ManifestError) as caught:
        manifests.parse(document)
    (problem,) = caught.value.problems
    assert (problem.field, problem.message) == (field, message)
    assert problem.line is not None and problem.line > 1


def test_a_bond_mode_by_the_kernels_number_reads_as_its_name() -> None:
    (doc,) = manifests.parse(
        "kind: VlanConfig\nname: v\nclusterNetwork: oob\n"
        "uplink: {nics: [eth1], bondOptions: {mode: 4}}\n"
    )
    assert isinstance(doc.spec, model.VlanConfig)
    assert doc.spec.uplink.bond_options.mode == "802.3ad"


def test_an_intent_with_a_mode_outside_the_vocabulary_does_not_decode() -> None:
    raw = {"node": "n", "generation": 1, "clusterNetworks": [_cn(mode="fast-rr")]}
    with pytest.raises(msgspec.ValidationError, match=r"bond\.mode"):
        msgspec.convert(raw, model.NodeIntent)
    assert msgspec.convert({**raw, "clusterNetworks": [_cn(mode="802.3ad")]}, model.NodeIntent)


def _cn(*, mode: str) -> dict[str, object]:
    return {
        "name": "oob",
        "bridge": "oob-br",
        "bondName": "oob-bo",
        "managed": True,
        "bond": {"name": "oob-bo", "ports": ["eth1"], "mode": mode},
        "mtu": 1500,
        "uplinkVlans": [],
    }
