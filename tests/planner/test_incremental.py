"""The incremental compiler gives what a full compile gives, and compiles only what a change
may affect.

Random sequences of changes (seeded, so a failure replays): cluster networks, VlanConfigs
(selecting every node, a label or one host), networks (VLAN, untagged, trunk, on mgmt or
another cluster network, moving between them), host networks, VM NICs and nodes (joining,
relabelled, leaving). The catalogs need not be valid (a relabelled node may leave a VM NIC
behind): the compiler must agree with :func:`compiling.compile_all` on any of them. Then the
planner itself, on real NATS: after random submissions, every node's last published intent
is a full compile of the planner's catalog.
"""

from __future__ import annotations

import random

import pytest
from nats.aio.client import Client

from services.planner import compiling
from services.planner.catalog import Catalog, node_labels, selects
from services.planner.service import Planner
from shared.domain import model
from tests.bench import fleet
from tests.kit import until
from tests.planner.conftest import make_node, register
from tests.planner.test_service import apply, last_intent

NODES = [f"n{i}" for i in range(1, 9)]
CNS = ["a", "b", "c"]
ZONES = ["z1", "z2"]


def _selector(rng: random.Random) -> dict[str, str]:
    host = {"kubernetes.io/hostname": rng.choice(NODES)}
    zone = {"zone": rng.choice(ZONES)}
    return rng.choice([{}, zone, host, {**host, **zone}])


def _network(rng: random.Random, name: str) -> model.Network:
    cn = rng.choice([*CNS, model.MGMT])
    kind = rng.choice(["vlan", "vlan", "untagged", "trunk"])
    if kind == "untagged":
        return model.Network(name=name, cluster_network=cn, type="UntaggedNetwork")
    if kind == "trunk":
        lo = rng.randint(2, 60)
        trunk = [model.TrunkRange(min_id=lo, max_id=lo + rng.randint(0, 5))]
        return model.Network(name=name, cluster_network=cn, type="L2VlanTrunkNetwork", trunk=trunk)
    return model.Network(name=name, cluster_network=cn, vlan=rng.randint(2, 60))


def _spec(rng: random.Random) -> model.Spec:
    kind = rng.choice(["cn", "vc", "net", "net", "host", "nic", "nic"])
    if kind == "cn":
        return model.ClusterNetwork(name=rng.choice(CNS), description=str(rng.random()))
    if kind == "vc":
        cn = rng.choice(CNS)
        return model.VlanConfig(
            name=f"{cn}-{rng.randint(1, 2)}",
            cluster_network=cn,
            node_selector=_selector(rng),
            uplink=model.Uplink(
                nics=[f"eth{rng.randint(1, 3)}"],
                link_attributes=model.LinkAttributes(mtu=rng.choice([None, 1500, 9000])),
            ),
        )
    if kind == "net":
        return _network(rng, f"net{rng.randint(1, 6)}")
    if kind == "host":
        node = rng.choice(NODES)
        return model.HostNetwork(
            name=f"host{rng.randint(1, 3)}",
            cluster_network=rng.choice([*CNS, model.MGMT]),
            vlan=rng.randint(2, 60),
            node_selector=_selector(rng),
            ips={node: f"10.{rng.randint(0, 9)}.0.1/24"},
        )
    return model.VmNic(
        name=f"nic{rng.randint(1, 10)}",
        vm=f"vm{rng.randint(1, 4)}",
        node=rng.choice(NODES),
        network=f"net{rng.randint(1, 6)}",
    )


