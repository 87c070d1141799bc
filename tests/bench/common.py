"""What every benchmark part shares: timing loops and the result record."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tests import keys


@dataclass
class Result:
    """l2net against a baseline, measured in the same run: ``ratio`` = l2net / baseline."""

    name: str
    l2net: float
    baseline: float
    baseline_name: str
    unit: str

    @property
    def ratio(self) -> float:
        return self.l2net / self.baseline if self.baseline else float("inf")

    def line(self) -> str:
        return (
            f"{self.name}: l2net {self.l2net:.4g} {self.unit}, {self.baseline_name} "
            f"{self.baseline:.4g} {self.unit}, ratio {self.ratio:.2f}"
        )

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "ratio": round(self.ratio, 3)}


async def median_seconds(fn: Callable[[], Awaitable[object]], *, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def median_process_seconds(
    commands: dict[str, list[str]], *, repeat: int, env: dict[str, str] | None = None
) -> dict[str, float]:
    """Wall time from start to exit of each command (output discarded), median of
    ``repeat`` runs after one run that is not counted (it warms the file and bytecode
    caches); the commands take turns, so that a busy moment of the machine falls on all of
    them alike."""
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for round in range(repeat + 1):
        for name, argv in commands.items():
            start = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            if round > 0:
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def service_memory(
    name: str, service: str, url: str, *, settle: float, args: tuple[str, ...] = ()
) -> Result:
    """Resident memory of ``l2net <service> --nats URL [args]`` against a plain nats-py
    client process connected to the same server, both read after ``settle`` seconds."""
    argv = [sys.executable, "-m", "services.cli.main", service, "--nats", url, *args]
    if service == "planner":  # it signs intents: the tests' key, in a private file
        seed = Path(tempfile.mkdtemp(prefix="l2net-bench-")) / "signing.seed"
        seed.write_text(keys.SEED + "\n")
        seed.chmod(0o600)
        argv += ["--signing-key", str(seed)]
    l2 = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    plain = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, nats\n"
            "async def m():\n"
            f"    nc = await nats.connect('{url}')\n"
            "    await asyncio.sleep(60)\n"
            "asyncio.run(m())",
        ]
    )
    try:
        time.sleep(settle)
        return Result(
            name,
            rss_kb(l2.pid) / 1024,
            rss_kb(plain.pid) / 1024,
            "plain nats-py client process",
            "MiB",
        )
    finally:
        for proc in (l2, plain):
            proc.terminate()
            proc.wait(timeout=10)
