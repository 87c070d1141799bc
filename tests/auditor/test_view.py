"""The auditor's judgement as a pure fold: each drift kind with its field path, episodes with
times taken from the events, rollouts that are not drift, and the readable diff."""

from __future__ import annotations

import pytest

from services.auditor.report import diff_lines, format_node
from services.auditor.service import cluster_network_of
from services.auditor.view import (
    REMEMBERED,
    FleetView,
    Policy,
    desired_of,
    kernel_differences,
)
from shared.domain.l2state import DEFAULT_PVID, LinkState, owner_alias
from shared.domain.model import DriftItem, ObservedState, VlanRange
from tests.auditor.conftest import Change, applied, converged, heartbeat
from tests.executor.labkit import seed_intent

NODE = "node-1"


def judged(change: Change) -> list[tuple[str, str, object, object]]:
    """The open findings after one hand-made change to a converged seed node."""
    view = FleetView()
    intent = seed_intent(NODE, 1)
    view.on_intent(intent, 1.0)
    view.on_observed(converged(intent, at=2.0, change=change), 2.0)
    return [(i.object, i.path, i.desired, i.actual) for i in view.node(NODE).open_items()]


def test_a_converged_node_has_no_findings() -> None:
    assert judged(lambda links, vlans: None) == []


def _vm_port(links: dict[str, LinkState], vm: str) -> str:
    return next(n for n, lk in links.items() if lk.alias and f"vm={vm}" in lk.alias)


def _set(links: dict[str, LinkState], name: str, **fields: object) -> None:
    for k, v in fields.items():
        setattr(links[name], k, v)


def _drop_bridge(links: dict[str, LinkState], vlans: dict[str, list[VlanRange]]) -> None:
    del links["oob-br"], vlans["oob-br"]
    links["oob-bo"].master = None


def _release_bond(links: dict[str, LinkState], vlans: dict[str, list[VlanRange]]) -> None:
    links["oob-bo"].master = None
    del vlans["oob-bo"]  # a port that leaves a bridge loses its VLANs


