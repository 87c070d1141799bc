"""The auditor service on a real nats-server: replay, publishing once, restarts, answers.

Events are the messages executors and the planner publish, with times set by the test, so
the episodes every auditor must find are known exactly.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nats.aio.client import Client

from services.auditor import cli as audit_cli
from services.auditor.service import AuditorConfig
from services.auditor.view import Policy, episode_id
from shared.domain.model import DriftReport
from shared.runtime import bus, natsserver
from shared.wire import subjects
from tests import keys
from tests.auditor.conftest import AuditorFactory, Bus, applied, converged
from tests.executor.labkit import seed_intent
from tests.kit import stop_process, until

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0


def mtu_1400(links: dict, vlans: dict) -> None:  # type: ignore[type-arg]
    links["oob-br"].mtu = 1400


def no_vid_200(links: dict, vlans: dict) -> None:  # type: ignore[type-arg]
    vlans["oob-bo"] = [v for v in vlans["oob-bo"] if v.vid != 200]


async def first_half(events: Bus) -> None:
    """node-1 converges, then its oob-br MTU drifts; node-2 converges."""
    for i, node in enumerate(("node-1", "node-2")):
        intent = seed_intent(node, 1)
        await events.intent(intent)
        await events.status(applied(node, 1, T0 + 1 + i))
        await events.observed(converged(intent, at=T0 + 2 + i))
    await events.observed(converged(seed_intent("node-1", 1), at=T0 + 10, change=mtu_1400))


async def second_half(events: Bus) -> None:
    """node-1's MTU is put back; node-2 loses VID 200 and gets it back, then loses it again."""
    n1, n2 = seed_intent("node-1", 1), seed_intent("node-2", 1)
    await events.observed(converged(n1, at=T0 + 20))
    await events.observed(converged(n2, at=T0 + 21, change=no_vid_200))
    await events.observed(converged(n2, at=T0 + 22))
    await events.observed(converged(n2, at=T0 + 23, change=no_vid_200))


def both(links: dict, vlans: dict) -> None:  # type: ignore[type-arg]
    mtu_1400(links, vlans)
    no_vid_200(links, vlans)


EXPECTED = {
    ("node-1", "oob-br", "mtu", T0 + 10, T0 + 20),
    ("node-2", "oob-bo", "vlans", T0 + 21, T0 + 22),
    ("node-2", "oob-bo", "vlans", T0 + 23, None),
}


async def stuck_on_generation_1(events: Bus, now: float) -> None:
    """node-1 applied generation 1 at ``now - 5``; generation 2 rolled back at ``now - 4``."""
    await events.intent(seed_intent("node-1", 1))
    await events.status(applied("node-1", 1, now - 5))
    await events.intent(seed_intent("node-1", 2, vlan200=210))
    await events.status(applied("node-1", 2, now - 4, phase="RolledBack"))


def episodes_of(reports: list[DriftReport]) -> list[tuple[str, str, str, float, float | None]]:
    return [
        (r.node, i.object, i.path, i.first_seen, i.resolved_at) for r in reports for i in r.items
    ]


def final_episodes(reports: list[DriftReport]) -> set[tuple[str, str, str, float, float | None]]:
    """Each episode in its last published state."""
    last: dict[str, tuple[str, str, str, float, float | None]] = {}
    for r in reports:
        for i in r.items:
            last[episode_id(r.node, i)] = (r.node, i.object, i.path, i.first_seen, i.resolved_at)
    return set(last.values())


async def test_two_auditors_started_at_different_times_report_the_same_findings(
    events: Bus, auditors: AuditorFactory
) -> None:
    early = await auditors()  # follows everything live
    await first_half(events)
    await second_half(events)
    await until(lambda: len(early.view.node("node-2").episodes.all()) == 2)
    await until(lambda: _all_published(events))
    late = await auditors()  # replays everything

    def seen(a: object) -> set[tuple[str, str, str, float, float | None]]:
        return {
            (n, i.object, i.path, i.first_seen, i.resolved_at)
            for n, v in a.view.nodes.items()  # type: ignore[attr-defined]
            for i in v.episodes.all()
        }

    assert seen(early) == seen(late) == EXPECTED
    assert late.published_reports == 0  # everything was published already, by the first
    assert final_episodes(await events.drift_reports()) == EXPECTED


