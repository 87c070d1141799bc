"""Names and addresses of one lab, derived from its id: pure functions, no I/O.

Every name the lab creates on the host (its network namespace, its taps, the UML ``umid``
of each node) carries the lab's own random id, so two labs (a demo lab and a test lab, say)
live side by side without touching each other. Inside the lab namespace the switches have
fixed, readable names (``sw-mgmt``, ``sw-data1``, ...): the namespace already separates labs.

Addresses are link-local (169.254.0.0/16) and exist only inside the lab namespace and the
guests: the lab gateway (where the NATS and OTLP relays listen) is ``169.254.0.1``, node ``i``
is ``169.254.(1 + (i-1) // 254).(1 + (i-1) % 254)``.
"""

from __future__ import annotations

import re
import secrets
import shlex
from typing import NewType
from urllib.parse import urlsplit, urlunsplit

from shared.domain.errors import BadInput
from shared.domain.vocabulary import IFNAME_MAX, VID_MAX, VID_MIN

LabId = NewType("LabId", str)

MAX_NODES = 64
MAX_DATA_NICS = 6
PREFIX_LEN = 16
GATEWAY_ADDRESS = "169.254.0.1"
NATS_RELAY_PORT = 4222
OTLP_RELAY_FIRST_PORT = 4318
MGMT_SWITCH = "sw-mgmt"

_LAB_ID_RE = re.compile(r"^[0-9a-f]{6}$")
_NODE_RE = re.compile(r"^node-([1-9][0-9]*)$")


class LabConfigError(BadInput, ValueError):
    """A lab parameter is out of range; the message names the parameter and the limit."""


def new_lab_id() -> LabId:
    """A fresh random lab id: 6 lowercase hex digits."""
    return LabId(secrets.token_hex(3))


def check_lab_id(value: str) -> LabId:
    """Validate a lab id read back from a state file."""
    if not _LAB_ID_RE.match(value):
        raise LabConfigError(f"lab id {value!r} is not 6 lowercase hex digits")
    return LabId(value)


def netns_name(lab: LabId) -> str:
    """The lab's network namespace on the host (holds the switches and the taps)."""
    return f"l2lab-{lab}"


def node_name(index: int) -> str:
    """``node-1`` ... ``node-N``."""
    return f"node-{index}"


def node_index(name: str) -> int:
    """Inverse of :func:`node_name`; raises LabConfigError on anything else."""
    m = _NODE_RE.match(name)
    if not m:
        raise LabConfigError(f"node name {name!r} is not of the form node-N")
    return int(m.group(1))


def umid(lab: LabId, index: int) -> str:
    """The UML instance id of a node (names its directory under the lab's ``uml_dir``)."""
    return f"l2lab-{lab}-{node_name(index)}"


def tap_name(lab: LabId, index: int, nic: int) -> str:
    """Host tap (in the lab namespace) behind guest NIC ``eth<nic>`` of node ``index``."""
    name = f"t{lab}n{index}e{nic}"
    if len(name) > IFNAME_MAX:
        raise LabConfigError(f"tap name {name!r} is longer than {IFNAME_MAX} characters")
    return name


def gateway_taps(lab: LabId) -> tuple[str, str]:
    """The two taps of the VLAN translator (``--mgmt-vlan``): (switch side, address side)."""
    return f"g{lab}t", f"g{lab}u"


def switch_for_nic(nic: int) -> str:
    """The lab switch of guest NIC ``eth<nic>``: eth0 on ``sw-mgmt``, eth1+eth2 on
    ``sw-data1``, eth3+eth4 on ``sw-data2``, ... (NIC groups on separate switches)."""
    if nic == 0:
        return MGMT_SWITCH
    return f"sw-data{(nic + 1) // 2}"


def switches(data_nics: int) -> list[str]:
    """Every switch a lab with ``data_nics`` data NICs per node needs, mgmt first."""
    names = [MGMT_SWITCH]
    for nic in range(1, data_nics + 1):
        sw = switch_for_nic(nic)
        if sw not in names:
            names.append(sw)
    return names


def node_address(index: int) -> str:
    """The node's management address (without prefix length)."""
    if not 1 <= index <= MAX_NODES:
        raise LabConfigError(f"node index {index} is outside 1..{MAX_NODES}")
    return f"169.254.{1 + (index - 1) // 254}.{1 + (index - 1) % 254}"


