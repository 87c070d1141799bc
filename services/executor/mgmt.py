"""The node's management path as the executor sees it, and the confirm after each apply.

Two things live here, both about the one path a node must never lose: the way to NATS.

* :func:`read_mgmt_path` reads it from the kernel (the interface holding the management
  address, its addresses, the routes through it and their gateways, its MTU, the NICs of
  ``mgmt-bo``) plus the address of the NATS server the executor is connected to. The
  executor refuses what would cut it (:func:`shared.domain.l2state.desired_state`) and reports it
  in its inventory (``Node.mgmt``) so that the planner refuses the same first.
* :class:`Confirmer` is the confirm-or-revert of an apply, like ``netplan try`` and
  kubernetes-nmstate's probes: after the kernel verified, the executor proves it still
  reaches NATS (a PING/PONG round trip to the server, and every configured TCP probe) within
  a bounded time. When it does not, :func:`services.executor.reconciling.converge` rolls the
  node back to the snapshot taken before the apply, and the executor waits for the path to
  come back before it reports ``RolledBack``. A node that had no path to NATS before the
  apply (a start without NATS) has nothing to lose: no confirm then.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shared.domain.l2state import MGMT_BOND, MGMT_BRIDGE, mgmt_vlan_interface
from shared.domain.model import MgmtPath

if TYPE_CHECKING:  # not at run time: `l2net` reads DEFAULT_CONFIRM_S to build its parser
    from nats.aio.client import Client

    from services.executor.kernel import Kernel

log = logging.getLogger("l2net.executor")

DEFAULT_CONFIRM_S = 15.0
"""How long, after an apply, the node has to prove it still reaches NATS (and its probes)."""

_PING_WAIT_S = 3600.0
"""How long one PING waits for its PONG. Never cut short: nats-py pairs PONGs with the
waiting PINGs in order, and one whose wait was cancelled (``flush(timeout)`` expiring) makes
its read loop fail on the late PONG and drop the connection. The confirm waits for a PING
for a bounded time *beside* it (``asyncio.shield``) and lets it finish whenever the PONG
comes (a reconnect forgets it)."""


async def nats_addresses(nc: Client | None) -> list[str]:
    """The IP addresses of the NATS servers ``nc`` is or may be connected to: the connected
    one and the rest of its pool (configured and discovered), names resolved."""
    if nc is None:
        return []
    hosts = {url.hostname for url in [nc.connected_url, *nc.servers] if url and url.hostname}
    out: set[str] = set()
    for host in sorted(hosts):
        try:
            out.add(str(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        try:
            loop = asyncio.get_running_loop()
            infos = await asyncio.wait_for(loop.getaddrinfo(host, None), 2.0)
        except (OSError, TimeoutError, UnicodeError):
            continue  # an unresolvable name cannot be routed to either
        out.update(str(info[4][0]) for info in infos)
    return sorted(out)


async def read_mgmt_path(kernel: Kernel, *, nats: list[str]) -> MgmtPath | None:
    """The management path of the node ``kernel`` drives (None: it has no ``mgmt-br``)."""
    state = await kernel.read()
    if MGMT_BRIDGE not in state.links:
        return None
    interface = mgmt_vlan_interface(state.mgmt_vlan) or MGMT_BRIDGE
    link = state.links.get(interface) or state.links[MGMT_BRIDGE]
    ports = (MGMT_BOND,) if MGMT_BOND in state.links else (MGMT_BRIDGE,)
    nics = sorted(
        name for name, lk in state.links.items() if lk.master in ports and lk.kind == "device"
    )
    routes: list[str] = []
    gateways: list[str] = []
    read_routes = getattr(kernel, "routes", None)
    if read_routes is not None:
        for dst, gateway, oif in await read_routes():
            # Through a gateway only: the connected subnets are the addresses themselves.
            if oif in (interface, MGMT_BRIDGE) and gateway:
                routes.append(dst)
                gateways.append(gateway)
    return MgmtPath(
        interface=link.name,
        addresses=sorted(link.addresses or []),
        routes=sorted(set(routes)),
        gateways=sorted(set(gateways)),
        nats_addresses=nats,
        mtu=link.mtu or 0,
        nics=nics,
    )


async def node_mgmt_path(kernel: Kernel, nc: Client | None) -> MgmtPath | None:
    """:func:`read_mgmt_path` with the connected NATS server; None (logged) when unreadable."""
    try:
        return await read_mgmt_path(kernel, nats=await nats_addresses(nc))
    except Exception as exc:  # the inventory and the refusals go on without it
        log.warning("reading the management path: %s", exc)
        return None


def parse_probe(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``) of a TCP probe; ValueError saying what is wrong."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"probe {text!r}: expected HOST:PORT (a TCP port 1-65535)")
    return host, int(port)


@dataclass
class Confirmer:
    """The confirm of one apply: ``await confirmer()`` is None when the node still reaches
    NATS (and every probe) within ``timeout_s``, else why not (see the module docstring)."""

    nc: Client | None
    generation: int
    timeout_s: float = DEFAULT_CONFIRM_S
    probes: list[str] = field(default_factory=list)
    lost: bool = False
    """Set when a confirm failed: the executor waits for the path before reporting."""
    _ping: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _ping_sent: float = field(default=0.0, init=False, repr=False)

    def enabled(self) -> bool:
        """A confirm is due: configured, and NATS was reachable before the apply."""
        return self.timeout_s > 0 and self.nc is not None and self.nc.is_connected

    async def __call__(self) -> str | None:
        deadline = time.monotonic() + self.timeout_s
        why = await self._round_trip(deadline)
        for probe in self.probes if why is None else []:
            why = await self._probe(probe, deadline)
            if why is not None:
                break
        if why is None:
            return None
        self.lost = True
        return f"lost the path to NATS after applying generation {self.generation} ({why})"

    async def _pong(self, wait_s: float, *, fresh_after_s: float | None = None) -> None:
        """A PING/PONG round trip, waited for at most ``wait_s`` (TimeoutError after it).

        One PING is in flight at a time; a new one is sent when none is, or when the last has
        waited ``fresh_after_s`` (it may have been forgotten by a reconnect)."""
        assert self.nc is not None
        ping = self._ping
        now = time.monotonic()
        stale = fresh_after_s is not None and now - self._ping_sent > fresh_after_s
        if ping is None or ping.done() or stale:  # none in flight (or maybe forgotten)
            ping = asyncio.ensure_future(self.nc.flush(timeout=_PING_WAIT_S))  # type: ignore[arg-type]
            self._ping, self._ping_sent = ping, now
        await asyncio.wait_for(asyncio.shield(ping), wait_s)

    async def _round_trip(self, deadline: float) -> str | None:
        last = ""
        while (left := deadline - time.monotonic()) > 0:
            try:
                await self._pong(left)
                return None
            except TimeoutError:
                last = "no PONG"
            except Exception as exc:  # the connection is being re-established: try again
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                await asyncio.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
        return f"no round trip to the NATS server within {self.timeout_s:g}s: {last}"

    async def _probe(self, probe: str, deadline: float) -> str | None:
        host, port = parse_probe(probe)
        last = ""
        while (left := deadline - time.monotonic()) > 0:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), left)
            except (OSError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                await asyncio.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
                continue
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            return None
        return f"probe {probe} did not connect within {self.timeout_s:g}s: {last}"

    async def wait_back(self, *, limit_s: float = 300.0) -> bool:
        """After a rollback: wait (bounded) until NATS answers again; True when it does."""
        if self.nc is None:
            return False
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                await self._pong(5.0, fresh_after_s=10.0)
                return True
            await asyncio.sleep(0.5)
        return False
