"""Contract fixtures: a real nats-server with a planner and an auditor running in-process
(no user-mode Linux); the tests speak to them as a client in another language would."""

from __future__ import annotations

from tests.auditor.conftest import auditors  # noqa: F401  (fixtures, shared)
from tests.planner.conftest import planner  # noqa: F401
