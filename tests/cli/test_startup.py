"""What every ``l2net`` command does before its work starts: build the parser without
loading any service, and refuse a bad configuration in one line, never a traceback."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from services.cli.main import build_parser
from tests.docs.test_commands import _subparsers

L2NET = [sys.executable, "-m", "services.cli.main"]
NOWHERE = "nats://127.0.0.1:1"
"""A NATS URL nobody answers: a command that got past its configuration fails there."""

HEAVY = ("nats", "pyroute2", "opentelemetry", "yaml", "nacl", "nkeys")
"""What the parser need not load: the bus, the kernel, tracing, manifests, signing."""

SERVICE_CORES = (
    "services.planner.service",
    "services.executor.service",
    "services.executor.kernel",
    "services.auditor.service",
    "services.lab.fleet",
    "services.cli.demo",
)


def test_building_the_parser_for_get_imports_no_service_nor_the_bus() -> None:
    probe = (
        "import sys\n"
        "from services.cli.main import build_parser\n"
        "build_parser().parse_args(['get'])\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = out.stdout.split()
    assert "services.executor.cli" in loaded  # the probe did build every subcommand
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    cores = [m for m in loaded if m.startswith(SERVICE_CORES)]
    assert not heavy and not cores, (heavy, cores)


# Each command that talks to the bus, with arguments that pass argparse and its own checks.
BUS_COMMANDS: dict[str, list[str]] = {
    "apply": ["-f", "-"],
    "plan": ["-f", "-"],
    "delete": ["Network", "vlan100"],
    "get": [],
    "nad": ["vlan100"],
    "switch-config": [],
    "watch": ["--for", "1"],
    "planner": ["--generate-signing-key", "--signing-key", "{tmp}/planner.seed"],
    "executor": ["--node", "node-1", "--insecure-accept-unsigned", "--state-dir", "{tmp}/ex"],
    "reconcile": ["node-1"],
    "auditor": ["--no-snapshot"],
    "audit": [],
    "history": ["node-1"],
}
LOCAL_COMMANDS = {"up", "demo", "lab"}
"""Commands that set up no tracing (the embedded server, the demo, the lab)."""
EXIT_ON_BAD_CONFIG = {"audit": 1, "history": 1, "plan": 1}
"""2 (usage), except where 2 already means something: drift for ``l2net audit``, changes for
``l2net plan``."""


def test_every_command_on_the_bus_names_a_bad_tracing_setting_in_one_line(
    tmp_path: Path,
) -> None:
    subcommands = set(_subparsers(build_parser()))
    assert subcommands == set(BUS_COMMANDS) | LOCAL_COMMANDS, "a new command: classify it here"
    env = {**os.environ, "NATS_URL": NOWHERE, "OTEL_TRACES_EXPORTER": "bogus"}
    env.pop("OTEL_SDK_DISABLED", None)
    failures: dict[str, str] = {}
    for command, args in BUS_COMMANDS.items():
        argv = [*L2NET, command, *(a.format(tmp=tmp_path) for a in args), "--nats", NOWHERE]
        out = subprocess.run(argv, input="", capture_output=True, text=True, env=env, timeout=60)
        lines = (out.stdout + out.stderr).splitlines()
        expected = EXIT_ON_BAD_CONFIG.get(command, 2)
        ok = (
            out.returncode == expected
            and len(lines) == 1
            and lines[0].startswith("l2net")
            and "OTEL_TRACES_EXPORTER='bogus'" in lines[0]
        )
        print(f"  {'ok ' if ok else 'BAD'} l2net {command}: exit {out.returncode}: {lines}")
        if not ok:
            failures[command] = out.stdout + out.stderr
    assert not failures, failures


def test_tracing_with_nothing_to_export_loads_no_opentelemetry_sdk() -> None:
    probe = (
        "import sys\n"
        "from shared.runtime import tracing\n"
        "tracing.setup('cli')\n"
        "with tracing.publish_span('l2.api.get') as headers:\n"
        "    pass\n"
        "tracing.shutdown()\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env
    )
    loaded = out.stdout.split()
    assert "opentelemetry.trace" in loaded
    assert not [m for m in loaded if m.startswith("opentelemetry.sdk")]


def test_no_service_imports_the_cli_package() -> None:
    """Dependencies point one way: ``services/cli`` uses the services, never the reverse
    (what both need is in ``shared/``)."""
    root = Path(__file__).resolve().parents[2]
    offenders: list[str] = []
    for path in sorted((root / "services").rglob("*.py")):
        if path.is_relative_to(root / "services" / "cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            if any(n == "services.cli" or n.startswith("services.cli.") for n in names):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not offenders
