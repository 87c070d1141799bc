"""``python -m services.executor.dump``: print this node's L2 state as the executor reads it.

JSON on stdout: every link (without ifindex and operational state, which the kernel changes
by itself), the VLANs of every bridge port, the namespaces and the VM NICs l2net plugged.
Two dumps are equal exactly when the node's L2 state is the same: what the rollback tests
compare, and a quick look for a person debugging a node.
"""

from __future__ import annotations

import asyncio
import sys

import msgspec

from services.executor.kernel import NetlinkKernel
from shared.domain.l2state import NodeL2State


def comparable(state: NodeL2State) -> dict[str, object]:
    """The state without what the kernel renumbers or flips by itself (index, operstate)."""
    return {
        "links": {
            name: msgspec.structs.replace(link, index=None, oper=None, bond_active=None)
            for name, link in sorted(state.links.items())
        },
        "vlans": dict(sorted(state.vlans.items())),
        "namespaces": state.namespaces,
        "vmPorts": {
            key: msgspec.structs.replace(port, host_ifname=None)
            for key, port in sorted(state.vm_ports.items())
        },
    }


async def _dump(netns: str | None) -> bytes:
    kernel = NetlinkKernel("local", netns=netns)
    try:
        return msgspec.json.format(msgspec.json.encode(comparable(await kernel.read())))
    finally:
        await kernel.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    netns = args[0] if args else None
    sys.stdout.write(asyncio.run(_dump(netns)).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
