"""The layers of the code, as docs/architecture.md draws them, hold for every module.

shared/domain imports nothing else of l2net; shared/wire imports the domain only;
shared/runtime imports the domain and the wire; shared imports no service; a service imports
shared and itself, never the command line (``services.cli``), which imports the services, nor
another service (two crossings, named below).
Each import is read from the source (``ast``), lazy ones inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

ALLOWED = {
    "shared.domain": ("shared.domain",),
    "shared.wire": ("shared.domain", "shared.wire"),
    "shared.runtime": ("shared.domain", "shared.wire", "shared.runtime"),
}


# The imports from a service into another: a dev setup's planner reads the lab's key; the
# planner's plan runs the executor's own planner (planning.py moves to shared/domain after
# i11-cni merges).
CROSSINGS = {
    ("services.planner.cli", "services.lab.fleet"),
    ("services.planner.impact", "services.executor.planning"),
}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def imports(path: Path) -> list[str]:
    """Every l2net module ``path`` imports (``from x import y`` counts ``x`` and ``x.y``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return [name for name in found if name.split(".")[0] in ("shared", "services")]


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_every_import_follows_the_layers() -> None:
    broken = []
    checked = 0
    for path in sorted((ROOT / "shared").rglob("*.py")) + sorted((ROOT / "services").rglob("*.py")):
        me = module_name(path)
        for name in imports(path):
            if name in ("shared", "services"):
                broken.append(f"{me} imports the package {name} itself")
                continue
            layer = next((layer for layer in ALLOWED if within(me, (layer,))), None)
            if layer is not None and not within(name, ALLOWED[layer]):
                broken.append(f"{me} ({layer}) imports {name}")
            if me.startswith("shared.") and name.startswith("services."):
                broken.append(f"{me} imports the service module {name}")
            service = me.startswith("services.") and not me.startswith("services.cli")
            if service and within(name, ("services.cli",)):
                broken.append(f"{me} imports the command line ({name})")
            elif service and name.startswith("services."):
                own = ".".join(me.split(".")[:2])
                crossing = any(me == m and within(name, (c,)) for m, c in CROSSINGS)
                if not within(name, (own,)) and not crossing:
                    broken.append(f"{me} imports another service ({name})")
            checked += 1
    print(f"imports following the layers: {checked - len(broken)}/{checked}")
    assert broken == []


def test_shared_is_its_three_layers() -> None:
    loose = sorted(p.name for p in (ROOT / "shared").glob("*.py") if p.name != "__init__.py")
    assert loose == [], f"modules of shared/ outside domain/, wire/ and runtime/: {loose}"
