"""Confirm-or-revert on a host namespace node and a real nats-server (fast; the lab test
``test_lab_confirm.py`` cuts a real management path).

A configured TCP probe that stops answering during the apply stands in for a lost path:
the executor must restore the previous state by itself and report ``RolledBack`` with the
reason; with the probe answering, the same intent is ``Applied``.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from nats.aio.client import Client

from services.executor.kernel import NetlinkKernel
from services.executor.mgmt import Confirmer
from services.executor.planning import Step
from services.executor.service import Executor, ExecutorConfig
from shared.runtime import natsserver
from tests import keys
from tests.executor.conftest import HostNode, intent, untagged_port
from tests.executor.helpers import final_status, publish_intent
from tests.kit import until

pytestmark = pytest.mark.timeout(120)


async def test_a_lost_probe_rolls_the_apply_back_and_says_why(
    host_node: HostNode, nats_server: natsserver.EmbeddedNats, nc: Client
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    cut = asyncio.Event()

    async def cut_during_apply(step: Step) -> None:
        if cut.is_set():
            listener.close()  # the probe's peer goes away in the middle of the apply

    ex = Executor(
        ExecutorConfig(
            node=host_node.node,
            servers=[nats_server.url],
            heartbeat_s=0.3,
            confirm_s=1.0,
            probes=[f"127.0.0.1:{port}"],
            trusted_keys=[keys.PUBLIC],
        ),
        NetlinkKernel(host_node.node, netns=host_node.ns),
        before_step=cut_during_apply,
    )
    await ex.start()
    try:
        vm = host_node.vm("a")
        await publish_intent(nc, keys.sign(intent(host_node, 1, [untagged_port(vm)])))
        await until(lambda: final_status(nc, host_node.node, 1))
        applied = await final_status(nc, host_node.node, 1)
        assert applied is not None and applied.phase == "Applied", applied
        before = await ex.kernel.read()

        cut.set()
        vm_b = host_node.vm("b")
        ports = [untagged_port(vm), untagged_port(vm_b)]
        await publish_intent(nc, keys.sign(intent(host_node, 2, ports)))
        await until(lambda: final_status(nc, host_node.node, 2))
        status = await final_status(nc, host_node.node, 2)
        assert status is not None and status.phase == "RolledBack", status
        assert "lost the path to NATS after applying generation 2" in (status.error or "")
        assert f"probe 127.0.0.1:{port}" in (status.error or "")
        assert "restored the previous state" in (status.error or "")
        after = await ex.kernel.read()
        assert sorted(after.vm_ports) == sorted(before.vm_ports) == [f"{vm}/eth0"]
    finally:
        listener.close()
        await ex.stop()


async def test_confirm_answers_none_while_nats_answers(nc: Client) -> None:
    confirmer = Confirmer(nc, 7, timeout_s=5.0)
    assert confirmer.enabled()
    assert await confirmer() is None and not confirmer.lost
    assert not Confirmer(nc, 7, timeout_s=0).enabled()  # 0: no confirm
    assert not Confirmer(None, 7).enabled()  # no NATS before the apply: nothing to lose
