"""Lab fixtures: one real user-mode Linux lab per test module, booted by the real CLI.

Other test areas boot theirs with :func:`tests.kit.lab_fixture` (the Python API, ``Lab.up``);
this area boots through ``l2net lab up`` because the command is what it tests. A lab that
cannot boot makes the tests FAIL, never skip: CI must not pass without the kernel features
under test.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.lab import Lab

REPO = Path(__file__).resolve().parents[2]


def lab_cli(
    *args: str, timeout: float = 300.0, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``l2net lab ARGS`` (as ``python -m services.lab``), capturing its output.

    ``capture_output`` also proves ``up`` detaches: if a node or helper kept the command's
    stdout open, this call would hang until the timeout instead of returning.
    """
    return subprocess.run(
        [sys.executable, "-m", "services.lab", *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class BootedLab:
    """The module's lab and what ``lab up`` printed."""

    def __init__(self, lab: Lab, up: subprocess.CompletedProcess[str]) -> None:
        self.lab = lab
        self.up = up


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedLab]:
    """Two nodes, four data NICs each (three switches), no executor, via ``lab up``."""
    directory = tmp_path_factory.mktemp("lab")
    up = lab_cli(
        "up", "--nodes", "2", "--data-nics", "4", "--no-executor", "--state-dir", str(directory)
    )
    try:
        assert up.returncode == 0, f"lab up failed:\n{up.stdout}\n{up.stderr}"
        lab = Lab.load(directory)
        yield BootedLab(lab, up)
    finally:
        lab_cli("down", "--state-dir", str(directory), timeout=60)


@pytest.fixture(scope="module")
def lab(booted: BootedLab) -> Lab:
    """The module's running lab (Python API)."""
    return booted.lab
