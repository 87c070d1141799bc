"""NATS helpers every service uses: connecting, the JetStream streams, JSON codecs.

Services connect and reconnect for ever, with backoff, and say so in their logs once per
outage (:func:`connect` with ``attempts=-1``); one-shot commands fail fast and clearly. Every
micro service started with :func:`serve` answers its :class:`Health`.

Messages are msgspec structs encoded as JSON so that ``l2net watch`` or any NATS client
reads them. The planner calls :func:`ensure_streams` for all of them at start, idempotently
(an existing stream is updated to the configuration here); other services create only what
is missing and their NATS user allows, and otherwise wait (:func:`wait_for_streams`).

Each stream is kept by as many servers as its *replicas* say: 1 on a single server (the
embedded one), 3 on a production cluster (:func:`stream_config`; the planner's
``--stream-replicas``, or ``$L2NET_STREAM_REPLICAS`` for every service).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import msgspec
from nats import errors as nats_errors
from nats.aio.client import Client, Server
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
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from shared.domain.errors import ErrorKind, Unavailable
from shared.domain.model import EpochSeconds
from shared.wire import subjects
from shared.wire.codec import decode as decode  # bus.decode, bus.encode: the codec
from shared.wire.codec import encode as encode

T = TypeVar("T")

log = logging.getLogger("l2net.bus")

VERSION = "0.1.0"
"""l2net's version (pyproject.toml's), as the services and executors announce it."""

Endpoint = tuple[str, str, Callable[[Request], Awaitable[None]]]
"""A request endpoint of a service: its name, its subject, its handler."""


def _stream(
    name: str, subject: str, description: str, *, per_subject: int, **extra: Any
) -> StreamConfig:
    """A file-backed stream keeping the last ``per_subject`` messages of each subject.

    Every stream allows direct gets, so that any client reads a subject's last message
    (a node's last status, say) with one request, ``$JS.API.DIRECT.GET.<stream>`` with
    ``{"last_by_subj": "<subject>"}``, from any replica (docs/events.md). Direct gets name
    the subject in the API subject (``$JS.API.DIRECT.GET.L2_INTENTS.l2.intent.<node>``), so
    NATS permissions can let a node read only its own intent."""
    return StreamConfig(
        name=name,
        subjects=[subject],
        description=description,
        max_msgs_per_subject=per_subject,
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        allow_direct=True,
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


class Health(msgspec.Struct, kw_only=True, rename="camel"):
    """A running service's connection to NATS: the answer of its ``health`` endpoint
    (``l2.api.health``, ``l2.auditor.health``, ``l2.executor.<node>.health``) and the ``data``
    of each endpoint in its ``$SRV.STATS`` reply.

    A service that answers is connected; ``connectedSince`` says since when (epoch seconds),
    ``outages`` how often it lost NATS since it started and ``lastOutageSeconds`` how long the
    last loss lasted (the time from losing the connection to having it back).
    """

    service: str
    node: str | None = None
    version: str = VERSION
    connected: bool
    server: str = ""
    connected_since: EpochSeconds | None = None
    started_at: EpochSeconds
    outages: int = 0
    last_outage_seconds: float | None = None


FIRST_RETRY_S = 2.0
"""Wait between two tries of a service's first connection (``attempts=-1``)."""

BACKOFF_S = (0.25, 5.0)
"""Reconnection backoff after an outage: the first wait and the cap, in seconds; each wait
doubles, then a random 50-100 % of it is taken (jitter, so that a fleet of executors does not
reconnect in step after a NATS restart)."""


def reconnect_wait(tries: int, *, backoff: tuple[float, float] = BACKOFF_S) -> float:
    """Seconds to wait before reconnection try number ``tries`` (0 first) of an outage:
    ``first * 2**tries`` capped at ``cap``, of which a random 50-100 % (jitter)."""
    first, cap = backoff
    ceiling: float = min(cap, first * 2.0 ** min(tries, 30))
    return ceiling * random.uniform(0.5, 1.0)


class _Link:
    """What l2net knows of one connection: its callbacks for nats-py (logs, backoff) and the
    state :func:`health` reports."""

    def __init__(
        self, name: str, where: str, *, forever: bool, backoff: tuple[float, float]
    ) -> None:
        self.name = name
        self.where = where
        self.forever = forever
        self.backoff = backoff
        self.nc: Client | None = None
        self.started_at = time.time()
        self.connected_since: float | None = None
        self.lost_at: float | None = None  # monotonic, while an outage lasts
        self.outages = 0
        self.last_outage_s: float | None = None
        self.first_tries = 0
        self.reconnect_tries = 0
        self.last_error: BaseException | None = None

    # nats-py callbacks ----------------------------------------------------------------

    async def on_error(self, exc: Exception) -> None:
        self.last_error = exc
        if self.connected_since is None:  # the first connection
            self.first_tries += 1
            if self.forever:
                log.warning(
                    "%s: cannot reach NATS at %s (try %d: %s); trying again every %g s",
                    self.name,
                    self.where,
                    self.first_tries,
                    _describe(exc),
                    FIRST_RETRY_S,
                )
            else:
                log.debug("%s: cannot reach NATS at %s: %s", self.name, self.where, exc)
        elif self.lost_at is not None or isinstance(exc, _CONNECTION_LOST):
            # A failed reconnection try, or the break itself: on_disconnected logs the outage
            # once, on_reconnected its end.
            log.debug("%s: NATS connection: %s", self.name, _describe(exc))
        else:
            log.warning("%s: NATS: %s", self.name, _describe(exc))

    async def on_disconnected(self) -> None:
        if self.nc is None or self.nc.is_closed or self.lost_at is not None:
            return  # closing on purpose, or the outage is already known
        self.lost_at = time.monotonic()
        self.outages += 1
        self.reconnect_tries = 0
        log.warning(
            "%s: lost the connection to NATS at %s; reconnecting %s with backoff (%g s up to %g s)",
            self.name,
            self.where,
            "for ever" if self.forever else "a few times",
            *self.backoff,
        )

    async def on_reconnected(self) -> None:
        lasted = time.monotonic() - self.lost_at if self.lost_at is not None else 0.0
        self.lost_at = None
        self.last_outage_s = lasted
        self.connected_since = time.time()
        log.warning(
            "%s: reconnected to NATS at %s after an outage of %.1f s (%d tries)",
            self.name,
            self.server(),
            lasted,
            self.reconnect_tries,
        )

    async def on_closed(self) -> None:
        if self.lost_at is not None:
            log.error(
                "%s: gave up reconnecting to NATS at %s: %s",
                self.name,
                self.where,
                _describe(self.last_error) if self.last_error else "closed",
            )

    def next_server(self, servers: list[Server], info: dict[str, Any]) -> tuple[Server, float]:
        """Which server to try next and after how long: round robin, capped exponential
        backoff with jitter (nats-py's ``reconnect_to_server_handler``)."""
        tries = self.reconnect_tries
        self.reconnect_tries += 1
        return servers[tries % len(servers)], reconnect_wait(tries, backoff=self.backoff)

    # --------------------------------------------------------------------------------

    def server(self) -> str:
        url = self.nc.connected_url if self.nc is not None else None
        return redact(url.geturl()) if url is not None else ""


_CONNECTION_LOST = (
    nats_errors.UnexpectedEOF,
    nats_errors.StaleConnectionError,
    nats_errors.ConnectionClosedError,
    ConnectionError,
)

_links: weakref.WeakKeyDictionary[Client, _Link] = weakref.WeakKeyDictionary()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def connect(
    servers: list[str],
    *,
    name: str,
    timeout: float = 5.0,
    attempts: int = 3,
    inbox_prefix: str | None = None,
    user_credentials: str | None = None,
    backoff: tuple[float, float] = BACKOFF_S,
) -> Client:
    """Connect to NATS.

    Services pass ``attempts=-1``: the first connection is tried for ever, every
    :data:`FIRST_RETRY_S` seconds, with a log line per try naming the server and the error;
    after an outage the connection is re-made for ever, with capped exponential backoff and
    jitter (``backoff``: first wait and cap), and the outage is logged once when it begins and
    once when it ends, with its duration. Subscriptions are re-made by nats-py on the new
    connection; what was published during the outage is buffered (up to nats-py's 2 MiB) and
    sent then. One-shot commands keep the default: ``attempts`` tries per server, each 0.5 s
    apart, then :class:`BusError` naming the server and the last error (and as many tries to
    reconnect). :func:`health` tells how a connection made here fares.

    ``inbox_prefix`` (e.g. ``_INBOX.node-1``) lets a least-privilege user receive replies only
    under its own prefix; ``user_credentials`` is a NATS ``.creds`` file. User, password and
    TLS may also be given in the URL (``tls://user:pass@host:4222``).
    """
    forever = attempts < 0
    where = ", ".join(redact(s) for s in servers)
    link = _Link(name, where, forever=forever, backoff=backoff)
    # nats-py annotates these two as int but takes seconds as floats.
    options: dict[str, Any] = {
        "connect_timeout": timeout,
        # nats-py waits this long between two tries of one server only before the first
        # connection; reconnections wait what next_server says.
        "reconnect_time_wait": FIRST_RETRY_S if forever else 0.5,
    }
    if inbox_prefix:
        options["inbox_prefix"] = inbox_prefix
    if user_credentials:
        options["user_credentials"] = user_credentials
    nc = Client()
    link.nc = nc
    try:
        await nc.connect(
            servers=servers,
            name=name,
            allow_reconnect=True,
            max_reconnect_attempts=attempts,
            reconnect_to_server_handler=link.next_server,
            error_cb=link.on_error,
            disconnected_cb=link.on_disconnected,
            reconnected_cb=link.on_reconnected,
            closed_cb=link.on_closed,
            **options,
        )
    except Exception as exc:  # nats raises several unrelated types for "not reachable"
        why = link.last_error if link.last_error is not None else exc
        raise BusError(f"cannot reach NATS at {where}: {_describe(why)}") from exc
    link.connected_since = time.time()
    if link.first_tries:
        log.warning(
            "%s: connected to NATS at %s after %d failed tries",
            name,
            link.server(),
            link.first_tries,
        )
    _links[nc] = link
    return nc


def health(nc: Client, *, service: str, node: str | None = None) -> Health:
    """How the connection ``nc`` (made by :func:`connect`) fares, now."""
    link = _links.get(nc)
    connected = nc.is_connected
    if link is None:
        return Health(service=service, node=node, connected=connected, started_at=0.0)
    return Health(
        service=service,
        node=node,
        connected=connected,
        server=link.server(),
        connected_since=link.connected_since if connected else None,
        started_at=link.started_at,
        outages=link.outages,
        last_outage_seconds=link.last_outage_s,
    )


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
    this returns: the server has their subscriptions (:func:`settle`).

    Every service also answers ``health`` (:func:`shared.wire.subjects.health`: the service's
    :class:`Health`, from one instance of the queue group) and puts the same in the ``data``
    of its ``$SRV.STATS`` reply (from every instance). ``metadata["node"]`` names the node of
    a per-node service (the executor).
    """
    node = (metadata or {}).get("node")

    def report() -> Health:
        return health(nc, service=name, node=node)

    async def on_health(req: Request) -> None:
        await req.respond(encode(report()))

    service = await add_service(
        nc,
        name=name,
        version=VERSION,
        description=description,
        queue_group=queue_group,
        metadata=metadata,
        stats_handler=lambda _endpoint: msgspec.to_builtins(report()),
    )
    for verb, subject, handler in [
        *endpoints,
        ("health", subjects.health(name, node=node), on_health),
    ]:
        await service.add_endpoint(name=verb, subject=subject, handler=handler)
    await settle(nc)
    return service


MAX_REPLICAS = 5
"""JetStream keeps a stream on at most five servers."""


def stream_config(name: str, *, replicas: int | None = None) -> StreamConfig:
    """l2net's configuration of stream ``name``, kept by ``replicas`` servers (None: one).

    More replicas than the cluster has servers is refused by JetStream when the stream is
    created or updated (``insufficient resources``)."""
    cfg = STREAMS[name]
    if replicas is None:
        return cfg
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ValueError(f"stream replicas must be 1 to {MAX_REPLICAS}, not {replicas}")
    return dataclasses.replace(cfg, num_replicas=replicas)


async def ensure_streams(
    js: JetStreamContext, names: Iterable[str], *, replicas: int | None = None
) -> None:
    """Create each stream, or bring an existing one to our configuration.

    ``replicas``: how many servers keep each stream; an existing stream is updated to it
    (JetStream adds or removes copies, the stream stays available). None: a new stream gets
    one, an existing one keeps the replicas it has (so that a planner started without the
    option never takes copies away from a cluster's streams)."""
    for name in names:
        cfg = stream_config(name, replicas=replicas)
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            try:
                await js.add_stream(cfg)
                continue
            except BadRequestError as exc:
                try:  # created concurrently by another service: update it
                    info = await js.stream_info(name)
                except NotFoundError:
                    raise exc from None  # refused for another reason: say which
        if replicas is None:
            cfg = dataclasses.replace(cfg, num_replicas=info.config.num_replicas or 1)
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


class BusError(Unavailable, RuntimeError):
    """NATS is unreachable or answered something l2net cannot use."""


_OUTAGE_ERRORS = (
    nats_errors.TimeoutError,  # also JetStream's publish ack and fetch timeouts
    nats_errors.NoRespondersError,  # JetStream not back yet after a server restart
    nats_errors.ConnectionClosedError,
    nats_errors.ConnectionReconnectingError,
    nats_errors.OutboundBufferLimitError,  # the reconnect buffer is full
    nats_errors.StaleConnectionError,
    ServiceUnavailableError,
    ConnectionError,
    asyncio.TimeoutError,
)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` is what a NATS outage (or a server still starting) raises: the same
    call succeeds once NATS is back, so retry it, with backoff, rather than give up."""
    return isinstance(exc, _OUTAGE_ERRORS)


class ConflictError(BusError):
    """A write expected a subject's last sequence and another writer had moved it on
    (``Nats-Expected-Last-Subject-Sequence`` failed): catch up and try again."""

    kind = ErrorKind.BUSY


WRONG_LAST_SEQUENCE = 10071
"""JetStream's error code for a failed ``Nats-Expected-Last-Subject-Sequence``."""


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
    the user may not ask), then BusError names the stream; a failure while the connection is
    down (a NATS outage) does not count: it waits for NATS.
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
            except Exception as exc:  # counted, then raised as BusError naming the stream
                if is_outage(exc) and not js._nc.is_connected:  # nats-py keeps its client there
                    # NATS went away meanwhile: not this user's permissions; wait for it.
                    missing.append(name)
                    continue
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
    return await read_stream(
        js, stream, filter_subject, deliver=DeliverPolicy.LAST_PER_SUBJECT, timeout=timeout
    )


async def read_stream(
    js: JetStreamContext,
    stream: str,
    filter_subject: str,
    *,
    deliver: DeliverPolicy = DeliverPolicy.ALL,
    timeout: float = 2.0,
) -> list[Msg]:
    """Every message of ``stream`` on ``filter_subject`` (``deliver``: all, or the last of
    each subject), oldest first, through a short-lived consumer that acknowledges nothing."""
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return []
    sub = await js.pull_subscribe(
        filter_subject,
        stream=stream,
        config=ConsumerConfig(
            deliver_policy=deliver, ack_policy=AckPolicy.NONE, inactive_threshold=30.0
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
            error = ack["error"]
            what = f"JetStream refused the batch: {error.get('description')}"
            if error.get("err_code") == WRONG_LAST_SEQUENCE:
                raise ConflictError(what)
            raise BusError(what)
        seq: int = ack["seq"]
        return seq
    raise AssertionError("unreachable")
