"""A new user goes from the README through docs/ by links: every relative link in README.md
and docs/*.md reaches a file of the repository, and every ``#anchor`` a heading of it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs.session import DOCS, REPO

PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans hold regexes, not links
    return [
        target
        for target in re.findall(r"\]\(([^)\s]+)\)", text)
        if not re.match(r"[a-z]+:", target)  # http:, https:, mailto:
    ]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: {target}"
        if anchor:
            assert anchor in anchors(dest), f"{page.name}: {target} (no such heading)"


def test_the_readme_leads_to_the_trace_guide() -> None:
    readme = links(REPO / "README.md")
    assert "docs/quickstart.md" in readme and "docs/tracing.md" in readme
    assert "tracing.md#see-a-trace-of-your-own-submission" in links(DOCS / "quickstart.md")
