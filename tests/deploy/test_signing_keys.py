"""deploy/: where the planner's signing seed and the executors' trusted keys come from.

The seed is a secret that reaches only the planner, as a file (a systemd credential, a
Kubernetes Secret volume, a Compose secret) named by ``$L2NET_SIGNING_KEY_FILE``; the public
key reaches every executor (a file, a ConfigMap), and an executor without one does not start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.cli.main import build_parser
from tests.deploy.test_compose import resolved  # noqa: F401  (the fixture)
from tests.deploy.test_kubernetes import find, pod_spec
from tests.deploy.test_systemd import directives

REPO = Path(__file__).resolve().parents[2]


def test_systemd_gives_the_seed_to_the_planner_only_as_a_credential() -> None:
    planner = directives("l2net-planner.service")
    assert "signing.seed:/etc/l2net/signing.seed" in planner["LoadCredential"]
    assert "L2NET_SIGNING_KEY_FILE=%d/signing.seed" in planner["Environment"]
    for unit in ("l2net-auditor.service", "l2net-executor@.service"):
        assert "signing.seed" not in (REPO / "deploy" / "systemd" / unit).read_text()
    executor = directives("l2net-executor@.service")
    argv = executor["ExecStart"][0].split()[1:]
    args = build_parser().parse_args(argv)
    assert args.trust_keys_file == ["/etc/l2net/trusted-keys"]


def test_kubernetes_mounts_the_seed_for_the_planner_and_the_keys_for_executors() -> None:
    spec = pod_spec("Deployment", "l2net-planner")
    container = spec["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "signing")
    assert env["L2NET_SIGNING_KEY_FILE"]["value"] == f"{mount['mountPath']}/seed"
    volume = next(v for v in spec["volumes"] if v["name"] == "signing")
    assert volume["secret"]["secretName"] == "l2net-planner-signing"
    assert volume["secret"]["defaultMode"] == 0o440  # the pod's group (fsGroup) only
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
    assert "seed" in find("Secret", "l2net-planner-signing")["stringData"]

    executor = pod_spec("DaemonSet", "l2net-executor")["containers"][0]
    trust = {e["name"]: e for e in executor["env"]}["L2NET_TRUST_KEYS"]
    ref = trust["valueFrom"]["configMapKeyRef"]
    assert (ref["name"], ref["key"], ref.get("optional", False)) == ("l2net-trust", "keys", False)
    for kind, name in (("DaemonSet", "l2net-executor"), ("Deployment", "l2net-auditor")):
        assert "l2net-planner-signing" not in str(pod_spec(kind, name))


def test_compose_gives_the_planner_its_seed_as_a_secret(
    resolved: dict[str, Any],  # noqa: F811
) -> None:
    planner = resolved["services"]["planner"]
    (secret,) = planner["secrets"]
    assert secret["source"] == "signing.seed"
    assert planner["environment"]["L2NET_SIGNING_KEY_FILE"] == "/run/secrets/signing.seed"
    assert "secrets" not in resolved["services"]["auditor"]
