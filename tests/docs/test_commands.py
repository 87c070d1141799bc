"""Every ``l2net`` command that docs/ shows is one the CLI has, with options it accepts.

Synopses (``l2net get [KIND [NAME]] [-o table|json|yaml]``) and commands in prose and code
are checked against the real argument parser: the subcommand exists and every option named
is one it defines; a concrete command line (no placeholder) parses as written. The reverse
too: every subcommand of ``l2net`` is in docs/cli.md's table. Running the commands is the
job of the other tests in tests/docs (and tests/cli, tests/deploy).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
import yaml

from services.auditor.cli import load_policy
from services.cli.main import build_parser
from shared.domain import model
from tests.docs.session import DOCS, fenced


@dataclass(frozen=True)
class Usage:
    page: str
    text: str
    in_code: bool
    """In a code block (typed as is), not named in prose."""


def _code_lines(text: str) -> list[str]:
    lines: list[str] = []
    for body in re.findall(r"^ *```[a-z]*\n(.*?)^ *```", text, re.S | re.M):
        for line in body.splitlines():
            line = line.strip()
            line = line[2:] if line.startswith("$ ") else line
            if line.startswith("l2net "):
                lines.append(line)
    return lines


def usages() -> list[Usage]:
    """Every ``l2net ...`` in an inline code span or a code block line of docs/*.md."""
    found: dict[tuple[str, str], bool] = {}
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        for inline in re.findall(r"`(l2net [^`\n]+)`", text):
            found.setdefault((page.name, inline.replace("\\|", "|")), False)
        for line in _code_lines(text):
            found[(page.name, line.split(" #")[0].strip())] = True
    return [Usage(p, t, code) for (p, t), code in found.items()]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def resolve(words: list[str]) -> tuple[list[argparse.ArgumentParser], list[str]]:
    """The parser(s) a usage's subcommand words name (``lab up/exec``: several), and the
    words after them."""
    parsers = [build_parser()]
    rest = words[1:]
    while rest:
        choices = [_subparsers(p) for p in parsers]
        if not any(choices):
            break
        names = rest[0].split("/")
        missing = [n for n in names if not any(n in c for c in choices)]
        assert not missing, f"no subcommand {' '.join(words[: -len(rest) or None])} {missing}"
        parsers = [c[n] for c in choices for n in names if n in c]
        rest = rest[1:]
    return parsers, rest


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def flags(rest: list[str]) -> list[str]:
    """The options a usage names (up to a ``--`` that starts a command of its own)."""
    out: list[str] = []
    for word in rest:
        if word == "--":
            break
        for part in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", word):
            out.append(part)
    return out


ALL = usages()


def test_the_docs_show_many_commands() -> None:
    pages = {u.page for u in ALL}
    assert len(ALL) > 60 and {"cli.md", "quickstart.md", "tracing.md", "lab.md"} <= pages


@pytest.mark.parametrize("usage", ALL, ids=[f"{u.page}:{u.text[:50]}" for u in ALL])
def test_command_names_a_real_subcommand_and_real_options(usage: Usage) -> None:
    text = usage.text.rstrip("&").strip()
    words = re.sub(r"[\[\]]", " ", text).split()
    parsers, rest = resolve(words)
    for flag in flags(rest):
        assert any(flag in options(p) for p in parsers), f"{usage.page}: {usage.text}: {flag}"


CONCRETE = [
    u
    for u in ALL
    if u.in_code
    and not re.search(r"[A-Z]{2,}|\[|\.\.\.|\||\w+/\w+/\w+/", u.text.replace("docs/examples/", ""))
    and u.text.count("'") % 2 == 0
]


@pytest.mark.parametrize("usage", CONCRETE, ids=[f"{u.page}:{u.text[:50]}" for u in CONCRETE])
def test_concrete_command_parses_as_written(usage: Usage) -> None:
    argv = shlex.split(usage.text.rstrip("&").strip())[1:]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{usage.page}: {usage.text}: exit {exc.code}: {err.getvalue()}")


def test_every_subcommand_is_in_the_cli_reference() -> None:
    table = (DOCS / "cli.md").read_text().split("## Example session")[0]
    documented = {
        name for row in re.findall(r"^\| `l2net ([a-z-]+)", table, re.M) for name in [row]
    } | set(re.findall(r"`l2net ([a-z-]+)", table))
    assert set(_subparsers(build_parser())) <= documented


def test_concrete_commands_are_a_real_share() -> None:
    assert len(CONCRETE) >= 15, [u.text for u in CONCRETE]


# --- samples that are data, not commands -------------------------------------------------


def test_the_node_intent_example_decodes_as_a_node_intent() -> None:
    (sample,) = [b for b in fenced(DOCS / "events.md", "json") if '"NodeIntent"' in b]
    intent = msgspec.json.decode(sample.encode(), type=model.NodeIntent)
    assert intent.node == "node-1" and intent.generation == 3
    assert [cn.name for cn in intent.cluster_networks] == ["mgmt", "oob"]
    assert intent.vm_ports[0].network == "vlan200"


def test_the_heal_policy_example_loads(tmp_path: Path) -> None:
    (sample,) = fenced(DOCS / "auditor.md", "yaml")
    first = sample.splitlines()[0]
    assert first == "# l2net auditor --policy policy.yaml"
    assert yaml.safe_load(sample) == {"heal": ["oob"], "silenceSeconds": 30, "graceSeconds": 60}
    (tmp_path / "policy.yaml").write_text(sample)
    argv = shlex.split(first[2:])[1:]
    argv[-1] = str(tmp_path / argv[-1])
    config = load_policy(build_parser().parse_args(argv))
    assert config.heal == {"oob"}
    assert (config.policy.silence_s, config.policy.grace_s) == (30, 60)


def test_the_executor_module_takes_the_options_the_docs_show() -> None:
    """executor.md: ``python -m services.executor --node NAME --nats URL`` (what lab nodes run)."""
    line = next(
        ln
        for ln in (DOCS / "executor.md").read_text().splitlines()
        if ln.startswith("python -m services.executor ")
    )
    shown = flags(line.split("#")[0].split()[3:])
    assert shown == ["--node", "--nats", "--trust-key"]
    result = subprocess.run(
        [sys.executable, "-m", "services.executor", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=DOCS.parent,
    )
    assert result.returncode == 0, result.stderr
    for flag in shown:
        assert flag in result.stdout
