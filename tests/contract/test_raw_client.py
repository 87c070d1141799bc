"""A client that is not l2net's: plain nats-py and JSON bytes, written from docs/events.md.

Nothing of l2net is imported by the client side (``Raw`` below): subjects, bodies and the
fields it reads are the ones docs/events.md names, so a test failing here is a broken
promise to clients in any language. The services are the real planner and auditor, on a
real nats-server; the nodes are played by the client, publishing the inventory and status
messages an executor publishes (docs/events.md, the node and node-status schemas).

The points are those of issue 10's "contract" section: (1) which nodes got a new intent,
(2) unknown fields refused, (5) a node's last status by direct get on every stream,
(6) one error shape, (7) times in epoch seconds, (10) kinds in any case, subjects spelled.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from services.planner.service import Planner
from shared.runtime.natsserver import EmbeddedNats
from tests.auditor.conftest import AuditorFactory

SEED = Path(__file__).resolve().parents[2] / "docs" / "examples" / "seed.yaml"
NODES = ("node-1", "node-2")
PROBLEM_FIELDS = {"code", "message", "kind", "name", "field", "document", "line"}


class Raw:
    """The whole client: JSON bytes over NATS request/reply and JetStream direct gets."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc

    async def ask(self, subject: str, body: bytes | dict[str, Any]) -> dict[str, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        reply = await self.nc.request(subject, data, timeout=10)
        answer: dict[str, Any] = json.loads(reply.data)
        return answer

    async def last(self, stream: str, subject: str) -> Msg:
        """The last message of ``subject``: ``$JS.API.DIRECT.GET.<stream>.<subject>``."""
        return await self.nc.request(f"$JS.API.DIRECT.GET.{stream}.{subject}", b"", timeout=5)

    async def last_by_body(self, stream: str, subject: str) -> Msg:
        body = json.dumps({"last_by_subj": subject}).encode()
        return await self.nc.request(f"$JS.API.DIRECT.GET.{stream}", body, timeout=5)

    async def store(self, subject: str, message: dict[str, Any]) -> None:
        """Publish into a stream and wait for JetStream's ack (``$JS.ACK``-style reply)."""
        reply = await self.nc.request(subject, json.dumps(message).encode(), timeout=5)
        assert "seq" in json.loads(reply.data), reply.data


async def until(what: str, probe: Callable[[], Awaitable[bool]], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await probe():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not reached within {timeout}s: {what}")


def node_message(name: str) -> dict[str, Any]:
    """A node's inventory as its executor publishes it (docs/reference/schemas/node.json)."""
    return {
        "name": name,
        "labels": {},
        "nics": [
            {"name": "eth0", "state": "up", "master": "mgmt-bo"},
            {"name": "eth1", "state": "up"},
            {"name": "eth2", "state": "up"},
        ],
        "heartbeatAt": time.time(),
    }


def is_problem(p: Any) -> bool:
    return isinstance(p, dict) and set(p) >= PROBLEM_FIELDS and isinstance(p["message"], str)


def is_epoch(t: Any) -> bool:
    """Seconds since the Unix epoch, of a time around now (docs/events.md)."""
    return isinstance(t, (int, float)) and abs(t - time.time()) < 3600


async def test_a_raw_client_finds_the_documented_contract(
    nats_server: EmbeddedNats, planner: Planner, auditors: AuditorFactory
) -> None:
    await auditors()
    nc = await nats.connect(nats_server.url)
    raw = Raw(nc)
    checks: dict[str, bool] = {}
    try:
        for name in NODES:
            await raw.store(f"l2.node.{name}", node_message(name))

        async def nodes_known() -> bool:
            got = await raw.ask("l2.api.get", {"kind": "Node"})
            return got["ok"] and {i["name"] for i in got["items"]} == set(NODES)

        await until("the planner lists both nodes", nodes_known)

        # (1) The apply reply says which nodes got a new intent.
        first = await raw.ask("l2.api.apply", SEED.read_bytes())
        again = await raw.ask("l2.api.apply", SEED.read_bytes())
        checks["1: first apply lists every node it gave a new intent in `changed`"] = first[
            "ok"
        ] and sorted(first["changed"]) == list(NODES)
        checks["1: the same apply again changes no node, generations unchanged"] = (
            again["ok"] and again["changed"] == [] and again["generations"] == first["generations"]
        )

        # (2) Unknown fields are refused, by the planner and the auditor alike.
        typo = await raw.ask("l2.api.get", {"kidn": "Network"})
        force = await raw.ask(
            "l2.api.delete", {"kind": "Network", "name": "vlan100", "force": True}
        )
        nodes = await raw.ask("l2.auditor.check", {"nodes": "node-1"})
        checks["2: l2.api.get refuses `kidn`, naming it"] = (
            not typo["ok"] and typo["errors"][0]["field"] == "kidn"
        )
        checks["2: l2.api.delete refuses `force` (and deletes nothing)"] = (
            not force["ok"] and force["errors"][0]["field"] == "force"
        )
        checks["2: l2.auditor.check refuses `nodes`"] = (
            not nodes["ok"] and nodes["errors"][0]["field"] == "nodes"
        )
        still = await raw.ask("l2.api.get", {"kind": "Network", "name": "vlan100"})
        checks["2: the refused delete deleted nothing"] = still["ok"] and len(still["items"]) == 1

        # (5) A node's last status by direct get, on L2_STATUS as on every stream.
        status = {
            "type": "NodeStatus",
            "node": "node-1",
            "phase": "Applied",
            "observedGeneration": first["generations"]["node-1"],
            "at": time.time(),
        }
        await raw.store("l2.status.node-1", status)
        by_subject = await raw.last("L2_STATUS", "l2.status.node-1")
        by_body = await raw.last_by_body("L2_STATUS", "l2.status.node-1")
        checks["5: direct get of the last status by subject"] = (
            json.loads(by_subject.data)["phase"] == "Applied"
            and (by_subject.headers or {}).get("Nats-Subject") == "l2.status.node-1"
        )
        checks["5: direct get of the last status with last_by_subj"] = json.loads(
            by_body.data
        ) == json.loads(by_subject.data)
        intent = json.loads((await raw.last("L2_INTENTS", "l2.intent.node-1")).data)
        node = json.loads((await raw.last("L2_NODES", "l2.node.node-2")).data)
        spec = json.loads((await raw.last("L2_SPECS", "l2.spec.Network.vlan200")).data)
        checks["5: direct get on L2_INTENTS, L2_NODES, L2_SPECS too"] = (
            intent["generation"] == first["generations"]["node-1"]
            and node["name"] == "node-2"
            and spec["spec"]["vlan"] == 200
        )
        await raw.store("l2.observed.node-1", {"type": "ObservedState", "node": "node-1",
                                               "generation": 0, "at": time.time()})  # fmt: skip
        observed = await raw.last("L2_OBSERVED", "l2.observed.node-1")
        checks["5: direct get on L2_OBSERVED"] = json.loads(observed.data)["node"] == "node-1"
        none = await raw.last("L2_STATUS", "l2.status.node-9")
        checks["5: a subject without a message: empty body, status 404"] = (
            none.data == b"" and (none.headers or {}).get("Status") == "404"
        )

        # (6) One error shape: Problem objects everywhere; documented not-found; YAML lines.
        missing = await raw.ask("l2.api.get", {"kind": "Network", "name": "nope"})
        nad = await raw.ask("l2.api.nad", {"network": "nope"})
        history = await raw.ask("l2.auditor.history", {"node": "node-9"})
        desired = await raw.ask("l2.auditor.desired", {"node": "node-1", "generation": 99})
        empty = await raw.ask("l2.auditor.history", b"")
        truncated = await raw.ask("l2.auditor.history", b'{"node": "node-1"')
        syntax = await raw.ask("l2.api.apply", b"kind: Network\nname: n\nvlan: [1, 2\n")
        replies = [typo, force, nodes, missing, nad, history, desired, empty, truncated, syntax]
        checks["6: every error of every reply is a Problem object"] = all(
            not r["ok"] and r["errors"] and all(is_problem(p) for p in r["errors"]) for r in replies
        )
        checks["6: not found is code not-found naming kind and name"] = (
            all(
                p["code"] == "not-found" and p["kind"] and p["name"]
                for p in (missing["errors"][0], nad["errors"][0], history["errors"][0])
            )
            and desired["errors"][0]["code"] == "not-found"
        )
        checks["6: an empty body is {} (a required field reported missing)"] = (
            empty["errors"][0]["field"] == "node" and "missing" in empty["errors"][0]["message"]
        )
        checks["6: a truncated body says so, code bad-request"] = (
            truncated["errors"][0]["code"] == "bad-request"
            and "not complete JSON" in truncated["errors"][0]["message"]
        )
        checks["6: a YAML syntax error carries its line"] = syntax["errors"][0]["line"] == 4

        # (7) Times are seconds since the epoch.
        check = await raw.ask("l2.auditor.check", {"live": False})
        heartbeat = check["nodes"][0]["heartbeatAt"] if check["ok"] else None
        checks["7: issuedAt, heartbeatAt, a check's at: epoch seconds"] = (
            is_epoch(intent["issuedAt"]) and is_epoch(heartbeat) and is_epoch(check["at"])
        )

        # (10) Kinds in any case in requests; subjects carry the spelled kind.
        lower = await raw.ask("l2.api.get", {"kind": "network"})
        plural = await raw.ask("l2.api.get", {"kind": "NETWORKS", "name": "vlan200"})
        checks["10: get takes `network` and `NETWORKS`, answers kind Network"] = (
            lower["ok"]
            and {i["kind"] for i in lower["items"]} == {"Network"}
            and plural["ok"]
            and plural["items"][0]["name"] == "vlan200"
        )
        lowercase_subject = await raw.last("L2_SPECS", "l2.spec.network.vlan200")
        checks["10: the spec subject is l2.spec.Network.<name>, never lowercased"] = (
            lowercase_subject.headers or {}
        ).get("Status") == "404"
    finally:
        await nc.close()

    passed = [name for name, ok in checks.items() if ok]
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    print(f"raw client contract checks: {len(passed)}/{len(checks)}")
    assert len(passed) == len(checks), [n for n, ok in checks.items() if not ok]
