"""Every decoder of outside data, fuzzed in-process: arbitrary bytes and mutated valid messages
either decode (and everything downstream of the decode works) or raise the module's documented
clean error; never another exception, never a hang. Each test prints its counts.

What each decoder is, with its documented error:

* submission (``l2.api.apply`` body): :func:`services.planner.manifests.parse` ->
  ``ManifestError``; then validation and compiling of what parsed never raise;
* intent, on the executor: JSON decode (``msgspec.DecodeError``), signature check
  (``SignatureError``), :func:`shared.domain.l2state.desired_state` (``StateError``) and the plan
  (``PlanError``);
* intents, statuses, observed states, node inventory and drift reports, on the auditor:
  :func:`services.auditor.events.decode_event` -> ``BadMessage``; then judging, history,
  formatting, publishing and the snapshot never raise;
* node inventory, on the planner: JSON decode, then compiling that node's intent;
* request bodies (planner ``l2.api.*``, auditor ``l2.auditor.*``): JSON decode;
* CLI inputs: the command line (argparse's exit), ``--policy`` files and ``--trust-key``
  (``ValueError``), the services' replies (decode, then printing never raises), ``l2net
  watch``'s events (printing never raises).

The number of cases scales with ``L2NET_FUZZ_SCALE`` (default 1: a few thousand in all).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from hypothesis import strategies as st

from services.auditor import cli as auditor_cli
from services.auditor import events, report, snapshot
from services.auditor.view import FleetView, Policy
from services.cli import commands
from services.cli.main import build_parser
from services.executor.planning import PlanError, plan
from services.planner import compiling, manifests, validation
from services.planner.catalog import Catalog
from shared.domain import model
from shared.domain.l2state import StateError, desired_state, state_from_observed
from shared.domain.model import (
    DriftItem,
    DriftReport,
    Nic,
    Node,
    NodeIntent,
    NodeStatus,
    ObservedState,
)
from shared.runtime import bus
from shared.wire import api, intents, signing, subjects
from shared.wire import auditor_api as protocol
from tests import keys
from tests.auditor.conftest import converged, heartbeat
from tests.executor.labkit import seed_intent
from tests.fuzz.hostile import HUGE, arbitrary_bytes, fuzz, mutated

# SIGALRM is the per-case hang guard here: pytest-timeout watches from a thread instead.
pytestmark = pytest.mark.timeout(600, method="thread")

REPO = Path(__file__).resolve().parents[2]
SCALE = float(os.environ.get("L2NET_FUZZ_SCALE", "1"))
NODE = "node-1"
T = 1_700_000_000.0


def n(examples: int) -> int:
    return max(10, int(examples * SCALE))


def inputs(valid: list[Any], *, huge: int = HUGE) -> st.SearchStrategy[bytes]:
    """Mostly mutated valid messages, some arbitrary bytes."""
    m = mutated(valid, huge=huge)
    return st.one_of(m, m, m, arbitrary_bytes())


def plain(obj: Any) -> Any:
    return msgspec.to_builtins(obj)


# -- valid messages to mutate ------------------------------------------------------------------

INTENTS = [
    keys.sign(seed_intent(NODE, 1)),
    keys.sign(seed_intent(NODE, 2, trunk=(300, 310), mode="802.3ad")),
    keys.sign(seed_intent(NODE, 3, bond_options={"miimon": 100, "updelay": 200}, mtu=9000)),
]
OBSERVED = [converged(seed_intent(NODE, 1), at=T + 5)]
STATUSES = [
    NodeStatus(
        node=NODE,
        phase="Applied",
        observed_generation=1,
        at=T + 4,
        intent_digest=intents.digest(INTENTS[0]),
    ),
    NodeStatus(node=NODE, phase="RolledBack", observed_generation=2, error="boom", at=T + 6),
]
NODES = [
    heartbeat(NODE, T + 3),
    Node(
        name=NODE,
        labels={"rack": "a", "topology.kubernetes.io/zone": "z1"},
        nics=[Nic(name="eth0", mac="52:54:00:00:00:01", state="up", master="mgmt-bo")],
        mgmt_vlan=10,
        heartbeat_at=T,
        applied_generation=3,
    ),
]
DRIFTS = [
    DriftReport(
        node=NODE,
        generation=1,
        items=[
            DriftItem(
                object="oob-br",
                path="mtu",
                desired=1500,
                actual=1400,
                first_seen=T,
                resolved_at=None,
            )
        ],
        at=T,
        open=1,
    )
]
SEED_DOCS = list(yaml.safe_load_all((REPO / "docs" / "examples" / "seed.yaml").read_text()))


def _base_catalog() -> Catalog:
    docs = manifests.parse((REPO / "docs" / "examples" / "seed.yaml").read_bytes())
    catalog = Catalog().with_changes(put=[d.spec for d in docs], now=1.0)
    for name in (NODE, "node-2"):
        catalog = catalog.with_node(
            Node(name=name, nics=[Nic(name=f"eth{i}") for i in range(3)], labels={"rack": "a"})
        )
    return catalog


BASE = _base_catalog()


# -- the decoders -------------------------------------------------------------------------------


def submission(data: bytes) -> None:
    """What the planner does with an ``l2.api.apply`` body, up to storing it."""
    docs = manifests.parse(data)
    problems = [p for d in docs for p in validation.check_object(d.spec)]
    if problems:
        return
    candidate = BASE.with_changes(put=[d.spec for d in docs], now=2.0)
    if validation.check_catalog(candidate):
        return
    for node in candidate.nodes:
        bus.encode(compiling.compile_node(candidate, node, generation=5))
        compiling.switch_config(candidate, node)
    for net in candidate.all(model.Network):
        compiling.nad_config(candidate, net)
        compiling.nad_yaml(candidate, net)


ACTUAL = state_from_observed(OBSERVED[0])


def executor_intent(data: bytes) -> None:
    """What the executor does with an intent message, up to its first kernel write."""
    intent = bus.decode(data, NodeIntent)
    with contextlib.suppress(signing.SignatureError):  # judged on, as if signed: in depth
        signing.verify(intent, {keys.PUBLIC})
    desired, _refused = desired_state(intent, mgmt_vlan=None)
    for step in plan(desired, ACTUAL):
        step.describe()


def _judged_view() -> FleetView:
    view = FleetView(Policy(silence_s=60, grace_s=30), trusted_keys={keys.PUBLIC})
    view.on_heartbeat(NODES[0], T + 3)
    view.on_intent(INTENTS[0], T + 1)
    view.on_status(STATUSES[0], T + 4)
    view.on_observed(OBSERVED[0], T + 5)
    return view


def auditor_event(stream: str, subject: str) -> Any:
    """What the auditor does with a message of ``stream`` on ``subject``: decode, judge, then
    everything that shows or stores the result."""

    def run(data: bytes) -> None:
        view = _judged_view()
        event = events.decode_event(stream, subject, data)
        if isinstance(event, NodeIntent):
            view.on_intent(event, T + 7)
            view.on_observed(OBSERVED[0], T + 8)
        elif isinstance(event, NodeStatus):
            view.on_status(event, T + 7)
        elif isinstance(event, ObservedState):
            view.on_observed(event, T + 7)
        elif isinstance(event, Node):
            view.on_heartbeat(event, T + 7)
        elif isinstance(event, DriftReport):
            for item in event.items:
                report.diff_lines(item)
            commands.describe_event(subject, data)
        view.tick(T + 100)
        v = view.node(NODE)
        items = v.open_items()
        for item in items:
            report.diff_lines(item)
        history = protocol.HistoryReply(
            ok=True,
            node=NODE,
            events=[
                protocol.HistoryEvent(at=e.at, what=e.what, generation=e.generation, text=e.text)
                for e in v.history()
            ],
        )
        report.format_history(history)
        bus.encode(DriftReport(node=NODE, generation=v.latest_generation, items=items, at=T))
        bus.encode(history)
        snap = snapshot.take(view, streams={}, published={}, heal_notes=set(), at=T)
        snapshot.restore(
            msgspec.json.decode(msgspec.json.encode(snap), type=snapshot.Snapshot), FleetView()
        )

    return run


def planner_node(data: bytes) -> None:
    """What the planner does with a node's inventory: compile the node's intent."""
    node = bus.decode(data, Node)
    catalog = BASE.with_node(node)
    bus.encode(compiling.compile_node(catalog, node.name, generation=1))
    compiling.switch_config(catalog, node.name)


def request_bodies(data: bytes) -> None:
    """Every request body type: each decodes or raises DecodeError."""
    for kind in (
        api.DeleteRequest,
        api.GetRequest,
        api.NadRequest,
        api.SwitchRequest,
        protocol.CheckRequest,
        protocol.HistoryRequest,
        protocol.DesiredRequest,
    ):
        with contextlib.suppress(msgspec.DecodeError):
            bus.decode(data, kind)


def cli_replies(data: bytes) -> None:
    """The CLI decodes a service's reply (else CliError), then prints it."""
    for kind, show in (
        (protocol.CheckReply, report.format_audit),
        (protocol.HistoryReply, report.format_history),
    ):
        with contextlib.suppress(msgspec.DecodeError):
            show(bus.decode(data, kind))  # type: ignore[operator]
    for subject in ("l2.status.node-1", "l2.node.node-1", "l2.observed.node-1", "l2.drift.x"):
        commands.describe_event(subject, data)


