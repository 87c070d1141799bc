"""The test kit: what every test area uses to wait, to stop what it started, and to boot a lab.

- :func:`until` (async) and :func:`until_sync` poll a condition with a generous bound and fail
  naming what was awaited; no timing is ever asserted through them.
- :func:`stop_process` stops a process the test started: SIGTERM, a wait, then SIGKILL, always
  by the pid (or process group) recorded at start, never by a name or a pattern.
- :func:`lab_fixture` makes a test module's ``lab`` fixture: one user-mode Linux lab of N nodes,
  booted once for the module and stopped after it. A lab that cannot boot FAILS the tests.
"""

from tests.kit.lab import lab_fixture
from tests.kit.polling import until, until_sync
from tests.kit.processes import stop_process

__all__ = ["lab_fixture", "stop_process", "until", "until_sync"]
