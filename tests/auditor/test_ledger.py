"""What the auditor publishes, as a pure ledger: each episode opened once and resolved once,
one report whichever of two auditors publishes it, an episode over before anyone looked
published opened then resolved, a live check's episode and the stream's taken as one, and the
episodes published open that the streams do not show kept until an event ends them.

The L2_DRIFT here is a list that drops a second copy of a ``Nats-Msg-Id`` (as JetStream does
in its duplicate window); :func:`flush` is the service's flush without NATS."""

from __future__ import annotations

from services.auditor.ledger import Ledger, report_id
from services.auditor.view import GENERATION, HEARTBEAT, FleetView, node_object
from shared.domain.model import DriftItem, DriftReport, NodeIntent
from tests.auditor.conftest import applied, converged, heartbeat
from tests.executor.labkit import seed_intent

NODE = "node-1"
T0 = 1_700_000_000.0
Episode = tuple[str, str, str, float, float | None]


def mtu_1400(links: dict, vlans: dict) -> None:  # type: ignore[type-arg]
    links["oob-br"].mtu = 1400


def mtu_and_eth2(links: dict, vlans: dict) -> None:  # type: ignore[type-arg]
    mtu_1400(links, vlans)
    links["eth2"].master = None


class DriftStream:
    """L2_DRIFT as the ledger sees it: reports in order; a second copy of an id is dropped."""

    def __init__(self) -> None:
        self.reports: list[DriftReport] = []
        self.dropped = 0
        self._ids: set[str] = set()

    def publish(self, node: str, item: DriftItem) -> None:
        msg_id = report_id(node, [item])
        if msg_id in self._ids:
            self.dropped += 1
            return
        self._ids.add(msg_id)
        self.reports.append(DriftReport(node=node, generation=1, items=[item], at=T0 + 1000))

    def episodes(self) -> list[Episode]:
        return [
            (r.node, i.object, i.path, i.first_seen, i.resolved_at)
            for r in self.reports
            for i in r.items
        ]


def flush(ledger: Ledger, view: FleetView, stream: DriftStream) -> int:
    """Publish what the ledger says is due for every node (the service's flush); how many
    reports were sent (dropped copies included)."""
    sent = 0
    for name in sorted(view.nodes):
        v = view.node(name)
        for item in ledger.changes(v):
            for report in ledger.reports(name, item):
                stream.publish(name, report)
                sent += 1
            ledger.mark(name, item)
    return sent


def read(ledger: Ledger, view: FleetView, reports: list[DriftReport]) -> None:
    """The reports read back from L2_DRIFT (the auditor's replay and follow)."""
    for report in reports:
        ledger.record(report, view)


def node_view(intent: NodeIntent | None = None) -> FleetView:
    """A registered node that applied ``intent`` (the seed's generation 1) at T0."""
    intent = intent or seed_intent(NODE, 1)
    view = FleetView()
    view.on_heartbeat(heartbeat(NODE, T0), T0)
    view.on_intent(intent, T0)
    view.on_status(applied(NODE, 1, T0), T0)
    view.on_observed(converged(intent, at=T0), T0)
    return view


def observe(view: FleetView, at: float, *, mtu_drift: bool) -> None:
    intent = seed_intent(NODE, 1)
    view.on_observed(converged(intent, at=at, change=mtu_1400 if mtu_drift else None), at)


def found(obj: str, path: str, first: float, resolved: float | None = None) -> DriftItem:
    """An episode as a report carries it."""
    return DriftItem(
        object=obj, path=path, desired="?", actual="?", first_seen=first, resolved_at=resolved
    )


def mtu(first: float, resolved: float | None) -> Episode:
    return (NODE, "oob-br", "mtu", first, resolved)


def test_an_episode_is_published_opened_once_and_resolved_once() -> None:
    view, ledger, stream = node_view(), Ledger(), DriftStream()
    observe(view, T0 + 10, mtu_drift=True)
    assert flush(ledger, view, stream) == 1
    observe(view, T0 + 11, mtu_drift=True)  # the same finding, still on
    assert flush(ledger, view, stream) == 0
    observe(view, T0 + 12, mtu_drift=False)
    assert flush(ledger, view, stream) == 1
    assert flush(ledger, view, stream) == 0
    assert stream.episodes() == [mtu(T0 + 10, None), mtu(T0 + 10, T0 + 12)]
    assert stream.dropped == 0


