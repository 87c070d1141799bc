"""The heal policy, and the heals it schedules.

Policy (pure). A finding is healed only when it is about a kernel's state (not
``node/<node> ...``: a node that stopped reporting or runs another generation is not healed
by re-converging it) and belongs to a cluster network under the heal policy (``*``: every
one); :func:`cluster_network_of` says which, from the intent the node runs. The default
policy heals nothing: the auditor then never changes anything.

Scheduling. After every change (and every tick) :meth:`Healer.schedule` starts one heal per
node that has findings in scope never healed before, skipping a node that is silent (its
state is unverified), that never registered, or whose last heal is still under way: one heal
at a time per node, at most one heal per episode. A heal checks the node live first and
heals only what the kernel still shows, asks the node's executor to re-converge
(``l2.executor.<node>.reconcile``), has the heal counted and recorded in ``L2_DRIFT``, then
checks live again, which resolves the findings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Iterable
from typing import Protocol

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from services.auditor.view import NODE_PREFIX, FleetView, NodeView, episode_id, is_kernel_key
from shared.domain.model import DriftItem, NodeIntent, NodeStatus
from shared.runtime import bus
from shared.wire import subjects

log = logging.getLogger("l2net.auditor")

HEAL_ALL = "*"


def cluster_network_of(item: DriftItem, intent: NodeIntent | None) -> str | None:
    """The cluster network a finding belongs to (decides the heal policy); None if unknown."""
    obj = item.object
    if obj.startswith(NODE_PREFIX):
        return None
    if intent is not None:
        found = _vm_port_network(obj, intent)
        if found is None:
            found = _link_network(obj, intent)
        if found is not None:
            return found
    # Not in the intent (an extra link): l2net's names start with "<cn>-".
    head = obj.split("/")[-1].split("-", 1)[0]
    return head or None


def _vm_port_network(obj: str, intent: NodeIntent) -> str | None:
    """The cluster network of a VM NIC (``vm/<vm>/<if>``) or a VM's namespace (``netns/<vm>``)."""
    if obj.startswith("vm/"):
        parts = obj.split("/")
        if len(parts) >= 3:
            for vp in intent.vm_ports:
                if (vp.vm, vp.ifname) == (parts[1], parts[2]):
                    return vp.cluster_network
    elif obj.startswith("netns/"):
        vm = obj.split("/", 1)[1]
        for vp in intent.vm_ports:
            if vp.vm == vm:
                return vp.cluster_network
    return None


def _link_network(obj: str, intent: NodeIntent) -> str | None:
    """The cluster network of a link the intent names: bridge, bond, uplink or host VLAN."""
    for cn in intent.cluster_networks:
        ports = cn.bond.ports if cn.bond is not None else []
        if obj in (cn.bridge, cn.bond_name) or obj in ports:
            return cn.name
    for hv in intent.host_vlans:
        if obj == hv.name:
            return hv.cluster_network
    return None


def in_heal_scope(v: NodeView, item: DriftItem, *, heal: Collection[str]) -> bool:
    """True when ``item`` (a finding of ``v``) is healed under the policy ``heal`` (cluster
    networks, or ``*``): a kernel finding of a cluster network the policy names."""
    if not heal:
        return False
    if not is_kernel_key((item.object, item.path)):
        return False
    cn = cluster_network_of(item, v.intents.get(v.observed.generation if v.observed else 0))
    return HEAL_ALL in heal or (cn is not None and cn in heal)


class LiveCheck(Protocol):
    """Ask a node's executor for its state now and judge it; False if it did not answer."""

    async def __call__(self, node: str) -> bool: ...


class HealRecord(Protocol):
    """Count a heal (``note``, made at ``at``) and record it in ``L2_DRIFT``."""

    async def __call__(self, node: str, note: str, at: float) -> None: ...


class Healer:
    """Heals under the policy ``heal`` (cluster networks, ``*``; empty: report only)."""

    def __init__(
        self,
        nc: Client,
        view: FleetView,
        *,
        heal: Collection[str],
        reconcile_timeout_s: float,
        check_live: LiveCheck,
        record: HealRecord,
    ) -> None:
        self._nc = nc
        self._view = view
        self._heal = heal
        self._reconcile_timeout_s = reconcile_timeout_s
        self._check_live = check_live
        self._record = record
        self._healed: set[str] = set()
        """Episodes (:func:`episode_id`) a heal was started for: never healed twice."""
        self._healing: dict[str, asyncio.Task[None]] = {}

    def schedule(self) -> list[asyncio.Task[None]]:
        """Start a heal on every node with findings in scope not healed yet (one per node);
        returns the heals started."""
        started: list[asyncio.Task[None]] = []
        if not self._heal:
            return started
        for name, v in self._view.nodes.items():
            if name in self._healing or v.silent or not v.registered:
                continue
            due = [
                i
                for i in v.open_items()
                if in_heal_scope(v, i, heal=self._heal) and episode_id(name, i) not in self._healed
            ]
            if due:
                self._healing[name] = asyncio.create_task(self._heal_node(name, due))
                started.append(self._healing[name])
        return started

    def tasks(self) -> list[asyncio.Task[None]]:
        """The heals under way (to cancel at stop)."""
        return list(self._healing.values())

    def forget(self) -> None:
        """Forget the heals under way (cancelled and awaited by the caller)."""
        self._healing.clear()

    async def _heal_node(self, node: str, items: Iterable[DriftItem]) -> None:
        try:
            for item in items:
                self._healed.add(episode_id(node, item))
            # Certainty first: heal only what the kernel still shows.
            if not await self._check_live(node):
                return
            v = self._view.node(node)
            due = [i for i in v.open_items() if in_heal_scope(v, i, heal=self._heal)]
            if due:
                await self.heal(node, due)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("heal of %s: %s", node, exc)
        finally:
            self._healing.pop(node, None)

    async def heal(self, node: str, items: list[DriftItem]) -> str:
        """Ask ``node``'s executor to re-converge because of ``items``; count and record it.

        Returns the note recorded in ``L2_DRIFT`` (what was healed, and the executor's answer).
        """
        what = ", ".join(f"{i.object}.{i.path}" if i.path else i.object for i in items)
        try:
            reply = await self._nc.request(
                subjects.executor_control(node, "reconcile"),
                b"",
                timeout=self._reconcile_timeout_s,
            )
            status = bus.decode(reply.data, NodeStatus)
            outcome = f"{status.phase} generation {status.observed_generation}"
            if status.error:
                outcome += f": {status.error}"
        except (NoRespondersError, NatsTimeout, msgspec.DecodeError) as exc:
            outcome = f"no answer ({type(exc).__name__})"
        at = time.time()
        note = f"heal: asked {node} to re-converge ({what}): {outcome}"
        await self._record(node, note, at)
        await self._check_live(node)
        return note
