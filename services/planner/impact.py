"""What applying an intent would do to a node, step by step, and what each step disrupts.

``l2net plan`` answers "what will this change do to my running VMs?" before anything is
stored. For each node whose intent would change, :func:`node_plan` takes the would-be intent
and the node's actual state (asked from its executor, or its last observed state) and runs
the executor's own planner on them (:func:`services.executor.planning.plan`): the steps
shown are the steps the executor takes, in its order, from the same code. Pure: no I/O.

Each step is then classified by :func:`classify`, one table of rules:

* **hitless**: nothing flowing now is touched (a link, VID, address, VM namespace or VM NIC
  added; a port enslaved; a link brought up; a NIC given back what l2net found);
* **disruptive**: traffic flowing now may stop or reset (a link deleted, a port released,
  a bond's mode, options or MAC changed, an MTU changed, a link downed, VIDs or addresses
  removed, a VM NIC unplugged).

A disruptive step names what runs on what it touches (:func:`affected`): the VM NICs and the
host networks (host VLAN interfaces) on that bridge, bond or VLAN, as they are now.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

# The executor's planner, imported as it is: the plan shown and the plan run are one code.
from services.executor.planning import PlanError, Step, plan
from shared.domain.l2state import (
    NodeL2State,
    Refusal,
    StateError,
    expand_vlans,
    parse_alias,
)
from shared.domain.model import VlanRange
from shared.wire import api

HITLESS: api.Impact = "hitless"
DISRUPTIVE: api.Impact = "disruptive"

Verdict = tuple[api.Impact, str]
"""A step's class and why, in words that follow the step's text."""

_BY_OPERATION: dict[str, Verdict] = {
    "link.create": (HITLESS, "a new link: nothing runs on it yet"),
    "link.delete": (DISRUPTIVE, "the link is deleted with everything on it"),
    "addr.add": (HITLESS, "a host address added"),
    "addr.del": (DISRUPTIVE, "a host address removed: connections to it break"),
    "vlan.add": (HITLESS, "VIDs added"),
    "vlan.del": (DISRUPTIVE, "VIDs removed: their traffic stops on this port"),
    "netns.add": (HITLESS, "a VM namespace made"),
    "netns.del": (DISRUPTIVE, "a VM namespace deleted"),
    "cni.add": (HITLESS, "a VM NIC plugged"),
    "cni.del": (DISRUPTIVE, "a VM NIC unplugged"),
}
"""Steps whose class depends on their operation alone."""


def _master(value: str | None, target: str, actual: NodeL2State) -> Verdict:
    if value is not None:
        return HITLESS, f"enslaved to {value}"
    return DISRUPTIVE, f"released from {_master_of(actual, target)}: its traffic stops"


def _up(value: bool, target: str, actual: NodeL2State) -> Verdict:
    if value:
        return HITLESS, "brought up"
    if _free_nic(actual, target):  # the kernel enslaves a port only while it is down
        return HITLESS, "downed to be enslaved: it carries no l2net traffic yet"
    return DISRUPTIVE, "downed: its traffic stops until it is up again"


_LINK_SET: dict[str, Callable[[Any, str, NodeL2State], Verdict]] = {
    "master": _master,
    "up": _up,
    "mtu": lambda value, target, actual: (
        DISRUPTIVE,
        f"MTU {_field(actual, target, 'mtu')} to {value}: the link resets, and frames the"
        " other MTU allows are dropped",
    ),
    "bond_mode": lambda value, target, actual: (
        DISRUPTIVE,
        f"bond mode {_field(actual, target, 'bond_mode')} to {value}: the bond is rebuilt"
        " with no ports and down",
    ),
    "bond_options": lambda value, target, actual: (
        DISRUPTIVE,
        "bond options changed (" + ", ".join(sorted(value)) + "): how the bond sends or"
        " fails over changes, the switch may renegotiate",
    ),
    "mac": lambda value, target, actual: (
        DISRUPTIVE,
        "MAC changed: neighbours' ARP and switch FDB entries go stale",
    ),
    "vlan_filtering": lambda value, target, actual: (
        DISRUPTIVE,
        "VLAN filtering turned " + ("on" if value else "off") + ": what the bridge forwards"
        " changes",
    ),
    "txqlen": lambda value, target, actual: (HITLESS, "queue length changed"),
    "alias": lambda value, target, actual: (HITLESS, "alias (l2net's record) changed"),
}
"""``link.set``: a verdict per argument; a step changing several takes the worst."""


def classify(step: Step, actual: NodeL2State) -> Verdict:
    """Whether ``step``, taken on a node whose state is ``actual``, is hitless or
    disruptive, and why (see the module docstring)."""
    fixed = _BY_OPERATION.get(step.op)
    if fixed is not None:
        return fixed
    if step.op == "link.set":
        verdicts = [
            _LINK_SET.get(key, _unknown_field)(value, step.target, actual)
            for key, value in step.args.items()
            if not (key == "bond_options" and "bond_mode" in step.args)  # a new mode sets all
        ]
        worst = [v for v in verdicts if v[0] == DISRUPTIVE] or verdicts
        return worst[0][0], "; ".join(reason for _, reason in worst) or "nothing changed"
    if step.op in ("vlan.exact", "vm.vlans"):
        removed = _vids_removed(step, actual)
        if removed:
            return DISRUPTIVE, f"VIDs {_vid_text(removed)} removed: their traffic stops"
        return HITLESS, "VIDs set, none removed"
    return DISRUPTIVE, f"{step.op}: not classified, so taken as disruptive"


def _unknown_field(value: Any, target: str, actual: NodeL2State) -> Verdict:
    return DISRUPTIVE, "a field not classified, so taken as disruptive"


def affected(step: Step, actual: NodeL2State) -> tuple[list[str], list[str]]:
    """The VM NICs (``<vm>/<ifname>``) and host networks that run now on what a disruptive
    ``step`` touches: the VM NIC or host network itself, those carrying the VIDs it removes,
    or everything on its bridge."""
    if step.target.startswith("vm/"):
        return [step.target.removeprefix("vm/")], []
    if step.op == "netns.del":
        return sorted(k for k, p in actual.vm_ports.items() if p.vm == step.target), []
    link = actual.links.get(step.target)
    if link is not None and link.kind == "vlan":  # a host network's own interface
        return [], [_host_network(actual, step.target)]
    bridge = _bridge_of(actual, step.target)
    if bridge is None:
        return [], []
    vids: set[int] | None = None  # None: every VID of the bridge
    if step.op in ("vlan.del", "vlan.exact"):
        vids = _vids_removed(step, actual) if step.op == "vlan.exact" else _vids(step)
    nics = sorted(
        key
        for key, port in actual.vm_ports.items()
        if port.bridge == bridge and (vids is None or vids & set(expand_vlans(port.vlans or [])))
    )
    hosts = sorted(
        _host_network(actual, name)
        for name, lk in actual.links.items()
        if lk.kind == "vlan"
        and lk.vlan_link == bridge
        and (vids is None or (lk.vlan_id is not None and lk.vlan_id in vids))
    )
    return nics, hosts


def node_plan(
    *,
    node: str,
    generation: int,
    desired: NodeL2State | StateError,
    refused: list[Refusal],
    actual: NodeL2State | None,
    state: api.StateSource,
    note: str = "",
) -> api.NodePlan:
    """The plan of one node: the executor's steps from ``actual`` to ``desired`` (built by
    :func:`shared.domain.l2state.desired_state` as the executor builds it, or the error it
    raised), each classified. ``actual`` None: no state known, no steps."""
    out = api.NodePlan(
        node=node,
        generation=generation,
        state=state,
        note=note,
        refused=[str(r) for r in refused],
    )
    if isinstance(desired, StateError):
        out.error = f"intent cannot be applied: {desired}"
        return out
    if actual is None:
        return out
    try:
        steps = plan(desired, actual)
    except (PlanError, StateError) as exc:
        out.error = str(exc)
        return out
    out.steps = [planned_step(step, actual) for step in steps]
    return out


def planned_step(step: Step, actual: NodeL2State) -> api.PlannedStep:
    impact, reason = classify(step, actual)
    nics, hosts = affected(step, actual) if impact == DISRUPTIVE else ([], [])
    return api.PlannedStep(
        operation=step.op,
        object=step.target,
        action=step.describe(),
        fields=step_fields(step),
        impact=impact,
        reason=reason,
        vm_nics=nics,
        host_networks=hosts,
    )


def step_fields(step: Step) -> dict[str, Any]:
    """A step's arguments as the executor's status results carry them (camelCase names,
    JSON values, without the CNI configuration): so that a program compares the two."""
    return {
        _camel(key): msgspec.to_builtins(value)
        for key, value in step.args.items()
        if key != "config"
    }


def summarize(nodes: list[api.NodePlan], *, objects: int) -> api.PlanSummary:
    steps = [s for n in nodes for s in n.steps]
    return api.PlanSummary(
        objects=objects,
        nodes=len(nodes),
        steps=len(steps),
        hitless=sum(s.impact == HITLESS for s in steps),
        disruptive=sum(s.impact == DISRUPTIVE for s in steps),
        disruptive_nodes=[n.node for n in nodes if any(s.impact == DISRUPTIVE for s in n.steps)],
        unknown_nodes=[n.node for n in nodes if n.state == "unknown" or n.error],
    )


# -- reading the actual state ------------------------------------------------------------


def _master_of(actual: NodeL2State, name: str) -> str:
    link = actual.links.get(name)
    return (link.master if link is not None else None) or "its master"


def _field(actual: NodeL2State, name: str, attr: str) -> str:
    link = actual.links.get(name)
    value = getattr(link, attr, None) if link is not None else None
    return str(value) if value is not None else "(unset)"


def _free_nic(actual: NodeL2State, name: str) -> bool:
    """A NIC in no master: nothing of l2net's flows through it yet."""
    link = actual.links.get(name)
    return link is not None and link.kind == "device" and link.master is None


