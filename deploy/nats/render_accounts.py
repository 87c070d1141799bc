#!/usr/bin/env python3
"""Write the NATS accounts for an l2net fleet: one user per node, each confined to its node.

    python3 render_accounts.py node-1 node-2 node-3 > accounts.conf

``nats-server.conf`` includes the result. Only the standard library and l2net's
``shared/domain/names.py`` (the one rule for node names, shared with the executor) are used, so this
runs on any host with Python 3 and a copy of this repository (or l2net installed).

Passwords are not written here: each user's password is read by nats-server from an
environment variable (``L2NET_NATS_PASSWORD_<USER>``, upper case, ``-`` as ``_``; e.g.
``L2NET_NATS_PASSWORD_NODE_1``). The variable may hold the plain password or a bcrypt hash
(``$2a$...``); nats-server refuses to start when one is missing.

Users (all in account ``L2NET`` with JetStream; ``SYS`` is the system account). Each gets
only the JetStream API subjects it needs; no one but the planner may create or change a
stream, and no one at all may delete or purge a stream, delete a message or delete a
consumer (retention is the streams' own limits):

- ``planner``: serves ``l2.api.>``, publishes specs and intents (the only user that may),
  creates and updates the streams, reads them (its own ephemeral consumers), asks executors
  for live state (``l2.executor.<node>.state``, for ``l2net plan``).
- ``auditor``: reads every ``l2.>`` subject and stream (ephemeral ordered consumers, direct
  and message gets), publishes ``l2.drift.>``, asks executors for live state or a reconcile
  (``l2.executor.<node>.state|reconcile``). It cannot create or change a stream (the
  planner creates ``L2_DRIFT`` with the others), nor delete, pull from or ack on another
  consumer.
- ``operator``: people and the ``l2net`` CLI: submits over ``l2.api.>``, asks the auditor
  (``l2.auditor.>``: ``l2net audit``, ``l2net history``), asks executors for state or a
  reconcile, and reads JetStream without creating anything: stream and consumer info and
  lists, messages by sequence or last per subject (``STREAM.MSG.GET``, ``DIRECT.GET``).
  It may not create consumers either: a push consumer delivers to any subject named in its
  request body, which would be a publish in disguise. It cannot publish intents, status or
  drift.
- ``<node>``: the executor of that node. Publishes only ``l2.status.<node>``,
  ``l2.observed.<node>``, ``l2.node.<node>``; reads intents only through its durable consumer
  ``executor-<node>`` on ``L2_INTENTS`` filtered to ``l2.intent.<node>`` (created with the
  filtered create subject, so the server checks the filter); answers requests on
  ``l2.executor.<node>.>`` and ``$SRV``; receives replies only on ``_INBOX.<node>.>`` (the
  executor connects with ``inbox_prefix="_INBOX.<node>"``). It cannot create or change
  streams: create them first with the planner user.

Permissions are the second line: executors also refuse any intent not signed by the
planner's key (docs/deploy.md, "Intent signing keys"), whoever managed to publish it.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from shared.domain.names import node_name_error
except ImportError:  # run from a checkout: deploy/nats/ -> the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from shared.domain.names import node_name_error


def password_var(user: str) -> str:
    """The environment variable that holds ``user``'s password."""
    return "L2NET_NATS_PASSWORD_" + user.upper().replace("-", "_")


def _list(items: list[str], indent: str) -> str:
    return "[\n" + "".join(f'{indent}  "{s}"\n' for s in items) + f"{indent}]"


def _user(name: str, publish: list[str], subscribe: list[str], indent: str = "      ") -> str:
    inner = indent + "  "
    return (
        f"{indent}{{\n"
        f"{inner}user: {name}\n"
        f"{inner}password: ${password_var(name)}\n"
        f"{inner}permissions: {{\n"
        f"{inner}  publish: {{ allow: {_list(publish, inner + '  ')} }}\n"
        f"{inner}  subscribe: {{ allow: {_list(subscribe, inner + '  ')} }}\n"
        f"{inner}  allow_responses: true\n"
        f"{inner}}}\n"
        f"{indent}}}\n"
    )


