"""The kernel behind one small interface: read the L2 state, apply one step, watch events.

:class:`Kernel` is what the executor calls; :class:`NetlinkKernel` implements it with
pyroute2's asyncio API (``AsyncIPRoute(ext_ack=True)``, so a refused request carries the
kernel's own words), the bridge CNI plugin for VM NICs and :func:`create_netns` (``ip netns
add`` without a process) for VM namespaces. It works in the process's own network namespace
(a real host, a lab node) or in a named one (tests), never anywhere else.

Every change to the kernel goes through :meth:`NetlinkKernel._write`, which counts it
(``writes``) and retries what is transient (EBUSY, EAGAIN, ENOBUFS) with tenacity. A whole
read is three dumps: links, addresses and bridge VLANs (compressed: a trunk 2-4094 is one
range, not 4093 entries). A step reads only what it needs: making a port's VIDs exact is
one ``RTM_GETLINK`` of the port and the VLAN dump.

Kernel surprises handled here: a link's alias and a bridge's MTU given in the creating
request are ignored, so they are set right after; ``vlan_filter`` with a range sends
``RANGE_BEGIN``/``RANGE_END`` in one request but drops other flags, so flagged VIDs go one
by one; a bridge's own VIDs need the ``self`` flag.

Crashes at any instant. The executor may die (``kill -9``, power) between any two kernel
writes; whatever it leaves must read as something the planner fixes, never as an error
that repeats forever:

* a link is created in its link group :data:`UNFINISHED_GROUP` (the creating request does
  keep the group), and the request that names it l2net's (alias) puts it back in group 0: a
  link of that group without an alias reads as :data:`~shared.domain.l2state.UNFINISHED_ALIAS`,
  owned, so it is completed (desired) or deleted (not);
* a VM namespace is recorded in ``/run/l2net/netns/<vm>`` (holding the node's name) before
  it is made, and the record removed last when it is deleted: a namespace file that is not
  a mounted namespace is never reported as a namespace, one l2net recorded and no VM wants
  is deleted (a half-plugged NIC inside goes with it), and making a namespace replaces an
  unmounted file of that name;
* a CNI ADD that died before the host veth got its alias left the VM's ``eth0`` in the
  namespace: the next ADD runs the plugin's DEL first (which removes both ends);
* a NIC's admin state is recorded in its alias in the request that first changes it (see
  :func:`shared.domain.l2state.port_record`).

Tests stop the process inside a step: ``L2NET_TEST_CRASH_AT=<step index>:<point>`` (read by
:class:`NetlinkKernel` at its creation; the index counts the steps this process applied,
from 0) makes the process SIGKILL itself there: ``before`` or ``after`` a step, or at a named
point inside one (:data:`CRASH_POINTS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import ipaddress
import os
import re
import signal
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from services.executor import cni
from services.executor.planning import Step
from shared.domain.errors import ErrorKind, Refused
from shared.domain.l2state import (
    MGMT_BRIDGE,
    UNFINISHED_ALIAS,
    LinkState,
    NodeL2State,
    build_actual,
    compress_vlans,
    expand_vlans,
    owner_alias,
    parse_alias,
    port_key,
    vlan_changes,
)
from shared.domain.model import Nic, VlanRange
from shared.domain.vocabulary import (
    BOND_ENUMS,
    BOND_INT_OPTIONS,
    BOND_MODE_NAMES,
    BOND_MODE_NUMBERS,
    BondMode,
    bridge_cni_config,
)

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
_TRANSIENT = {errno.EBUSY, errno.EAGAIN, errno.ENOBUFS}
_VLAN_PVID = 0x2
_VLAN_UNTAGGED = 0x4
_VLAN_RANGE_BEGIN = 0x8
_VLAN_RANGE_END = 0x10
AF_BRIDGE = socket.AF_BRIDGE
RTEXT_FILTER_BRVLAN_COMPRESSED = 1 << 2
"""``IFLA_EXT_MASK`` bit (include/uapi/linux/rtnetlink.h): bridge VLANs as ranges."""
UNFINISHED_GROUP = 0x6C32
"""The link group of a link l2net created and has not yet named its own (see module)."""
OWNED_NETNS_DIR = "/run/l2net/netns"
"""Records of the VM namespaces l2net made: one file per namespace, holding the node name."""
CRASH_ENV = "L2NET_TEST_CRASH_AT"
CRASH_POINTS: dict[str, tuple[str, ...]] = {
    "link.create": ("created",),
    "vlan.add": ("vlan-request",),
    "vlan.del": ("vlan-request",),
    "vlan.exact": ("vlan-request",),
    "vm.vlans": ("vlan-request",),
    "netns.add": ("netns-recorded", "netns-file"),
    "netns.del": ("netns-unmounted",),
    "cni.add": ("cni-plugged",),
}
"""The points inside a step where a test may stop the process (besides ``before``): after a
link is created and before it is named; after the first of several VLAN requests; after the
namespace's record, then after its empty file; after the namespace is unmounted and before
its file is removed; after the CNI plugin's ADD and before the host veth is named."""


