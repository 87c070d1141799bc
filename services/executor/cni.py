"""Running the standard bridge CNI plugin, exactly as Multus does under Harvester.

The plugin is a program (``/usr/lib/cni/bridge``): the command, namespace, interface name and
container id go in environment variables, the network configuration (the planner's NAD
config) on stdin, and a JSON result comes out on stdout. l2net calls it with ``ADD`` to plug a
VM NIC into the VM's network namespace and ``DEL`` to unplug it. The plugin is run in the
executor's own network namespace (``ip netns exec`` when that is not the process's own, as in
tests), so the host veth lands where the bridge is.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.domain.errors import Refused
from shared.domain.vocabulary import CNI_PLUGIN

DEFAULT_CNI_PATH = "/usr/lib/cni"
"""Where Debian's containernetworking-plugins installs; ``$CNI_PATH`` overrides it."""
NETNS_DIR = "/run/netns"


class CniError(Refused, RuntimeError):
    """The plugin failed; the message carries its own error text."""


@dataclass(frozen=True)
class CniResult:
    """What a successful ADD reports: the host-side veth name and the VM-side MAC."""

    host_ifname: str | None
    vm_mac: str | None
    raw: dict[str, Any]


async def run_plugin(
    command: str,
    *,
    vm: str,
    ifname: str,
    config: dict[str, Any],
    cni_path: str = DEFAULT_CNI_PATH,
    netns: str | None = None,
    mac: str | None = None,
    timeout: float = 60.0,
) -> CniResult:
    """Run the plugin named by ``config["type"]`` with ``command`` (``ADD`` or ``DEL``).

    ``vm`` is the VM's namespace (``/run/netns/<vm>``) and its CNI container id; ``netns``
    is the namespace the plugin itself runs in (None: this process's own). ``cni_path`` is
    searched like ``$CNI_PATH`` (directories separated by ``:``) and passed on as it.
    """
    plugin_type = str(config.get("type", CNI_PLUGIN))
    if "/" in plugin_type or not plugin_type:
        raise CniError(f"CNI config type {plugin_type!r} is not a plugin name")
    found = [Path(d) / plugin_type for d in cni_path.split(":") if d]
    plugin = next((p for p in found if p.exists()), None)
    if plugin is None:
        raise CniError(
            f"CNI plugin {plugin_type!r} not found in {cni_path}: install"
            " containernetworking-plugins (apt-get install containernetworking-plugins)"
        )
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": vm,
        "CNI_NETNS": f"{NETNS_DIR}/{vm}",
        "CNI_IFNAME": ifname,
        "CNI_PATH": cni_path,
    }
    if mac:
        env["CNI_ARGS"] = f"IgnoreUnknown=1;MAC={mac}"
    argv = [str(plugin)]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(json.dumps(config).encode()), timeout=timeout
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CniError(
            f"CNI {command} {vm}/{ifname}: plugin did not answer in {timeout}s"
        ) from None
    if proc.returncode != 0:
        raise CniError(f"CNI {command} {vm}/{ifname}: {_plugin_error(out, err)}")
    if command != "ADD":
        return CniResult(host_ifname=None, vm_mac=None, raw={})
    try:
        result: dict[str, Any] = json.loads(out)
    except ValueError as exc:
        raise CniError(f"CNI ADD {vm}/{ifname}: unreadable result {out[:200]!r}") from exc
    host = vm_mac = None
    for iface in result.get("interfaces", []):
        if iface.get("sandbox"):
            vm_mac = iface.get("mac")
        else:
            host = iface.get("name") if iface.get("name") != config.get("bridge") else host
    return CniResult(host_ifname=host, vm_mac=vm_mac, raw=result)


def _plugin_error(out: bytes, err: bytes) -> str:
    """The plugin's own words: its JSON error's ``msg``/``details``, else its output."""
    try:
        data = json.loads(out)
        parts = [str(data.get("msg", "")), str(data.get("details", ""))]
        text = ": ".join(p for p in parts if p)
        if text:
            return text
    except ValueError:
        pass
    return (err or out).decode(errors="replace").strip() or "plugin failed without a message"
