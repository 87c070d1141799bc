"""The canonical bytes of an intent: what the planner signs, what a status's digest covers.

An intent's canonical form is its JSON encoding with ``signature`` left out (``None``), so a
signature never covers itself and the same intent gives the same bytes on every host.
"""

from __future__ import annotations

import hashlib

import msgspec

from shared.domain.model import NodeIntent
from shared.wire import codec


def canonical_bytes(intent: NodeIntent) -> bytes:
    """The bytes a signature and a digest are computed over (``signature`` left out)."""
    return codec.encode(msgspec.structs.replace(intent, signature=None))


def digest(intent: NodeIntent) -> str:
    """sha256 (hex) of :func:`canonical_bytes`: names exactly one intent's content."""
    return hashlib.sha256(canonical_bytes(intent)).hexdigest()
