"""The planner service: submissions in, stored specs and per-node intents out.

Model of operation, in order:

1. At start it creates (or updates to l2net's configuration) all six streams (executors'
   least-privilege NATS users may not), and rebuilds its whole state from ``L2_SPECS`` and
   ``L2_INTENTS``: the last record of every spec subject, and the last intent (hence
   generation) of every node. It keeps nothing that JetStream does not also hold.
2. It follows ``L2_NODES`` (last message per node, then live): a node that joins, or whose
   labels or NICs change, gets its intent recompiled.
3. It answers ``l2.api.*`` requests one at a time (one lock): parse → validate the state
   the submission would produce → store all records in one atomic JetStream batch →
   recompile every node → publish an intent, with the next generation, to each node whose
   desired state changed. A rejected submission stores nothing.

It registers as a NATS micro service (``nats micro ls`` shows ``l2net-planner``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.micro.request import Request
from nats.micro.service import Service

from services.planner import compiling, manifests, validation
from services.planner.catalog import Catalog
from shared import api, bus, model, subjects, tracing

log = logging.getLogger("l2net.planner")

B = TypeVar("B")


class Planner:
    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.catalog = Catalog()
        self.spec_seq: dict[tuple[str, str], int] = {}
        self.intents: dict[str, model.NodeIntent] = {}
        self.last_revision = 0
        self._lock = asyncio.Lock()
        self._service: Service | None = None
        self._node_sub: Any = None

    # -- start and rebuild ------------------------------------------------------------

    async def start(self) -> None:
        # All six streams, not only those it writes: under deploy/nats the executors' users
        # may not create streams, so a fleet works once the planner has started.
        await bus.ensure_streams(self.js, list(bus.STREAMS))
        await self.rebuild()
        self._node_sub = await self.js.subscribe(
            subjects.ALL_NODES,
            stream=subjects.STREAM_NODES,
            cb=self._on_node,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        self._service = await bus.serve(
            self.nc,
            name="l2net-planner",
            description="Validates l2net submissions and compiles per-node intents",
            queue_group="l2net-planner",
            endpoints=[
                ("apply", subjects.API_APPLY, self._handle_apply),
                ("delete", subjects.API_DELETE, self._handle_delete),
                ("get", subjects.API_GET, self._handle_get),
                ("nad", subjects.API_NAD, self._handle_nad),
                ("switch", subjects.API_SWITCH, self._handle_switch),
            ],
        )
        log.info(
            "planner ready: %d objects, %d nodes", len(self.catalog.entries), len(self.intents)
        )

    async def stop(self) -> None:
        """Stop answering and following nodes (idempotent)."""
        service, self._service = self._service, None
        node_sub, self._node_sub = self._node_sub, None
        if service is not None:
            await service.stop()
        if node_sub is not None:
            await node_sub.unsubscribe()

    async def rebuild(self) -> None:
        """Rebuild specs and generations from JetStream (after a restart, or at first start)."""
        catalog = Catalog()
        for msg in await bus.last_per_subject(self.js, subjects.STREAM_SPECS, subjects.ALL_SPECS):
            try:
                record = bus.decode(msg.data, api.SpecRecord)
                kind = model.USER_KINDS.get(record.kind)
                if kind is None:
                    raise msgspec.ValidationError(f"unknown kind {record.kind!r}")
            except msgspec.DecodeError as exc:  # a poison record: reported, never fatal
                log.error("ignoring a bad record on %s: %s", msg.subject[:200], exc)
                continue
            seq = msg.metadata.sequence.stream
            key = (record.kind, record.name)
            self.spec_seq[key] = seq
            self.last_revision = max(self.last_revision, seq)
            if record.op != "put" or record.spec is None:
                continue
            try:
                spec = msgspec.convert(record.spec, type=kind)
            except msgspec.ValidationError as exc:
                log.error("ignoring a bad record on %s: %s", msg.subject[:200], exc)
                continue
            catalog = catalog.with_changes(
                put=[spec], revisions={key: seq}, created={key: record.created}
            )
        self.catalog = Catalog(entries=catalog.entries, nodes=self.catalog.nodes)
        for msg in await bus.last_per_subject(
            self.js, subjects.STREAM_INTENTS, subjects.ALL_INTENTS
        ):
            try:
                intent = bus.decode(msg.data, model.NodeIntent)
            except msgspec.DecodeError as exc:  # a poison intent: reported, never fatal
                log.error("ignoring a bad intent on %s: %s", msg.subject[:200], exc)
                continue
            self.intents[intent.node] = intent

    # -- nodes ------------------------------------------------------------------------

    async def _on_node(self, msg: Msg) -> None:
        try:
            node = bus.decode(msg.data, model.Node)
        except msgspec.DecodeError as exc:
            log.warning("ignoring malformed node message on %s: %s", msg.subject, exc)
            return
        async with self._lock:
            old = self.catalog.nodes.get(node.name)
            self.catalog = self.catalog.with_node(node)
            if old is not None and (old.labels, old.nics, old.mgmt_vlan) == (
                node.labels,
                node.nics,
                node.mgmt_vlan,
            ):
                return  # a heartbeat
            log.info("node %s %s", node.name, "changed" if old else "joined")
            await self._publish_intents([node.name])

    # -- requests ---------------------------------------------------------------------

    async def _handle_apply(self, req: Request) -> None:
        with tracing.process_span(subjects.API_APPLY, req.headers):
            reply = await self.apply(req.data)
        await req.respond(bus.encode(reply))

    async def _serve(
        self,
        req: Request,
        subject: str,
        body_type: type[B],
        reply_type: Callable[..., Any],
        answer: Callable[[B], Awaitable[Any]],
    ) -> None:
        """Decode a JSON request body (empty: all defaults), answer it, reply in JSON; a body
        that does not decode gets ``reply_type(ok=False, errors=[...])`` naming what is wrong."""
        with tracing.process_span(subject, req.headers):
            try:
                body = bus.decode(req.data if req.data.strip() else b"{}", body_type)
            except msgspec.DecodeError as exc:
                reply = reply_type(ok=False, errors=[api.Problem(message=f"bad request: {exc}")])
            else:
                reply = await answer(body)
        await req.respond(bus.encode(reply))

    async def _handle_delete(self, req: Request) -> None:
        async def answer(body: api.DeleteRequest) -> api.ApplyReply:
            return await self.delete(body.kind, body.name)

        await self._serve(req, subjects.API_DELETE, api.DeleteRequest, api.ApplyReply, answer)

    async def _handle_get(self, req: Request) -> None:
        async def answer(body: api.GetRequest) -> api.GetReply:
            return self.get(body.kind, body.name)

        await self._serve(req, subjects.API_GET, api.GetRequest, api.GetReply, answer)

    async def _handle_nad(self, req: Request) -> None:
        async def answer(body: api.NadRequest) -> api.NadReply:
            return self.nad(body.network)

        await self._serve(req, subjects.API_NAD, api.NadRequest, api.NadReply, answer)

    async def _handle_switch(self, req: Request) -> None:
        async def answer(body: api.SwitchRequest) -> api.SwitchReply:
            return self.switch_config(body.node)

        await self._serve(req, subjects.API_SWITCH, api.SwitchRequest, api.SwitchReply, answer)

    # -- the operations (also called directly by tests) ------------------------------

    async def apply(self, text: bytes | str) -> api.ApplyReply:
        async with self._lock:
            # One validate span for every check, each object alone then the whole state.
            with tracing.tracer().start_as_current_span("l2net.planner.validate") as span:
                try:
                    docs = manifests.parse(text)
                except manifests.ManifestError as err:
                    span.set_attribute("l2net.rejected", True)
                    return api.ApplyReply(ok=False, errors=err.problems)
                networks = _cluster_networks(docs)
                if networks:
                    tracing.annotate(span, cluster_network=",".join(networks))
                specs = [d.spec for d in docs]
                problems = self._check_documents(docs)
                if not problems:
                    candidate = self.catalog.with_changes(put=specs, now=time.time())
                    problems = self._new_problems(candidate)
                    _locate(problems, docs)
                if problems:
                    span.set_attribute("l2net.rejected", True)
                    return api.ApplyReply(ok=False, errors=problems)
            changes: list[api.Change] = []
            to_store: list[model.Spec] = []
            for spec in specs:
                current = self.catalog.entries.get((spec.kind, spec.name))
                if current is not None and current.spec == spec:
                    changes.append(
                        api.Change(
                            kind=spec.kind,
                            name=spec.name,
                            action="unchanged",
                            revision=current.revision,
                        )
                    )
                    continue
                to_store.append(spec)
                changes.append(
                    api.Change(
                        kind=spec.kind,
                        name=spec.name,
                        action="updated" if current is not None else "created",
                    )
                )
            if to_store:
                seqs, created = await self._store([(s.kind, s.name, s) for s in to_store])
                self.catalog = self.catalog.with_changes(
                    put=to_store, revisions=seqs, created=created
                )
                for change in changes:
                    change.revision = seqs.get((change.kind, change.name), change.revision)
            generations = await self._publish_intents(sorted(self.catalog.nodes))
            return api.ApplyReply(ok=True, changes=changes, generations=generations)

    async def delete(self, kind: str, name: str) -> api.ApplyReply:
        async with self._lock:
            problems = validation.check_delete(self.catalog, kind, name)
            if not problems:
                candidate = self.catalog.with_changes(delete=[(kind, name)])
                problems = self._new_problems(candidate)
            if problems:
                return api.ApplyReply(ok=False, errors=problems)
            seqs, _ = await self._store([(kind, name, None)])
            revision = seqs[(kind, name)]
            self.catalog = self.catalog.with_changes(delete=[(kind, name)])
            generations = await self._publish_intents(sorted(self.catalog.nodes))
            return api.ApplyReply(
                ok=True,
                changes=[api.Change(kind=kind, name=name, action="deleted", revision=revision)],
                generations=generations,
            )

    def get(self, kind: str | None, name: str | None = None) -> api.GetReply:
        if kind is not None and kind not in model.USER_KINDS and kind != model.Node.kind:
            known = ", ".join([*model.USER_KINDS, model.Node.kind])
            return api.GetReply(
                ok=False, errors=[api.Problem(message=f"unknown kind {kind!r} (known: {known})")]
            )
        items: list[api.Item] = []
        if kind in (None, model.ClusterNetwork.kind) and name in (None, model.MGMT):
            items.append(
                api.Item(
                    kind=model.ClusterNetwork.kind,
                    name=model.MGMT,
                    revision=0,
                    spec={"name": model.MGMT, "description": "built-in management network"},
                )
            )
        for (k, n), entry in self.catalog.items():
            if kind in (None, k) and name in (None, n):
                items.append(
                    api.Item(kind=k, name=n, revision=entry.revision, spec=_to_dict(entry.spec))
                )
        if kind in (None, model.Node.kind):
            for n, node in sorted(self.catalog.nodes.items()):
                if name in (None, n):
                    spec = _to_dict(node)
                    intent = self.intents.get(n)
                    spec["generation"] = intent.generation if intent else 0
                    items.append(api.Item(kind=model.Node.kind, name=n, revision=0, spec=spec))
        if name is not None and not items:
            return api.GetReply(
                ok=False,
                errors=[api.Problem(kind=kind or "", name=name, message="not found")],
            )
        return api.GetReply(ok=True, items=items)

    def nad(self, network: str) -> api.NadReply:
        net = self.catalog.get(model.Network, network)
        if net is None:
            return api.NadReply(
                ok=False,
                errors=[api.Problem(kind="Network", name=network, message="not found")],
            )
        return api.NadReply(
            ok=True,
            config=compiling.nad_config(self.catalog, net),
            yaml=compiling.nad_yaml(self.catalog, net),
        )

    def switch_config(self, node: str | None) -> api.SwitchReply:
        if node is not None and node not in self.catalog.nodes:
            return api.SwitchReply(
                ok=False, errors=[api.Problem(kind="Node", name=node, message="not registered")]
            )
        nodes = [node] if node is not None else sorted(self.catalog.nodes)
        ports = [p for n in nodes for p in compiling.switch_config(self.catalog, n)]
        return api.SwitchReply(ok=True, ports=ports)

    # -- internals --------------------------------------------------------------------

    def _check_documents(self, docs: list[manifests.Document]) -> list[api.Problem]:
        problems: list[api.Problem] = []
        seen: dict[tuple[str, str], int] = {}
        for doc in docs:
            key = (doc.spec.kind, doc.spec.name)
            if key in seen:
                problems.append(
                    api.Problem(
                        document=doc.index,
                        line=doc.line,
                        kind=key[0],
                        name=key[1],
                        field="name",
                        message=f"appears twice in this submission (also document {seen[key]})",
                    )
                )
            seen.setdefault(key, doc.index)
            for problem in validation.check_object(doc.spec):
                problem.document, problem.line = doc.index, doc.line
                problems.append(problem)
        return problems

    def _new_problems(self, candidate: Catalog) -> list[api.Problem]:
        """Problems the candidate state has that the current one has not.

        A problem that exists already (a node relabelled under a VM NIC, say) is not the
        fault of an unrelated submission and does not block it.
        """
        before = {str(p) for p in validation.check_catalog(self.catalog)}
        return [p for p in validation.check_catalog(candidate) if str(p) not in before]

    async def _store(
        self, changes: list[tuple[str, str, model.Spec | None]]
    ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], float]]:
        """Store one record per change in a single atomic batch; return sequences and
        creation times per object.

        Each record expects its subject's last sequence to be the one this planner knows,
        so a concurrent writer makes the whole batch fail rather than interleave.
        """
        submission = uuid.uuid4().hex
        now = time.time()
        created: dict[tuple[str, str], float] = {}
        messages: list[tuple[str, bytes, dict[str, str]]] = []
        for kind, name, spec in changes:
            key = (kind, name)
            entry = self.catalog.entries.get(key)
            created[key] = entry.created if entry is not None else now
            record = api.SpecRecord(
                op="put" if spec is not None else "delete",
                kind=kind,
                name=name,
                submission=submission,
                spec=_to_dict(spec) if spec is not None else None,
                at=now,
                created=created[key],
            )
            headers = {"Nats-Expected-Last-Subject-Sequence": str(self.spec_seq.get(key, 0))}
            messages.append((subjects.spec(kind, name), bus.encode(record), headers))
        with tracing.publish_span(subjects.ALL_SPECS, template="l2.spec.{kind}.{name}") as th:
            messages = [(s, d, {**h, **th}) for s, d, h in messages]
            last = await bus.publish_atomic(self.nc, messages, batch_id=submission)
        first = last - len(changes) + 1
        seqs = {(kind, name): first + i for i, (kind, name, _) in enumerate(changes)}
        self.spec_seq.update(seqs)
        self.last_revision = last
        return seqs, created

    async def _publish_intents(self, nodes: list[str]) -> dict[str, int]:
        """Compile each node; publish a new generation where the desired state changed."""
        generations: dict[str, int] = {}
        for node in nodes:
            if node not in self.catalog.nodes:
                continue
            with tracing.tracer().start_as_current_span(
                "l2net.planner.compile", attributes={"l2net.node": node}
            ) as span:
                intent = compiling.compile_node(self.catalog, node)
                names = ",".join(cn.name for cn in intent.cluster_networks)
                if names:
                    tracing.annotate(span, cluster_network=names)
            previous = self.intents.get(node)
            if previous is not None and compiling.same_desired_state(previous, intent):
                generations[node] = previous.generation
                continue
            intent.generation = (previous.generation if previous else 0) + 1
            intent.spec_revision = self.last_revision
            intent.issued_at = time.time()
            subject = subjects.intent(node)
            with tracing.publish_span(
                subject,
                template="l2.intent.{node}",
                attributes={"l2net.node": node, "l2net.generation": intent.generation},
            ) as headers:
                headers["Nats-Msg-Id"] = f"intent:{node}:{intent.generation}"
                await self.js.publish(subject, bus.encode(intent), headers=headers)
            self.intents[node] = intent
            generations[node] = intent.generation
            log.info("node %s: generation %d", node, intent.generation)
        return generations


def _to_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(obj)
    return out


def _cluster_networks(docs: list[manifests.Document]) -> list[str]:
    """The cluster networks a submission names (its ClusterNetworks and clusterNetwork
    fields), sorted: the span attribute ``l2net.cluster_network``, comma-separated."""
    found: set[str] = set()
    for doc in docs:
        if isinstance(doc.spec, model.ClusterNetwork):
            found.add(doc.spec.name)
        network = getattr(doc.spec, "cluster_network", None)
        if isinstance(network, str):
            found.add(network)
    return sorted(found)


def _locate(problems: list[api.Problem], docs: list[manifests.Document]) -> None:
    """Point catalog-wide problems at the document that submitted the object, if any."""
    where = {(d.spec.kind, d.spec.name): d for d in docs}
    for problem in problems:
        doc = where.get((problem.kind, problem.name))
        if doc is not None:
            problem.document, problem.line = doc.index, doc.line
