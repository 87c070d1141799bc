"""``l2net executor`` (run a node's executor) and ``l2net reconcile NODE`` (converge it now).

``l2net`` imports this module to build its parser: the executor, its kernel (pyroute2) and
the bus are imported when ``l2net executor`` or ``l2net reconcile`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path

from services.executor import mgmt
from shared.domain import names
from shared.domain.vocabulary import VID_MAX, VID_MIN
from shared.runtime import config, lifecycle, runner
from shared.runtime.runner import add_nats_option

log = logging.getLogger("l2net.executor")

TRUST_KEYS_ENV = "L2NET_TRUST_KEYS"
"""Trusted public keys from the environment (spaces or commas between them)."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``executor`` and ``reconcile`` to the ``l2net`` command line."""
    p = sub.add_parser("executor", help="run the executor of one node (needs CAP_NET_ADMIN)")
    add_executor_arguments(p)
    p.set_defaults(handler=run_executor)

    p = sub.add_parser("reconcile", help="ask a node's executor to converge to its last intent")
    p.add_argument("node", help="node name")
    add_nats_option(p)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (default 120)")
    p.set_defaults(handler=_reconcile)


def add_executor_arguments(p: argparse.ArgumentParser) -> None:
    """The executor's options (shared by ``l2net executor`` and ``python -m services.executor``)."""
    p.add_argument("--node", required=True, help="this node's name")
    add_nats_option(p)
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a node label (repeatable), matched by nodeSelector",
    )
    p.add_argument(
        "--mgmt-vlan",
        type=int,
        help="the mgmt VLAN (default: found from an existing mgmt-br.<vid> interface)",
    )
    p.add_argument("--heartbeat", type=float, default=10.0, help="seconds between heartbeats")
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the executor keeps the generation it handled and the last intent it "
        "applied, across restarts (default /var/lib/l2net/<node>)",
    )
    p.add_argument(
        "--no-create-streams",
        dest="create_streams",
        action="store_false",
        help="never try to create JetStream streams; wait for the planner to create them "
        "(for a least-privilege NATS node user, as in deploy/)",
    )
    p.add_argument(
        "--trust-key",
        action="append",
        default=[],
        metavar="KEY",
        help="a public key (nkeys, N...) whose intent signatures this node accepts "
        f"(repeatable; also ${TRUST_KEYS_ENV}, separated by spaces or commas)",
    )
    p.add_argument(
        "--trust-keys-file",
        action="append",
        default=[],
        metavar="FILE",
        help="a file of trusted public keys, one a line (# comments); repeatable",
    )
    p.add_argument(
        "--insecure-accept-unsigned",
        action="store_true",
        help="INSECURE, dev only: with no trusted key, apply intents without checking "
        "signatures (anyone who may publish on l2.intent.<node> then controls the node)",
    )
    p.add_argument(
        "--confirm-timeout",
        type=float,
        default=mgmt.DEFAULT_CONFIRM_S,
        metavar="SECONDS",
        help="after each apply, the node must reach NATS (and every --probe) within this "
        f"time or it restores the previous state by itself (default {mgmt.DEFAULT_CONFIRM_S:g};"
        " 0: no confirm)",
    )
    p.add_argument(
        "--probe",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a TCP probe that must connect after each apply, besides NATS (repeatable)",
    )
    p.add_argument("--netns", help=argparse.SUPPRESS)  # tests: work inside a named namespace
    # Tests only: apply what would cut the management path, to prove the confirm rolls it back.
    p.add_argument("--test-only-allow-mgmt-cuts", action="store_true", help=argparse.SUPPRESS)


