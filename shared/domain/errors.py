"""l2net's errors: one base class whose ``kind`` says what the caller can do about it.

::

    L2netError                  kind     retry?  on the wire (Problem.code)
    ├── bad input               BAD_INPUT    no  ``bad-request``, ``invalid``
    │     ManifestError, StateError, SignatureError, LabConfigError, TracingConfigError
    ├── refused                 REFUSED      no  ``refused``
    │     PlanError, IntentRefused, KernelError, CniError, VerifyError, ConfirmError
    ├── not found               NOT_FOUND    no  ``not-found``
    ├── unavailable             UNAVAILABLE  yes ``unavailable`` (NATS or JetStream away)
    │     BusError
    └── busy                    BUSY         yes ``conflict`` (another writer moved first)
          ConflictError, planner Conflict

A permanent error (bad input, refused, not found) gives the same answer when tried again:
the caller must change what it asks. A temporary one (unavailable, busy) may succeed when
tried again after a pause; :attr:`L2netError.temporary` says which. The classes keep their
historical bases too (``ValueError``, ``RuntimeError``), so code catching those still works.

Every service answers a failed request with ``ok: false`` and ``errors``: a list of
:class:`shared.wire.api.Problem`, each with a ``code`` from :class:`Code` (docs/events.md).
"""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    """What went wrong, in terms of what the caller can do about it."""

    BAD_INPUT = "bad input"
    REFUSED = "refused"
    NOT_FOUND = "not found"
    UNAVAILABLE = "unavailable"
    BUSY = "busy"

    @property
    def temporary(self) -> bool:
        """True when the same call may succeed later unchanged (retry with backoff)."""
        return self in (ErrorKind.UNAVAILABLE, ErrorKind.BUSY)


class Code(enum.StrEnum):
    """``Problem.code`` on the wire: one per way a request fails (docs/events.md)."""

    BAD_REQUEST = "bad-request"
    """The request body does not decode: not JSON, truncated, an unknown or missing field."""
    INVALID = "invalid"
    """The body decodes but what it asks is invalid (a manifest's problems, an unknown kind)."""
    REFUSED = "refused"
    """Valid, but refused by the current state (deleting an object still in use)."""
    NOT_FOUND = "not-found"
    """The object or node named does not exist."""
    UNAVAILABLE = "unavailable"
    """The service cannot reach NATS/JetStream or the kernel now: try again later."""
    CONFLICT = "conflict"
    """Other writers kept moving the same objects: try again."""
    INTERNAL = "internal"
    """A bug: the service could not answer (its log says more)."""


TEMPORARY_CODES = frozenset({Code.UNAVAILABLE, Code.CONFLICT})
"""The codes after which the same request may succeed unchanged."""

CODE_OF_KIND = {
    ErrorKind.BAD_INPUT: Code.INVALID,
    ErrorKind.REFUSED: Code.REFUSED,
    ErrorKind.NOT_FOUND: Code.NOT_FOUND,
    ErrorKind.UNAVAILABLE: Code.UNAVAILABLE,
    ErrorKind.BUSY: Code.CONFLICT,
}


class L2netError(Exception):
    """Base of l2net's own errors; subclasses set :attr:`kind`."""

    kind: ErrorKind = ErrorKind.REFUSED

    @property
    def temporary(self) -> bool:
        return self.kind.temporary


def code_of(exc: BaseException) -> Code:
    """The wire code of ``exc``: its kind's for l2net's errors, ``internal`` for any other."""
    return CODE_OF_KIND[exc.kind] if isinstance(exc, L2netError) else Code.INTERNAL


class BadInput(L2netError):
    kind = ErrorKind.BAD_INPUT


class Refused(L2netError):
    kind = ErrorKind.REFUSED


class NotFound(L2netError):
    kind = ErrorKind.NOT_FOUND


class Unavailable(L2netError):
    kind = ErrorKind.UNAVAILABLE


class Busy(L2netError):
    kind = ErrorKind.BUSY
