"""Where things are: the NATS URL every command uses and the local state directory."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_EMBEDDED_PORT = 4222


def state_dir() -> Path:
    """Local state (embedded NATS store, lab state): ``$L2NET_STATE_DIR`` or XDG state home."""
    explicit = os.environ.get("L2NET_STATE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "l2net"


def embedded_url_file() -> Path:
    return state_dir() / "nats" / "nats.url"


def nats_servers(explicit: str | None = None) -> list[str]:
    """The servers to connect to: ``--nats``, then ``NATS_URL``, then the embedded server.

    Either may be a comma-separated list. Without both, the URL that ``l2net up`` recorded
    is used, and failing that ``nats://127.0.0.1:4222``.
    """
    raw = explicit or os.environ.get("NATS_URL")
    if not raw:
        recorded = embedded_url_file()
        raw = (
            recorded.read_text().strip()
            if recorded.exists()
            else f"nats://127.0.0.1:{DEFAULT_EMBEDDED_PORT}"
        )
    return [part.strip() for part in raw.split(",") if part.strip()]


STREAM_REPLICAS_ENV = "L2NET_STREAM_REPLICAS"


def stream_replicas(explicit: int | None = None) -> int | None:
    """How many servers keep each l2net stream: ``explicit`` (the planner's
    ``--stream-replicas``), then ``$L2NET_STREAM_REPLICAS``, else None (one for a new
    stream; an existing stream keeps its own). ValueError for anything but 1 to 5."""
    if explicit is None:
        raw = os.environ.get(STREAM_REPLICAS_ENV, "").strip()
        if not raw:
            return None
        try:
            explicit = int(raw)
        except ValueError:
            raise ValueError(f"${STREAM_REPLICAS_ENV} must be a number, not {raw!r}") from None
    if not 1 <= explicit <= 5:
        raise ValueError(f"stream replicas must be 1 to 5 (JetStream's limit), not {explicit}")
    return explicit
