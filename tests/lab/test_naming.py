"""The lab's pure parts, without booting anything: names, addresses, switch grouping, the
OTEL hand-over, the VLAN translator's framing, the executor hook and the CLI's parsing."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import subprocess
import sys

import pytest

from services.lab import executor_command, naming, relay
from services.lab.cli import register
from services.lab.naming import LabConfigError, LabId
from shared.domain.vocabulary import IFNAME_MAX


def test_every_host_name_carries_the_lab_id_and_fits_ifnamsiz() -> None:
    a, b = LabId("a1b2c3"), LabId("d4e5f6")
    names = {
        naming.tap_name(lab, i, k)
        for lab in (a, b)
        for i in range(1, naming.MAX_NODES + 1)
        for k in range(naming.MAX_DATA_NICS + 1)
    }
    assert len(names) == 2 * naming.MAX_NODES * (naming.MAX_DATA_NICS + 1)  # all distinct
    assert all(len(n) <= IFNAME_MAX for n in names)
    assert all(("a1b2c3" in n) != ("d4e5f6" in n) for n in names)
    assert naming.netns_name(a) != naming.netns_name(b)
    assert naming.umid(a, 1) != naming.umid(b, 1)
    assert all(len(t) <= IFNAME_MAX for t in naming.gateway_taps(a))
    with pytest.raises(LabConfigError):
        naming.check_lab_id("../etc")


def test_nic_groups_map_to_switches_like_the_seed_advises() -> None:
    assert [naming.switch_for_nic(k) for k in range(5)] == [
        "sw-mgmt", "sw-data1", "sw-data1", "sw-data2", "sw-data2",
    ]  # fmt: skip
    assert naming.switches(0) == ["sw-mgmt"]
    assert naming.switches(2) == ["sw-mgmt", "sw-data1"]
    assert naming.switches(4) == ["sw-mgmt", "sw-data1", "sw-data2"]


def test_node_addresses_are_distinct_link_local_and_not_the_gateway() -> None:
    addrs = [naming.node_address(i) for i in range(1, naming.MAX_NODES + 1)]
    assert len(set(addrs)) == len(addrs)
    assert all(a.startswith("169.254.") for a in addrs)
    assert naming.GATEWAY_ADDRESS not in addrs
    assert naming.node_index(naming.node_name(7)) == 7
    with pytest.raises(LabConfigError, match="node-N"):
        naming.node_index("node-x")


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"nodes": 0}, "--nodes"),
        ({"nodes": naming.MAX_NODES + 1}, "--nodes"),
        ({"data_nics": -1}, "--data-nics"),
        ({"mgmt_vlan": 1}, "--mgmt-vlan"),
        ({"mgmt_vlan": 4095}, "--mgmt-vlan"),
        ({"mem_mb": 32}, "--mem"),
    ],
)
def test_out_of_range_parameters_name_the_option(kwargs: dict[str, int], word: str) -> None:
    params = {"nodes": 2, "data_nics": 2, "mgmt_vlan": None, "mem_mb": 256, **kwargs}
    with pytest.raises(LabConfigError, match=word):
        naming.check_params(**params)  # type: ignore[arg-type]


def test_otel_variables_are_handed_over_with_endpoints_on_the_relay() -> None:
    env, relays = naming.otel_plan(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://localhost:9999/v1/traces",
            "OTEL_SERVICE_NAME": "x",
            "PATH": "/bin",
        }
    )
    assert env == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://169.254.0.1:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://169.254.0.1:4319/v1/traces",
        "OTEL_SERVICE_NAME": "x",
    }
    assert relays == [(4318, "127.0.0.1", 4318), (4319, "localhost", 9999)]
    assert naming.otel_plan({"PATH": "/bin"}) == ({}, [])


def test_relayed_urls_keep_scheme_and_credentials() -> None:
    url = naming.with_host_port("tls://u:p@nats.example:4443/x", naming.GATEWAY_ADDRESS, 4222)
    assert url == "tls://u:p@169.254.0.1:4222/x"
    assert naming.host_port("nats://a:1,nats://b:2", default_port=4222) == ("a", 1)
    assert naming.host_port("127.0.0.1", default_port=4222) == ("127.0.0.1", 4222)


def test_node_env_file_quotes_values_for_the_shell() -> None:
    text = naming.env_file({"A": "it's $HOME; rm -rf /", "B": ""})
    out = subprocess.run(
        ["sh", "-c", text + 'printf "%s|%s" "$A" "$B"'], capture_output=True, text=True
    ).stdout
    assert out == "it's $HOME; rm -rf /|"
    with pytest.raises(LabConfigError):
        naming.env_file({"BAD-NAME": "x"})


def test_vlan_translator_tags_and_untags_only_its_vid() -> None:
    untagged = bytes(range(12)) + b"\x08\x00" + b"payload-ipv4-packet"
    tagged = relay.tag(untagged, 42)
    assert tagged is not None
    assert tagged[12:16] == b"\x81\x00\x00\x2a"
    assert relay.untag(tagged, 42) == untagged
    assert relay.untag(tagged, 43) is None  # another VLAN: dropped
    assert relay.untag(untagged, 42) is None  # untagged on the switch side: dropped


def test_executor_hook_builds_the_command_every_node_runs() -> None:
    argv = executor_command(
        node="node-3", nats_url="nats://169.254.0.1:4222", mgmt_vlan=42, state_dir="/s"
    )
    assert argv == [
        sys.executable, "-m", "services.executor", "--node", "node-3",
        "--nats", "nats://169.254.0.1:4222", "--mgmt-vlan", "42", "--state-dir", "/s",
    ]  # fmt: skip
    assert shlex.split(shlex.join(argv)) == argv


def test_cli_registers_lab_commands_and_keeps_the_command_after_double_dash() -> None:
    parser = argparse.ArgumentParser(prog="l2net")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["lab", "exec", "node-1", "--", "ip", "-br", "link"])
    assert args.node == "node-1"
    assert args.argv[-3:] == ["ip", "-br", "link"]
    assert callable(args.handler)
    up = parser.parse_args(["lab", "up", "--nodes", "3", "--mgmt-vlan", "10", "--no-executor"])
    assert (up.nodes, up.mgmt_vlan, up.no_executor, up.data_nics) == (3, 10, True, 2)
    for sub in ("status", "down"):
        assert callable(parser.parse_args(["lab", sub]).handler)


async def test_relay_join_carries_both_directions_and_half_close() -> None:
    # A request-then-shutdown client (as HTTP/1.0 or OTLP exporters may do) gets its answer.
    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # until the client's half-close arrives
        writer.write(b"answer to " + request)
        await writer.drain()
        writer.close()

    backend = await asyncio.start_server(target, "127.0.0.1", 0)
    backend_port = backend.sockets[0].getsockname()[1]

    async def relay_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await relay.join((reader, writer), await asyncio.open_connection("127.0.0.1", backend_port))

    front = await asyncio.start_server(relay_client, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", front.sockets[0].getsockname()[1])
    writer.write(b"question")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 10) == b"answer to question"
    writer.close()
    front.close()
    backend.close()
