"""The tests' signing key: intents published by hand in tests are signed with it, and the
tests' planners and executors sign with it and trust it (a test-only secret)."""

from __future__ import annotations

from shared.domain.model import NodeIntent
from shared.wire import signing

SEED = "SNAEPGOYQ4IRQL6A6SYWDGKP7YHCELG4XAFDVLXQLOAMKC6AZOVZDZWBMA"
PUBLIC = signing.public_key(SEED)


def sign(intent: NodeIntent) -> NodeIntent:
    """``intent`` signed with the tests' key, as the tests' planners sign."""
    return signing.sign(intent, SEED)
