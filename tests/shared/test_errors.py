"""One error tree: each of l2net's exceptions says whether trying again can help."""

from __future__ import annotations

import errno

from services.auditor.events import BadMessage
from services.executor.cni import CniError
from services.executor.kernel import KernelError
from services.executor.planning import PlanError, Step
from services.executor.reconciling import ConfirmError
from services.executor.service import IntentRefused
from services.planner.manifests import ManifestError
from services.planner.service import Conflict
from shared.domain.errors import Code, ErrorKind, L2netError, code_of
from shared.domain.l2state import StateError
from shared.runtime import bus
from shared.wire import api
from shared.wire.signing import SignatureError


def test_every_error_has_a_kind_that_says_whether_to_retry() -> None:
    step = Step(op="link.set", target="oob-bo", args={"mtu": 9000})
    cases: list[tuple[BaseException, ErrorKind]] = [
        (ManifestError([api.Problem(message="x")]), ErrorKind.BAD_INPUT),
        (StateError("x"), ErrorKind.BAD_INPUT),
        (BadMessage("x"), ErrorKind.BAD_INPUT),
        (SignatureError("x"), ErrorKind.REFUSED),
        (IntentRefused("x"), ErrorKind.REFUSED),
        (PlanError("x"), ErrorKind.REFUSED),
        (CniError("x"), ErrorKind.REFUSED),
        (ConfirmError("x"), ErrorKind.REFUSED),
        (KernelError(step, "Invalid argument", code=errno.EINVAL), ErrorKind.REFUSED),
        (KernelError(step, "Device or resource busy", code=errno.EBUSY), ErrorKind.BUSY),
        (bus.BusError("x"), ErrorKind.UNAVAILABLE),
        (bus.ConflictError("x"), ErrorKind.BUSY),
        (Conflict("x"), ErrorKind.BUSY),
    ]
    wrong = [
        f"{type(e).__name__}: {getattr(e, 'kind', None)} (want {want})"
        for e, want in cases
        if not isinstance(e, L2netError) or e.kind is not want
    ]
    print(f"errors with the right kind: {len(cases) - len(wrong)}/{len(cases)}")
    assert not wrong
    # The historical bases stay, so code catching them still works.
    assert isinstance(StateError("x"), ValueError) and isinstance(bus.BusError("x"), RuntimeError)
    assert [e.temporary for e, _ in cases[-4:]] == [True] * 4
    assert not any(e.temporary for e, _ in cases[:-4] if isinstance(e, L2netError))


def test_the_wire_code_follows_the_kind() -> None:
    assert code_of(bus.BusError("x")) == Code.UNAVAILABLE == "unavailable"
    assert code_of(Conflict("x")) == "conflict"
    assert code_of(PlanError("x")) == "refused"
    assert code_of(KeyError("x")) == "internal"  # not l2net's: a bug
    problem = api.problem_of(StateError("vid 0 out of range"), kind="Node", name="n1")
    assert (problem.code, problem.kind, str(problem)) == (
        "invalid",
        "Node",
        "Node n1: vid 0 out of range",
    )
