"""One node-name rule (shared/domain/names.py): the executor, render_accounts.py and the
planner agree.

A name the executor accepts must be one the NATS accounts can be written for (and the other
way round), and one the planner accepts for ``VmNic.node``; otherwise a node could run but
never be given a NATS user, or be given intents no executor may read.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.cli.main import main as l2net
from services.executor.cli import check_node_name
from services.executor.kernel import NetlinkKernel
from services.executor.service import Executor, ExecutorConfig
from services.planner.validation import check_object
from shared.domain import names
from shared.domain.model import VmNic

RENDER = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "render_accounts.py"

VALID = ["node-1", "n", "7", "host-l2t-0a1b2c", "a" * 63]
INVALID = {
    "Node-1": "not a lowercase RFC 1123 label",
    "node_1": "not a lowercase RFC 1123 label",
    "node-1.example.com": "not a lowercase RFC 1123 label",
    "-node": "not a lowercase RFC 1123 label",
    "node-": "not a lowercase RFC 1123 label",
    "node 1": "not a lowercase RFC 1123 label",
    "node-1\n": "not a lowercase RFC 1123 label",
    "a" * 64: "the limit is 63",
    "planner": "reserved for a service's NATS user",
    "sys": "reserved for a service's NATS user",
}


def render(name: str) -> subprocess.CompletedProcess[str]:
    # Run from another directory, as an operator would: the script finds shared/ by itself.
    return subprocess.run(
        [sys.executable, str(RENDER), name], capture_output=True, text=True, cwd="/"
    )


@pytest.mark.parametrize("name", VALID)
def test_a_valid_name_is_accepted_everywhere(name: str) -> None:
    assert names.node_name_error(name) is None
    check_node_name(name)  # the executor's --node
    vm_nic = VmNic(name="n", vm="vm1", node=name, network="x")
    assert not [p for p in check_object(vm_nic) if p.field == "node"]  # the planner's VmNic.node
    result = render(name)
    assert result.returncode == 0, result.stderr
    assert f"user: {name}\n" in result.stdout


@pytest.mark.parametrize(("name", "why"), sorted(INVALID.items()))
def test_an_invalid_name_is_refused_everywhere_with_the_same_reason(
    name: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = render(name)
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"node name {name!r}" in result.stderr and why in result.stderr

    with pytest.raises(ValueError, match=why):
        check_node_name(name)
    with pytest.raises(ValueError, match=why):  # the service itself, used as a library
        Executor(ExecutorConfig(node=name, servers=["nats://127.0.0.1:1"]), NetlinkKernel(name))
    assert l2net(["executor", f"--node={name}"]) == 2  # refused before connecting anywhere
    out = capsys.readouterr().out
    assert f"--node {name!r}" in out and why in out
    # The planner refuses it for VmNic.node too, with the same rule.
    vm_nic = VmNic(name="n", vm="vm1", node=name, network="x")
    assert any(p.field == "node" and why in p.message for p in check_object(vm_nic))
