"""The lab as a whole: boot it, find it again, run commands in its nodes, tear it down.

``Lab.up()`` (what ``l2net lab up`` calls) does, in order, recording each thing in
``<dir>/lab.json`` before making it:

1. the NATS server (embedded, detached; or the ``--nats`` URL);
2. the lab network namespace ``l2lab-<id>`` with its switches (plain bridges: ``sw-mgmt``
   for every eth0, ``sw-data1`` for eth1+eth2, ``sw-data2`` for eth3+eth4) and one tap per
   guest NIC, and the gateway address ``169.254.0.1`` on the mgmt switch side;
3. the relay (NATS, and OTLP when ``OTEL_EXPORTER_OTLP_*ENDPOINT`` is set) listening on the
   gateway address inside the namespace (see ``relay.py``);
4. one ``linux.uml`` per node, in its own session, run inside the namespace; its init script
   (``bootscript.py``) brings up mgmt-bo/mgmt-br and the node address, the executor (when
   enabled) and the resident helper (``agent.py``);
5. waits until every node's helper answers a ping over NATS (so the node reached NATS over
   its mgmt address), and, when the executor runs, until every executor published on
   ``l2.node.<node>``.

Tests and other services use the Python API::

    lab = Lab.load(directory)            # or Lab.up(directory=..., nodes=2)
    lab.nodes                            # ["node-1", "node-2"]
    lab.nats_url                         # "nats://127.0.0.1:PORT"
    rc, out, err = lab.exec("node-1", ["ip", "-br", "link"])
    result = await lab.aexec("node-2", ["bridge", "vlan"], timeout=10)
    lab.down()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import msgspec
import nats
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from services.lab import naming, state
from services.lab.bootscript import INIT_SCRIPT
from services.lab.naming import LabConfigError, LabId
from services.lab.relay import Listener, RelayConfig, VlanBridge
from shared.domain.errors import Refused
from shared.runtime import bus, config, natsserver
from shared.wire import signing, subjects
from shared.wire.lab_api import MAX_STDIN, ExecReply, ExecRequest, PingReply

T = TypeVar("T")

UML_BINARY = "linux.uml"
UML_MODULES = Path("/usr/lib/uml/modules")
REPO_ROOT = Path(__file__).resolve().parents[2]
LAB_DIR_ENV = "L2NET_LAB_DIR"


class LabError(Refused, RuntimeError):
    """The lab cannot do what was asked; the message says what and what to do about it."""


class ExecResult(NamedTuple):
    """Exit code, stdout and stderr of a command run in a node (unpacks as a tuple)."""

    rc: int
    out: str
    err: str


class _Boot(NamedTuple):
    """What waiting for the nodes of a booting lab shares: the connection, the deadline."""

    nc: Client
    deadline: float
    timeout: float
    say: Callable[[str], None]


class NodeStatus(NamedTuple):
    """One line of ``lab status``."""

    name: str
    address: str
    pid: int | None
    running: bool
    helper: bool
    boot_seconds: float | None
    host_mem_kb: int
    executor: str  # "" (not started by the lab), "running", "exited", or "?" (no answer)
    connected: bool | None = None
    """The executor answers on NATS (its ``health`` request): None when the lab started none."""
    heartbeat_age: float | None = None
    """Seconds since the executor's last heartbeat stored in ``L2_NODES`` (by the server's
    clock), None when there is none."""
    connected_since: float | None = None
    """When the executor's current NATS connection was made (epoch seconds), if it answered."""


def default_dir() -> Path:
    """The lab's state directory: ``$L2NET_LAB_DIR``, else ``<l2net state dir>/lab``."""
    explicit = os.environ.get(LAB_DIR_ENV)
    return Path(explicit) if explicit else config.state_dir() / "lab"


# ---------------------------------------------------------------------------
# The executor hook (the executor service plugs in here)
# ---------------------------------------------------------------------------


def executor_available() -> bool:
    """True once the executor service can be started as ``python -m services.executor``."""
    try:
        return find_spec("services.executor.__main__") is not None
    except ModuleNotFoundError:
        return False


