"""The documentation stands on its own: every relative link in the README and docs/ leads to
a file of the repository (and, with ``#anchor``, to a heading there), and no two files
differ only by case (they could not coexist on a clone on macOS or Windows)."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
# Not the repository's: build outputs, caches, environments.
_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "demo-out", "build", "dist"}


def _prose(path: Path) -> str:
    """The Markdown without its fenced code blocks (a ``#`` there is no heading)."""
    return _FENCE.sub("", path.read_text(encoding="utf-8"))


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", _prose(path), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
        out.add(slug.replace(" ", "-"))
    return out


def _links(path: Path) -> list[str]:
    return [
        t for t in _LINK.findall(_prose(path)) if not re.match(r"[a-z][a-z+.-]*:", t, flags=re.I)
    ]


def test_the_docs_are_found() -> None:
    names = {p.name for p in DOCS}
    assert {"README.md", "design.md", "feature-spec.md", "features.md"} <= names, names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(doc: Path) -> None:
    broken = []
    for target in _links(doc):
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, broken


def test_the_link_check_can_fail(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title here\n\n```\n# not a heading\n```\n")
    assert _anchors(tmp_path / "a.md") == {"title-here"}
    (tmp_path / "b.md").write_text("[x](a.md#title-here) [y](missing.md) [z](https://e.org)\n")
    assert _links(tmp_path / "b.md") == ["a.md#title-here", "missing.md"]


def test_no_two_files_differ_only_by_case() -> None:
    by_folder: dict[tuple[Path, str], list[str]] = defaultdict(list)
    stack = [REPO]
    while stack:
        folder = stack.pop()
        for entry in folder.iterdir():
            hidden = entry.name in _SKIP_DIRS or entry.name.startswith(".")
            if entry.is_dir() and not entry.is_symlink() and not hidden:
                stack.append(entry)
            by_folder[(folder, entry.name.lower())].append(entry.name)
    clashes = sorted(
        f"{(folder / '_').relative_to(REPO).parent.as_posix()}: {sorted(names)}"
        for (folder, _), names in by_folder.items()
        if len(names) > 1
    )
    assert not clashes, clashes