class KernelError(Refused, RuntimeError):
    """A step the kernel refused. ``str()`` names the step and quotes the kernel."""

    def __init__(self, step: Step, text: str, *, code: int | None = None) -> None:
        super().__init__(f"{step.describe()}: {text}")
        self.step = step
        self.text = text
        self.code = code
        if code in (errno.EBUSY, errno.EAGAIN):
            self.kind = ErrorKind.BUSY  # the same step may pass in a moment


class Kernel(Protocol):
    """What the executor needs from a kernel."""

    @property
    def writes(self) -> int:
        """Changes made so far (netlink writes, CNI calls, namespace creations/removals)."""
        ...

    async def read(self) -> NodeL2State:
        """The node's whole L2 state, by dumps."""
        ...

    async def apply(self, step: Step) -> None:
        """Make one change; raise :class:`KernelError` with the kernel's words on refusal."""
        ...

    def events(self) -> AsyncIterator[str]:
        """Names of links (or ``*``) the kernel reports a change of, as they happen."""
        ...

    async def nics(self) -> list[Nic]:
        """The node's NIC inventory (name, MAC, state, master)."""
        ...

    async def close(self) -> None: ...


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, NetlinkError) and exc.code in _TRANSIENT


def _netlink_text(exc: NetlinkError) -> str:
    """The kernel's message (extended ack when it sent one) and the errno name."""
    text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    name = errno.errorcode.get(exc.code, str(exc.code))
    return f"{text} ({name})"


