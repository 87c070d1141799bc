"""What `l2net` prints: quiet when its reader goes away (`l2net audit | head`), and times as
ISO 8601 UTC."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time

from shared.runtime import natsserver
from tests.auditor.conftest import AuditorFactory, Bus, converged
from tests.auditor.test_service import REPO, mtu_1400
from tests.executor.labkit import seed_intent

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z")


def closed_pipe(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run `l2net ARGS` with its stdout closed by the reader before it prints (`| head -0`)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the command writes
    _, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, b"", err)


async def test_every_printing_command_is_quiet_on_a_closed_pipe(
    events: Bus, auditors: AuditorFactory, nats_server: natsserver.EmbeddedNats
) -> None:
    intent = seed_intent("node-1", 1)
    await events.intent(intent)
    await events.observed(converged(intent, at=time.time() - 5, change=mtu_1400))
    await auditors()
    url = ["--nats", nats_server.url]
    commands = [
        ["audit", "--cached", *url],
        ["audit", "--cached", "--json", *url],
        ["history", "node-1", *url],
        ["history", "node-1", "--generation", "1", *url],
        ["--help"],
    ]
    quiet = 0
    for args in commands:
        result = await asyncio.to_thread(closed_pipe, *args)
        # 141 as after SIGPIPE (argparse's own --help swallows the error: 0), nothing on stderr
        ok = result.stderr == b"" and result.returncode in (141, 0 if args == ["--help"] else 141)
        print(f"  l2net {' '.join(args[:3])}: exit {result.returncode} {result.stderr[-200:]!r}")
        quiet += ok
    print(f"commands quiet on a closed pipe: {quiet}/{len(commands)}")
    assert quiet == len(commands)


async def test_times_are_printed_as_iso_8601_utc(
    events: Bus, auditors: AuditorFactory, nats_server: natsserver.EmbeddedNats
) -> None:
    from tests.auditor.test_service import l2net

    intent = seed_intent("node-1", 1)
    await events.intent(intent)
    await events.observed(converged(intent, at=1_700_000_010.25, change=mtu_1400))
    await auditors()
    audit = await asyncio.to_thread(l2net, "audit", "--cached", url=nats_server.url)
    assert "[since 2023-11-14T22:13:30.250Z]" in audit.stdout, audit.stdout
    history = await asyncio.to_thread(l2net, "history", "node-1", url=nats_server.url)
    stamps = [line.split()[0] for line in history.stdout.splitlines()[1:-1]]
    assert stamps and all(ISO.fullmatch(s) for s in stamps), history.stdout
    assert not re.search(r"\b1[6-9]\d{8}(\.\d+)?\b", audit.stdout + history.stdout)  # no epochs


def test_a_time_rounds_to_the_millisecond_and_carries_into_the_next_second() -> None:
    from services.auditor.view import iso

    assert iso(1764558244.9996) == "2025-12-01T03:04:05Z"  # not 03:04:04, nearly a second early
    assert iso(1764558244.139) == "2025-12-01T03:04:04.139Z"
    assert iso(1764558244.0) == "2025-12-01T03:04:04Z"
    assert iso(None) == "-" and iso(1e300) == "1e+300"  # a hostile value printed, never a crash
