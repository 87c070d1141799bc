"""Messages between the host and a node's lab helper (request/reply on NATS, JSON).

Kept to msgspec only: the helper imports this module inside the guest, where every import
costs (starting Python under user-mode Linux is slow). A lab tool, not part of l2net's
contract (docs/events.md): its requests refuse unknown fields like every request, and its
failures are ``ExecReply.error`` text.
"""

from __future__ import annotations

import msgspec

# Output beyond this (per stream) is cut, so that a reply fits the default 1 MiB NATS payload.
MAX_OUTPUT = 256 * 1024
# Standard input larger than this is refused (base64 in JSON must fit the payload limit).
MAX_STDIN = 512 * 1024


class ExecRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Run ``argv`` in the node (no shell), with ``stdin`` as input, for at most ``timeout``."""

    argv: list[str]
    timeout: float = 60.0
    stdin: bytes = b""


class ExecReply(msgspec.Struct, kw_only=True):
    """Exit code and output of a command; ``error`` is set when it could not run at all."""

    rc: int
    out: bytes = b""
    err: bytes = b""
    error: str = ""


class PingReply(msgspec.Struct, kw_only=True):
    """A node's answer to ``ping``: it runs, and it reached NATS over its mgmt address."""

    node: str
    address: str
    uptime: float
    helper_started: float
    mem_total_kb: int = 0
    mem_available_kb: int = 0
    executor: str = ""  # "" (not started by the lab), "running" or "exited"
