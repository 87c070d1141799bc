"""Hostile inputs for the fuzz tests, and the harness that runs a decoder on each one.

Two families of input (hypothesis strategies):

* :func:`arbitrary_bytes`: any bytes, JSON-looking or not;
* :func:`mutated`: a *valid* message, mutated where it hurts: a value replaced by one of the
  wrong type, a huge or negative number, deep nesting, a huge list, an unknown tag or field, a
  long or odd string; a key removed; then, sometimes, its bytes cut or given invalid UTF-8.

:class:`Fuzz` runs a decoder on every case under a per-case hang guard (SIGALRM, a generous
limit that only catches a hang, never a speed assertion) and counts: cases, accepted, refused
with the decoder's documented error, crashes (any other exception) and hangs.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

HANG_S = 20.0
"""A case taking this long is a hang (a guard, far above any real decode)."""

DEEP = 1500
"""Nesting depth of the deep values (past Python's recursion limit, 1000)."""

HUGE = 5000
"""Length of the huge lists (JSON decoders; YAML ones get a fifth: PyYAML is pure Python,
and the point is a list far longer than any real one, not a slow test)."""


class Hang(BaseException):
    """A case ran longer than :data:`HANG_S` (a BaseException: a decoder's ``except
    Exception`` cannot eat it)."""


@contextmanager
def hang_guard(seconds: float = HANG_S) -> Iterator[None]:
    """Raise :class:`Hang` in the case if it runs longer than ``seconds``."""

    def on_alarm(signum: int, frame: object) -> None:
        raise Hang()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Raw:
    """A piece of JSON text placed as is (deep nesting that json.dumps cannot write)."""

    def __init__(self, text: str) -> None:
        self.text = text


HUGE_NUMBERS = [
    2**31,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**30,
    -1,
    0,
    4094,
    4095,
    4096,
    65536,
    99999999999,
    1e308,
    -1e308,
    1.5,
    Raw("1e999"),
    Raw("-1e999"),
    Raw("NaN"),
    Raw("Infinity"),
    Raw("1" * 4400),
]

ODD_STRINGS = [
    "",
    " ",
    "x" * 100_000,
    "node-1.node-2",
    "../../etc/passwd",
    "a\x00b",
    "\u202e\ufeff",
    "é" * 100,
    "*",
    ">",
    "mgmt",
    "mgmt-br",
    "eth0",
    "NodeIntent",
    "-1",
    "1e999",
    "\ud800",  # a lone surrogate: not encodable as UTF-8 (json.dumps escapes it)
]


def _deep(kind: str) -> Raw:
    if kind == "list":
        return Raw("[" * DEEP + "]" * DEEP)
    return Raw('{"a":' * DEEP + "1" + "}" * DEEP)


def hostile_values(huge: int = HUGE) -> st.SearchStrategy[Any]:
    """One value that does not belong where it is put (``huge``: length of the long lists)."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    )
    return st.one_of(
        scalars,
        st.sampled_from(HUGE_NUMBERS),
        st.sampled_from(ODD_STRINGS),
        st.sampled_from(
            [
                _deep("list"),
                _deep("dict"),
                list(range(huge)),
                [{"name": f"x{i}"} for i in range(huge // 4)],
                {f"k{i}": i for i in range(huge // 4)},
                ["x"] * huge,
            ]
        ),
        st.lists(scalars, max_size=5),
        st.dictionaries(st.text(max_size=8), scalars, max_size=5),
        st.sampled_from([{"type": "Evil"}, {"kind": "Evil"}, {"__proto__": {}}, [[]], {}]),
    )


Path_ = tuple[Any, ...]


def _paths(value: Any, prefix: Path_ = ()) -> list[Path_]:
    out: list[Path_] = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:4]):
            out += _paths(v, (*prefix, i))
    return out


def _set(value: Any, path: Path_, new: Any, op: str) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        copy = dict(value)
        if not rest and op == "delete":
            copy.pop(head, None)
        elif not rest and op == "add":
            copy[f"unknown{len(copy)}"] = new
        else:
            copy[head] = _set(copy.get(head), rest, new, op)
        return copy
    if isinstance(value, list) and isinstance(head, int) and head < len(value):
        items = list(value)
        items[head] = _set(items[head], rest, new, op)
        return items
    return new


def encode(value: Any) -> bytes:
    """JSON text of ``value``, with its :class:`Raw` pieces in place."""
    raws: list[str] = []

    def default(obj: Any) -> Any:
        if isinstance(obj, Raw):
            raws.append(obj.text)
            return f"\x00RAW{len(raws) - 1}\x00"
        raise TypeError(type(obj).__name__)

    text = json.dumps(value, default=default)
    for i, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\x00RAW{i}\x00"), raw)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def mutated(
    draw: st.DrawFn,
    valid: list[Any],
    *,
    huge: int = HUGE,
    as_text: Callable[[Any], bytes] = encode,
) -> bytes:
    """One of the ``valid`` messages (as plain data), mutated 1-3 times, as bytes."""
    value = draw(st.sampled_from(valid))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(value)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
        value = _set(value, path, draw(hostile_values(huge)), op)
    try:
        data = as_text(value)
    except (TypeError, ValueError, RecursionError):
        data = encode(value)
    corruption = draw(st.sampled_from(["none", "none", "none", "cut", "utf8"]))
    if corruption == "cut" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif corruption == "utf8":
        at = draw(st.integers(0, len(data)))
        bad = draw(
            st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00"])
        )
        data = data[:at] + bad + data[at:]
    return data


def arbitrary_bytes() -> st.SearchStrategy[bytes]:
    """Any bytes: random, or JSON-ish fragments glued together."""
    fragments = st.sampled_from(
        [b"{", b"}", b"[", b"]", b'"', b":", b",", b"null", b"1e999", b"\xff", b"\\u0000", b"-"]
    )
    return st.one_of(
        st.binary(max_size=300),
        st.lists(fragments, max_size=60).map(b"".join),
        st.sampled_from([b"", b" ", b"{}", b"[]", b"null", b'""', b"0", b"\n---\n"]),
    )


@dataclass
class Fuzz:
    """Counts for one decoder: what each case did."""

    name: str
    allowed: tuple[type[BaseException], ...]
    cases: int = 0
    accepted: int = 0
    refused: int = 0
    crashes: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)

    def run(self, decoder: Callable[[bytes], object], data: bytes) -> None:
        """One case: ``decoder(data)`` returns, or raises one of ``allowed``; nothing else."""
        self.cases += 1
        try:
            with hang_guard():
                decoder(data)
            self.accepted += 1
        except Hang:
            self.hangs.append(repr(data[:200]))
        except self.allowed:
            self.refused += 1
        except Exception as exc:  # the point of the test: anything else is a crash
            self.crashes.append(f"{type(exc).__name__}: {str(exc)[:200]} <- {data[:300]!r}")

    def report(self) -> str:
        return (
            f"fuzz {self.name}: {self.cases} cases ({self.accepted} accepted, {self.refused}"
            f" refused cleanly): {len(self.crashes)} crashes, {len(self.hangs)} hangs"
        )

    def check(self) -> None:
        print(self.report())
        for line in (self.crashes + self.hangs)[:5]:
            print(f"  {line}")
        assert not self.crashes and not self.hangs, self.report()


def fuzz(
    name: str,
    decoder: Callable[[bytes], object],
    allowed: tuple[type[BaseException], ...],
    inputs: st.SearchStrategy[bytes],
    examples: int,
    *,
    fixed: list[bytes] | None = None,
) -> Fuzz:
    """Run ``decoder`` on each of ``fixed`` (known attacks, once each), then on ``examples``
    cases drawn from ``inputs``; the counts."""
    counts = Fuzz(name, allowed)
    for data in fixed or []:
        counts.run(decoder, data)

    @settings(
        max_examples=examples,
        deadline=None,  # the hang guard bounds a case; speed is not asserted
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(inputs)
    def one(data: bytes) -> None:
        counts.run(decoder, data)

    one()
    return counts
