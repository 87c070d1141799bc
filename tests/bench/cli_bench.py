"""How fast ``l2net`` starts: the parser alone (``--help``) and a whole command that gets its
answer at once (``l2net get`` on a NATS server where no planner runs: connect, ask, "no
planner answers"), against the Python floor of any l2net client, a process that imports
nats-py and msgspec (and, for the request, sends the same request with nats-py alone).

``l2net`` builds the parser of every command, so a command's start must not load the
services it does not run (pyroute2, the planner, the auditor, the lab): the ratios stay
near 1. Python's bytecode of l2net's modules is cached (in a temporary directory), as it
is for an installed l2net and for nats-py and msgspec: compiling l2net from source on each
start is not what a user waits for.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from shared.runtime import natsserver
from shared.wire import subjects
from tests.bench.common import Result, median_process_seconds

REPEAT = 9
L2NET = [sys.executable, "-m", "services.cli.main"]
IMPORTS = [sys.executable, "-c", "import nats, msgspec"]


def _plain_request(url: str) -> list[str]:
    """A nats-py client process sending ``l2net get``'s request where nobody answers."""
    return [
        sys.executable,
        "-c",
        "import asyncio, nats, msgspec\n"
        "async def main():\n"
        f"    nc = await nats.connect({url!r})\n"
        "    try:\n"
        f"        await nc.request({subjects.API_GET!r}, b'{{}}', timeout=5)\n"
        "    except nats.errors.NoRespondersError:\n"
        "        pass\n"
        "    await nc.drain()\n"
        "asyncio.run(main())\n",
    ]


def run() -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="l2net-bench-cli-") as tmp:
        server = natsserver.start(Path(tmp) / "nats")
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
            times = median_process_seconds(
                {
                    "imports": IMPORTS,
                    "help": [*L2NET, "--help"],
                    "get-help": [*L2NET, "get", "--help"],
                    "get": [*L2NET, "get", "--nats", server.url],
                    "plain-request": _plain_request(server.url),
                },
                repeat=REPEAT,
                env=env,
            )
        finally:
            server.stop()
    floor = "python -c 'import nats, msgspec'"
    return [
        Result("start: l2net --help", times["help"], times["imports"], floor, "s"),
        Result("start: l2net get --help", times["get-help"], times["imports"], floor, "s"),
        Result(
            "start to answer: l2net get, no planner running",
            times["get"],
            times["imports"],
            floor,
            "s",
        ),
        Result(
            "start to answer: l2net get, no planner running",
            times["get"],
            times["plain-request"],
            "the same request from a nats-py script",
            "s",
        ),
    ]