def executor_command(
    *,
    node: str,
    nats_url: str,
    mgmt_vlan: int | None = None,
    state_dir: str,
    trust_keys: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """The command line each node runs for its executor (cwd: the repository root; the
    environment also has ``NATS_URL``, ``L2NET_NODE``, ``L2NET_STATE_DIR`` = the node's
    private directory, and the relayed ``OTEL_*`` variables). Its output goes to
    ``<node dir>/executor.log``; ``lab up`` waits for its first message on ``l2.node.<node>``.
    ``trust_keys``: the public keys whose intent signatures it accepts (the lab's own first).
    ``state_dir``: the executor's own state (``<node dir>/executor-state``), required: a
    guest's root is the host's file system, so the executor's default ``/var/lib/l2net/<node>``
    would be the host's, shared by every lab.
    """
    argv = [python, "-m", "services.executor", "--node", node, "--nats", nats_url]
    if mgmt_vlan is not None:
        argv += ["--mgmt-vlan", str(mgmt_vlan)]
    for key in trust_keys:
        argv += ["--trust-key", key]
    return [*argv, "--state-dir", state_dir]


SIGNING_SEED_FILE = "signing.seed"
TRUST_KEYS_ENV = "L2NET_TRUST_KEYS"


def signing_seed_file(directory: Path | str | None = None) -> Path:
    """The lab's intent signing seed, ``<lab dir>/signing.seed``: made by ``lab up`` (or
    first by ``l2net planner --generate-signing-key``) and removed by ``lab down``. The lab's
    executors trust its public key; a planner for the lab signs with it."""
    return (Path(directory) if directory is not None else default_dir()) / SIGNING_SEED_FILE


def _lab_trust_keys(d: Path, environ: dict[str, str]) -> list[str]:
    """The lab's own key (made now if missing), then those of ``$L2NET_TRUST_KEYS``."""
    keys = [signing.public_key(signing.ensure_seed(signing_seed_file(d)))]
    for key in environ.get(TRUST_KEYS_ENV, "").replace(",", " ").split():
        try:
            checked = signing.check_public_key(key)
        except signing.KeyError_ as exc:
            raise LabError(f"${TRUST_KEYS_ENV}: {exc}") from None
        if checked not in keys:
            keys.append(checked)
    return keys


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from sync code, also when the caller's thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    result: T = box["value"]
    return result


def _ip(*args: str, stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        cmd = " ".join(["ip", *args])
        raise LabError(f"`{cmd}` failed: {proc.stderr.strip()}\n{stdin or ''}".rstrip())
    return proc.stdout


def _holds_tun(leader: state.ProcRef) -> bool:
    """Some process of ``leader``'s session (a zombie's threads included) still has
    ``/dev/net/tun`` open."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]) != leader.pid:
                continue
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) == "/dev/net/tun":
                    return True
        except (OSError, ValueError, IndexError):
            continue
    return False


def _netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return "(no log)"


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _host_mem_kb(proc: state.ProcRef | None) -> int:
    """Host memory a node costs: the guest memory it touched (shared memory mapped by the
    UML kernel process, counted once) plus each UML process's private memory."""
    if proc is None or not state.alive(proc):
        return 0
    members = state.session_members(proc)
    return _status_kb(proc.pid, "RssShmem") + sum(_status_kb(p, "RssAnon") for p in members)


async def _quiet(exc: Exception) -> None:
    """nats-py logs every failed attempt with a traceback; the caller reports the outcome."""


async def connect_nats(url: str, *, name: str, timeout: float = 3.0) -> Client:
    """A host-side NATS connection, or LabError after a few attempts (never an endless
    retry: nats-py retries for ever on the first connect unless attempts are bounded)."""
    try:
        return await nats.connect(
            servers=[url],
            name=name,
            connect_timeout=timeout,
            allow_reconnect=True,
            max_reconnect_attempts=2,
            reconnect_time_wait=0.3,
            error_cb=_quiet,
        )
    except Exception as exc:  # nats raises several unrelated types for "not reachable"
        raise LabError(f"cannot reach NATS at {url}: {exc!r}") from exc


async def _executor_health(nc: Client, node: str) -> tuple[bus.Health | None, float | None]:
    """The node's executor's answer to its health request (None: no answer, so not connected
    to NATS whatever its process does) and the age of its last heartbeat in ``L2_NODES``."""
    health: bus.Health | None = None
    age: float | None = None
    try:
        msg = await nc.request(subjects.health("l2net-executor", node=node), b"", timeout=2.0)
        health = msgspec.json.decode(msg.data, type=bus.Health)
    except Exception:  # no responders, no answer, not l2net's answer: not connected
        health = None
    with contextlib.suppress(Exception):  # no stream, no heartbeat yet
        raw = await nc.jetstream().get_last_msg(subjects.STREAM_NODES, subjects.node(node))
        if raw.time is not None:
            age = max(0.0, time.time() - raw.time.timestamp())
    return health, age


async def _probe_nats(url: str) -> None:
    nc = await connect_nats(url, name="l2lab-probe")
    await nc.close()


def check_prerequisites() -> None:
    """The UML kernel, its modules and iproute2 exist; else say which package to install."""
    if shutil.which(UML_BINARY) is None:
        raise LabError(f"{UML_BINARY} not found: apt-get install user-mode-linux (make deps)")
    if not UML_MODULES.is_dir() or not any(UML_MODULES.iterdir()):
        raise LabError(f"no UML modules under {UML_MODULES}: apt-get install user-mode-linux")
    for tool in ("ip", "bridge", "modprobe"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            raise LabError(f"{tool} not found: apt-get install iproute2 kmod")
    if not Path("/dev/net/tun").exists():
        raise LabError("/dev/net/tun is missing: the lab needs tap devices")
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces and tap devices)")


# ---------------------------------------------------------------------------
# The lab
# ---------------------------------------------------------------------------


class Lab:
    """A running (or recorded) lab, found by its state directory."""

    def __init__(self, st: state.LabState) -> None:
        self.state = st

    # -- finding and describing -------------------------------------------------

    @classmethod
    def load(cls, directory: Path | str | None = None) -> Lab:
        """The lab recorded in ``directory`` (default :func:`default_dir`)."""
        d = Path(directory) if directory is not None else default_dir()
        st = state.load(d)
        if st is None:
            raise LabError(f"no lab in {d}: start one with `l2net lab up`")
        return cls(st)

    @property
    def dir(self) -> Path:
        return Path(self.state.dir)

    @property
    def lab_id(self) -> str:
        return self.state.lab_id

    @property
    def netns(self) -> str:
        """The lab's network namespace on the host (switches and taps live there)."""
        return self.state.netns

    @property
    def nodes(self) -> list[str]:
        """Node names, ``node-1`` first."""
        return [n.name for n in self.state.nodes]

    @property
    def nats_url(self) -> str:
        """The URL host-side tools use (``nats://127.0.0.1:PORT``)."""
        return self.state.nats_url

    @property
    def nats_url_inside(self) -> str:
        """The URL the nodes use (the relay on the gateway address)."""
        return self.state.nats_url_inside

    @property
    def signing_seed_file(self) -> Path:
        """The lab's intent signing seed (a secret): what a planner for this lab signs with;
        the lab's executors trust its public key (and those of ``$L2NET_TRUST_KEYS``)."""
        return signing_seed_file(self.dir)

    def node(self, name: str) -> state.NodeState:
        """A node's record; LabError naming the known nodes if there is no such node."""
        for n in self.state.nodes:
            if n.name == name:
                return n
        known = ", ".join(self.nodes) or "none"
        raise LabError(f"no node {name!r} in lab {self.lab_id} (nodes: {known})")

    def node_address(self, name: str) -> str:
        """The node's management address (on mgmt-br or mgmt-br.<vid>)."""
        return self.node(name).address

    def node_dir(self, name: str) -> Path:
        """The node's private state directory on the host (logs, executor state)."""
        return Path(self.node(name).dir)

    # -- running commands ------------------------------------------------------

    async def aexec(
        self,
        node: str,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,
        stdin: bytes = b"",
        vm: str | None = None,
        nc: Client | None = None,
    ) -> ExecResult:
        """Run ``argv`` (no shell) in ``node``; returns its exit code, stdout and stderr.

        With ``vm``, the command runs in that VM's network namespace inside the node
        (``ip netns exec VM ...``). The command is killed after ``timeout`` seconds (rc 124).
        Pass a connected ``nc`` to reuse a NATS connection; otherwise one is opened for the
        call. Raises LabError when the node does not answer.
        """
        self.node(node)
        if not argv:
            raise LabError("lab exec: no command given")
        if len(stdin) > MAX_STDIN:
            raise LabError(f"lab exec: stdin of {len(stdin)} bytes is over {MAX_STDIN} bytes")
        if vm is not None:
            argv = ["ip", "netns", "exec", vm, *argv]
        req = ExecRequest(argv=list(argv), timeout=timeout, stdin=stdin)
        data = await self._request(node, "exec", msgspec.json.encode(req), timeout + 10, nc)
        reply = msgspec.json.decode(data, type=ExecReply)
        if reply.error:
            raise LabError(f"{node}: {reply.error}")
        return ExecResult(
            reply.rc,
            reply.out.decode(errors="replace"),
            reply.err.decode(errors="replace"),
        )

    def exec(
        self,
        node: str,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,
        stdin: bytes = b"",
        vm: str | None = None,
    ) -> ExecResult:
        """Synchronous :meth:`aexec`."""
        return _run_sync(self.aexec(node, argv, timeout=timeout, stdin=stdin, vm=vm))

    async def aping(
        self, node: str, *, timeout: float = 2.0, nc: Client | None = None
    ) -> PingReply:
        """Ask the node's helper for a sign of life (proves the node reaches NATS)."""
        data = await self._request(node, "ping", b"", timeout, nc)
        return msgspec.json.decode(data, type=PingReply)

    async def _request(
        self, node: str, verb: str, payload: bytes, timeout: float, nc: Client | None
    ) -> bytes:
        subject = subjects.lab_helper(self.lab_id, node, verb)
        own = nc is None
        client = nc or await self._connect()
        try:
            msg = await client.request(subject, payload, timeout=timeout)
        except NoRespondersError as exc:
            raise LabError(f"{node} does not answer on {subject} (node down?)") from exc
        except NatsTimeoutError as exc:
            raise LabError(f"{node} gave no answer on {subject} within {timeout:g} s") from exc
        finally:
            if own:
                await client.close()
        return bytes(msg.data)

    async def _connect(self) -> Client:
        return await connect_nats(self.nats_url, name=f"l2lab-{self.lab_id}-host")

    # -- status ------------------------------------------------------------------

    async def astatus(self) -> list[NodeStatus]:
        """Each node: process running, helper answering, boot time, host memory."""
        try:
            nc: Client | None = await self._connect()
        except LabError:
            nc = None

        async def one(n: state.NodeState) -> NodeStatus:
            helper = False
            executor = "?" if self.state.executor else ""
            connected: bool | None = False if self.state.executor else None
            since: float | None = None
            age: float | None = None
            if nc is not None:
                try:
                    reply = await self.aping(n.name, timeout=2.0, nc=nc)
                    helper = True
                    executor = reply.executor
                except LabError:
                    pass
                if self.state.executor:
                    health, age = await _executor_health(nc, n.name)
                    connected = health is not None and health.connected
                    since = health.connected_since if health is not None else None
            return NodeStatus(
                name=n.name,
                address=n.address,
                pid=n.proc.pid if n.proc else None,
                running=state.alive(n.proc),
                helper=helper,
                boot_seconds=n.boot_seconds,
                host_mem_kb=_host_mem_kb(n.proc),
                executor=executor,
                connected=connected,
                heartbeat_age=age,
                connected_since=since,
            )

        try:
            return list(await asyncio.gather(*(one(n) for n in self.state.nodes)))
        finally:
            if nc is not None:
                await nc.close()

    def status(self) -> list[NodeStatus]:
        """Synchronous :meth:`astatus`."""
        return _run_sync(self.astatus())

    def processes(self) -> list[state.ProcRef]:
        """Every process the lab recorded (nodes, relay, owned NATS server)."""
        procs = [n.proc for n in self.state.nodes if n.proc is not None]
        if self.state.relay is not None:
            procs.append(self.state.relay)
        if self.state.nats_owned and self.state.nats is not None:
            procs.append(self.state.nats)
        return procs

    def any_alive(self) -> bool:
        """Some recorded process still runs."""
        return any(state.alive(p) for p in self.processes())

    # -- up and down -----------------------------------------------------------------

    @classmethod
    def up(
        cls,
        *,
        directory: Path | str | None = None,
        nodes: int = 2,
        data_nics: int = 2,
        mgmt_vlan: int | None = None,
        nats_url: str | None = None,
        mem_mb: int = 256,
        executor: bool | None = None,
        timeout: float = 180.0,
        environ: dict[str, str] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> Lab:
        """Boot a lab and return when every node answers over NATS (see module docstring).

        ``executor``: None starts it when :func:`executor_available`, False never, True always.
        ``environ`` (default ``os.environ``) supplies the ``OTEL_*`` variables for the nodes.
        ``progress`` is called with one line of text per step (default: silent). Raises
        LabError (after stopping what it started, logs kept) if the lab does not come up.
        """
        env = dict(os.environ if environ is None else environ)
        try:
            naming.check_params(
                nodes=nodes, data_nics=data_nics, mgmt_vlan=mgmt_vlan, mem_mb=mem_mb
            )
            if nats_url is not None:
                naming.host_port(nats_url, default_port=4222)
            naming.otel_plan(env)
        except LabConfigError as exc:
            raise LabError(str(exc)) from exc
        check_prerequisites()
        if nats_url is not None:  # unreachable: say so before making anything
            _run_sync(_probe_nats(nats_url))
        d = Path(directory) if directory is not None else default_dir()
        d.mkdir(parents=True, exist_ok=True)
        d = d.resolve()
        old = state.load(d)
        if old is not None:
            previous = cls(old)
            if previous.any_alive():
                raise LabError(
                    f"lab {old.lab_id} in {d} is still running: `l2net lab down` first "
                    f"(or use another --state-dir)"
                )
            teardown(old)  # leftovers of a crashed or killed lab
            d.mkdir(parents=True, exist_ok=True)
        start_executor = executor_available() if executor is None else executor
        trust_keys = _lab_trust_keys(d, env) if start_executor else []
        lab_id = naming.new_lab_id()
        while _netns_exists(naming.netns_name(lab_id)):  # never adopt another lab's names
            lab_id = naming.new_lab_id()
        st = state.LabState(
            lab_id=lab_id,
            dir=str(d),
            netns=naming.netns_name(lab_id),
            phase="booting",
            created=time.time(),
            mgmt_vlan=mgmt_vlan,
            data_nics=data_nics,
            mem_mb=mem_mb,
            executor=start_executor,
            trust_keys=trust_keys,
        )
        state.save(st)
        lab = cls(st)
        say: Callable[[str], None] = progress or (lambda line: None)
        try:
            _run_sync(
                lab._boot(
                    nodes=nodes,
                    nats_url=nats_url,
                    timeout=timeout,
                    environ=env,
                    say=say,
                )
            )
        except BaseException as exc:
            st.phase = "failed"
            state.save(st)
            teardown(st, remove_files=False)
            if isinstance(exc, LabError):
                raise
            if isinstance(exc, Exception):
                raise LabError(f"lab up failed: {exc}") from exc
            raise
        st.phase = "up"
        state.save(st)
        return lab

    async def _boot(
        self,
        *,
        nodes: int,
        nats_url: str | None,
        timeout: float,
        environ: dict[str, str],
        say: Callable[[str], None],
    ) -> None:
        """Bring the lab up in order: NATS, the records of the nodes (saved before anything
        they name exists, so that a teardown finds it), the network namespace with its
        switches and taps, the relay, then the nodes."""
        st = self.state
        t0 = time.monotonic()
        target = self._start_nats(nats_url)
        say(f"NATS at {st.nats_url}")
        self._record_nodes(nodes)
        self._create_network()
        say(f"network namespace {st.netns} with switches {naming.switches(st.data_nics)}")
        listeners = self._relay_listeners(environ, target)
        self._start_relay(listeners)
        say(
            "relay listening on "
            + ", ".join(f"{x.listen_host}:{x.listen_port} ({x.name})" for x in listeners)
        )
        await self._boot_nodes(timeout=timeout, say=say)
        say(f"lab {st.lab_id} up in {time.monotonic() - t0:.1f} s")

    def _start_nats(self, nats_url: str | None) -> tuple[str, int]:
        """Use ``nats_url`` or start a NATS server of the lab's own; the (host, port) the
        relay forwards the nodes' NATS connections to."""
        st = self.state
        if nats_url:
            st.nats_url = nats_url.split(",")[0].strip()
        else:
            srv = natsserver.start(Path(st.dir) / "nats", detach=True)
            st.nats = state.ref(srv.process.pid)
            st.nats_owned = True
            st.nats_url = srv.url
            state.save(st)
        # The nodes' URL: the relay, with the scheme and any user:password of the original.
        st.nats_url_inside = naming.with_host_port(
            st.nats_url if "://" in st.nats_url else f"nats://{st.nats_url}",
            naming.GATEWAY_ADDRESS,
            naming.NATS_RELAY_PORT,
        )
        return naming.host_port(st.nats_url, default_port=4222)

    def _record_nodes(self, nodes: int) -> None:
        """The lab's nodes and taps, in the state file."""
        st = self.state
        lab_id = LabId(st.lab_id)
        nics = 1 + st.data_nics
        for i in range(1, nodes + 1):
            name = naming.node_name(i)
            st.nodes.append(
                state.NodeState(
                    name=name,
                    index=i,
                    address=naming.node_address(i),
                    umid=naming.umid(lab_id, i),
                    taps=[naming.tap_name(lab_id, i, k) for k in range(nics)],
                    dir=str(Path(st.dir) / "nodes" / name),
                )
            )
        if st.mgmt_vlan is not None:
            st.extra_taps = list(naming.gateway_taps(lab_id))
        state.save(st)

    def _relay_listeners(self, environ: dict[str, str], nats: tuple[str, int]) -> list[Listener]:
        """What the relay inside the namespace forwards: NATS, and each OTLP endpoint."""
        otel_env, otlp_relays = naming.otel_plan(environ)
        self.state.otel_env = otel_env
        listeners = [
            Listener(
                name="nats",
                listen_host=naming.GATEWAY_ADDRESS,
                listen_port=naming.NATS_RELAY_PORT,
                target_host=nats[0],
                target_port=nats[1],
            )
        ]
        for lab_port, host, port in otlp_relays:
            listeners.append(
                Listener(
                    name=f"otlp-{lab_port}",
                    listen_host=naming.GATEWAY_ADDRESS,
                    listen_port=lab_port,
                    target_host=host,
                    target_port=port,
                )
            )
        return listeners

    async def _boot_nodes(self, *, timeout: float, say: Callable[[str], None]) -> None:
        """Start every node, then wait for each to answer (and its executor to register)."""
        st = self.state
        d = Path(st.dir)
        init = d / "init.sh"
        init.write_text(INIT_SCRIPT)
        init.chmod(0o755)
        (d / "uml").mkdir(exist_ok=True)
        nc = await connect_nats(st.nats_url, name=f"l2lab-{st.lab_id}-up")
        try:
            registered = await self._watch_registrations(nc) if st.executor else {}
            started: dict[str, float] = {}
            for n in st.nodes:
                self._write_node_env(n)
                started[n.name] = time.monotonic()
                n.proc = self._start_node(n, init=init)
                state.save(st)
            say(f"{len(st.nodes)} node(s) booting")
            boot = _Boot(nc=nc, deadline=time.monotonic() + timeout, timeout=timeout, say=say)
            await asyncio.gather(
                *(
                    self._wait_node(n, boot, started[n.name], registered.get(n.name))
                    for n in st.nodes
                )
            )
        finally:
            await nc.close()

    async def _watch_registrations(self, nc: Client) -> dict[str, asyncio.Event]:
        """An event per node, set when its executor first reports on ``l2.node.<node>``."""
        registered: dict[str, asyncio.Event] = {}
        for n in self.state.nodes:
            ev = registered[n.name] = asyncio.Event()

            async def on_node(msg: Any, ev: asyncio.Event = ev) -> None:
                ev.set()

            await nc.subscribe(subjects.node(n.name), cb=on_node)
        await bus.settle(nc)  # subscribed before any executor can publish
        return registered

    async def _wait_node(
        self,
        n: state.NodeState,
        boot: _Boot,
        started: float,
        registered: asyncio.Event | None,
    ) -> None:
        """Until the node's helper answers (LabError if it stops or the deadline passes),
        then, with an executor, until that registers."""
        while True:
            try:
                await self.aping(n.name, timeout=1.0, nc=boot.nc)
                break
            except LabError:
                pass
            if not state.alive(n.proc):
                raise LabError(self._failure(n, "the node stopped during boot"))
            if time.monotonic() > boot.deadline:
                raise LabError(self._failure(n, f"no answer within {boot.timeout:g} s"))
            await asyncio.sleep(0.3)
        n.boot_seconds = round(time.monotonic() - started, 2)
        boot.say(f"{n.name} up at {n.address} in {n.boot_seconds:.1f} s")
        if registered is None:
            return
        left = max(1.0, boot.deadline - time.monotonic())
        try:
            await asyncio.wait_for(registered.wait(), left)
        except TimeoutError:
            log = Path(n.dir) / "executor.log"
            raise LabError(
                f"{n.name}: the executor did not register on "
                f"{subjects.node(n.name)} within {boot.timeout:g} s; "
                f"{log}:\n{_tail(log)}"
            ) from None
        boot.say(f"{n.name} executor registered")

    def _failure(self, n: state.NodeState, why: str) -> str:
        console = Path(n.dir) / "console.log"
        helper = Path(n.dir) / "helper.log"
        return (
            f"{n.name} did not come up: {why}.\n--- {console} (tail) ---\n{_tail(console)}\n"
            f"--- {helper} (tail) ---\n{_tail(helper, 1500)}"
        )

    def _create_network(self) -> None:
        st = self.state
        ns = st.netns
        _ip("netns", "add", ns)
        lines = ["link set lo up"]
        for sw in naming.switches(st.data_nics):
            lines.append(f"link add {sw} type bridge forward_delay 0 stp_state 0")
            lines.append(f"link set {sw} up")
        for n in st.nodes:
            for k, tap in enumerate(n.taps):
                lines.append(f"tuntap add dev {tap} mode tap")
                lines.append(f"link set {tap} master {naming.switch_for_nic(k)} up")
        gw = f"{naming.GATEWAY_ADDRESS}/{naming.PREFIX_LEN}"
        if st.mgmt_vlan is None:
            lines.append(f"addr add {gw} dev {naming.MGMT_SWITCH}")
        else:
            sw_tap, addr_tap = st.extra_taps
            lines.append(f"tuntap add dev {sw_tap} mode tap")
            lines.append(f"link set {sw_tap} master {naming.MGMT_SWITCH} up")
            lines.append(f"tuntap add dev {addr_tap} mode tap")
            lines.append(f"addr add {gw} dev {addr_tap}")
            lines.append(f"link set {addr_tap} up")
        _ip("-n", ns, "-batch", "-", stdin="\n".join(lines) + "\n")

    def _start_relay(self, listeners: list[Listener]) -> None:
        st = self.state
        d = Path(st.dir)
        ready = d / "relay.ready"
        ready.unlink(missing_ok=True)
        vlan = None
        if st.mgmt_vlan is not None:
            vlan = VlanBridge(
                vid=st.mgmt_vlan, switch_tap=st.extra_taps[0], address_tap=st.extra_taps[1]
            )
        cfg = RelayConfig(netns=st.netns, listeners=listeners, ready_file=str(ready), vlan=vlan)
        (d / "relay.json").write_bytes(msgspec.json.encode(cfg))
        with open(d / "relay.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.lab.relay", str(d / "relay.json")],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        st.relay = state.ref(proc.pid)
        state.save(st)
        deadline = time.monotonic() + 20
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"the lab relay did not start:\n{_tail(d / 'relay.log')}")
            time.sleep(0.05)

    def _write_node_env(self, n: state.NodeState) -> None:
        st = self.state
        nd = Path(n.dir)
        nd.mkdir(parents=True, exist_ok=True)
        env = {
            "L2LAB_ID": st.lab_id,
            "L2LAB_NODE": n.name,
            "L2LAB_NICS": str(len(n.taps)),
            "L2LAB_ADDR": n.address,
            "L2LAB_PREFIX": str(naming.PREFIX_LEN),
            "L2LAB_MGMT_VLAN": "" if st.mgmt_vlan is None else str(st.mgmt_vlan),
            "L2LAB_NATS_URL": st.nats_url_inside,
            "L2LAB_PYTHON": sys.executable,
            "L2LAB_REPO": str(REPO_ROOT),
            "L2LAB_NODE_DIR": n.dir,
            "L2LAB_EXECUTOR_CMD": "",
            "NATS_URL": st.nats_url_inside,
            "L2NET_NODE": n.name,
            "L2NET_STATE_DIR": n.dir,
            "HOME": n.dir,
            "TMPDIR": "/tmp",
            **st.otel_env,
        }
        if st.executor:
            env["L2LAB_EXECUTOR_CMD"] = shlex.join(
                executor_command(
                    node=n.name,
                    nats_url=st.nats_url_inside,
                    mgmt_vlan=st.mgmt_vlan,
                    trust_keys=st.trust_keys,
                    state_dir=str(nd / "executor-state"),
                )
            )
        (nd / "node.env").write_text(naming.env_file(env))

    def _start_node(self, n: state.NodeState, *, init: Path) -> state.ProcRef:
        st = self.state
        args = naming.kernel_cmdline(
            lab=LabId(st.lab_id),
            index=n.index,
            nics=len(n.taps),
            mem_mb=st.mem_mb,
            init=str(init),
            uml_dir=str(Path(st.dir) / "uml"),
            node_dir=n.dir,
        )
        with open(Path(n.dir) / "console.log", "ab") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", st.netns, UML_BINARY, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # `ip netns exec` execs linux.uml in place: wait for the exec so the recorded
        # executable is the kernel's, which is how leftover UML processes are recognised.
        kernel = os.path.realpath(shutil.which(UML_BINARY) or UML_BINARY)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and proc.poll() is None:
            ref = state.ref(proc.pid)
            if ref.exe == kernel:
                return ref
            time.sleep(0.01)
        raise LabError(self._failure(n, "linux.uml did not start"))

    # -- one node, and the NATS server, stopped and started again ------------------------

    def stop_node(self, name: str) -> None:
        """Stop one node at once, like pulling its power cord (its UML session is killed);
        its taps, directory and executor state stay for :meth:`start_node`."""
        n = self.node(name)
        if n.proc is not None:
            old = n.proc
            state.kill(old, session=True)
            # Gone for good before anything boots on its taps: a tap still held by a dying
            # UML process cannot be opened again ("uml_tap: failed to create tun interface").
            deadline = time.monotonic() + 30
            while state.alive(old) or state.session_members(old) or _holds_tun(old):
                if time.monotonic() > deadline:
                    raise LabError(f"{name} (pid {old.pid}) did not stop within 30 s")
                time.sleep(0.1)
        for leftover in (Path.home() / ".uml" / n.umid, Path(self.state.dir) / "uml" / n.umid):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
        n.proc = None
        state.save(self.state)

    def start_node(self, name: str, *, timeout: float = 180.0) -> float:
        """Boot a stopped node again (same taps, directory and executor state); return the
        seconds until its network was up. Needs no NATS: it waits for the boot's own line
        on the node's console, not for an answer over NATS (see :meth:`aping`)."""
        n = self.node(name)
        if state.alive(n.proc):
            raise LabError(f"{name} is running: stop it first (or use restart_node)")
        console = Path(n.dir) / "console.log"
        marker = "l2lab-init: network up"
        seen = _tail(console, 10**7).count(marker) if console.exists() else 0
        self._write_node_env(n)
        t0 = time.monotonic()
        n.proc = self._start_node(n, init=Path(self.state.dir) / "init.sh")
        state.save(self.state)
        deadline = t0 + timeout
        while _tail(console, 10**7).count(marker) <= seen:
            if not state.alive(n.proc):
                raise LabError(self._failure(n, "the node stopped during boot"))
            if time.monotonic() > deadline:
                raise LabError(self._failure(n, f"no network within {timeout:g} s"))
            time.sleep(0.2)
        n.boot_seconds = round(time.monotonic() - t0, 2)
        state.save(self.state)
        return n.boot_seconds

    def restart_node(self, name: str, *, timeout: float = 180.0) -> float:
        """``l2net lab restart NODE``: :meth:`stop_node` then :meth:`start_node`."""
        self.stop_node(name)
        return self.start_node(name, timeout=timeout)

    def stop_nats(self) -> None:
        """Stop the lab's own NATS server (an outage); its store stays for :meth:`start_nats`."""
        if not self.state.nats_owned:
            raise LabError("this lab uses an external NATS server (--nats): stop that one")
        state.kill(self.state.nats, grace=5.0)

    def start_nats(self) -> None:
        """Start the lab's own NATS server again, on the same port with the same store."""
        if not self.state.nats_owned:
            raise LabError("this lab uses an external NATS server (--nats): start that one")
        if state.alive(self.state.nats):
            return
        _, port = naming.host_port(self.state.nats_url, default_port=4222)
        srv = natsserver.start(Path(self.state.dir) / "nats", port=port, detach=True)
        self.state.nats = state.ref(srv.process.pid)
        state.save(self.state)

    def down(self) -> list[str]:
        """Stop and remove everything this lab made; returns what was removed.

        Another process may have changed the lab since this object read it (``l2net lab
        restart NODE`` records the node's new UML process in ``lab.json``): the processes
        recorded there are stopped too, not only those this object knows."""
        recorded = state.load(Path(self.state.dir))
        if recorded is not None and recorded.lab_id == self.state.lab_id:
            done = teardown(recorded, remove_files=False)
        else:
            done = []
        return done + teardown(self.state)


def teardown(st: state.LabState, *, remove_files: bool = True) -> list[str]:
    """Stop a lab's processes and remove its namespace and taps (by recorded pids and
    names only), then, with ``remove_files``, its files. Safe to run twice."""
    done = _stop_processes(st)
    if _netns_exists(st.netns):
        taps = [t for n in st.nodes for t in n.taps] + st.extra_taps
        batch = "".join(f"link del {t}\n" for t in taps)
        if batch:
            _ip("-n", st.netns, "-force", "-batch", "-", stdin=batch, check=False)
        _ip("netns", "del", st.netns, check=False)
        done.append(f"netns {st.netns} and its taps")
    home_uml = Path.home() / ".uml"
    for n in st.nodes:
        for leftover in (home_uml / n.umid, Path(st.dir) / "uml" / n.umid):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
    if remove_files:
        done.append(_remove_files(Path(st.dir)))
    return done


def _stop_processes(st: state.LabState) -> list[str]:
    """Stop the nodes' UML sessions, the relay and an owned nats-server, by recorded pids."""
    done: list[str] = []
    for n in st.nodes:
        if n.proc is not None and (state.alive(n.proc) or state.session_members(n.proc)):
            state.kill(n.proc, session=True)
            done.append(f"{n.name} (pid {n.proc.pid})")
    if state.alive(st.relay):
        state.kill(st.relay)
        done.append(f"relay (pid {st.relay.pid if st.relay else '?'})")
    if st.nats_owned and state.alive(st.nats):
        state.kill(st.nats, grace=5.0)
        done.append(f"nats-server (pid {st.nats.pid if st.nats else '?'})")
    return done


def _remove_files(d: Path) -> str:
    """Remove the files a lab wrote in ``d`` (others there stay, and so does ``d``)."""
    for sub in ("nodes", "uml", "nats"):
        if (d / sub).is_dir():
            shutil.rmtree(d / sub, ignore_errors=True)
    files = ("init.sh", "relay.json", "relay.log", "relay.ready", SIGNING_SEED_FILE)
    for name in (*files, state.STATE_FILE):
        (d / name).unlink(missing_ok=True)
    (d / (state.STATE_FILE.removesuffix(".json") + ".tmp")).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: files that are not the lab's stay
        d.rmdir()
    return f"state in {d}"


def down(directory: Path | str | None = None) -> list[str]:
    """``l2net lab down``: tear down the lab recorded in ``directory``; [] when none."""
    d = Path(directory) if directory is not None else default_dir()
    st = state.load(d)
    if st is None:
        return []
    return teardown(st)
