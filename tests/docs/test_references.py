"""The repository stands on its own: no file refers to documents outside it, and every
relative link of the README and of docs/ points at a file of the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[2]
# Built from pieces so that this file does not match itself.
OUTSIDE = ("../" + "shared", "DESIGN" + ".md")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def tracked_files() -> list[Path]:
    """The repository's files: ``git ls-files`` (tracked and new, not ignored)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]


def test_no_reference_outside_the_repository():
    files = tracked_files()
    assert any(p.name == "README.md" for p in files)  # the listing works
    hits = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images, binaries
        for n, line in enumerate(text.splitlines(), 1):
            hits += [f"{path.relative_to(ROOT)}:{n}: {line.strip()}" for s in OUTSIDE if s in line]
    assert not hits, "\n".join(hits)


def test_readme_and_docs_link_only_files_of_the_repository():
    files = set(tracked_files())
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert ROOT / "docs" / "README.md" in pages
    bad = []
    for page in pages:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL or an anchor on the same page
            path = (page.parent / unquote(target.split("#")[0])).resolve()
            if path not in files and not (path.is_dir() and path.is_relative_to(ROOT)):
                bad.append(f"{page.relative_to(ROOT)}: {target}")
    assert not bad, bad
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/README.md" in readme or "(docs/)" in readme
