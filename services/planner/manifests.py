"""Reading manifests: YAML or JSON text into spec structs, or problems naming where.

Two document shapes are accepted:

* l2net's own: ``kind``, ``name``, then the kind's fields at the top level;
* Kubernetes style, as ``kubectl get -o yaml`` prints Harvester's objects: ``apiVersion``
  (``network.harvesterhci.io/v1beta1``), ``kind``, ``metadata.name`` (other metadata and
  ``status`` ignored), ``spec`` (optional for ClusterNetwork).

Harvester's CRD defaults are understood: ``-1`` for ``miimon``, ``arpInterval`` and
``txQLen`` means unset. Bond modes may be given by the kernel's number (0-6).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import yaml

from shared.domain import model
from shared.domain.errors import BadInput, Code
from shared.domain.vocabulary import (
    AD_SELECTS,
    ARP_VALIDATES,
    BOND_MODE_NAMES,
    BOND_MODES,
    LACP_RATES,
    NETWORK_TYPES,
    XMIT_HASH_POLICIES,
)
from shared.wire.api import Problem

MAX_MANIFEST_BYTES = 256 * 1024
"""Largest submission accepted (the NATS default payload limit is 1 MiB)."""

HARVESTER_API_VERSION = "network.harvesterhci.io/v1beta1"
L2NET_API_VERSION = "l2net.io/v1"
API_VERSIONS = (HARVESTER_API_VERSION, L2NET_API_VERSION)

_UNSET_MINUS_ONE: tuple[tuple[str, ...], ...] = (
    ("uplink", "bondOptions", "miimon"),
    ("uplink", "bondOptions", "arpInterval"),
    ("uplink", "linkAttributes", "txQLen"),
)


def _one_of(values: tuple[str, ...]) -> Callable[[Any], str]:
    return lambda value: f"{value!r} is not one of {', '.join(values)}"


_CHOICES: dict[tuple[str, str], Callable[[Any], str]] = {
    ("VlanConfig", "uplink.bondOptions.mode"): lambda value: (
        f"unknown bond mode {value!r} (one of {', '.join(BOND_MODES)}, or 0-6)"
    ),
    ("VlanConfig", "uplink.bondOptions.lacpRate"): _one_of(LACP_RATES),
    ("VlanConfig", "uplink.bondOptions.adSelect"): _one_of(AD_SELECTS),
    ("VlanConfig", "uplink.bondOptions.arpValidate"): _one_of(ARP_VALIDATES),
    ("VlanConfig", "uplink.bondOptions.xmitHashPolicy"): _one_of(XMIT_HASH_POLICIES),
    ("Network", "type"): lambda value: (
        f"unknown network type {value!r} (one of {', '.join(NETWORK_TYPES)})"
    ),
    ("HostNetwork", "mode"): lambda value: f"only mode static is supported, not {value!r}",
}
"""What a field that takes one of a set of values (:mod:`shared.domain.vocabulary`) says of any
other value: the decoder refuses it, in these words rather than msgspec's."""


@dataclass(frozen=True)
class Document:
    """One parsed document: the spec, its position in the stream and its first line."""

    spec: model.Spec
    index: int
    line: int