def _step(rng: random.Random, catalog: Catalog, now: float) -> Catalog:
    """One random change: an object put or deleted, or a node joining, changing or leaving."""
    roll = rng.random()
    if roll < 0.15:
        name = rng.choice(NODES)
        if name in catalog.nodes and rng.random() < 0.3:
            return Catalog(entries=catalog.entries, nodes=_without(catalog.nodes, name))
        labels = {"zone": rng.choice(ZONES)} if rng.random() < 0.8 else {}
        if rng.random() < 0.1:  # a node whose own labels give it another host name
            labels["kubernetes.io/hostname"] = rng.choice(NODES)
        return catalog.with_node(make_node(name, labels=labels, nics=3))
    if roll < 0.3 and catalog.entries:
        key = rng.choice(sorted(catalog.entries))
        return catalog.with_changes(delete=[key])
    specs = [_spec(rng) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
    return catalog.with_changes(put=specs, now=now)


def _selecting(catalog: Catalog, node: str) -> dict[str, list[model.VlanConfig]]:
    labels = node_labels(catalog.nodes[node])
    out: dict[str, list[model.VlanConfig]] = {}
    for vc in catalog.all(model.VlanConfig):  # in name order
        if selects(vc.node_selector, labels):
            out.setdefault(vc.cluster_network, []).append(vc)
    return out


def _without(nodes: dict[str, model.Node], name: str) -> dict[str, model.Node]:
    return {n: node for n, node in nodes.items() if n != name}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_incremental_compile_equals_a_full_compile(seed: int) -> None:
    rng = random.Random(seed)
    catalog = Catalog()
    for name in NODES[:5]:
        catalog = catalog.with_node(make_node(name, labels={"zone": rng.choice(ZONES)}, nics=3))
    compiler = compiling.IncrementalCompiler()
    partial = 0
    for step in range(300):
        catalog = _step(rng, catalog, now=float(step))
        got = compiler.compile(catalog)
        assert got == compiling.compile_all(catalog), f"seed {seed}, step {step}"
        partial += compiler.recompiled < len(catalog.nodes)
        for node in catalog.nodes:  # the index of who selects whom, against its definition
            assert catalog.vlan_configs_selecting(node) == _selecting(catalog, node)
    assert partial > 100, "most changes recompile part of the nodes"


def test_a_change_compiles_the_nodes_it_touches() -> None:
    """A rack fleet: one network's VID changes on its cluster network's nodes only; one VM
    NIC on its node only; nothing changed, nothing compiled."""
    f = fleet.fleet(nodes=60, cluster_networks=6, networks=30, vm_nics=60, racks=3)
    catalog = Catalog(nodes={n.name: n for n in f.nodes}).with_changes(put=f.specs)
    compiler = compiling.IncrementalCompiler()
    compiler.compile(catalog)
    assert compiler.recompiled == 60
    compiler.compile(catalog)
    assert compiler.recompiled == 0
    vid = catalog.with_changes(put=[fleet.network(1, 6, vid=3000)])
    assert compiler.compile(vid) == compiling.compile_all(vid)
    assert compiler.recompiled == 20  # cn01's rack
    nic = model.VmNic(name="extra", vm="extra", node="node-0007", network="net0001")
    with_nic = vid.with_changes(put=[nic])
    assert compiler.compile(with_nic) == compiling.compile_all(with_nic)
    assert compiler.recompiled == 1


async def test_published_intents_equal_a_full_compile(nc: Client, planner: Planner) -> None:
    """Random submissions through the planner (some refused): every node's last intent is
    then the full compile of what the planner holds."""
    f = fleet.fleet(nodes=6, cluster_networks=3, networks=8, vm_nics=6, racks=2)
    for node in f.nodes:
        await register(nc, node)
    await until(lambda: len(planner.catalog.nodes) == 6)
    assert (await apply(nc, f.manifest())).ok
    rng = random.Random(11)
    accepted = 0
    for _ in range(25):
        k = rng.randint(1, 8)
        changes: list[model.Spec] = [fleet.network(k, 3, vid=rng.randint(100, 140))]
        if rng.random() < 0.4:
            node = rng.choice(f.nodes).name
            changes.append(
                model.VmNic(
                    name=f"r{rng.randint(1, 5)}",
                    vm=f"r{rng.randint(1, 5)}",
                    node=node,
                    network=fleet.network_name(rng.randint(1, 8)),
                )
            )
        accepted += (await apply(nc, fleet.specs_yaml(changes))).ok
    assert accepted >= 5
    catalog = planner.catalog
    for node, intent in compiling.compile_all(catalog).items():
        assert compiling.same_desired_state(await last_intent(nc, node), intent), node
