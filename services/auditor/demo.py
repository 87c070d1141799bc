"""The end of ``make demo``: one drift made by hand, caught by ``l2net audit``, then healed.

The demo (``services/cli/demo.py``) starts an :class:`~services.auditor.service.Auditor`
in report-only mode next to the planner, and after the fleet converged calls::

    ok = await drift_and_heal(nc, node="node-1", run=lab.aexec)

``run`` runs a command inside a node (``Lab.aexec`` has the right shape) and returns its
exit code, stdout and stderr. Everything printed goes through ``say`` (default ``print``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from nats.aio.client import Client

from services.auditor.client import AuditError, check
from services.auditor.report import format_audit
from shared.wire.auditor_api import CheckReply

RunInNode = Callable[[str, Sequence[str]], Awaitable[Any]]
"""``run(node, argv)`` -> ``(rc, stdout, stderr)`` (e.g. ``Lab.aexec``)."""

DEFAULT_DRIFT = ("bridge", "vlan", "del", "dev", "oob-bo", "vid", "200")
"""The hand-made change: VLAN 200 taken off the oob uplink bond (VLAN 200 VMs cut off)."""


async def wait_for_drift(
    nc: Client, node: str, *, timeout: float = 60.0, interval: float = 0.5
) -> CheckReply:
    """Check ``node`` live until the auditor reports drift on it (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        reply = await check(nc, node)
        if not reply.ok or reply.drift or time.monotonic() > deadline:
            return reply
        await asyncio.sleep(interval)


async def drift_and_heal(
    nc: Client,
    *,
    node: str,
    run: RunInNode,
    drift: Sequence[str] = DEFAULT_DRIFT,
    say: Callable[[str], None] = print,
    timeout: float = 60.0,
) -> bool:
    """Make ``drift`` by hand in ``node``, show the audit catching it, heal, show it clean.

    True when the node is clean after the heal. Raises AuditError when no auditor answers,
    the command fails, or the drift is never seen.
    """
    say(f"$ l2net lab exec {node} -- {' '.join(drift)}    # a change by hand, behind l2net")
    rc, _out, err = await run(node, list(drift))
    if rc != 0:
        raise AuditError(f"{node}: {' '.join(drift)} failed ({rc}): {err.strip()}")
    say(f"$ l2net audit {node}")
    reply = await wait_for_drift(nc, node, timeout=timeout)
    say(format_audit(reply))
    if not reply.ok or not reply.drift:
        raise AuditError(f"the auditor did not see the change on {node} within {timeout:g}s")
    say("exit code 2: drift")
    say(f"$ l2net audit {node} --heal    # ask the executor to re-converge, then check again")
    healed = await check(nc, node, heal=True, timeout=180.0)
    say(format_audit(healed))
    say("exit code 0: no drift" if healed.ok and not healed.drift else "exit code 2: drift")
    return healed.ok and not healed.drift
