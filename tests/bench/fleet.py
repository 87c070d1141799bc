"""A synthetic fleet for the planner's benchmarks and tests: deterministic, any size.

``fleet(nodes=1000, cluster_networks=10, networks=200)`` gives the registered nodes and the
specs of a fleet like issue 11's: node ``node-0001`` has the management NIC ``eth0`` (in
``mgmt-bo``) and one NIC per cluster network (``eth1`` ... ``eth<C>``); cluster network
``cn01`` has one VlanConfig bonding ``eth1``; networks ``net0001`` ... are VLAN networks with
VIDs from 100 up, dealt round-robin over the cluster networks; VM NICs (``vm_nics``) are
dealt over the nodes and the networks, one VM per NIC.

``racks``: 0 puts every node in every cluster network (a change to one network then touches
every node); ``racks=R`` labels node i with rack ``i % R`` and makes cluster network j's
VlanConfig select rack ``j % R``, so that a change to one cluster network touches
``nodes / R`` nodes.

Also a command: ``python -m tests.bench.fleet --nodes 1000 --networks 200`` prints the
specs as a multi-document YAML submission (the nodes are what executors register).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import msgspec
import yaml

from shared.domain import model

RACK_LABEL = "l2net.bench/rack"
FIRST_VID = 100


@dataclass(frozen=True)
class Fleet:
    nodes: list[model.Node]
    specs: list[model.Spec]

    def manifest(self) -> str:
        """The specs as one multi-document YAML submission."""
        return specs_yaml(self.specs)


def node_name(i: int) -> str:
    return f"node-{i:04d}"


def cluster_network_name(j: int) -> str:
    return f"cn{j:02d}"


def network_name(k: int) -> str:
    return f"net{k:04d}"


def fleet(
    *,
    nodes: int,
    cluster_networks: int,
    networks: int,
    vm_nics: int = 0,
    racks: int = 0,
) -> Fleet:
    """The fleet described in the module's docstring (the same arguments, the same fleet)."""
    node_list = [_node(i, cluster_networks, racks) for i in range(1, nodes + 1)]
    specs: list[model.Spec] = []
    for j in range(1, cluster_networks + 1):
        specs.append(model.ClusterNetwork(name=cluster_network_name(j)))
        selector = {RACK_LABEL: str(j % racks)} if racks else {}
        specs.append(
            model.VlanConfig(
                name=f"{cluster_network_name(j)}-uplink",
                cluster_network=cluster_network_name(j),
                node_selector=selector,
                uplink=model.Uplink(nics=[f"eth{j}"]),
            )
        )
    specs += [network(k, cluster_networks) for k in range(1, networks + 1)]
    specs += vm_nic_specs(vm_nics, node_list, cluster_networks, networks, racks)
    return Fleet(nodes=node_list, specs=specs)


def network(k: int, cluster_networks: int, *, vid: int | None = None) -> model.Network:
    """Network ``k`` of the fleet; ``vid`` to give it another VID (a one-VID change)."""
    return model.Network(
        name=network_name(k),
        cluster_network=cluster_network_name((k - 1) % cluster_networks + 1),
        type="L2VlanNetwork",
        vlan=FIRST_VID + k - 1 if vid is None else vid,
    )


def vm_nic_specs(
    count: int, nodes: list[model.Node], cluster_networks: int, networks: int, racks: int = 0
) -> list[model.Spec]:
    """``count`` VM NICs, one VM each, on networks their node is in (round-robin)."""
    out: list[model.Spec] = []
    for i in range(count):
        node = nodes[i % len(nodes)]
        k = i % networks + 1
        if racks:  # a network whose cluster network's rack is the node's
            rack = int(node.labels[RACK_LABEL])
            js = [j for j in range(1, cluster_networks + 1) if j % racks == rack]
            if not js:
                continue
            k = ((i // len(nodes)) * cluster_networks + js[i % len(js)] - 1) % networks + 1
        out.append(
            model.VmNic(
                name=f"vm{i:05d}-nic0", vm=f"vm{i:05d}", node=node.name, network=network_name(k)
            )
        )
    return out


def _node(i: int, cluster_networks: int, racks: int) -> model.Node:
    labels = {"topology.kubernetes.io/zone": "bench"}
    if racks:
        labels[RACK_LABEL] = str(i % racks)
    nics = [model.Nic(name="eth0", mac="", state="up", master="mgmt-bo")]
    nics += [model.Nic(name=f"eth{j}", mac="", state="up") for j in range(1, cluster_networks + 1)]
    return model.Node(name=node_name(i), labels=labels, nics=nics)


def specs_yaml(specs: list[model.Spec]) -> str:
    """Specs as a multi-document YAML submission, unset fields left out (as a person writes)."""
    docs = [{"kind": s.kind, **_set(msgspec.to_builtins(s))} for s in specs]
    return yaml.safe_dump_all(docs, sort_keys=False)


def _set(value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict):
            item = _set(item)
        if item not in (None, "", [], {}):
            out[key] = item
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--cluster-networks", type=int, default=10)
    parser.add_argument("--networks", type=int, default=200)
    parser.add_argument("--vm-nics", type=int, default=0)
    parser.add_argument("--racks", type=int, default=0)
    args = parser.parse_args()
    print(
        fleet(
            nodes=args.nodes,
            cluster_networks=args.cluster_networks,
            networks=args.networks,
            vm_nics=args.vm_nics,
            racks=args.racks,
        ).manifest(),
        end="",
    )


if __name__ == "__main__":
    main()
