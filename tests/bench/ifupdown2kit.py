"""ifupdown2 as a baseline, without installing it on the host.

Installing Debian's ``ifupdown2`` would replace the host's ifupdown and may touch the host's
networking, so the benchmark never installs it: :func:`prepare` takes the ``.deb`` that
``make deps`` downloaded for the auditor's oracle (``.cache/ifupdown2/``), or fetches it with
``apt-get download`` when it is not there, and unpacks it with ``dpkg-deb -x`` into a
directory of the benchmark's own. A lab node (which sees that directory through hostfs) then
runs it with the system ``python3``, inside a private mount namespace
(:func:`guest_wrapper`) whose tmpfs mounts on ``/etc/network``, ``/var/log`` and
``/var/tmp`` keep the host's configuration out of its reach and everything it writes off the
host (``/run`` is private to the node anyway).

The unpacked copy gets its own ``ifupdown2.conf`` beside its code (where ifupdown2 looks when
``/etc/network/ifupdown2`` does not exist, as under the tmpfs): state under ``/run/network``,
no ``if-up.d`` scripts, no templates, and ``default_interfaces_configfile`` pointing at the
benchmark's interfaces file so that ``ifreload -a`` (which has no ``-i``) reads it.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "ifupdown2"
STATE_DIR = "/run/network/ifupdown2-state"
COMMANDS = ("ifup", "ifdown", "ifquery", "ifreload")
_SETTINGS = {
    "use_daemon": "no",
    "template_enable": "0",
    "addon_scripts_support": "0",
    "state_dir": STATE_DIR + "/",
}


class Ifupdown2Unavailable(RuntimeError):
    """ifupdown2 could not be fetched or unpacked; the message says why."""


@dataclass(frozen=True)
class Ifupdown2:
    """An unpacked ifupdown2: ``bin/<command>`` links, its config dir, its interfaces file."""

    root: Path
    bin: Path
    conf_dir: Path
    interfaces: Path
    version: str

    def argv(self, command: str, *args: str) -> list[str]:
        """The command line of ``ifup``/``ifquery``/... (run with the system ``python3``)."""
        return ["/usr/bin/python3", str(self.bin / command), *args]


def _run(argv: list[str], *, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)


REPO = Path(__file__).resolve().parents[2]
MAKE_DEPS_CACHE = REPO / ".cache" / "ifupdown2"
"""Where ``make deps`` puts the ``.deb`` (see the Makefile)."""


def _download(into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    cached = sorted(MAKE_DEPS_CACHE.glob(f"{PACKAGE}_*.deb"))
    if cached:
        return cached[-1]
    if shutil.which("apt-get") is None:
        raise Ifupdown2Unavailable("apt-get is needed to fetch ifupdown2 (or run make deps)")
    proc = _run(["apt-get", "download", PACKAGE], cwd=into)
    if proc.returncode != 0:
        # A fresh machine may have no package lists yet.
        _run(["apt-get", "update", "-qq"], cwd=into)
        proc = _run(["apt-get", "download", PACKAGE], cwd=into)
    debs = sorted(into.glob(f"{PACKAGE}_*.deb"))
    if proc.returncode != 0 or not debs:
        raise Ifupdown2Unavailable(f"apt-get download {PACKAGE} failed: {proc.stderr.strip()}")
    return debs[-1]


def prepare(work: Path) -> Ifupdown2:
    """Fetch and unpack ifupdown2 under ``work`` (reused when already there)."""
    if shutil.which("dpkg-deb") is None:
        raise Ifupdown2Unavailable("dpkg-deb is needed to unpack ifupdown2")
    deb = _download(work / "deb")
    root = work / "root"
    if not (root / "usr/share/ifupdown2/__main__.py").exists():
        proc = _run(["dpkg-deb", "-x", str(deb), str(root)], cwd=work)
        if proc.returncode != 0:
            raise Ifupdown2Unavailable(f"dpkg-deb -x {deb.name}: {proc.stderr.strip()}")
    share = root / "usr/share/ifupdown2"
    conf_dir = share / "etc/network/ifupdown2"
    conf_dir.mkdir(parents=True, exist_ok=True)
    interfaces = work / "interfaces"
    interfaces.touch()
    settings = {**_SETTINGS, "default_interfaces_configfile": str(interfaces)}
    lines = []
    shipped = root / "etc/network/ifupdown2/ifupdown2.conf"
    for line in shipped.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if key in settings and not line.lstrip().startswith("#"):
            line = f"{key}={settings.pop(key)}"
        lines.append(line)
    lines += [f"{k}={v}" for k, v in settings.items()]
    (conf_dir / "ifupdown2.conf").write_text("\n".join(lines) + "\n")
    shutil.copy(root / "etc/network/ifupdown2/addons.conf", conf_dir / "addons.conf")
    bin_dir = work / "bin"
    bin_dir.mkdir(exist_ok=True)
    for command in COMMANDS:
        link = bin_dir / command
        if not link.is_symlink():
            # ifupdown2 picks its operation from the name it was started as.
            link.symlink_to(share / "__main__.py")
    version = deb.name.split("_")[1]
    return Ifupdown2(
        root=root, bin=bin_dir, conf_dir=conf_dir, interfaces=interfaces, version=version
    )


def guest_wrapper(command: list[str]) -> list[str]:
    """``command`` inside a private mount namespace of a lab node where ``/etc/network``,
    ``/var/log`` and ``/var/tmp`` are fresh tmpfs mounts, so that ifupdown2 neither reads the
    host's network configuration nor writes anything to the host."""
    script = (
        "set -e; if [ -d /etc/network ]; then mount -t tmpfs l2bench /etc/network; fi; "
        "mount -t tmpfs l2bench /var/log; mount -t tmpfs l2bench /var/tmp; "
        "exec " + shlex.join(command)
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