def check_params(*, nodes: int, data_nics: int, mgmt_vlan: int | None, mem_mb: int) -> None:
    """Reject out-of-range ``lab up`` parameters with a message naming the parameter."""
    if not 1 <= nodes <= MAX_NODES:
        raise LabConfigError(f"--nodes {nodes}: must be between 1 and {MAX_NODES}")
    if not 0 <= data_nics <= MAX_DATA_NICS:
        raise LabConfigError(f"--data-nics {data_nics}: must be between 0 and {MAX_DATA_NICS}")
    if mgmt_vlan is not None and not VID_MIN < mgmt_vlan <= VID_MAX:
        raise LabConfigError(
            f"--mgmt-vlan {mgmt_vlan}: must be a VLAN id between {VID_MIN + 1} and {VID_MAX} "
            "(VLAN 1 is the untagged default; omit the option for an untagged mgmt network)"
        )
    if not 64 <= mem_mb <= 4096:
        raise LabConfigError(f"--mem {mem_mb}: must be between 64 and 4096 (MiB)")


def host_port(url: str, *, default_port: int) -> tuple[str, int]:
    """``(host, port)`` of a ``scheme://host:port/...`` URL (first of a comma list)."""
    first = url.split(",")[0].strip()
    parts = urlsplit(first if "://" in first else f"tcp://{first}")
    if not parts.hostname:
        raise LabConfigError(f"URL {url!r} has no host")
    try:
        port = parts.port or default_port
    except ValueError as exc:
        raise LabConfigError(f"URL {url!r} has an invalid port") from exc
    return parts.hostname, port


def with_host_port(url: str, host: str, port: int) -> str:
    """The same URL aimed at ``host:port`` (scheme, user info, path and query kept)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


OTLP_ENDPOINT_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
)


def otel_plan(
    environ: dict[str, str],
) -> tuple[dict[str, str], list[tuple[int, str, int]]]:
    """Which ``OTEL_*`` variables the nodes get, and which OTLP relays that needs.

    Returns ``(guest_env, relays)``: every ``OTEL_*`` variable of ``environ``, with each OTLP
    endpoint rewritten to the gateway address, and the relays as ``(lab_port, host, port)``
    (one per distinct host-side endpoint).
    """
    guest: dict[str, str] = {k: v for k, v in environ.items() if k.startswith("OTEL_")}
    relays: list[tuple[int, str, int]] = []
    by_target: dict[tuple[str, int], int] = {}
    for var in OTLP_ENDPOINT_VARS:
        value = environ.get(var, "").strip()
        if not value:
            continue
        scheme = urlsplit(value).scheme or "http"
        host, port = host_port(value, default_port=4317 if scheme == "grpc" else 4318)
        if (host, port) not in by_target:
            by_target[(host, port)] = OTLP_RELAY_FIRST_PORT + len(by_target)
            relays.append((by_target[(host, port)], host, port))
        guest[var] = with_host_port(value, GATEWAY_ADDRESS, by_target[(host, port)])
    return guest, relays


def env_file(values: dict[str, str]) -> str:
    """A shell fragment exporting ``values`` (sourced by the guest init script)."""
    lines = []
    for key, value in sorted(values.items()):
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise LabConfigError(f"environment variable name {key!r} is not valid")
        lines.append(f"export {key}={shlex.quote(value)}")
    return "\n".join(lines) + "\n"


def kernel_cmdline(
    *,
    lab: LabId,
    index: int,
    nics: int,
    mem_mb: int,
    init: str,
    uml_dir: str,
    node_dir: str,
) -> list[str]:
    """Arguments of ``linux.uml`` for one node: hostfs root, console on stdout, one vector
    NIC per tap (``vec0`` = future ``eth0``), and the node directory for the init script."""
    args = [
        f"umid={umid(lab, index)}",
        f"uml_dir={uml_dir}",
        f"mem={mem_mb}M",
        "rootfstype=hostfs",
        "rootflags=/",
        "rw",
        f"init={init}",
        "con=null",
        "ssl=null",
        "con0=null,fd:1",
    ]
    for nic in range(nics):
        args.append(f"vec{nic}:transport=tap,ifname={tap_name(lab, index, nic)}")
    args.append(f"L2LAB_NODE_DIR={node_dir}")
    return args
