"""docs/lab.md as written, on the lab its quick start boots: the quick start, the VMs made by
hand with a ping between nodes, and the Python API block run against that lab.

``make deps`` (the quick start's first line) is what ``make test`` ran before the tests;
``PORT`` in ``export NATS_URL=...`` is the port ``l2net lab up`` printed. A lab that cannot
boot fails this test: it never skips it.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from services.lab import Lab
from services.lab.fleet import LabError
from tests.docs.session import DOCS, REPO, Shell, base_env, fenced, script

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

PAGE = DOCS / "lab.md"


def _expected(comment: str) -> Any:
    """The value a ``# comment`` in the API block starts with, if it is a string or list
    literal (``"nats://127.0.0.1:PORT" (host side)``)."""
    found = re.match(r'\s*("[^"]*"|\[[^\]]*\])', comment)
    if found is None:
        return None
    with contextlib.suppress(ValueError):  # e.g. [NodeStatus(name, ...)]: a description
        return ast.literal_eval(found.group(1))
    return None


def _same(value: Any, shown: Any) -> bool:
    if isinstance(shown, str):
        return re.fullmatch(re.escape(shown).replace("PORT", r"\d+"), str(value)) is not None
    if isinstance(shown, list):
        return list(value)[: len(shown)] == shown  # the page shows a 2-node lab
    return bool(value == shown)


def run_api_block(lab_dir: Path) -> list[str]:
    """Run the page's Python API block statement by statement on the running lab; return
    the statements checked against the value their comment shows."""
    (block,) = fenced(PAGE, "python")
    lines = block.splitlines()
    tree = ast.parse(block.replace("await ", ""))  # positions only; run with await below
    ns: dict[str, Any] = {"directory": lab_dir}
    checked: list[str] = []
    for stmt in tree.body:
        source = "\n".join(lines[stmt.lineno - 1 : stmt.end_lineno])
        code_part, _, comment = source.partition("  #")
        if "Lab.up(" in source:
            _check_up_signature(stmt)
            continue
        if "lab.down()" in source:
            continue  # the quick start's `l2net lab down` ends the lab
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        if isinstance(stmt, ast.Expr):
            value = eval(compile(code_part.strip(), "lab.md", "eval", flags=flags), ns)
            if inspect.iscoroutine(value):
                value = asyncio.run(value)
            shown = _expected(comment)
            if shown is not None:
                assert _same(value, shown), (source, value)
                checked.append(code_part.strip())
            continue
        result = eval(compile(code_part, "lab.md", "exec", flags=flags), ns)
        if inspect.iscoroutine(result):
            asyncio.run(result)
    return checked


def _check_up_signature(stmt: ast.stmt) -> None:
    """The page's ``Lab.up(...)`` spells every keyword and default of the real one."""
    assert isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Call)
    shown = {str(k.arg): k.value for k in stmt.value.keywords}
    params = inspect.signature(Lab.up).parameters
    assert set(shown) == set(params)
    for name, node in shown.items():
        if name == "directory":
            continue
        assert ast.literal_eval(node) == params[name].default, name


def test_the_lab_guide_runs_as_written(tmp_path: Path) -> None:
    quick, by_hand = fenced(PAGE, "sh")
    commands = script(quick)
    assert commands[0] == "make deps"
    assert "\ndeps:" in (REPO / "Makefile").read_text()
    lab_dir = tmp_path / "lab"
    shell = Shell(env=base_env(L2NET_LAB_DIR=str(lab_dir)), logs=tmp_path)
    url = ""
    try:
        for command in commands[1:]:
            if command == "l2net lab down":
                _by_hand(shell, by_hand)
                checked = run_api_block(lab_dir)
                assert len(checked) >= 4, checked
            if command.startswith("export NATS_URL="):
                assert command == "export NATS_URL=nats://127.0.0.1:PORT"
                command = f"export NATS_URL={url}"
            result = shell.run(command)
            assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
            if command.startswith("l2net lab up"):
                last = result.stdout.splitlines()[-1]
                assert re.fullmatch(r"NATS_URL=nats://127\.0\.0\.1:\d+", last), result.stdout
                url = last.split("=", 1)[1]
            elif command == "l2net lab status":
                assert all(f"node-{i}" in result.stdout for i in (1, 2, 3)), result.stdout
            elif command == "l2net lab exec node-1 -- ip -br link":
                assert {"eth0", "eth1", "eth2", "mgmt-bo", "mgmt-br"} <= {
                    line.split()[0].split("@")[0] for line in result.stdout.splitlines()
                }
            elif command == "l2net lab exec node-2 -- bridge vlan show":
                assert "mgmt-bo" in result.stdout and "PVID" in result.stdout
        with pytest.raises(LabError):
            Lab.load(lab_dir)  # `l2net lab down` left nothing behind
    finally:
        with contextlib.suppress(LabError):
            Lab.load(lab_dir).down()


def _by_hand(shell: Shell, block: str) -> None:
    """The VMs made by hand: node-1 as shown, "the same on node-2", then the ping."""
    first, rest = block.split("# the same on node-2 with 169.254.100.2, then:\n")
    result = shell.run(first)
    assert result.returncode == 0, result.stderr
    node2 = first.replace("node-1", "node-2").replace("169.254.100.1/", "169.254.100.2/")
    result = shell.run(node2)
    assert result.returncode == 0, result.stderr
    (ping,) = script(rest)
    result = shell.run(ping)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 packets transmitted, 3 received" in result.stdout
