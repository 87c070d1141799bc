"""Intent signatures: the planner signs every intent, executors refuse what it did not sign.

Keys are NATS nkeys (ed25519, the format of ``nsc`` and ``nk``): the planner holds a seed
(``SN...``, a secret), executors are given the public keys they trust (``N...``). An intent's
``signature`` is ``<public key>.<base64url ed25519 signature>`` over
:func:`shared.wire.intents.canonical_bytes`, so it names the key that made it (a key can be rotated
by trusting the new one before the planner uses it) and covers every field but itself.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
from collections.abc import Collection
from pathlib import Path

import msgspec
import nacl.exceptions
import nacl.signing
import nkeys

from shared.domain.errors import BadInput, Refused
from shared.domain.model import NodeIntent
from shared.wire.intents import canonical_bytes

_PREFIX = nkeys.PREFIX_BYTE_SERVER  # public keys read "N...", seeds "SN..."


class SignatureError(Refused, ValueError):
    """An intent is unsigned, signed by a key not trusted, or its signature does not match.
    Permanent: the same message never becomes valid."""


class KeyError_(BadInput, ValueError):
    """A seed or public key is not in nkeys format; the message names what is wrong."""


def new_seed() -> str:
    """A fresh signing seed (a secret: keep it where only the planner reads it)."""
    seed: bytes = nkeys.encode_seed(os.urandom(32), _PREFIX)
    return seed.decode()


@functools.lru_cache(maxsize=8)
def _keypair(seed: str) -> nkeys.KeyPair:
    """The key pair of ``seed``, made once per seed (the planner signs every intent with one:
    deriving it each time cost about 50 µs an intent)."""
    try:
        return nkeys.from_seed(bytearray(seed.strip().encode()))
    except (nkeys.NkeysError, binascii.Error, ValueError, TypeError) as exc:
        raise KeyError_(f"not an nkeys seed ({type(exc).__name__})") from None


def public_key(seed: str) -> str:
    """The public key (``N...``) of a seed: what executors are told to trust."""
    key: bytes = _keypair(seed).public_key
    return key.decode()


def load_seed(path: str | Path) -> str:
    """The seed in a file (one line); a clear error naming the file when it is not one."""
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise KeyError_(f"cannot read signing seed {path}: {exc.strerror}") from None
    try:
        public_key(text)
    except KeyError_ as exc:
        raise KeyError_(f"{path}: {exc}") from None
    return text


def _verify_key(public: str) -> nacl.signing.VerifyKey:
    """The ed25519 key inside an nkeys public key string (prefix byte and CRC checked)."""
    try:
        raw = base64.b32decode(public.strip() + "=" * (-len(public.strip()) % 8))
    except (binascii.Error, ValueError):
        raise KeyError_(f"public key {public[:12]!r}... is not base32") from None
    if len(raw) != 35 or raw[0] != _PREFIX:
        raise KeyError_(f"public key {public[:12]!r}... is not an nkeys server key (N...)")
    body, crc = raw[:-2], int.from_bytes(raw[-2:], "little")
    if nkeys.crc16(body) != crc:
        raise KeyError_(f"public key {public[:12]!r}... has a bad checksum")
    return nacl.signing.VerifyKey(body[1:])


def check_public_key(public: str) -> str:
    """``public`` itself when it is an nkeys public key, else :class:`KeyError_`."""
    _verify_key(public)
    return public.strip()


def sign(intent: NodeIntent, seed: str) -> NodeIntent:
    """A copy of ``intent`` carrying its signature by ``seed``."""
    pair = _keypair(seed)
    signature = base64.urlsafe_b64encode(pair.sign(canonical_bytes(intent))).decode()
    return msgspec.structs.replace(intent, signature=f"{pair.public_key.decode()}.{signature}")


def verify(intent: NodeIntent, trusted: Collection[str]) -> str:
    """The public key that signed ``intent`` if it is in ``trusted`` and the signature
    matches; else :class:`SignatureError` saying which of the three it is."""
    if not intent.signature:
        raise SignatureError("intent is not signed")
    key, _, encoded = intent.signature.partition(".")
    if key not in trusted:
        raise SignatureError(f"intent signed by key {key[:12]}..., which this node does not trust")
    try:
        raw = base64.urlsafe_b64decode(encoded)
        _verify_key(key).verify(canonical_bytes(intent), raw)
    except (binascii.Error, ValueError, KeyError_, nacl.exceptions.BadSignatureError):
        raise SignatureError(
            f"intent signature does not match its content (key {key[:12]}...)"
        ) from None
    return key


def ensure_seed(path: str | Path) -> str:
    """The seed in ``path``, made first (a new seed, mode 0600) when the file does not exist.

    For dev setups (the lab, the demo, ``l2net planner --generate-signing-key``). Two
    processes making it at once agree: the file appears whole, once, by a hard link.
    """
    target = Path(path)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(new_seed() + "\n")
        try:
            os.link(tmp, target)
        except FileExistsError:
            pass  # made meanwhile by another process: that one is the key
        finally:
            tmp.unlink(missing_ok=True)
    return load_seed(target)
