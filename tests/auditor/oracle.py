"""An outside oracle for the auditor: Debian ifupdown2's own checker, ``ifquery -a -c``.

ifupdown2 is never installed on the host (its package takes over host networking: it
replaces ifupdown, writes /etc/network/interfaces, masks udev rules). ``make deps`` only
downloads and extracts it under ``.cache/ifupdown2/root``; it runs inside a lab node, in a
private mount namespace (``unshare -m``) with tmpfs on /etc/network (its configuration),
/var/log (its log) and /run/network (its state), so it writes nothing to the host.

:func:`interfaces_file` writes the node's desired state (an intent) in ifupdown2's words,
and :data:`ATTRIBUTE_PATHS` maps its attributes to the auditor's field paths, so that the
two can be compared finding for finding.
"""

from __future__ import annotations

import json
from pathlib import Path

from services.lab import Lab
from shared.domain.l2state import parse_alias
from shared.domain.model import NodeIntent, ObservedState, VlanRange

REPO = Path(__file__).resolve().parents[2]
IFUPDOWN2 = REPO / ".cache" / "ifupdown2" / "root"

ATTRIBUTE_PATHS: dict[str, str] = {
    "mtu": "mtu",
    "bridge-vids": "vlans",
    "bridge-pvid": "vlans",
    "bridge-access": "vlans",
    "bond-mode": "bond.mode",
    "bond-miimon": "bond.options.miimon",
    "bridge-vlan-aware": "bridge.vlanFiltering",
}
"""ifupdown2 attribute -> the auditor's field path for the same fact."""

_BOND_ATTRS = {
    "miimon": "bond-miimon",
    "updelay": "bond-updelay",
    "downdelay": "bond-downdelay",
    "lacp_rate": "bond-lacp-rate",
    "xmit_hash_policy": "bond-xmit-hash-policy",
}

_SCRIPT = """set -e
X={root}
mount -t tmpfs l2net-oracle /etc/network
mkdir -p /etc/network/ifupdown2
cp $X/etc/network/ifupdown2/addons.conf /etc/network/ifupdown2/
sed -e 's|^state_dir=.*|state_dir=/run/network/state/|' \\
    -e 's|^template_enable=.*|template_enable=0|' \\
    -e 's|^addon_scripts_support=.*|addon_scripts_support=0|' \\
    $X/etc/network/ifupdown2/ifupdown2.conf > /etc/network/ifupdown2/ifupdown2.conf
mount -t tmpfs l2net-oracle /var/log
mkdir -p /var/log/ifupdown2 /run/network
mount -t tmpfs l2net-oracle /run/network
ln -s $X/usr/share/ifupdown2/ifupdown2 /run/network/ifquery
exec /usr/bin/python3 /run/network/ifquery "$@"
"""


def vm_port_names(observed: ObservedState) -> dict[str, str]:
    """``<vm>/<ifname>`` -> the host veth the CNI plugin created for it."""
    out: dict[str, str] = {}
    for link in observed.links:
        fields = parse_alias(link.get("alias"))
        if fields and "vm" in fields and "if" in fields:
            out[f"{fields['vm']}/{fields['if']}"] = link["name"]
    return out


def _vids(ranges: list[VlanRange]) -> tuple[str, int | None]:
    """(``bridge-vids`` words without the PVID, the PVID)."""
    words: list[str] = []
    pvid: int | None = None
    for r in ranges:
        if r.pvid:
            pvid = r.vid
            continue
        words.append(f"{r.vid}-{r.last}" if r.last != r.vid else str(r.vid))
    return " ".join(words), pvid


def interfaces_file(intent: NodeIntent, vm_ports: dict[str, str]) -> str:
    """The node's desired state as an ifupdown2 interfaces file (``vm_ports``: host veths)."""
    stanzas: list[list[str]] = []
    bridge_ports: dict[str, list[str]] = {}
    for vp in intent.vm_ports:
        veth = vm_ports[f"{vp.vm}/{vp.ifname}"]
        bridge_ports.setdefault(vp.bridge, []).append(veth)
        if len(vp.vlans) == 1 and vp.vlans[0].pvid and vp.vlans[0].untagged:
            stanzas.append([veth, f"bridge-access {vp.vlans[0].vid}"])
        else:
            vids, pvid = _vids(vp.vlans)
            stanzas.append([veth, f"bridge-vids {vids}", f"bridge-pvid {pvid or 1}"])
    for cn in intent.cluster_networks:
        vids, _ = _vids(cn.uplink_vlans)
        if cn.bond is None:  # mgmt: only the VIDs of its networks on its bond
            if vids:
                stanzas.append([cn.bond_name, f"bridge-vids {vids}", "bridge-pvid 1"])
            continue
        bond = cn.bond
        for nic in bond.ports:
            stanzas.append([nic, f"mtu {bond.mtu}"])
        lines = [bond.name, f"bond-slaves {' '.join(bond.ports)}", f"bond-mode {bond.mode}"]
        for key, attr in _BOND_ATTRS.items():
            if bond.options.get(key) is not None:
                lines.append(f"{attr} {bond.options[key]}")
        lines.append(f"mtu {bond.mtu}")
        if vids:
            lines.append(f"bridge-vids {vids}")
        lines.append("bridge-pvid 1")
        stanzas.append(lines)
        ports = [bond.name, *bridge_ports.get(cn.bridge, [])]
        stanzas.append(
            [
                cn.bridge,
                f"bridge-ports {' '.join(ports)}",
                "bridge-vlan-aware yes",
                f"mtu {cn.mtu}",
            ]
        )
    text = []
    for name, *attrs in stanzas:
        text.append(f"auto {name}\niface {name}\n" + "".join(f"    {a}\n" for a in attrs))
    return "\n".join(text)


async def ifquery_check(lab: Lab, node: str, interfaces: str) -> dict[str, dict[str, str]]:
    """Run ``ifquery -a -c`` in ``node`` on ``interfaces``: iface -> attribute -> pass/fail."""
    main = IFUPDOWN2 / "usr" / "share" / "ifupdown2" / "__main__.py"
    assert main.exists(), f"{main} is missing: run `make deps` (extracts the ifupdown2 .deb)"
    directory = lab.node_dir(node)
    (directory / "oracle-interfaces").write_text(interfaces)
    (directory / "oracle-ifquery.sh").write_text(_SCRIPT.format(root=IFUPDOWN2))
    rc, out, err = await lab.aexec(
        node,
        [
            "unshare",
            "-m",
            "sh",
            str(directory / "oracle-ifquery.sh"),
            "-a",
            "-c",
            "-o",
            "json",
            "-i",
            str(directory / "oracle-interfaces"),
        ],
        timeout=120,
    )
    assert rc in (0, 1) and out.strip().startswith("["), f"ifquery: rc {rc}\n{out}\n{err}"
    return {entry["name"]: dict(entry["config_status"]) for entry in json.loads(out)}


def failures(result: dict[str, dict[str, str]], vm_ports: dict[str, str]) -> set[tuple[str, str]]:
    """ifquery's failed attributes as the auditor's (object, field path)."""
    objects = {veth: f"vm/{key}" for key, veth in vm_ports.items()}
    out: set[tuple[str, str]] = set()
    for iface, attrs in result.items():
        for attr, verdict in attrs.items():
            if verdict != "pass":
                out.add((objects.get(iface, iface), ATTRIBUTE_PATHS.get(attr, attr)))
    return out
