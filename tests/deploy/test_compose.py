"""deploy/compose: the file is valid for Compose (Debian's ``docker-compose config``, offline).

No Docker engine runs here: these tests validate and inspect the resolved configuration; they
never start a container, and nothing here claims the stack was run.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
PASSWORDS = {"L2NET_NATS_PASSWORD_PLANNER": "p1anner", "L2NET_NATS_PASSWORD_AUDITOR": "aud1tor"}


def compose_bin() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.fail("docker-compose not found: `make deps` installs the Debian package")
    return found


def workdir(tmp_path: Path) -> Path:
    """A copy of deploy/ with the operator's files (nats.env, tls/) in place."""
    shutil.copytree(REPO / "deploy", tmp_path / "deploy")
    compose = tmp_path / "deploy" / "compose"
    shutil.copy(compose / "nats.env.example", compose / "nats.env")
    (compose / "tls").mkdir()
    return compose


def config(dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [compose_bin(), "--project-directory", str(dir), "-f", "compose.yaml", "config"],
        cwd=dir,
        env={"PATH": "/usr/bin:/bin"} | env,
        capture_output=True,
        text=True,
    )


@pytest.fixture
def resolved(tmp_path: Path) -> dict[str, Any]:
    result = config(workdir(tmp_path), PASSWORDS)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = yaml.safe_load(result.stdout)
    return data


def published(service: dict[str, Any]) -> set[int]:
    return {int(p["published"]) for p in service.get("ports", [])}


def test_control_plane_services_and_no_executor(resolved: dict[str, Any]) -> None:
    assert set(resolved["services"]) == {"nats", "jaeger", "planner", "auditor"}


def test_nats_runs_the_shipped_config_with_jetstream_storage(resolved: dict[str, Any]) -> None:
    nats = resolved["services"]["nats"]
    assert nats["command"] == ["-c", "/etc/nats/nats-server.conf"]
    assert published(nats) == {4222}
    env = nats["environment"]
    assert env["L2NET_NATS_STORE_DIR"].startswith("/data")
    assert env["L2NET_NATS_PASSWORD_NODE_1"] == "change-me"  # from nats.env
    mounts = {v.split(":")[1]: v.split(":")[0] for v in nats["volumes"]}
    for inside, shipped in (
        ("/etc/nats/nats-server.conf", "nats-server.conf"),
        ("/etc/nats/accounts.conf", "accounts.conf"),
    ):
        source = Path(mounts[inside])
        assert source.exists(), source
        assert source.read_text() == (REPO / "deploy" / "nats" / shipped).read_text()
    assert any(v.startswith("nats-data:") for v in nats["volumes"])


def test_jaeger_is_v2_with_otlp_and_ui(resolved: dict[str, Any]) -> None:
    jaeger = resolved["services"]["jaeger"]
    image = jaeger["image"]
    assert image.startswith("jaegertracing/jaeger:2.")
    assert published(jaeger) == {4317, 4318, 16686}
    assert "--set=receivers.otlp.protocols.http.endpoint=0.0.0.0:4318" in jaeger["command"]


@pytest.mark.parametrize(("name", "user"), [("planner", "p1anner"), ("auditor", "aud1tor")])
def test_services_reach_nats_over_tls_and_export_to_jaeger(
    resolved: dict[str, Any], name: str, user: str
) -> None:
    svc = resolved["services"][name]
    assert svc["command"] == [name]
    assert svc["image"] == "l2net:local"
    env = svc["environment"]
    assert env["NATS_URL"] == f"tls://{name}:{user}@nats:4222"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert env["OTEL_SERVICE_NAME"] == f"l2net-{name}"
    assert set(svc["depends_on"]) >= {"nats", "jaeger"}


def test_missing_password_is_refused_by_name(tmp_path: Path) -> None:
    result = config(workdir(tmp_path), {"L2NET_NATS_PASSWORD_PLANNER": "x"})
    assert result.returncode != 0
    assert "set it in .env" in result.stderr
    assert "auditor" in result.stderr


def test_validation_is_real(tmp_path: Path) -> None:
    """docker-compose rejects an unknown option, so the passes above mean something."""
    dir = workdir(tmp_path)
    text = (dir / "compose.yaml").read_text()
    (dir / "compose.yaml").write_text(
        text.replace("    restart: unless-stopped\n", "    restrat: no\n", 1)
    )
    result = config(dir, PASSWORDS)
    assert result.returncode != 0
    assert "restrat" in result.stderr


def test_dockerfile_copies_what_exists_and_runs_l2net() -> None:
    """Static checks only (no image is built here): sources exist, entrypoint is the CLI."""
    lines = [ln.split() for ln in (COMPOSE_DIR / "Dockerfile").read_text().splitlines()]
    instructions = [ln for ln in lines if ln and not ln[0].startswith("#")]
    assert instructions[0][:2] == ["FROM", "python:3.11-slim"]
    for ln in instructions:
        if ln[0] == "COPY":
            for src in ln[1:-1]:
                assert (REPO / src).exists(), src
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert ["ENTRYPOINT", '["l2net"]'] in instructions
    assert "l2net" in scripts
