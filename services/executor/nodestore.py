"""What an executor keeps on its node's disk: the highest generation it has handled and the
last intent it applied, so that generations only move forward across restarts and a node
that restarts while NATS is unreachable still comes back with its networks.

Two files in the state directory (``--state-dir``, default ``/var/lib/l2net/<node>``):

* ``intent.json``: the last intent applied (``Applied``), the message's own bytes as they
  came from the bus, signature included, so that the executor can check it again at start
  exactly as it checked it the first time;
* ``state.json``: the highest generation handled (applied, rolled back or failed in the
  kernel) and the digest of that intent.

Each file is replaced atomically: written to a temporary file, fsync'd, renamed over the
old one, then the directory fsync'd, so a crash (or a power cut) at any instant leaves the
old file or the new one, never a mixture. ``intent.json`` is written before ``state.json``;
a crash between the two leaves an intent newer than the recorded generation, which
:meth:`NodeStore.load` reconciles (the recorded generation is never below the intent's).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import msgspec

log = logging.getLogger("l2net.executor")

INTENT_FILE = "intent.json"
STATE_FILE = "state.json"
DEFAULT_ROOT = Path("/var/lib/l2net")


def default_state_dir(node: str) -> Path:
    """Where a node's executor keeps its state unless told otherwise."""
    return DEFAULT_ROOT / node


class SavedState(msgspec.Struct, kw_only=True, rename="camel"):
    """``state.json``."""

    handled_generation: int = 0
    handled_digest: str | None = None


@dataclass
class Loaded:
    """What a start finds on disk. ``intent_raw``: the bytes of ``intent.json`` (None when
    there is none); ``fresh``: no state at all (a first start, or a wiped disk)."""

    handled_generation: int
    handled_digest: str | None
    intent_raw: bytes | None
    fresh: bool


class NodeStore:
    """The executor's state directory (created on first use, mode 0700)."""

    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)

    def load(self) -> Loaded:
        """What is on disk; an unreadable ``state.json`` counts as none (logged), never fatal."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        saved = SavedState()
        fresh = True
        try:
            saved = msgspec.json.decode((self.dir / STATE_FILE).read_bytes(), type=SavedState)
            fresh = False
        except FileNotFoundError:
            pass
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("ignoring unreadable %s: %s", self.dir / STATE_FILE, exc)
        try:
            raw: bytes | None = (self.dir / INTENT_FILE).read_bytes()
            fresh = False
        except FileNotFoundError:
            raw = None
        except OSError as exc:
            log.error("ignoring unreadable %s: %s", self.dir / INTENT_FILE, exc)
            raw = None
        return Loaded(
            handled_generation=max(0, saved.handled_generation),
            handled_digest=saved.handled_digest,
            intent_raw=raw,
            fresh=fresh,
        )

    def save_intent(self, raw: bytes) -> None:
        """Keep ``raw`` (an intent message, as received) as the last applied intent."""
        self._replace(INTENT_FILE, raw)

    def save_state(self, *, handled_generation: int, handled_digest: str | None) -> None:
        """Record the highest generation handled."""
        data = msgspec.json.encode(
            SavedState(handled_generation=handled_generation, handled_digest=handled_digest)
        )
        self._replace(STATE_FILE, data)

    def _replace(self, name: str, data: bytes) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.dir / name
        tmp = self.dir / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        # The rename is durable only once the directory entry is on disk.
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        except OSError as exc:  # some file systems (a lab guest's hostfs) cannot: the rename
            log.debug("fsync of %s: %s", self.dir, exc)  # itself is still atomic
        finally:
            os.close(dfd)
