"""An apply that cuts the node off from NATS is rolled back by the executor itself (UML lab).

The planner and the executor refuse every change known to cut the management path, so the
cut-offs here are injected: the node's executor runs with the test-only switch
``--test-only-allow-mgmt-cuts`` (its refusals off, nothing else changed) and a short
``--confirm-timeout``, and intents that really cut the node off are published by hand,
signed with the tests' key. Each must end ``RolledBack`` with the reason, the node's
management bridge and bond exactly as before, and the node reachable over NATS again.
"""

from __future__ import annotations

import json
import shlex
import time

import pytest
from nats.aio.client import Client

from services.lab import Lab
from services.lab.fleet import REPO_ROOT, executor_command
from shared.domain.model import HostVlanIntent, Node, NodeIntent, VlanRange
from shared.runtime import bus
from shared.wire import subjects
from tests import keys
from tests.executor.conftest import mgmt_cn
from tests.executor.helpers import final_status, publish_intent
from tests.executor.labkit import sh
from tests.kit import lab_fixture, until

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

NODE = "node-1"
CONFIRM_S = 5.0


lab = lab_fixture("exlab-confirm", nodes=1, executor=False)


async def start_unguarded_executor(lab: Lab, nc: Client) -> None:
    """The lab's own executor command line, plus the test-only switch and a short confirm."""
    argv = executor_command(
        node=NODE,
        nats_url=lab.nats_url_inside,
        trust_keys=[keys.PUBLIC],
        state_dir=str(lab.node_dir(NODE) / "executor-state"),
    )
    argv += ["--confirm-timeout", str(CONFIRM_S), "--test-only-allow-mgmt-cuts"]
    log = lab.node_dir(NODE) / "executor.log"
    started = time.time()
    # From the repository root, as the lab starts its executors (the code under test).
    script = (
        f"cd {shlex.quote(str(REPO_ROOT))} && "
        f"{shlex.join(argv)} >> {shlex.quote(str(log))} 2>&1 < /dev/null &"
    )
    result = await lab.aexec(NODE, ["sh", "-c", script], nc=nc)
    assert result.rc == 0, result

    async def registered() -> bool:
        try:
            raw = await nc.jetstream().get_last_msg(subjects.STREAM_NODES, subjects.node(NODE))
        except Exception:
            return False
        return raw.data is not None and bus.decode(raw.data, Node).heartbeat_at > started

    try:
        await until(registered, timeout=180)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; executor log:\n{log.read_text()[-3000:]}") from exc


def cut_offs(generation: int) -> list[tuple[str, NodeIntent]]:
    """Intents that really cut a lab node off (the node's address is on mgmt-br, untagged;
    NATS is reached through the lab gateway 169.254.0.1 on 169.254.0.0/16)."""

    def hv(vlan: int, addresses: list[str]) -> HostVlanIntent:
        return HostVlanIntent(
            name=f"mgmt-br.{vlan}",
            host_network=f"cut{vlan}",
            cluster_network="mgmt",
            bridge="mgmt-br",
            vlan=vlan,
            addresses=addresses,
        )

    cases = [
        ("VLAN 1 network on mgmt", {"cluster_networks": [mgmt_cn([VlanRange(vid=1)])]}),
        (
            "trunk 1-4094 on mgmt",
            {"cluster_networks": [mgmt_cn([VlanRange(vid=1, vid_end=4094)])]},
        ),
        ("host VLAN interface on VID 1 of mgmt-br", {"host_vlans": [hv(1, ["169.254.99.1/24"])]}),
        (
            "host address with a more specific route to the NATS gateway",
            {"host_vlans": [hv(99, ["169.254.0.77/24"])]},
        ),
    ]
    return [
        (what, NodeIntent(node=NODE, generation=generation + i, **fields))
        for i, (what, fields) in enumerate(cases)
    ]


async def mgmt_dump(lab: Lab, nc: Client) -> object:
    """What the cut-offs change: mgmt-br's and mgmt-bo's VLANs, links and addresses."""
    vlans = json.loads(await sh(lab, NODE, "bridge", "-j", "vlan", "show"))
    links = json.loads(await sh(lab, NODE, "ip", "-j", "addr", "show"))
    keep = ("ifname", "flags", "mtu", "master", "addr_info")
    return (
        sorted(json.dumps(v, sort_keys=True) for v in vlans),
        sorted(json.dumps({k: link.get(k) for k in keep}, sort_keys=True) for link in links),
    )


async def test_injected_cut_offs_are_rolled_back_within_the_confirm_time(
    lab: Lab, labnc: Client
) -> None:
    await start_unguarded_executor(lab, labnc)
    before = await mgmt_dump(lab, labnc)
    table = cut_offs(1)
    ok = 0
    failures: list[str] = []
    for what, intent in table:
        await publish_intent(labnc, keys.sign(intent))
        gen = intent.generation
        await until(lambda g=gen: final_status(labnc, NODE, g), timeout=240)
        status = await final_status(labnc, NODE, gen)
        assert status is not None
        reachable = (await lab.aping(NODE, timeout=10, nc=labnc)) is not None
        after = await mgmt_dump(lab, labnc)
        error = status.error or ""
        print(
            f"  {what}: {status.phase} after {status.duration_s:.1f}s "
            f"(confirm {CONFIRM_S:g}s): {error}"
        )
        if (
            status.phase == "RolledBack"
            and f"lost the path to NATS after applying generation {gen}" in error
            and "restored the previous state" in error
            and reachable
            and after == before
        ):
            ok += 1
        else:
            failures.append(f"{what}: {status.phase} {error}; same state: {after == before}")
    print(f"injected cut-offs rolled back by the executor: {ok}/{len(table)}")
    assert ok == len(table), failures
