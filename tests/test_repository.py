"""The repository stands alone: nothing cites documents that are not in it."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCANNED = ["ld4mrec_dist", "data_pipeline", "jobs", "benchmarks", "tests", "docs", "scripts"]
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ""}
# A citation of notes kept outside the repository: a path above the repository root, an
# upper-case Markdown file other than the repository's own, a "NAME §n" section reference or a
# "*_NOTES" file named as a document (not a constant). Cite the paper's equation numbers or
# docs/design.md instead.
OUTSIDE = re.compile(r"\.\./[A-Za-z_]"                      # a path above the repository root
                     r"|\b(?!README\.md)[A-Z][A-Z0-9_]*\.md\b"  # an upper-case Markdown file
                     r"|\b[A-Z]{3,} §\s*\d"                     # "NAME §n"
                     r"|\b[A-Z]+_NOTES\b(?!\s*[=.\[(])")        # "*_NOTES", not a constant


def _text_files():
    roots = [REPO / name for name in SCANNED] + [REPO / "README.md", REPO / "pyproject.toml"]
    for root in roots:
        paths = [root] if root.is_file() else root.rglob("*")
        for path in paths:
            parts = path.relative_to(REPO).parts  # no caches, no generated data (benchmarks/.data)
            hidden = any(part.startswith(".") or part == "__pycache__" for part in parts)
            if path.is_file() and path.suffix in SUFFIXES and not hidden:
                yield path


def test_no_citation_of_documents_outside_the_repository():
    hits = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
            for path in _text_files()
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
            if OUTSIDE.search(line)]
    assert not hits, "cite the paper or docs/design.md instead:\n" + "\n".join(hits)


def test_license_matches_pyproject():
    assert "MIT License" in (REPO / "LICENSE").read_text()
    assert 'license = { text = "MIT" }' in (REPO / "pyproject.toml").read_text()


README_MAX_LINES = 350
LINK = re.compile(r"\]\(([^)\s]+)\)")  # a Markdown link or image target


def test_readme_fits_a_five_minute_read():
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/ (limit {README_MAX_LINES})"


def test_every_relative_link_of_the_readme_and_docs_names_a_file_of_the_repository():
    broken = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        for target in LINK.findall(page.read_text()):
            path = target.split("#", 1)[0]
            if not path or re.match(r"[a-z]+:", path):  # an anchor on the same page, or a URL
                continue
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, "links to nothing:\n" + "\n".join(broken)
