"""Forged intents on a real nats-server, against a real executor in a namespace node.

Whoever may publish on ``l2.intent.<node>`` (a leaked credential, a permission mistake, a
stream that sources into ``L2_INTENTS``), the executor applies only what a trusted key
signed for this node, and only the bridge CNI config l2net itself generates. Each forgery is
refused, reported once (a Failed status naming why), terminated (never redelivered) and
changes nothing in the kernel; a genuine next generation is applied afterwards.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from services.cli.main import main as l2net
from services.executor.service import Executor, consumer_name
from shared.domain.model import NodeIntent, NodeStatus
from shared.runtime import bus
from shared.wire import signing, subjects
from tests import keys
from tests.executor.conftest import ExecutorFactory, HostNode, intent, untagged_port
from tests.executor.helpers import final_status, statuses
from tests.kit import until

pytestmark = pytest.mark.timeout(180)


@dataclass
class Forgery:
    """One forged intent: how it is made from a genuine one, and the reason it must give."""

    name: str
    make: Callable[[NodeIntent], bytes]
    reason: str
    moves_generation: bool = False
    """A planner-signed intent whose content the executor refuses is a generation handled
    (Failed); a forgery is not, so it can never freeze the node on a fake generation."""


def _signed(it: NodeIntent) -> bytes:
    return bus.encode(keys.sign(it))


def _with_cni(**changes: object) -> Callable[[NodeIntent], bytes]:
    def make(it: NodeIntent) -> bytes:
        it = copy.deepcopy(it)
        it.vm_ports[0].cni_config.update(changes)
        return _signed(it)

    return make


def _tampered(it: NodeIntent) -> bytes:
    signed = keys.sign(it)
    port = copy.deepcopy(signed.vm_ports[0])
    port.cni_config["bridge"] = port.bridge = "oob-br"
    port.cluster_network = "oob"
    signed.vm_ports.append(msgspec.structs.replace(port, ifname="eth1", name="extra"))
    return bus.encode(signed)


def _other_node(it: NodeIntent) -> bytes:
    return _signed(msgspec.structs.replace(it, node="node-elsewhere"))


def _mangled_signature(it: NodeIntent) -> bytes:
    signed = keys.sign(it)
    assert signed.signature is not None
    key, _, sig = signed.signature.partition(".")
    return bus.encode(msgspec.structs.replace(signed, signature=f"{key}.{sig[::-1]}"))


FORGERIES = [
    Forgery("unsigned", lambda it: bus.encode(it), "intent is not signed"),
    Forgery(
        "wrong key",
        lambda it: bus.encode(signing.sign(it, signing.new_seed())),
        "which this node does not trust",
    ),
    Forgery("signed for another node", _other_node, "intent for node 'node-elsewhere'"),
    Forgery("tampered after signing", _tampered, "does not match its content"),
    Forgery("mangled signature", _mangled_signature, "does not match its content"),
    Forgery(
        "far-future generation, unsigned",
        lambda it: bus.encode(msgspec.structs.replace(it, generation=10**12)),
        "intent is not signed",
    ),
    Forgery(
        "stale generation, unsigned",
        lambda it: bus.encode(msgspec.structs.replace(it, generation=1)),
        "intent is not signed",
    ),
    Forgery(
        "foreign CNI type (host-device of a NIC)",
        _with_cni(type="host-device", device="eth1"),
        "keys l2net never generates: device",
        moves_generation=True,
    ),
    Forgery(
        "foreign CNI type (macvlan on mgmt-bo)",
        _with_cni(type="macvlan", master="mgmt-bo"),
        "keys l2net never generates: master",
        moves_generation=True,
    ),
    Forgery(
        "foreign CNI options (ipam)",
        _with_cni(ipam={"type": "host-local", "subnet": "169.254.9.0/24"}),
        "l2net gives VM NICs no addresses",
        moves_generation=True,
    ),
    Forgery(
        "foreign CNI options (isGateway)",
        _with_cni(isGateway=True),
        "keys l2net never generates: isGateway",
        moves_generation=True,
    ),
    Forgery(
        "CNI bridge of another cluster network",
        _with_cni(bridge="oob-br"),
        "the bridge of cluster network 'mgmt' is 'mgmt-br'",
        moves_generation=True,
    ),
    Forgery(
        "CNI VLAN not the port's",
        _with_cni(vlan=100),
        "the port's VLANs are ['1 PVID untagged']",
        moves_generation=True,
    ),
]


async def _kernel(ex: Executor) -> tuple[object, ...]:
    """What the executor manages in its node, read now (links, VIDs, VM namespaces)."""
    observed = await ex.live_state("forgery check")
    return (observed.links, observed.vlans, observed.namespaces)


async def _reports(nc: Client, node: str, reason: str) -> list[NodeStatus]:
    return [
        st for st in await statuses(nc, node) if st.phase == "Failed" and reason in (st.error or "")
    ]


async def test_forged_intents_are_refused_reported_and_change_nothing(
    host_node: HostNode, nc: Client, executors: ExecutorFactory
) -> None:
    ex = await executors(host_node)
    js = nc.jetstream()
    subject = subjects.intent(host_node.node)
    a = host_node.vm("a")
    await js.publish(subject, _signed(intent(host_node, 2, [untagged_port(a)])))
    await until(lambda: final_status(nc, host_node.node, 2))
    assert (await final_status(nc, host_node.node, 2)).phase == "Applied"  # type: ignore[union-attr]
    before = await _kernel(ex)

    generation = 2
    refused = 0
    for forgery in FORGERIES:
        generation += 1
        # Each would replace VM a by a VM the test would see: nothing of it may appear.
        target = intent(host_node, generation, [untagged_port(host_node.vm(f"f{generation}"))])
        handled = ex.handled_generation
        seen = len(await _reports(nc, host_node.node, forgery.reason))

        async def reported(reason: str = forgery.reason, seen: int = seen) -> bool:
            return len(await _reports(nc, host_node.node, reason)) > seen

        await js.publish(subject, forgery.make(target))
        await until(reported)
        unchanged = await _kernel(ex) == before
        moved = ex.handled_generation != handled
        if unchanged and moved == forgery.moves_generation:
            refused += 1
        else:
            print(f"NOT refused cleanly: {forgery.name} (kernel unchanged {unchanged})")

    # The genuine next generation is still applied: no forgery froze the node.
    generation += 1
    await js.publish(subject, _signed(intent(host_node, generation, [])))
    await until(lambda: final_status(nc, host_node.node, generation))
    assert (await final_status(nc, host_node.node, generation)).phase == "Applied"  # type: ignore[union-attr]
    assert a not in (await _kernel(ex))[2]

    # Reported once each (the genuine intent's status came after all of them), and every
    # forged message terminated or acknowledged: nothing pending, nothing redelivered.
    once = 0
    for forgery in FORGERIES:
        count = len(await _reports(nc, host_node.node, forgery.reason))
        same_reason = sum(f.reason == forgery.reason for f in FORGERIES)
        once += count == same_reason
    info = await js.consumer_info(subjects.STREAM_INTENTS, consumer_name(host_node.node))
    assert info.num_ack_pending == 0 and info.num_redelivered == 0
    print(f"forged intents refused, nothing applied: {refused}/{len(FORGERIES)}")
    print(f"forged intents reported once: {once}/{len(FORGERIES)}")
    assert refused == len(FORGERIES)
    assert once == len(FORGERIES)


async def test_a_replayed_genuine_old_intent_is_not_applied(
    host_node: HostNode, nc: Client, executors: ExecutorFactory
) -> None:
    """A stale generation that the planner really signed (a replay) is not applied."""
    ex = await executors(host_node)
    js = nc.jetstream()
    subject = subjects.intent(host_node.node)
    old = intent(host_node, 1, [untagged_port(host_node.vm("old"))])
    await js.publish(subject, _signed(old))
    await until(lambda: final_status(nc, host_node.node, 1))
    await js.publish(subject, _signed(intent(host_node, 2, [])))
    await until(lambda: final_status(nc, host_node.node, 2))
    before = await _kernel(ex)
    await js.publish(subject, _signed(old))  # replayed
    await js.publish(subject, _signed(intent(host_node, 3, [])))
    await until(lambda: final_status(nc, host_node.node, 3))
    assert await _kernel(ex) == before
    after_two = await statuses(nc, host_node.node)
    after_two = after_two[[st.observed_generation for st in after_two].index(2) :]
    # Never handled again: refused once as stale, never applied.
    again = [st for st in after_two if st.observed_generation == 1]
    assert [(st.phase, "stale intent refused" in (st.error or "")) for st in again] == [
        ("Failed", True)
    ], again


async def test_a_forged_last_intent_is_refused_at_start(
    host_node: HostNode, nc: Client, executors: ExecutorFactory
) -> None:
    """A forgery that is the last intent of the executor's subject when it starts is
    refused and reported too, never applied."""
    first = await executors(host_node)
    js = nc.jetstream()
    subject = subjects.intent(host_node.node)
    await js.publish(subject, _signed(intent(host_node, 1, [])))
    await until(lambda: final_status(nc, host_node.node, 1))
    await first.stop()
    forged = intent(host_node, 99, [untagged_port(host_node.vm("forged"))])
    await js.publish(subject, bus.encode(forged))
    ex = await executors(host_node)
    await until(lambda: _reports(nc, host_node.node, "intent is not signed"))
    assert host_node.vm("forged") not in (await _kernel(ex))[2]
    assert ex.handled_generation < 99


async def test_an_executor_that_trusts_no_key_applies_nothing(
    host_node: HostNode, nc: Client, executors: ExecutorFactory
) -> None:
    ex = await executors(host_node)
    ex.config.trusted_keys = []  # as if started without --trust-key (the CLI refuses that)
    await nc.jetstream().publish(
        subjects.intent(host_node.node),
        _signed(intent(host_node, 1, [untagged_port(host_node.vm("a"))])),
    )
    await until(lambda: _reports(nc, host_node.node, "trusts no signing key"))
    assert host_node.vm("a") not in (await _kernel(ex))[2]


async def test_the_insecure_dev_flag_applies_unsigned_intents(
    host_node: HostNode, nc: Client, executors: ExecutorFactory
) -> None:
    ex = await executors(host_node)
    ex.config.trusted_keys = []
    ex.config.accept_unsigned = True  # --insecure-accept-unsigned
    await nc.jetstream().publish(
        subjects.intent(host_node.node), bus.encode(intent(host_node, 1, []))
    )
    await until(lambda: final_status(nc, host_node.node, 1))
    assert (await final_status(nc, host_node.node, 1)).phase == "Applied"  # type: ignore[union-attr]


def test_the_executor_refuses_to_start_without_a_trusted_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("L2NET_TRUST_KEYS", raising=False)
    base = ["executor", "--node", "n1", "--nats", "nats://127.0.0.1:1"]
    assert l2net(base) == 2  # refused before connecting anywhere
    assert "no trusted signing key: give the planner's public key with --trust-key" in (
        capsys.readouterr().out
    )
    assert l2net([*base, "--trust-key", "NOTAKEY"]) == 2
    assert "--trust-key: public key 'NOTAKEY'" in capsys.readouterr().out
    listed = tmp_path / "keys"
    listed.write_text(f"# the planner\n{keys.PUBLIC}\n{keys.SEED}\n")
    assert l2net([*base, "--trust-keys-file", str(listed)]) == 2
    out = capsys.readouterr().out
    assert f"{listed}:3: a seed (a secret)" in out
    assert keys.SEED[:6] not in out  # a secret put in the wrong file is not echoed
    monkeypatch.setenv("L2NET_TRUST_KEYS", f"{keys.PUBLIC},bogus")
    assert l2net(base) == 2
    assert "$L2NET_TRUST_KEYS: public key 'bogus'" in capsys.readouterr().out
