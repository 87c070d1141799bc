"""Poison intents: every way an intent's values can be wrong, on a real nats-server, against
a host namespace node.

Each poison intent (a value of the wrong type or out of range for every bond option and
link attribute, bad addresses, bad VIDs, bad names, bad generations, bytes that are not an
intent) must be refused before any netlink write: reported once as ``Failed`` with the
field named, terminated (``term()``, seen as JetStream's own advisory), never redelivered,
the node's state unchanged (full dump compared), the executor alive. The same holds when
the poison is the last message at start, with and without state on disk. And an exception
of any kind in the middle of an apply still rolls back.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from services.executor import dump
from services.executor.kernel import NetlinkKernel
from services.executor.planning import Step
from services.executor.reconciling import converge
from services.executor.service import Executor, ExecutorConfig, consumer_name
from shared.domain.l2state import NodeL2State, check_intent, desired_state
from shared.domain.model import (
    BondIntent,
    ClusterNetworkIntent,
    HostVlanIntent,
    NodeIntent,
    NodeStatus,
    VlanRange,
)
from shared.runtime import bus, natsserver
from shared.wire import subjects
from tests import keys
from tests.executor.conftest import HostNode, intent, mgmt_cn, untagged_port
from tests.executor.helpers import final_status
from tests.kit import until

pytestmark = pytest.mark.timeout(600)

Mutation = Callable[[dict[str, Any]], None]

AT_START_EVERY = 3
"""Every third case is also tried as the last message at start (each costs a restart)."""


def base(node: HostNode, generation: int) -> NodeIntent:
    """A valid intent with something in every part a poison can hide in: a managed
    cluster network with a bond (options and link attributes), a host VLAN interface with an
    address, a VM NIC."""
    return NodeIntent(
        node=node.node,
        generation=generation,
        cluster_networks=[
            mgmt_cn(),
            ClusterNetworkIntent(
                name="oob",
                bridge="oob-br",
                bond_name="oob-bo",
                managed=True,
                bond=BondIntent(
                    name="oob-bo",
                    ports=["eth1"],
                    mode="active-backup",
                    options={"miimon": 100},
                    mtu=1500,
                ),
                mtu=1500,
                uplink_vlans=[VlanRange(vid=1, pvid=True, untagged=True), VlanRange(vid=200)],
            ),
        ],
        host_vlans=[
            HostVlanIntent(
                name="oob-br.200",
                host_network="storage",
                cluster_network="oob",
                bridge="oob-br",
                vlan=200,
                addresses=["169.254.20.1/24"],
            )
        ],
        vm_ports=[untagged_port(node.vm("p"))],
    )


def setter(path: str, value: Any) -> Mutation:
    """Set ``path`` (dots and [i], the wire's camelCase names) to ``value``."""

    def mutate(doc: dict[str, Any]) -> None:
        keys_ = path.replace("[", ".").replace("]", "").split(".")
        target: Any = doc
        for key in keys_[:-1]:
            target = target[int(key)] if key.isdigit() else target[key]
        last = keys_[-1]
        if last.isdigit():
            target[int(last)] = value
        else:
            target[last] = value

    return mutate


BOND = "clusterNetworks.1.bond"
OPTS = f"{BOND}.options"
CN = "clusterNetworks.1"
HV = "hostVlans.0"
VP = "vmPorts.0"

# (name, mutation of the encoded intent, what the error must name)
CASES: list[tuple[str, Mutation, str]] = []


def case(path: str, value: Any, names: str | None = None) -> None:
    field = [part for part in path.split(".") if not part.isdigit()][-1]
    CASES.append((f"{path}={value!r}"[:80], setter(path, value), names or field))


for option in ("miimon", "updelay", "downdelay", "arp_interval"):
    for bad in ("abc", 99999999999, -1, True, 1.5, "100", [100]):
        case(f"{OPTS}.{option}", bad, f"bond.options.{option}")
for option, bads in {
    "lacp_rate": ["medium", 7, ["fast"], 1.0],
    "ad_select": ["sometimes", 9, {}],
    "xmit_hash_policy": ["layer9", 42, -1],
    "arp_validate": ["maybe", 99, False],
    "arp_ip_target": [["999.1.1.1"], "169.254.0.1", [1, 2], ["169.254.0.1"] * 17, ["::1"]],
    "primary": ["bad name", 12, "a" * 16, "eth/1", ""],
    "no_such_option": [1],
}.items():
    for bad in bads:
        case(f"{OPTS}.{option}", bad, f"bond.options.{option}")
for bad in ("fast-rr", 9, "7", "", ["active-backup"]):
    case(f"{BOND}.mode", bad, "mode")
for bad in (0, 67, 65536, 99999999999, -1, "abc", 1500.5, None):
    case(f"{BOND}.mtu", bad, "mtu")
    case(f"{CN}.mtu", bad, "mtu")
    case(f"{HV}.mtu", bad, "mtu")
for bad in (-1, 2**32, 2**64, "long", 1.5):
    case(f"{BOND}.txqlen", bad, "txqlen")
for bad in ("zz:zz:zz:zz:zz:zz", "01:00:5e:00:00:01", "00:00:00:00:00:00", "aa:bb:cc", 5):
    case(f"{BOND}.hwaddr", bad, "hwaddr")
    case(f"{VP}.mac", bad, "mac")
for bad in ("169.254.20.1/99", "not-an-ip", "300.1.1.1/24", "", 5, ["169.254.20.1/24"]):
    case(f"{HV}.addresses.0", bad, "addresses")
for bad in (0, 4095, -1, 99999, "200"):
    case(f"{HV}.vlan", bad, "vlan")
    case(f"{CN}.uplinkVlans.1.vid", bad, "uplinkVlans")
    case(f"{VP}.vlans.0.vid", bad, "vlans")
case(f"{CN}.uplinkVlans.1.vidEnd", 100, "uplinkVlans")  # an end below its start
case(f"{CN}.uplinkVlans.1.vidEnd", 5000, "uplinkVlans")
case(f"{VP}.vlans.0", {"vid": 10, "vidEnd": 20, "pvid": True}, "vlans")  # a PVID range
for path, bads in {
    f"{BOND}.name": ["x" * 16, "a/b", "", "a b", 7],
    f"{BOND}.ports.0": ["eth:1", "x" * 16, ".."],
    f"{BOND}.ports": [[], ["eth1", "eth1"]],
    f"{CN}.bridge": ["../br", "br\u0000x"],
    f"{CN}.bondName": ["b" * 20],
    f"{CN}.name": ["o b", "cn=x"],
    f"{HV}.name": ["x" * 16, "a:b"],
    f"{HV}.hostNetwork": ["a b", "k=v"],
    f"{HV}.bridge": ["", "/"],
    f"{VP}.vm": ["../../etc", "a b", "", ".", "x" * 65],
    f"{VP}.ifname": ["", "e" * 16, "eth 0"],
    f"{VP}.network": ["net=1", "a b", ""],
    f"{VP}.bridge": ["x" * 16],
}.items():
    for bad in bads:
        case(path, bad)
for bad in (-1, 2**63, 2**70, "5", None, 1.5):
    case("generation", bad, "generation")
case("clusterNetworks", {"oob": 1}, "clusterNetworks")
case("node", 3, "node")
case("node", "someone-else", "intent for node 'someone-else'")


async def dumped(kernel: NetlinkKernel) -> dict[str, object]:
    state: NodeL2State = await kernel.read()
    out = dump.comparable(state)
    # this node's VM namespaces only: tests running beside this one make their own
    out["namespaces"] = [ns for ns in state.namespaces if ns.startswith(f"{kernel.netns}-")]
    return out


class Probe:
    """What the test sees on the bus as it happens: the node's statuses, and per stream
    sequence the messages JetStream says the executor terminated (its advisory)."""

    def __init__(self) -> None:
        self.terminated: list[int] = []
        self.statuses: list[NodeStatus] = []

    async def on_advisory(self, msg: Msg) -> None:
        self.terminated.append(int(json.loads(msg.data)["stream_seq"]))

    async def on_status(self, msg: Msg) -> None:
        self.statuses.append(bus.decode(msg.data, NodeStatus))


@pytest.fixture
async def probe(nc: Client, host_node: HostNode) -> AsyncIterator[Probe]:
    p = Probe()
    subject = (
        "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED."
        f"{subjects.STREAM_INTENTS}.{consumer_name(host_node.node)}"
    )
    subs = [
        await nc.subscribe(subject, cb=p.on_advisory),
        await nc.subscribe(subjects.status(host_node.node), cb=p.on_status),
    ]
    await bus.settle(nc)
    try:
        yield p
    finally:
        for sub in subs:
            await sub.unsubscribe()


def poison(node: HostNode, generation: int, mutate: Mutation) -> bytes:
    """The bytes of a base intent changed by ``mutate``; signed with the tests' key when it
    still decodes (so that it is refused for its values, not for a missing signature)."""
    doc = json.loads(bus.encode(base(node, generation)))
    mutate(doc)
    try:
        it = msgspec.convert(doc, NodeIntent)
    except (msgspec.ValidationError, TypeError):
        return json.dumps(doc).encode()
    return bus.encode(keys.sign(it))


async def publish_raw(nc: Client, node: str, data: bytes) -> int:
    js = nc.jetstream()
    await bus.ensure_streams(js, [subjects.STREAM_INTENTS])
    ack = await js.publish(subjects.intent(node), data)
    return ack.seq


async def consumed(nc: Client, node: str) -> bool:
    info = await nc.jetstream().consumer_info(subjects.STREAM_INTENTS, consumer_name(node))
    return info.num_pending == 0 and info.num_ack_pending == 0


def test_the_base_intent_is_valid_and_every_case_breaks_it(host_node: HostNode) -> None:
    check_intent(base(host_node, 2))
    assert len(CASES) > 150
    for name, mutate, _ in CASES:
        doc = json.loads(bus.encode(base(host_node, 2)))
        before = copy.deepcopy(doc)
        mutate(doc)
        assert doc != before, name


async def test_poison_intents_are_refused_once_terminated_and_change_nothing(
    host_node: HostNode,
    nc: Client,
    probe: Probe,
    nats_server: natsserver.EmbeddedNats,
    tmp_path: Path,
) -> None:
    ex = Executor(
        ExecutorConfig(
            node=host_node.node,
            servers=[nats_server.url],
            heartbeat_s=0.5,
            trusted_keys=[keys.PUBLIC],
            state_dir=tmp_path / "state",
        ),
        NetlinkKernel(host_node.node, netns=host_node.ns),
    )
    await ex.start()
    try:
        js = nc.jetstream()
        good = intent(host_node, 1, [untagged_port(host_node.vm("a"))])
        await publish_raw(nc, host_node.node, bus.encode(keys.sign(good)))
        await until(lambda: final_status(nc, host_node.node, 1))
        before = await dumped(ex.kernel)

        async def check(name: str, seq: int, names: str, seen_before: int) -> str | None:
            """None when the poison at ``seq`` was handled right, else what went wrong."""
            await until(lambda: consumed(nc, host_node.node))
            await until(lambda: seq in probe.terminated)
            got = [
                s
                for s in probe.statuses[seen_before:]
                if not (s.results and "converged at start" in s.results[0].action)
            ]
            final = [s for s in got if s.phase != "Progressing"]
            info = await js.consumer_info(subjects.STREAM_INTENTS, consumer_name(host_node.node))
            problems = []
            if len(got) != 1 or len(final) != 1 or final[0].phase != "Failed":
                problems.append(f"statuses {[(s.phase, s.error) for s in got]}")
            elif names not in (final[0].error or ""):
                problems.append(f"error does not name {names!r}: {final[0].error}")
            if final and final[0].netlink_writes:
                problems.append("netlink writes")
            if probe.terminated.count(seq) != 1:
                problems.append(f"terminated {probe.terminated.count(seq)} times")
            if info.num_redelivered:
                problems.append(f"{info.num_redelivered} redelivered")
            if await dumped(ex.kernel) != before:
                problems.append("node state changed")
            return f"{name}: {'; '.join(problems)}" if problems else None

        ok = 0
        failures: list[str] = []
        for generation, (name, mutate, names) in enumerate(CASES, start=2):
            seen = len(probe.statuses)
            seq = await publish_raw(nc, host_node.node, poison(host_node, generation, mutate))
            problem = await check(name, seq, names, seen)
            if problem is None:
                ok += 1
            else:
                failures.append(problem)
        print(f"poison intents while running, refused once and terminated: {ok}/{len(CASES)}")
        assert ok == len(CASES), failures[:10]
        assert ex.connected  # alive all along

        # The same poison as the last message at start: the executor starts every time
        # (with state on disk, and fresh: the direct get of the last message), reports it
        # once, terminates it, and keeps the node as it was.
        ok = 0
        failures = []
        at_start = CASES[::AT_START_EVERY]
        for i, (name, mutate, names) in enumerate(at_start):
            await ex.stop()
            seen = len(probe.statuses)
            data = poison(host_node, 1000 + i, mutate)
            seq = await publish_raw(nc, host_node.node, data)
            fresh = i % 2 == 1  # a first start: nothing on disk, the last message is taken
            ex = Executor(
                ExecutorConfig(
                    node=host_node.node,
                    servers=[nats_server.url],
                    heartbeat_s=0.5,
                    trusted_keys=[keys.PUBLIC],
                    state_dir=tmp_path / "fresh" / str(i) if fresh else tmp_path / "state",
                ),
                NetlinkKernel(host_node.node, netns=host_node.ns),
            )
            await asyncio.wait_for(ex.start(), 120)  # never prevents start
            problem = await check(
                f"{name} (at start, {'fresh' if fresh else 'kept'})", seq, names, seen
            )
            if problem is None:
                ok += 1
            else:
                failures.append(problem)
        print(f"poison intents as the last message at start: {ok}/{len(at_start)}")
        assert ok == len(at_start), failures[:10]

        # None of it moved the generation: the next real one applies.
        # (A generation no poison above carried, so that its status is this intent's.)
        nxt = intent(
            host_node, 10_000, [untagged_port(host_node.vm("a")), untagged_port(host_node.vm("b"))]
        )
        await publish_raw(nc, host_node.node, bus.encode(keys.sign(nxt)))
        await until(lambda: final_status(nc, host_node.node, 10_000))
        status = await final_status(nc, host_node.node, 10_000)
        assert status is not None and status.phase == "Applied", status
    finally:
        await ex.stop()


async def test_any_exception_in_the_middle_of_an_apply_rolls_back(
    host_node: HostNode, kernel: NetlinkKernel
) -> None:
    a, b, c = host_node.vm("a"), host_node.vm("b"), host_node.vm("c")
    desired, _ = desired_state(intent(host_node, 1, [untagged_port(a)]))
    assert (await converge(kernel, desired)).phase == "Applied"
    before = await dumped(kernel)
    kinds: list[type[Exception]] = [RuntimeError, TypeError, ValueError, KeyError, OSError]
    ok = 0
    for kind in kinds:
        plugs = [0]

        async def explode(
            step: Step, kind: type[Exception] = kind, plugs: list[int] = plugs
        ) -> None:
            plugs[0] += step.op == "cni.add"
            if plugs[0] == 2:
                raise kind("injected in the middle of an apply")

        desired, _ = desired_state(
            intent(host_node, 2, [untagged_port(a), untagged_port(b), untagged_port(c)])
        )
        outcome = await converge(kernel, desired, before_step=explode)
        if (
            outcome.phase == "RolledBack"
            and kind.__name__ in (outcome.error or "")
            and await dumped(kernel) == before
        ):
            ok += 1
    print(f"exceptions of any kind mid-apply rolled back exactly: {ok}/{len(kinds)}")
    assert ok == len(kinds)
