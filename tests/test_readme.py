"""The README reads in the order people read it, and its and the docs' links all land."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PROJECT_URL = "https://github.com/pool-observer/pool-observer"
SECTIONS = [
    "Install",
    "Quickstart",
    "What you get",
    "Options",
    "Production",
    "Tools",
    "Dashboards and alerts",
    "Docker",
    "Benchmarks",
    "Development",
]
FENCED = re.compile(r"^(```|~~~)[^\n]*\n.*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"(`+).+?\1", re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# Spelled in two pieces so that this file does not mention them itself.
UNSHIPPED = ("../" + "shared", "DESIGN" + ".md")


def prose(markdown: str) -> str:
    """The text outside fenced blocks and code spans (where a link is a link)."""
    return SPAN.sub("", FENCED.sub("", markdown))


def links(markdown: str) -> list[str]:
    return LINK.findall(prose(markdown))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", FENCED.sub("", markdown), re.MULTILINE):
        base = slug(heading)
        name, n = base, 0
        while name in found:  # GitHub numbers repeated headings: name, name-1, name-2
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def test_slug_and_links_follow_github() -> None:
    """Anchors are GitHub's (code spans and punctuation dropped, repeats numbered), and links
    are found in prose and images only, not in code."""
    markdown = (
        "## Keep `/metrics` private\n## Tools: `observer doctor`\n## Tools: `observer doctor`\n"
        'See [a](docs/a.md#x) and ![b](img/b.png "title"), not `[c](c.md)`.\n'
        "```md\n[d](d.md)\n## Not a heading\n```\n"
    )
    assert anchors(markdown) == {
        "keep-metrics-private",
        "tools-observer-doctor",
        "tools-observer-doctor-1",
    }
    assert links(markdown) == ["docs/a.md#x", "img/b.png"]


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    """Each relative link of README.md and docs/*.md names a file of the repository, and its
    ``#anchor`` a heading of that file (of the page itself for a bare ``#anchor``)."""
    broken = []
    for target in links(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # an absolute URL: see the next test for the README
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.is_file() or not file.is_relative_to(ROOT):
            broken.append(f"{target}: no such file")
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file.read_text())):
            broken.append(f"{target}: no heading #{anchor}")
    assert broken == []


def test_the_readme_links_nothing_outside_the_repository() -> None:
    """The README's prose links only to files of the repository or the project's own GitHub
    page, each target once; its picture is the live page's screenshot."""
    text = prose(README.read_text())
    outside = [
        url for url in re.findall(r"https?://[^\s)>\]]+", text) if not url.startswith(PROJECT_URL)
    ]
    assert outside == []
    targets = links(README.read_text())
    assert sorted(t for t in set(targets) if targets.count(t) > 1) == []
    assert re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text) == ["docs/images/live-page.png"]


def test_the_readme_sections_come_in_reading_order() -> None:
    """What it is (with the picture and the two commands of a fresh machine), then install,
    quickstart, what you get, options, production, tools, dashboards and alerts, Docker,
    benchmarks and development."""
    markdown = README.read_text()
    headings = re.findall(r"^## (.+)$", FENCED.sub("", markdown), re.MULTILINE)
    assert headings == SECTIONS
    intro = markdown.split("\n## ", 1)[0]
    assert "scripts/demo    #" in intro
    assert "scripts/test    #" in intro
    assert "![" in intro


def test_docs_index_lists_every_page() -> None:
    """docs/index.md links every other page under docs/."""
    listed = {
        target.partition("#")[0] for target in links((ROOT / "docs" / "index.md").read_text())
    }
    pages = {page.name for page in DOCS} - {"index.md"}
    assert sorted(pages - listed) == []


def _texts() -> list[Path]:
    """The repository's files, without what .gitignore leaves out (builds, caches, venvs)."""
    skip = {"__pycache__", "dist", "build", "htmlcov"}

    def kept(part: str) -> bool:
        return not (part.startswith(".") or part in skip or part.endswith(".egg-info"))

    return [
        path
        for path in ROOT.rglob("*")
        if path.is_file()
        and all(kept(part) for part in path.relative_to(ROOT).parts)
        and path.suffix not in {".png", ".pyc"}
    ]


def test_nothing_refers_to_files_users_do_not_have() -> None:
    """No file of the repository mentions the design notes kept outside it."""
    mentions = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in _texts()
        for name in UNSHIPPED
        if name in path.read_text(errors="replace")
    ]
    assert mentions == []