def test_two_auditors_over_the_same_findings_publish_each_change_once() -> None:
    """Both publish before reading the other (JetStream drops the same id), or one reads the
    other's report first (and then publishes nothing)."""
    a, b = node_view(), node_view()
    ledger_a, ledger_b, stream = Ledger(), Ledger(), DriftStream()
    for view in (a, b):
        observe(view, T0 + 10, mtu_drift=True)
    assert flush(ledger_a, a, stream) == 1
    assert flush(ledger_b, b, stream) == 1  # before reading A's report: the same id
    assert stream.dropped == 1
    read(ledger_a, a, stream.reports)
    read(ledger_b, b, stream.reports)
    for view in (a, b):
        observe(view, T0 + 12, mtu_drift=False)
    assert flush(ledger_b, b, stream) == 1
    read(ledger_a, a, stream.reports[-1:])  # after the duplicate window: read, not sent
    assert flush(ledger_a, a, stream) == 0
    assert stream.episodes() == [mtu(T0 + 10, None), mtu(T0 + 10, T0 + 12)]


def test_an_episode_over_before_anyone_looked_is_published_opened_then_resolved() -> None:
    """An end alone, read by an auditor still behind, would make it skip the opening."""
    caught_up, ledger, stream = node_view(), Ledger(), DriftStream()
    observe(caught_up, T0 + 10, mtu_drift=True)
    observe(caught_up, T0 + 12, mtu_drift=False)
    assert flush(ledger, caught_up, stream) == 2
    assert stream.episodes() == [mtu(T0 + 10, None), mtu(T0 + 10, T0 + 12)]
    assert ledger.episodes(NODE, ("oob-br", "mtu"))[T0 + 10].resolved_at == T0 + 12

    behind, ledger_behind = node_view(), Ledger()
    read(ledger_behind, behind, stream.reports)  # L2_DRIFT read before the episode's events
    observe(behind, T0 + 10, mtu_drift=True)
    assert flush(ledger_behind, behind, stream) == 0
    observe(behind, T0 + 12, mtu_drift=False)
    assert flush(ledger_behind, behind, stream) == 0
    assert len(stream.reports) == 2


def test_an_episode_a_live_check_saw_first_is_the_same_episode_in_the_streams() -> None:
    """Another auditor's live check published it at T0+10; the observed state that carries it
    into the stream says T0+10.5: one episode, with the published start."""
    view, ledger, stream = node_view(), Ledger(), DriftStream()
    stream.publish(NODE, found("oob-br", "mtu", T0 + 10))
    read(ledger, view, stream.reports)
    observe(view, T0 + 10.5, mtu_drift=True)
    assert flush(ledger, view, stream) == 0
    assert [i.first_seen for i in view.node(NODE).open_items()] == [T0 + 10]
    observe(view, T0 + 12, mtu_drift=False)
    assert flush(ledger, view, stream) == 1
    assert stream.episodes() == [mtu(T0 + 10, None), mtu(T0 + 10, T0 + 12)]


def test_an_episode_read_open_but_over_does_not_absorb_the_next_one() -> None:
    """L2_DRIFT can lag the other streams: its opening is read, not its end, while the
    observed states show it over and the next episode of the same field open."""
    view, ledger, stream = node_view(), Ledger(), DriftStream()
    stream.publish(NODE, found("oob-br", "mtu", T0 + 10))
    read(ledger, view, stream.reports)
    observe(view, T0 + 10, mtu_drift=True)
    observe(view, T0 + 12, mtu_drift=False)
    observe(view, T0 + 20, mtu_drift=True)
    ledger.adopt(view)  # the replay is over
    assert flush(ledger, view, stream) == 2
    assert stream.episodes() == [
        mtu(T0 + 10, None),
        mtu(T0 + 10, T0 + 12),
        mtu(T0 + 20, None),
    ]


