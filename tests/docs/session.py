"""Run the shell sessions of docs/ as written: parse fenced blocks, run commands, keep jobs.

A ``console`` block is a session: ``$ command`` lines, each followed by the output the page
shows (compared by the tests). A ``bash``/``sh`` block is a script: one command per line.
:class:`Shell` runs commands with bash in the repository, in one environment that
``export`` lines change, and keeps ``... &`` commands as jobs (``%1``, ``%2``, ...) that
``kill %N`` stops by the pid it recorded.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.kit import stop_process

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
VENV_BIN = Path(sys.executable).parent


def fenced(page: Path, lang: str) -> list[str]:
    """The fenced blocks of ``page`` tagged ``lang`` (indented ones too), dedented."""
    found = re.findall(r"^( *)```" + lang + r"\n(.*?)^\1```", page.read_text(), re.S | re.M)
    return [
        "\n".join(line[len(indent) :] for line in body.splitlines()) + "\n"
        for indent, body in found
    ]


@dataclass
class Step:
    """One ``$ command`` of a console session and the output lines the page shows."""

    command: str
    shown: list[str] = field(default_factory=list)

    @property
    def bare(self) -> str:
        """The command without its trailing comment."""
        return strip_comment(self.command)


def strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` after a blank, outside quotes)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].strip()
    return line.strip()


def session(block: str) -> list[Step]:
    """The steps of a console block."""
    steps: list[Step] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append(Step(line[2:]))
        elif steps:
            steps[-1].shown.append(line)
    return steps


def script(block: str) -> list[str]:
    """The commands of a bash/sh block (comments and blank lines dropped)."""
    return [c for c in (strip_comment(line) for line in block.splitlines()) if c]


def base_env(**extra: str) -> dict[str, str]:
    """The test's environment without OTEL_*/NATS_* and with the venv's bin first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "NATS_"))}
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    return env | extra


@dataclass
class Shell:
    """Runs commands as a user would type them, with jobs and exports kept."""

    env: dict[str, str]
    logs: Path
    jobs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self, command: str, *, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run one command line with bash; ``export`` lines update the environment."""
        if command.startswith("export "):
            out = subprocess.run(
                ["bash", "-c", f"{command} && env -0"],
                env=self.env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            assert out.returncode == 0, f"{command}: {out.stderr}"
            self.env = dict(kv.split("=", 1) for kv in out.stdout.split("\0") if "=" in kv)
            return out
        return subprocess.run(
            ["bash", "-c", command],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def background(self, command: str) -> subprocess.Popen[bytes]:
        """Start ``command`` (without its ``&``) as the next job; output in a log file."""
        n = len(self.jobs) + 1
        log = (self.logs / f"job{n}.log").open("wb")
        proc = subprocess.Popen(
            shlex.split(command.rstrip("&").strip()),
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.jobs.append(proc)
        return proc

    def output(self, job: int) -> str:
        """What job ``%job`` printed so far."""
        return (self.logs / f"job{job}.log").read_text(errors="replace")

    def diagnostics(self) -> str:
        """The tail of every job's output, for failure messages."""
        return "".join(
            f"\n--- job %{n} {p.args!r} (exit {p.poll()})\n{self.output(n)[-2000:]}"
            for n, p in enumerate(self.jobs, 1)
        )

    def kill(self, command: str) -> None:
        """``kill %N ...``: SIGTERM each job by its recorded pid, in the order given."""
        for word in command.split()[1:]:
            assert word.startswith("%"), command
            stop_process(self.jobs[int(word[1:]) - 1])  # SIGTERM: services flush spans

    def stop_all(self) -> None:
        for proc in reversed(self.jobs):
            stop_process(proc)
