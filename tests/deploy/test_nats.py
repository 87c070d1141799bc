"""deploy/nats: a real nats-server runs the shipped config; TLS and per-node permissions hold.

A throwaway CA and server certificate are made with ``openssl`` in a temp dir; the accounts
are rendered with ``deploy/nats/render_accounts.py`` for node-1 and node-2.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig

from shared.runtime import bus, natsserver
from shared.wire import subjects
from tests.kit import stop_process

NATS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "nats"
USERS = ["planner", "auditor", "operator", "node-1", "node-2", "sys"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_tls(dir: Path) -> None:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost, signed by it."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=l2net test CA", cwd=dir)  # fmt: skip
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=dir)  # fmt: skip
    (dir / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "san.ext",
             cwd=dir)  # fmt: skip


def password_var(user: str) -> str:
    return "L2NET_NATS_PASSWORD_" + user.upper().replace("-", "_")


@dataclass
class SecuredNats:
    port: int
    ca: Path
    passwords: dict[str, str]
    log: Path
    errors: dict[str, list[str]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.port}"

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    async def connect(
        self, user: str, password: str | None = None, *, inbox: str | None = None
    ) -> Client:
        errors = self.errors.setdefault(user, [])

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        if inbox is None:
            inbox = f"_INBOX.{user}" if user.startswith("node-") else "_INBOX"
        return await nats.connect(
            servers=[self.url],
            user=user,
            password=password if password is not None else self.passwords[user],
            tls=self.tls(),
            inbox_prefix=inbox,
            error_cb=on_error,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=5,
        )


async def denied(errors: list[str], op: str, subject: str) -> bool:
    """Whether the server reported a permissions violation for ``op`` on ``subject``."""
    wanted = f'permissions violation for {op} to "{subject}"'
    for _ in range(50):  # -ERR arrives asynchronously
        if any(wanted in e.lower() for e in errors):
            return True
        await asyncio.sleep(0.1)
    return False


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[SecuredNats]:
    make_tls(tmp_path)
    shutil.copy(NATS_DIR / "nats-server.conf", tmp_path / "nats-server.conf")
    rendered = subprocess.run(
        [sys.executable, str(NATS_DIR / "render_accounts.py"), "node-1", "node-2"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (tmp_path / "accounts.conf").write_text(rendered)
    passwords = {u: secrets.token_hex(12) for u in USERS}
    env = dict(os.environ) | {
        "L2NET_NATS_STORE_DIR": str(tmp_path / "js"),
        "L2NET_NATS_TLS_CERT": str(tmp_path / "server.pem"),
        "L2NET_NATS_TLS_KEY": str(tmp_path / "server.key"),
    }
    env |= {password_var(u): p for u, p in passwords.items()}
    port = natsserver.free_port()
    log = tmp_path / "nats.log"
    proc = subprocess.Popen(
        [natsserver.server_binary(), "-c", str(tmp_path / "nats-server.conf"),
         "-a", "127.0.0.1", "-p", str(port), "-l", str(log)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        if not natsserver.wait_for_port("127.0.0.1", port, timeout=15):
            _, err = proc.communicate(timeout=5)
            pytest.fail(f"nats-server did not start with deploy/nats config: {err.decode()}")
        yield SecuredNats(port=port, ca=tmp_path / "ca.pem", passwords=passwords, log=log)
    finally:
        stop_process(proc, timeout=10)


@pytest.fixture
async def planner(secured: SecuredNats) -> AsyncIterator[Client]:
    """The planner user, which creates the streams and publishes two nodes' intents."""
    nc = await secured.connect("planner")
    js = nc.jetstream()
    await bus.ensure_streams(js, list(bus.STREAMS))
    for node in ("node-1", "node-2"):
        await js.publish(subjects.intent(node), json.dumps({"node": node}).encode())
    yield nc
    await nc.close()


