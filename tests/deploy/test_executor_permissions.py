"""The real executor runs as node-1's least-privilege user of deploy/nats, on a TLS server.

The server runs the shipped configuration (throwaway CA, accounts rendered for node-1 and
node-2, see ``test_nats.py``). The executor is the real ``python -m services.executor``
process, started as the deploy files start it (``--no-create-streams``, credentials in
``NATS_URL``, the CA through ``SSL_CERT_FILE``), working inside a network namespace this test
creates (never the root namespace). The planner is the real planner service as the
``planner`` user; people submit as ``operator``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from pyroute2 import netns as pyroute2_netns

from services.executor.kernel import NetlinkKernel
from services.executor.service import Executor as ExecutorService
from services.executor.service import ExecutorConfig
from services.planner.service import Planner
from shared.domain.model import Node
from shared.runtime import bus
from shared.wire import api, subjects
from tests import keys
from tests.deploy.test_nats import SecuredNats, secured  # noqa: F401  (the fixture)
from tests.executor.conftest import HostNode, _build_node, intent, untagged_port
from tests.executor.helpers import final_status, statuses
from tests.kit import stop_process, until

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def node1() -> Iterator[HostNode]:
    """A namespace standing in for host ``node-1`` (mgmt-br, mgmt-bo, eth1); removed, with
    the VM namespaces the test named, by those names."""
    ns = f"l2d-{secrets.token_hex(3)}"
    pyroute2_netns.create(ns)
    node = HostNode(ns=ns, node="node-1")
    try:
        asyncio.run(_build_node(ns))
        yield node
    finally:
        present = set(pyroute2_netns.listnetns())
        for name in [*node.vms, ns]:
            if name in present:
                pyroute2_netns.remove(name)


class Executor:
    """``python -m services.executor`` as a process; stopped by its own pid."""

    def __init__(self, server: SecuredNats, user: str, node: str, ns: str, log: Path) -> None:
        url = f"tls://{user}:{server.passwords[user]}@127.0.0.1:{server.port}"
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env |= {"NATS_URL": url, "SSL_CERT_FILE": str(server.ca)}
        # With only the capabilities the systemd unit grants (CapabilityBoundingSet of a root
        # service: CAP_NET_ADMIN CAP_SYS_ADMIN) and NoNewPrivileges, as the unit runs it.
        argv = ["setpriv", "--bounding-set=-all,+net_admin,+sys_admin", "--no-new-privs",
                sys.executable, "-m", "services.executor", "--node", node, "--netns", ns,
                "--no-create-streams", "--heartbeat", "1",
                "--state-dir", str(log.parent / f"state-{user}-{node}")]  # fmt: skip
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        return stop_process(self.proc)


def violations(server: SecuredNats, user: str) -> list[str]:
    """The permission violations the server logged for ``user`` (``"L2NET/user:<user>"``)."""
    text = server.log.read_text(errors="replace") if server.log.exists() else ""
    return [
        line
        for line in text.splitlines()
        if "violation" in line.lower() and f'/user:{user}"' in line
    ]


async def test_the_executor_works_as_its_node_user_and_reads_only_its_own_intents(
    secured: SecuredNats,  # noqa: F811
    node1: HostNode,
    tmp_path: Path,
) -> None:
    # Started before the planner: it may not create streams, so it waits, naming them.
    executor = Executor(secured, "node-1", "node-1", node1.ns, tmp_path / "executor.log")
    planner_nc = operator = None
    planner: Planner | None = None
    try:
        await until(lambda: "waiting for stream(s)" in executor.output(), timeout=60)
        assert executor.proc.poll() is None, executor.output()
        waiting = next(x for x in executor.output().splitlines() if "waiting for stream" in x)
        assert "L2_INTENTS" in waiting and "start the planner first" in waiting

        # The planner (as the planner user) creates all six streams; the executor goes on and
        # registers its node.
        planner_nc = await secured.connect("planner")
        planner = Planner(planner_nc, signing_seed=keys.SEED)
        await planner.start()
        operator = await secured.connect("operator")
        ojs = operator.jetstream()
        names = await ojs.streams_info()
        assert {s.config.name for s in names} == set(bus.STREAMS)

        async def registered() -> Node | None:
            try:
                raw = await ojs.get_last_msg(subjects.STREAM_NODES, subjects.node("node-1"))
            except Exception:
                return None
            return bus.decode(raw.data or b"", Node)

        await until(registered, timeout=60)
        node = await registered()
        assert node is not None and "eth1" in {n.name for n in node.nics}

        # A person submits a VM NIC on node-1; the planner compiles and publishes node-1's
        # intent; the executor plugs the NIC (bridge CNI) and its status reaches the bus.
        vm = node1.vm("a")
        manifest = (
            "kind: Network\nname: untagged\nclusterNetwork: mgmt\ntype: UntaggedNetwork\n"
            f"---\nkind: VmNic\nname: {vm}-nic\nvm: {vm}\nnode: node-1\nnetwork: untagged\n"
        )
        reply_msg = await operator.request(subjects.API_APPLY, manifest.encode(), timeout=30)
        reply = bus.decode(reply_msg.data, api.ApplyReply)
        assert reply.ok, reply.errors
        generation = reply.generations["node-1"]

        await until(lambda: final_status(operator, "node-1", generation), timeout=90)
        status = await final_status(operator, "node-1", generation)
        assert status is not None and status.phase == "Applied", status
        assert vm in pyroute2_netns.listnetns()  # the VM's namespace, with its NIC plugged
        veths = subprocess.run(
            ["ip", "netns", "exec", vm, "ip", "-o", "link", "show", "eth0"],
            capture_output=True,
            text=True,
        )
        assert veths.returncode == 0, veths.stderr

        # Its observed state reached the bus too, and it answers the operator's state request.
        observed = await ojs.get_last_msg(subjects.STREAM_OBSERVED, subjects.observed("node-1"))
        assert observed.data
        state = await operator.request(
            subjects.executor_control("node-1", "state"), b"", timeout=30
        )
        assert b"mgmt-br" in state.data
        # Everything it did was within node-1's permissions.
        assert violations(secured, "node-1") == [], violations(secured, "node-1")
        assert executor.proc.poll() is None, executor.output()
    finally:
        code = executor.stop()
        if planner is not None:
            await planner.stop()
        for nc in (planner_nc, operator):
            if nc is not None:
                await nc.close()
    assert code == 0, executor.output()  # stops promptly on SIGTERM (as systemd stops it)
    # Its log (the journal) names the server but never the password in NATS_URL.
    assert f"tls://node-1:***@127.0.0.1:{secured.port}" in executor.output()
    assert secured.passwords["node-1"] not in executor.output()


async def test_node_1s_credentials_cannot_run_node_2s_executor(
    secured: SecuredNats,  # noqa: F811
    node1: HostNode,
    tmp_path: Path,
) -> None:
    """An executor started with node-1's user but ``--node node-2`` (a stolen credential used
    for another node) is refused: it never reads node-2's intent nor reports for node-2."""
    planner_nc = await secured.connect("planner")
    js = planner_nc.jetstream()
    await bus.ensure_streams(js, list(bus.STREAMS))
    it = intent(node1, 1, [untagged_port(node1.vm("b"))])
    await js.publish(
        subjects.intent("node-2"), bus.encode(msgspec.structs.replace(it, node="node-2"))
    )

    impostor = Executor(secured, "node-1", "node-2", node1.ns, tmp_path / "impostor.log")
    try:
        await asyncio.to_thread(impostor.proc.wait, 120)
    finally:
        impostor.stop()
    out = impostor.output()
    assert impostor.proc.returncode == 1, out
    assert secured.passwords["node-1"] not in out
    assert "cannot read stream" in out and "permission" in out, out
    assert violations(secured, "node-1"), "the server reported no violation"
    assert await statuses(planner_nc, "node-2") == []
    assert node1.vms[0] not in pyroute2_netns.listnetns()  # node-2's VM NIC was not plugged
    consumers = await js.consumers_info(subjects.STREAM_INTENTS)
    assert [c.name for c in consumers] == []
    await planner_nc.close()


