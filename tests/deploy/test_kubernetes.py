"""deploy/kubernetes: every document validates (strict) against the Kubernetes schemas, and
the manifests give each component exactly the access the design calls for.

Schemas come from PyPI ``kubernetes-validate``; no cluster runs here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

K8S_DIR = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
FILES = sorted(K8S_DIR.glob("*.yaml"))
VERSIONS = ["1.29.0", "1.37.0"]  # oldest supported (sidecar-free, subPathExpr GA) and newest


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def all_documents() -> list[dict[str, Any]]:
    return [d for f in FILES for d in documents(f)]


def find(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in all_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def pod_spec(kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = find(kind, name)["spec"]["template"]["spec"]
    return spec


def test_there_is_something_to_validate() -> None:
    names = {f.name for f in FILES}
    assert {
        "namespace.yaml",
        "executor-daemonset.yaml",
        "planner-deployment.yaml",
        "auditor-deployment.yaml",
        "secrets.example.yaml",
    } <= names


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_documents_validate_strictly(path: Path, version: str) -> None:
    for doc in documents(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_validation_rejects_what_kubernetes_would() -> None:
    """Strict schemas catch a misspelled field and a wrong type: the passes above mean it."""
    ds = find("DaemonSet", "l2net-executor")
    typo = copy.deepcopy(ds)
    typo["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, VERSIONS[-1], strict=True)
    wrong = copy.deepcopy(ds)
    wrong["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, VERSIONS[-1], strict=True)


def test_everything_is_in_the_l2net_namespace() -> None:
    for doc in all_documents():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "l2net", doc["metadata"]["name"]


def test_executor_runs_on_the_host_network_and_mounts_vm_namespaces_in_the_hosts() -> None:
    spec = pod_spec("DaemonSet", "l2net-executor")
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    # VM namespaces (bind mounts on /run/netns/<vm>) made by the executor must reach the
    # host's mount namespace: the host's /run/netns, Bidirectional.
    volume = next(v for v in spec["volumes"] if v.get("hostPath", {}).get("path") == "/run/netns")
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert mount["mountPath"] == "/run/netns"
    assert mount["mountPropagation"] == "Bidirectional"
    # Rules the API server enforces and the schemas do not: Bidirectional propagation only
    # in a privileged container, and a privileged one cannot forbid privilege escalation.
    assert sc["privileged"] is True
    assert sc.get("allowPrivilegeEscalation", True) is True
    assert "capabilities" not in sc, "a privileged container has them all: do not pretend"
    # Its NATS node user may not create streams: it waits for the planner to.
    assert "--no-create-streams" in container["args"][0]


def test_executor_uses_the_hosts_cni_plugins_read_only() -> None:
    spec = pod_spec("DaemonSet", "l2net-executor")
    (container,) = spec["containers"]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    cni = {name: path for name, path in host_paths.items() if "cni" in path}
    assert set(cni.values()) == {"/opt/cni/bin", "/usr/lib/cni"}
    for name, path in cni.items():
        assert mounts[name]["mountPath"] == path
        assert mounts[name]["readOnly"] is True
    env = {e["name"]: e for e in container["env"]}
    assert set(env["CNI_PATH"]["value"].split(":")) == {"/opt/cni/bin", "/usr/lib/cni"}


def test_executor_sees_only_its_own_nodes_nats_credential() -> None:
    spec = pod_spec("DaemonSet", "l2net-executor")
    (container,) = spec["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert "NATS_URL" not in env, "no shared credential in the pod spec"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "nats-credentials")
    assert mount["subPathExpr"] == "$(NODE_NAME).url"
    volume = next(v for v in spec["volumes"] if v["name"] == "nats-credentials")
    secret_name = volume["secret"]["secretName"]
    assert volume["secret"]["defaultMode"] == 0o400
    assert mount["mountPath"] in " ".join(container["args"])
    assert '--node "$NODE_NAME"' in container["args"][0]

    # The example Secret: a key per node, each with that node's own NATS user.
    secret = find("Secret", secret_name)
    for key, url in secret["stringData"].items():
        node = key.removesuffix(".url")
        assert key.endswith(".url")
        parts = urlsplit(url)
        assert parts.scheme == "tls", "NATS requires TLS (deploy/nats)"
        assert parts.username == node


@pytest.mark.parametrize("service", ["planner", "auditor"])
def test_planner_and_auditor_are_unprivileged_with_their_own_credentials(service: str) -> None:
    name = f"l2net-{service}"
    assert find("Deployment", name)["spec"]["replicas"] == 1
    spec = pod_spec("Deployment", name)
    assert spec.get("hostNetwork", False) is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    assert container["args"] == [service]
    sc = container["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert "ports" not in container, "no listening port"
    env = {e["name"]: e for e in container["env"]}
    ref = env["NATS_URL"]["valueFrom"]["secretKeyRef"]
    secret = find("Secret", ref["name"])
    assert urlsplit(secret["stringData"][ref["key"]]).username == service


def test_every_referenced_secret_and_configmap_is_described() -> None:
    defined = {(d["kind"], d["metadata"]["name"]) for d in all_documents()}
    for kind, name in (("DaemonSet", "l2net-executor"), ("Deployment", "l2net-planner"),
                       ("Deployment", "l2net-auditor")):  # fmt: skip
        spec = pod_spec(kind, name)
        for v in spec["volumes"]:
            if "secret" in v:
                assert ("Secret", v["secret"]["secretName"]) in defined
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in defined
        for e in spec["containers"][0]["env"]:
            ref = e.get("valueFrom", {})
            if "secretKeyRef" in ref:
                assert ("Secret", ref["secretKeyRef"]["name"]) in defined
            if "configMapKeyRef" in ref:
                assert ("ConfigMap", ref["configMapKeyRef"]["name"]) in defined
