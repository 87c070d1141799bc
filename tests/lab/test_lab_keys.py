"""The lab's signing key: one per lab, its public key given to the lab's executors (no boot)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from services.lab import executor_command
from services.lab.fleet import LabError, _lab_trust_keys, signing_seed_file
from shared.wire import signing
from tests import keys


def test_a_lab_makes_its_own_key_and_also_trusts_the_environments(tmp_path: Path) -> None:
    first = _lab_trust_keys(tmp_path / "a", {"L2NET_TRUST_KEYS": keys.PUBLIC})
    seed_file = signing_seed_file(tmp_path / "a")
    assert stat.S_IMODE(os.stat(seed_file).st_mode) == 0o600
    assert first == [signing.public_key(signing.load_seed(seed_file)), keys.PUBLIC]
    assert _lab_trust_keys(tmp_path / "a", {})[0] == first[0]  # kept: a planner may hold it
    assert _lab_trust_keys(tmp_path / "b", {})[0] != first[0]  # another lab, another key
    with pytest.raises(LabError, match=r"\$L2NET_TRUST_KEYS: public key 'bogus'"):
        _lab_trust_keys(tmp_path / "c", {"L2NET_TRUST_KEYS": "bogus"})


def test_the_executors_are_told_which_keys_to_trust() -> None:
    argv = executor_command(
        node="node-1", nats_url="nats://x:4222", trust_keys=["NA", "NB"], state_dir="/s"
    )
    assert argv[-6:-2] == ["--trust-key", "NA", "--trust-key", "NB"]