def _bridge_of(actual: NodeL2State, name: str) -> str | None:
    """The bridge ``name`` is, or is in (a bond's bridge for a bond's NIC)."""
    seen: set[str] = set()
    while name not in seen:
        seen.add(name)
        link = actual.links.get(name)
        if link is None:
            return None
        if link.kind == "bridge":
            return name
        if link.master is None:
            return None
        name = link.master
    return None


def _host_network(actual: NodeL2State, name: str) -> str:
    fields = parse_alias(actual.links[name].alias) if name in actual.links else None
    return (fields or {}).get("hostnet") or name


def _vids(step: Step) -> set[int]:
    ranges: list[VlanRange] = step.args.get("ranges") or step.args.get("vlans") or []
    return set(expand_vlans(ranges))


def _vids_removed(step: Step, actual: NodeL2State) -> set[int]:
    """The VIDs a ``vlan.exact`` or ``vm.vlans`` step takes away, or whose flags (PVID,
    untagged) it changes."""
    if step.op == "vm.vlans":
        port = actual.vm_ports.get(step.target.removeprefix("vm/"))
        have = expand_vlans(port.vlans or []) if port is not None else {}
    else:
        have = expand_vlans(actual.vlans.get(step.target, []))
    want = expand_vlans(step.args.get("vlans") or [])
    return {vid for vid, flags in have.items() if want.get(vid) != flags}


def _vid_text(vids: set[int]) -> str:
    ordered = sorted(vids)
    runs: list[str] = []
    start = prev = ordered[0]
    for vid in [*ordered[1:], None]:
        if vid is not None and vid == prev + 1:
            prev = vid
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if vid is not None:
            start = prev = vid
    return ",".join(runs)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