async def test_a_finding_is_published_once_and_its_end_once(
    events: Bus, auditors: AuditorFactory
) -> None:
    auditor = await auditors()
    intent = seed_intent("node-1", 1)
    await events.intent(intent)
    for t in range(5):  # the same drift, reported by the executor five times
        await events.observed(converged(intent, at=T0 + t, change=mtu_1400))
    await events.observed(converged(intent, at=T0 + 9))
    await until(lambda: _count(events, 2))
    await auditor.tick()  # time passes: nothing more is published
    reports = await events.drift_reports()
    assert episodes_of(reports) == [
        ("node-1", "oob-br", "mtu", T0, None),
        ("node-1", "oob-br", "mtu", T0, T0 + 9),
    ]
    assert [r.open for r in reports] == [1, 0]
    assert reports[0].items[0].desired == 1500 and reports[0].items[0].actual == 1400


async def _all_published(events: Bus) -> bool:
    return final_episodes(await events.drift_reports()) == EXPECTED


async def _count(events: Bus, n: int) -> bool:
    return len(await events.drift_reports()) >= n


async def test_an_auditor_restarted_mid_stream_misses_nothing_and_repeats_nothing(
    events: Bus, auditors: AuditorFactory
) -> None:
    first = await auditors()
    await first_half(events)
    await until(lambda: _count(events, 1))
    await first.stop()  # crash or restart: events go on meanwhile
    await second_half(events)
    second = await auditors()
    assert second.ready.is_set()
    reports = await events.drift_reports()
    published = episodes_of(reports)
    # Nothing missed: every episode, in its final state.
    assert final_episodes(reports) == EXPECTED
    # Nothing repeated: each episode published open once (or closed once), resolved once.
    assert len(published) == len(set(published))
    opened = [p for p in published if p[4] is None]
    assert len(opened) == len({p[:4] for p in opened})
    # Restarting again publishes nothing at all.
    before = len(reports)
    await second.stop()
    await auditors()
    assert len(await events.drift_reports()) == before


async def test_a_node_stuck_on_an_old_generation_is_reported(
    events: Bus, auditors: AuditorFactory
) -> None:
    now = time.time()
    await stuck_on_generation_1(events, now)
    auditor = await auditors()
    reply = await auditor.check("node-1", live=False)
    items = reply.nodes[0].items
    assert [(i.object, i.path, i.desired, i.actual) for i in items] == [
        ("node/node-1", "generation", 2, 1)
    ]
    await events.status(applied("node-1", 2, now))
    await until(lambda: auditor.findings("node-1") == [])


async def test_point_in_time_answers_from_the_history(
    events: Bus, auditors: AuditorFactory
) -> None:
    gen1, gen2 = seed_intent("node-1", 1), seed_intent("node-1", 2, vlan200=210)
    await events.intent(gen1)
    await events.observed(converged(gen1, at=T0 + 1))
    await events.intent(gen2)
    await events.observed(converged(gen2, at=T0 + 5, change=mtu_1400))
    auditor = await auditors()
    at1 = auditor.desired("node-1", 1)
    assert at1.ok and at1.intent == keys.sign(gen1)
    now = auditor.desired("node-1", None)
    assert now.intent == keys.sign(gen2)
    assert now.matching_since is None and now.last_matched == T0 + 5  # matched until then
    bad = auditor.desired("node-1", 7)
    assert not bad.ok and "no generation 7" in str(bad.errors[0]) and "1, 2" in str(bad.errors[0])
    history = auditor.history("node-1")
    whats = [(e.what, e.generation) for e in history.events]
    assert ("intent", 1) in whats and ("intent", 2) in whats and ("drift", None) in whats


