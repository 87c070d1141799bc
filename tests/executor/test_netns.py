"""VM namespaces made by the executor in its own process (``create_netns``), on the host kernel.

The executor makes a VM's network namespace as ``ip netns add`` does, with ``unshare`` in a
thread of its own; the namespace must be a new one that ``ip netns`` and the CNI plugin can
use, and no thread of the executor may end up in it. Names are recorded and removed here.
"""

from __future__ import annotations

import errno
import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest
from pyroute2 import netns as pyroute2_netns

from services.executor.kernel import create_netns


@pytest.fixture
def names() -> Iterator[list[str]]:
    made: list[str] = []
    try:
        yield made
    finally:
        present = set(pyroute2_netns.listnetns())
        for name in made:
            if name in present:
                pyroute2_netns.remove(name)


def _inode(path: str) -> int:
    return os.stat(path).st_ino


def test_a_new_namespace_usable_by_ip_netns_and_no_thread_moves(names: list[str]) -> None:
    name = f"l2n-{secrets.token_hex(3)}"
    names.append(name)
    own = _inode("/proc/self/ns/net")
    create_netns(name)
    assert _inode(f"/run/netns/{name}") != own
    for tid in os.listdir("/proc/self/task"):
        try:
            where = _inode(f"/proc/self/task/{tid}/ns/net")
        except FileNotFoundError:
            continue  # a thread that has ended since the listing
        assert where == own, f"thread {tid} is in another network namespace"
    links = subprocess.run(
        ["ip", "-n", name, "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
    assert name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_an_existing_name_is_refused_and_its_namespace_kept(names: list[str]) -> None:
    name = f"l2n-{secrets.token_hex(3)}"
    names.append(name)
    create_netns(name)
    before = _inode(f"/run/netns/{name}")
    with pytest.raises(OSError) as caught:
        create_netns(name)
    assert caught.value.errno == errno.EEXIST
    assert _inode(f"/run/netns/{name}") == before


@pytest.mark.parametrize("bad", ["", "a/b", "..", "."])
def test_a_name_that_is_not_a_file_name_is_refused(bad: str) -> None:
    before = set(pyroute2_netns.listnetns())
    with pytest.raises(OSError) as caught:
        create_netns(bad)
    assert caught.value.errno == errno.EINVAL
    assert "not a network namespace name" in str(caught.value)
    assert set(pyroute2_netns.listnetns()) == before
