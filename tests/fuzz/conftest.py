"""Fuzz fixtures: the executor's namespace node and executor factory, shared."""

from __future__ import annotations

from tests.executor.conftest import executors, host_node  # noqa: F401  (fixtures, shared)