class NetlinkKernel:
    """:class:`Kernel` on a real Linux kernel through pyroute2.

    ``netns``: work in that named network namespace instead of the process's own.
    ``mgmt_vlan``: the node's mgmt VLAN; found from ``mgmt-br.<vid>`` when not given.
    ``cni_path``: where CNI plugins are (default ``$CNI_PATH``, else ``/usr/lib/cni``).
    """

    def __init__(
        self,
        node: str,
        *,
        netns: str | None = None,
        mgmt_vlan: int | None = None,
        cni_path: str | None = None,
    ) -> None:
        self.node = node
        self.netns = netns
        self.mgmt_vlan = mgmt_vlan
        self.cni_path = cni_path or os.environ.get("CNI_PATH") or cni.DEFAULT_CNI_PATH
        self._writes = 0
        self._ipr: AsyncIPRoute | None = None
        self._events: AsyncIPRoute | None = None
        self._vm_hosts: dict[str, str] = {}
        """VM NIC key to the host veth the CNI plugin made for it (a hint, checked by alias)."""
        self._socket = asyncio.Lock()
        """One read or step at a time on ``_ipr``: the kernel refuses a second dump on a
        netlink socket while one runs (EBUSY), e.g. a heartbeat's NIC read during a state
        request."""
        self._steps = 0
        """Steps applied by this process so far (the index of the next one)."""
        self._crash_at = _crash_plan(os.environ.get(CRASH_ENV))

    @property
    def writes(self) -> int:
        return self._writes

    async def _ip(self) -> AsyncIPRoute:
        if self._ipr is None:
            self._ipr = AsyncIPRoute(netns=self.netns, ext_ack=True)
            if self.mgmt_vlan is None:
                self.mgmt_vlan = await self._find_mgmt_vlan()
        return self._ipr

    async def close(self) -> None:
        for sock in (self._ipr, self._events):
            if sock is not None:
                sock.close()
        self._ipr = self._events = None

    # -- reading ------------------------------------------------------------------------

    async def _raw_links(self) -> list[Any]:
        ipr = await self._ip()
        return [msg async for msg in await ipr.link("dump")]

    async def _find_mgmt_vlan(self) -> int | None:
        assert self._ipr is not None
        links = [msg async for msg in await self._ipr.link("dump")]
        names = {msg["index"]: msg.get("ifname") for msg in links}
        for msg in links:
            if msg.get(("linkinfo", "kind")) == "vlan" and names.get(msg.get("link")) == (
                MGMT_BRIDGE
            ):
                data = _attrs(msg.get("linkinfo"))
                vid = data.get("IFLA_VLAN_ID")
                if isinstance(vid, int):
                    return vid
        return None

    async def _vlan_dump(self) -> dict[int, list[VlanRange]]:
        """Every bridge port's (and bridge's own) VIDs by ifindex, in one compressed dump.

        pyroute2's ``get_vlans()`` asks for one entry per VID (``RTEXT_FILTER_BRVLAN``):
        a trunk 2-4094 is 4093 attributes to parse at every read. With
        ``RTEXT_FILTER_BRVLAN_COMPRESSED`` the kernel sends consecutive VIDs with the same
        flags as one ``RANGE_BEGIN``/``RANGE_END`` pair, which :func:`_vlan_entries` expands
        (the same VIDs and flags as the long dump, checked in a lab node).
        """
        ipr = await self._ip()
        out: dict[int, list[VlanRange]] = {}
        dump = await ipr.link("dump", family=AF_BRIDGE, ext_mask=RTEXT_FILTER_BRVLAN_COMPRESSED)
        async for msg in dump:
            entries = _vlan_entries(msg)
            if entries is not None:
                out[msg["index"]] = entries
        return out

    async def read(self) -> NodeL2State:
        async with self._socket:
            return await self._read()

    async def _read(self) -> NodeL2State:
        ipr = await self._ip()
        raw = await self._raw_links()
        names: dict[int, str] = {msg["index"]: msg.get("ifname") for msg in raw}
        addrs: dict[int, list[str]] = {}
        async for msg in await ipr.addr("dump"):
            address = msg.get("address")
            if address is None or (":" in address and ipaddress.ip_address(address).is_link_local):
                continue  # IPv6 link-local addresses come and go with the link
            addrs.setdefault(msg["index"], []).append(f"{address}/{msg['prefixlen']}")
        links = [
            _link_state(msg, names, addrs.get(msg["index"], []))
            for msg in raw
            if msg.get("ifname") != "lo"
        ]
        vlans = {
            names[index]: entries
            for index, entries in (await self._vlan_dump()).items()
            if index in names
        }
        return build_actual(
            node=self.node,
            links=links,
            vlans=vlans,
            namespaces=mounted_namespaces(),
            mgmt_vlan=self.mgmt_vlan,
            owned_namespaces=owned_namespaces(self.node),
        )

    async def nics(self) -> list[Nic]:
        state = await self.read()
        out = []
        for link in state.links.values():
            if link.kind == "device" or re.match(r"^(eth|en)", link.name):
                if parse_alias(link.alias) is not None:
                    continue
                out.append(
                    Nic(
                        name=link.name,
                        mac=link.mac or "",
                        state=(link.oper or "unknown").lower(),
                        master=link.master,
                    )
                )
        return sorted(out, key=lambda n: n.name)

    async def routes(self) -> list[tuple[str, str | None, str]]:
        """The main table's routes as (destination CIDR, gateway or None, interface name):
        what the management path is made of (:mod:`services.executor.mgmt`)."""
        async with self._socket:
            ipr = await self._ip()
            names = {msg["index"]: msg.get("ifname") for msg in await self._raw_links()}
            out: list[tuple[str, str | None, str]] = []
            for family, zero in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                async for msg in await ipr.route("dump", family=family):
                    if msg.get("table") != 254 or msg.get("type") != 1:  # main, unicast
                        continue
                    dst = f"{msg.get('dst') or zero}/{msg['dst_len']}"
                    out.append((dst, msg.get("gateway"), str(names.get(msg.get("oif"), ""))))
            return out

    async def events(self) -> AsyncIterator[str]:
        """Link, address and bridge VLAN notifications, as the names of the links changed."""
        if self._events is None:
            self._events = AsyncIPRoute(netns=self.netns)
            await self._events.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
        sock = self._events
        try:
            while True:
                async for msg in sock.get():
                    yield str(msg.get("ifname") or msg.get("index") or "*")
        except Exception:  # re-raised: whatever broke the socket, it is not used again
            # A socket that overflowed is useless: the next events() call opens a new one.
            sock.close()
            if self._events is sock:
                self._events = None
            raise

    # -- writing ------------------------------------------------------------------------

    async def _write(self, step: Step, call: Callable[[], Awaitable[Any]]) -> None:
        """One change to the kernel: counted, retried when transient, errors in its words."""
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_is_transient),
                stop=stop_after_attempt(4),
                wait=wait_exponential(multiplier=0.05, max=1.0),
                reraise=True,
            ):
                with attempt:
                    self._writes += 1
                    await call()
        except NetlinkError as exc:
            raise KernelError(step, _netlink_text(exc), code=exc.code) from exc

    async def _index(self, step: Step, name: str) -> int:
        ipr = await self._ip()
        found = await ipr.link_lookup(ifname=name)
        if not found:
            raise KernelError(step, f"no link named {name}", code=errno.ENODEV)
        return int(found[0])

    async def apply(self, step: Step) -> None:
        handler = _HANDLERS.get(step.op)
        if handler is None:
            raise KernelError(step, f"unknown step operation {step.op!r}")
        async with self._socket:
            self._point("before")
            try:
                await handler(self, step)
                self._point("after")
            finally:
                self._steps += 1

    def _point(self, name: str) -> None:
        """A point where a test may stop this process dead (``L2NET_TEST_CRASH_AT``)."""
        if self._crash_at == (self._steps, name):
            os.kill(os.getpid(), signal.SIGKILL)

    async def _link_create(self, step: Step) -> None:
        ipr = await self._ip()
        a = step.args
        kind = a["kind"]
        spec: dict[str, Any] = {"ifname": step.target, "kind": kind}
        if kind == "bond":
            options = _unrestricted(a.get("bond_options"))
            spec.update(await self._bond_spec(step, a.get("bond_mode"), options))
        elif kind == "bridge":
            spec["br_vlan_filtering"] = 1 if a.get("vlan_filtering") else 0
        elif kind == "vlan":
            spec["link"] = await self._index(step, a["vlan_link"])
            spec["vlan_id"] = a["vlan_id"]
            if a.get("mtu"):
                spec["mtu"] = a["mtu"]
        else:
            raise KernelError(step, f"l2net does not create links of kind {kind!r}")
        if a.get("mac"):
            spec["address"] = a["mac"]
        if a.get("txqlen") is not None:
            spec["txqlen"] = a["txqlen"]
        # Marked unfinished in the creating request itself, which keeps the group (not the
        # alias): an executor that dies before the next request leaves a link it knows.
        spec["group"] = UNFINISHED_GROUP
        await self._write(step, lambda: ipr.link("add", **spec))
        self._point("created")
        # The alias (and a bridge's MTU) given when creating are not kept: set them now.
        after: dict[str, Any] = {}
        if a.get("alias"):
            after["alias"] = a["alias"]
        if a.get("mtu") and kind != "vlan":
            after["mtu"] = a["mtu"]
        if after:
            await self._link_set(Step(op="link.set", target=step.target, args=after))

    async def _link_set(self, step: Step) -> None:
        ipr = await self._ip()
        index = await self._index(step, step.target)
        a = dict(step.args)
        spec: dict[str, Any] = {"index": index}
        if "master" in a:
            spec["master"] = 0 if a["master"] is None else await self._index(step, a["master"])
        if "up" in a:
            spec["state"] = "up" if a["up"] else "down"
        if a.get("mtu") is not None:
            spec["mtu"] = a["mtu"]
        if a.get("txqlen") is not None:
            spec["txqlen"] = a["txqlen"]
        if a.get("mac"):
            spec["address"] = a["mac"]
        if "alias" in a:
            spec["ifalias"] = a["alias"] or ""
            if parse_alias(a["alias"]) is not None:
                spec["group"] = 0  # named l2net's: no longer unfinished (see module)
        if a.get("vlan_filtering") is not None:
            spec["kind"] = "bridge"
            spec["br_vlan_filtering"] = 1 if a["vlan_filtering"] else 0
        if "bond_mode" in a or "bond_options" in a:
            spec["kind"] = "bond"
            options = a.get("bond_options")
            if "bond_mode" in a:
                options = _unrestricted(options)
            spec.update(await self._bond_spec(step, a.get("bond_mode"), options))
        await self._write(step, lambda: ipr.link("set", **spec))

    async def _bond_spec(
        self, step: Step, mode: BondMode | None, options: dict[str, Any] | None
    ) -> dict[str, Any]:
        """pyroute2 keywords for a bond; ``primary`` by name becomes its ifindex (the kernel
        keeps the name, so it applies once that NIC is enslaved)."""
        opts = dict(options or {})
        if opts.get("primary"):
            opts["primary"] = await self._index(step, opts["primary"])
        return _bond_spec(mode, opts)

    async def _link_delete(self, step: Step) -> None:
        ipr = await self._ip()
        index = await self._index(step, step.target)
        await self._write(step, lambda: ipr.link("del", index=index))

    async def _addr(self, step: Step) -> None:
        ipr = await self._ip()
        index = await self._index(step, step.target)
        iface = ipaddress.ip_interface(step.args["address"])
        command = "add" if step.op == "addr.add" else "del"
        try:
            await self._write(
                step,
                lambda: ipr.addr(
                    command, index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen
                ),
            )
        except KernelError as exc:
            # Gone already: the kernel deletes a subnet's secondaries with its primary.
            if command != "del" or exc.code != errno.EADDRNOTAVAIL:
                raise

    async def _vlan(self, step: Step) -> None:
        index = await self._index(step, step.target)
        command = "add" if step.op == "vlan.add" else "del"
        await self._vlan_request(
            step, index, command, step.args["ranges"], self_=bool(step.args.get("self"))
        )

    async def _vlan_request(
        self, step: Step, index: int, command: str, ranges: list[VlanRange], *, self_: bool
    ) -> None:
        """One request per range (``vid: 'a-b'``); VIDs with flags one by one (see module)."""
        ipr = await self._ip()
        extra: dict[str, Any] = {"vlan_flags": "self"} if self_ else {}
        for r in ranges:
            if r.last != r.vid and (r.pvid or r.untagged):
                singles = [
                    VlanRange(vid=v, pvid=r.pvid, untagged=r.untagged)
                    for v in range(r.vid, r.last + 1)
                ]
                await self._vlan_request(step, index, command, singles, self_=self_)
                continue
            info: dict[str, Any]
            if r.last != r.vid:
                info = {"vid": f"{r.vid}-{r.last}"}
            else:
                flags = [f for f, on in (("pvid", r.pvid), ("untagged", r.untagged)) if on]
                info = {"vid": r.vid, "flags": flags} if flags else {"vid": r.vid}

            async def request(info: dict[str, Any] = info) -> None:
                await ipr.vlan_filter(command, index=index, vlan_info=info, **extra)

            await self._write(step, request)
            self._point("vlan-request")

    async def _get_link(
        self, step: Step, name: str | None = None, *, index: int | None = None
    ) -> Any | None:
        """One link by name or index (one ``RTM_GETLINK``); None when there is no such link."""
        ipr = await self._ip()
        try:
            if name is not None:
                found = await ipr.link("get", ifname=name)
            else:
                found = await ipr.link("get", index=index)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise KernelError(step, _netlink_text(exc), code=exc.code) from exc
        return found[0] if found else None

    async def _port_vlans(
        self, step: Step, port: str, want: list[VlanRange], *, link: Any | None = None
    ) -> None:
        """Make ``port``'s VIDs exactly ``want``, reading what is there first: the port's
        link (``link``, when the caller has it) and the VLAN dump, nothing else."""
        msg = link if link is not None else await self._get_link(step, port)
        if msg is None:
            raise KernelError(step, f"no link named {port}", code=errno.ENODEV)
        index = int(msg["index"])
        add, delete = vlan_changes(want, (await self._vlan_dump()).get(index, []))
        self_ = msg.get(("linkinfo", "kind")) == "bridge"
        if delete:
            await self._vlan_request(step, index, "del", delete, self_=self_)
        if add:
            await self._vlan_request(step, index, "add", add, self_=self_)

    async def _vlan_exact(self, step: Step) -> None:
        await self._port_vlans(step, step.target, step.args["vlans"])

    async def _vm_host_link(self, step: Step, key: str) -> Any | None:
        """The host veth of VM NIC ``key`` (by its alias): the one this kernel plugged, by
        one ``RTM_GETLINK``, else found in a link dump."""
        known = self._vm_hosts.get(key)
        if known is not None:
            msg = await self._get_link(step, known)
            if msg is not None and _vm_port_key(msg) == key:
                return msg
        found = None
        for msg in await self._raw_links():
            if _vm_port_key(msg) == key:
                found = msg  # the last one, as build_actual() does
        return found

    async def _vm_vlans(self, step: Step) -> None:
        key = step.target.removeprefix("vm/")
        host = await self._vm_host_link(step, key)
        if host is None:
            raise KernelError(step, f"VM NIC {key} is not plugged", code=errno.ENODEV)
        master = host.get("master")
        bridge = await self._get_link(step, index=master) if master else None
        if (
            bridge is not None
            and bridge.get(("linkinfo", "kind")) == "bridge"
            and not _attrs(bridge.get("linkinfo")).get("IFLA_BR_VLAN_FILTERING", 0)
        ):
            want = expand_vlans(step.args["vlans"])
            if set(want) <= {1} and all(f == (True, True) for f in want.values()):
                return  # no VLAN filtering: the port is untagged anyway
            # Other VIDs only back to a snapshot (a plan turns filtering on first): such a
            # bridge keeps its ports' VIDs all the same; a kernel that cannot filter refuses.
        await self._port_vlans(step, host.get("ifname"), step.args["vlans"], link=host)

    async def _netns(self, step: Step) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._writes += 1
            if step.op == "netns.add":
                await loop.run_in_executor(
                    None, lambda: create_netns(step.target, owner=self.node, point=self._point)
                )
            else:
                await loop.run_in_executor(
                    None, lambda: remove_netns(step.target, point=self._point)
                )
        except OSError as exc:
            raise KernelError(step, f"{exc.strerror or exc}", code=exc.errno) from exc

    async def _cni(self, step: Step) -> None:
        a = step.args
        command = "ADD" if step.op == "cni.add" else "DEL"
        config = a.get("config") or bridge_cni_config(
            network=a.get("network") or "l2net", bridge=a.get("bridge") or ""
        )
        if command == "ADD":
            await self._unplug_half_plugged(step, config)
        self._writes += 1
        try:
            result = await cni.run_plugin(
                command,
                vm=a["vm"],
                ifname=a["ifname"],
                config=config,
                cni_path=self.cni_path,
                netns=self.netns,
                mac=a.get("mac"),
            )
        except cni.CniError as exc:
            raise KernelError(step, str(exc)) from exc
        if command == "ADD":
            if result.host_ifname is None:
                raise KernelError(step, "the CNI plugin reported no host interface")
            self._point("cni-plugged")
            # The alias is how l2net knows this veth is a VM NIC it plugged.
            alias = owner_alias(vm=a["vm"], net=a.get("network") or "", **{"if": a["ifname"]})
            await self._link_set(
                Step(op="link.set", target=result.host_ifname, args={"alias": alias})
            )
            self._vm_hosts[port_key(a["vm"], a["ifname"])] = result.host_ifname
        else:
            self._vm_hosts.pop(port_key(a["vm"], a["ifname"]), None)

    async def _unplug_half_plugged(self, step: Step, config: dict[str, Any]) -> None:
        """Before an ADD: a VM interface of that name without a host veth named l2net's is
        what an ADD cut short left (the plugin would refuse: "already exists"); the
        plugin's DEL removes it, and its host veth with it."""
        a = step.args
        if await self._vm_host_link(step, port_key(a["vm"], a["ifname"])) is not None:
            return
        loop = asyncio.get_running_loop()
        inside = await loop.run_in_executor(None, netns_links, a["vm"])
        if a["ifname"] not in inside:
            return
        self._writes += 1
        try:
            await cni.run_plugin(
                "DEL",
                vm=a["vm"],
                ifname=a["ifname"],
                config=config,
                cni_path=self.cni_path,
                netns=self.netns,
            )
        except cni.CniError as exc:
            raise KernelError(step, f"removing a half-plugged {a['ifname']}: {exc}") from exc


