"""The rule for l2net node names, in one place (standard library only).

A node name is a NATS subject token (``l2.intent.<node>``), the name of that node's NATS
user and durable consumer (``deploy/nats/render_accounts.py``), and, on Kubernetes, the
node's own name (the DaemonSet runs ``--node $(spec.nodeName)``). So it is a lowercase
RFC 1123 label, as the planner requires for ``VmNic.node``: ``a-z``, ``0-9`` and ``-``,
starting and ending with a letter or digit, at most 63 characters; no dots (a dot would
split the subject token), no upper case, no ``_``. The NATS users of the services
(:data:`RESERVED`) cannot be node names.

``deploy/nats/render_accounts.py`` imports this module without the rest of l2net, so it
must stay free of third-party imports.
"""

from __future__ import annotations

import re

NODE_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
MAX_NODE_NAME = 63
RESERVED = frozenset({"planner", "auditor", "operator", "sys"})
"""NATS user names of the services and the system account: not available as node names."""


def node_name_error(name: str, *, what: str = "node name") -> str | None:
    """What is wrong with ``name`` as a node name, or None when it is a valid one.

    ``what`` names the value in the message (e.g. ``--node``)."""
    if not name:
        return f"{what} must not be empty"
    if len(name) > MAX_NODE_NAME:
        return f"{what} {name!r} is {len(name)} characters; the limit is {MAX_NODE_NAME}"
    if not NODE_NAME_RE.fullmatch(name):
        return (
            f"{what} {name!r} is not a lowercase RFC 1123 label "
            "(a-z, 0-9 and '-', starting and ending with a letter or digit; no dots)"
        )
    if name in RESERVED:
        return f"{what} {name!r} is reserved for a service's NATS user"
    return None


def check_node_name(name: str) -> str:
    """``name`` when it is a valid node name, else ValueError saying what is wrong."""
    error = node_name_error(name)
    if error is not None:
        raise ValueError(error)
    return name
