"""deploy/systemd: ``systemd-analyze verify`` passes on the units; hardening is what we claim.

The units start ``/opt/l2net/bin/l2net`` (the documented install path); verify checks that the
command exists, so the test verifies copies pointing at this checkout's ``l2net`` instead.
Nothing is started: systemd-analyze reads unit files offline.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pyroute2 import netns as pyroute2_netns

REPO = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = REPO / "deploy" / "systemd"
UNITS = ["l2net-planner.service", "l2net-auditor.service", "l2net-executor@.service"]
INSTALLED = "/opt/l2net/bin/l2net"
MOUNT_NAMESPACING = {
    "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateMounts",
    "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "BindPaths", "TemporaryFileSystem",
    "DynamicUser", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
    "ProtectControlGroups", "ProtectClock", "ProtectProc", "ProtectHostname", "PrivateIPC",
    "StateDirectory", "MountAPIVFS",
}  # fmt: skip
"""Settings that give a service its own mount namespace (systemd.exec(5))."""


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
        shutil.copy(SYSTEMD_DIR / "host-only.conf", d / "host-only.conf")
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


def test_executor_with_the_host_only_drop_in_verifies(tmp_path: Path) -> None:
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


@pytest.mark.parametrize("unit", ["l2net-planner.service", "l2net-auditor.service"])
def test_planner_and_auditor_run_the_installed_l2net_as_a_dynamic_user(unit: str) -> None:
    d = directives(unit)
    assert d["ExecStart"][0].split()[0] == INSTALLED
    assert d["DynamicUser"] == ["yes"]
    assert d["NoNewPrivileges"] == ["yes"]
    assert d["ProtectSystem"] == ["strict"]
    assert d["ProtectHome"] == ["yes"]


def test_executor_instance_is_the_node_with_net_admin_and_sys_admin_only() -> None:
    d = directives("l2net-executor@.service")
    # Waits for the planner to create the streams: its NATS node user may not.
    # Applies only intents signed by a key of /etc/l2net/trusted-keys (the planner's).
    assert d["ExecStart"] == [
        f"{INSTALLED} executor --node %i --no-create-streams"
        " --trust-keys-file /etc/l2net/trusted-keys"
    ]
    assert d["CapabilityBoundingSet"] == ["CAP_NET_ADMIN CAP_SYS_ADMIN"]
    assert d["AmbientCapabilities"] == ["CAP_NET_ADMIN CAP_SYS_ADMIN"]
    assert d["NoNewPrivileges"] == ["yes"]
    assert "@mount" in d["SystemCallFilter"][0].split()  # the bind mount on /run/netns/<vm>
    assert d["RestrictNamespaces"] == ["net"]
    assert "AF_NETLINK" in d["RestrictAddressFamilies"][0].split()
    assert "PrivateNetwork" not in d, "the executor configures the host's own network"
    # Its VM namespaces must be mounted in the host's mount namespace (see the test below).
    assert MOUNT_NAMESPACING & set(d) == set()


def test_host_only_drop_in_restores_the_sandbox_with_net_admin_only() -> None:
    d = directives("host-only.conf")
    assert d["CapabilityBoundingSet"] == ["", "CAP_NET_ADMIN"]  # reset, then only this
    assert d["AmbientCapabilities"] == ["", "CAP_NET_ADMIN"]
    assert d["SystemCallFilter"] == ["", "@system-service", "~@resources @mount"]
    assert d["DynamicUser"] == ["yes"] and d["ProtectSystem"] == ["strict"]


def test_a_namespace_made_in_a_sandboxed_mount_namespace_never_reaches_the_host() -> None:
    """Why the executor unit has no mount sandboxing. systemd sandboxes a service in a mount
    namespace whose mounts are slaves of the host's (systemd.exec(5), MountFlags=); a VM
    namespace created there (a bind mount on /run/netns/<vm>) is not one on the host, and is
    gone when the process exits. Created without it, the host can enter it."""
    # The executor's own code for a VM namespace (what its netns.add step runs).
    create = "import sys; from services.executor.kernel import create_netns as c; c(sys.argv[1])"
    sandboxed, plain = (f"l2d-{secrets.token_hex(3)}" for _ in range(2))
    try:
        made = subprocess.run(
            ["unshare", "--mount", "--propagation", "slave", sys.executable, "-c", create,
             sandboxed],
            capture_output=True, text=True, cwd=REPO,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        assert (Path("/run/netns") / sandboxed).exists()  # the file, on the host's /run
        entered = subprocess.run(["ip", "netns", "exec", sandboxed, "true"], capture_output=True)
        assert entered.returncode != 0, "the host entered a namespace made in a sandbox"

        made = subprocess.run(
            [sys.executable, "-c", create, plain], capture_output=True, text=True, cwd=REPO
        )
        assert made.returncode == 0, made.stderr
        entered = subprocess.run(["ip", "netns", "exec", plain, "true"], capture_output=True)
        assert entered.returncode == 0, entered.stderr
    finally:
        for name in (sandboxed, plain):
            if (Path("/run/netns") / name).exists():
                pyroute2_netns.remove(name)


def test_planner_and_auditor_hold_no_capabilities() -> None:
    for unit in ("l2net-planner.service", "l2net-auditor.service"):
        d = directives(unit)
        assert d["CapabilityBoundingSet"] == [""]
        assert d["AmbientCapabilities"] == [""]


def test_exposure_scores(tmp_path: Path) -> None:
    """systemd's own security analysis rates every unit OK (exposure below 5 of 10): the
    planner, the auditor and a host-only executor are sandboxed; the executor that makes VM
    namespaces keeps its system-call, address-family and namespace filters."""
    copy_units(tmp_path)
    assert exposure(tmp_path, "l2net-planner.service") <= 1.5
    assert exposure(tmp_path, "l2net-auditor.service") <= 1.5
    assert exposure(tmp_path, "l2net-executor@.service") <= 4.5
    host_only = tmp_path / "host-only"
    host_only.mkdir()
    copy_units(host_only, drop_in=True)
    assert exposure(host_only, "l2net-executor@.service") <= 2.0
