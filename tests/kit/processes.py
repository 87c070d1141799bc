"""Stopping a process a test started: SIGTERM (services flush and exit cleanly), a bounded
wait, then SIGKILL. Always by the pid recorded when it was started (or the process group it
leads), never by a name or a pattern: other jobs run on the same machine."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any, overload


@overload
def stop_process(
    proc: subprocess.Popen[Any], *, timeout: float = 30.0, group: bool = False
) -> int: ...
@overload
def stop_process(proc: int, *, timeout: float = 30.0, group: bool = False) -> int | None: ...
def stop_process(
    proc: subprocess.Popen[Any] | int, *, timeout: float = 30.0, group: bool = False
) -> int | None:
    """Stop ``proc`` (a :class:`subprocess.Popen`, or the pid of a child of this process):
    SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. ``group``: signal the whole process
    group ``proc`` leads (it was started with ``start_new_session=True``).

    Returns the exit code (negative: the signal that ended it; None for a pid that is not
    this process's child). A process already ended is left as it is (with ``group``, what
    remains of its group is still stopped).
    """
    pid = proc if isinstance(proc, int) else proc.pid

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    if isinstance(proc, int):
        code = _stop_pid(pid, send, timeout)
    elif proc.poll() is not None and not group:
        return proc.returncode
    else:
        send(signal.SIGTERM)
        try:
            _wait(proc, timeout)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            _wait(proc, None)
        code = proc.returncode
    # The leader may end first: the group is stopped when none of its members runs.
    if group and not _ended(lambda: bool(_group_members(pid)), timeout):
        send(signal.SIGKILL)
        if not _ended(lambda: bool(_group_members(pid)), 10):
            raise AssertionError(f"process group {pid} still runs after SIGKILL")
    return code


def _wait(proc: subprocess.Popen[Any], timeout: float | None) -> None:
    # A process writing into a pipe nobody reads would block on exit: read (and drop) it.
    if proc.stdout is not None or proc.stderr is not None:
        proc.communicate(timeout=timeout)
    else:
        proc.wait(timeout=timeout)


def _stop_pid(pid: int, send: Callable[[signal.Signals], None], timeout: float) -> int | None:
    send(signal.SIGTERM)
    if not _ended(lambda: _running(pid), timeout):
        send(signal.SIGKILL)
        if not _ended(lambda: _running(pid), 10):
            raise AssertionError(f"pid {pid} still runs after SIGKILL")
    with contextlib.suppress(ChildProcessError):  # our child: reap it, and tell how it ended
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)
    return None


def _ended(running: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while running():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _state(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie has ended; it awaits its
    parent's wait)."""
    fields = _state(pid)
    return fields is not None and fields[0] != "Z"


def _group_members(pgid: int) -> list[int]:
    """The processes of group ``pgid`` still running (zombies have ended)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _state(int(entry))
            if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry))
    return members