class ManifestError(BadInput):
    """The manifest cannot be read; ``problems`` says every reason found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


def parse(text: str | bytes) -> list[Document]:
    """Parse a manifest stream; raise :class:`ManifestError` with every problem found."""
    if isinstance(text, bytes):
        if len(text) > MAX_MANIFEST_BYTES:
            raise ManifestError([_too_big(len(text))])
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            problem = Problem(code=Code.BAD_REQUEST, message=f"not UTF-8 text (byte {exc.start})")
            raise ManifestError([problem]) from exc
    if len(text.encode("utf-8")) > MAX_MANIFEST_BYTES:
        raise ManifestError([_too_big(len(text.encode("utf-8")))])

    raw = _load_yaml(text)
    problems: list[Problem] = []
    docs: list[Document] = []
    index = 0
    for node, data in raw:
        for item_node, item in _expand_lists(node, data):
            index += 1
            line = item_node.start_mark.line + 1
            try:
                spec = _to_spec(item, item_node)
            except _DocError as err:
                problems.append(
                    Problem(
                        document=index,
                        line=err.line or line,
                        kind=err.kind,
                        name=err.name,
                        field=err.field,
                        message=err.message,
                    )
                )
                continue
            docs.append(Document(spec=spec, index=index, line=line))
    if not docs and not problems:
        problems.append(Problem(message="the manifest holds no document"))
    if problems:
        raise ManifestError(problems)
    return docs


def _too_big(size: int) -> Problem:
    return Problem(
        message=f"manifest is {size} bytes; the limit is {MAX_MANIFEST_BYTES} bytes "
        "(split it into several submissions)"
    )


class _Loader(yaml.SafeLoader):
    """YAML 1.1 without sexagesimal numbers: an unquoted MAC address such as
    ``52:54:00:12:34:56`` stays a string instead of becoming a base-60 integer.
    Aliases are refused: they are not needed by any manifest, and nested ones can expand
    a small text into an enormous object.
    """

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not accepted", event.start_mark
            )
        node: yaml.Node | None = super().compose_node(parent, index)
        return node


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def _load_yaml(text: str) -> list[tuple[yaml.Node, Any]]:
    out: list[tuple[yaml.Node, Any]] = []
    loader: _Loader | None = None
    try:
        loader = _Loader(text)
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            out.append((node, loader.construct_document(node)))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "malformed"
        # The line is the Problem's ``line`` (str() shows it first); the column stays here.
        problem = Problem(
            code=Code.BAD_REQUEST,
            line=mark.line + 1 if mark else None,
            message=f"malformed YAML/JSON at column {mark.column + 1}: {what}"
            if mark
            else f"malformed YAML/JSON: {what}",
        )
        raise ManifestError([problem]) from exc
    except yaml.YAMLError as exc:
        raise ManifestError([_malformed(str(exc))]) from exc
    except RecursionError as exc:
        raise ManifestError([_malformed("nested too deeply")]) from exc
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ManifestError([_malformed(str(exc))]) from exc
    finally:
        if loader is not None:
            loader.dispose()
    return out


def _malformed(why: str) -> Problem:
    return Problem(code=Code.BAD_REQUEST, message=f"malformed YAML/JSON: {why}")


def _expand_lists(node: yaml.Node, data: Any) -> list[tuple[yaml.Node, Any]]:
    """A JSON array of documents, or a Kubernetes ``kind: List``, stands for its items."""
    if isinstance(data, list) and isinstance(node, yaml.SequenceNode):
        return list(zip(node.value, data, strict=True))
    if (
        isinstance(data, dict)
        and data.get("kind") == "List"
        and isinstance(data.get("items"), list)
    ):
        items_node = _child(node, "items")
        if isinstance(items_node, yaml.SequenceNode):
            return list(zip(items_node.value, data["items"], strict=True))
    return [(node, data)]


class _DocError(Exception):
    def __init__(
        self, message: str, *, kind: str = "", name: str = "", field: str = "", line: int = 0
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.name = name
        self.field = field
        self.line = line


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                found: yaml.Node = v
                return found
    if isinstance(node, yaml.SequenceNode) and key.isdigit() and int(key) < len(node.value):
        item: yaml.Node = node.value[int(key)]
        return item
    return None


def _line_of(node: yaml.Node | None, path: list[str]) -> int:
    """Line (1-based) of the deepest node found along ``path``; 0 if none."""
    best = node.start_mark.line + 1 if node is not None else 0
    for part in path:
        node = _child(node, part)
        if node is None:
            break
        best = node.start_mark.line + 1
    return best


def _to_spec(data: Any, node: yaml.Node) -> model.Spec:
    if not isinstance(data, dict):
        raise _DocError(f"a document must be a mapping with `kind`, got {_type_name(data)}")
    kind = data.get("kind")
    if not isinstance(kind, str) or not kind:
        raise _DocError("missing `kind`", field="kind")
    if kind == "Node":
        raise _DocError(
            "Node objects are reported by each node's executor, never submitted", kind=kind
        )
    cls = model.USER_KINDS.get(kind)
    if cls is None:
        known = ", ".join(model.USER_KINDS)
        raise _DocError(f"unknown kind {kind!r} (known: {known})", kind=kind, field="kind")

    spec_node: yaml.Node | None = node
    if "apiVersion" in data:
        fields, spec_node, name = _kubernetes_fields(data, node, kind)
    else:
        fields = {k: v for k, v in data.items() if k != "kind"}
        name = fields.get("name")
    name_str = name if isinstance(name, str) else ""
    if not isinstance(name, str) or not name:
        raise _DocError("missing `name`", kind=kind, field="name")

    _normalize(kind, fields)
    try:
        return msgspec.convert(fields, type=cls, strict=True)
    except UnicodeError:  # a lone surrogate ("\ud800"): not text any program can store
        raise _DocError(
            "a string is not valid Unicode (a lone surrogate)", kind=kind, name=name_str
        ) from None
    except msgspec.ValidationError as exc:
        message, path = _split_msgspec_error(str(exc))
        choice = _CHOICES.get((kind, ".".join(path)))
        if choice is not None and message.startswith("invalid enum value"):
            message = choice(_value_at(fields, path))
        raise _DocError(
            message,
            kind=kind,
            name=name_str,
            field=".".join(path),
            line=_line_of(spec_node, path),
        ) from exc


def _kubernetes_fields(
    data: dict[str, Any], node: yaml.Node, kind: str
) -> tuple[dict[str, Any], yaml.Node | None, Any]:
    api_version = data.get("apiVersion")
    if api_version not in API_VERSIONS:
        raise _DocError(
            f"unsupported apiVersion {api_version!r} (use {' or '.join(API_VERSIONS)})",
            kind=kind,
            field="apiVersion",
        )
    metadata = data.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        raise _DocError("missing `metadata.name`", kind=kind, field="metadata.name")
    name = metadata["name"]
    unknown = sorted(set(data) - {"apiVersion", "kind", "metadata", "spec", "status"})
    if unknown:
        raise _DocError(
            f"unknown top-level field `{unknown[0]}`", kind=kind, name=name, field=unknown[0]
        )
    spec = data.get("spec")
    if spec is None:
        if kind != "ClusterNetwork":
            raise _DocError("missing `spec`", kind=kind, name=name, field="spec")
        spec = {}
    if not isinstance(spec, dict):
        raise _DocError(
            f"`spec` must be a mapping, got {_type_name(spec)}", kind=kind, name=name, field="spec"
        )
    fields = dict(spec)
    if "name" in fields:
        raise _DocError("`name` belongs in metadata.name", kind=kind, name=name, field="spec.name")
    fields["name"] = name
    return fields, _child(node, "spec"), name


def _normalize(kind: str, fields: dict[str, Any]) -> None:
    """Harvester's conventions: ``-1`` is unset; numbered bond modes."""
    if kind != "VlanConfig":
        return
    for path in _UNSET_MINUS_ONE:
        parent: Any = fields
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and parent.get(path[-1]) == -1:
            del parent[path[-1]]
    uplink = fields.get("uplink")
    bond = uplink.get("bondOptions") if isinstance(uplink, dict) else None
    if isinstance(bond, dict):
        mode = bond.get("mode")
        if isinstance(mode, int) and not isinstance(mode, bool) and mode in BOND_MODE_NAMES:
            bond["mode"] = BOND_MODE_NAMES[mode]


def _value_at(fields: dict[str, Any], path: list[str]) -> Any:
    value: Any = fields
    for part in path:
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


_PATH_RE = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _split_msgspec_error(text: str) -> tuple[str, list[str]]:
    """msgspec says "Expected `int`, got `str` - at `$.uplink.mtu`"; split message and path."""
    match = _PATH_RE.match(text)
    assert match is not None
    raw = match.group("path") or ""
    parts = [p for p in re.split(r"\.|\[|\]", raw) if p]
    message = match.group("msg")
    named = re.search(r"(?:unknown|required) field `([^`]+)`", message)
    if named:
        parts.append(named.group(1))
    message = message[0].lower() + message[1:] if message else message
    message = message.replace("object contains unknown field", "unknown field")
    message = message.replace("object missing required field", "missing required field")
    return message.replace("`", ""), parts


def _type_name(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )
