"""``make demo``'s main job, run whole: the lab, executors, planner, real packets.

Needs the lab (user-mode Linux): it fails, never skips, when the lab cannot boot.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

# The demo boots three nodes (a lab test); its own bound (900 s) stays below the test's.
pytestmark = [pytest.mark.lab, pytest.mark.timeout(960)]


def test_demo_converges_the_seed_on_three_nodes_with_isolation() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "demo"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = result.stdout
    assert result.returncode == 0, f"{out[-4000:]}\n{result.stderr[-4000:]}"
    for node in ("node-1", "node-2", "node-3"):
        assert f"{node}  3           Applied" in out
    # The seed's example, live: oob-bo carries 1 PVID untagged and 200; mgmt-bo carries 100.
    uplinks = out.split("uplinks, live")[1].split("connectivity matrix")[0]
    assert uplinks.count("oob-bo            1 PVID Egress Untagged\n                  200") == 3
    assert uplinks.count("mgmt-bo           1 PVID Egress Untagged\n                  100") == 3
    assert "(as expected, every pair)" in out
    # The hand-made drift is caught by the audit, then healed.
    drift = out.split("caught and healed")[1]
    assert "- oob-bo.vlans: 200" in drift
    assert drift.index("exit code 2: drift") < drift.index("exit code 0: no drift")
    assert "lab down: nodes, switches and namespaces removed" in out