def l2net(*args: str, url: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args, "--nats", url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def test_l2net_audit_prints_the_diff_and_exits_like_terraform_plan(
    events: Bus, auditors: AuditorFactory, nats_server: natsserver.EmbeddedNats
) -> None:
    intent = seed_intent("node-1", 1)
    await events.intent(intent)
    await events.observed(converged(intent, at=T0))
    await auditors()
    clean = await asyncio.to_thread(l2net, "audit", url=nats_server.url)
    assert clean.returncode == 0, clean.stderr
    assert "node-1: no drift" in clean.stdout
    await events.observed(converged(intent, at=T0 + 1, change=no_vid_200))
    await events.observed(converged(intent, at=T0 + 2, change=both))
    drift = await asyncio.to_thread(l2net, "audit", "node-1", url=nats_server.url)
    assert drift.returncode == 2, drift.stderr
    assert "- oob-bo.vlans: 200" in drift.stdout
    assert "~ oob-br.mtu: desired 1500, actual 1400" in drift.stdout
    as_json = await asyncio.to_thread(l2net, "audit", "--json", url=nats_server.url)
    assert as_json.returncode == 2
    nodes = json.loads(as_json.stdout)["nodes"]
    assert {(i["object"], i["path"]) for i in nodes[0]["items"]} == {
        ("oob-bo", "vlans"),
        ("oob-br", "mtu"),
    }
    unknown = await asyncio.to_thread(l2net, "audit", "node-9", url=nats_server.url)
    assert unknown.returncode == 1 and "unknown node 'node-9'" in unknown.stdout
    history = await asyncio.to_thread(l2net, "history", "node-1", url=nats_server.url)
    assert history.returncode == 0 and "drift" in history.stdout and "oob-br.mtu" in history.stdout
    last = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + 1))
    assert history.stdout.splitlines()[-1] == (
        f"does not match its desired state; last matched {last}"
    )


async def test_audit_without_an_auditor_is_an_error_not_a_clean_bill(
    nats_server: natsserver.EmbeddedNats,
) -> None:
    result = await asyncio.to_thread(l2net, "audit", url=nats_server.url)
    assert result.returncode == 1
    assert "no auditor answers" in result.stderr


async def test_bad_requests_get_a_clear_error(nc: Client, auditors: AuditorFactory) -> None:
    await auditors()
    msg = await nc.request(subjects.AUDITOR_CHECK, b'{"nodes": "x"}', timeout=5)
    body = json.loads(msg.data)
    problem = body["errors"][0]
    assert body["ok"] is False and problem["code"] == "bad-request" and problem["field"] == "nodes"
    msg = await nc.request(subjects.AUDITOR_HISTORY, b"not json", timeout=5)
    assert json.loads(msg.data)["ok"] is False
    msg = await nc.request(subjects.AUDITOR_HISTORY, b"", timeout=5)
    problem = json.loads(msg.data)["errors"][0]
    assert problem["field"] == "node" and "missing required field" in problem["message"]


async def test_report_only_policy_never_asks_an_executor_to_converge(
    nc: Client, events: Bus, auditors: AuditorFactory
) -> None:
    asked: list[str] = []

    async def record(msg: object) -> None:
        asked.append(msg.subject)  # type: ignore[attr-defined]

    await nc.subscribe("l2.executor.*.reconcile", cb=record)
    await bus.settle(nc)
    intent = seed_intent("node-1", 1)
    await events.intent(intent)
    auditor = await auditors()
    await events.observed(converged(intent, at=time.time(), change=no_vid_200))
    await until(lambda: auditor.findings("node-1") != [])
    await asyncio.gather(*await auditor.tick())  # a tick, and any heal it would start
    assert asked == []


