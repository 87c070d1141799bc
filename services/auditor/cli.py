"""``l2net auditor`` (run the service), ``l2net audit [NODE]`` and ``l2net history NODE``.

``l2net audit`` exits like ``terraform plan -detailed-exitcode``: 0 no drift, 2 drift, 1 an
error (no auditor, unknown node, NATS unreachable, a bad configuration). The demo and
scripts use :mod:`services.auditor.client` and :func:`~services.auditor.report.format_audit`
directly.

``l2net`` imports this module to build its parser: the auditor, its client and the bus are
imported when one of these commands runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from shared.runtime import config, lifecycle, runner
from shared.runtime.runner import add_nats_option

if TYPE_CHECKING:
    from services.auditor.service import AuditorConfig
    from services.auditor.view import Policy

EXIT_CLEAN = 0
EXIT_ERROR = 1
EXIT_DRIFT = 2


class PolicyFile(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """``--policy FILE`` (YAML or JSON): ``heal: [oob, ...]`` (``"*"`` for all),
    ``silenceSeconds``, ``graceSeconds``."""

    heal: list[str] = msgspec.field(default_factory=list)
    silence_seconds: float | None = None
    grace_seconds: float | None = None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``auditor``, ``audit`` and ``history`` to the ``l2net`` command line."""
    p = sub.add_parser("auditor", help="run the auditor service (replays history, finds drift)")
    add_nats_option(p)
    p.add_argument(
        "--heal",
        action="append",
        default=[],
        metavar="CLUSTER_NETWORK",
        help="heal drift on this cluster network (repeatable; '*' for all); default: report only",
    )
    p.add_argument("--policy", type=Path, help="YAML/JSON: heal, silenceSeconds, graceSeconds")
    p.add_argument("--silence", type=float, help="seconds without heartbeat = not reporting (30)")
    p.add_argument("--grace", type=float, help="seconds for a node to apply a generation (60)")
    p.add_argument(
        "--snapshot",
        type=Path,
        help="keep a snapshot of the view here, to replay only what came after on restart"
        " (default: $L2NET_STATE_DIR/auditor/snapshot.json)",
    )
    p.add_argument(
        "--no-snapshot", action="store_true", help="always replay the streams from the start"
    )
    p.add_argument(
        "--trust-key",
        action="append",
        default=[],
        metavar="PUBLIC_KEY",
        help="the planner's public key (nkeys N...; repeatable): an intent it did not sign is"
        " reported as drift when it is a node's latest or what a node runs",
    )
    p.set_defaults(handler=run_auditor)

    p = sub.add_parser("audit", help="show drift between intent and nodes (exit 2 on drift)")
    p.add_argument("node", nargs="?", help="one node (default: every node)")
    p.add_argument("--json", action="store_true", help="the findings as JSON")
    p.add_argument(
        "--cached", action="store_true", help="answer from the last reports (no live check)"
    )
    p.add_argument(
        "--heal",
        action="store_true",
        help="ask drifting nodes to re-converge now (whatever the policy), then show the result",
    )
    add_nats_option(p)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    p.set_defaults(handler=_audit)

    p = sub.add_parser("history", help="a node's generations, apply results and drift episodes")
    p.add_argument("node")
    p.add_argument(
        "--generation", type=int, help="print the desired state at this generation instead"
    )
    p.add_argument("--json", action="store_true", help="as JSON")
    add_nats_option(p)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    p.set_defaults(handler=_history)


# -- the service ------------------------------------------------------------------------------


def load_policy(args: argparse.Namespace) -> AuditorConfig:
    """The auditor's configuration from ``--policy`` and the flags (flags win)."""
    from services.auditor.healing import HEAL_ALL
    from services.auditor.service import AuditorConfig
    from shared.wire import signing

    cfg = AuditorConfig()
    if args.policy is not None:
        pf = _read_policy(args.policy)
        cfg.heal |= set(pf.heal)
        _set_times(cfg.policy, silence=pf.silence_seconds, grace=pf.grace_seconds)
    cfg.heal |= set(args.heal)
    _set_times(cfg.policy, silence=args.silence, grace=args.grace)
    for name, value in (("silence", cfg.policy.silence_s), ("grace", cfg.policy.grace_s)):
        if value <= 0:
            raise ValueError(f"{name} must be a positive number of seconds, not {value}")
    if not getattr(args, "no_snapshot", False):
        cfg.snapshot = getattr(args, "snapshot", None) or (
            config.state_dir() / "auditor" / "snapshot.json"
        )
    for cn in cfg.heal:
        if cn != HEAL_ALL and not cn.replace("-", "").isalnum():
            raise ValueError(f"--heal {cn!r}: not a cluster network name")
    for key in getattr(args, "trust_key", None) or []:
        try:
            cfg.trusted_keys.add(signing.check_public_key(key))
        except signing.KeyError_ as exc:
            raise ValueError(f"--trust-key: {exc}") from exc
    return cfg


