"""deploy/systemd: ``systemd-analyze verify`` passes on the units; hardening is what we claim.

The units start ``/opt/l2net/bin/l2net`` (the documented install path); verify checks that the
command exists, so the test verifies copies pointing at this checkout's ``l2net`` instead.
Nothing is started: systemd-analyze reads unit files offline.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
UNITS = ["l2net-planner.service", "l2net-auditor.service", "l2net-executor@.service"]
INSTALLED = "/opt/l2net/bin/l2net"


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze not found: `make deps` installs the Debian package systemd")
    return found


def local_l2net() -> str:
    here = Path(sys.executable).parent / "l2net"
    assert here.exists(), f"{here} missing: install the project (make deps)"
    return str(here)


def copy_units(dest: Path, *, drop_in: bool = False) -> Path:
    for unit in UNITS:
        text = (SYSTEMD_DIR / unit).read_text()
        (dest / unit).write_text(text.replace(INSTALLED, local_l2net()))
    if drop_in:
        d = dest / "l2net-executor@.service.d"
        d.mkdir()
        shutil.copy(SYSTEMD_DIR / "cni-netns.conf", d / "cni-netns.conf")
    return dest


def verify(dir: Path, unit: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [analyze(), "verify", "--man=no", unit],
        cwd=dir,
        capture_output=True,
        text=True,
    )


def exposure(dir: Path, unit: str) -> float:
    result = subprocess.run(
        [analyze(), "security", "--offline=true", "--no-pager", unit],
        cwd=dir,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout[-500:]
    return float(match.group(1))


def directives(unit: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (SYSTEMD_DIR / unit).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.mark.parametrize("unit", UNITS)
def test_units_verify_cleanly(tmp_path: Path, unit: str) -> None:
    result = verify(copy_units(tmp_path), unit)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # unknown keys are only warnings


def test_executor_with_the_cni_drop_in_verifies(tmp_path: Path) -> None:
    result = verify(copy_units(tmp_path, drop_in=True), "l2net-executor@.service")
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a typo and a missing command are reported."""
    copy_units(tmp_path)
    unit = tmp_path / "l2net-planner.service"
    unit.write_text(unit.read_text().replace("ProtectSystem=", "ProtectSytem=", 1))
    assert "Unknown key 'ProtectSytem'" in verify(tmp_path, unit.name).stderr
    (tmp_path / "l2net-auditor.service").write_text(
        (SYSTEMD_DIR / "l2net-auditor.service").read_text()
    )  # still pointing at /opt/l2net, which this machine does not have
    result = verify(tmp_path, "l2net-auditor.service")
    assert result.returncode != 0
    assert f"Command {INSTALLED} is not executable" in result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_units_run_the_installed_l2net_as_a_dynamic_user(unit: str) -> None:
    d = directives(unit)
    assert d["ExecStart"][0].split()[0] == INSTALLED
    assert d["DynamicUser"] == ["yes"]
    assert d["NoNewPrivileges"] == ["yes"]
    assert d["ProtectSystem"] == ["strict"]
    assert d["ProtectHome"] == ["yes"]


def test_executor_instance_is_the_node_and_it_holds_only_net_admin() -> None:
    d = directives("l2net-executor@.service")
    assert d["ExecStart"] == [f"{INSTALLED} executor --node %i"]
    assert d["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
    assert d["AmbientCapabilities"] == ["CAP_NET_ADMIN"]
    assert "AF_NETLINK" in d["RestrictAddressFamilies"][0].split()
    assert "PrivateNetwork" not in d, "the executor configures the host's own network"


def test_planner_and_auditor_hold_no_capabilities() -> None:
    for unit in ("l2net-planner.service", "l2net-auditor.service"):
        d = directives(unit)
        assert d["CapabilityBoundingSet"] == [""]
        assert d["AmbientCapabilities"] == [""]


def test_exposure_scores(tmp_path: Path) -> None:
    """systemd's own security analysis rates every unit OK (exposure <= 2.5 of 10)."""
    copy_units(tmp_path)
    assert exposure(tmp_path, "l2net-planner.service") <= 1.5
    assert exposure(tmp_path, "l2net-auditor.service") <= 1.5
    assert exposure(tmp_path, "l2net-executor@.service") <= 2.0
    netns = tmp_path / "netns"
    netns.mkdir()
    copy_units(netns, drop_in=True)
    assert exposure(netns, "l2net-executor@.service") <= 2.5
