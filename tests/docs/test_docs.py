"""docs/ matches the code: generated schemas, manifests that parse, commands that print what
the page shows, and the plain nats-py sample that submits."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from services.cli import schemas
from services.planner import manifests
from shared.runtime.natsserver import EmbeddedNats
from tests.cli.test_cli import _register_nodes, _wait_for_planner, l2net
from tests.kit import stop_process

DOCS = Path(__file__).resolve().parents[2] / "docs"
ROOT = DOCS.parent


def blocks(page: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", page.read_text(), re.S)


def test_committed_schemas_are_what_the_code_generates() -> None:
    generated = schemas.render_all()
    on_disk = {p.name: p.read_text() for p in (DOCS / "reference" / "schemas").glob("*.json")}
    assert on_disk == generated, "run: python -m services.cli.schemas docs/reference/schemas"


def test_every_manifest_in_the_kinds_guide_parses() -> None:
    found = blocks(DOCS / "kinds.md", "yaml")
    assert found
    for text in found:
        manifests.parse(text)


def test_cli_example_session_prints_what_the_page_shows(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    session = blocks(DOCS / "cli.md", "console")[0]
    steps: list[tuple[str, list[str]]] = []
    for line in session.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:].split("#")[0].strip(), []))
        elif steps:
            steps[-1][1].append(line)
    proc = _start_planner(nats_server.url, tmp_path)
    try:
        _register_nodes(nats_server.url, ("node-1",))
        ran = 0
        for command, expected in steps:
            if command.endswith("&"):
                continue  # `l2net up &` and `l2net planner &`: started by the test
            args = command.split()[1:]
            result = l2net(*args, url=nats_server.url)
            assert result.returncode == 0, (command, result.stderr)
            assert result.stdout.splitlines() == expected, command
            ran += 1
        assert ran == 4
    finally:
        stop_process(proc, timeout=10)


def _start_planner(url: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    log = (tmp_path / "planner.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "planner", "--nats", url],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    _wait_for_planner(url)
    return proc


def test_plain_nats_py_sample_submits(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    (sample,) = [b for b in blocks(DOCS / "events.md", "python") if "l2.api.apply" in b]
    assert "import l2net" not in sample and "from shared" not in sample
    sample = sample.replace("nats://127.0.0.1:4222", nats_server.url)
    proc = _start_planner(nats_server.url, tmp_path)
    try:
        result = subprocess.run(
            [sys.executable, "-c", sample],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            env=dict(os.environ),
        )
    finally:
        stop_process(proc, timeout=10)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("True None") or result.stdout.startswith("True [")


def test_rejection_example_of_the_kinds_guide_is_what_apply_prints(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """kinds.md's rejected submission: the seed, then two bad documents placed where the
    page's lines say (document 6 at line 33, document 7 at line 38), sent on stdin."""
    (shown,) = blocks(DOCS / "kinds.md", "text")
    manifest = (ROOT / "docs" / "examples" / "seed.yaml").read_text() + (
        "---\nkind: Network\nname: n1\nclusterNetwork: oob\nvlan: 0\n"
        "---\nkind: VmNic\nname: x\nvm: vm1\nnode: node-1\nnetwork: vlan200\nmac: nope\n"
    )
    proc = _start_planner(nats_server.url, tmp_path)
    try:
        _register_nodes(nats_server.url, ("node-1",))
        result = l2net("apply", "-f", "-", url=nats_server.url, stdin=manifest)
        stored = l2net("get", "Network", url=nats_server.url)
    finally:
        stop_process(proc, timeout=10)
    assert result.returncode == 1
    assert (result.stdout + result.stderr).splitlines() == shown.splitlines()
    assert "vlan200" not in stored.stdout, "a rejected submission stores nothing"