async def test_without_the_flag_a_refused_stream_creation_turns_into_waiting(
    secured: SecuredNats,  # noqa: F811
    node1: HostNode,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An executor run as a node user without ``--no-create-streams`` asks once, is refused
    by the server, says so, and waits for the planner like one run with the flag."""
    monkeypatch.setenv("SSL_CERT_FILE", str(secured.ca))
    url = f"tls://node-1:{secured.passwords['node-1']}@127.0.0.1:{secured.port}"
    executor = ExecutorService(
        ExecutorConfig(node="node-1", servers=[url], heartbeat_s=1.0, trusted_keys=[keys.PUBLIC]),
        NetlinkKernel("node-1", netns=node1.ns),
    )
    caplog.set_level("WARNING", logger="l2net.executor")
    starting = asyncio.create_task(executor.start())
    planner_nc = None
    try:
        await until(lambda: "waiting for stream(s)" in caplog.text, timeout=60)
        assert "could not create them (a node's NATS user may not)" in caplog.text
        assert "start the planner first" in caplog.text
        assert not starting.done()
        creates = [r for r in caplog.records if "could not create stream" in r.getMessage()]
        assert len(creates) == 1, "asked once, not once per stream"

        planner_nc = await secured.connect("planner")
        await bus.ensure_streams(planner_nc.jetstream(), list(bus.STREAMS))
        await asyncio.wait_for(starting, 60)
        raw = await planner_nc.jetstream().get_last_msg(
            subjects.STREAM_NODES, subjects.node("node-1")
        )
        assert bus.decode(raw.data or b"", Node).name == "node-1"
    finally:
        if not starting.done():
            starting.cancel()
        await executor.stop()
        if planner_nc is not None:
            await planner_nc.close()
