"""Every planner reply fits the server's max_payload, whatever the submission or catalog."""

from __future__ import annotations

import msgspec

from services.planner.service import MAX_PROBLEMS, fit_reply, refusal
from shared.wire import api

LIMIT = 1024 * 1024 - 4096


def test_replies_are_made_to_fit() -> None:
    checks: dict[str, bool] = {}

    small = api.ApplyReply(ok=False, errors=[api.Problem(message="bad")])
    checks["a small reply is sent as it is"] = fit_reply(small, LIMIT) == msgspec.json.encode(small)

    # 5000 problems of 10 kB each: the first 100 (cut short), then a count.
    problems = [
        api.Problem(kind="VlanConfig", name=f"v{i}", message="x" * 10_000) for i in range(5000)
    ]
    capped = refusal(problems)
    checks["a refusal lists at most 100 problems, then a count"] = (
        len(capped.errors) == MAX_PROBLEMS + 1
        and capped.errors[-1].message == f"... and {5000 - MAX_PROBLEMS} more problems"
    )
    data = fit_reply(capped, LIMIT)
    decoded = msgspec.json.decode(data, type=api.ApplyReply)
    checks["huge problem messages: fits, still a refusal with a count"] = (
        len(data) <= LIMIT and not decoded.ok and "more problems" in decoded.errors[-1].message
    )
    tiny = fit_reply(capped, 20_000)
    decoded = msgspec.json.decode(tiny, type=api.ApplyReply)
    checks["under a tiny limit: fewer problems, then a count"] = (
        len(tiny) <= 20_000 and 1 < len(decoded.errors) <= 60 and not decoded.ok
    )

    # A get of a catalog bigger than the limit: an error saying so, not a failed reply.
    items = [
        api.Item(kind="Network", name=f"n{i}", revision=i, spec={"description": "d" * 1000})
        for i in range(6000)
    ]
    data = fit_reply(api.GetReply(ok=True, items=items), LIMIT)
    got = msgspec.json.decode(data, type=api.GetReply)
    checks["a get over the limit: an error naming the size and the limit"] = (
        len(data) <= LIMIT
        and not got.ok
        and f"limit of {LIMIT} bytes" in got.errors[0].message
        and "one kind" in got.errors[0].message
    )

    # A stored submission of many objects: still ok, the changes listed in part.
    changes = [api.Change(kind="Network", name=f"n{i}", action="created") for i in range(999)]
    stored = api.ApplyReply(ok=True, changes=changes, generations={"node-1": 3})
    data = fit_reply(stored, 20_000)
    done = msgspec.json.decode(data, type=api.ApplyReply)
    checks["a stored submission stays ok, its changes listed in part"] = (
        len(data) <= 20_000
        and done.ok
        and done.generations == {"node-1": 3}
        and "more changes not listed" in done.warnings[-1]
    )
    for what, ok in checks.items():
        print(f"  {'ok ' if ok else 'BAD'} {what}")
    print(f"replies within the server's max_payload: {sum(checks.values())}/{len(checks)}")
    assert all(checks.values()), checks
