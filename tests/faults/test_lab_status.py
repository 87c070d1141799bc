"""``l2net lab status`` tells the truth: an executor whose process runs but that does not
answer on NATS is shown DISCONNECTED (and the command exits 1), not "running" and fine.

One lab node with its executor; the executor is frozen (SIGSTOP inside the node: its process
is there, its NATS connection answers nothing), then thawed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.lab import Lab
from tests.kit import lab_fixture
from tests.lab.conftest import lab_cli

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]


lab = lab_fixture("lab", nodes=1, data_nics=0, executor=True)


def node_line(stdout: str, node: str) -> str:
    return next(x for x in stdout.splitlines() if x.startswith(node + " "))


def signal_executor(lab: Lab, node: str, sig: str) -> None:
    # The node's helper runs commands in the node's directory, where executor.pid is.
    res = lab.exec(node, ["sh", "-c", f"kill -{sig} $(cat executor.pid)"])
    assert res.rc == 0, res


def test_lab_status_says_disconnected_when_the_executor_runs_but_does_not_answer(
    lab: Lab,
) -> None:
    truthful = 0
    states = ("connected", "frozen", "thawed")
    for state in states:
        if state == "frozen":
            signal_executor(lab, "node-1", "STOP")
        elif state == "thawed":
            signal_executor(lab, "node-1", "CONT")
        res = lab_cli("status", "--state-dir", str(Path(lab.dir)))
        line = node_line(res.stdout, "node-1")
        print(f"{state}: exit {res.returncode}: {line}")
        if state == "frozen":
            told = res.returncode == 1 and "running" in line and "DISCONNECTED" in line
        else:
            told = res.returncode == 0 and "running" in line and "connected (hb" in line
        truthful += told
    print(f"lab status truthful about the executor's connection: {truthful}/{len(states)}")
    assert truthful == len(states)