def parse_labels(items: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` to a dict; a clear error for anything else."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--label {item!r}: expected KEY=VALUE")
        labels[key.strip()] = value.strip()
    return labels


def trusted_keys(keys: list[str], files: list[str], environ: Mapping[str, str]) -> list[str]:
    """The public keys to trust, from ``--trust-key``, ``--trust-keys-file`` and
    ``$L2NET_TRUST_KEYS``, each checked; ValueError naming the one that is not a key."""
    from shared.wire import signing

    found: list[tuple[str, str]] = [(k, "--trust-key") for k in keys]
    found += [
        (k, f"${TRUST_KEYS_ENV}") for k in environ.get(TRUST_KEYS_ENV, "").replace(",", " ").split()
    ]
    for path in files:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"--trust-keys-file {path}: {exc.strerror}") from None
        for number, line in enumerate(lines, 1):
            key = line.split("#", 1)[0].strip()
            if key:
                found.append((key, f"{path}:{number}"))
    out: list[str] = []
    for key, where in found:
        if key.startswith("S"):  # never echoed: it is a secret in the wrong place
            raise ValueError(f"{where}: a seed (a secret), not a public key (N...)")
        try:
            checked = signing.check_public_key(key)
        except signing.KeyError_ as exc:
            raise ValueError(f"{where}: {exc}") from None
        if checked not in out:
            out.append(checked)
    return out


def check_node_name(name: str, what: str = "--node") -> None:
    """The one node-name rule (:mod:`shared.domain.names`): a lowercase RFC 1123 label, as the
    planner and ``deploy/nats/render_accounts.py`` require; ValueError naming the flag."""
    error = names.node_name_error(name, what=what)
    if error is not None:
        raise ValueError(error)


def run_executor(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM; exit 2 on bad arguments, 1 when NATS refuses this node for
    good (its user may not read its stream). An unreachable NATS is waited for, for ever."""
    try:
        check_node_name(args.node)
        labels = parse_labels(args.label)
        if args.mgmt_vlan is not None and not VID_MIN <= args.mgmt_vlan <= VID_MAX:
            raise ValueError(f"--mgmt-vlan {args.mgmt_vlan}: a VLAN id is {VID_MIN}-{VID_MAX}")
        # In range, the mgmt VLAN interface ``mgmt-br.<vid>`` fits IFNAME_MAX (12 characters).
        keys = trusted_keys(args.trust_key, args.trust_keys_file, os.environ)
        if not keys and not args.insecure_accept_unsigned:
            raise ValueError(
                "no trusted signing key: give the planner's public key with --trust-key KEY"
                f" (or --trust-keys-file, or ${TRUST_KEYS_ENV}); an executor that trusts no"
                " key would apply intents anyone can publish"
            )
        if not 0 <= args.confirm_timeout <= 3600:
            raise ValueError(f"--confirm-timeout {args.confirm_timeout}: 0-3600 seconds")
        for probe in args.probe:
            mgmt.parse_probe(probe)
    except ValueError as exc:
        print(f"l2net executor: {exc}")
        return 2
    lifecycle.setup_logging(f"executor[{args.node}]")
    return runner.run(
        lambda: _serve(args, labels=labels, keys=keys),
        command="l2net executor",
        service="executor",
        node=args.node,
        errors="stdout",
    )


async def _serve(args: argparse.Namespace, *, labels: dict[str, str], keys: list[str]) -> None:
    """Run the executor of ``args.node`` until SIGINT/SIGTERM (or NATS refuses it for good)."""
    from services.executor.kernel import NetlinkKernel
    from services.executor.nodestore import default_state_dir
    from services.executor.service import Executor, ExecutorConfig

    cfg = ExecutorConfig(
        node=args.node,
        servers=config.nats_servers(args.nats),
        labels=labels,
        heartbeat_s=args.heartbeat,
        create_streams=args.create_streams,
        trusted_keys=keys,
        accept_unsigned=args.insecure_accept_unsigned,
        confirm_s=args.confirm_timeout,
        probes=list(args.probe),
        test_only_allow_mgmt_cuts=args.test_only_allow_mgmt_cuts,
        state_dir=args.state_dir or default_state_dir(args.node),
    )
    if keys:
        log.info("accepting intents signed by %s", ", ".join(keys))
    else:
        log.warning("INSECURE: no trusted signing key; applying unsigned intents")
    kernel = NetlinkKernel(args.node, netns=args.netns, mgmt_vlan=args.mgmt_vlan)
    executor = Executor(cfg, kernel)
    try:
        # Returns once the node converged to the intent kept on disk: NATS may be away
        # (a node rebooted during an outage); the executor connects when it answers.
        await executor.start(wait_connected=False)
        stop = asyncio.create_task(wait_for_stop_signal())
        session = asyncio.create_task(executor.wait_ready())
        done, _ = await asyncio.wait({stop, session}, return_when=asyncio.FIRST_COMPLETED)
        if session in done:
            session.result()  # raises when NATS refused this node for good
            await stop
        else:
            session.cancel()
    finally:
        await executor.stop()


async def wait_for_stop_signal() -> None:
    """Return on SIGINT or SIGTERM sent to this process.

    Not asyncio's ``add_signal_handler``: that routes signals through a wake-up descriptor
    that every process pyroute2 forks (one per network namespace socket) inherits, so a
    helper that pyroute2 stops with SIGTERM would stop the executor too. A plain handler
    runs in the process the signal was sent to; in a forked helper it does the default.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    me = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != me:  # a forked helper: die as the default action would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        loop.call_soon_threadsafe(stop.set)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        await stop.wait()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


async def _request_reconcile(args: argparse.Namespace) -> int:
    from services.executor import client as executor
    from shared.runtime import bus

    nc = await bus.connect(config.nats_servers(args.nats), name="l2net-reconcile")
    try:
        status = await executor.reconcile(nc, args.node, timeout=args.timeout)
    finally:
        await nc.drain()
    print(
        f"{status.node}: {status.phase} generation {status.observed_generation}"
        f" ({status.netlink_writes} writes, {status.duration_s:.2f}s)"
    )
    for result in status.results:
        mark = "ok" if result.ok else "FAILED"
        print(f"  {mark:6} {result.action}" + (f": {result.error}" if result.error else ""))
    if status.error:
        print(f"  error: {status.error}")
    return 0 if status.phase == "Applied" else 1


def _reconcile(args: argparse.Namespace) -> int:
    try:
        check_node_name(args.node, "node")
    except ValueError as exc:
        print(f"l2net reconcile: {exc}")
        return 2
    return runner.run(lambda: _request_reconcile(args), command="l2net reconcile", errors="stdout")
