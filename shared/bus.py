"""NATS helpers every service uses: connecting, the JetStream streams, JSON codecs.

Messages are msgspec structs encoded as JSON so that ``l2net watch`` or any NATS client
reads them. The planner calls :func:`ensure_streams` for all of them at start, idempotently
(an existing stream is updated to the configuration here); other services create only what
is missing and their NATS user allows, and otherwise wait (:func:`wait_for_streams`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import BadRequestError, NotFoundError
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from shared import subjects

T = TypeVar("T")

VERSION = "0.1.0"
"""l2net's version (pyproject.toml's), as the services and executors announce it."""

Endpoint = tuple[str, str, Callable[[Request], Awaitable[None]]]
"""A request endpoint of a service: its name, its subject, its handler."""

_encoder = msgspec.json.Encoder()


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def decode(data: bytes, type: type[T]) -> T:
    """``data`` as ``type``, or :class:`msgspec.DecodeError` (``ValidationError`` is one)
    saying why: every way outside bytes can fail to decode raises that one error."""
    try:
        return msgspec.json.decode(data, type=type)
    except RecursionError:
        raise msgspec.DecodeError("JSON nested too deeply") from None
    except UnicodeDecodeError as exc:  # msgspec lets invalid UTF-8 in a string out as this
        raise msgspec.DecodeError(f"invalid UTF-8 in a string: {exc.reason}") from None


def _stream(
    name: str, subject: str, description: str, *, per_subject: int, **extra: Any
) -> StreamConfig:
    """A file-backed stream keeping the last ``per_subject`` messages of each subject."""
    return StreamConfig(
        name=name,
        subjects=[subject],
        description=description,
        max_msgs_per_subject=per_subject,
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        **extra,
    )


STREAMS: dict[str, StreamConfig] = {
    cfg.name: cfg
    for cfg in (
        _stream(
            subjects.STREAM_SPECS,
            subjects.ALL_SPECS,
            "Accepted l2net specs, a revision per change (the source of truth)",
            per_subject=100,
            allow_atomic=True,  # a submission is stored whole or not at all
        ),
        _stream(
            subjects.STREAM_INTENTS,
            subjects.ALL_INTENTS,
            "Compiled per-node desired L2 state, a generation per message",
            per_subject=100,
            # Direct gets name the subject in the API subject ($JS.API.DIRECT.GET.L2_INTENTS.
            # l2.intent.<node>), so NATS permissions can let a node read only its own intent.
            allow_direct=True,
        ),
        _stream(subjects.STREAM_STATUS, subjects.ALL_STATUS, "Executor reports", per_subject=1000),
        _stream(
            subjects.STREAM_OBSERVED,
            subjects.ALL_OBSERVED,
            "Actual L2 state of each node, after each change the kernel reports",
            per_subject=1000,
        ),
        _stream(
            subjects.STREAM_NODES,
            subjects.ALL_NODES,
            "Node inventory and heartbeats",
            per_subject=10,
        ),
        _stream(
            subjects.STREAM_DRIFT, subjects.ALL_DRIFT, "Auditor drift findings", per_subject=1000
        ),
    )
    if cfg.name is not None
}


async def connect(
    servers: list[str],
    *,
    name: str,
    timeout: float = 5.0,
    attempts: int = 3,
    inbox_prefix: str | None = None,
    user_credentials: str | None = None,
) -> Client:
    """Connect to NATS, failing with a clear error when unreachable.

    ``attempts`` bounds the tries per server (each ``reconnect_time_wait`` apart), for the
    first connection and for reconnections alike; services pass a large number, so that they
    ride out a NATS restart, and ``-1`` to wait for ever. ``inbox_prefix`` (e.g.
    ``_INBOX.node-1``) lets a least-privilege user receive replies only under its own prefix;
    ``user_credentials`` is a NATS ``.creds`` file. User, password and TLS may also be given in
    the URL (``tls://user:pass@host:4222``).
    """
    options: dict[str, Any] = {}
    if inbox_prefix:
        options["inbox_prefix"] = inbox_prefix
    if user_credentials:
        options["user_credentials"] = user_credentials
    try:
        return await nats.connect(
            servers=servers,
            name=name,
            connect_timeout=timeout,
            allow_reconnect=True,
            max_reconnect_attempts=attempts,
            reconnect_time_wait=0.5,
            **options,
        )
    except Exception as exc:  # nats raises several unrelated types for "not reachable"
        where = ", ".join(redact(s) for s in servers)
        raise BusError(f"cannot reach NATS at {where}: {exc}") from exc


async def settle(nc: Client) -> None:
    """Return once the server has processed every command this client has sent so far.

    Use it before another connection relies on a subscription made here ("ready", "now
    publish"). A single ``flush()`` is not enough with nats-py (2.16 and before): it writes
    its PING straight to the socket, ahead of a SUB still queued for the client's flusher
    task, so the PONG can come back before the server knows the subscription; checked here,
    about one time in ten. The first round trip wakes the flusher, which writes the queue
    before the PONG is read; the second PING then follows everything queued before it.
    """
    await nc.flush()
    await nc.flush()


async def serve(
    nc: Client,
    *,
    name: str,
    description: str,
    queue_group: str,
    endpoints: Iterable[Endpoint],
    metadata: dict[str, str] | None = None,
) -> Service:
    """A NATS micro service (``nats micro ls`` lists it) answering on ``endpoints`` once
    this returns: the server has their subscriptions (:func:`settle`)."""
    service = await add_service(
        nc,
        name=name,
        version=VERSION,
        description=description,
        queue_group=queue_group,
        metadata=metadata,
    )
    for verb, subject, handler in endpoints:
        await service.add_endpoint(name=verb, subject=subject, handler=handler)
    await settle(nc)
    return service


async def ensure_streams(js: JetStreamContext, names: Iterable[str]) -> None:
    """Create each stream, or bring an existing one to our configuration."""
    for name in names:
        cfg = STREAMS[name]
        try:
            await js.stream_info(name)
        except NotFoundError:
            try:
                await js.add_stream(cfg)
            except BadRequestError:
                # Created concurrently by another service: fall through to update.
                await js.update_stream(cfg)
        else:
            await js.update_stream(cfg)


def redact(url: str) -> str:
    """``url`` fit for a log: a password (``tls://user:secret@host``) or a token
    (``nats://secret@host``) in it becomes ``***``; the user name stays."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{sep}{user}:***@{host}" if colon else f"{scheme}{sep}***@{host}"


class BusError(RuntimeError):
    """NATS is unreachable or answered something l2net cannot use."""


async def wait_for_streams(
    js: JetStreamContext,
    names: Iterable[str],
    *,
    on_missing: Callable[[list[str]], None],
    poll_s: float = 1.0,
    attempts: int = 3,
) -> dict[str, StreamInfo]:
    """Each stream's info, waiting (polling ``stream_info`` only) until all exist.

    For a user that may not create streams: ``on_missing`` is called with the missing names
    when they are first seen missing (and when that list changes). ``attempts`` bounds the
    tries of a ``stream_info`` that fails otherwise than "not found" (e.g. no answer because
    the user may not ask), then BusError names the stream.
    """
    wanted = list(names)
    found: dict[str, StreamInfo] = {}
    reported: list[str] = []
    failures = 0
    while True:
        missing = []
        for name in wanted:
            if name in found:
                continue
            try:
                found[name] = await js.stream_info(name)
                failures = 0
            except NotFoundError:
                missing.append(name)
                failures = 0
            except Exception as exc:
                failures += 1
                if failures >= attempts:
                    raise BusError(
                        f"cannot read stream {name} ({type(exc).__name__}: {exc}); "
                        "does this NATS user have permission to ask for it?"
                    ) from exc
                missing.append(name)
        if not missing:
            return found
        if missing != reported:
            on_missing(missing)
            reported = missing
        await asyncio.sleep(poll_s)


async def last_per_subject(
    js: JetStreamContext, stream: str, filter_subject: str, *, timeout: float = 2.0
) -> list[Msg]:
    """The last message of every subject matching ``filter_subject``, in stream order."""
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return []
    sub = await js.pull_subscribe(
        filter_subject,
        stream=stream,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,
        ),
    )
    out: list[Msg] = []
    try:
        while True:
            try:
                batch = await sub.fetch(256, timeout=timeout)
            except TimeoutError:
                break
            out.extend(batch)
            if not batch or batch[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out


async def publish_atomic(
    nc: Client,
    messages: list[tuple[str, bytes, dict[str, str]]],
    *,
    batch_id: str,
    timeout: float = 5.0,
) -> int:
    """Store ``messages`` in one stream all together or not at all (JetStream atomic batch).

    Each message may carry ``Nats-Expected-Last-Subject-Sequence``; one failed expectation
    rejects the whole batch. Returns the stream sequence of the last message.
    """
    if not messages:
        raise ValueError("empty batch")
    for i, (subject, data, headers) in enumerate(messages, start=1):
        hdrs = {**headers, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i)}
        if i < len(messages):
            await nc.publish(subject, data, headers=hdrs)
            continue
        hdrs["Nats-Batch-Commit"] = "1"
        reply = await nc.request(subject, data, headers=hdrs, timeout=timeout)
        ack = msgspec.json.decode(reply.data)
        if "error" in ack:
            raise BusError(f"JetStream refused the batch: {ack['error'].get('description')}")
        seq: int = ack["seq"]
        return seq
    raise AssertionError("unreachable")