def _quiet_parse(argv: list[str]) -> argparse.Namespace:
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        return build_parser().parse_args(argv)


def cli_argv(data: bytes) -> None:
    """A command line: argparse refuses it (SystemExit), or the command's own checks of its
    arguments (the auditor's policy and keys) refuse it with ValueError."""
    argv = [a.decode("utf-8", "surrogateescape") for a in data.split(b"\x00")]
    args = _quiet_parse(argv)
    if args.command == "auditor":
        args.no_snapshot = True
        auditor_cli.load_policy(args)


POLICY_DIR = Path(tempfile.mkdtemp(prefix="l2net-fuzz-"))


def policy_file(data: bytes) -> None:
    """``l2net auditor --policy FILE``: ValueError naming the file, or a configuration."""
    path = POLICY_DIR / "policy.yaml"
    path.write_bytes(data)
    args = argparse.Namespace(
        policy=path, heal=[], silence=None, grace=None, no_snapshot=True, trust_key=[]
    )
    auditor_cli.load_policy(args)


# -- the tests ----------------------------------------------------------------------------------

YAML_HUGE = HUGE // 5

YAML_ATTACKS = [
    b"a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b]\n"
    b"d: &d [*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d]\nkind: Network\n",
    b"kind: !!python/object/apply:os.system [echo pwned]\nname: x\n",
    b"[" * 10000,
    b"- " * 5000 + b"x",
    b"kind: Network\nname: a\nname: b\n",
    b"<<: {kind: Network}\nname: x\nclusterNetwork: oob\nvlan: 5\n",
    b"kind: Network\nname: x\nclusterNetwork: oob\nvlan: 0x10\n",
    b"kind: Network\nname: x\nclusterNetwork: oob\nvlan: 1_000\n",
    b"kind: Network\nname: 2001-01-01\nclusterNetwork: oob\nvlan: 5\n",
    b"kind: VlanConfig\nname: v\nclusterNetwork: oob\nuplink: {nics: !!binary aGVsbG8=}\n",
    b"\xef\xbb\xbfkind: ClusterNetwork\nname: x\n",
    b"\xff\xfe k\x00i\x00n\x00d\x00",
    b"---\n" * 3000,
    b"kind: List\nitems: [" + b"{kind: ClusterNetwork, name: c}," * 2000 + b"]\n",
]


