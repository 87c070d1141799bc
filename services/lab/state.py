"""What a lab records in its state directory, and the processes it may stop.

``lab.json`` is written before each thing is started or created, so that ``lab down`` (or the
next ``lab up``) can remove it after a crash. A process is recorded with its start time (from
``/proc/<pid>/stat``) and executable, so a pid reused by an unrelated process is never
signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import msgspec

STATE_FILE = "lab.json"


class ProcRef(msgspec.Struct, kw_only=True):
    """A process the lab started: pid, start time (clock ticks after boot), executable."""

    pid: int
    start_time: int
    exe: str


class NodeState(msgspec.Struct, kw_only=True):
    """One node: its name, address, UML umid, taps and process (the UML session leader)."""

    name: str
    index: int
    address: str
    umid: str
    taps: list[str]
    dir: str
    proc: ProcRef | None = None
    boot_seconds: float | None = None


class LabState(msgspec.Struct, kw_only=True):
    """The whole lab, as recorded in ``<dir>/lab.json``."""

    lab_id: str
    dir: str
    netns: str
    phase: str  # booting | up | failed
    created: float
    nats_url: str = ""  # on 127.0.0.1 (or the --nats URL): what host-side tools use
    nats_url_inside: str = ""  # the relayed address the nodes use
    nats_owned: bool = False
    nats: ProcRef | None = None
    relay: ProcRef | None = None
    mgmt_vlan: int | None = None
    data_nics: int = 2
    mem_mb: int = 256
    executor: bool = False
    trust_keys: list[str] = msgspec.field(default_factory=list)  # the executors' --trust-key
    extra_taps: list[str] = msgspec.field(default_factory=list)
    nodes: list[NodeState] = msgspec.field(default_factory=list)
    otel_env: dict[str, str] = msgspec.field(default_factory=dict)


def load(directory: Path) -> LabState | None:
    """The recorded state, or None when the directory holds no lab."""
    path = directory / STATE_FILE
    if not path.exists():
        return None
    return msgspec.json.decode(path.read_bytes(), type=LabState)


def save(state: LabState) -> None:
    """Write ``lab.json`` atomically (a crash leaves the old or the new file, never half)."""
    path = Path(state.dir) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(state)))
    os.replace(tmp, path)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after its closing one.
    return raw[raw.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks after boot, or None if it does not exist."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def _session(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[3]) if fields else None


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def ref(pid: int) -> ProcRef:
    """Record a process the lab just started."""
    return ProcRef(pid=pid, start_time=start_time(pid) or 0, exe=_exe(pid))


def alive(proc: ProcRef | None) -> bool:
    """The recorded process still runs (same pid, same start time, not a zombie)."""
    if proc is None:
        return False
    fields = _stat_fields(proc.pid)
    if fields is None or fields[0] == "Z":
        return False
    return int(fields[19]) == proc.start_time


def session_members(leader: ProcRef) -> list[int]:
    """Processes still in the session that ``leader`` started (UML runs one host process per
    guest address space; they outlive a killed leader for a moment), identified by session
    id, executable and a start time not before the leader's."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        fields = _stat_fields(pid)
        if fields is None or int(fields[3]) != leader.pid or fields[0] == "Z":
            continue
        if int(fields[19]) < leader.start_time or _exe(pid) != leader.exe:
            continue
        found.append(pid)
    return found


def kill(proc: ProcRef | None, *, session: bool = False, grace: float = 0.0) -> None:
    """Stop a recorded process (SIGTERM, then SIGKILL after ``grace`` seconds); with
    ``session`` also every member of the session it leads. Unrelated pids are never hit."""
    if proc is None:
        return
    targets = session_members(proc) if session else []
    if alive(proc) and proc.pid not in targets:
        targets.append(proc.pid)
    if not targets:
        return
    if grace > 0:
        for pid in targets:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_running(p) for p in targets):
            time.sleep(0.05)
    for pid in targets:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_running(p) for p in targets):
        time.sleep(0.02)


def _running(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
