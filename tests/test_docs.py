"""The README and docs/ stay navigable: every relative link reaches a file, the README stays short.

The README is the front door (what hpcinsight is, the two commands, a tour, links); the rest lives
in docs/, one page per part. Links are checked without anchors on purpose: a heading renamed on
one page would silently break an ``#anchor`` elsewhere, a file name does not change by accident.
``.ci/run`` and the Makefile rely on the README's two commands, so their text is pinned here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: the README's budget: what it is, the two commands, a one-screen tour, the table of pages
README_MAX_LINES = 200
TWO_COMMANDS = (
    "make demo     # set up, then run a simulated 4 x 8-GPU cluster through the whole pipeline",
    "make test     # set up, then run the test suite against a Kafka broker it starts itself",
)

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def pages() -> list[Path]:
    return [README, ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


def links(text: str) -> list[str]:
    """The link targets of a Markdown text, leaving out code blocks and code spans."""
    prose = CODE_SPAN.sub("", FENCE.sub("", text))
    return LINK.findall(prose) + REFERENCE.findall(prose)


def broken_links(page: Path) -> list[str]:
    """What is wrong with each relative link of ``page``: an anchor, or no such file."""
    wrong = []
    for target in links(page.read_text()):
        if SCHEME.match(target):
            continue  # http(s), mailto: not ours to check offline
        if "#" in target:
            wrong.append(f"{target}: link to the file, without an anchor")
        elif not (page.parent / target).exists():
            wrong.append(f"{target}: no such file")
    return wrong


def test_the_link_check_finds_anchors_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# there\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [gone](gone.md) [anchored](there.md#x) [web](https://example.org/a#b)\n"
        "`[in code](nowhere.md)`\n\n```\n[in a block](nowhere.md)\n```\n\n[ref]: also-gone.md\n"
    )
    assert broken_links(page) == [
        "gone.md: no such file",
        "there.md#x: link to the file, without an anchor",
        "also-gone.md: no such file",
    ]


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file(page: Path) -> None:
    assert page.is_file(), f"{page.relative_to(ROOT)} is missing"
    assert broken_links(page) == []


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(ROOT / target).resolve() for target in links(README.read_text()) if not SCHEME.match(target)}
    orphans = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert orphans == [], f"docs pages the README does not link: {orphans}"


def test_the_readme_stays_short_and_keeps_the_two_commands() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"
    for command in TWO_COMMANDS:
        assert command in lines, f"README.md lost its command line {command!r}"
    assert "exec make test" in (ROOT / ".ci" / "run").read_text().splitlines()
