"""The test kit itself: waits that name what they awaited, stops that end what they started."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.kit import stop_process, until, until_sync

IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " + (
    "print('ready', flush=True); time.sleep(60)"
)


def started(code: str, *args: str, new_session: bool = False) -> subprocess.Popen[str]:
    """``python -c code args``, once it printed ``ready``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


async def test_until_returns_what_the_check_gave_plain_or_async() -> None:
    calls: list[int] = []

    def third() -> int | None:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else None

    async def ready() -> str:
        return "yes"

    assert await until(third, every=0.01) == 3
    assert await until(ready) == "yes"


async def test_until_fails_naming_what_it_awaited() -> None:
    with pytest.raises(AssertionError, match=r"not met within 0\.1 s: the moon"):
        await until(lambda: False, timeout=0.1, what="the moon")
    with pytest.raises(AssertionError, match=r"lambda: len\(\"\"\) > 0"):
        await until(lambda: len("") > 0, timeout=0.1)  # the lambda's own source
    logs = ["nothing yet"]
    with pytest.raises(AssertionError, match="log: late line"):
        await until(lambda: logs.append("late line"), timeout=0.1, what=lambda: f"log: {logs[-1]}")


def test_until_sync_waits_and_fails_alike() -> None:
    start = time.monotonic()
    assert until_sync(lambda: time.monotonic() - start > 0.2, every=0.05)
    with pytest.raises(AssertionError, match=r"not met within 0\.1 s: never"):
        until_sync(lambda: None, timeout=0.1, what="never")


def test_stop_process_terminates_then_kills_what_ignores_sigterm() -> None:
    polite = started("import time; print('ready', flush=True); time.sleep(60)")
    assert stop_process(polite) == -signal.SIGTERM
    stubborn = started(IGNORES_SIGTERM)
    begun = time.monotonic()
    assert stop_process(stubborn, timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - begun < 10
    assert stop_process(stubborn) == -signal.SIGKILL  # already ended: left as it is


def test_stop_process_by_pid_and_by_process_group(tmp_path: Path) -> None:
    stubborn = started(IGNORES_SIGTERM)
    assert stop_process(stubborn.pid, timeout=0.5) == -signal.SIGKILL  # our child: reaped
    # A group leader whose child ignores SIGTERM as well: the whole group ends.
    leader = started(
        "import subprocess, sys; "
        f"c = subprocess.Popen([sys.executable, '-c', {IGNORES_SIGTERM!r}], stdout=-1); "
        "c.stdout.readline(); open(sys.argv[1], 'w').write(str(c.pid)); "
        "print('ready', flush=True); c.wait()",
        str(tmp_path / "child.pid"),
        new_session=True,
    )
    child = int((tmp_path / "child.pid").read_text())
    assert stop_process(leader, timeout=0.5, group=True) == -signal.SIGTERM
    until_sync(lambda: not running(child), timeout=10, what="the leader's child to end")


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