_Handler = Callable[[NetlinkKernel, Step], Awaitable[None]]
_HANDLERS: dict[str, _Handler] = {
    "link.create": NetlinkKernel._link_create,
    "link.set": NetlinkKernel._link_set,
    "link.delete": NetlinkKernel._link_delete,
    "addr.add": NetlinkKernel._addr,
    "addr.del": NetlinkKernel._addr,
    "vlan.add": NetlinkKernel._vlan,
    "vlan.del": NetlinkKernel._vlan,
    "vlan.exact": NetlinkKernel._vlan_exact,
    "vm.vlans": NetlinkKernel._vm_vlans,
    "netns.add": NetlinkKernel._netns,
    "netns.del": NetlinkKernel._netns,
    "cni.add": NetlinkKernel._cni,
    "cni.del": NetlinkKernel._cni,
}


# -- network namespaces ------------------------------------------------------------------

_CLONE_NEWNET = 0x40000000
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_SHARED = 1 << 20
_MNT_DETACH = 0x2
_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    """The C library already loaded in this process (``find_library`` would run ldconfig)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _os_error(what: str) -> OSError:
    """The failed C call's errno as an OSError whose text says what was being done."""
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")


def _crash_plan(value: str | None) -> tuple[int, str] | None:
    """``<step index>:<point>`` from :data:`CRASH_ENV`; None when unset or not that form."""
    index, sep, point = (value or "").partition(":")
    if not sep or not index.isdigit() or not point:
        return None
    return int(index), point


