"""References from the code into the documentation (``docs/model.md#vmp``) point at sections that exist."""

from __future__ import annotations

import re
from pathlib import Path

from markdown.extensions.toc import slugify

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"docs/([\w/-]+\.md)#([\w-]+)")
"""A section of a page of this repository's docs (a bare ``docs/x.md`` may name another project's file)."""


def anchors(page: Path) -> set[str]:
    """The ids of a page's headings: an explicit ``{#id}``, else the slug MkDocs gives the heading's text."""
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", page.read_text(), re.M):
        explicit = re.search(r"\{#([\w-]+)\}\s*$", heading)
        found.add(explicit[1] if explicit else slugify(heading.replace("`", ""), "-"))
    return found


def code_links() -> list[tuple[str, str, str]]:
    folders = ("engines", "pipeline", "calibration", "cli", "tests", "tools")
    sources = [p for folder in folders for p in (ROOT / folder).rglob("*.py")]
    return [(str(p.relative_to(ROOT)), page, anchor) for p in sources for page, anchor in LINK.findall(p.read_text())]


def test_every_link_from_the_code_into_the_docs_resolves():
    links = code_links()
    assert len(links) > 20
    broken = [
        f"{source}: docs/{page}#{anchor}"
        for source, page, anchor in links
        if not (ROOT / "docs" / page).is_file() or anchor not in anchors(ROOT / "docs" / page)
    ]
    assert broken == []


def test_anchors_are_read_from_explicit_ids_and_heading_text():
    page = ROOT / "docs" / "model.md"
    assert {"vmp", "decision-full-width", "the-model-maths"} <= anchors(page)
    assert "no-such-section" not in anchors(page)