def test_an_episode_published_open_that_the_streams_do_not_show_stays_open_until_an_event() -> None:
    """A live check found it (T0+10) and no observed state in the stream carries it: kept
    open as the same episode, ended by the next observed state without it."""
    view, ledger, stream = node_view(), Ledger(), DriftStream()
    stream.publish(NODE, found("oob-br", "mtu", T0 + 10))
    read(ledger, view, stream.reports)
    ledger.adopt(view)
    assert [i.first_seen for i in view.node(NODE).open_items()] == [T0 + 10]
    assert flush(ledger, view, stream) == 0
    observe(view, T0 + 15, mtu_drift=False)
    assert flush(ledger, view, stream) == 1
    assert stream.episodes() == [mtu(T0 + 10, None), mtu(T0 + 10, T0 + 15)]


def test_node_findings_published_open_that_ended_unwatched_are_closed_at_restart() -> None:
    """No auditor ran while the heartbeat came back and the generation was applied: the
    episodes end when the view shows it (the heartbeat, the Applied status)."""
    intent = seed_intent(NODE, 1)
    view = FleetView()
    view.on_intent(intent, T0)
    view.on_status(applied(NODE, 1, T0 + 80), T0 + 80)
    view.on_heartbeat(heartbeat(NODE, T0 + 100), T0 + 100)
    ledger, stream = Ledger(), DriftStream()
    node = node_object(NODE)
    stream.publish(NODE, found(node, HEARTBEAT, T0 + 30))
    stream.publish(NODE, found(node, GENERATION, T0 + 60))
    read(ledger, view, stream.reports)
    ledger.adopt(view)
    assert view.node(NODE).open_items() == []
    assert flush(ledger, view, stream) == 2
    assert sorted(stream.episodes()[2:]) == [
        (NODE, node, GENERATION, T0 + 60, T0 + 80),
        (NODE, node, HEARTBEAT, T0 + 30, T0 + 100),
    ]


def test_an_episode_published_open_for_a_stray_is_closed_at_its_start() -> None:
    """A node that never registered is not judged: an older auditor's open episode for it is
    closed at its own start, and nothing else is published for it."""
    intent = seed_intent("node-9", 1)
    view, ledger, stream = FleetView(), Ledger(), DriftStream()
    view.on_intent(intent, T0)
    view.on_observed(converged(intent, at=T0 + 10, change=mtu_1400), T0 + 10)
    view.on_observed(converged(intent, at=T0 + 20, change=mtu_and_eth2), T0 + 20)
    assert view.strays() == ["node-9"]
    assert len(view.node("node-9").open_items()) == 2
    stream.publish("node-9", found("oob-br", "mtu", T0 + 10))
    read(ledger, view, stream.reports)
    assert flush(ledger, view, stream) == 1
    assert stream.episodes()[1:] == [("node-9", "oob-br", "mtu", T0 + 10, T0 + 10)]
    assert flush(ledger, view, stream) == 0


def test_a_heal_is_counted_once_whoever_records_it() -> None:
    view, ledger = node_view(), Ledger()
    v = view.node(NODE)
    ledger.heal(v, "heal: asked node-1 to re-converge (oob-br.mtu): Applied generation 1", at=T0)
    own = DriftReport(node=NODE, generation=1, at=T0, note=v.heals[0][1])
    other = DriftReport(
        node=NODE, generation=1, at=T0 + 5, note="heal: asked node-1 to re-converge (x)"
    )
    read(ledger, view, [own, other, other])
    assert [at for at, _ in v.heals] == [T0, T0 + 5]
    assert ledger.heal_notes == {(NODE, T0), (NODE, T0 + 5)}


def test_a_report_id_names_the_episode_and_its_state() -> None:
    opened = found("oob-br", "mtu", T0 + 10)
    resolved = found("oob-br", "mtu", T0 + 10, T0 + 12)
    later = found("oob-br", "mtu", T0 + 20)
    ids = {report_id(NODE, [i]) for i in (opened, resolved, later)}
    assert len(ids) == 3
    assert report_id(NODE, [opened]) == report_id(NODE, [found("oob-br", "mtu", T0 + 10)])
    assert report_id(NODE, [opened]) != report_id("node-2", [opened])
