"""The JSON codec of every message: msgspec, one encoder; every way outside bytes can fail
to decode raises :class:`msgspec.DecodeError`."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def decode(data: bytes, type: type[T]) -> T:
    """``data`` as ``type``, or :class:`msgspec.DecodeError` (``ValidationError`` is one)
    saying why: every way outside bytes can fail to decode raises that one error."""
    try:
        return msgspec.json.decode(data, type=type)
    except RecursionError:
        raise msgspec.DecodeError("JSON nested too deeply") from None
    except UnicodeDecodeError as exc:  # msgspec lets invalid UTF-8 in a string out as this
        raise msgspec.DecodeError(f"invalid UTF-8 in a string: {exc.reason}") from None