def test_missing_password_variable_stops_the_server(tmp_path: Path) -> None:
    shutil.copy(NATS_DIR / "nats-server.conf", tmp_path / "nats-server.conf")
    shutil.copy(NATS_DIR / "accounts.conf", tmp_path / "accounts.conf")
    env = {k: v for k, v in os.environ.items() if not k.startswith("L2NET_NATS_")}
    result = subprocess.run(
        [natsserver.server_binary(), "-c", str(tmp_path / "nats-server.conf"), "-t"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "L2NET_NATS_" in result.stderr + result.stdout


def test_plaintext_clients_are_refused(secured: SecuredNats) -> None:
    with socket.create_connection(("127.0.0.1", secured.port), timeout=5) as sock:
        info = sock.recv(4096).decode()
        assert info.startswith("INFO ")
        assert json.loads(info[5:])["tls_required"] is True
        password = secured.passwords["node-1"]
        connect = {"user": "node-1", "pass": password, "verbose": False, "tls_required": False}
        sock.sendall(f"CONNECT {json.dumps(connect)}\r\nPING\r\n".encode())
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    assert b"PONG" not in answer, "a client that skipped TLS must not be served"


async def test_tls_with_the_ca_and_the_right_password_connects(secured: SecuredNats) -> None:
    nc = await secured.connect("node-1")
    assert nc.is_connected
    await nc.close()
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await secured.connect("node-1", password="wrong")
    with pytest.raises(ssl.SSLCertVerificationError):
        await nats.connect(
            servers=[secured.url],
            user="node-1",
            password=secured.passwords["node-1"],
            tls=ssl.create_default_context(),  # does not trust the throwaway CA
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=5,
        )


async def test_a_node_publishes_only_its_own_subjects(
    secured: SecuredNats, planner: Client
) -> None:
    nc = await secured.connect("node-1")
    js = nc.jetstream(timeout=2)
    ack = await js.publish(subjects.status("node-1"), b'{"phase": "Applied"}')
    assert ack.stream == subjects.STREAM_STATUS
    await js.publish(subjects.observed("node-1"), b"{}")
    await js.publish(subjects.node("node-1"), b"{}")

    await nc.publish(subjects.status("node-2"), b'{"phase": "Applied"}')
    await nc.publish(subjects.intent("node-1"), b'{"forged": true}')
    await nc.publish(subjects.drift("node-1"), b"{}")
    await bus.settle(nc)
    for subject in ("l2.status.node-2", "l2.intent.node-1", "l2.drift.node-1"):
        assert await denied(secured.errors["node-1"], "publish", subject), subject

    # What reached the streams, seen by the auditor: nothing forged.
    audit_nc = await secured.connect("auditor")
    audit = audit_nc.jetstream()
    status = await audit.stream_info(subjects.STREAM_STATUS, subjects_filter=">")
    assert status.state.subjects == {"l2.status.node-1": 1}
    intents = await audit.stream_info(subjects.STREAM_INTENTS, subjects_filter=">")
    assert intents.state.subjects == {"l2.intent.node-1": 1, "l2.intent.node-2": 1}
    await audit_nc.close()
    await nc.close()


async def test_a_node_reads_only_its_own_intents(secured: SecuredNats, planner: Client) -> None:
    nc = await secured.connect("node-1")
    js = nc.jetstream(timeout=2)
    durable = "executor-node-1"

    # Its own durable consumer, filtered to its own subject: allowed, and it gets its intent.
    await js.add_consumer(
        subjects.STREAM_INTENTS,
        ConsumerConfig(name=durable, durable_name=durable, filter_subject="l2.intent.node-1"),
    )
    sub = await js.pull_subscribe_bind(durable, stream=subjects.STREAM_INTENTS)
    (msg,) = await sub.fetch(1, timeout=5)
    assert msg.subject == "l2.intent.node-1"
    assert json.loads(msg.data) == {"node": "node-1"}
    await msg.ack()

    # Its own last intent by direct get (the subject is in the API subject, so it is checked),
    # once the stream allows direct gets; another node's is denied.
    cfg = bus.STREAMS[subjects.STREAM_INTENTS]
    await planner.jetstream().update_stream(dataclasses.replace(cfg, allow_direct=True))
    last = await js.get_last_msg(subjects.STREAM_INTENTS, "l2.intent.node-1", direct=True)
    assert json.loads(last.data or b"") == {"node": "node-1"}
    with pytest.raises(asyncio.TimeoutError):
        await js.get_last_msg(subjects.STREAM_INTENTS, "l2.intent.node-2", direct=True)

    # The same consumer name with another node's filter in the request body: the server
    # refuses because the filter in the API subject does not match.
    mismatch = {
        "stream_name": subjects.STREAM_INTENTS,
        "config": {"name": durable, "durable_name": durable, "filter_subject": "l2.intent.node-2",
                   "ack_policy": "explicit"},
    }  # fmt: skip
    reply = await nc.request(
        f"$JS.API.CONSUMER.CREATE.L2_INTENTS.{durable}.l2.intent.node-1",
        json.dumps(mismatch).encode(),
        timeout=5,
    )
    assert "error" in json.loads(reply.data)

    # Any other way to reach node-2's intents is denied by permissions.
    with pytest.raises(asyncio.TimeoutError):
        await js.add_consumer(
            subjects.STREAM_INTENTS,
            ConsumerConfig(name=durable, durable_name=durable, filter_subject="l2.intent.node-2"),
        )
    with pytest.raises(asyncio.TimeoutError):
        await js.add_consumer(
            subjects.STREAM_INTENTS, ConsumerConfig(durable_name="sneaky", filter_subject=">")
        )
    with pytest.raises(asyncio.TimeoutError):
        await js.get_last_msg(subjects.STREAM_INTENTS, "l2.intent.node-2")
    await nc.subscribe("l2.intent.node-2")
    await nc.subscribe("_INBOX.>")
    await bus.settle(nc)
    for subject in ("l2.intent.node-2", "_inbox.>"):
        assert await denied(secured.errors["node-1"], "subscription", subject), subject
    await nc.close()


async def test_a_node_gets_replies_only_on_its_own_inbox_prefix(
    secured: SecuredNats, planner: Client
) -> None:
    """Replies (JetStream API answers, pulled intents) go to the requester's inbox; a node
    may only subscribe under ``_INBOX.<node>``, so it cannot read another node's replies."""
    default = await secured.connect("node-1", inbox="_INBOX")
    with pytest.raises(asyncio.TimeoutError):
        await default.jetstream(timeout=1).stream_info(subjects.STREAM_INTENTS)
    assert any('subscription to "_inbox.' in e.lower() for e in secured.errors["node-1"])
    await default.close()
    other = await secured.connect("node-1", inbox="_INBOX.node-2")
    with pytest.raises(asyncio.TimeoutError):
        await other.jetstream(timeout=1).stream_info(subjects.STREAM_INTENTS)
    await other.close()
    own = await secured.connect("node-1")
    info = await own.jetstream(timeout=2).stream_info(subjects.STREAM_INTENTS)
    assert info.config.name == subjects.STREAM_INTENTS
    await own.close()


async def test_a_node_cannot_change_or_delete_streams(
    secured: SecuredNats, planner: Client
) -> None:
    nc = await secured.connect("node-2")
    js = nc.jetstream(timeout=1)
    with pytest.raises(asyncio.TimeoutError):
        await js.delete_stream(subjects.STREAM_STATUS)
    with pytest.raises(asyncio.TimeoutError):
        await js.update_stream(bus.STREAMS[subjects.STREAM_STATUS])
    info = await js.stream_info(subjects.STREAM_STATUS)  # reading is allowed
    assert info.config.name == subjects.STREAM_STATUS
    await nc.close()
    assert await planner.jetstream().stream_info(subjects.STREAM_STATUS)


async def test_auditor_reads_all_and_publishes_drift_but_no_intents(
    secured: SecuredNats, planner: Client
) -> None:
    nc = await secured.connect("auditor")
    js = nc.jetstream(timeout=2)
    seen = await nc.subscribe("l2.>")
    await bus.settle(nc)
    node = await secured.connect("node-2")
    await node.jetstream().publish(subjects.status("node-2"), b"{}")
    got = await seen.next_msg(timeout=5)
    assert got.subject == "l2.status.node-2"
    await js.publish(subjects.drift("node-2"), b'{"missing": []}')
    last = await js.get_last_msg(subjects.STREAM_INTENTS, "l2.intent.node-2")
    assert json.loads(last.data or b"") == {"node": "node-2"}
    await nc.publish(subjects.intent("node-2"), b"{}")
    await bus.settle(nc)
    assert await denied(secured.errors["auditor"], "publish", "l2.intent.node-2")
    await node.close()
    await nc.close()


async def test_operator_submits_but_cannot_forge_events(secured: SecuredNats) -> None:
    nc = await secured.connect("operator")
    planner_nc = await secured.connect("planner")
    served = await planner_nc.subscribe(subjects.API_GET)
    await bus.settle(planner_nc)  # the server knows the subscription before anyone publishes
    await nc.publish(subjects.API_GET, b"{}")
    await nc.publish(subjects.status("node-1"), b"{}")
    await bus.settle(nc)
    assert (await served.next_msg(timeout=5)).subject == subjects.API_GET
    assert await denied(secured.errors["operator"], "publish", "l2.status.node-1")

    # Asking a node's executor for its state: the node answers on the operator's inbox.
    node = await secured.connect("node-1")

    async def answer(msg: Msg) -> None:
        await msg.respond(b'{"links": []}')

    await node.subscribe(subjects.executor_control("node-1", "state"), cb=answer)
    await bus.settle(node)
    reply = await nc.request(subjects.executor_control("node-1", "state"), b"", timeout=5)
    assert reply.data == b'{"links": []}'
    await node.close()
    await planner_nc.close()
    await nc.close()


async def test_the_planner_asks_executors_for_live_state_but_not_to_reconcile(
    secured: SecuredNats, planner: Client
) -> None:
    """``l2net plan`` takes each node's live state from its executor; nothing more."""
    node = await secured.connect("node-1")

    async def answer(msg: Msg) -> None:
        await msg.respond(b'{"links": []}')

    await node.subscribe(subjects.executor_control("node-1", "state"), cb=answer)
    await bus.settle(node)
    reply = await planner.request(subjects.executor_control("node-1", "state"), b"", timeout=5)
    assert reply.data == b'{"links": []}'
    await planner.publish(subjects.executor_control("node-1", "reconcile"), b"")
    await bus.settle(planner)
    assert await denied(secured.errors["planner"], "publish", "l2.executor.node-1.reconcile")
    await node.close()


def test_rendered_accounts_match_the_shipped_example() -> None:
    shipped = (NATS_DIR / "accounts.conf").read_text()
    rendered = subprocess.run(
        [sys.executable, str(NATS_DIR / "render_accounts.py"), "node-1", "node-2", "node-3"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert shipped == rendered


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Node-1"], "'Node-1' is not a lowercase RFC 1123 label"),
        (["node.1"], "'node.1' is not a lowercase RFC 1123 label"),
        (["node-1", "node-1"], "given twice: node-1"),
        (["planner"], "'planner' is reserved"),
        ([], "at least one node"),
    ],
)
def test_render_refuses_bad_node_names(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, str(NATS_DIR / "render_accounts.py"), *args],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_no_node_permission_names_another_node() -> None:
    """In the shipped accounts, each node's block mentions no other node's name."""
    text = (NATS_DIR / "accounts.conf").read_text()
    blocks = text.split("user: ")[1:]
    nodes = [b.split()[0] for b in blocks if b.startswith("node-")]
    assert nodes == ["node-1", "node-2", "node-3"]
    for block in blocks:
        name = block.split()[0]
        if name.startswith("node-"):
            assert [n for n in nodes if n != name and n in block] == [], name
