"""A test module's lab: real user-mode Linux nodes, booted once for the module.

Write, at module level::

    lab = lab_fixture("auditlab", nodes=2, executor=True)

and take ``lab`` as an argument in the module's tests. ``labnc`` (a NATS client on the lab's
server, in ``tests/conftest.py``) works with it. A lab that cannot boot makes the tests FAIL,
never skip: CI must not pass without the kernel features under test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from services.lab import Lab


def lab_fixture(name: str, *, nodes: int, executor: bool, **options: Any) -> Callable[..., Any]:
    """A module-scoped fixture booting ``nodes`` nodes (with their executors if ``executor``)
    in a fresh directory named after ``name``; ``options`` go to :meth:`Lab.up` as they are
    (``data_nics``, ``mgmt_vlan``, ``environ``...). The lab is stopped after the module."""

    @pytest.fixture(scope="module")
    def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
        directory = tmp_path_factory.mktemp(name)
        booted = Lab.up(directory=directory, nodes=nodes, executor=executor, **options)
        try:
            yield booted
        finally:
            booted.down()

    return lab
