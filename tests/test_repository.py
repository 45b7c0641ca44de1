"""The repository stands alone: nothing cites documents that are not in it."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCANNED = ["ld4mrec_dist", "data_pipeline", "jobs", "benchmarks", "tests", "docs", "scripts"]
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ""}
# Notes kept outside the repository (a spec, Ray notes, a shared folder): cite the paper's
# equation numbers or docs/design.md instead. (This file names them, and is not scanned.)
OUTSIDE = re.compile(r"\bSPEC\b|RAY_NOTES|\.\./shared/|\bshared/SPEC")


def _text_files():
    roots = [REPO / name for name in SCANNED] + [REPO / "README.md", REPO / "pyproject.toml"]
    for root in roots:
        paths = [root] if root.is_file() else root.rglob("*")
        for path in paths:
            parts = path.relative_to(REPO).parts  # no caches, no generated data (benchmarks/.data)
            if (path.is_file() and path.suffix in SUFFIXES and path != Path(__file__).resolve()
                    and not any(part.startswith(".") or part == "__pycache__" for part in parts)):
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
