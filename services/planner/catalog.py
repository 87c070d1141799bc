"""The planner's view of the world: every accepted spec and every registered node.

A :class:`Catalog` is a value: :meth:`with_changes` returns a new one, so a submission is
validated against the state it *would* produce, and the current state is replaced only
once the submission is stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, TypeVar

from shared.domain import model

S = TypeVar("S", bound=model.Spec)
T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    spec: model.Spec
    revision: int
    created: float
    """When the object was created (kept across updates): VM NICs are numbered in this order."""


@dataclass(frozen=True)
class Catalog:
    entries: dict[tuple[str, str], Entry] = field(default_factory=dict)
    nodes: dict[str, model.Node] = field(default_factory=dict)
    _memo: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    """What is derived from this catalog, computed once (it is a value): see :meth:`memo`."""

    def memo(self, key: str, make: Callable[[], T]) -> T:
        """``make()``, computed once per catalog: an index of its objects (the compiler's
        per cluster network parts, say). A new catalog (:meth:`with_changes`) starts empty."""
        if key not in self._memo:
            self._memo[key] = make()
        value: T = self._memo[key]
        return value

    @cached_property
    def _by_kind(self) -> dict[str, list[Entry]]:
        """Each kind's entries sorted by name, computed once per catalog (it is a value)."""
        out: dict[str, list[Entry]] = {}
        for (kind, _), entry in sorted(self.entries.items()):
            out.setdefault(kind, []).append(entry)
        return out

    @cached_property
    def _specs_by_kind(self) -> dict[str, list[model.Spec]]:
        return {kind: [e.spec for e in entries] for kind, entries in self._by_kind.items()}

    @cached_property
    def _uplinks(
        self,
    ) -> dict[str, tuple[dict[str, list[model.VlanConfig]], list[model.VlanConfig]]]:
        """Per cluster network, its VlanConfigs in name order: those that select one host by
        ``kubernetes.io/hostname`` alone, by that host, and the others; so that finding a
        node's uplink does not look at every VlanConfig of every node."""
        out: dict[str, tuple[dict[str, list[model.VlanConfig]], list[model.VlanConfig]]] = {}
        for vc in self.all(model.VlanConfig):
            by_host, general = out.setdefault(vc.cluster_network, ({}, []))
            host = vc.node_selector.get(HOSTNAME_LABEL)
            if host is not None and len(vc.node_selector) == 1:
                by_host.setdefault(host, []).append(vc)
            else:
                general.append(vc)
        return out

    @cached_property
    def _first_uplink(self) -> dict[str, model.VlanConfig]:
        """The first VlanConfig (by name) of each cluster network."""
        out: dict[str, model.VlanConfig] = {}
        for vc in self.all(model.VlanConfig):
            out.setdefault(vc.cluster_network, vc)
        return out

    def first_vlan_config(self, cluster_network: str) -> model.VlanConfig | None:
        """The first VlanConfig (by name) of a cluster network: whose MTU it has."""
        return self._first_uplink.get(cluster_network)

    def entries_of(self, kind: str) -> list[Entry]:
        """The entries of one kind, sorted by name."""
        return self._by_kind.get(kind, [])

    def vlan_configs_in(
        self, cluster_network: str
    ) -> tuple[dict[str, list[model.VlanConfig]], list[model.VlanConfig]]:
        """A cluster network's VlanConfigs: those selecting one host by name alone, by that
        host, and the others (do not change them)."""
        return self._uplinks.get(cluster_network, ({}, []))

    @cached_property
    def nodes_by_host(self) -> dict[str, list[str]]:
        """The nodes by their ``kubernetes.io/hostname`` label (their name, unless a node's
        own labels say otherwise)."""
        out: dict[str, list[str]] = {}
        for name, node in self.nodes.items():
            out.setdefault(node_labels(node)[HOSTNAME_LABEL], []).append(name)
        return out

    @cached_property
    def _by_label_group(
        self,
    ) -> dict[frozenset[tuple[str, str]], dict[str, list[model.VlanConfig]]]:
        """Filled by :meth:`vlan_configs_selecting`: per set of node labels (apart from the
        host name), the VlanConfigs whose selectors do not name a host that select it."""
        return {}

    @cached_property
    def _per_host(
        self,
    ) -> dict[str, tuple[dict[str, list[model.VlanConfig]], list[model.VlanConfig]]]:
        """Per cluster network, its VlanConfigs whose selectors name a host: alone, by that
        host, and with other labels; they are looked up node by node."""
        out: dict[str, tuple[dict[str, list[model.VlanConfig]], list[model.VlanConfig]]] = {}
        for cn, (by_host, general) in self._uplinks.items():
            others = [vc for vc in general if HOSTNAME_LABEL in vc.node_selector]
            if by_host or others:
                out[cn] = (by_host, others)
        return out

    def vlan_configs_selecting(self, node: str) -> dict[str, list[model.VlanConfig]]:
        """Per cluster network that VlanConfigs name, those that select ``node``, in name
        order (cluster networks none of them selects it in are left out; do not change the
        lists). Nodes with the same labels apart from their host name share the work: a
        thousand nodes of a few kinds cost a few selector matches each, not one per
        VlanConfig."""
        labels = node_labels(self.nodes[node])
        key = frozenset(item for item in labels.items() if item[0] != HOSTNAME_LABEL)
        common = self._by_label_group.get(key)
        if common is None:
            common = {}
            for cn, (_, general) in self._uplinks.items():
                matched = [
                    vc
                    for vc in general
                    if HOSTNAME_LABEL not in vc.node_selector and selects(vc.node_selector, labels)
                ]
                if matched:
                    common[cn] = matched
            self._by_label_group[key] = common
        out = common
        host = labels[HOSTNAME_LABEL]
        for cn, (by_host, others) in self._per_host.items():
            mine = by_host.get(host, []) + [
                vc for vc in others if selects(vc.node_selector, labels)
            ]
            if mine:
                if out is common:
                    out = dict(common)
                out[cn] = sorted([*common.get(cn, []), *mine], key=lambda vc: vc.name)
        return out

    def get(self, kind: type[S], name: str) -> S | None:
        entry = self.entries.get((kind.kind, name))
        if entry is None:
            return None
        assert isinstance(entry.spec, kind)
        return entry.spec

    def all(self, kind: type[S]) -> list[S]:
        """The objects of one kind, sorted by name (computed once per catalog: do not change
        the list)."""
        out: list[S] = self._specs_by_kind.get(kind.kind, [])  # type: ignore[assignment]
        return out

    def items(self) -> Iterator[tuple[tuple[str, str], Entry]]:
        yield from sorted(self.entries.items())

    def cluster_network_exists(self, name: str) -> bool:
        return name == model.MGMT or (model.ClusterNetwork.kind, name) in self.entries

    def with_changes(
        self,
        *,
        put: list[model.Spec] | None = None,
        delete: list[tuple[str, str]] | None = None,
        revisions: dict[tuple[str, str], int] | None = None,
        created: dict[tuple[str, str], float] | None = None,
        now: float = 0.0,
    ) -> Catalog:
        """A new catalog with ``put`` objects added or replaced and ``delete`` keys removed.

        ``revisions`` gives each stored object's stream sequence; ``created`` its creation
        time when known (from the store), else an existing object keeps its own and a new
        one gets ``now``.
        """
        entries = dict(self.entries)
        for spec in put or []:
            key = (spec.kind, spec.name)
            old = entries.get(key)
            born = (created or {}).get(key, old.created if old is not None else now)
            entries[key] = Entry(spec=spec, revision=(revisions or {}).get(key, 0), created=born)
        for key in delete or []:
            entries.pop(key, None)
        return replace(self, entries=entries)

    def with_node(self, node: model.Node) -> Catalog:
        nodes = dict(self.nodes)
        nodes[node.name] = node
        return replace(self, nodes=nodes)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """A node selector matches when every key/value is among the labels; empty matches all."""
    return all(labels.get(k) == v for k, v in selector.items())