def _is_mounted(path: str) -> bool:
    """True when ``path`` is a mount point (a bound namespace), not a plain file of its
    directory: the bind mount gives it the namespace file system's device."""
    try:
        return os.stat(path).st_dev != os.stat(os.path.dirname(path)).st_dev
    except OSError:
        return False


def mounted_namespaces() -> list[str]:
    """Named network namespaces that are namespaces: a file in ``/run/netns`` that nothing
    is mounted on (an ``ip netns add`` or an executor that died half-way) is not one."""
    try:
        entries = os.listdir(cni.NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in entries if _is_mounted(os.path.join(cni.NETNS_DIR, n)))


def owned_namespaces(node: str) -> list[str]:
    """The VM namespaces ``node``'s executor recorded as made (see module)."""
    try:
        entries = os.listdir(OWNED_NETNS_DIR)
    except FileNotFoundError:
        return []
    out = []
    for name in entries:
        if name.startswith("."):
            continue  # a record being written
        try:
            with open(os.path.join(OWNED_NETNS_DIR, name)) as f:
                if f.read() == node:
                    out.append(name)
        except OSError:
            continue
    return sorted(out)


def _check_netns_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or name.startswith("."):
        raise OSError(errno.EINVAL, f"{name!r} is not a network namespace name")


def _record_netns(name: str, owner: str) -> None:
    """Write the record atomically: a half-written one must not name another node."""
    os.makedirs(OWNED_NETNS_DIR, mode=0o755, exist_ok=True)
    path = os.path.join(OWNED_NETNS_DIR, name)
    temp = os.path.join(OWNED_NETNS_DIR, f".{name}.{os.getpid()}")
    with open(temp, "w") as f:
        f.write(owner)
    os.replace(temp, path)


