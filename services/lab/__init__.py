"""The lab: a fleet of user-mode Linux nodes on one machine (``l2net lab ...``).

Public API (see ``fleet.py``): :class:`Lab` (``Lab.up``, ``Lab.load``, ``lab.exec``,
``lab.aexec``, ``lab.down``), :class:`ExecResult`, :class:`LabError`, :func:`default_dir`,
:func:`down`, and the executor hook :func:`executor_command` / :func:`executor_available`.
The guest-side helper (``agent.py``) imports only ``protocol.py``, never this API.
"""

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