def _read_policy(path: Path) -> PolicyFile:
    """The ``--policy`` file; ValueError saying why it cannot be used."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
        return msgspec.convert(raw or {}, PolicyFile)
    except OSError as exc:
        raise ValueError(f"--policy {path}: {exc.strerror}") from exc
    except (yaml.YAMLError, msgspec.ValidationError) as exc:
        raise ValueError(f"--policy {path}: {exc}") from exc
    except RecursionError:
        raise ValueError(f"--policy {path}: nested too deeply") from None
    except ValueError as exc:  # not UTF-8, an integer too long to read...
        raise ValueError(f"--policy {path}: {exc}") from None


def _set_times(policy: Policy, *, silence: float | None, grace: float | None) -> None:
    """Override the policy's silence and grace limits with those given (None: keep)."""
    if silence is not None:
        policy.silence_s = silence
    if grace is not None:
        policy.grace_s = grace


def run_auditor(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM; 2 on a bad policy, 1 when NATS is unreachable."""
    try:
        cfg = load_policy(args)
    except ValueError as exc:
        print(f"l2net auditor: {exc}", file=sys.stderr)
        return 2
    lifecycle.setup_logging("auditor")
    return runner.run(lambda: _serve(args.nats, cfg), command="l2net auditor", service="auditor")


async def _serve(nats_url: str | None, cfg: AuditorConfig) -> None:
    from services.auditor.service import Auditor
    from shared.runtime import bus

    nc = await bus.connect(config.nats_servers(nats_url), name="l2net-auditor", attempts=-1)
    auditor = Auditor(nc, cfg)
    try:
        await auditor.start()
        await lifecycle.wait_for_stop()
    finally:
        await auditor.stop()
        await nc.drain()


# -- clients --------------------------------------------------------------------------------


def _to_json(obj: object) -> str:
    return json.dumps(msgspec.to_builtins(obj), indent=2, sort_keys=True)


def _audit(args: argparse.Namespace) -> int:
    async def run() -> int:
        from services.auditor import client, report

        nc = await client.connect(args.nats, name="l2net-audit")
        try:
            reply = await client.check(
                nc,
                args.node,
                live=not args.cached,
                heal=args.heal,
                timeout=max(args.timeout, 180.0) if args.heal else args.timeout,
            )
        finally:
            await nc.drain()
        if args.json:
            print(_to_json(reply))
        else:
            print(report.format_audit(reply))
        if not reply.ok:
            return EXIT_ERROR
        return EXIT_DRIFT if reply.drift else EXIT_CLEAN

    return _run(run, "audit")


def _history(args: argparse.Namespace) -> int:
    async def run() -> int:
        from services.auditor import client, report

        nc = await client.connect(args.nats, name="l2net-history")
        try:
            if args.generation is not None:
                answer = await client.desired(nc, args.node, args.generation, timeout=args.timeout)
                if not answer.ok:
                    print("\n".join(f"error: {e}" for e in answer.errors), file=sys.stderr)
                    return EXIT_ERROR
                out: dict[str, object] = {
                    "intent": msgspec.to_builtins(answer.intent),
                    "matchingSince": _iso_or_none(answer.matching_since),
                    "lastMatched": _iso_or_none(answer.last_matched),
                }
                print(json.dumps(out, indent=2, sort_keys=True))
                return EXIT_CLEAN
            reply = await client.history(nc, args.node, timeout=args.timeout)
        finally:
            await nc.drain()
        print(_to_json(reply) if args.json else report.format_history(reply))
        return EXIT_CLEAN if reply.ok else EXIT_ERROR

    return _run(run, "history")


def _iso_or_none(at: float | None) -> str | None:
    from services.auditor import report

    return None if at is None else report.iso(at)


def _run(make: Callable[[], Coroutine[Any, Any, int]], command: str) -> int:
    # A bad configuration exits 1, not 2: for `l2net audit` 2 means drift.
    return runner.run(make, command=f"l2net {command}", config_error=EXIT_ERROR)


__all__ = ["load_policy", "register", "run_auditor"]
