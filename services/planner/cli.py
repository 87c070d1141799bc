"""``l2net planner``: run the planner service until stopped.

The planner signs every intent (:mod:`shared.wire.signing`) with the seed in ``--signing-key FILE``
(or ``$L2NET_SIGNING_KEY_FILE``) and refuses to start without one: executors apply only
intents signed by a key they trust. ``--generate-signing-key`` (dev setups) makes the file
first when it is missing; without ``--signing-key`` it is the lab's key file, whose public key
``l2net lab up`` gives to the lab's executors. The seed is never logged; its public key is.

``l2net`` imports this module to build its parser; the planner itself is imported when
``l2net planner`` runs.
"""

from __future__ import annotations

import argparse
import logging
import os

from shared.runtime import config, lifecycle, runner
from shared.runtime.runner import add_nats_option

log = logging.getLogger("l2net.planner")

SIGNING_KEY_ENV = "L2NET_SIGNING_KEY_FILE"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("planner", help="run the planner service (validates, compiles, publishes)")
    add_nats_option(p)
    p.add_argument(
        "--signing-key",
        metavar="FILE",
        help=f"the intent signing seed (nkeys, SN...; default ${SIGNING_KEY_ENV}); required",
    )
    p.add_argument(
        "--generate-signing-key",
        action="store_true",
        help="dev only: make the seed file first if it does not exist (default file: the "
        "lab's, whose public key `l2net lab up` gives to the lab's executors)",
    )
    p.add_argument(
        "--print-public-key",
        action="store_true",
        help="print the seed's public key (what executors --trust-key) and exit",
    )
    p.add_argument(
        "--stream-replicas",
        type=int,
        metavar="N",
        help=f"servers that keep each stream: 1 on one server, 3 on a production cluster; "
        f"streams are created or updated to it (default ${config.STREAM_REPLICAS_ENV}, else "
        "1 for a new stream and an existing one keeps its own)",
    )
    p.set_defaults(handler=_run)


def signing_seed(path: str | None, *, generate: bool) -> str:
    """The planner's seed from ``path`` (else ``$L2NET_SIGNING_KEY_FILE``; with ``generate``
    else the lab's key file), made first with ``generate``; KeyError_ saying what to do."""
    from shared.wire import signing

    path = path or os.environ.get(SIGNING_KEY_ENV) or None
    if path is None and generate:
        from services.lab.fleet import signing_seed_file  # only dev setups need the lab

        path = str(signing_seed_file())
    if path is None:
        raise signing.KeyError_(
            "the planner signs every intent: give its seed with --signing-key FILE (or "
            f"${SIGNING_KEY_ENV}); for a dev setup, --generate-signing-key makes one"
        )
    return signing.ensure_seed(path) if generate else signing.load_seed(path)


async def serve(nats_url: str | None, seed: str, *, replicas: int | None = None) -> None:
    """Run the planner until SIGINT/SIGTERM; connect (and reconnect) to NATS for ever."""
    from services.planner.service import Planner, tune_gc
    from shared.runtime import bus

    tune_gc()
    servers = config.nats_servers(nats_url)
    log.info("connecting to NATS at %s", ", ".join(bus.redact(s) for s in servers))
    nc = await bus.connect(servers, name="l2net-planner", attempts=-1)
    planner = Planner(nc, signing_seed=seed, stream_replicas=replicas)
    log.info("signing intents with key %s", planner.signing_key)
    try:
        await planner.start()
        await lifecycle.wait_for_stop()
    finally:
        await planner.stop()
        await nc.drain()


def _run(args: argparse.Namespace) -> int:
    from shared.wire import signing

    try:
        seed = signing_seed(args.signing_key, generate=args.generate_signing_key)
    except (signing.KeyError_, OSError) as exc:
        print(f"l2net planner: {exc}")
        return 2
    if args.print_public_key:
        print(signing.public_key(seed))
        return 0
    try:
        replicas = config.stream_replicas(args.stream_replicas)
    except ValueError as exc:
        print(f"l2net planner: {exc}")
        return 2
    lifecycle.setup_logging("planner")
    return runner.run(
        lambda: serve(args.nats, seed, replicas=replicas),
        command="l2net planner",
        service="planner",
        errors="stdout",
    )
