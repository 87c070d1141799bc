"""The user's subcommands: up, plan, apply, delete, get, nad, switch-config, watch, demo.

Every command takes ``--nats URL`` (or ``NATS_URL``; a comma-separated list is fine) and
falls back to the embedded server that ``l2net up`` started. Exit codes: 0 done, 1 refused
or failed (every reason printed), 2 usage (argparse) or configuration (a bad ``OTEL_*``).

``l2net`` imports this module to build its parser: at the top it imports what describes the
commands (argparse, the model's kind names); nats-py, tracing and the planner's client are
imported by the handler that runs (:func:`shared.runtime.runner.run`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from shared.domain import model
from shared.runtime import config, runner
from shared.runtime.runner import CommandError, add_nats_option
from shared.wire import api, subjects

if TYPE_CHECKING:
    from nats.aio.msg import Msg

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def _on_bus(
    handler: Handler, *, config_error: int = runner.EXIT_USAGE
) -> Callable[[argparse.Namespace], int]:
    """The handler as argparse calls it: run by :func:`shared.runtime.runner.run` (tracing, one-line
    errors prefixed ``l2net:``). ``config_error``: the exit code of a bad ``OTEL_*`` (1 where
    2 means something else, as changes do for ``plan``)."""

    def run(args: argparse.Namespace) -> int:
        return runner.run(lambda: handler(args), command="l2net", config_error=config_error)

    return run


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("up", help="run the embedded NATS server (JetStream) in the foreground")
    p.add_argument("--port", type=int, default=config.DEFAULT_EMBEDDED_PORT)
    p.add_argument("--state-dir", type=Path, help="default: $L2NET_STATE_DIR/nats")
    p.set_defaults(handler=_up)

    p = sub.add_parser("apply", help="submit a manifest (all documents accepted, or none)")
    p.add_argument("-f", "--file", required=True, help="YAML or JSON file, or - for stdin")
    add_nats_option(p)
    p.set_defaults(handler=_on_bus(_apply))

    p = sub.add_parser(
        "plan", help="what apply of a manifest would do to each node, step by step (stores nothing)"
    )
    p.add_argument("-f", "--file", required=True, help="YAML or JSON file, or - for stdin")
    p.add_argument("--json", action="store_true", help=f"the plan for programs ({PLAN_SHAPE})")
    add_nats_option(p)
    p.set_defaults(handler=_on_bus(_plan, config_error=runner.EXIT_FAILED))

    p = sub.add_parser("delete", help="delete one object")
    p.add_argument("kind", help=", ".join(model.USER_KINDS))
    p.add_argument("name")
    add_nats_option(p)
    p.set_defaults(handler=_on_bus(_delete))

    p = sub.add_parser("get", help="list objects (every kind, or one)")
    p.add_argument("kind", nargs="?", help=", ".join([*model.USER_KINDS, "Node"]))
    p.add_argument("name", nargs="?")
    p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    add_nats_option(p)
    p.set_defaults(handler=_on_bus(_get))

    p = sub.add_parser("nad", help="print a network's bridge CNI config (as Multus gets it)")
    p.add_argument("network")
    p.add_argument("--yaml", action="store_true", help="the NetworkAttachmentDefinition object")
    add_nats_option(p)
    p.set_defaults(handler=_on_bus(_nad))

    p = sub.add_parser("switch-config", help="what the switch ports of each NIC group need")
    p.add_argument("node", nargs="?")
    add_nats_option(p)
    p.set_defaults(handler=_on_bus(_switch_config))

    p = sub.add_parser("watch", help="follow per-node status live (Ctrl-C to stop)")
    p.add_argument("--for", dest="duration", type=float, help="stop after this many seconds")
    add_nats_option(p)
    p.set_defaults(handler=_on_bus(_watch))

    p = sub.add_parser("demo", help="the demo that `make demo` runs")
    p.add_argument("--keep", action="store_true", help="keep the demo's NATS state afterwards")
    p.set_defaults(handler=_demo)


# -- up ------------------------------------------------------------------------------


def _up(args: argparse.Namespace) -> int:
    from shared.runtime import lifecycle, natsserver

    state = args.state_dir or config.state_dir() / "nats"
    recorded = state / "nats.pid"
    if recorded.exists() and natsserver.pid_alive(int(recorded.read_text())):
        url = (state / "nats.url").read_text().strip()
        print(f"l2net: the embedded NATS server already runs (pid {recorded.read_text()}) at {url}")
        return 1
    try:
        server = natsserver.start(state, port=args.port)
    except natsserver.NatsServerError as exc:
        print(f"l2net up: {exc}", file=sys.stderr)
        return 1
    print(f"NATS_URL={server.url}")
    print(f"JetStream store: {server.store_dir}  (Ctrl-C to stop)", flush=True)
    try:
        asyncio.run(lifecycle.wait_for_stop())
    finally:
        server.stop()
        recorded.unlink(missing_ok=True)
    return 0


# -- apply / delete ------------------------------------------------------------------


def _read_manifest(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from exc


def refused(command: str, errors: list[api.Problem]) -> int:
    """Print every reason the service gave, one line each; the exit code for a refusal."""
    for problem in errors:
        print(f"l2net {command}: {problem}", file=sys.stderr)
    return 1


def print_problems(source: str, what: str, errors: list[api.Problem]) -> int:
    """``source: what:`` then each problem on its own line (stderr); exit code 1."""
    print(f"{source}: {what}:", file=sys.stderr)
    for problem in errors:
        print(f"  - {problem}", file=sys.stderr)
    return 1


def print_apply_reply(reply: api.ApplyReply, *, source: str) -> int:
    if not reply.ok:
        # Changes listed with a failure: stored, but not (yet) published to every node.
        what = (
            "stored, but not yet on every node"
            if reply.changes
            else "rejected, nothing was applied"
        )
        return print_problems(source, what, reply.errors)
    for change in reply.changes:
        print(f"{change.kind}/{change.name} {change.action} (revision {change.revision})")
    for node, generation in sorted(reply.generations.items()):
        print(f"node {node}: generation {generation}")
    for warning in reply.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


async def _apply(args: argparse.Namespace) -> int:
    from services.planner import client as planner
    from shared.runtime.client import connected

    body = _read_manifest(args.file)
    source = "stdin" if args.file == "-" else args.file
    async with connected(args.nats) as nc:
        reply = await planner.apply(nc, body, source=source)
    return print_apply_reply(reply, source=source)


PLAN_SHAPE = f"plan-reply version {api.PLAN_VERSION}, docs/reference/schemas/plan-reply.json"

PLAN_EXIT = {False: 0, True: 2}
"""``l2net plan``'s exit code by "something would change" (1: refused or failed), like
``terraform plan -detailed-exitcode``."""


def format_plan(reply: api.PlanReply, *, source: str) -> str:
    """The plan for people: changed objects, then each node's steps with their class and
    what a disruptive one affects, then a summary."""
    lines = [
        f"{c.kind}/{c.name} would be {c.action}" for c in reply.changes if c.action != "unchanged"
    ]
    for node in reply.nodes:
        lines += ["", *_format_node_plan(node)]
    s = reply.summary
    if not reply.changes_anything:
        return f"{source}: nothing to do (every object is stored as written)"
    counted = (
        f"{s.objects} object(s) to store; {s.nodes} node(s) change: {s.steps} step(s), "
        f"{s.hitless} hitless, {s.disruptive} disruptive"
    )
    if s.disruptive_nodes:
        counted += f" (on {', '.join(s.disruptive_nodes)})"
    if s.unknown_nodes:
        counted += f"; not planned: {', '.join(s.unknown_nodes)}"
    return "\n".join([*lines, "", f"summary: {counted}"]).strip("\n")


_STATE_WORDS = {"live": "its live state", "observed": "its last observed state"}


def _format_node_plan(node: api.NodePlan) -> list[str]:
    against = _STATE_WORDS.get(node.state, "no state known")
    lines = [f"node {node.node} (at generation {node.generation}; against {against}):"]
    if node.note:
        lines.append(f"  note: {node.note}")
    if node.error:
        lines.append(f"  error: the executor would fail this generation: {node.error}")
    lines += [f"  refused by the executor: {r}" for r in node.refused]
    if not node.steps and node.state != "unknown" and not node.error:
        lines.append("  no kernel change (its state already matches)")
    pad = " " * 15
    for step in node.steps:
        mark = "~ disruptive" if step.impact == "disruptive" else "+ hitless   "
        lines += [f"  {mark} {step.action}", f"{pad}{step.reason}"]
        hit = [f"VM NIC {n}" for n in step.vm_nics]
        hit += [f"host network {h}" for h in step.host_networks]
        if hit:
            lines.append(f"{pad}affects: {', '.join(hit)}")
    return lines


async def _plan(args: argparse.Namespace) -> int:
    from services.planner import client as planner
    from shared.runtime.client import connected

    body = _read_manifest(args.file)
    source = "stdin" if args.file == "-" else args.file
    async with connected(args.nats) as nc:
        reply = await planner.plan(nc, body, source=source)
    if args.json:
        print(json.dumps(msgspec.to_builtins(reply), indent=2))
        return PLAN_EXIT[reply.changes_anything] if reply.ok else 1
    if not reply.ok:
        return print_problems(source, "rejected, nothing was applied", reply.errors)
    print(format_plan(reply, source=source))
    for warning in reply.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return PLAN_EXIT[reply.changes_anything]


async def _delete(args: argparse.Namespace) -> int:
    from services.planner import client as planner
    from shared.runtime.client import connected

    async with connected(args.nats) as nc:
        reply = await planner.delete(nc, kind=args.kind, name=args.name)
    return print_apply_reply(reply, source=f"delete {args.kind} {args.name}")


# -- get -----------------------------------------------------------------------------

COLUMNS: dict[str, list[tuple[str, Callable[[dict[str, Any]], str]]]] = {
    "ClusterNetwork": [("DESCRIPTION", lambda s: s.get("description", ""))],
    "VlanConfig": [
        ("CLUSTER-NETWORK", lambda s: s["clusterNetwork"]),
        ("NICS", lambda s: ",".join(s["uplink"]["nics"])),
        ("MODE", lambda s: s["uplink"]["bondOptions"]["mode"]),
        ("MTU", lambda s: str(s["uplink"]["linkAttributes"]["mtu"] or 1500)),
        (
            "NODE-SELECTOR",
            lambda s: ",".join(f"{k}={v}" for k, v in s["nodeSelector"].items()) or "(all)",
        ),
    ],
    "Network": [
        ("CLUSTER-NETWORK", lambda s: s["clusterNetwork"]),
        ("TYPE", lambda s: s["type"]),
        ("VLAN", lambda s: _vlan_text(s)),
    ],
    "HostNetwork": [
        ("CLUSTER-NETWORK", lambda s: s["clusterNetwork"]),
        ("VLAN", lambda s: str(s["vlan"])),
        ("IPS", lambda s: ",".join(f"{k}={v}" for k, v in s["ips"].items()) or "-"),
    ],
    "VmNic": [
        ("VM", lambda s: s["vm"]),
        ("NODE", lambda s: s["node"]),
        ("NETWORK", lambda s: s["network"]),
        ("MAC", lambda s: s.get("mac") or "-"),
    ],
    "Node": [
        ("GENERATION", lambda s: str(s.get("generation", 0))),
        ("NICS", lambda s: ",".join(f"{n['name']}({n['state']})" for n in s["nics"])),
        ("LABELS", lambda s: ",".join(f"{k}={v}" for k, v in s["labels"].items()) or "-"),
        ("LAST-SEEN", lambda s: _age(s.get("heartbeatAt", 0.0))),
    ],
}


def _vlan_text(spec: dict[str, Any]) -> str:
    if spec["type"] == "L2VlanNetwork":
        return str(spec["vlan"])
    if spec["type"] == "UntaggedNetwork":
        return "untagged"
    parts = []
    for r in spec["trunk"]:
        parts.append(str(r["id"]) if r.get("id") is not None else f"{r['minID']}-{r['maxID']}")
    return ",".join(parts)


def _age(at: float) -> str:
    if not at:
        return "-"
    seconds = max(0, int(time.time() - at))
    return f"{seconds}s ago" if seconds < 120 else f"{seconds // 60}m ago"


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


async def _get(args: argparse.Namespace) -> int:
    from services.planner import client as planner
    from shared.runtime.client import connected

    async with connected(args.nats) as nc:
        reply = await planner.get(nc, args.kind, args.name)
    if not reply.ok:
        return refused("get", reply.errors)
    if args.output == "json":
        print(json.dumps(msgspec.to_builtins(reply.items), indent=2))
        return 0
    if args.output == "yaml":
        import yaml

        docs = [{"kind": i.kind, **i.spec} for i in reply.items]
        print(yaml.safe_dump_all(docs, sort_keys=False), end="")
        return 0
    # The planner took the kind in any case (`network`); the table uses its spelling.
    kinds = (
        [model.canonical_kind(args.kind) or args.kind] if args.kind else [*model.USER_KINDS, "Node"]
    )
    blocks: list[str] = []
    for kind in kinds:
        items = [i for i in reply.items if i.kind == kind]
        if not items and args.kind is None:
            continue
        cols = COLUMNS[kind]
        rows = [["NAME", *(c[0] for c in cols)]]
        rows += [[i.name, *(c[1](i.spec) for c in cols)] for i in items]
        heading = f"{kind}:\n" if args.kind is None else ""
        blocks.append(heading + format_table(rows))
    print("\n\n".join(blocks) if blocks else "no objects")
    return 0


# -- nad / switch-config -------------------------------------------------------------


async def _nad(args: argparse.Namespace) -> int:
    from services.planner import client as planner
    from shared.runtime.client import connected

    async with connected(args.nats) as nc:
        reply = await planner.nad(nc, args.network)
    if not reply.ok:
        return refused("nad", reply.errors)
    print(
        reply.yaml if args.yaml else json.dumps(reply.config, indent=2), end="\n" * (not args.yaml)
    )
    return 0


def format_switch_ports(ports: list[api.SwitchPort]) -> str:
    rows = [
        [
            "NODE",
            "CLUSTER-NETWORK",
            "NICS",
            "BOND-MODE",
            "LINK-AGGREGATION",
            "PORT-MODE",
            "ALLOWED-VLANS",
            "NATIVE-VLAN",
        ]
    ]
    rows += [
        [
            p.node,
            p.cluster_network,
            ",".join(p.nics) or "-",
            p.bond_mode,
            p.link_aggregation,
            p.port_mode,
            p.allowed_vlans,
            p.native_vlan,
        ]
        for p in ports
    ]
    return format_table(rows)


async def _switch_config(args: argparse.Namespace) -> int:
    from services.planner import client as planner
    from shared.runtime.client import connected

    async with connected(args.nats) as nc:
        reply = await planner.switch_config(nc, args.node)
    if not reply.ok:
        return refused("switch-config", reply.errors)
    print(format_switch_ports(reply.ports) if reply.ports else "no nodes registered")
    return 0


# -- watch ---------------------------------------------------------------------------


def iso_now() -> str:
    """Now, as every l2net time is printed: ISO 8601 UTC (``2026-12-01T03:04:05Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def describe_event(subject: str, data: bytes) -> str:
    """One readable line for a status, node, observed or drift event."""
    from shared.runtime import bus

    stamp = iso_now()
    node = subjects.last_token(subject)
    try:
        if subject == subjects.status(node):
            st = bus.decode(data, model.NodeStatus)
            extra = f" error: {st.error}" if st.error else ""
            return (
                f"{stamp} {node:<12} status   gen {st.observed_generation:<4} {st.phase}"
                f" ({st.netlink_writes} netlink writes, {st.duration_s:.2f}s){extra}"
            )
        if subject == subjects.node(node):
            n = bus.decode(data, model.Node)
            nics = " ".join(f"{nic.name}:{nic.state}" for nic in n.nics)
            return f"{stamp} {node:<12} node     {nics}"
        if subject == subjects.observed(node):
            obs = bus.decode(data, model.ObservedState)
            return f"{stamp} {node:<12} observed gen {obs.generation:<4} {obs.reason}"
        if subject == subjects.drift(node):
            dr = bus.decode(data, model.DriftReport)
            open_items = [i for i in dr.items if i.resolved_at is None]
            return f"{stamp} {node:<12} drift    {len(open_items)} open finding(s)"
    except msgspec.DecodeError as exc:
        return f"{stamp} {node:<12} unreadable event on {subject}: {exc}"
    return f"{stamp} {subject}"


async def _watch(args: argparse.Namespace) -> int:
    from shared.runtime import bus
    from shared.runtime.client import connected

    async with connected(args.nats) as nc:
        queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

        async def on_msg(msg: Msg) -> None:
            await queue.put((msg.subject, msg.data))

        subs = [
            await nc.subscribe(s, cb=on_msg)
            for s in (subjects.ALL_STATUS, subjects.ALL_OBSERVED, subjects.ALL_DRIFT)
        ]
        await bus.settle(nc)
        print("watching l2.status.*, l2.observed.*, l2.drift.* (Ctrl-C to stop)", flush=True)
        deadline = time.monotonic() + args.duration if args.duration else None
        try:
            while deadline is None or time.monotonic() < deadline:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    subject, data = await asyncio.wait_for(queue.get(), timeout=timeout)
                except TimeoutError:
                    break
                print(describe_event(subject, data), flush=True)
        finally:
            for sub in subs:
                await sub.unsubscribe()
    return 0


def _demo(args: argparse.Namespace) -> int:
    from services.cli import demo

    return demo.run(keep=args.keep)