KINDS: dict[str, tuple[Change, list[tuple[str, str, object, object]]]] = {
    "missing managed interface": (
        lambda links, vlans: _drop_bridge(links, vlans),
        [("oob-bo", "master", "oob-br", None), ("oob-br", "", "present", "absent")],
    ),
    "extra managed interface": (
        lambda links, vlans: links.update(
            {"oob-br.30": LinkState(name="oob-br.30", kind="vlan", alias=owner_alias(hostnet="x"))}
        ),
        [("oob-br.30", "", "absent", "present")],
    ),
    "VID missing on uplink": (
        lambda links, vlans: vlans.update({"oob-bo": [DEFAULT_PVID]}),
        [("oob-bo", "vlans", ["1 PVID untagged", "200"], ["1 PVID untagged"])],
    ),
    "VID extra on uplink": (
        lambda links, vlans: vlans.update({"oob-bo": [*vlans["oob-bo"], VlanRange(vid=300)]}),
        [("oob-bo", "vlans", ["1 PVID untagged", "200"], ["1 PVID untagged", "200", "300"])],
    ),
    "port released from bond": (
        lambda links, vlans: _set(links, "eth2", master=None),
        [("eth2", "master", "oob-bo", None)],
    ),
    "bond released from bridge": (
        lambda links, vlans: _release_bond(links, vlans),
        # Leaving the bridge takes the port's VLANs with it: both are reported.
        [("oob-bo", "master", "oob-br", None), ("oob-bo", "vlans", ["1 PVID untagged", "200"], [])],
    ),
    "changed bond mode": (
        lambda links, vlans: _set(links, "oob-bo", bond_mode="balance-xor"),
        [("oob-bo", "bond.mode", "active-backup", "balance-xor")],
    ),
    "changed bond option": (
        lambda links, vlans: _set(links, "oob-bo", bond_options={"miimon": 250}),
        [("oob-bo", "bond.options.miimon", 100, 250)],
    ),
    "MTU difference": (
        lambda links, vlans: _set(links, "oob-br", mtu=1400),
        [("oob-br", "mtu", 1500, 1400)],
    ),
    "VM NIC on the wrong VLAN": (
        lambda links, vlans: vlans.update(
            {_vm_port(links, "vm200"): [VlanRange(vid=210, pvid=True, untagged=True)]}
        ),
        [("vm/vm200/eth0", "vlans", ["200 PVID untagged"], ["210 PVID untagged"])],
    ),
    "VM NIC released from bridge": (
        lambda links, vlans: _set(links, _vm_port(links, "vmu"), master=None),
        [("vm/vmu/eth0", "bridge", "oob-br", None)],
    ),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_drift_kind_is_found_with_its_field_path(kind: str) -> None:
    change, expected = KINDS[kind]
    found = judged(change)
    for item in expected:
        assert item in found, f"{kind}: {item} not in {found}"
    assert len(found) == len(expected), found


def test_an_observed_state_is_judged_against_its_own_generation() -> None:
    view = FleetView()
    gen1, gen2 = seed_intent(NODE, 1), seed_intent(NODE, 2, vlan200=210)
    view.on_intent(gen1, 1.0)
    view.on_observed(converged(gen1, at=2.0), 2.0)
    view.on_intent(gen2, 3.0)  # a rollout starts: the node is still on generation 1
    view.tick(4.0)
    assert view.node(NODE).open_items() == []
    view.on_observed(converged(gen2, at=5.0), 5.0)
    assert view.node(NODE).open_items() == []


def test_replay_order_of_streams_does_not_change_the_findings() -> None:
    intent = seed_intent(NODE, 1)
    drifted = converged(intent, at=2.0, change=lambda lk, v: _set(lk, "oob-br", mtu=1400))
    a, b = FleetView(), FleetView()
    a.on_intent(intent, 1.0)
    a.on_observed(drifted, 2.0)
    b.on_observed(drifted, 2.0)  # observed replayed before its intent: it waits for it
    b.on_intent(intent, 1.0)
    assert a.node(NODE).open_items() == b.node(NODE).open_items() != []


def test_an_episode_lasts_from_the_event_that_showed_it_to_the_one_that_did_not() -> None:
    view = FleetView()
    intent = seed_intent(NODE, 1)
    view.on_intent(intent, 1.0)
    mtu = lambda lk, v: _set(lk, "oob-br", mtu=1400)  # noqa: E731
    view.on_observed(converged(intent, at=5.0), 5.0)
    assert view.node(NODE).matching_since == 5.0
    opened = view.on_observed(converged(intent, at=10.0, change=mtu), 10.0)
    assert [(i.first_seen, i.resolved_at) for i in opened[NODE]] == [(10.0, None)]
    again = view.on_observed(converged(intent, at=11.0, change=mtu), 11.0)
    assert again == {}  # the same finding is not reported again
    closed = view.on_observed(converged(intent, at=12.0), 12.0)
    assert [(i.first_seen, i.resolved_at) for i in closed[NODE]] == [(10.0, 12.0)]
    v = view.node(NODE)
    # When did it last match? Until 10.0; and it matches again since 12.0.
    assert v.matching_since == 12.0 and v.last_matched == 10.0


def test_a_silent_node_is_the_same_episode_live_and_in_replay() -> None:
    live, replay = FleetView(Policy(silence_s=5)), FleetView(Policy(silence_s=5))
    live.on_heartbeat(heartbeat(NODE, 100.0), 100.0)
    live.tick(103.0)
    assert not live.unverified(NODE)
    live.tick(107.0)
    assert live.unverified(NODE)
    live.on_heartbeat(heartbeat(NODE, 120.0), 120.0)
    assert not live.unverified(NODE)
    replay.on_heartbeat(heartbeat(NODE, 100.0), 100.0)
    replay.on_heartbeat(heartbeat(NODE, 120.0), 120.0)
    episodes = [
        (i.object, i.path, i.first_seen, i.resolved_at) for i in live.node(NODE).episodes.all()
    ]
    assert episodes == [("node/node-1", "heartbeat", 105.0, 120.0)]
    assert episodes == [
        (i.object, i.path, i.first_seen, i.resolved_at) for i in replay.node(NODE).episodes.all()
    ]


def test_a_node_stuck_on_an_old_generation() -> None:
    view = FleetView(Policy(grace_s=30, silence_s=1000))
    view.on_heartbeat(heartbeat(NODE, 0.5), 0.5)  # only registered nodes are judged
    view.on_intent(seed_intent(NODE, 1), 1.0)
    view.on_status(applied(NODE, 1, 2.0), 2.0)
    view.on_intent(seed_intent(NODE, 2), 10.0)
    view.on_status(applied(NODE, 2, 12.0, phase="RolledBack"), 12.0)
    view.tick(13.0)
    assert [
        (i.object, i.path, i.desired, i.actual, i.first_seen) for i in view.node(NODE).open_items()
    ] == [("node/node-1", "generation", 2, 1, 12.0)]
    view.on_status(applied(NODE, 2, 50.0), 50.0)
    assert view.node(NODE).open_items() == []
    view.on_intent(seed_intent(NODE, 3), 60.0)
    view.tick(80.0)
    assert view.node(NODE).open_items() == []  # still within the grace period
    view.tick(91.0)
    assert [i.first_seen for i in view.node(NODE).open_items()] == [90.0]


def test_findings_read_as_a_diff_with_field_paths() -> None:
    def item(obj: str, path: str, desired: object, actual: object) -> DriftItem:
        return DriftItem(object=obj, path=path, desired=desired, actual=actual, first_seen=0)

    assert diff_lines(item("oob-br.30", "", "absent", "present")) == [
        "+ oob-br.30  (on the node, not in the intent)"
    ]
    assert diff_lines(item("oob-br", "", "present", "absent")) == [
        "- oob-br  (in the intent, missing on the node)"
    ]
    assert diff_lines(
        item("oob-bo", "vlans", ["1 PVID untagged", "200"], ["1 PVID untagged", "300"])
    ) == [
        "- oob-bo.vlans: 200",
        "+ oob-bo.vlans: 300",
    ]
    assert diff_lines(item("oob-bo", "bond.mode", "active-backup", "balance-xor")) == [
        "~ oob-bo.bond.mode: desired 'active-backup', actual 'balance-xor'"
    ]


def test_a_findings_cluster_network_decides_its_heal_policy() -> None:
    intent = seed_intent(NODE, 1)

    def cn(obj: str) -> str | None:
        return cluster_network_of(
            DriftItem(object=obj, path="", desired=1, actual=2, first_seen=0), intent
        )

    assert cn("oob-bo") == "oob" and cn("eth2") == "oob" and cn("vm/vm200/eth0") == "oob"
    assert cn("mgmt-bo") == "mgmt" and cn("vm/vm100/eth0") == "mgmt"
    assert cn("oob-br.30") == "oob"  # an extra link, by its name
    assert cn("node/node-1") is None


def test_a_node_heading_says_unverified_when_it_stopped_reporting() -> None:
    from shared.wire.auditor_api import NodeAudit

    audit = NodeAudit(
        node=NODE,
        desired_generation=2,
        applied_generation=2,
        observed_generation=2,
        reporting=False,
        verified=False,
        heartbeat_at=1.0,
        observed_at=1.0,
    )
    assert "NOT REPORTING" in format_node(audit)[0] and "UNVERIFIED" in format_node(audit)[0]


def test_the_audit_example_in_the_docs_is_what_the_formatter_prints() -> None:
    import calendar
    import re
    from pathlib import Path

    from services.auditor.report import format_audit
    from shared.wire.auditor_api import CheckReply, NodeAudit

    page = (Path(__file__).resolve().parents[2] / "docs" / "auditor.md").read_text()
    session = re.findall(r"```console\n(.*?)```", page, re.S)[0].splitlines()
    assert session[0] == "$ l2net audit"
    shown = session[1 : session.index("$ echo $?")]
    at = calendar.timegm((2026, 11, 27, 21, 3, 4)) + 0.139  # the page shows milliseconds

    def node(name: str, items: list[DriftItem]) -> NodeAudit:
        return NodeAudit(
            node=name,
            desired_generation=3,
            applied_generation=3,
            observed_generation=3,
            reporting=True,
            verified=True,
            heartbeat_at=at,
            observed_at=at,
            items=items,
        )

    items = [
        DriftItem(
            object="oob-bo",
            path="vlans",
            desired=["1 PVID untagged", "200"],
            actual=["1 PVID untagged"],
            first_seen=at,
        ),
        DriftItem(object="oob-br", path="mtu", desired=1500, actual=1400, first_seen=at + 5),
    ]
    reply = CheckReply(ok=True, nodes=[node("node-1", items), node("node-2", [])])
    assert format_audit(reply).splitlines() == shown


def test_an_intent_the_node_cannot_apply_is_a_finding_until_a_good_one_is_applied() -> None:
    view = FleetView()
    bad, good = seed_intent(NODE, 1, mode="bogus"), seed_intent(NODE, 2)
    view.on_intent(bad, 1.0)
    view.on_observed(ObservedState(node=NODE, generation=1, at=2.0), 2.0)
    (item,) = view.node(NODE).open_items()
    assert (item.object, item.path) == ("intent", "generation 1")
    assert "bogus" in item.actual
    view.on_intent(good, 3.0)
    view.on_observed(converged(good, at=4.0), 4.0)
    assert view.node(NODE).open_items() == []


def test_a_snapshot_carries_every_field_of_a_node_view() -> None:
    from dataclasses import fields

    import msgspec

    from services.auditor import snapshot
    from services.auditor.view import NodeView

    carried = set(snapshot.NodeSnapshot.__struct_fields__) - {"open", "closed"} | {"episodes"}
    assert {f.name for f in fields(NodeView)} == carried
    view = FleetView(Policy(silence_s=5))
    intent = seed_intent(NODE, 1)
    view.on_intent(intent, 1.0)
    view.on_status(applied(NODE, 1, 2.0), 2.0)
    view.on_heartbeat(heartbeat(NODE, 2.0), 2.0)
    view.on_observed(converged(intent, at=3.0, change=lambda lk, v: _set(lk, "oob-br", mtu=9)), 3.0)
    view.on_observed(converged(intent, at=4.0), 4.0)
    view.on_observed(
        converged(intent, at=5.0, change=lambda lk, v: _set(lk, "eth2", master=None)), 5.0
    )
    view.on_observed(converged(seed_intent(NODE, 2), at=6.0), 6.0)  # waits for its intent
    view.tick(100.0)
    snap = snapshot.take(view, streams={}, published={}, heal_notes=set(), at=7.0)
    back = FleetView()
    snapshot.restore(msgspec.json.decode(msgspec.json.encode(snap), type=snapshot.Snapshot), back)
    assert back.nodes == view.nodes


def test_the_desired_state_is_built_once_per_intent_and_judges_as_before() -> None:
    """Observed states of one intent share one desired state and remember the kernel states
    they met; a new intent or another mgmt VLAN starts anew; the findings are always those
    of a diff made afresh."""
    view = FleetView()
    first, second = seed_intent(NODE, 1), seed_intent(NODE, 2, vlan200=None)
    view.on_intent(first, 1.0)
    kept = view.judging(NODE, first, mgmt_vlan=None)
    assert view.judging(NODE, first, mgmt_vlan=None) is kept
    assert view.judging(NODE, first, mgmt_vlan=30).desired == desired_of(first, mgmt_vlan=30)
    assert view.judging(NODE, first, mgmt_vlan=None) is not kept

    def mtu(lk: dict[str, LinkState], v: object) -> None:
        _set(lk, "oob-br", mtu=9)

    def port(lk: dict[str, LinkState], v: object) -> None:
        _set(lk, "eth2", master=None)

    def vid(lk: object, v: dict[str, list[VlanRange]]) -> None:
        v["oob-bo"] = [r for r in v["oob-bo"] if r.vid != 200]

    steps = [(first, mtu), (first, None), (first, mtu), (first, port), (first, None)]
    steps += [(first, c) for c in (vid, mtu, port, None, vid, mtu, port, None, vid)]
    steps += [(second, mtu), (second, None), (second, mtu)]
    for i, (intent, change) in enumerate(steps):
        if intent is second and view.node(NODE).latest_generation == 1:
            view.on_intent(second, 50.0)
        at = 100.0 + i
        obs = converged(intent, at=at, change=change)
        view.on_observed(obs, at)
        judging = view.judging(NODE, intent, mgmt_vlan=None)
        assert judging.desired == desired_of(intent, mgmt_vlan=None)
        assert len(judging.seen) <= REMEMBERED
        found = {(i.object, i.path, str(i.actual)) for i in view.node(NODE).kernel_open}
        fresh = kernel_differences(intent, obs)
        assert found == {(d.object, d.path, str(d.actual)) for d in fresh}
        assert bool(found) == (change is not None)
    assert len(view.judging(NODE, second, mgmt_vlan=None).seen) == 2
