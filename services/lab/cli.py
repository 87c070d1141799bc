"""``l2net lab up|exec|status|restart|down``: the lab from the command line.

Exit codes: ``up``/``down``/``status``/``restart`` return 0 on success and 1 when the lab
is not (all) there or failed; ``exec`` returns the command's own exit code, or 255 when the
command could not be run in the node (like ssh); bad arguments are 2 (argparse).

``l2net`` imports this module to build its parser: the lab itself (:mod:`services.lab.fleet`)
is imported when a ``lab`` command runs.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from services.lab import state

if TYPE_CHECKING:
    from services.lab.fleet import NodeStatus

EXEC_FAILED = 255


def _dir(args: argparse.Namespace) -> Path:
    from services.lab.fleet import default_dir

    return Path(args.state_dir) if args.state_dir else default_dir()


def _err(message: str) -> None:
    print(f"l2net lab: {message}", file=sys.stderr)


def cmd_up(args: argparse.Namespace) -> int:
    """Boot the lab; print ``NATS_URL=...`` on stdout once every node answers."""
    from services.lab.fleet import Lab, LabError

    def progress(line: str) -> None:
        print(f"lab: {line}", file=sys.stderr, flush=True)

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    # Killed while booting (SIGTERM, a CI timeout): stop what was started, like Ctrl-C does.
    signal.signal(signal.SIGTERM, stop)

    try:
        lab = Lab.up(
            directory=_dir(args),
            nodes=args.nodes,
            data_nics=args.data_nics,
            mgmt_vlan=args.mgmt_vlan,
            nats_url=args.nats,
            mem_mb=args.mem,
            executor=False if args.no_executor else None,
            timeout=args.timeout,
            progress=progress,
        )
    except LabError as exc:
        _err(str(exc))
        return 1
    print(f"NATS_URL={lab.nats_url}", flush=True)
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    """Run a command in a node; relay its output; exit with its exit code."""
    from services.lab.fleet import Lab, LabError

    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        _err("exec: no command given (usage: l2net lab exec NODE -- CMD ...)")
        return 2
    try:
        lab = Lab.load(_dir(args))
        stdin = sys.stdin.buffer.read() if args.stdin else b""
        rc, out, err = lab.exec(args.node, argv, timeout=args.timeout, stdin=stdin, vm=args.vm)
    except LabError as exc:
        _err(str(exc))
        return EXEC_FAILED
    sys.stdout.write(out)
    sys.stdout.flush()
    sys.stderr.write(err)
    sys.stderr.flush()
    return rc


def cmd_status(args: argparse.Namespace) -> int:
    """Print the lab and each node's state; 0 when every node runs and answers, and each
    executor the lab started runs and is connected to NATS (answers its health request)."""
    from services.lab.fleet import Lab, LabError

    try:
        lab = Lab.load(_dir(args))
    except LabError as exc:
        _err(str(exc))
        return 1
    st = lab.state
    vlan = f" mgmt-vlan={st.mgmt_vlan}" if st.mgmt_vlan is not None else ""
    print(f"lab {st.lab_id} ({st.phase}) dir={st.dir} netns={st.netns}{vlan}")
    print(f"NATS_URL={st.nats_url} (nodes use {st.nats_url_inside})")
    relay = "running" if state.alive(st.relay) else "stopped"
    nats = "embedded, " + ("running" if state.alive(st.nats) else "stopped")
    print(f"relay: {relay}; NATS server: {nats if st.nats_owned else 'external (--nats)'}")
    print(
        f"{'NODE':<10} {'ADDRESS':<15} {'PID':>8} {'UML':<7} {'HELPER':<7} "
        f"{'EXECUTOR':<8} {'NATS':<22} {'BOOT':>6} {'HOST MEM':>9}"
    )
    ok = st.phase == "up"
    for n in lab.status():
        boot = f"{n.boot_seconds:.1f}s" if n.boot_seconds is not None else "-"
        mem = f"{n.host_mem_kb // 1024} MiB" if n.host_mem_kb else "-"
        print(
            f"{n.name:<10} {n.address:<15} {n.pid or '-':>8} "
            f"{'running' if n.running else 'stopped':<7} {'ok' if n.helper else 'silent':<7} "
            f"{n.executor or '-':<8} {_nats_column(n):<22} {boot:>6} {mem:>9}"
        )
        ok = ok and n.running and n.helper and n.executor in ("", "running")
        ok = ok and n.connected is not False
    return 0 if ok else 1


def cmd_restart(args: argparse.Namespace) -> int:
    """Stop one node as a power cut would, and boot it again (NATS not needed)."""
    from services.lab.fleet import Lab, LabError

    try:
        lab = Lab.load(_dir(args))
        seconds = lab.restart_node(args.node, timeout=args.timeout)
    except LabError as exc:
        _err(str(exc))
        return 1
    print(f"{args.node} restarted: network up in {seconds:.1f} s", file=sys.stderr)
    return 0


def _nats_column(n: NodeStatus) -> str:
    """Whether the node's executor is connected to NATS: it answered its health request
    (``connected``, with the age of its last heartbeat) or not (``DISCONNECTED``)."""
    if n.connected is None:
        return "-"
    heartbeat = f"hb {_age(n.heartbeat_age)}" if n.heartbeat_age is not None else "no hb"
    return f"{'connected' if n.connected else 'DISCONNECTED'} ({heartbeat})"


def _age(seconds: float) -> str:
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def cmd_down(args: argparse.Namespace) -> int:
    """Stop everything the lab started and remove what it made."""
    from services.lab.fleet import LabError, down

    try:
        removed = down(_dir(args))
    except LabError as exc:
        _err(str(exc))
        return 1
    if not removed:
        print(f"no lab in {_dir(args)}", file=sys.stderr)
    for item in removed:
        print(f"removed {item}", file=sys.stderr)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``lab`` with ``up``, ``exec``, ``status``, ``restart`` and ``down`` to the l2net
    CLI."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the lab's state directory (default: $L2NET_LAB_DIR or <l2net state dir>/lab)",
    )
    lab = sub.add_parser(
        "lab",
        help="a fleet of user-mode Linux nodes on this machine, to try l2net",
        description="A lab of user-mode Linux nodes (real bonding, 802.1Q, VLAN filtering).",
    )
    lsub = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND", required=True)

    up = lsub.add_parser("up", parents=[common], help="boot N nodes and detach")
    up.add_argument("--nodes", type=int, default=2, help="number of nodes (default 2)")
    up.add_argument("--mgmt-vlan", type=int, metavar="VID", help="mgmt network on VLAN VID")
    up.add_argument(
        "--data-nics",
        type=_positive,
        default=2,
        metavar="K",
        help="data NICs per node, eth1..ethK (default 2; pairs share a switch)",
    )
    up.add_argument("--nats", metavar="URL", help="use this NATS server instead of starting one")
    up.add_argument("--mem", type=int, default=256, metavar="MIB", help="memory per node")
    up.add_argument(
        "--no-executor",
        action="store_true",
        help="do not start the l2net executor in the nodes",
    )
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the nodes")
    up.set_defaults(handler=cmd_up)

    ex = lsub.add_parser("exec", parents=[common], help="run a command in a node")
    ex.add_argument("--timeout", type=float, default=60.0, help="kill the command after S s")
    ex.add_argument("--stdin", action="store_true", help="pass this command's stdin along")
    ex.add_argument("--vm", metavar="NAME", help="run in VM NAME's network namespace")
    ex.add_argument("node", help="node-1 ... node-N")
    ex.add_argument("argv", nargs=argparse.REMAINDER, help="-- CMD [ARG ...]")
    ex.set_defaults(handler=cmd_exec)

    status = lsub.add_parser("status", parents=[common], help="show the lab and its nodes")
    status.set_defaults(handler=cmd_status)

    rs = lsub.add_parser(
        "restart", parents=[common], help="power-cycle one node (kill it, boot it again)"
    )
    rs.add_argument("node", help="node-1 ... node-N")
    rs.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for its boot")
    rs.set_defaults(handler=cmd_restart)

    dn = lsub.add_parser("down", parents=[common], help="stop the lab and remove what it made")
    dn.set_defaults(handler=cmd_down)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m services.lab``), same commands as ``l2net lab``."""
    parser = argparse.ArgumentParser(prog="l2net")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register(sub)
    args = parser.parse_args(["lab", *(sys.argv[1:] if argv is None else argv)])
    handler = args.handler
    code: int = handler(args)
    return code
