"""The lab: a fleet of user-mode Linux nodes on one machine (``l2net lab ...``).

Public API (see ``fleet.py``): :class:`Lab` (``Lab.up``, ``Lab.load``, ``lab.exec``,
``lab.aexec``, ``lab.down``), :class:`ExecResult`, :class:`LabError`, :func:`default_dir`,
:func:`down`, and the executor hook :func:`executor_command` / :func:`executor_available`.
The guest-side helper (``agent.py``) imports only ``protocol.py``, never this API.

``fleet`` (with nats-py and the relays) is imported on first use of one of these names, not
with the package: ``l2net`` imports ``services.lab.cli`` to build its parser.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.lab.fleet import (
        ExecResult,
        Lab,
        LabError,
        NodeStatus,
        default_dir,
        down,
        executor_available,
        executor_command,
    )

__all__ = [
    "ExecResult",
    "Lab",
    "LabError",
    "NodeStatus",
    "default_dir",
    "down",
    "executor_available",
    "executor_command",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("services.lab.fleet"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