def create_netns(
    name: str, *, owner: str | None = None, point: Callable[[str], None] | None = None
) -> None:
    """Create the network namespace ``/run/netns/<name>`` as ``ip netns add`` does, without
    starting a process.

    iproute2's steps: ``/run/netns`` made a shared mount (so that namespaces made here reach
    other mount namespaces), an empty file for the namespace, ``unshare(CLONE_NEWNET)``, and
    the new namespace bind-mounted on the file. Only the calling thread enters a namespace
    with ``unshare``, so that part runs in a thread started for it, which returns to the
    process's namespace (``setns``) and ends: the process's other threads (the event loop,
    pooled threads) never leave their namespace.
    pyroute2's ``netns.create`` forks the whole process for the same thing, several times
    slower in a lab node. On failure the file is removed again and ``OSError`` is raised.

    ``owner`` (the node's name) is recorded first (:data:`OWNED_NETNS_DIR`); a file of that
    name that is not a namespace (left by a process that died half-way) is replaced.
    ``point`` is called at the points a test may stop the process (:data:`CRASH_POINTS`).
    """
    _check_netns_name(name)
    at = point or (lambda _: None)
    libc = _c()
    run_dir = cni.NETNS_DIR
    if owner is not None:
        _record_netns(name, owner)
        at("netns-recorded")
    os.makedirs(run_dir, mode=0o755, exist_ok=True)
    made_mount = False
    while libc.mount(b"", run_dir.encode(), b"none", _MS_SHARED | _MS_REC, None) != 0:
        # Not a mount point yet: bind it on itself once, then make it shared.
        if ctypes.get_errno() != errno.EINVAL or made_mount:
            raise _os_error(f"cannot make {run_dir} a shared mount")
        if libc.mount(run_dir.encode(), run_dir.encode(), b"none", _MS_BIND | _MS_REC, None):
            raise _os_error(f"cannot bind-mount {run_dir} on itself")
        made_mount = True
    path = os.path.join(run_dir, name)
    if os.path.lexists(path) and not _is_mounted(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # an empty file left half-way: "unknown FS magic" for anyone
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create {path}: {exc.strerror}") from exc
    at("netns-file")
    failed: list[OSError] = []

    def enter_and_bind() -> None:
        own = f"/proc/self/task/{threading.get_native_id()}/ns/net"
        try:
            home = os.open(own, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            failed.append(exc)
            return
        try:
            if libc.unshare(_CLONE_NEWNET) != 0:
                failed.append(_os_error("cannot create a network namespace"))
                return
            if libc.mount(own.encode(), path.encode(), b"none", _MS_BIND, None) != 0:
                failed.append(_os_error(f"cannot bind the new network namespace on {path}"))
            # Back home before ending (the thread lingers a moment after join() returns);
            # should that fail, the thread ends all the same and nothing else runs in it.
            libc.setns(home, _CLONE_NEWNET)
        finally:
            os.close(home)

    thread = threading.Thread(target=enter_and_bind, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join()
    if failed:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise failed[0]


def remove_netns(name: str, *, point: Callable[[str], None] | None = None) -> None:
    """Remove the namespace ``/run/netns/<name>`` (unmount, remove the file) and then
    l2net's record of it; each part is skipped when already done, so that a removal cut
    short is finished by the next one."""
    _check_netns_name(name)
    path = os.path.join(cni.NETNS_DIR, name)
    if _is_mounted(path) and _c().umount2(path.encode(), _MNT_DETACH) != 0:
        raise _os_error(f"cannot unmount {path}")
    (point or (lambda _: None))("netns-unmounted")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(OWNED_NETNS_DIR, name))


def netns_links(name: str) -> list[str]:
    """Interface names inside the named namespace (empty when it is not a namespace)."""
    path = os.path.join(cni.NETNS_DIR, name)
    if not _is_mounted(path):
        return []
    found: list[list[str]] = []
    failed: list[OSError] = []
    libc = _c()

    def look() -> None:
        own = f"/proc/self/task/{threading.get_native_id()}/ns/net"
        try:
            home = os.open(own, os.O_RDONLY | os.O_CLOEXEC)
            target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            failed.append(exc)
            return
        try:
            if libc.setns(target, _CLONE_NEWNET) != 0:
                failed.append(_os_error(f"cannot enter {path}"))
                return
            try:
                found.append([n for _, n in socket.if_nameindex()])
            finally:
                libc.setns(home, _CLONE_NEWNET)
        finally:
            os.close(target)
            os.close(home)

    thread = threading.Thread(target=look, name=f"netns-look-{name}", daemon=True)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return found[0] if found else []


# -- message parsing (pyroute2 messages to l2net structs) ---------------------------------


def _attrs(nla: Any) -> dict[str, Any]:
    """A nested netlink attribute set as a dict (``linkinfo`` → its ``data``)."""
    if nla is None:
        return {}
    data = nla.get("data") if hasattr(nla, "get") else None
    if data is None or not hasattr(data, "get"):
        return {}
    return {k: v for k, v in data.get("attrs", [])}


def _vm_port_key(msg: Any) -> str | None:
    """``<vm>/<ifname>`` of a VM NIC's host veth (from its l2net alias), else None."""
    fields = parse_alias(msg.get("ifalias"))
    if fields and "vm" in fields and "if" in fields:
        return port_key(fields["vm"], fields["if"])
    return None


def _link_state(msg: Any, names: dict[int, str], addresses: list[str]) -> LinkState:
    info = msg.get("linkinfo")
    kind = msg.get(("linkinfo", "kind")) or "device"
    data = _attrs(info)
    master = msg.get("master")
    link = msg.get("link")
    flags = msg["flags"]
    oper = msg.get("operstate")
    if oper == "UNKNOWN":  # drivers that report no operstate (UML vec, tap): from the carrier
        oper = "UP" if flags & IFF_UP and flags & IFF_LOWER_UP else "DOWN"
    alias = msg.get("ifalias") or None
    if alias is None and msg.get("group") == UNFINISHED_GROUP:
        alias = UNFINISHED_ALIAS  # created by l2net, not named yet (see module)
    state = LinkState(
        name=msg.get("ifname"),
        kind=kind,
        index=msg["index"],
        alias=alias,
        master=names.get(master) if master else None,
        up=bool(flags & IFF_UP),
        oper=oper,
        mtu=msg.get("mtu"),
        mac=msg.get("address"),
        txqlen=msg.get("txqlen"),
        addresses=sorted(addresses),
    )
    if kind == "bond":
        state.bond_mode = BOND_MODE_NAMES.get(data.get("IFLA_BOND_MODE", -1))
        state.bond_options = _bond_options(data, names)
    elif kind == "bridge":
        state.vlan_filtering = bool(data.get("IFLA_BR_VLAN_FILTERING", 0))
    elif kind == "vlan":
        state.vlan_id = data.get("IFLA_VLAN_ID")
        state.vlan_link = names.get(link) if link else None
    if msg.get(("linkinfo", "slave_kind")) == "bond":
        slave = _slave_attrs(info)
        if "IFLA_BOND_SLAVE_STATE" in slave:
            state.bond_active = slave["IFLA_BOND_SLAVE_STATE"] == 0
    return state


def _slave_attrs(info: Any) -> dict[str, Any]:
    data = info.get("slave_data") if info is not None else None
    if data is None:
        return {}
    return {k: v for k, v in data.get("attrs", [])}


def _bond_options(data: dict[str, Any], names: dict[int, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in BOND_INT_OPTIONS:
        value = data.get(f"IFLA_BOND_{key.upper()}")
        if value is not None:
            out[key] = int(value)
    kernel_names = {"lacp_rate": "IFLA_BOND_AD_LACP_RATE", "ad_select": "IFLA_BOND_AD_SELECT"}
    for key, table in BOND_ENUMS.items():
        value = data.get(kernel_names.get(key, f"IFLA_BOND_{key.upper()}"))
        if value is not None and value in table:
            out[key] = table[value]
    targets = data.get("IFLA_BOND_ARP_IP_TARGET")
    if targets:
        out["arp_ip_target"] = sorted(str(t) for t in targets)
    primary = data.get("IFLA_BOND_PRIMARY")
    if primary:
        out["primary"] = names.get(primary, str(primary))
    return out


_MODE_RESTRICTED_DEFAULTS = {
    "xmit_hash_policy": "layer2",
    "lacp_rate": "slow",
    "ad_select": "stable",
    "arp_validate": "none",
}
"""Bond options the kernel refuses in some modes (EACCES, "option not supported in mode"),
with the value a new bond has; the kernel reports them whatever the mode."""


def _unrestricted(options: dict[str, Any] | None) -> dict[str, Any]:
    """``options`` without mode-restricted ones at their default: what a new bond (or one
    changing mode) already has, and what its mode may refuse to be given (a snapshot's
    bond, read back with every option, is re-created in rollback)."""
    return {
        key: value
        for key, value in (options or {}).items()
        if _MODE_RESTRICTED_DEFAULTS.get(key) != value
    }


def _bond_spec(mode: BondMode | None, options: dict[str, Any]) -> dict[str, Any]:
    """pyroute2 keywords for a bond's mode and options (names to the kernel's numbers)."""
    spec: dict[str, Any] = {}
    if mode is not None:
        spec["bond_mode"] = BOND_MODE_NUMBERS[mode]
    for key, value in options.items():
        if key in BOND_INT_OPTIONS:
            spec[f"bond_{key}"] = int(value)
        elif key in BOND_ENUMS:
            numbers = {name: num for num, name in BOND_ENUMS[key].items()}
            nla = {"lacp_rate": "bond_ad_lacp_rate", "ad_select": "bond_ad_select"}
            spec[nla.get(key, f"bond_{key}")] = numbers[value]
        elif key == "arp_ip_target":
            spec["bond_arp_ip_target"] = list(value)
        elif key == "primary" and isinstance(value, int):
            spec["bond_primary"] = value
    return spec


def _vlan_entries(msg: Any) -> list[VlanRange] | None:
    """The VIDs of one AF_BRIDGE link message; None when it carries no VLAN information."""
    spec = msg.get("af_spec")
    if spec is None:
        return None
    entries: dict[int, tuple[bool, bool]] = {}
    begin: int | None = None
    for key, value in spec.get("attrs", []):
        if key != "IFLA_BRIDGE_VLAN_INFO":
            continue
        flags, vid = int(value["flags"]), int(value["vid"])
        bits = (bool(flags & _VLAN_PVID), bool(flags & _VLAN_UNTAGGED))
        if flags & _VLAN_RANGE_BEGIN:
            begin = vid
            continue
        first = begin if (flags & _VLAN_RANGE_END and begin is not None) else vid
        begin = None
        for v in range(first, vid + 1):
            entries[v] = bits
    return compress_vlans(entries)