def test_submissions() -> None:
    strategy = st.one_of(inputs(SEED_DOCS, huge=YAML_HUGE), inputs([SEED_DOCS], huge=YAML_HUGE))
    fuzz(
        "submissions (l2.api.apply)",
        submission,
        (manifests.ManifestError,),
        strategy,
        n(400),
        fixed=YAML_ATTACKS,
    ).check()


def test_intents_on_the_executor() -> None:
    allowed = (msgspec.DecodeError, StateError, PlanError)
    fuzz(
        "intents (executor)", executor_intent, allowed, inputs([plain(i) for i in INTENTS]), n(900)
    ).check()


@pytest.mark.parametrize(
    ("stream", "valid", "examples"),
    [
        (subjects.STREAM_INTENTS, [plain(i) for i in INTENTS], 500),
        (subjects.STREAM_STATUS, [plain(s) for s in STATUSES], 500),
        (subjects.STREAM_OBSERVED, [plain(o) for o in OBSERVED], 500),
        (subjects.STREAM_NODES, [plain(x) for x in NODES], 300),
        (subjects.STREAM_DRIFT, [plain(d) for d in DRIFTS], 300),
    ],
)
def test_auditor_events(stream: str, valid: list[Any], examples: int) -> None:
    subject = {
        subjects.STREAM_INTENTS: subjects.intent(NODE),
        subjects.STREAM_STATUS: subjects.status(NODE),
        subjects.STREAM_OBSERVED: subjects.observed(NODE),
        subjects.STREAM_NODES: subjects.node(NODE),
        subjects.STREAM_DRIFT: subjects.drift(NODE),
    }[stream]
    fuzz(
        f"auditor {stream}",
        auditor_event(stream, subject),
        (events.BadMessage,),
        inputs(valid),
        n(examples),
    ).check()


