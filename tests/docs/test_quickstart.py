"""docs/quickstart.md's own submission, typed as written, on one lab; then, on that lab, the
samples of auditor.md, events.md and executor.md that need converged nodes.

The session runs command by command with bash (``. .venv/bin/activate`` is the PATH the
test already has). Two changes, both forced by a shared machine: ``l2net up`` gets a free
``--port`` instead of 4222, and that URL replaces ``nats://127.0.0.1:4222`` in the other
commands and in the output the page shows. A lab that cannot boot fails these tests.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.lab import Lab
from services.lab.fleet import LabError
from shared.runtime import bus
from shared.wire import subjects
from tests.docs.session import DOCS, REPO, Shell, Step, base_env, fenced, session
from tests.kit import until_sync

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

DOC_URL = "nats://127.0.0.1:4222"
NODES = ("node-1", "node-2")


@dataclass
class Quickstart:
    """The session so far: the shell (jobs, environment), the real URL, what each printed."""

    shell: Shell
    url: str
    lab_dir: Path
    watch_job: int = 0
    ran: list[tuple[Step, subprocess.CompletedProcess[str]]] = field(default_factory=list)

    def local(self, text: str) -> str:
        return text.replace(DOC_URL, self.url)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(check: Callable[[], bool], what: str, timeout: float, shell: Shell) -> None:
    until_sync(check, timeout=timeout, what=lambda: f"{what}{shell.diagnostics()}", every=0.3)


def _answers(url: str, subject: str, body: bytes = b"") -> bool:
    async def ask() -> bool:
        try:
            nc = await bus.connect([url], name="docs-test-wait")
        except Exception:
            return False
        try:
            await nc.request(subject, body, timeout=1)
            return True
        except Exception:
            return False
        finally:
            await nc.drain()

    return asyncio.run(ask())


def _applied(shell: Shell, job: int, generation: int) -> bool:
    out = shell.output(job)
    return all(re.search(rf"{node}\s+status\s+gen {generation}\s+Applied", out) for node in NODES)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    tmp = tmp_path_factory.mktemp("quickstart")
    steps = session(fenced(DOCS / "quickstart.md", "console")[0])
    env = base_env(L2NET_STATE_DIR=str(tmp / "state"), L2NET_LAB_DIR=str(tmp / "lab"))
    shell = Shell(env=env, logs=tmp)
    qs = Quickstart(shell, f"nats://127.0.0.1:{_free_port()}", tmp / "lab")
    watch_job = 0
    rest: list[Step] = []
    try:
        for i, step in enumerate(steps):
            command = step.bare
            if command == "l2net lab down":
                rest = steps[i:]
                break
            if command == ". .venv/bin/activate":
                assert (REPO / ".venv" / "bin" / "activate").exists()
                continue
            if command == "l2net up &":
                shell.background(f"{command.rstrip('&')} --port {qs.url.rsplit(':', 1)[1]} &")
                _until(lambda: qs.url in shell.output(1), "l2net up to print its URL", 60, shell)
                assert shell.output(1).splitlines()[0] == qs.local(step.shown[0])
                continue
            if command.endswith("&"):
                shell.background(qs.local(command))
                if command.startswith("l2net planner"):
                    _until(lambda: _answers(qs.url, "l2.api.get"), "the planner", 60, shell)
                elif command.startswith("l2net auditor"):
                    _until(
                        lambda: _answers(qs.url, "l2.auditor.history", b'{"node": "x"}'),
                        "the auditor",
                        60,
                        shell,
                    )
                elif command.startswith("l2net watch"):
                    watch_job = len(shell.jobs)
                    qs.watch_job = watch_job
                    _until(
                        lambda: "watching" in shell.output(qs.watch_job), "l2net watch", 60, shell
                    )
                continue
            result = shell.run(qs.local(command))
            qs.ran.append((step, result))
            if command.startswith("l2net audit"):
                assert result.returncode == 0, result.stdout + result.stderr
            else:
                assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
            if command.startswith("l2net apply"):
                assert watch_job, "the page starts l2net watch before it submits"
                _until(lambda: _applied(shell, qs.watch_job, 2), "both nodes Applied", 240, shell)
        yield qs
    finally:
        try:
            for step in rest:
                if step.bare.startswith("kill "):
                    shell.kill(step.bare)
                else:
                    result = shell.run(qs.local(step.bare))
                    assert result.returncode == 0, f"{step.bare}: {result.stderr}"
                    assert result.stdout.splitlines() == step.shown, step.bare
        finally:
            shell.stop_all()
            with contextlib.suppress(LabError):
                Lab.load(qs.lab_dir).down()  # only if `lab down` above did not run


def test_your_own_submission_prints_what_the_page_shows(quickstart: Quickstart) -> None:
    qs = quickstart
    commands = [step.bare for step, _ in qs.ran]
    assert commands == [
        f"l2net lab up --nodes 2 --nats {DOC_URL}",
        "l2net apply -f docs/examples/seed.yaml",
        "l2net lab exec node-1 -- bridge vlan show dev oob-bo",
        "l2net audit",
    ]
    for step, result in qs.ran:
        got = [line.rstrip() for line in result.stdout.splitlines()]
        assert got == [qs.local(line) for line in step.shown], step.bare
    # What the prose says watch printed: Progressing with the plan, then Applied with writes.
    watched = qs.shell.output(qs.watch_job)
    for node in NODES:
        assert re.search(rf"{node}\s+status\s+gen 2\s+Progressing", watched), watched
        assert re.search(rf"{node}\s+status\s+gen 2\s+Applied \([1-9]\d* netlink writes", watched)


# --- auditor.md, on the converged lab -----------------------------------------------------


# How every l2net time prints: ISO 8601 UTC, with milliseconds when it has them.
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{3})?Z")


def _normalized(lines: list[str]) -> list[str]:
    """Times and generation numbers vary from run to run; the rest must not. A time is masked
    whole (date, time, any fraction), on the page and in the output alike, so the page must
    show the format the program prints."""
    out = []
    for line in lines:
        line = ISO_TIME.sub("TIME", line)
        line = re.sub(
            r"generation \d+ desired, \d+ applied", "generation N desired, N applied", line
        )
        out.append(line)
    return out


def test_audit_example_catches_the_drift_it_shows(quickstart: Quickstart) -> None:
    """auditor.md's `l2net audit` session, after making its two findings by hand on node-1."""
    qs = quickstart
    block = next(b for b in fenced(DOCS / "auditor.md", "console") if "$ l2net audit\n" in b)
    audit, echo = session(block)
    assert (audit.bare, echo.bare) == ("l2net audit", "echo $?")
    for cmd in (
        "l2net lab exec node-1 -- bridge vlan del dev oob-bo vid 200",
        "l2net lab exec node-1 -- ip link set oob-br mtu 1400",
    ):
        assert qs.shell.run(cmd).returncode == 0, cmd
    try:
        result = qs.shell.run(audit.bare)
        assert result.returncode == int(echo.shown[0]), result.stdout + result.stderr
        assert _normalized(result.stdout.splitlines()) == _normalized(audit.shown)
    finally:
        healed = qs.shell.run("l2net audit --heal")
    assert healed.returncode == 0, healed.stdout + healed.stderr

    # `l2net history node-1`: the page's kinds of lines, in its format, now with a heal.
    (block,) = [b for b in fenced(DOCS / "auditor.md", "console") if "$ l2net history" in b]
    (history,) = session(block)
    result = qs.shell.run(history.bare)
    assert result.returncode == 0, result.stderr
    got, shown = result.stdout.splitlines(), history.shown
    assert got[0] == shown[0] and got[-1].startswith("matches its desired state since ")
    line = re.compile(rf"  {ISO_TIME.pattern}  (\w+) +(gen \d+)? *(.*)")
    kinds = [m.group(1) for m in map(line.fullmatch, got[1:-1]) if m]
    assert len(kinds) == len(got) - 2, got
    assert {m.group(1) for m in map(line.fullmatch, shown[1:-1]) if m} <= set(kinds)
    assert any("heal: asked node-1 to re-converge" in g for g in got)