def test_a_bad_policy_is_refused_with_its_reason(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("heal: [oob]\nsilenceSecond: 3\n")
    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "auditor", "--policy", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "silenceSecond" in result.stderr
    good = tmp_path / "ok.yaml"
    good.write_text("heal: [oob]\nsilenceSeconds: 3\n")
    import argparse

    cfg = audit_cli.load_policy(
        argparse.Namespace(policy=good, heal=["vlan9"], silence=None, grace=None)
    )
    assert cfg.heal == {"oob", "vlan9"} and cfg.policy.silence_s == 3
    assert isinstance(AuditorConfig().policy, Policy)


async def test_the_auditor_is_a_nats_micro_service(nc: Client, auditors: AuditorFactory) -> None:
    await auditors()
    msg = await nc.request("$SRV.INFO.l2net-auditor", b"", timeout=5)
    info = json.loads(msg.data)
    assert info["name"] == "l2net-auditor"
    assert {e["subject"] for e in info["endpoints"]} == {
        subjects.AUDITOR_CHECK,
        subjects.AUDITOR_HISTORY,
        subjects.AUDITOR_DESIRED,
        subjects.health("l2net-auditor"),
    }


async def test_l2net_auditor_runs_as_a_process_and_stops_on_sigterm(
    nc: Client, events: Bus, nats_server: natsserver.EmbeddedNats, tmp_path: Path
) -> None:
    intent = seed_intent("node-1", 1)
    await events.intent(intent)
    await events.observed(converged(intent, at=T0, change=no_vid_200))
    log = (tmp_path / "auditor.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "auditor", "--nats", nats_server.url],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "L2NET_STATE_DIR": str(tmp_path / "state")},
    )
    try:

        async def answers() -> bool:
            try:
                await nc.request("$SRV.PING.l2net-auditor", b"", timeout=1)
            except Exception:
                return False
            return True

        await until(answers, timeout=60)
        result = await asyncio.to_thread(l2net, "audit", "--cached", url=nats_server.url)
        assert result.returncode == 2 and "- oob-bo.vlans: 200" in result.stdout
    finally:
        code = await asyncio.to_thread(stop_process, proc)
    assert code == 0, (tmp_path / "auditor.log").read_text()
    assert (tmp_path / "state" / "auditor" / "snapshot.json").exists()  # for the next start


async def test_an_episode_seen_live_first_is_the_same_episode_in_the_stream(
    nc: Client, events: Bus, auditors: AuditorFactory
) -> None:
    intent = seed_intent("node-1", 1)
    await events.intent(intent)
    await events.observed(converged(intent, at=T0))
    live = converged(intent, at=T0 + 10, change=no_vid_200)

    async def state(msg: object) -> None:  # the node's live state, as its executor answers
        await msg.respond(bus.encode(live))  # type: ignore[attr-defined]

    sub = await nc.subscribe(subjects.executor_control("node-1", "state"), cb=state)
    await bus.settle(nc)
    first = await auditors()
    assert ("oob-bo", "vlans") in {
        (i.object, i.path) for i in (await first.check("node-1")).nodes[0].items
    }
    await sub.unsubscribe()
    # The executor's own report of the same change reaches the stream with an earlier time.
    await events.observed(converged(intent, at=T0 + 9, change=no_vid_200))
    await events.observed(converged(intent, at=T0 + 20))
    await until(lambda: first.findings("node-1") == [])
    await until(lambda: _count(events, 2))
    second = await auditors()
    assert second.published_reports == 0
    assert episodes_of(await events.drift_reports()) == [
        ("node-1", "oob-bo", "vlans", T0 + 10, None),
        ("node-1", "oob-bo", "vlans", T0 + 10, T0 + 20),
    ]


async def test_a_node_finding_that_ended_while_the_auditor_was_down_is_closed_on_restart(
    events: Bus, auditors: AuditorFactory
) -> None:
    now = time.time()
    await stuck_on_generation_1(events, now)
    first = await auditors()
    assert [(i.path, i.resolved_at) for i in first.findings("node-1")] == [("generation", None)]
    await first.stop()
    await events.status(applied("node-1", 2, now - 1))  # applied while no auditor ran
    second = await auditors()
    assert second.findings("node-1") == []
    assert episodes_of(await events.drift_reports()) == [
        ("node-1", "node/node-1", "generation", now - 4, None),
        ("node-1", "node/node-1", "generation", now - 4, now - 1),
    ]


async def test_a_restart_from_a_snapshot_replays_only_what_came_after_and_agrees(
    events: Bus, auditors: AuditorFactory, tmp_path: Path
) -> None:
    path = tmp_path / "snapshot.json"
    first = await auditors(AuditorConfig(snapshot=path))
    await first_half(events)
    await until(lambda: _count(events, 1))
    await first.stop()  # writes the snapshot
    assert path.exists()
    await second_half(events)
    resumed = await auditors(AuditorConfig(snapshot=path))
    assert resumed.restored_from is not None
    await until(lambda: _all_published(events))
    full = await auditors()  # no snapshot: replays everything
    assert full.restored_from is None
    assert resumed.events_applied < full.events_applied  # only what came after the snapshot

    def seen(a: object) -> list[tuple[str, str, str, float, float | None]]:
        return sorted(
            (n, i.object, i.path, i.first_seen, i.resolved_at)
            for n, v in a.view.nodes.items()  # type: ignore[attr-defined]
            for i in v.episodes.all()
        )

    assert set(seen(resumed)) == set(seen(full)) == EXPECTED
    assert resumed.history("node-2") == full.history("node-2")
    published = episodes_of(await events.drift_reports())
    assert len(published) == len(set(published))  # nothing repeated


async def test_a_snapshot_of_other_streams_is_not_used(
    events: Bus, auditors: AuditorFactory, tmp_path: Path
) -> None:
    path = tmp_path / "snapshot.json"
    first = await auditors(AuditorConfig(snapshot=path))
    await first_half(events)
    await until(lambda: _count(events, 1))
    await first.stop()
    # The observed stream is deleted and created again: the snapshot no longer describes it.
    await events.js.delete_stream(subjects.STREAM_OBSERVED)
    await events.setup()
    intent = seed_intent("node-1", 1)
    await events.observed(converged(intent, at=T0 + 30, change=no_vid_200))
    again = await auditors(AuditorConfig(snapshot=path))
    assert again.restored_from is None
    assert {(i.object, i.path) for i in again.findings("node-1")} == {("oob-bo", "vlans")}


async def test_an_episode_that_came_and_went_unwatched_is_published_opened_and_resolved(
    events: Bus, auditors: AuditorFactory
) -> None:
    """An auditor catching up publishes an episode that ended before it looked as opened,
    then resolved: had it published only the end, another auditor following live but behind
    would read that end before reaching the episode, and the opening nobody published (the
    two-auditor run lost findings so under load)."""
    intent = seed_intent("node-1", 1)
    await events.intent(intent)
    await events.observed(converged(intent, at=T0))
    await events.observed(converged(intent, at=T0 + 10, change=mtu_1400))
    await events.observed(converged(intent, at=T0 + 12))  # over while no auditor ran
    first = await auditors()  # catches up
    await auditors()  # reads it in L2_DRIFT: publishes nothing
    assert first.published_reports == 2
    assert episodes_of(await events.drift_reports()) == [
        ("node-1", "oob-br", "mtu", T0 + 10, None),
        ("node-1", "oob-br", "mtu", T0 + 10, T0 + 12),
    ]


async def test_an_episode_published_open_and_over_is_not_taken_for_a_later_one(
    events: Bus, auditors: AuditorFactory
) -> None:
    """L2_DRIFT can lag the other streams: an auditor catching up may read an episode's
    opening (by another auditor) but not yet its end, while the observed states already show
    it over and the next episode of the same field open. That next one is its own episode,
    not the first one still going on."""
    intent = seed_intent("node-1", 1)
    await events.intent(intent)
    await events.observed(converged(intent, at=T0))
    await events.observed(converged(intent, at=T0 + 10, change=mtu_1400))
    first = await auditors()
    await until(lambda: _count(events, 1))  # the opening, published
    await first.stop()  # before the end: L2_DRIFT shows it open
    await events.observed(converged(intent, at=T0 + 12))
    await events.observed(converged(intent, at=T0 + 20, change=mtu_1400))
    late = await auditors()
    assert [(i.first_seen, i.resolved_at) for i in late.view.node("node-1").episodes.all()] == [
        (T0 + 10, T0 + 12),
        (T0 + 20, None),
    ]
    assert episodes_of(await events.drift_reports()) == [
        ("node-1", "oob-br", "mtu", T0 + 10, None),
        ("node-1", "oob-br", "mtu", T0 + 10, T0 + 12),
        ("node-1", "oob-br", "mtu", T0 + 20, None),
    ]