def test_auditor_subjects() -> None:
    """The subject is outside data too: any token is a node name or a BadMessage."""
    body = bus.encode(INTENTS[0])
    names = st.sampled_from(["node-1", "node-2", "n", "a" * 63, "a" * 64, "node-1.x", "Node-1"])
    tokens = st.one_of(names, names, st.text(max_size=80)).map(
        lambda t: t.encode("utf-8", "surrogatepass")
    )

    def run(token: bytes) -> None:
        subject = "l2.intent." + token.decode("utf-8", "surrogatepass")
        events.decode_event(subjects.STREAM_INTENTS, subject, body)

    fuzz("auditor subjects", run, (events.BadMessage,), tokens, n(300)).check()


def test_node_inventory_on_the_planner() -> None:
    fuzz(
        "node inventory (planner)",
        planner_node,
        (msgspec.DecodeError,),
        inputs([plain(x) for x in NODES]),
        n(400),
    ).check()


def test_request_bodies() -> None:
    valid = [
        plain(api.DeleteRequest(kind="Network", name="vlan200")),
        plain(api.GetRequest(kind="Network")),
        plain(api.NadRequest(network="vlan200")),
        plain(api.SwitchRequest(node=NODE)),
        plain(protocol.CheckRequest(node=NODE)),
        plain(protocol.DesiredRequest(node=NODE, generation=2)),
    ]
    fuzz("request bodies", request_bodies, (), inputs(valid), n(300)).check()


def test_cli_replies_and_watch() -> None:
    audit = protocol.NodeAudit(
        node=NODE,
        desired_generation=2,
        applied_generation=1,
        observed_generation=1,
        reporting=True,
        verified=True,
        heartbeat_at=T,
        observed_at=T,
        items=DRIFTS[0].items,
        matching_since=T,
    )
    valid = [
        plain(protocol.CheckReply(ok=True, nodes=[audit], at=T, notes=["stray"])),
        plain(
            protocol.HistoryReply(
                ok=True,
                node=NODE,
                events=[protocol.HistoryEvent(at=T, what="intent", generation=1)],
            )
        ),
        *[plain(s) for s in STATUSES],
        *[plain(o) for o in OBSERVED],
    ]
    fuzz("CLI replies and watch", cli_replies, (), inputs(valid), n(400)).check()


WORDS = [
    "audit", "history", "auditor", "get", "apply", "delete", "nad", "switch-config", "watch",
    "--json", "--cached", "--heal", "--timeout", "--generation", "--policy", "--silence",
    "--grace", "--trust-key", "--nats", "-o", "-f", "node-1", "-1", "1e999", "nan", "inf",
    "", "*", "x" * 3000, "\udcff", keys.PUBLIC, "N" + "A" * 55, "--for",
]  # fmt: skip


def test_cli_command_lines() -> None:
    argv = st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=12)), max_size=8).map(
        lambda words: b"\x00".join(w.encode("utf-8", "surrogateescape") for w in words)
    )
    fuzz("CLI command lines", cli_argv, (SystemExit, ValueError), argv, n(300)).check()


def test_cli_policy_files() -> None:
    valid = [{"heal": ["oob", "*"], "silenceSeconds": 30, "graceSeconds": 60}]
    fuzz(
        "auditor --policy files",
        policy_file,
        (ValueError,),
        inputs(valid, huge=YAML_HUGE),
        n(150),
        fixed=YAML_ATTACKS,
    ).check()
