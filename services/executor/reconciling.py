"""One reconcile: read, diff, apply in order with an undo log, verify, or roll back.

:func:`converge` is the whole transaction the executor runs for an intent:

1. read the node's state (the snapshot every failure returns to);
2. plan steps from the one diff (:func:`services.executor.planning.plan`); no steps, no
   writes: the result is ``Applied`` with ``netlink_writes == 0``;
3. apply the steps in order, logging each applied one;
4. verify by reading back: the diff against desired must now be empty;
5. confirm (when given a ``confirm`` callback): the node still reaches the control plane
   (:class:`services.executor.mgmt.Confirmer`); a change that cut it off is a failure too;
6. on any failure (a refused step, a failed verification, a failed confirm, any other
   exception) roll back to the snapshot by planning from the current state to the snapshot
   taken as an exact desired state (the same planner, so a half-done step is undone too),
   remove VM namespaces the attempt created, and verify that the dump equals the snapshot
   again: ``RolledBack`` when it does, ``Failed`` (with what is left) when it does not.

The kernel's own error text travels to the status unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec

from services.executor.kernel import Kernel, KernelError
from services.executor.planning import Step, plan
from shared.domain.errors import L2netError, Refused
from shared.domain.l2state import Difference, NodeL2State, Refusal, diff, exact_desired
from shared.domain.model import ObjectResult, Phase
from shared.runtime import tracing

StepHook = Callable[[Step], Awaitable[None]]
Confirm = Callable[[], Awaitable[str | None]]
"""After a verified apply: None when the node still reaches the control plane, else why not."""


@dataclass
class Outcome:
    """What a reconcile did, ready to become a :class:`~shared.domain.model.NodeStatus`."""

    phase: Phase
    results: list[ObjectResult] = field(default_factory=list)
    error: str | None = None
    writes: int = 0
    duration_s: float = 0.0
    remaining: list[Difference] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)


class ConfirmError(Refused, RuntimeError):
    """The node lost its path to the control plane after the apply (the confirm's words)."""


class VerifyError(Refused, RuntimeError):
    """Read-back after applying still differs from desired."""

    def __init__(self, items: list[Difference]) -> None:
        shown = "; ".join(str(i) for i in items[:5])
        more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
        super().__init__(f"verification failed: {shown}{more}")
        self.items = items


async def converge(
    kernel: Kernel,
    desired: NodeL2State,
    *,
    refused: list[Refusal] | None = None,
    before_step: StepHook | None = None,
    on_planned: Callable[[list[Step]], Awaitable[None]] | None = None,
    confirm: Confirm | None = None,
) -> Outcome:
    """Bring the kernel to ``desired`` or back to where it was (see the module docstring).

    ``before_step`` runs before each step (tracing, tests injecting a failure);
    ``on_planned`` runs once with the non-empty plan (the executor reports Progressing);
    ``confirm`` runs once after a verified apply that changed something: a reason (the path
    to the control plane is lost) rolls back to the snapshot like any other failure.
    """
    started = time.monotonic()
    writes0 = kernel.writes
    results = [
        ObjectResult(object=r.name, action="refused", ok=False, error=str(r)) for r in refused or []
    ]

    def done(phase: Phase, **kw: object) -> Outcome:
        out = Outcome(
            phase=phase,
            results=results,
            writes=kernel.writes - writes0,
            duration_s=time.monotonic() - started,
        )
        for key, value in kw.items():
            setattr(out, key, value)
        return out

    with tracing.tracer().start_as_current_span("l2net.executor.diff") as span:
        snapshot = await kernel.read()
        try:
            steps = plan(desired, snapshot)
        except Exception as exc:  # PlanError, StateError, or a bug: nothing written yet
            span.set_attribute("l2net.plan_error", str(exc))
            return done("Failed", error=_text(exc))
        span.set_attribute("l2net.steps", len(steps))
    if not steps:
        return done("Applied")
    if on_planned is not None:
        await on_planned(steps)

    applied: list[Step] = []
    try:
        await _apply_verified(kernel, desired, steps, applied, results, before_step, confirm)
    except Exception as exc:
        # Any exception, not only the kernel's refusals: a value pyroute2 cannot pack, a CNI
        # plugin that cannot start, a bug. Whatever it is, what was written is undone.
        failed = exc.step if isinstance(exc, KernelError) else None
        if failed is not None:
            results.append(step_result(failed, ok=False, error=str(exc)))
        with tracing.tracer().start_as_current_span("l2net.executor.rollback"):
            rollback_left, rollback_errors = await rollback(kernel, snapshot, applied)
        if rollback_left or rollback_errors:
            detail = "; ".join([*rollback_errors, *(str(i) for i in rollback_left[:5])])
            return done(
                "Failed",
                error=f"{_text(exc)}; rollback incomplete: {detail}",
                remaining=rollback_left,
                steps=applied,
            )
        error = f"{exc}; restored the previous state" if isinstance(exc, ConfirmError) else None
        return done("RolledBack", error=error or _text(exc), steps=applied)
    return done("Applied", steps=applied)


async def _apply_verified(
    kernel: Kernel,
    desired: NodeL2State,
    steps: list[Step],
    applied: list[Step],
    results: list[ObjectResult],
    before_step: StepHook | None,
    confirm: Confirm | None,
) -> None:
    """Apply ``steps`` (each appended to ``applied`` and ``results`` once done), verify that
    the kernel now equals ``desired``, then ask ``confirm``; raise on the first failure."""
    for step in steps:
        with tracing.tracer().start_as_current_span(f"step {step.op}") as span:
            span.set_attribute("l2net.step", step.describe())
            if before_step is not None:
                await before_step(step)
            await kernel.apply(step)
        applied.append(step)
        results.append(step_result(step))
    with tracing.tracer().start_as_current_span("l2net.executor.verify") as span:
        left = diff(desired, await kernel.read())
        span.set_attribute("l2net.differences", len(left))
    if left:
        raise VerifyError(left)
    if confirm is not None:
        with tracing.tracer().start_as_current_span("l2net.executor.confirm") as span:
            lost = await confirm()
            span.set_attribute("l2net.confirmed", lost is None)
        if lost is not None:
            raise ConfirmError(lost)


async def rollback(
    kernel: Kernel, snapshot: NodeL2State, applied: list[Step]
) -> tuple[list[Difference], list[str]]:
    """Return the kernel to ``snapshot``; what still differs, and the errors on the way.

    Two passes: undoing one thing can make another possible (a port released by a failed
    bond change is enslaved again only once the bond is back).
    """
    target = exact_desired(snapshot)
    errors: list[str] = []
    for _ in range(2):
        errors = []
        current = await kernel.read()
        try:
            steps = plan(target, current)
        except Exception as exc:  # a bug included: reported as what the rollback left
            errors.append(_text(exc))
            break
        if not steps:
            break
        for step in steps:
            try:
                await kernel.apply(step)
            except Exception as exc:  # keep undoing the rest whatever one step raised
                errors.append(_text(exc))
    current = await kernel.read()
    created = {s.target for s in applied if s.op == "netns.add"}
    for vm in sorted(created - set(snapshot.namespaces)):
        if vm in current.namespaces:
            try:
                await kernel.apply(Step(op="netns.del", target=vm))
            except Exception as exc:  # every created namespace is tried, whatever one raised
                errors.append(_text(exc))
    return diff(target, await kernel.read()), errors


def step_result(
    step: Step, *, prefix: str = "", ok: bool = True, error: str | None = None
) -> ObjectResult:
    """A status entry for ``step``: its one-line text for people, and the same step
    structured for programs (``operation``, ``object``, ``fields``)."""
    fields = {
        _camel(key): msgspec.to_builtins(value)
        for key, value in step.args.items()
        if key != "config"  # the whole CNI configuration: in the intent already
    }
    return ObjectResult(
        object=step.target,
        action=prefix + step.describe(),
        ok=ok,
        error=error,
        operation=step.op,
        fields=fields,
    )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _text(exc: BaseException) -> str:
    """An error for a status: l2net's own errors as they read, others with their type."""
    if isinstance(exc, L2netError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
