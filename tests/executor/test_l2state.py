"""The one diff (shared.domain.l2state) and the planner built on it: pure, no kernel."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.executor.planning import PlanError, plan
from shared.domain.l2state import (
    DEFAULT_PVID,
    UNFINISHED_ALIAS,
    Difference,
    Field,
    LinkState,
    NodeL2State,
    ObjectKind,
    Op,
    StateError,
    build_actual,
    canonical_vlans,
    desired_state,
    diff,
    exact_desired,
    expand_vlans,
    format_vlans,
    normalize_bond_options,
    observed_from,
    owner_alias,
    port_record,
    state_from_observed,
    vlan_changes,
)
from shared.domain.model import HostVlanIntent, VlanRange
from tests.executor.labkit import seed_intent


def vr(vid: int, end: int = 0, *, pvid: bool = False, untagged: bool = False) -> VlanRange:
    return VlanRange(vid=vid, vid_end=end, pvid=pvid, untagged=untagged)


def converged_seed_node(mode: str = "active-backup") -> NodeL2State:
    """What a node that applied the seed intent looks like, as the kernel reports it."""
    oob = owner_alias(cn="oob")
    links = [
        LinkState(name="eth0", kind="device", master="mgmt-bo", up=True, mtu=1500),
        LinkState(name="mgmt-bo", kind="bond", master="mgmt-br", up=True, mtu=1500),
        LinkState(name="mgmt-br", kind="bridge", up=True, mtu=1500, vlan_filtering=True),
        LinkState(name="eth1", kind="device", master="oob-bo", up=True, mtu=1500),
        LinkState(name="eth2", kind="device", master="oob-bo", up=True, mtu=1500),
        LinkState(
            name="oob-bo",
            kind="bond",
            alias=oob,
            master="oob-br",
            up=True,
            mtu=1500,
            bond_mode=mode,
            bond_options={"miimon": 100, "updelay": 0},
        ),
        LinkState(name="oob-br", kind="bridge", alias=oob, up=True, mtu=1500, vlan_filtering=True),
    ]
    vlans = {
        "mgmt-bo": [DEFAULT_PVID, vr(100)],
        "mgmt-br": [DEFAULT_PVID],
        "oob-bo": [DEFAULT_PVID, vr(200)],
        "oob-br": [DEFAULT_PVID],
    }
    for i, (vm, net, bridge, vid) in enumerate(
        [
            ("vm100", "vlan100", "mgmt-br", 100),
            ("vmu", "untagged-network", "oob-br", 1),
            ("vm200", "vlan200", "oob-br", 200),
        ]
    ):
        name = f"veth{i}"
        alias = owner_alias(vm=vm, net=net, **{"if": "eth0"})
        links.append(LinkState(name=name, kind="veth", alias=alias, master=bridge, up=True))
        vlans[name] = [vr(vid, pvid=True, untagged=True)]
    return build_actual(
        node="node-1", links=links, vlans=vlans, namespaces=["vm100", "vm200", "vmu"]
    )


def test_converged_node_has_no_differences_and_no_steps() -> None:
    desired, refused = desired_state(seed_intent("node-1", 1))
    assert refused == []
    actual = converged_seed_node()
    assert diff(desired, actual) == []
    assert plan(desired, actual) == []


def test_differences_read_like_nmstate() -> None:
    desired, _ = desired_state(seed_intent("node-1", 1, mode="802.3ad"))
    items = diff(desired, converged_seed_node())
    mode = Difference.changed(
        ObjectKind.LINK, "oob-bo", Field.BOND_MODE, desired="802.3ad", actual="active-backup"
    )
    assert mode in items
    assert (mode.op, mode.object, mode.path) == (Op.CHANGE, "oob-bo", "bond.mode")
    assert str(items[0]) == 'oob-bo.bond.mode: desired "802.3ad", actual "active-backup"'


def test_a_bond_mode_change_releases_ports_and_downs_the_bond_first() -> None:
    desired, _ = desired_state(seed_intent("node-1", 1, mode="balance-xor"))
    steps = [s.describe() for s in plan(desired, converged_seed_node())]
    assert steps[:4] == [
        "link.set eth1 (master=None)",
        "link.set eth2 (master=None)",
        "link.set oob-bo (up=False)",
        "link.set oob-bo (bond_mode=balance-xor, bond_options={'miimon': 100})",
    ]
    # ports are enslaved while down, then everything comes up again
    assert steps.index("link.set eth1 (up=False)") < steps.index("link.set eth1 (master=oob-bo)")
    assert steps.index("link.set eth1 (master=oob-bo)") < steps.index("link.set eth1 (up=True)")
    assert steps[-1] == "link.set oob-bo (up=True)"


def test_a_vlan_change_moves_vids_on_uplink_and_vm_port() -> None:
    desired, _ = desired_state(seed_intent("node-1", 1, vlan200=210))
    steps = [s.describe() for s in plan(desired, converged_seed_node())]
    assert steps == [
        "vlan.del oob-bo (ranges=200, self=False)",
        "vlan.add oob-bo (ranges=210, self=False)",
        "vm.vlans vm/vm200/eth0 (vlans=210 pvid untagged)",
    ]


def test_a_trunk_range_is_one_step() -> None:
    desired, _ = desired_state(seed_intent("node-1", 1, extra_oob_vids=list(range(300, 400))))
    steps = plan(desired, converged_seed_node())
    vid_steps = [s for s in steps if s.op == "vlan.add"]
    assert len(vid_steps) == 1
    assert vid_steps[0].args["ranges"] == [vr(300, 399)]


def test_deleting_a_network_unplugs_its_vm_and_removes_its_namespace_last() -> None:
    desired, _ = desired_state(seed_intent("node-1", 1, vlan200=None))
    steps = [s.describe() for s in plan(desired, converged_seed_node())]
    assert steps[0] == "vlan.del oob-bo (ranges=200, self=False)"
    assert steps[-2].startswith("cni.del vm/vm200/eth0")
    assert steps[-1] == "netns.del vm200"


def test_mgmt_links_are_protected_whatever_the_intent_says() -> None:
    hostile = seed_intent(
        "node-1",
        1,
        host_vlans=[
            HostVlanIntent(
                name="mgmt-br.10",
                host_network="x",
                cluster_network="mgmt",
                bridge="mgmt-br",
                vlan=10,
                addresses=["169.254.9.9/24"],
            )
        ],
    )
    hostile.cluster_networks[0].managed = True
    desired, refused = desired_state(hostile, mgmt_vlan=10)
    assert "mgmt-br.10" not in desired.links and "mgmt-br" not in desired.links
    assert len(refused) == 2
    # The mgmt VLAN stays on mgmt-bo with the VIDs of the networks on mgmt.
    assert desired.vlans["mgmt-bo"] == [DEFAULT_PVID, vr(10), vr(100)]


def test_a_node_without_mgmt_links_gets_a_clear_error_not_a_new_bridge() -> None:
    actual = converged_seed_node()
    for name in ("mgmt-bo", "mgmt-br", "eth0"):
        del actual.links[name]
        actual.vlans.pop(name, None)
    desired, _ = desired_state(seed_intent("node-1", 1))
    with pytest.raises(PlanError, match="mgmt-bo is missing: l2net never creates it"):
        plan(desired, actual)


def test_a_port_of_a_link_l2net_does_not_own_is_never_taken() -> None:
    actual = converged_seed_node()
    actual.links["eth2"].master = "other-br"
    actual.links["other-br"] = LinkState(name="other-br", kind="bridge")
    desired, _ = desired_state(seed_intent("node-1", 1))
    with pytest.raises(PlanError, match="eth2 belongs to other-br"):
        plan(desired, actual)


def test_extra_owned_links_are_removed_and_foreign_ones_ignored() -> None:
    actual = converged_seed_node()
    actual.links["old-br"] = LinkState(name="old-br", kind="bridge", alias=owner_alias(cn="old"))
    actual.links["docker0"] = LinkState(name="docker0", kind="bridge", up=True)
    desired, _ = desired_state(seed_intent("node-1", 1))
    assert [s.describe() for s in plan(desired, actual)] == ["link.delete old-br"]


def test_rollback_target_compares_every_field() -> None:
    snapshot = converged_seed_node()
    now = converged_seed_node()
    now.links["eth1"].up = False
    now.links["new-br"] = LinkState(name="new-br", kind="bridge", alias=owner_alias(cn="x"))
    now.vlans["oob-bo"] = [DEFAULT_PVID, vr(200), vr(300)]
    steps = [s.describe() for s in plan(exact_desired(snapshot), now)]
    assert sorted(steps) == sorted(
        [
            "vlan.del oob-bo (ranges=300, self=False)",
            "link.delete new-br",
            "link.set eth1 (up=True)",
        ]
    )


def test_observed_state_round_trips_to_the_same_managed_state() -> None:
    actual = converged_seed_node()
    actual.links["docker0"] = LinkState(name="docker0", kind="bridge")
    observed = observed_from(actual, generation=3, reason="test", at=0.0)
    assert "docker0" not in {link["name"] for link in observed.links}
    back = state_from_observed(observed)
    desired, _ = desired_state(seed_intent("node-1", 1))
    assert diff(desired, back) == []
    assert back.vm_ports == actual.vm_ports


def test_bond_options_are_normalized_and_unknown_ones_refused() -> None:
    assert normalize_bond_options({"lacp_rate": 1, "xmit_hash_policy": "layer3+4"}) == {
        "lacp_rate": "fast",
        "xmit_hash_policy": "layer3+4",
    }
    with pytest.raises(StateError, match="bond option 'bogus'"):
        normalize_bond_options({"bogus": 1})
    with pytest.raises(StateError, match="lacp_rate='medium'"):
        normalize_bond_options({"lacp_rate": "medium"})


def test_vlan_sets_print_like_bridge_vlan_show() -> None:
    assert format_vlans([vr(200), DEFAULT_PVID, vr(100, 110)]) == [
        "1 PVID untagged",
        "100-110",
        "200",
    ]
    with pytest.raises(StateError, match="4095"):
        canonical_vlans([vr(4095)])


vlan_sets = st.lists(
    st.tuples(st.integers(1, 60), st.integers(0, 5), st.booleans()).map(
        lambda t: vr(t[0], t[0] + t[1] if t[1] else 0, untagged=t[2])
    ),
    max_size=8,
)


@given(vlan_sets, vlan_sets)
def test_vlan_changes_turn_actual_into_desired(
    want: list[VlanRange], have: list[VlanRange]
) -> None:
    add, delete = vlan_changes(want, have)
    result = {v: f for v, f in expand_vlans(have).items() if v not in expand_vlans(delete)}
    result.update(expand_vlans(add))
    assert result == expand_vlans(want)
    assert canonical_vlans(canonical_vlans(want)) == canonical_vlans(want)


def storage(vlan: int, address: str) -> HostVlanIntent:
    return HostVlanIntent(
        name="oob-br.300",
        host_network="storage",
        cluster_network="oob",
        bridge="oob-br",
        vlan=vlan,
        addresses=[address],
    )


def test_a_host_network_gets_its_self_vid_then_its_interface_then_its_address() -> None:
    desired, _ = desired_state(
        seed_intent("node-1", 1, host_vlans=[storage(300, "169.254.30.1/24")])
    )
    steps = [s.describe() for s in plan(desired, converged_seed_node())]
    assert steps == [
        "vlan.add oob-br (ranges=300, self=True)",
        "link.create oob-br.300 (kind=vlan, alias=l2net hostnet=storage, mtu=1500,"
        " vlan_id=300, vlan_link=oob-br)",
        "addr.add oob-br.300 (address=169.254.30.1/24)",
        "link.set oob-br.300 (up=True)",
    ]


def test_a_host_networks_new_address_replaces_the_old_one() -> None:
    actual = converged_seed_node()
    actual.links["oob-br.300"] = LinkState(
        name="oob-br.300",
        kind="vlan",
        alias=owner_alias(hostnet="storage"),
        vlan_id=300,
        vlan_link="oob-br",
        up=True,
        mtu=1500,
        addresses=["169.254.30.1/24"],
    )
    actual.vlans["oob-br"] = [DEFAULT_PVID, vr(300)]
    desired, _ = desired_state(
        seed_intent("node-1", 1, host_vlans=[storage(300, "169.254.30.9/24")])
    )
    # The old address goes first: deleting a primary would take a new secondary with it.
    assert [s.describe() for s in plan(desired, actual)] == [
        "addr.del oob-br.300 (address=169.254.30.1/24)",
        "addr.add oob-br.300 (address=169.254.30.9/24)",
    ]


def test_an_address_kept_in_a_subnet_with_a_deletion_is_added_again() -> None:
    actual = converged_seed_node()
    actual.links["oob-br.300"] = LinkState(
        name="oob-br.300",
        kind="vlan",
        alias=owner_alias(hostnet="storage"),
        vlan_id=300,
        vlan_link="oob-br",
        up=True,
        mtu=1500,
        addresses=["169.254.30.1/24", "169.254.30.2/24", "169.254.40.1/24"],
    )
    actual.vlans["oob-br"] = [DEFAULT_PVID, vr(300)]
    hv = storage(300, "169.254.30.2/24")
    hv.addresses = ["169.254.30.2/24", "169.254.30.3/24", "169.254.40.1/24"]
    desired, _ = desired_state(seed_intent("node-1", 1, host_vlans=[hv]))
    # .1 may be the primary: .2 would die with it, so it is deleted and added again; the
    # other subnet is left alone.
    assert [s.describe() for s in plan(desired, actual)] == [
        "addr.del oob-br.300 (address=169.254.30.1/24)",
        "addr.del oob-br.300 (address=169.254.30.2/24)",
        "addr.add oob-br.300 (address=169.254.30.2/24)",
        "addr.add oob-br.300 (address=169.254.30.3/24)",
    ]


def test_a_vm_nic_moved_to_another_bridge_by_hand_is_put_back() -> None:
    actual = converged_seed_node()
    actual.links["veth1"].master = "mgmt-br"  # vmu's NIC, found on the wrong bridge
    actual = build_actual(
        node="node-1",
        links=actual.links.values(),
        vlans=actual.vlans,
        namespaces=actual.namespaces,
    )
    desired, _ = desired_state(seed_intent("node-1", 1))
    moved = Difference.changed(
        ObjectKind.VM_PORT, "vmu/eth0", Field.BRIDGE, desired="oob-br", actual="mgmt-br"
    )
    assert moved in diff(desired, actual)
    assert str(moved) == 'vm/vmu/eth0.bridge: desired "oob-br", actual "mgmt-br"'
    assert [s.describe() for s in plan(desired, actual)] == [
        "link.set veth1 (master=oob-br)",
        "vm.vlans vm/vmu/eth0 (vlans=1 pvid untagged)",
    ]


def test_a_vm_nic_on_a_bridge_the_node_does_not_have_is_refused() -> None:
    it = seed_intent("node-1", 1)
    it.cluster_networks = it.cluster_networks[:1]  # oob is not on this node
    actual = converged_seed_node()
    for name in ("oob-br", "oob-bo", "veth1", "veth2"):
        del actual.links[name]
    actual = build_actual(
        node="node-1", links=actual.links.values(), vlans={}, namespaces=["vm100"]
    )
    desired, _ = desired_state(it)
    with pytest.raises(PlanError, match="its bridge oob-br does not exist on this node"):
        plan(desired, actual)


# -- crash recovery: what a dead executor leaves is planned away ----------------------------


def bare_node() -> NodeL2State:
    """The seed node before l2net: eth1 and eth2 free and up, no oob, no VM."""
    actual = converged_seed_node()
    for name in ("oob-bo", "oob-br", "veth1", "veth2", "veth3"):
        actual.links.pop(name, None)
        actual.vlans.pop(name, None)
    for nic in ("eth1", "eth2"):
        actual.links[nic].master = None
    actual.vm_ports.clear()
    actual.namespaces = []
    return actual


def test_a_nic_enslaved_records_what_l2net_found_in_the_request_that_first_changes_it() -> None:
    actual = bare_node()
    actual.links["eth2"].up = False
    actual.links["eth2"].alias = "uplink to switch 7"
    desired, _ = desired_state(seed_intent("node-1", 1))
    steps = [s.describe() for s in plan(desired, actual)]
    assert "link.set eth1 (up=False, alias=l2net-port up=1)" in steps
    assert "link.set eth2 (master=oob-bo, alias=l2net-port up=0 uplink to switch 7)" in steps


def test_a_nic_released_for_good_gets_back_its_state_and_alias() -> None:
    actual = converged_seed_node()
    actual.links["eth1"].alias = port_record(up=True, alias=None)
    actual.links["eth2"].alias = port_record(up=False, alias="spare")
    intent = seed_intent("node-1", 1)
    intent.cluster_networks = intent.cluster_networks[:1]
    intent.vm_ports = [p for p in intent.vm_ports if p.cluster_network == "mgmt"]
    steps = [s.describe() for s in plan(desired_state(intent)[0], actual)]
    release = steps.index("link.set eth1 (master=None)")
    delete = steps.index("link.delete oob-bo")
    assert release < delete < steps.index("link.set eth1 (alias=None, up=True)")
    assert "link.set eth2 (alias=spare)" in steps
    # An executor that died after the release: the record alone says what to restore.
    actual.links.pop("oob-bo")
    actual.links["eth1"].master = None
    left = plan(desired_state(intent)[0], actual)
    assert "link.set eth1 (alias=None, up=True)" in [s.describe() for s in left]


def test_a_link_created_but_not_yet_named_is_completed_or_deleted() -> None:
    actual = converged_seed_node()
    actual.links["oob-br"].alias = UNFINISHED_ALIAS
    desired, _ = desired_state(seed_intent("node-1", 1))
    assert [s.describe() for s in plan(desired, actual)] == ["link.set oob-br (alias=l2net cn=oob)"]
    actual.links["oob-br.300"] = LinkState(
        name="oob-br.300", kind="vlan", alias=UNFINISHED_ALIAS, vlan_id=300, vlan_link="oob-br"
    )
    assert "link.delete oob-br.300" in [s.describe() for s in plan(desired, actual)]


def test_a_namespace_l2net_made_that_no_vm_wants_is_removed() -> None:
    actual = converged_seed_node()
    # An executor died while making vmx's namespace (recorded; maybe not even mounted) or
    # plugging its NIC (no VM NIC named l2net's): no VM wants it any more.
    actual.owned_namespaces = ["vm100", "vm200", "vmu", "vmx"]
    desired, _ = desired_state(seed_intent("node-1", 1))
    assert [s.describe() for s in plan(desired, actual)] == ["netns.del vmx"]


def test_a_bond_mac_change_is_made_with_the_bond_empty_and_down() -> None:
    actual = converged_seed_node()
    intent = seed_intent("node-1", 1)
    bond = intent.cluster_networks[1].bond
    assert bond is not None
    bond.hwaddr = "02:00:00:00:01:01"
    steps = [s.describe() for s in plan(desired_state(intent)[0], actual)]
    assert steps[:4] == [
        "link.set eth1 (master=None)",
        "link.set eth2 (master=None)",
        "link.set oob-bo (up=False)",
        "link.set oob-bo (mac=02:00:00:00:01:01)",
    ]
    assert steps.index("link.set eth1 (master=oob-bo)") < steps.index("link.set oob-bo (up=True)")


def test_a_bridge_keeps_its_mtu_when_its_bond_changes_its_own() -> None:
    actual = converged_seed_node()
    intent = seed_intent("node-1", 1)
    bond = intent.cluster_networks[1].bond
    assert bond is not None
    bond.mtu = 1450
    steps = [s.describe() for s in plan(desired_state(intent)[0], actual)]
    assert steps.index("link.set oob-bo (mtu=1450)") < steps.index("link.set oob-br (mtu=1500)")


# Found by the fake-kernel properties (tests/executor/test_fake_kernel.py).


def test_a_bond_mac_change_sets_the_changed_options_too() -> None:
    actual = converged_seed_node()
    intent = seed_intent("node-1", 1, bond_options={"miimon": 200})
    bond = intent.cluster_networks[1].bond
    assert bond is not None
    bond.hwaddr = "02:00:00:00:01:01"
    steps = [s.describe() for s in plan(desired_state(intent)[0], actual)]
    assert steps[3:5] == [
        "link.set oob-bo (mac=02:00:00:00:01:01)",
        "link.set oob-bo (bond_options={'miimon': 200})",
    ]


def test_a_rollback_gives_a_bond_its_mac_back() -> None:
    snapshot = converged_seed_node()
    snapshot.links["oob-bo"].mac = "52:54:00:00:00:01"
    now = converged_seed_node()
    now.links["oob-bo"].mac = "02:00:00:00:01:01"  # set by the attempt: it stays
    assert [str(d) for d in diff(exact_desired(snapshot), now)] == [
        'oob-bo.mac: desired "52:54:00:00:00:01", actual "02:00:00:00:01:01"'
    ]


def test_a_snapshot_with_a_bridge_that_does_not_filter_is_its_own_fixed_point() -> None:
    snapshot = converged_seed_node()
    snapshot.links["oob-br"].vlan_filtering = False  # turned off by hand; the VIDs stay
    assert diff(exact_desired(snapshot), snapshot) == []


def test_vids_on_a_bridge_that_does_not_filter_are_fixed_with_its_filtering() -> None:
    actual = converged_seed_node()
    actual.links["oob-br"].vlan_filtering = False
    actual.vlans["oob-bo"] = [DEFAULT_PVID, vr(200), vr(300)]
    desired, _ = desired_state(seed_intent("node-1", 1))
    steps = [s.describe() for s in plan(desired, actual)]
    assert steps == [
        "vlan.del oob-bo (ranges=300, self=False)",
        "link.set oob-br (vlan_filtering=True)",
    ]


def test_a_rollback_gives_a_bond_its_addresses_back() -> None:
    snapshot = converged_seed_node()
    snapshot.links["oob-bo"].addresses = ["10.9.0.1/24"]
    now = converged_seed_node()
    del now.links["oob-bo"]
    steps = [s.describe() for s in plan(exact_desired(snapshot), now)]
    assert steps.index("addr.add oob-bo (address=10.9.0.1/24)") > steps.index(
        next(s for s in steps if s.startswith("link.create oob-bo"))
    )