HOSTNAME_LABEL = "kubernetes.io/hostname"


def node_labels(node: model.Node) -> dict[str, str]:
    """A node's labels, with ``kubernetes.io/hostname`` set to its name as on Kubernetes."""
    return {HOSTNAME_LABEL: node.name, **node.labels}


def node_uplinks(catalog: Catalog, node: str) -> dict[str, model.VlanConfig]:
    """The cluster networks (other than mgmt) present on a node, in name order, each with
    the VlanConfig that selects the node."""
    out: dict[str, model.VlanConfig] = {}
    if node not in catalog.nodes:
        return out
    selecting = catalog.vlan_configs_selecting(node)
    for cn in catalog.all(model.ClusterNetwork):
        matched = selecting.get(cn.name)
        if matched:
            out[cn.name] = matched[0]
    return out


def cluster_network_members(catalog: Catalog, cluster_network: str) -> set[str]:
    """The nodes a cluster network is present on (every node for mgmt); a superset when a
    VlanConfig names a cluster network that does not exist (validation refuses it)."""
    if cluster_network == model.MGMT:
        return set(catalog.nodes)
    by_host, general = catalog.vlan_configs_in(cluster_network)
    out = {name for host in by_host for name in catalog.nodes_by_host.get(host, [])}
    for vc in general:
        out.update(
            name
            for name, node in catalog.nodes.items()
            if name not in out and selects(vc.node_selector, node_labels(node))
        )
    return out