def test_auditor_python_sample_runs_on_the_lab(quickstart: Quickstart) -> None:
    """auditor.md's Python sample (top-level ``await``: run in a coroutine with ``nc``, ``lab``)."""
    (sample,) = fenced(DOCS / "auditor.md", "python")
    code = (
        "import asyncio\nfrom services.lab import Lab\nfrom shared.runtime import bus\n\n"
        "async def main(url, lab_dir):\n"
        "    nc = await bus.connect([url], name='docs-sample')\n"
        "    lab = Lab.load(lab_dir)\n"
        + textwrap.indent(sample, "    ")
        + "    print('RESULT', ok, len(items), reply.ok)\n"
        "    await nc.drain()\n\n"
        "import sys\nasyncio.run(main(sys.argv[1], sys.argv[2]))\n"
    )
    ast.parse(code)
    result = subprocess.run(
        [sys.executable, "-c", code, quickstart.url, str(quickstart.lab_dir)],
        cwd=REPO,
        env=quickstart.shell.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "RESULT True 0 True", result.stdout[-3000:]
    assert "no drift" in result.stdout


# --- events.md and executor.md, on the converged lab ------------------------------------


def run_events_sample(quickstart: Quickstart, needle: str) -> subprocess.CompletedProcess[str]:
    """Run the one Python sample of events.md that mentions ``needle``, as written."""
    samples = fenced(DOCS / "events.md", "python")
    (sample,) = [s for s in samples if needle in s]
    return subprocess.run(
        [sys.executable, "-c", quickstart.local(sample)],
        cwd=REPO,
        env=quickstart.shell.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_events_auditor_sample_prints_each_node(quickstart: Quickstart) -> None:
    result = run_events_sample(quickstart, "l2.auditor.check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{n} generation 2 0 findings" for n in NODES]


def test_reconcile_converges_a_node_again(quickstart: Quickstart) -> None:
    """executor.md: `l2net reconcile NODE` prints the status, exit 0 when Applied."""
    result = quickstart.shell.run("l2net reconcile node-2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Applied" in result.stdout
    assert "node-2" in result.stdout
    reply = json.loads(quickstart.shell.run("l2net audit node-2 --json").stdout)
    assert reply["nodes"][0]["items"] == []


def test_module_entry_points_the_docs_name(quickstart: Quickstart) -> None:
    """executor.md's ``python -m services.executor.dump`` (in a node: its L2 state as JSON)
    and lab.md's ``python -m services.lab status`` (the same as ``l2net lab status``)."""
    result = quickstart.shell.run(
        f"l2net lab exec node-1 -- {sys.executable} -m services.executor.dump"
    )
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    assert "oob-bo" in json.dumps(state) and "mgmt-br" in json.dumps(state)
    lab = quickstart.shell.run(f"{sys.executable} -m services.lab status")
    cli = quickstart.shell.run("l2net lab status")
    assert lab.returncode == cli.returncode == 0, lab.stderr + cli.stderr
    assert [ln.split()[0] for ln in lab.stdout.splitlines() if ln.startswith("node-")] == [
        "node-1",
        "node-2",
    ]


def test_events_status_sample_prints_each_nodes_last_status(quickstart: Quickstart) -> None:
    result = run_events_sample(quickstart, "l2.status.*")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [f"{n} Applied generation 2" for n in NODES]
    # The `nats` CLI line (not installable here) subscribes to exactly those subjects.
    (line,) = [b.strip() for b in fenced(DOCS / "events.md", "console") if "nats sub" in b]
    assert line == f"nats sub '{subjects.ALL_STATUS}'"


def test_auditor_options_the_page_lists(quickstart: Quickstart) -> None:
    """auditor.md: ``--cached`` answers from the last reports; ``history --generation G``
    prints the desired state at G and when the node matched it; ``--json`` both."""
    cached = quickstart.shell.run("l2net audit --cached")
    assert cached.returncode == 0, cached.stdout + cached.stderr
    assert [ln.split(":")[0] for ln in cached.stdout.splitlines()] == list(NODES)
    shown = quickstart.shell.run("l2net history node-1 --generation 2 --json")
    assert shown.returncode == 0, shown.stderr
    reply = json.loads(shown.stdout)
    assert reply["intent"]["generation"] == 2 and reply["intent"]["node"] == "node-1"
    assert {cn["name"] for cn in reply["intent"]["clusterNetworks"]} == {"mgmt", "oob"}
    assert "matchingSince" in reply and "lastMatched" in reply
    old = quickstart.shell.run("l2net history node-1 --generation 1")
    assert old.returncode == 0, old.stderr
    first = json.loads(old.stdout)["intent"]  # before the submission: mgmt only
    assert [cn["name"] for cn in first["clusterNetworks"]] == ["mgmt"]