def node_user(node: str) -> str:
    """The executor user of ``node``: its own subjects and its own durable consumer only."""
    durable = f"executor-{node}"
    publish = [
        f"l2.status.{node}",
        f"l2.observed.{node}",
        f"l2.node.{node}",
        "$JS.API.INFO",
        "$JS.API.STREAM.INFO.L2_INTENTS",
        "$JS.API.STREAM.INFO.L2_STATUS",
        "$JS.API.STREAM.INFO.L2_OBSERVED",
        "$JS.API.STREAM.INFO.L2_NODES",
        f"$JS.API.CONSUMER.CREATE.L2_INTENTS.{durable}.l2.intent.{node}",
        f"$JS.API.CONSUMER.INFO.L2_INTENTS.{durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.L2_INTENTS.{durable}",
        f"$JS.API.DIRECT.GET.L2_INTENTS.l2.intent.{node}",
        f"$JS.ACK.L2_INTENTS.{durable}.>",
    ]
    subscribe = [f"_INBOX.{node}.>", f"l2.executor.{node}.>", "$SRV.>"]
    return _user(node, publish, subscribe)


def render(nodes: list[str]) -> str:
    """The whole ``accounts.conf`` for these nodes."""
    errors = []
    for n in nodes:
        error = node_name_error(n)
        if error is not None:
            errors.append(error)
    dupes = sorted({n for n in nodes if nodes.count(n) > 1})
    if dupes:
        errors.append(f"node names given twice: {', '.join(dupes)}")
    if not nodes:
        errors.append("give at least one node name")
    if errors:
        raise ValueError("; ".join(errors))

    # Reading streams: info, lists, one message by sequence or last per subject.
    read_streams = [
        "$JS.API.INFO",
        "$JS.API.STREAM.NAMES",
        "$JS.API.STREAM.LIST",
        "$JS.API.STREAM.INFO.*",
        "$JS.API.STREAM.MSG.GET.*",
        "$JS.API.DIRECT.GET.>",
        "$JS.API.CONSUMER.NAMES.*",
        "$JS.API.CONSUMER.LIST.*",
        "$JS.API.CONSUMER.INFO.*.*",
    ]
    planner = _user(
        "planner",
        [
            "l2.spec.>",
            "l2.intent.>",
            # `l2net plan` asks each node's executor for its live state.
            "l2.executor.*.state",
            *read_streams,
            "$JS.API.STREAM.CREATE.*",
            "$JS.API.STREAM.UPDATE.*",
            # Its own consumers (ephemeral, ordered or pulled once at start).
            "$JS.API.CONSUMER.CREATE.>",
            "$JS.API.CONSUMER.MSG.NEXT.*.*",
            "$JS.FC.>",
            "$SRV.>",
        ],
        ["l2.api.>", "l2.spec.>", "l2.intent.>", "l2.node.>", "_INBOX.>", "$SRV.>"],
    )
    auditor = _user(
        "auditor",
        [
            "l2.drift.>",
            "l2.executor.*.state",
            "l2.executor.*.reconcile",
            *read_streams,
            # Ephemeral ordered consumers only: the create subject without a consumer name.
            "$JS.API.CONSUMER.CREATE.*",
            "$JS.FC.>",
            "$SRV.>",
        ],
        ["l2.>", "_INBOX.>", "$SRV.>"],
    )
    operator = _user(
        "operator",
        [
            "l2.api.>",
            "l2.auditor.>",
            "l2.executor.*.state",
            "l2.executor.*.reconcile",
            *read_streams,
            "$SRV.>",
        ],
        ["l2.>", "_INBOX.>", "$SRV.>"],
    )
    header = (
        "# Generated by deploy/nats/render_accounts.py for nodes: "
        + " ".join(nodes)
        + "\n# Passwords come from L2NET_NATS_PASSWORD_<USER> environment variables.\n"
    )
    return (
        header
        + "accounts {\n"
        + "  L2NET {\n"
        + "    jetstream: enabled\n"
        + "    users: [\n"
        + planner
        + auditor
        + operator
        + "".join(node_user(n) for n in nodes)
        + "    ]\n"
        + "  }\n"
        + "  SYS {\n"
        + "    users: [\n"
        + "      { user: sys, password: $L2NET_NATS_PASSWORD_SYS }\n"
        + "    ]\n"
        + "  }\n"
        + "}\n"
        + "system_account: SYS\n"
    )


def main(argv: list[str]) -> int:
    try:
        sys.stdout.write(render(argv))
    except ValueError as exc:
        print(f"render_accounts: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
